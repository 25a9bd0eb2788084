#!/usr/bin/env bash
# Install dependencies, build, and run every test tier; exits non-zero on any failure.
#
#   1. scripts/deps.sh                      Debian packages (idempotent)
#   2. scripts/build.sh                     build/ (RelWithDebInfo)
#   3. ctest in build/                      all tiers: unit, integration, e2e
#   4. build-asan/ with -DPROMGUARD_SANITIZE=ON, ctest -L 'unit|integration'
#      under ASan (leak detection on) and UBSan (halt on error)
#   5. the integration tier of build/ again with promguard under valgrind
#      (PROMGUARD_VALGRIND=1: memcheck, full leak check; any error or leak fails the test)
#   6. build-fuzz/ with CC=clang -DPROMGUARD_FUZZ=ON, ctest -L fuzz: each libFuzzer
#      target (tests/fuzz/) over its seed corpus and regression inputs, then a fixed
#      number of runs with -seed=1, under ASan (leaks too) and UBSan
#
# All four ctest runs always happen so one report shows every failure; a build failure
# stops at once. CTEST_PARALLEL_LEVEL (read by ctest itself) runs tests in parallel.
# This is exactly what .ci/run executes.
set -euo pipefail
cd "$(dirname "$0")/.."

stage() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }
t0=$SECONDS
failed=()

stage "deps"
./scripts/deps.sh

stage "build (build/)"
./scripts/build.sh

stage "ctest: all tiers (build/)"
if ! ctest --test-dir build --output-on-failure --no-tests=error; then
	failed+=("ctest build/ (unit, integration, e2e)")
fi

stage "build with ASan+UBSan (build-asan/)"
BUILD_DIR=build-asan ./scripts/build.sh -DPROMGUARD_SANITIZE=ON

stage "ctest: unit + integration under ASan+UBSan (build-asan/)"
if ! ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	ctest --test-dir build-asan -L 'unit|integration' --output-on-failure --no-tests=error; then
	failed+=("ctest build-asan/ (unit, integration under sanitizers)")
fi

stage "ctest: integration under valgrind (build/)"
if ! PROMGUARD_VALGRIND=1 ctest --test-dir build -L integration -j2 --output-on-failure --no-tests=error; then
	failed+=("ctest build/ (integration under valgrind)")
fi

stage "build the libFuzzer targets with clang (build-fuzz/)"
CC=clang BUILD_DIR=build-fuzz ./scripts/build.sh -DPROMGUARD_FUZZ=ON

stage "ctest: fuzz targets (build-fuzz/)"
if ! ctest --test-dir build-fuzz -L fuzz --output-on-failure --no-tests=error; then
	failed+=("ctest build-fuzz/ (fuzz)")
fi

stage "done in $((SECONDS - t0))s"
if [ ${#failed[@]} -ne 0 ]; then
	printf 'FAILED: %s\n' "${failed[@]}" >&2
	exit 1
fi
echo "all tests passed"
