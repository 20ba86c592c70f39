"""What the side-by-side benchmark scripts share (format_bench.py, crypto_bench.py): their
common arguments, the check for FUSE, fio and qemu-img, warming the host page cache, rounds
that alternate which system goes first, counting runs that worked and failed, and the run's
end (the table, cleanup, the `KVMFS-IT-RESULT` line). Mounts, QSD exports and fio come from
bench/run.py, imported as `benchrun`.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as benchrun  # noqa: E402

MiB = benchrun.MiB
GiB = benchrun.GiB


def arg_parser(description):
    """The arguments every side-by-side script takes; the caller may add its own."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--kvmfs", default=benchrun.find_kvmfs(), help="the kvmfs binary")
    ap.add_argument("--rows", default="", help="only these rows (comma-separated names)")
    ap.add_argument("--size", type=benchrun.parse_size, default=1 * GiB, help="image size")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runtime", type=int, default=10, help="seconds per fio run")
    ap.add_argument("--smoke", action="store_true", help="64 MiB images, 1 round, 2 s runs")
    ap.add_argument("--workdir", help="scratch directory (kept, images reused)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    # What bench/run.py's mount helpers read from their `bench.args`.
    ap.add_argument("--kvmfs-opts", default="")
    ap.add_argument("--qsd-file-opts", default="")
    return ap


def parse_args(ap, argv):
    args = ap.parse_args(argv)
    if args.smoke:
        args.size, args.rounds, args.runtime = 64 * MiB, 1, 2
    return args


class SideBench:
    """A scratch directory, the run counts, and rounds of runs on both systems."""

    def __init__(self, args, label):
        self.args = args
        self.label = label  # bench-NAME.py in the result line
        self.kvmfs = args.kvmfs
        self.workdir = args.workdir or tempfile.mkdtemp(prefix="kvmfs-%s-" % label)
        os.makedirs(self.workdir, exist_ok=True)
        self.passed = self.failed = 0
        self.have_qsd = os.access(benchrun.QSD, os.X_OK)

    @staticmethod
    def warm(paths):
        """Reads the files once, so that every system starts from the host page cache."""
        for p in paths:
            with open(p, "rb", buffering=0) as f:
                while f.read(8 * MiB):
                    pass

    def rounds(self, systems):
        """(round number from 1, system) for every round, each round in the other order."""
        for r in range(self.args.rounds):
            for s in (systems if r % 2 == 0 else list(reversed(systems))):
                yield r + 1, s

    def measure(self, what, run):
        """run() -> fio's result; its MiB/s, or None (logged and counted) when it failed."""
        try:
            res = run()
        except benchrun.BenchError as e:
            self.failed += 1
            benchrun.log("%s FAILED: %s" % (what, e))
            return None
        self.passed += 1
        benchrun.log("%s: %.1f MiB/s" % (what, res["MiB/s"]))
        return res["MiB/s"]

    def cleanup(self):
        benchrun._cleanup_all()
        if not self.args.keep and not self.args.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def check_tools(args, label):
    """Skips (exit 77) without FUSE, fio or qemu-img; 1 without a kvmfs binary, else None."""
    if not os.path.exists(benchrun.FUSE_DEV):
        benchrun.skip("%s missing (no FUSE here)" % benchrun.FUSE_DEV)
    for tool, pkg in ((benchrun.FUSERMOUNT, "fuse3"), (benchrun.FIO, "fio"),
                      (benchrun.QEMU_IMG, "qemu-utils")):
        if not os.access(tool, os.X_OK):
            benchrun.skip("%s missing (apt-get install %s)" % (tool, pkg))
    if not args.kvmfs or not os.access(args.kvmfs, os.X_OK):
        print("%s: no kvmfs binary; pass --kvmfs BUILD/src/fuse/kvmfs" % label)
        print("KVMFS-IT-RESULT: file=%s.py passed=0 failed=1 skipped=0" % label, flush=True)
        return 1
    return None


def run_rows(bench, prepare, run_row, table):
    """prepare() -> rows; runs each, prints the table; the exit status (0, 1, or 77 skipped)."""
    if not bench.have_qsd:
        benchrun.log("qemu-storage-daemon not found: kvmfs only")
    args = bench.args
    try:
        rows = prepare()
        t0 = time.monotonic()
        for row in rows:
            run_row(row)
        print()
        print("%s images, %d round(s), %d s per run, %.0f s in all" % (
            benchrun.human(args.size), args.rounds, args.runtime, time.monotonic() - t0))
        print(table(rows))
    except benchrun.EnvironmentUnusable as e:
        bench.cleanup()
        benchrun.skip("mounting FUSE is impossible here: %s" % e)
    finally:
        bench.cleanup()
    print("KVMFS-IT-RESULT: file=%s.py passed=%d failed=%d skipped=0" % (
        bench.label, bench.passed, bench.failed), flush=True)
    return 1 if bench.failed else 0
