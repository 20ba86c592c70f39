#!/usr/bin/python3
"""Ceph RBD benchmark rows (issue 13, Performance): one RBD image of a throwaway single-node Ceph
(tests/integration/ceph_fixture.py: one mon, one memstore OSD on 127.0.0.1), read and written
through kvmfs' `backend: rbd` disk.raw against qemu-storage-daemon's (QSD) FUSE export of
`--blockdev driver=rbd,pool=...,image=...,conf=...,user=...` (qemu-block-extra), side by side in
one run on the same image. fio (psync, one job, O_DIRECT on the FUSE file):

  seqread     sequential read, 1 MiB requests
  randread    random read, 4 KiB requests
  randwrite   random write, 4 KiB requests (the image's objects exist already: both systems
              overwrite)

    python3 bench/rbd_bench.py --kvmfs BUILD/src/fuse/kvmfs            # 256 MiB, 3 rounds x 10 s
    python3 bench/rbd_bench.py --kvmfs BUILD/src/fuse/kvmfs --smoke    # 32 MiB, 1 round x 2 s

Every run mounts afresh (kvmfs or QSD) and unmounts after fio, so a writer's exclusive lock is
gone before the next system runs; rounds alternate which system goes first. Prints the median
MiB/s and IOPS of each system per row with their spread (min-max), the ratio kvmfs/QSD against
the goal (>= 1.5x), and with --out writes the table to a results file. The image's bytes are
checked through both systems against what `rbd import` stored before the rows run. Exit 0 when
everything ran (a missed goal does not fail), 1 when something failed, 77 (skipped) without
FUSE, fio, QSD's rbd driver or the Ceph packages. Prints
`KVMFS-IT-RESULT: file=bench-rbd.py passed=N failed=N skipped=N`.
It reuses bench/run.py's mount, QSD and fio helpers and the test fixture (imported, not
changed); everything is made under one temporary directory, removed at the end, and the cluster
is stopped.
"""

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import ceph_fixture  # noqa: E402
import run as benchrun  # noqa: E402

MiB = benchrun.MiB
IMAGE = "bench"
GOAL = 1.5

ROWS = [
    {"name": "seqread", "desc": "seq read 1 MiB", "rw": "read", "bs": "1M"},
    {"name": "randread", "desc": "random read 4 KiB", "rw": "randread", "bs": "4k"},
    {"name": "randwrite", "desc": "random write 4 KiB", "rw": "randwrite", "bs": "4k"},
]


class RbdQsdExport(benchrun.QsdExport):
    """QSD exporting one RBD image through QEMU's rbd block driver over FUSE."""

    def __init__(self, bench, writable):
        super().__init__(bench, [("unused", "raw")], writable)
        ro = "off" if writable else "on"
        c = bench.cluster
        mnt = self.mnt
        self.argv = [benchrun.QSD,
                     "--blockdev", "driver=rbd,node-name=rbd0,pool=%s,image=%s,conf=%s,user=admin,"
                     "read-only=%s" % (c.pool, IMAGE, c.conf, ro),
                     "--export", "type=fuse,id=exp0,node-name=rbd0,mountpoint=%s,writable=%s" % (
                         mnt, "on" if writable else "off")]


