#!/usr/bin/env bash
# Builds the daemon for the GPU machine (which has CUDA 13 + cuBLAS 13 and glibc, but no gRPC,
# protobuf, absl, ICU, PCRE2 or OpenBLAS) and packs it with the shared libraries it needs into
# .bundle/specd-gpu.tar.xz: bin/{specd,specd-client} and lib/*.so*. Carry `.bundle` to the device
# run and start scripts/gpu_daemon_check.sh there. Safe to run again: it rebuilds what changed
# and repacks from scratch.
#
# The build: Release, CUDA for sm_90a (H100/H200), no tokenizer (ids-only prompts; text prompts
# get INVALID_ARGUMENT), no OpenBLAS (the CPU backend's plain GEMM), no tests or benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=${BUNDLE_BUILD_DIR:-$root/build-bundle}
jobs=${JOBS:-2}
out_dir=$root/.bundle
stage=$build/stage  # outside .bundle: only the tarball travels
tarball=$out_dir/specd-gpu.tar.xz

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPECD_SERVER=ON -DSPECD_TOKENIZER=OFF \
  -DSPECD_BLAS=OFF -DSPECD_CUDA=ON -DSPECD_TESTS=OFF -DSPECD_BENCH=OFF \
  -DCMAKE_CUDA_ARCHITECTURES=90a-real >/dev/null
ninja -C "$build" -j "$jobs" specd specd-client

rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/lib"
cp "$build/server/specd" "$build/client/specd-client" "$stage/bin/"
strip --strip-unneeded "$stage/bin/specd" "$stage/bin/specd-client"

# Libraries the GPU machine surely has (glibc family, the GCC runtime, CUDA/cuBLAS) stay out;
# everything else ldd resolves is copied under its soname (ldd lists the whole closure).
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libmvec\.so|libpthread\.so|libdl\.so|librt\.so|libresolv\.so|libutil\.so|libanl\.so|libnsl\.so|libstdc\+\+\.so|libgcc_s\.so|libgomp\.so|libcublas|libcublasLt|libcudart|libcuda\.so|libnvidia)'
missing=0
while read -r name arrow path _; do
  [ -z "$name" ] && continue
  if [ "$arrow" = "=>" ] && [ "$path" = "not" ]; then
    echo "make_gpu_bundle: $name not found" >&2
    missing=1
    continue
  fi
  [[ "$name" =~ $skip ]] && continue
  [ "$arrow" = "=>" ] && [ -f "$path" ] || continue
  [ -e "$stage/lib/$name" ] || cp -L "$path" "$stage/lib/$name"
done < <(ldd "$stage/bin/specd" "$stage/bin/specd-client" | grep -v ':$')
[ "$missing" = 0 ] || exit 1
strip --strip-unneeded "$stage"/lib/*.so* 2>/dev/null || true
chmod 644 "$stage"/lib/*

{
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty)')"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release && echo "$PRETTY_NAME"), $(ldd --version | head -1)"
  echo "cuda: $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo unknown)"
} > "$stage/BUILD_INFO"

mkdir -p "$out_dir"
rm -rf "$out_dir/stage"  # older versions staged here; .bundle must hold the tarball only
rm -f "$tarball"
tar -C "$stage" --owner=0 --group=0 --sort=name -cf - . | xz -9 -T "$jobs" > "$tarball.tmp"
mv "$tarball.tmp" "$tarball"
echo "libraries: $(ls "$stage/lib" | wc -l) ($(du -sh "$stage/lib" | cut -f1) unpacked); binaries: $(du -sh "$stage/bin" | cut -f1)"
echo "bundle: $tarball $(du -h "$tarball" | cut -f1) ($(stat -c %s "$tarball") bytes)"
