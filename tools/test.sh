#!/bin/bash
# Installs what is missing, builds kvmfs from scratch and runs every test:
#   phase 1: release-like build (-O2, assertions on, no debug info): unit and
#            integration tests, and the expensive fixtures once (suites bench and expensive: the benchmark smoke,
#            the Ceph/S3 cluster, Prometheus)
#   phase 2: ASan+UBSan build (-O0): unit + integration tests again
#   phase 3: TSan build (-O2): the threaded unit tests and the concurrency
#            integration tests (only what they need is built)
#   phase 4: clang build with the thread-safety analysis as errors, ASan+UBSan and
#            the libFuzzer targets: their smoke run (suite fuzz)
# and ends with one line `N passed, N failed[, N skipped]` (test cases, counted by
# tools/count-tests.py). Exit status 0 only when nothing failed.
#
# usage: tools/test.sh [--no-sanitize] [--no-deps] [--suite unit|integration]
#   --no-sanitize   skip phases 2 and 3 (faster local runs)
#   --no-deps       do not run tools/setup-deps.sh
#   --suite S       run only meson suite S (unit or integration)
# Build dirs: build-test/, build-asan/, build-tsan/ and build-clang/ at the top of the repo
# (wiped first), or under $KVMFS_BUILD_ROOT when set. Each phase's tests get their own
# TMPDIR inside its build dir (on the build disk, not a small /tmp or /dev/shm), removed
# when the phase ends; with KVMFS_PRUNE_BUILDS=1 (set by .ci/run) a phase's build dir is
# pruned to its test log afterwards, so four sanitizer builds do not fill a small disk.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
sanitize=1
deps=1
suite_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-sanitize) sanitize=0 ;;
    --no-deps) deps=0 ;;
    --suite) suite_args=(--suite "$2"); shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

if [ "$deps" = 1 ]; then
  "$repo/tools/setup-deps.sh"
fi

jobs=$(nproc 2>/dev/null || echo 2)
logs=()
build_failures=0
build_root=${KVMFS_BUILD_ROOT:-$repo}
san_logs="$build_root/build-asan-reports"

# test_targets BUILD_DIR LABEL SELECTION...: the build targets (paths relative to
# BUILD_DIR) that the selected tests need: what `meson test` would rebuild for
# them. SELECTION is test names or --suite S pairs.
test_targets() {
  local dir=$1 label=$2
  shift 2
  meson introspect "$dir" --tests --targets | /usr/bin/python3 -c '
import json, os, sys
doc = json.load(sys.stdin)
build, args = sys.argv[1], sys.argv[2:]
suites = {args[i + 1] for i in range(len(args) - 1) if args[i] == "--suite"}
names = {a for i, a in enumerate(args) if a != "--suite" and (i == 0 or args[i - 1] != "--suite")}
files = {t["id"]: t["filename"] for t in doc["targets"]}
out = set()
for t in doc["tests"]:
    if t["name"] in names or any(s.split(":")[-1] in suites for s in t["suite"]):
        for d in t["depends"]:
            out.update(os.path.relpath(f, build) for f in files.get(d, []))
print("\n".join(sorted(out)))
' "$dir" "$@"
}