class RbdBench:
    def __init__(self, args):
        self.args = args
        self.kvmfs = os.path.abspath(args.kvmfs)
        self.workdir = tempfile.mkdtemp(prefix="kvmfs-rbd-bench-")
        self.passed = self.failed = 0
        self.cluster = None

    def start_cluster(self):
        # memstore keeps every object in RAM: room for the image and its rewrites.
        self.cluster = ceph_fixture.CephCluster(
            memstore_bytes=2 * self.args.size + 256 * MiB, tmp_parent=self.workdir)
        self.cluster.start()
        self.config = os.path.join(self.workdir, "kvmfs.yaml")
        with open(self.config, "w") as f:
            f.write("pools:\n  - name: ceph\n    backend: rbd\n    ceph_conf: %s\n"
                    "    client: admin\n    keyring: %s\n    pool: %s\n" % (
                        self.cluster.conf, self.cluster.keyring, self.cluster.pool))

    def make_image(self):
        src = os.path.join(self.workdir, "source.raw")
        benchrun.write_source_raw(src, self.args.size)
        self.cluster.rbd("import", src, IMAGE, timeout=3600)
        self.source_sha = sha256_file(src)
        os.unlink(src)

    def mount(self, system, writable):
        if system == "kvmfs":
            m = benchrun.KvmfsMount(self, self.config, readonly=not writable).start()
            return m, m.path("ceph", IMAGE, "disk.raw")
        q = RbdQsdExport(self, writable).start()
        return q, q.mnt

    def check_bytes(self):
        """Both systems read what rbd import stored (before any row writes)."""
        for system in ("kvmfs", "qsd"):
            obj, target = self.mount(system, False)
            try:
                got = sha256_file(target)
            finally:
                obj.stop()
            if got != self.source_sha:
                self.failed += 1
                benchrun.log("%s reads other bytes than rbd import stored" % system)
            else:
                self.passed += 1

    def one_run(self, system, row):
        obj, target = self.mount(system, "write" in row["rw"])
        try:
            return benchrun.run_fio(target, row["rw"], row["bs"], 1, self.args.runtime)
        finally:
            obj.stop()

    def run_row(self, row):
        systems = ["kvmfs", "qsd"]
        row["results"] = {s: [] for s in systems}
        for r in range(self.args.rounds):
            for s in (systems if r % 2 == 0 else list(reversed(systems))):
                try:
                    res = self.one_run(s, row)
                    row["results"][s].append(res)
                    self.passed += 1
                    benchrun.log("%s round %d %s: %.1f MiB/s, %.0f IOPS" % (
                        row["name"], r + 1, s, res["MiB/s"], res["IOPS"]))
                except benchrun.BenchError as e:
                    self.failed += 1
                    benchrun.log("%s round %d %s FAILED: %s" % (row["name"], r + 1, s, e))

    def table(self, rows):
        out = ["| row | kvmfs MiB/s (IOPS) | QSD MiB/s (IOPS) | kvmfs/QSD | spread kvmfs | spread QSD |",
               "|---|---|---|---|---|---|"]
        for row in rows:
            cells = {}
            for s in ("kvmfs", "qsd"):
                res = row["results"].get(s) or []
                if not res:
                    cells[s] = None
                    continue
                bw = [x["MiB/s"] for x in res]
                cells[s] = (statistics.median(bw), statistics.median([x["IOPS"] for x in res]),
                            min(bw), max(bw))
            k, q = cells["kvmfs"], cells["qsd"]

            def cell(c):
                return "%s (%s)" % (benchrun.fmt_num(c[0]), benchrun.fmt_num(c[1])) if c else "n/a"

            def spread(c):
                return "%s–%s" % (benchrun.fmt_num(c[2]), benchrun.fmt_num(c[3])) if c else "n/a"
            ratio = "n/a"
            if k and q and q[0] > 0:
                ratio = "%.2f× (goal ≥ %g×: %s)" % (k[0] / q[0], GOAL, "met" if k[0] / q[0] >= GOAL
                                                     else "missed")
            out.append("| %s | %s | %s | %s | %s | %s |" % (
                row["desc"], cell(k), cell(q), ratio, spread(k), spread(q)))
        return "\n".join(out)

    def cleanup(self):
        benchrun._cleanup_all()
        if self.cluster is not None:
            self.cluster.stop()
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(4 * MiB)
            if not b:
                return h.hexdigest()
            h.update(b)


def write_results(args, rows, table, elapsed):
    sha, dirty = benchrun.git_state()
    path = os.path.join(args.out, "%s-rbd-%s.md" % (time.strftime("%Y-%m-%d"), sha))
    os.makedirs(args.out, exist_ok=True)
    with open(path, "w") as f:
        f.write("# RBD disk.raw: kvmfs vs qemu-storage-daemon (driver=rbd)\n\n")
        f.write("kvmfs %s%s (%s build), %s image, %d round(s), %d s per fio run, %.0f s in all.\n"
                "Single-node Ceph (one mon, one memstore OSD, 127.0.0.1) started by "
                "tests/integration/ceph_fixture.py; fio psync, one job, O_DIRECT on the FUSE "
                "file; every run on a fresh mount; rounds alternate which system goes first; "
                "medians, spread min–max of MiB/s.\n\n" % (
                    sha, " (dirty tree)" if dirty else "", benchrun.buildtype_of(args.kvmfs) or "?",
                    benchrun.human(args.size), args.rounds, args.runtime, elapsed))
        if args.note:
            f.write("Note: %s\n\n" % args.note)
        f.write(table + "\n\n")
        f.write("Reproduce: `python3 bench/rbd_bench.py --kvmfs BUILD/src/fuse/kvmfs --out "
                "bench/results`\n")
    return path


