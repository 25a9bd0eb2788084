#!/usr/bin/env bash
# Run one libFuzzer target as a ctest (tests/fuzz/CMakeLists.txt):
#
#   run_fuzz.sh <fuzzer> <corpus dir> <regressions dir> <artifact dir> <max_len> <runs>
#
#   1. every file in <regressions dir> once, at full size (inputs that once crashed);
#   2. <runs> fuzzing runs with -seed=1, starting from a temporary copy of <corpus dir> (new
#      inputs go to the copy, so the repository is never written), regressions dir as a second,
#      read-only corpus.
#
# Fails (non-zero) on any crash, leak, timeout, sanitizer report or broken property; libFuzzer
# leaves the input that did it in <artifact dir> (reproduce: <fuzzer> <artifact>).
set -euo pipefail

fuzzer=$1 corpus=$2 regressions=$3 artifacts=$4 max_len=$5 runs=$6

# halt_on_error: a UBSan report is a failure, not a line in the log.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

work=$(mktemp -d "${TMPDIR:-/tmp}/promguard-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$artifacts" "$work/corpus"
if [ -d "$corpus" ]; then
	cp -R "$corpus"/. "$work/corpus/"
fi

# Common flags: bounded time per input and memory, crash files kept outside the source tree.
# stdin is /dev/null: fuzz_conf may name any file as admin.reload_token_file, /dev/stdin too.
flags=(-timeout=10 -rss_limit_mb=2048 -artifact_prefix="$artifacts/" -print_final_stats=1)

shopt -s nullglob
regs=()
if [ -d "$regressions" ]; then
	regs=("$regressions"/*)
fi
if [ ${#regs[@]} -gt 0 ]; then
	echo "== $(basename "$fuzzer"): ${#regs[@]} regression input(s)"
	"$fuzzer" "${flags[@]}" "${regs[@]}" </dev/null
fi

dirs=("$work/corpus")
if [ ${#regs[@]} -gt 0 ]; then
	dirs+=("$regressions")
fi
echo "== $(basename "$fuzzer"): seed corpus ($(ls "$work/corpus" | wc -l) inputs), then $runs runs"
"$fuzzer" "${flags[@]}" -seed=1 -runs="$runs" -max_len="$max_len" "${dirs[@]}" </dev/null
