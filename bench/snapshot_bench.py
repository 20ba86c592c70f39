#!/usr/bin/python3
"""Snapshot create/delete: kvmfs `mkdir`/`rmdir snapshots/NAME` against `qemu-img snapshot -c/-d`.

    python3 bench/snapshot_bench.py --kvmfs BUILD/src/fuse/kvmfs            # 1 GiB, 3 rounds
    python3 bench/snapshot_bench.py --kvmfs BUILD/src/fuse/kvmfs --size 64M # quick

The image (issue 10): every cluster of a `--size` disk allocated with 512-byte clusters
(`preallocation=metadata`: the tables and refcounts of a fully written disk; 1 GiB is
2,097,152 clusters), in `--workdir` (default: a directory under /dev/shm when there is one,
else /tmp; `--workdir` on a disk measures the disk too). Each round copies the pristine image
twice (`cp --sparse=always`): one copy is mounted with `-o cache_size=16M` (`--cache-size`)
while a reader loops over its disk.raw, and `mkdir` then `rmdir` of snapshots/s1 are timed,
with kvmfs's peak RSS (VmHWM); the other gets `qemu-img snapshot -c s1` then `-d s1`, timed,
with qemu-img's peak RSS (wait4's rusage of the child). Both copies must pass `qemu-img check`.

Prints the median of the rounds for each operation and the ratio kvmfs/qemu-img (below 1:
kvmfs is faster), and `--json FILE` writes them. Standard library only; run as root (FUSE).
Exit status 0 when everything ran, 1 otherwise. Timings are only meaningful on a quiet machine.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MiB = 1024 * 1024
QEMU_IMG = shutil.which("qemu-img") or "/usr/bin/qemu-img"
FUSERMOUNT = shutil.which("fusermount3") or shutil.which("fusermount") or "/usr/bin/fusermount3"


def parse_size(s):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * units[s[-1].upper()] if s[-1].upper() in units else int(s)


def run(*argv, timeout=1800):
    p = subprocess.run([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(map(str, argv)), p.returncode, p.stdout))
    return p.stdout


def timed_child(*argv):
    """Runs argv; returns (seconds, peak RSS of that child in bytes)."""
    t0 = time.monotonic()
    p = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    dt = time.monotonic() - t0
    if p.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(map(str, argv)), p.returncode,
                                                    out.decode(errors="replace")))
    return dt, usage.ru_maxrss * 1024


def vm_hwm(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def is_mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def kvmfs_round(kvmfs, pool, mnt, size, cache_size):
    os.makedirs(mnt, exist_ok=True)
    log = open(os.path.join(os.path.dirname(mnt), "kvmfs.log"), "ab")
    proc = subprocess.Popen([kvmfs, "-f", "-o", "cache_size=%d" % cache_size, pool, mnt],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 20
        while not is_mounted(mnt):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("kvmfs did not mount (see %s)" % log.name)
            time.sleep(0.05)
        disk = os.path.join(mnt, "vm.qcow2", "disk.raw")
        snap = os.path.join(mnt, "vm.qcow2", "snapshots", "s1")
        stop = threading.Event()

        def reader():
            fd = os.open(disk, os.O_RDONLY)
            off = 0
            while not stop.is_set():
                os.pread(fd, MiB, off)
                off = (off + 37 * MiB) % size
            os.close(fd)

        t = threading.Thread(target=reader)
        t.start()
        try:
            time.sleep(1)
            t0 = time.monotonic()
            os.mkdir(snap)
            t_create = time.monotonic() - t0
            t0 = time.monotonic()
            os.rmdir(snap)
            t_delete = time.monotonic() - t0
        finally:
            stop.set()
            t.join()
        hwm = vm_hwm(proc.pid)
    finally:
        subprocess.run([FUSERMOUNT, "-u", mnt], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    return t_create, t_delete, hwm


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kvmfs", required=True, help="the kvmfs binary")
    ap.add_argument("--size", default="1G", help="virtual disk size (default 1G)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cache-size", default="16M", help="kvmfs -o cache_size (default 16M)")
    ap.add_argument("--workdir", help="where the images go (default: under /dev/shm or /tmp)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    size, cache = parse_size(args.size), parse_size(args.cache_size)
    base = args.workdir or ("/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    work = tempfile.mkdtemp(prefix="kvmfs-snapbench-", dir=base)
    try:
        pristine = os.path.join(work, "pristine.qcow2")
        t0 = time.monotonic()
        run(QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "cluster_size=512,preallocation=metadata",
            pristine, size)
        print("image: %d allocated 512-byte clusters, made in %.1fs" %
              (size // 512, time.monotonic() - t0), flush=True)
        rows = {"kvmfs mkdir": [], "kvmfs rmdir": [], "qemu-img -c": [], "qemu-img -d": []}
        hwm_kvmfs, rss_qemu = [], []
        for r in range(args.rounds):
            pool = os.path.join(work, "pool")
            shutil.rmtree(pool, ignore_errors=True)
            os.makedirs(pool)
            img = os.path.join(pool, "vm.qcow2")
            run("cp", "--sparse=always", pristine, img)
            c, d, hwm = kvmfs_round(args.kvmfs, pool, os.path.join(work, "mnt"), size, cache)
            run(QEMU_IMG, "check", img)
            rows["kvmfs mkdir"].append(c)
            rows["kvmfs rmdir"].append(d)
            hwm_kvmfs.append(hwm)
            copy = os.path.join(work, "copy.qcow2")
            run("cp", "--sparse=always", pristine, copy)
            c, rc = timed_child(QEMU_IMG, "snapshot", "-c", "s1", copy)
            d, rd = timed_child(QEMU_IMG, "snapshot", "-d", "s1", copy)
            run(QEMU_IMG, "check", copy)
            rows["qemu-img -c"].append(c)
            rows["qemu-img -d"].append(d)
            rss_qemu += [x for x in (rc, rd) if x]
            os.unlink(copy)
            print("round %d: mkdir %.2fs rmdir %.2fs (VmHWM %.1f MiB) | qemu-img -c %.2fs -d %.2fs" %
                  (r + 1, rows["kvmfs mkdir"][-1], rows["kvmfs rmdir"][-1], (hwm or 0) / MiB,
                   c, d), flush=True)
        med = {k: statistics.median(v) for k, v in rows.items()}
        out = {
            "size": size, "clusters": size // 512, "cache_size": cache, "rounds": args.rounds,
            "median_s": med,
            "ratio_create": med["kvmfs mkdir"] / med["qemu-img -c"],
            "ratio_delete": med["kvmfs rmdir"] / med["qemu-img -d"],
            "kvmfs_vmhwm_max": max(h for h in hwm_kvmfs if h) if any(hwm_kvmfs) else None,
            "qemu_img_maxrss": max(rss_qemu) if rss_qemu else None,
        }
        print("\n| operation | kvmfs (median) | qemu-img snapshot (median) | kvmfs/qemu-img |")
        print("|---|---|---|---|")
        print("| create (mkdir / -c) | %.2f s | %.2f s | %.2f |" %
              (med["kvmfs mkdir"], med["qemu-img -c"], out["ratio_create"]))
        print("| delete (rmdir / -d) | %.2f s | %.2f s | %.2f |" %
              (med["kvmfs rmdir"], med["qemu-img -d"], out["ratio_delete"]))
        print("\nkvmfs peak RSS (VmHWM, cache_size=%d MiB, a reader running): %s MiB; "
              "qemu-img peak RSS: %s MiB" %
              (cache // MiB, "%.1f" % (out["kvmfs_vmhwm_max"] / MiB) if out["kvmfs_vmhwm_max"] else "?",
               "%.1f" % (out["qemu_img_maxrss"] / MiB) if out["qemu_img_maxrss"] else "?"))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=2)
        return 0
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        print("snapshot_bench: %s" % e, file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
