#!/usr/bin/env bash
# Installs everything specd needs to build and test (Debian/Ubuntu). Idempotent.
# Usage: scripts/setup.sh [--no-server]   (--no-server: engine/kernels only, no gRPC/ICU/PCRE2)
set -euo pipefail
want_server=1
[ "${1:-}" = "--no-server" ] && want_server=0
pkgs=(cmake ninja-build g++ pkg-config libopenblas-dev libgtest-dev libgmock-dev libbenchmark-dev
      nlohmann-json3-dev libspdlog-dev libfmt-dev libcli11-dev python3)
if [ "$want_server" = 1 ]; then
  pkgs+=(libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libpcre2-dev
         libicu-dev libcpp-httplib-dev openssl curl)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# The Python grpcio client test (tests/integration/python_client_test.py) needs grpcio and
# grpcio-tools for the python3 on PATH: from PyPI where that python3 takes pip installs (a pyenv
# or venv interpreter), else Debian's packages for the system python3.
if [ "$want_server" = 1 ] && ! python3 -c "import grpc, grpc_tools" 2>/dev/null; then
  if ! python3 -m pip install --quiet --disable-pip-version-check "grpcio==1.85.3" "grpcio-tools==1.85.1" 2>/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-grpcio python3-grpc-tools
  fi
  python3 -c "import grpc, grpc_tools" || { echo "setup: python3 cannot import grpc/grpc_tools" >&2; exit 1; }
fi
# The OpenAI-compatible API's test (tests/integration/openai_client_test.py) uses the official
# `openai` client from PyPI (Debian does not package it).
if [ "$want_server" = 1 ] && ! python3 -c "import openai" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check "openai==1.99.9" 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "openai==1.99.9"
  python3 -c "import openai" || { echo "setup: python3 cannot import openai" >&2; exit 1; }
fi
echo "setup: all packages present"
