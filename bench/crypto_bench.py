#!/usr/bin/python3
"""Encryption benchmark rows (issue 11): a LUKS qcow2 image (aes-256-xts-plain64, QEMU's
default) read sequentially in 1 MiB requests and written at random in 4 KiB requests, through
kvmfs against qemu-storage-daemon's (QSD) FUSE export of the same image given its secret, and
against the same image unencrypted through kvmfs. fio (psync, O_DIRECT on the FUSE file).

    python3 bench/crypto_bench.py --kvmfs BUILD/src/fuse/kvmfs            # full (1 GiB images)
    python3 bench/crypto_bench.py --kvmfs BUILD/src/fuse/kvmfs --smoke    # seconds

Goals: sequential read >= 2x QSD, and >= 0.5x the unencrypted image through kvmfs. Every
write run starts from a fresh copy of the image. Rounds alternate which system goes first.
Exit status 0 when everything ran (a missed goal does not fail), 1 when something failed, 77
(skipped) without FUSE, fio or qemu-img. Prints
`KVMFS-IT-RESULT: file=bench-crypto.py passed=N failed=N skipped=N`.
It reuses bench/run.py's mount, QSD and fio helpers and bench/side_bench.py's rounds.
"""

import os
import shutil
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as benchrun  # noqa: E402
import side_bench  # noqa: E402

PASSPHRASE = b"kvmfs-crypto-bench"


class SecretQsdExport(benchrun.QsdExport):
    """QSD exporting an encrypted qcow2, its passphrase given as a secret object."""

    def __init__(self, bench, image, writable):
        super().__init__(bench, [(image, "qcow2")], writable)
        self.argv[1:1] = ["--object", "secret,id=sec0,file=%s" % bench.pass_file]
        for i, a in enumerate(self.argv):
            if a.startswith("driver=qcow2,"):
                self.argv[i] = a + ",encrypt.format=luks,encrypt.key-secret=sec0"


# qemu-img for commands that derive a LUKS key: again while QEMU's PBKDF2 calibration measures
# no CPU time (the script says why).
QEMU_IMG_PBKDF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools",
                              "qemu-img-pbkdf")


class CryptoBench(side_bench.SideBench):
    def __init__(self, args):
        super().__init__(args, "bench-crypto")
        self.pass_file = os.path.join(self.workdir, "pass")
        with open(self.pass_file, "wb") as f:
            f.write(PASSPHRASE)
        os.chmod(self.pass_file, 0o600)
        self.keys = os.path.join(self.workdir, "keys.yaml")
        with open(self.keys, "w") as f:
            f.write('keys:\n  - match: "*"\n    file: %s\n' % self.pass_file)

    def build_images(self):
        src = os.path.join(self.workdir, "source-%d.raw" % self.args.size)
        if not os.path.exists(src):
            benchrun.write_source_raw(src, self.args.size)
        self.images = {}
        for key, opts in (("luks", "encrypt.format=luks,encrypt.key-secret=sec0"), ("plain", "")):
            pool = os.path.join(self.workdir, "pool-" + key)
            os.makedirs(pool, exist_ok=True)
            img = os.path.join(pool, "disk.qcow2")
            if not os.path.exists(img):
                argv = [QEMU_IMG_PBKDF, "convert", "-q", "--object",
                        "secret,id=sec0,file=" + self.pass_file, "-f", "raw", "-O", "qcow2"]
                argv += (["-o", opts] if opts else []) + [src, img]
                benchrun.run(argv, timeout=3600)
            self.images[key] = img
        return [r for r in ROWS if not self.args.rows or r["name"] in self.args.rows.split(",")]

    def one_run(self, system, key, rw, bs):
        img = self.images[key]
        writing = "write" in rw
        if writing:  # a fresh copy per run: every run allocates the same clusters
            pool = os.path.join(self.workdir, "run-" + key)
            shutil.rmtree(pool, ignore_errors=True)
            os.makedirs(pool)
            shutil.copy(img, os.path.join(pool, "disk.qcow2"))
            img = os.path.join(pool, "disk.qcow2")
        self.warm([img])
        if system == "kvmfs":
            opts = ["keys=" + self.keys] if key == "luks" else []
            obj = benchrun.KvmfsMount(self, os.path.dirname(img), readonly=not writing,
                                      extra_opts=opts).start()
            target = obj.path("disk.qcow2", "disk.raw")
        else:
            obj = SecretQsdExport(self, img, writing).start()
            target = obj.mnt
        try:
            return benchrun.run_fio(target, rw, bs, 1, self.args.runtime)
        finally:
            obj.stop()

    def run_row(self, row):
        name, rw, bs, systems = row["name"], row["rw"], row["bs"], row["systems"]
        if not self.have_qsd:
            systems = [s for s in systems if s[0] != "qsd"]
        row["results"] = {s: [] for s in systems}
        for r, s in self.rounds(systems):
            v = self.measure("%s round %d %s/%s" % (name, r, s[0], s[1]),
                             lambda: self.one_run(s[0], s[1], rw, bs))
            if v is not None:
                row["results"][s].append(v)

    def table(self, rows):
        out = ["| row | kvmfs LUKS | QSD LUKS | kvmfs plain | LUKS/QSD | LUKS/plain |",
               "|---|---|---|---|---|---|"]

        def med(row, s):
            v = row["results"].get(s)
            return statistics.median(v) if v else None

        for row in rows:
            k, q, p = (med(row, ("kvmfs", "luks")), med(row, ("qsd", "luks")),
                       med(row, ("kvmfs", "plain")))
            cell = lambda v: "%.1f MiB/s" % v if v else "n/a"  # noqa: E731

            def ratio(a, b, goal):
                if not a or not b:
                    return "n/a"
                s = "%.2f×" % (a / b)
                return s + (" (goal ≥ %g×: %s)" % (goal, "met" if a / b >= goal else "missed")
                            if goal else "")
            out.append("| %s | %s | %s | %s | %s | %s |" % (
                row["desc"], cell(k), cell(q), cell(p), ratio(k, q, row["goal_qsd"]),
                ratio(k, p, row["goal_plain"])))
        return "\n".join(out)


ROWS = [
    {"name": "luks-qcow2-seqread", "desc": "LUKS qcow2 aes-256-xts, seq read 1 MiB",
     "rw": "read", "bs": "1M", "goal_qsd": 2.0, "goal_plain": 0.5,
     "systems": [("kvmfs", "luks"), ("qsd", "luks"), ("kvmfs", "plain")]},
    {"name": "luks-qcow2-randwrite", "desc": "LUKS qcow2 aes-256-xts, random write 4 KiB",
     "rw": "randwrite", "bs": "4k", "goal_qsd": None, "goal_plain": 0.5,
     "systems": [("kvmfs", "luks"), ("qsd", "luks"), ("kvmfs", "plain")]},
]


def main(argv):
    args = side_bench.parse_args(
        side_bench.arg_parser("LUKS qcow2 rows: kvmfs vs qemu-storage-daemon"), argv)
    missing = side_bench.check_tools(args, "bench-crypto")
    if missing is not None:
        return missing
    bench = CryptoBench(args)
    return side_bench.run_rows(bench, bench.build_images, bench.run_row, bench.table)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
