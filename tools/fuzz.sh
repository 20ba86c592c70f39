#!/bin/bash
# Runs the libFuzzer targets of tests/fuzz/ (issue 15, README "Fuzzing").
#
#   tools/fuzz.sh [--build-dir DIR] [--seconds N | --long] [--jobs J]
#                 [--corpus DIR] [--work DIR] [--targets "a b ..."] [--no-build]
#
# 1. Builds the clang fuzz build in DIR (default: build-fuzz in the source
#    tree; set up when DIR has none: CXX=clang++ meson setup DIR -Dfuzz=true
#    -Db_sanitize=address,undefined -Db_lundef=false), only the fuzz targets.
# 2. Makes the seed corpora with qemu-img/qemu-io (tests/fuzz/make_seeds.py)
#    in a work directory (a new temporary one unless --work).
# 3. Runs every target for N seconds (default 60; --long: 1800) with
#    -rss_limit_mb=2048 -timeout=10 (a hang or a blow-up is a finding), the
#    target's -max_len and dictionaries (tests/fuzz/dict/: the format's,
#    e.g. qcow2.dict, and TARGET.dict), UBSan halting on error, J
#    targets at a time (default 1), each under nice. The corpus a run grows
#    is kept in --corpus DIR/TARGET when given (a long run goes on from it),
#    else in the work directory.
# 4. Prints per target: executions, coverage (cov/ft of libFuzzer's last
#    line), corpus size, findings; exits 1 on any finding, with the
#    reproducer's path and the command that replays it.
#
# CI smoke run (every target, 20 s each, two at a time: about 3 minutes):
#   tools/fuzz.sh --build-dir build-fuzz --seconds 20 --jobs 2
# or, in a -Dfuzz=true build, its meson test (the same run):
#   meson test -C build-fuzz --suite fuzz --print-errorlogs
# KVMFS_FUZZ_SECONDS sets the default of --seconds.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
build="$here/build-fuzz"
seconds=${KVMFS_FUZZ_SECONDS:-60}
jobs=1
corpus_root=""
work=""
targets=""
do_build=1

usage() { sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//;$d'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) build=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --long) seconds=1800; shift ;;
    --jobs) jobs=$2; shift 2 ;;
    --corpus) corpus_root=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --targets) targets=$2; shift 2 ;;
    --no-build) do_build=0; shift ;;
    -h|--help) usage 0 ;;
    *) echo "fuzz.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done

# -max_len per target: the largest seed it needs (an image of its shapes)
# with room to grow; a text parser gets little.
max_len() {
  case "$1" in
    config|vmdk_descriptor) echo 16384 ;;
    qcow2_header) echo 262144 ;;
    qcow2_snapshot) echo 65536 ;;
    format_qcow) echo 262144 ;;
    format_qcow2|qcow2_l2|qcow2_compressed|qcow2_refcount|qcow2_write) echo 1048576 ;;
    format_vdi|format_vpc|format_luks|luks_header) echo 2400000 ;;
    format_vmdk) echo 2200000 ;;
    format_vhdx) echo 10600000 ;;
    *) echo 1048576 ;;
  esac
}

# ---- build --------------------------------------------------------------------
if [ "$do_build" = 1 ]; then
  if [ ! -f "$build/build.ninja" ]; then
    CC=clang CXX=clang++ meson setup "$build" "$here" -Dfuzz=true \
      -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
  fi
  grep -q "fuzz_format_qcow2" "$build/build.ninja" ||
    { echo "fuzz.sh: $build is not a -Dfuzz=true build" >&2; exit 2; }
  all=$(ninja -C "$build" -t targets all | sed -n 's|^\(tests/fuzz/fuzz_[a-z0-9_]*\):.*|\1|p' | sort -u)
  nice ninja -C "$build" $all >/dev/null
fi
available=$(find "$build/tests/fuzz" -maxdepth 1 -type f -name 'fuzz_*' -perm -u+x -printf '%f\n' |
  sed 's/^fuzz_//' | sort)
[ -n "$targets" ] || targets=$available
for t in $targets; do
  [ -x "$build/tests/fuzz/fuzz_$t" ] || { echo "fuzz.sh: no target $t in $build" >&2; exit 2; }
done

# ---- seeds --------------------------------------------------------------------
if [ -z "$work" ]; then
  work=$(mktemp -d "${TMPDIR:-/tmp}/kvmfs-fuzz-XXXXXX")
fi
mkdir -p "$work"
echo "fuzz.sh: work directory $work"
ulimit -c 0  # qemu-io "abort" leaves a dirty image, not a core
python3 "$here/tests/fuzz/make_seeds.py" "$work/seeds" --targets "$(echo $targets | tr ' ' ,)" >"$work/seeds.log"

# ---- runs ---------------------------------------------------------------------
# UBSan stops at the first report, so that libFuzzer sees it as a crash.
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
run_one() {
  local t=$1
  local corpus="${corpus_root:+$corpus_root/$t}"
  corpus=${corpus:-$work/corpus/$t}
  mkdir -p "$corpus" "$work/findings"
  mkdir -p "$work/seeds/$t"
  # The format's dictionary (qcow2.dict for every qcow2 target) and the
  # target's own.
  local dict=() d="$here/tests/fuzz/dict" parts=()
  case "$t" in format_qcow2|qcow2_*) parts+=("$d/qcow2.dict") ;; esac
  [ -f "$d/$t.dict" ] && parts+=("$d/$t.dict")
  if [ ${#parts[@]} -gt 0 ]; then
    mkdir -p "$work/dict"
    cat "${parts[@]}" >"$work/dict/$t.dict"
    dict=(-dict="$work/dict/$t.dict")
  fi
  # Leaks are reported at exit only; -detect_leaks stays on (the default).
  nice -n 10 "$build/tests/fuzz/fuzz_$t" "$corpus" "$work/seeds/$t" \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -max_len="$(max_len "$t")" \
    "${dict[@]}" -artifact_prefix="$work/findings/$t-" -print_final_stats=1 \
    -close_fd_mask=1 >"$work/$t.log" 2>&1 || true
}

pids=()
for t in $targets; do
  run_one "$t" &
  pids+=($!)
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
done
wait

# ---- report -------------------------------------------------------------------
status=0
printf '%-20s %12s %8s %8s %7s  %s\n' target executions cov ft corpus findings
for t in $targets; do
  log="$work/$t.log"
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(echo "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
  ft=$(echo "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
  corp=$(echo "$last" | sed -n 's/.* corp: \([0-9]*\).*/\1/p')
  found=$(ls "$work/findings" 2>/dev/null | grep -E "^$t-(crash|leak|timeout|oom)-" || true)
  n=$(echo -n "$found" | grep -c . || true)
  printf '%-20s %12s %8s %8s %7s  %s\n' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$n"
  if [ "$n" -gt 0 ]; then
    status=1
    for f in $found; do
      echo "  finding: $work/findings/$f"
      echo "    replay: $build/tests/fuzz/fuzz_$t $work/findings/$f"
    done
    grep -E '^(==[0-9]+==ERROR|==FUZZ PROPERTY==|SUMMARY|.*runtime error)' "$log" | head -5 | sed 's/^/    /'
  elif [ -z "$execs" ]; then
    status=1
    echo "  $t did not run to the end: see $log"
    tail -5 "$log" | sed 's/^/    /'
  fi
done
exit $status