# run_phase LABEL BUILD_DIR [meson setup args...]
run_phase() {
  local label=$1 dir=$2
  shift 2
  echo "=== [$label] configure $dir $* (at $(date +%T))"
  rm -rf "$dir"
  if ! meson setup "$dir" "$repo" "$@"; then
    echo "=== [$label] configure FAILED"
    build_failures=$((build_failures + 1))
    return 0
  fi
  local mult=1
  local selection=("${suite_args[@]}")
  if [ "$label" = asan ]; then
    mult=3
    # The expensive fixtures run once, in the release phase.
    [ ${#suite_args[@]} -eq 0 ] && selection=(--suite unit --suite integration)
  fi
  if [ "$label" = clang ]; then
    mult=3
    [ ${#suite_args[@]} -eq 0 ] && selection=(--suite fuzz)
  fi
  if [ "$label" = tsan ]; then
    mult=5
    if [ ${#suite_args[@]} -eq 0 ]; then
      # The unit tests with threads in them (helper pools, caches shared by
      # readers and writers, parallel allocating writes, the inode table, the
      # metrics shards, the layer registry, the S3 block fetcher). The single-threaded format checks
      # take many minutes under TSan and find no races: the release and ASan
      # phases run them.
      mapfile -t selection < <(meson test -C "$dir" --list --suite unit 2>/dev/null | grep ' / ' |
        sed 's|.* / ||' |
        grep -xE 'unit-(base|backend|backend-s3|codec|crypto|metrics|pool|fuse-inodes|format-qcow2-cache|format-qcow2-write)')
      selection+=(it-concurrency it-coherence)
    fi
  fi
  echo "=== [$label] build (at $(date +%T))"
  local targets=()
  if [ "$label" = clang ] || [ "$label" = tsan ]; then
    # These phases build only what their tests run: the clang phase checks that
    # the program compiles with clang under the thread-safety analysis and runs
    # the fuzz targets; the TSan phase runs a selection (below). The release and
    # ASan phases build everything.
    mapfile -t targets < <(test_targets "$dir" "$label" "${selection[@]}")
    [ "$label" = clang ] && targets+=(src/fuse/kvmfs)
  fi
  if ! ninja -C "$dir" -j "$jobs" "${targets[@]}"; then
    echo "=== [$label] build FAILED"
    build_failures=$((build_failures + 1))
    return 0
  fi
  echo "=== [$label] test (at $(date +%T))"
  local phase_tmp="$dir/test-tmp"
  mkdir -p "$phase_tmp"
  df -h "$dir" /tmp /dev/shm 2>/dev/null | sed "s/^/[$label] df: /" || true
  # meson's exit status is not used: count-tests.py reads the log and decides.
  local rebuild=()
  [ "$label" = clang ] && rebuild=(--no-rebuild)
  TMPDIR="$phase_tmp" meson test -C "$dir" "${rebuild[@]}" --print-errorlogs --num-processes "$jobs" \
    --timeout-multiplier "$mult" "${selection[@]}" || true
  # What a test left behind (a crashed daemon's directory) goes with the phase.
  left=$(du -sh "$phase_tmp" 2>/dev/null | cut -f1)
  echo "=== [$label] test temporaries left: ${left:-0}"
  rm -rf "$phase_tmp"
  if [ "${KVMFS_PRUNE_BUILDS:-0}" = 1 ]; then
    mkdir -p "$build_root/test-logs"
    cp "$dir/meson-logs/testlog.json" "$build_root/test-logs/$label.json" 2>/dev/null || true
    rm -rf "$dir"
    logs+=("$label=$build_root/test-logs/$label.json")
  else
    logs+=("$label=$dir/meson-logs/testlog.json")
  fi
  echo "=== [$label] done at $(date +%T)"
}

rm -rf "$build_root/test-logs"
# -O2 without debug information (-g made the build a third slower; nothing in
# this phase reads it); assertions stay on.
run_phase release "$build_root/build-test" -Ddebug=false

if [ "$sanitize" = 1 ]; then
  rm -rf "$san_logs"
  mkdir -p "$san_logs"
  # Reports go to files so that a daemonized kvmfs (no stderr) is caught too;
  # each report file counts as a failure. Leak checking stays on: a clean
  # unmount must not leak.
  export ASAN_OPTIONS="log_path=$san_logs/asan:detect_leaks=1:abort_on_error=0:strict_string_checks=1"
  export UBSAN_OPTIONS="log_path=$san_logs/ubsan:print_stacktrace=1:halt_on_error=1"
  # -O0 (debug): g++ compiles with -fsanitize=undefined four times slower at
  # -O2 than at -O0 (42 s against 11 s for src/pool/image_cache.cpp), which
  # cost more than the tests gain from optimization; the tests' own hot loops
  # (whole-file reads, byte-wise compares) are written to be cheap at -O0.
  run_phase asan "$build_root/build-asan" -Db_sanitize=address,undefined -Db_lundef=false \
    -Dbuildtype=debug
  unset ASAN_OPTIONS UBSAN_OPTIONS

  # The read path is shared by FUSE worker threads: race-check the unit tests
  # (which include threaded readers) and the concurrent-readers mount test.
  export TSAN_OPTIONS="log_path=$san_logs/tsan:halt_on_error=0:second_deadlock_stack=1"
  run_phase tsan "$build_root/build-tsan" -Db_sanitize=thread -Dbuildtype=debugoptimized
  unset TSAN_OPTIONS

  # clang: the code builds with clang too, the thread-safety annotations are
  # checked (meson.build makes violations errors), and every parser's
  # libFuzzer target gets a smoke run under ASan+UBSan.
  export ASAN_OPTIONS="log_path=$san_logs/clang-asan:detect_leaks=1:abort_on_error=0"
  export UBSAN_OPTIONS="log_path=$san_logs/clang-ubsan:print_stacktrace=1:halt_on_error=1"
  export CXX=clang++
  run_phase clang "$build_root/build-clang" -Dfuzz=true \
    -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debugoptimized
  unset CXX ASAN_OPTIONS UBSAN_OPTIONS
fi

echo "=== summary"
count_args=(--extra-failed "$build_failures")
[ "$sanitize" = 1 ] && count_args+=(--sanitizer-logs "$san_logs")
exec /usr/bin/python3 "$repo/tools/count-tests.py" "${count_args[@]}" "${logs[@]}"
