#!/usr/bin/python3
"""`ls -R` of a large read-only pool: a fresh mount, then a second `ls -R` of the same mount.

    python3 bench/ls_bench.py --kvmfs BUILD/src/fuse/kvmfs                  # 10,000 images, 3 rounds
    python3 bench/ls_bench.py --kvmfs BUILD/src/fuse/kvmfs --images 500 --rounds 1   # quick
    python3 bench/ls_bench.py --kvmfs BUILD/src/fuse/kvmfs --count          # + FUSE requests per phase

The pool (one qcow2 made by qemu-img, copied N times; --per-dir N puts them in folders of N,
0 = all in one folder) is built once under /tmp/kvmfs-lsbench-<N>-<per-dir>/ and reused. Each
round mounts it read-only (kvmfs -f, our child), times `ls -R` twice, unmounts, and reports the
wall time and the CPU time kvmfs spent (on a loaded machine, wall time is mostly waiting for a
core; the CPU time is not). The issue's goals: fresh < 1 s, second < 0.3 s on a quiet machine.

--count mounts with -o log_level=debug (one log line per request, which slows kvmfs down) and
reports how many requests of each kind each phase sent: the round trips `ls -R` costs.

Prints one JSON object (medians and every round) as the last line. Standard library only."""

import argparse
import collections
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

FUSERMOUNT = shutil.which("fusermount3") or "/usr/bin/fusermount3"
QEMU_IMG = shutil.which("qemu-img") or "/usr/bin/qemu-img"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def build_pool(images, per_dir):
    root = "/tmp/kvmfs-lsbench-%d-%d" % (images, per_dir)
    pool = os.path.join(root, "pool")
    done = os.path.join(root, "done")
    if os.path.exists(done):
        return pool
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(pool)
    tpl = os.path.join(root, "template.qcow2")
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", tpl, "64M"], check=True)
    t0 = time.monotonic()
    for i in range(images):
        folder = pool if per_dir == 0 else os.path.join(pool, "d%04d" % (i // per_dir))
        if per_dir and i % per_dir == 0:
            os.makedirs(folder, exist_ok=True)
        shutil.copyfile(tpl, os.path.join(folder, "vm%05d.qcow2" % i))
    open(done, "w").close()
    log("pool of %d images built in %.1f s: %s" % (images, time.monotonic() - t0, pool))
    return pool


def is_mounted(mnt):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == mnt for line in f)


class Mount:
    def __init__(self, kvmfs, pool, count):
        self.kvmfs, self.pool, self.count = kvmfs, pool, count
        self.mnt = tempfile.mkdtemp(prefix="kvmfs-lsbench-mnt-")
        self.log_path = self.mnt + ".log"
        self.proc = None

    def __enter__(self):
        opts = "ro,log_level=debug" if self.count else "ro"
        t0 = time.monotonic()
        # In the foreground (our child): its log is a file we can read, and its CPU time
        # (/proc/PID/stat) is a figure a busy machine does not distort as much as wall time.
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen([self.kvmfs, "-f", "-o", opts, self.pool, self.mnt],
                                     stdout=self.log_file, stderr=subprocess.STDOUT)
        while not is_mounted(self.mnt):
            if self.proc.poll() is not None or time.monotonic() - t0 > 30:
                raise RuntimeError("kvmfs did not mount")
            time.sleep(0.01)
        self.mount_s = time.monotonic() - t0
        return self

    def __exit__(self, *exc):
        subprocess.run([FUSERMOUNT, "-u", self.mnt], check=False)
        self.proc.wait(timeout=30)
        self.log_file.close()
        os.unlink(self.log_path)
        os.rmdir(self.mnt)

    def cpu_s(self):
        """User + system CPU seconds kvmfs used so far (all its threads)."""
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_size(self):
        return os.path.getsize(self.log_path)

    def requests_since(self, start):
        if not self.count:
            return None
        with open(self.log_path, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        return dict(collections.Counter(re.findall(r"debug: request (\w+) ino ", text)))


def timed_ls(mnt):
    t0 = time.monotonic()
    p = subprocess.run(["ls", "-R", mnt], stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
    dt = time.monotonic() - t0
    entries = sum(1 for line in p.stdout.splitlines() if line and not line.endswith(b":"))
    return dt, entries


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kvmfs", required=True, help="the kvmfs binary")
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--per-dir", type=int, default=0, help="images per folder (0: one folder)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--count", action="store_true", help="count FUSE requests (debug log; slower)")
    a = ap.parse_args()
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        log("SKIPPED: needs root and /dev/fuse")
        return 77
    pool = build_pool(a.images, a.per_dir)
    rounds = []
    for r in range(a.rounds):
        with Mount(os.path.abspath(a.kvmfs), pool, a.count) as m:
            start, cpu0 = m.log_size(), m.cpu_s()
            fresh, entries = timed_ls(m.mnt)
            mid, cpu1 = m.log_size(), m.cpu_s()
            second, entries2 = timed_ls(m.mnt)
            cpu2 = m.cpu_s()
            if entries2 != entries:
                raise RuntimeError("second ls -R listed %d entries, the first %d" % (entries2, entries))
            rounds.append({"mount_s": round(m.mount_s, 3), "fresh_s": round(fresh, 3),
                           "second_s": round(second, 3), "entries": entries,
                           "kvmfs_cpu_fresh_s": round(cpu1 - cpu0, 3), "kvmfs_cpu_second_s": round(cpu2 - cpu1, 3),
                           "fresh_requests": m.requests_since(start) if a.count else None,
                           "second_requests": m.requests_since(mid) if a.count else None})
            log("round %d: mount %.2f s, ls -R fresh %.3f s (kvmfs CPU %.2f s), second %.3f s "
                "(kvmfs CPU %.2f s), %d entries%s" % (
                r + 1, m.mount_s, fresh, cpu1 - cpu0, second, cpu2 - cpu1, entries,
                "\n  fresh: %s\n  second: %s" % (rounds[-1]["fresh_requests"], rounds[-1]["second_requests"])
                if a.count else ""))
    result = {"images": a.images, "per_dir": a.per_dir, "count": a.count, "rounds": rounds,
              "fresh_median_s": statistics.median(x["fresh_s"] for x in rounds),
              "second_median_s": statistics.median(x["second_s"] for x in rounds),
              "goals": {"fresh_s": 1.0, "second_s": 0.3}}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
