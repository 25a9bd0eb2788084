#!/usr/bin/env bash
# Configure and build promguard, its tests and tools.
#
#   scripts/build.sh                          -> build/ (RelWithDebInfo)
#   BUILD_DIR=build-asan scripts/build.sh -DPROMGUARD_SANITIZE=ON
#   BUILD_TARGET=promguard scripts/build.sh   -> only the proxy binary (the demo does this)
#
# Extra arguments go to the cmake configure step. Dependencies: scripts/deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo}

cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" "$@"
cmake --build "$BUILD_DIR" -j"$(nproc)" ${BUILD_TARGET:+--target "$BUILD_TARGET"}
