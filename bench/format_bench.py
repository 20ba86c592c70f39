#!/usr/bin/python3
"""Format benchmark rows: kvmfs against qemu-storage-daemon (QSD) FUSE exports of the same
images, for the formats of issue 12, with fio (psync, O_DIRECT on the FUSE file).

    python3 bench/format_bench.py --kvmfs BUILD/src/fuse/kvmfs                # full (1 GiB images)
    python3 bench/format_bench.py --kvmfs BUILD/src/fuse/kvmfs --smoke        # seconds
    python3 bench/format_bench.py --kvmfs ... --rows vmdk-sparse-seqread      # one row

Each format has its own section below (images, rows); the shared part only mounts, runs fio and
prints the table. It reuses bench/run.py's mount, QSD and fio helpers (imported, not changed).
Every row is run in rounds that alternate which system goes first, each system on a fresh mount
with the host page cache warmed by reading the image files; the table shows medians and the
kvmfs/QSD ratio against the row's target. Exit status 0 when everything ran (a missed target
does not fail), 1 when something failed, 77 (skipped) without FUSE, fio or qemu-img. Prints
`KVMFS-IT-RESULT: file=bench-format.py passed=N failed=N skipped=N`.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as benchrun  # noqa: E402  (bench/run.py: KvmfsMount, QsdExport, run_fio, ...)

MiB = benchrun.MiB
GiB = benchrun.GiB


class Row:
    """One benchmark row: an image in its own pool directory, read by fio on both systems."""

    def __init__(self, name, desc, pool, image, fmt, rw, bs, jobs, target, warm):
        self.name, self.desc, self.pool, self.image, self.fmt = name, desc, pool, image, fmt
        self.rw, self.bs, self.jobs, self.target, self.warm = rw, bs, jobs, target, warm
        self.results = {"kvmfs": [], "qsd": []}


# --------------------------------------------------------------------------
# VMDK (issue 12): monolithicSparse sequential 1 MiB reads (target >= 2x QSD), and
# streamOptimized, whose compressed grains kvmfs decompresses in parallel.


def vmdk_rows(bench):
    rows = []
    for sub, key in (("monolithicSparse", "sparse"), ("streamOptimized", "stream")):
        pool = bench.new_pool("vmdk-" + key)
        image = os.path.join(pool, "disk.vmdk")
        benchrun.run([benchrun.QEMU_IMG, "convert", "-q", "-f", "raw", "-O", "vmdk", "-o",
                      "subformat=" + sub, bench.source(), image], timeout=3600)
        rows.append(Row("vmdk-%s-seqread" % key, "VMDK %s, seq read 1 MiB" % sub, pool, image,
                        "vmdk", "read", "1M", 1, 2.0 if key == "sparse" else None, [image]))
    return rows


# --------------------------------------------------------------------------
# VHDX (issue 12): a dynamic VHDX (QEMU's defaults) read sequentially, 1 MiB
# requests (target >= 2x QSD).


def vhdx_rows(bench):
    pool = bench.new_pool("vhdx-dynamic")
    image = os.path.join(pool, "disk.vhdx")
    benchrun.run([benchrun.QEMU_IMG, "convert", "-q", "-f", "raw", "-O", "vhdx", "-o",
                  "subformat=dynamic", bench.source(), image], timeout=3600)
    return [Row("vhdx-dynamic-seqread", "VHDX dynamic, seq read 1 MiB", pool, image, "vhdx", "read",
                "1M", 1, 2.0, [image])]


# --------------------------------------------------------------------------
# Shared: the source image, mounts, fio, the table.

FORMAT_ROWS = {"vmdk": vmdk_rows, "vhdx": vhdx_rows}


class FormatBench:
    def __init__(self, args):
        self.args = args
        self.kvmfs = args.kvmfs
        self.workdir = args.workdir or tempfile.mkdtemp(prefix="kvmfs-format-bench-")
        os.makedirs(self.workdir, exist_ok=True)
        self._source = None
        self.passed = self.failed = 0
        self.have_qsd = os.access(benchrun.QSD, os.X_OK)

    def source(self):
        if self._source is None:
            self._source = os.path.join(self.workdir, "source-%d.raw" % self.args.size)
            if not os.path.exists(self._source):
                benchrun.write_source_raw(self._source, self.args.size)
        return self._source

    def new_pool(self, name):
        d = os.path.join(self.workdir, "pool-" + name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d

    def warm(self, paths):
        for p in paths:
            with open(p, "rb", buffering=0) as f:
                while f.read(8 * MiB):
                    pass

    def one_run(self, system, row):
        self.warm(row.warm)
        if system == "kvmfs":
            obj = benchrun.KvmfsMount(self, row.pool, readonly=True).start()
            target = obj.path(os.path.basename(row.image), "disk.raw")
        else:
            obj = benchrun.QsdExport(self, [(row.image, row.fmt)], writable=False).start()
            target = obj.mnt
        try:
            return benchrun.run_fio(target, row.rw, row.bs, row.jobs, self.args.runtime)
        finally:
            obj.stop()

    def run_row(self, row):
        systems = ["kvmfs"] + (["qsd"] if self.have_qsd else [])
        for r in range(self.args.rounds):
            order = systems if r % 2 == 0 else list(reversed(systems))
            for system in order:
                try:
                    res = self.one_run(system, row)
                    row.results[system].append(res["MiB/s"])
                    self.passed += 1
                    benchrun.log("%s round %d %s: %.0f MiB/s" % (row.name, r + 1, system, res["MiB/s"]))
                except benchrun.BenchError as e:
                    self.failed += 1
                    benchrun.log("%s round %d %s FAILED: %s" % (row.name, r + 1, system, e))

    def table(self, rows):
        out = ["| row | kvmfs | QSD | kvmfs/QSD | target |", "|---|---|---|---|---|"]
        for row in rows:
            k = statistics.median(row.results["kvmfs"]) if row.results["kvmfs"] else None
            q = statistics.median(row.results["qsd"]) if row.results["qsd"] else None
            ratio = "%.2f×" % (k / q) if k and q else "n/a"
            target = "≥ %.0f×" % row.target if row.target else "—"
            if row.target and k and q:
                target += " (%s)" % ("met" if k / q >= row.target else "missed")
            out.append("| %s | %s | %s | %s | %s |" % (
                row.desc, "%.0f MiB/s" % k if k else "n/a", "%.0f MiB/s" % q if q else "n/a",
                ratio, target))
        return "\n".join(out)

    def cleanup(self):
        benchrun._cleanup_all()
        if not self.args.keep and not self.args.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def parse_args(argv):
    ap = argparse.ArgumentParser(description="format rows: kvmfs vs qemu-storage-daemon FUSE")
    ap.add_argument("--kvmfs", default=benchrun.find_kvmfs(), help="the kvmfs binary")
    ap.add_argument("--formats", default=",".join(FORMAT_ROWS), help="formats whose rows run")
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
    args = ap.parse_args(argv)
    if args.smoke:
        args.size, args.rounds, args.runtime = 64 * MiB, 1, 2
    return args


def main(argv):
    args = parse_args(argv)
    if not os.path.exists(benchrun.FUSE_DEV):
        benchrun.skip("%s missing (no FUSE here)" % benchrun.FUSE_DEV)
    for tool, pkg in ((benchrun.FUSERMOUNT, "fuse3"), (benchrun.FIO, "fio"),
                      (benchrun.QEMU_IMG, "qemu-utils")):
        if not os.access(tool, os.X_OK):
            benchrun.skip("%s missing (apt-get install %s)" % (tool, pkg))
    if not args.kvmfs or not os.access(args.kvmfs, os.X_OK):
        print("format_bench: no kvmfs binary; pass --kvmfs BUILD/src/fuse/kvmfs")
        print("KVMFS-IT-RESULT: file=bench-format.py passed=0 failed=1 skipped=0", flush=True)
        return 1
    bench = FormatBench(args)
    if not bench.have_qsd:
        benchrun.log("qemu-storage-daemon not found: kvmfs only")
    rows = []
    try:
        for fmt in [f for f in args.formats.split(",") if f]:
            if fmt not in FORMAT_ROWS:
                raise SystemExit("unknown format %r (known: %s)" % (fmt, ", ".join(FORMAT_ROWS)))
            rows += FORMAT_ROWS[fmt](bench)
        if args.rows:
            wanted = set(args.rows.split(","))
            rows = [r for r in rows if r.name in wanted]
        t0 = time.monotonic()
        for row in rows:
            bench.run_row(row)
        print()
        print("%s images, %d round(s), %d s per run, %.0f s in all" % (
            benchrun.human(args.size), args.rounds, args.runtime, time.monotonic() - t0))
        print(bench.table(rows))
    except benchrun.EnvironmentUnusable as e:
        bench.cleanup()
        benchrun.skip("mounting FUSE is impossible here: %s" % e)
    finally:
        bench.cleanup()
    print("KVMFS-IT-RESULT: file=bench-format.py passed=%d failed=%d skipped=0" % (
        bench.passed, bench.failed), flush=True)
    return 1 if bench.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
