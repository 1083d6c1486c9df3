#!/usr/bin/env bash
# CPU emulation of kernels/gdn_chunk.cu (see emu.cpp): pastes the kernels (the anonymous namespace
# up to the launchers) into the harness, builds it with the host compiler and runs it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src="$here/../../kernels/gdn_chunk.cu"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$src" "$work/kernels.inc" <<'PY'
import sys
s = open(sys.argv[1]).read()
start = s.index('namespace {') + len('namespace {')
end = s.index('template <int DK>\ncudaError_t LaunchChunked')
body = s[start:end]
dyn = 'extern __shared__ float4 smem4[];'
ld4 = '{ return *reinterpret_cast<const float4*>(p); }'
assert dyn in body and ld4 in body, 'gdn_chunk.cu changed shape: update run.sh'
body = body.replace(dyn, 'float4* smem4 = g_dyn;')
body = body.replace(ld4, '{ if (reinterpret_cast<uintptr_t>(p) % 16) { std::fprintf(stderr, "misaligned float4 load\\n"); std::exit(1); } '
                         'return *reinterpret_cast<const float4*>(p); }')
open(sys.argv[2], 'w').write(body)
PY
cp "$here/emu.cpp" "$work/"
g++ -std=c++20 -O1 -pthread -I"$work" "$work/emu.cpp" -o "$work/emu"
"$work/emu"
