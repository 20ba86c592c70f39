#!/usr/bin/python3
"""Format benchmark: kvmfs against qemu-storage-daemon (QSD) FUSE exports of the
same images, for the formats other than qcow2 (issue 12).

    python3 bench/format_bench.py --kvmfs BUILD/src/fuse/kvmfs            # full run
    python3 bench/format_bench.py --kvmfs BUILD/src/fuse/kvmfs --smoke    # under a minute

Rows (each in its own function below; one row per format helper):
  vhdx-dynamic-seqread-1M   sequential 1 MiB O_DIRECT reads of a dynamic VHDX (QEMU's
                            defaults, a --size disk of mixed random and compressible data),
                            kvmfs disk.raw vs `qemu-storage-daemon --blockdev driver=vhdx
                            --export type=fuse`. Goal: kvmfs >= 2x QSD.

For every round and row, fio (psync, direct) runs once on a fresh read-only kvmfs mount
and once on a fresh QSD export, alternating which goes first; never both at once.
Prints a table (medians, ratio, goal) and writes it as JSON (--out). Standard library
only. Exit status: 0 when everything ran (a missed goal does not fail the run), 1 when
something failed, 77 when FUSE, fio or QSD is not usable here.
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

SKIP_EXIT_CODE = 77
MiB = 1024 * 1024
GiB = 1024 * MiB
QEMU_IMG = shutil.which("qemu-img") or "/usr/bin/qemu-img"
QSD = shutil.which("qemu-storage-daemon") or "/usr/bin/qemu-storage-daemon"
FIO = shutil.which("fio") or "/usr/bin/fio"
FUSERMOUNT = shutil.which("fusermount3") or "/usr/bin/fusermount3"
MOUNT_TIMEOUT_S = 30


class BenchError(Exception):
    pass


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def run(argv, check=True, timeout=600):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise BenchError("failed (rc=%d): %s\n%s" % (p.returncode, " ".join(argv), p.stderr[-2000:]))
    return p


def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if line.split()[4].replace("\\040", " ") == path:
                return True
    return False


def unmount(path):
    if is_mounted(path):
        run([FUSERMOUNT, "-u", path], check=False, timeout=60)
    if is_mounted(path):
        run([FUSERMOUNT, "-u", "-z", path], check=False, timeout=60)


# --------------------------------------------------------------------------
# The two systems: a kvmfs mount of a pool, a QSD FUSE export of one image


class Server:
    """A child process serving FUSE at `mnt`; stopped by unmounting (kvmfs) or
    SIGTERM (QSD)."""

    def __init__(self, argv, mnt, log_path, terminate):
        self.argv, self.mnt, self.log_path, self.terminate = argv, mnt, log_path, terminate
        self.proc = None

    def __enter__(self):
        with open(self.log_path, "ab") as lf:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=lf,
                                         stderr=subprocess.STDOUT)
        deadline = time.time() + MOUNT_TIMEOUT_S
        while not is_mounted(self.mnt):
            if self.proc.poll() is not None or time.time() > deadline:
                self.__exit__()
                with open(self.log_path, errors="replace") as f:
                    raise BenchError("%s did not mount:\n%s" % (self.argv[0], f.read()[-2000:]))
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        if self.terminate and self.proc.poll() is None:
            self.proc.terminate()
        unmount(self.mnt)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def kvmfs_server(bench, pool):
    mnt = tempfile.mkdtemp(prefix="mnt-kvmfs-", dir=bench.workdir)
    return Server([bench.args.kvmfs, "-f", "-o", "ro", pool, mnt], mnt, mnt + ".log", False)


def qsd_server(bench, image, fmt):
    fd, mnt = tempfile.mkstemp(prefix="mnt-qsd-", suffix=".raw", dir=bench.workdir)
    os.close(fd)
    argv = [QSD,
            "--blockdev", "driver=file,node-name=f,filename=%s,read-only=on" % image,
            "--blockdev", "driver=%s,node-name=v,file=f,read-only=on" % fmt,
            "--export", "type=fuse,id=exp0,node-name=v,mountpoint=%s,writable=off" % mnt]
    return Server(argv, mnt, mnt + ".log", True)


def fio_read(path, bs, rw, runtime, size):
    argv = [FIO, "--name=bench", "--filename=" + path, "--rw=" + rw, "--bs=" + bs,
            "--ioengine=psync", "--direct=1", "--numjobs=1", "--output-format=json",
            "--runtime=%d" % runtime, "--time_based", "--size=%d" % size, "--invalidate=0",
            "--allow_file_create=0"]
    p = run(argv, check=False, timeout=runtime + 300)
    if p.returncode != 0:
        raise BenchError("fio failed: %s\n%s" % (" ".join(argv), p.stderr[-1500:]))
    job = json.loads(p.stdout[p.stdout.find("{"):])["jobs"][0]
    if job["read"]["io_bytes"] <= 0:
        raise BenchError("fio read nothing from " + path)
    return job["read"]["bw_bytes"] / MiB


def write_source(path, size, seed=5):
    """Mixed data: random blocks, text-like blocks, and untouched (zero) ranges."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, MiB):
            kind = rng.random()
            if kind < 0.15:
                continue  # never written: a hole
            f.seek(off)
            if kind < 0.6:
                f.write(rng.randbytes(MiB))
            else:
                word = b"kvmfs-%08x " % rng.getrandbits(32)
                f.write((word * (MiB // len(word) + 1))[:MiB])
    return path


class Bench:
    def __init__(self, args):
        self.args = args
        self.workdir = tempfile.mkdtemp(prefix="kvmfs-fmtbench-")
        self.rows = []

    def measure(self, row, goal, pool, name, fmt, bs="1M", rw="read"):
        """Runs one row: alternating kvmfs (pool/name/disk.raw) and QSD (the image)."""
        image = os.path.join(pool, name)
        size = os.path.getsize(os.path.join(self.workdir, "source.raw"))
        results = {"kvmfs": [], "QSD": []}
        for r in range(self.args.rounds):
            order = ("kvmfs", "QSD") if r % 2 == 0 else ("QSD", "kvmfs")
            for system in order:
                if system == "kvmfs":
                    with kvmfs_server(self, pool) as s:
                        path = os.path.join(s.mnt, name, "disk.raw")
                        results[system].append(fio_read(path, bs, rw, self.args.runtime, size))
                else:
                    with qsd_server(self, image, fmt) as s:
                        results[system].append(fio_read(s.mnt, bs, rw, self.args.runtime, size))
                log("%s round %d %s: %.1f MiB/s" % (row, r + 1, system, results[system][-1]))
        k, q = statistics.median(results["kvmfs"]), statistics.median(results["QSD"])
        self.rows.append({"row": row, "kvmfs_MiB_s": k, "qsd_MiB_s": q, "ratio": k / q if q else None,
                          "goal": goal, "met": bool(q) and k / q >= goal, "rounds": results})


# --------------------------------------------------------------------------
# Rows, one function per format (other format helpers add theirs alongside)


def vhdx_rows(bench):
    """VHDX dynamic (QEMU's default options), sequential 1 MiB reads."""
    pool = os.path.join(bench.workdir, "pool-vhdx")
    os.makedirs(pool)
    image = os.path.join(pool, "dyn.vhdx")
    run([QEMU_IMG, "convert", "-q", "-f", "raw", "-O", "vhdx", "-o", "subformat=dynamic",
         os.path.join(bench.workdir, "source.raw"), image])
    bench.measure("vhdx-dynamic-seqread-1M", 2.0, pool, "dyn.vhdx", "vhdx")


ROWS = [vhdx_rows]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kvmfs", required=True, help="path of the kvmfs binary")
    ap.add_argument("--size", type=int, default=GiB, help="disk size in bytes (default 1 GiB)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runtime", type=int, default=20, help="seconds per fio run")
    ap.add_argument("--smoke", action="store_true", help="64 MiB, 1 round, 2 s runs")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    if args.smoke:
        args.size, args.rounds, args.runtime = 64 * MiB, 1, 2
    for need, what in ((FIO, "fio"), (QSD, "qemu-storage-daemon"), (QEMU_IMG, "qemu-img")):
        if not os.access(need, os.X_OK):
            print("SKIPPED: %s not installed" % what)
            sys.exit(SKIP_EXIT_CODE)
    if not os.path.exists("/dev/fuse"):
        print("SKIPPED: no /dev/fuse")
        sys.exit(SKIP_EXIT_CODE)
    bench = Bench(args)
    try:
        write_source(os.path.join(bench.workdir, "source.raw"), args.size)
        for row in ROWS:
            row(bench)
    except BenchError as e:
        print("FAILED: %s" % e)
        sys.exit(1)
    finally:
        shutil.rmtree(bench.workdir, ignore_errors=True)
    print("\n| row | kvmfs MiB/s | QSD MiB/s | kvmfs/QSD | goal | met |")
    print("|---|---:|---:|---:|---:|---|")
    for r in bench.rows:
        print("| %s | %.1f | %.1f | %.2f | %.1fx | %s |" % (
            r["row"], r["kvmfs_MiB_s"], r["qsd_MiB_s"], r["ratio"] or 0, r["goal"],
            "yes" if r["met"] else "no"))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"size": args.size, "rounds": args.rounds, "runtime": args.runtime,
                       "rows": bench.rows}, f, indent=2)
    sys.exit(0)


if __name__ == "__main__":
    main()