def parse_args(argv):
    ap = argparse.ArgumentParser(description="RBD rows: kvmfs vs qemu-storage-daemon driver=rbd")
    ap.add_argument("--kvmfs", default=benchrun.find_kvmfs(), help="the kvmfs binary")
    ap.add_argument("--rows", default="", help="only these rows (comma-separated: seqread,...)")
    ap.add_argument("--size", type=benchrun.parse_size, default=256 * MiB, help="image size")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runtime", type=int, default=10, help="seconds per fio run")
    ap.add_argument("--smoke", action="store_true", help="32 MiB image, 1 round, 2 s runs")
    ap.add_argument("--out", help="write the table to OUT/DATE-rbd-SHA.md")
    ap.add_argument("--note", default="", help="free text saved with the results")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    # What bench/run.py's mount helpers read from their `bench.args`.
    ap.add_argument("--kvmfs-opts", default="")
    ap.add_argument("--qsd-file-opts", default="")
    args = ap.parse_args(argv)
    if args.smoke:
        args.size, args.rounds, args.runtime = 32 * MiB, 1, 2
    return args


def skip(reason):
    line = "=" * 72
    print("\n%s\nSKIPPED: %s\n  -> the RBD benchmark did NOT run on this machine.\n%s\n" % (
        line, reason, line))
    print("KVMFS-IT-RESULT: file=bench-rbd.py passed=0 failed=0 skipped=all", flush=True)
    sys.exit(benchrun.SKIP_EXIT_CODE)


def qsd_has_rbd():
    p = benchrun.run([benchrun.QSD, "--blockdev", "help"], check=False, timeout=30)
    if "rbd" in p.stdout + p.stderr:
        return True
    # Older QSDs do not list drivers: the module file says it.
    return any(os.path.exists(os.path.join(d, "block-rbd.so"))
               for d in ("/usr/lib/x86_64-linux-gnu/qemu", "/usr/lib/aarch64-linux-gnu/qemu",
                         "/usr/lib/qemu"))


def main(argv):
    args = parse_args(argv)
    if not os.path.exists(benchrun.FUSE_DEV):
        skip("%s missing (no FUSE here)" % benchrun.FUSE_DEV)
    for tool, pkg in ((benchrun.FUSERMOUNT, "fuse3"), (benchrun.FIO, "fio"),
                      (benchrun.QSD, "qemu-system-common")):
        if not os.access(tool, os.X_OK):
            skip("%s missing (apt-get install %s)" % (tool, pkg))
    problem = ceph_fixture.unavailable()
    if problem:
        skip(problem)
    if not qsd_has_rbd():
        skip("qemu-storage-daemon has no rbd driver (apt-get install qemu-block-extra)")
    if not args.kvmfs or not os.access(args.kvmfs, os.X_OK):
        print("rbd_bench: no kvmfs binary; pass --kvmfs BUILD/src/fuse/kvmfs")
        print("KVMFS-IT-RESULT: file=bench-rbd.py passed=0 failed=1 skipped=0", flush=True)
        return 1
    bench = RbdBench(args)
    rows = [r for r in ROWS if not args.rows or r["name"] in args.rows.split(",")]
    try:
        try:
            bench.start_cluster()
        except RuntimeError as e:
            bench.cleanup()
            skip("a Ceph cluster cannot start here: %s" % e)
        bench.make_image()
        bench.check_bytes()
        t0 = time.monotonic()
        for row in rows:
            bench.run_row(row)
        elapsed = time.monotonic() - t0
        table = bench.table(rows)
        print()
        print("%s RBD image, %d round(s), %d s per run, %.0f s in all" % (
            benchrun.human(args.size), args.rounds, args.runtime, elapsed))
        print(table)
        if args.out:
            print("results: %s" % write_results(args, rows, table, elapsed))
    except benchrun.EnvironmentUnusable as e:
        bench.cleanup()
        skip("mounting FUSE is impossible here: %s" % e)
    finally:
        bench.cleanup()
    print("KVMFS-IT-RESULT: file=bench-rbd.py passed=%d failed=%d skipped=0" % (
        bench.passed, bench.failed), flush=True)
    return 1 if bench.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
