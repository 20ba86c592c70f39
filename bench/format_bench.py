#!/usr/bin/python3
"""Format benchmark rows: kvmfs against qemu-storage-daemon (QSD) FUSE exports of the same
images, for the formats of issue 12, with fio (psync, O_DIRECT on the FUSE file).

    python3 bench/format_bench.py --kvmfs BUILD/src/fuse/kvmfs                # full (1 GiB images)
    python3 bench/format_bench.py --kvmfs BUILD/src/fuse/kvmfs --smoke        # seconds
    python3 bench/format_bench.py --kvmfs ... --rows vmdk-sparse-seqread      # one row

Each format has its own section below (images, rows); the shared part only mounts, runs fio and
prints the table. It reuses bench/run.py's mount, QSD and fio helpers and bench/side_bench.py's
rounds.
Every row is run in rounds that alternate which system goes first, each system on a fresh mount
with the host page cache warmed by reading the image files; the table shows medians and the
kvmfs/QSD ratio against the row's target. Exit status 0 when everything ran (a missed target
does not fail), 1 when something failed, 77 (skipped) without FUSE, fio or qemu-img. Prints
`KVMFS-IT-RESULT: file=bench-format.py passed=N failed=N skipped=N`.
"""

import os
import shutil
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as benchrun  # noqa: E402  (bench/run.py: KvmfsMount, QsdExport, run_fio, ...)
import side_bench  # noqa: E402


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


class FormatBench(side_bench.SideBench):
    def __init__(self, args):
        super().__init__(args, "bench-format")
        self._source = None

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
        for r, system in self.rounds(systems):
            v = self.measure("%s round %d %s" % (row.name, r, system),
                             lambda: self.one_run(system, row))
            if v is not None:
                row.results[system].append(v)

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

    def rows(self):
        rows = []
        for fmt in [f for f in self.args.formats.split(",") if f]:
            if fmt not in FORMAT_ROWS:
                raise SystemExit("unknown format %r (known: %s)" % (fmt, ", ".join(FORMAT_ROWS)))
            rows += FORMAT_ROWS[fmt](self)
        if self.args.rows:
            wanted = set(self.args.rows.split(","))
            rows = [r for r in rows if r.name in wanted]
        return rows


def main(argv):
    ap = side_bench.arg_parser("format rows: kvmfs vs qemu-storage-daemon FUSE")
    ap.add_argument("--formats", default=",".join(FORMAT_ROWS), help="formats whose rows run")
    args = side_bench.parse_args(ap, argv)
    missing = side_bench.check_tools(args, "bench-format")
    if missing is not None:
        return missing
    bench = FormatBench(args)
    return side_bench.run_rows(bench, bench.rows, bench.run_row, bench.table)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
