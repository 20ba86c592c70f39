#!/usr/bin/python3
"""Compressed writes (issue 12): `dd` of a data set into the disk.raw of a new qcow2 image on a
kvmfs pool with `compress: zlib` (and a zstd image), against `qemu-img convert -c -O qcow2` of
the same data: wall time and image size.

    python3 bench/compress_bench.py --kvmfs BUILD/src/fuse/kvmfs              # 512 MiB, 3 rounds
    python3 bench/compress_bench.py --kvmfs BUILD/src/fuse/kvmfs --smoke      # 32 MiB, 1 round
    python3 bench/compress_bench.py --kvmfs ... --data /path/to/disk.raw      # your own data

The data set (unless --data) is deterministic: half text-like runs that deflate well, a quarter
zeros, a quarter random bytes (which do not shrink and are stored as normal clusters), in 1 MiB
pieces. kvmfs time is mount-to-unmount of a `dd bs=1M conv=notrunc,fsync` (the unmount writes
back what is left); qemu-img's is its whole run. Every image is checked afterwards (`qemu-img
check` clean, `qemu-img compare` equal to the data). Rows alternate which side runs first;
the table shows medians. Exit 0 when everything ran and checked, 1 otherwise, 77 without
qemu-img or FUSE. Everything is made under a temporary directory that is removed at the end.
"""

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

MiB = 1024 * 1024
QEMU_IMG = shutil.which("qemu-img")


def make_data(path, size):
    rng = random.Random(1234)
    with open(path, "wb") as f:
        for i in range(size // MiB):
            kind = (0, 0, 1, 2)[i % 4]
            if kind == 0:
                out = bytearray()
                while len(out) < MiB:
                    word = b"kvmfs %08x cluster refcount guest " % rng.getrandbits(32)
                    out += word * rng.randint(1, 40)
                f.write(bytes(out[:MiB]))
            elif kind == 1:
                f.write(bytes(MiB))
            else:
                f.write(rng.randbytes(MiB))


def run(argv, **kw):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=3600, **kw)


def wait_mounted(proc, mnt, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(mnt):
            return
        if proc.poll() is not None:
            raise RuntimeError("kvmfs exited with %d before mounting" % proc.returncode)
        time.sleep(0.02)
    raise RuntimeError("kvmfs did not mount %s" % mnt)


def kvmfs_round(args, work, data, size, codec):
    pool = os.path.join(work, "pool-" + codec)
    mnt = os.path.join(work, "mnt-" + codec)
    os.makedirs(pool, exist_ok=True)
    os.makedirs(mnt, exist_ok=True)
    img = os.path.join(pool, "img.qcow2")
    if os.path.exists(img):
        os.unlink(img)
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "compression_type=" + codec, img,
         str(size)]).check_returncode()
    cfg = os.path.join(work, "kvmfs-%s.yaml" % codec)
    with open(cfg, "w") as f:
        f.write("pools:\n  - name: p\n    path: %s\n    compress: %s\n" % (pool, codec))
    t0 = time.monotonic()
    proc = subprocess.Popen([args.kvmfs, "-f", cfg, mnt], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_mounted(proc, mnt)
        dd = run(["dd", "if=" + data, "of=" + os.path.join(mnt, "p", "img.qcow2", "disk.raw"),
                  "bs=1M", "conv=notrunc,fsync", "status=none"])
        if dd.returncode != 0:
            raise RuntimeError("dd failed: " + dd.stderr)
    finally:
        subprocess.run(["fusermount3", "-u", mnt], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return time.monotonic() - t0, img


def qemu_round(work, data, codec):
    img = os.path.join(work, "qemu-%s.qcow2" % codec)
    if os.path.exists(img):
        os.unlink(img)
    t0 = time.monotonic()
    run([QEMU_IMG, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o",
         "compression_type=" + codec, data, img]).check_returncode()
    return time.monotonic() - t0, img


def verify(img, data):
    c = run([QEMU_IMG, "check", img])
    if c.returncode != 0:
        return "check rc %d: %s" % (c.returncode, c.stdout + c.stderr)
    p = run([QEMU_IMG, "compare", "-q", "-f", "qcow2", "-F", "raw", img, data])
    if p.returncode != 0:
        return "compare rc %d: %s" % (p.returncode, p.stdout + p.stderr)
    return ""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kvmfs", required=True, help="the kvmfs binary")
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="32 MiB, 1 round")
    ap.add_argument("--data", help="a raw file to write instead of the generated data set")
    ap.add_argument("--codecs", default="zlib,zstd")
    ap.add_argument("--workdir", help="where the temporary directory goes (default $TMPDIR)")
    args = ap.parse_args()
    if args.smoke:
        args.size_mib, args.rounds = 32, 1
    if QEMU_IMG is None or not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        print("SKIPPED: needs qemu-img, fusermount3 and /dev/fuse", flush=True)
        return 77
    work = tempfile.mkdtemp(prefix="kvmfs-compress-bench-", dir=args.workdir)
    failed = 0
    try:
        data = os.path.join(work, "data.raw")
        if args.data:
            size = os.path.getsize(args.data) // MiB * MiB
            with open(args.data, "rb") as src, open(data, "wb") as dst:
                dst.write(src.read(size))
        else:
            size = args.size_mib * MiB
            make_data(data, size)
        print("data: %d MiB%s" % (size // MiB, " of " + args.data if args.data else
                                  " (1/2 text, 1/4 zeros, 1/4 random)"), flush=True)
        rows = []
        for codec in args.codecs.split(","):
            times = {"kvmfs": [], "qemu-img": []}
            sizes = {}
            for r in range(args.rounds):
                order = ("kvmfs", "qemu-img") if r % 2 == 0 else ("qemu-img", "kvmfs")
                for who in order:
                    if who == "kvmfs":
                        t, img = kvmfs_round(args, work, data, size, codec)
                    else:
                        t, img = qemu_round(work, data, codec)
                    problem = verify(img, data)
                    if problem:
                        print("FAIL %s %s: %s" % (who, codec, problem), flush=True)
                        failed += 1
                    times[who].append(t)
                    sizes[who] = os.path.getsize(img)
            rows.append((codec, times, sizes))
        print()
        print("%-6s %-9s %10s %10s %12s %8s" % ("codec", "tool", "time s", "MiB/s", "size MiB",
                                               "ratio"))
        for codec, times, sizes in rows:
            for who in ("kvmfs", "qemu-img"):
                t = statistics.median(times[who])
                print("%-6s %-9s %10.2f %10.1f %12.2f %8.3f" % (
                    codec, who, t, size / MiB / t, sizes[who] / MiB, sizes[who] / size))
            kt, qt = statistics.median(times["kvmfs"]), statistics.median(times["qemu-img"])
            print("%-6s kvmfs/qemu-img: time %.2fx, size %.3fx" % (
                codec, kt / qt, sizes["kvmfs"] / sizes["qemu-img"]))
    except Exception as e:  # a failed run is reported, the temp dir still removed
        print("FAIL: %s" % e, flush=True)
        failed += 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("KVMFS-IT-RESULT: file=compress_bench.py passed=%d failed=%d skipped=0"
          % (0 if failed else 1, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
