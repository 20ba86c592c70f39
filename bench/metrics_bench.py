#!/usr/bin/python3
"""What a Prometheus scrape costs the data path: sequential read throughput of a
qcow2 image's disk.raw (fio, psync, O_DIRECT, 1 MiB blocks) on three mounts:

    off       kvmfs without metrics
    on        kvmfs -o metrics=127.0.0.1:PORT, nobody scraping
    scraped   the same, with GET /metrics every second while fio runs

    python3 bench/metrics_bench.py --kvmfs BUILD/src/fuse/kvmfs            # full (1 GiB, 5 rounds)
    python3 bench/metrics_bench.py --kvmfs BUILD/src/fuse/kvmfs --smoke    # seconds

Every round runs the three modes in a rotated order, each on a fresh mount, after warming the
host page cache with the image file; the table shows the median MiB/s of each mode and its
ratio to `off`, plus the scrapes made and their median duration. The target: `scraped` within
noise of `on` (a scrape reads counters; it takes no lock the data path takes). Exit 0 when
everything ran (a ratio is reported, never judged), 1 when something failed, 77 without FUSE,
fio or qemu-img. Temporary files are removed.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

MiB = 1024 * 1024
FIO = shutil.which("fio")
QEMU_IMG = shutil.which("qemu-img")
QEMU_IO = shutil.which("qemu-io")
FUSERMOUNT = shutil.which("fusermount3") or "fusermount3"


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def is_mounted(mnt):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == mnt for line in f)


class Mount:
    def __init__(self, kvmfs, pool, mnt, port):
        self.mnt = mnt
        os.makedirs(mnt, exist_ok=True)
        argv = [kvmfs, "-f", "-o", "ro" + (",metrics=127.0.0.1:%d" % port if port else ""), pool, mnt]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.time() + 20
        while not is_mounted(mnt):
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                raise RuntimeError("kvmfs did not mount: %s" % " ".join(argv))
            time.sleep(0.05)

    def close(self):
        if is_mounted(self.mnt):
            subprocess.run([FUSERMOUNT, "-u", self.mnt], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30)
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Scraper(threading.Thread):
    """GET /metrics every `period` seconds until stopped; keeps each scrape's duration."""

    def __init__(self, port, period=1.0):
        super().__init__(daemon=True)
        self.url = "http://127.0.0.1:%d/metrics" % port
        self.period = period
        self.stop_event = threading.Event()
        self.durations = []
        self.bytes = 0
        self.errors = 0

    def run(self):
        while not self.stop_event.is_set():
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    self.bytes = len(r.read())
                self.durations.append(time.monotonic() - t0)
            except OSError:
                self.errors += 1
            self.stop_event.wait(max(0.0, self.period - (time.monotonic() - t0)))

    def stop(self):
        self.stop_event.set()
        self.join(timeout=10)


def fio_read(path, seconds):
    p = subprocess.run([FIO, "--name=seq", "--filename=" + path, "--rw=read", "--bs=1M", "--direct=1",
                        "--ioengine=psync", "--time_based", "--runtime=%d" % seconds,
                        "--output-format=json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=seconds + 60)
    if p.returncode != 0:
        raise RuntimeError("fio failed: %s" % p.stderr.decode(errors="replace")[-500:])
    return json.loads(p.stdout)["jobs"][0]["read"]["bw_bytes"] / MiB


def warm(path):
    with open(path, "rb") as f:
        while f.read(8 * MiB):
            pass


def run_mode(args, tmp, pool, image, mode, round_no):
    port = free_port() if mode != "off" else 0
    mnt = os.path.join(tmp, "mnt-%s-%d" % (mode, round_no))
    warm(os.path.join(pool, image))
    m = Mount(args.kvmfs, pool, mnt, port)
    scraper = None
    try:
        if mode == "scraped":
            scraper = Scraper(port)
            scraper.start()
        mibs = fio_read(os.path.join(mnt, image, "disk.raw"), args.seconds)
    finally:
        if scraper:
            scraper.stop()
        m.close()
        os.rmdir(mnt)
    if scraper and (scraper.errors or not scraper.durations):
        raise RuntimeError("scrapes failed: %d errors, %d done" % (scraper.errors, len(scraper.durations)))
    return mibs, scraper


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kvmfs", required=True)
    ap.add_argument("--smoke", action="store_true", help="64 MiB image, 1 round of 2 s")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=10, help="fio runtime per mode and round")
    args = ap.parse_args()
    if args.smoke:
        args.size_mib, args.rounds, args.seconds = 64, 1, 2
    missing = [n for n, p in (("fio", FIO), ("qemu-img", QEMU_IMG), ("qemu-io", QEMU_IO)) if not p]
    if missing or not os.access("/dev/fuse", os.R_OK | os.W_OK):
        print("SKIPPED: metrics_bench needs /dev/fuse, fio, qemu-img, qemu-io (missing: %s)"
              % (", ".join(missing) or "/dev/fuse"))
        return 77
    tmp = tempfile.mkdtemp(prefix="kvmfs-metrics-bench-")
    ok = False
    try:
        pool = os.path.join(tmp, "pool")
        os.makedirs(pool)
        image = "seq.qcow2"
        path = os.path.join(pool, image)
        subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", path, "%dM" % args.size_mib], check=True)
        subprocess.run([QEMU_IO, "-c", "write -P 0x6b 0 %dM" % args.size_mib, path], check=True,
                       stdout=subprocess.DEVNULL)
        modes = ["off", "on", "scraped"]
        results = {m: [] for m in modes}
        scrape_times, scrape_bytes = [], 0
        for r in range(args.rounds):
            order = modes[r % 3:] + modes[:r % 3]
            for mode in order:
                mibs, scraper = run_mode(args, tmp, pool, image, mode, r)
                results[mode].append(mibs)
                if scraper:
                    scrape_times += scraper.durations
                    scrape_bytes = scraper.bytes
                print("round %d %-8s %8.1f MiB/s" % (r + 1, mode, mibs), flush=True)
        base = statistics.median(results["off"])
        print("\nsequential read, %d MiB qcow2, fio psync O_DIRECT bs=1M, %d round(s) of %d s"
              % (args.size_mib, args.rounds, args.seconds))
        print("%-9s %10s %8s" % ("mode", "MiB/s", "vs off"))
        for mode in modes:
            med = statistics.median(results[mode])
            print("%-9s %10.1f %7.3fx" % (mode, med, med / base if base else 0))
        print("scrapes: %d, median %.2f ms, %d bytes of text"
              % (len(scrape_times), 1000 * statistics.median(scrape_times), scrape_bytes))
        ok = True
    except (RuntimeError, subprocess.SubprocessError, OSError) as e:
        print("metrics_bench: %s" % e, file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("KVMFS-IT-RESULT: file=metrics_bench.py passed=%d failed=%d skipped=0" % (ok, not ok))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
