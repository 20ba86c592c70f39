#!/usr/bin/python3
"""kvmfs benchmark: kvmfs against qemu-storage-daemon (QSD) FUSE exports, same images.

One command (as root, from the repository):

    python3 bench/run.py --kvmfs BUILD/src/fuse/kvmfs            # full run (about 20-25 min)
    python3 bench/run.py --kvmfs BUILD/src/fuse/kvmfs --smoke    # CI smoke (under a minute)

What it does (see bench/README.md for how to read the result):

  1. builds the images with qemu-img in a scratch dir under /tmp/kvmfs-bench-*: a raw image of
     mixed random and compressible data (--size, default 1 GiB), the same as a plain qcow2, as
     zlib- and zstd-compressed qcow2, as an extended-L2 qcow2 and as a 16-deep backing chain
     (each layer owns every 16th 64 KiB cluster, so every read walks the whole chain);
  2. for every round and workload, runs fio (psync, O_DIRECT on the FUSE file) once on a fresh
     kvmfs mount and once on a fresh QSD FUSE export of the same image, alternating which goes
     first; never both on one image at once (each is torn down before the other starts); write
     workloads use a separate copy of the image per system;
  3. measures the ceiling: a buffered fio read of the raw image from the host page cache;
  4. scale checks: `ls -R` of a fresh mount of a 10,000-image pool, and
     `cp --sparse=always` of the disk.raw of a 1 TiB mostly-empty qcow2;
  5. prints one table (medians over rounds, kvmfs/QSD ratio, target, pass/fail) and writes it as
     Markdown and JSON to bench/results/<date>-<shortsha>.{md,json} (--out to change).

Standard library only. Exit status: 0 when everything mounted and ran (missed targets do not
fail the run), 1 when something failed to mount or run, 77 (skipped, with a banner) when FUSE
or fio is not usable here. Prints `KVMFS-IT-RESULT: file=bench-run.py passed=N failed=N
skipped=N` (one case per measurement) for tools/count-tests.py.
"""

import argparse
import atexit
import datetime
import errno
import hashlib
import json
import mmap
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

SKIP_EXIT_CODE = 77
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QEMU_IMG = shutil.which("qemu-img") or "/usr/bin/qemu-img"
QEMU_IO = shutil.which("qemu-io") or "/usr/bin/qemu-io"
QSD = shutil.which("qemu-storage-daemon") or "/usr/bin/qemu-storage-daemon"
FIO = shutil.which("fio") or "/usr/bin/fio"
FUSERMOUNT = shutil.which("fusermount3") or "/usr/bin/fusermount3"
FUSE_DEV = os.environ.get("KVMFS_BENCH_FUSE_DEV", "/dev/fuse")
MOUNT_TIMEOUT_S = 30
CHAIN_DEPTH = 16
CHAIN_STRIPE = 64 * KiB

# Workloads: image (key of the image set), fio rw, block size, jobs, kind, target ratio
# kvmfs/QSD (None: reported, no target). "alloc" images are recreated empty before each run.
# Read images: "text" rows have a compressible half of text-like words, "exe" rows one of the
# host's executables (/usr/bin), which compresses about 2:1 and decodes slower.
READ_TARGET = 3.0  # issue 16: every read row >= 3x qemu-storage-daemon 7.2
WORKLOADS = [
    ("seqread-plain", "plain qcow2: seq read 1 MiB", "plain", "read", "1M", 1, READ_TARGET),
    ("randread-plain", "plain qcow2: rand read 4 KiB, 2 jobs", "plain", "randread", "4k", 2, READ_TARGET),
    ("seqread-zlib", "zlib qcow2, text-like: seq read 1 MiB", "zlib", "read", "1M", 1, READ_TARGET),
    ("seqread-zstd", "zstd qcow2, text-like: seq read 1 MiB", "zstd", "read", "1M", 1, READ_TARGET),
    ("seqread-zlib-exe", "zlib qcow2, executables: seq read 1 MiB", "zlibx", "read", "1M", 1, READ_TARGET),
    ("seqread-zstd-exe", "zstd qcow2, executables: seq read 1 MiB", "zstdx", "read", "1M", 1, READ_TARGET),
    ("seqread-raw", "raw: seq read 1 MiB", "raw", "read", "1M", 1, None),
    ("seqread-extl2", "extended-L2 qcow2: seq read 1 MiB", "extl2", "read", "1M", 1, None),
    ("seqread-chain16", "16-deep chain: seq read 1 MiB", "chain16", "read", "1M", 1, READ_TARGET),
    ("seqwrite-over", "plain qcow2: seq write 1 MiB, overwrite", "over", "write", "1M", 1, 1.0),
    ("seqwrite-alloc", "empty qcow2: seq write 1 MiB, allocating", "alloc", "write", "1M", 1, 1.0),
    ("randwrite-over", "plain qcow2: rand write 4 KiB, 2 jobs, overwrite", "over", "randwrite", "4k", 2, 1.3),
    ("randwrite-alloc", "empty qcow2: rand write 4 KiB, 2 jobs, allocating", "alloc", "randwrite", "4k", 2, None),
    # Independent allocating writes in parallel (qcow2 in-flight allocation tracking, as QEMU).
    ("randwrite-alloc4", "empty qcow2: rand write 4 KiB, 4 jobs, allocating", "alloc", "randwrite", "4k", 4, None),
]
WORKLOAD_NAMES = [w[0] for w in WORKLOADS]
READ_KEYS = ("plain", "zlib", "zstd", "zlibx", "zstdx", "raw", "extl2", "chain16")
CEILING_TARGET = 0.9    # kvmfs plain seq read (O_DIRECT) / buffered page-cache read of the raw image
SNAP_TARGET = 0.9       # kvmfs 2nd buffered read of a snapshot view / the same ceiling
DECODE_TARGET = 0.8     # kvmfs compressed seq read / two-core decode limit of the same clusters
CHAIN_TARGET = 0.8      # kvmfs 16-deep chain seq read / kvmfs plain (depth 1) seq read
LS_TARGET_S = 1.0       # fresh mount, first ls -R
LS2_TARGET_S = 0.3      # the same mount, second ls -R
CP_TARGET_S = 2.0


def now():
    return time.strftime("%H:%M:%S")


def log(msg):
    sys.stderr.write("[%s] %s\n" % (now(), msg))
    sys.stderr.flush()


class BenchError(Exception):
    pass


class EnvironmentUnusable(Exception):
    """FUSE cannot be mounted on this machine (not a kvmfs bug)."""


_ENV_MOUNT_FAILURES = (
    "fuse: device not found",
    "fusermount3: mount failed: Operation not permitted",
    "fuse: failed to open /dev/fuse",
    "fusermount: mount failed: Operation not permitted",
)


def run(argv, check=True, timeout=600, cwd=None):
    p = subprocess.run([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, text=True, timeout=timeout, cwd=cwd)
    if check and p.returncode != 0:
        raise BenchError("command failed (rc=%d): %s\n%s%s" % (
            p.returncode, " ".join(str(a) for a in argv), p.stdout[-2000:], p.stderr[-2000:]))
    return p


# --------------------------------------------------------------------------
# Mount bookkeeping: everything we mount or start is undone on exit, even on failure.


def _unescape_mountinfo(s):
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def is_mounted(path):
    path = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 4 and _unescape_mountinfo(parts[4]) == path:
                    return True
    except OSError:
        pass
    return False


_live = []  # objects with .stop()


def _cleanup_all():
    for obj in list(_live):
        try:
            obj.stop()
        except Exception as e:  # keep going: unmount everything we can
            log("cleanup of %s failed: %s" % (obj, e))


def _on_signal(signum, frame):
    _cleanup_all()
    sys.exit(128 + signum)


atexit.register(_cleanup_all)
signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)
signal.signal(signal.SIGHUP, _on_signal)


def _fusermount_u(path):
    if not is_mounted(path):
        return
    p = subprocess.run([FUSERMOUNT, "-u", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=60)
    if p.returncode != 0 and is_mounted(path):
        time.sleep(0.5)
        p = subprocess.run([FUSERMOUNT, "-u", path], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        if p.returncode != 0 and is_mounted(path):
            subprocess.run([FUSERMOUNT, "-u", "-z", path], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)


def _wait_mounted(proc, path, what, log_path):
    deadline = time.time() + MOUNT_TIMEOUT_S
    while time.time() < deadline:
        if is_mounted(path):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    text = ""
    try:
        with open(log_path, errors="replace") as f:
            text = f.read()[-3000:]
    except OSError:
        pass
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        why = "not mounted after %ds" % MOUNT_TIMEOUT_S
    else:
        why = "exited with %d before mounting" % proc.returncode
    for marker in _ENV_MOUNT_FAILURES:
        if marker in text:
            raise EnvironmentUnusable("%s: %s" % (what, marker))
    raise BenchError("%s %s; log %s:\n%s" % (what, why, log_path, text))


class KvmfsMount:
    """`kvmfs -f` as our child: we own its pid and can kill it if unmounting fails."""

    def __init__(self, bench, source, readonly, extra_opts=()):
        self.bench = bench
        self.source = source
        self.mnt = tempfile.mkdtemp(prefix="mnt-kvmfs-", dir=bench.workdir)
        self.log_path = self.mnt + ".log"
        opts = (["ro"] if readonly else []) + list(extra_opts) + [
            o for o in (bench.args.kvmfs_opts or "").split(",") if o]
        self.argv = [bench.kvmfs, "-f"] + (["-o", ",".join(opts)] if opts else []) + [source, self.mnt]
        self.proc = None

    def __str__(self):
        return "kvmfs mount %s" % self.mnt

    def start(self):
        with open(self.log_path, "ab") as lf:
            lf.write(("### %s\n" % " ".join(self.argv)).encode())
            lf.flush()
            t0 = time.monotonic()
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=lf,
                                         stderr=subprocess.STDOUT)
        _live.append(self)
        _wait_mounted(self.proc, self.mnt, "kvmfs", self.log_path)
        self.mount_s = time.monotonic() - t0
        return self

    def path(self, *parts):
        return os.path.join(self.mnt, *parts)

    def stop(self):
        if self in _live:
            _live.remove(self)
        _fusermount_u(self.mnt)
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log("kvmfs (pid %d) still running after unmount: killing it" % self.proc.pid)
                self.proc.kill()
                self.proc.wait()
        if not is_mounted(self.mnt):
            try:
                os.rmdir(self.mnt)
            except OSError:
                pass


class QsdExport:
    """qemu-storage-daemon exporting images over FUSE, each onto a regular file (one process
    for all of them: the read images stay exported for the whole run)."""

    def __init__(self, bench, images, writable):
        """images: [(path, format)]; .mnts[i] is the export of images[i], .mnt the first."""
        self.bench = bench
        self.mnts = []
        ro = "off" if writable else "on"
        self.argv = [QSD]
        extra = "," + bench.args.qsd_file_opts if bench.args.qsd_file_opts else ""
        for i, (image, fmt) in enumerate(images):
            fd, mnt = tempfile.mkstemp(prefix="mnt-qsd-", suffix=".raw", dir=bench.workdir)
            os.close(fd)
            self.mnts.append(mnt)
            self.argv += [
                "--blockdev", "driver=file,node-name=file%d,filename=%s,read-only=%s%s" % (
                    i, image, ro, extra),
                "--blockdev", "driver=%s,node-name=fmt%d,file=file%d,read-only=%s" % (fmt, i, i, ro),
                "--export", "type=fuse,id=exp%d,node-name=fmt%d,mountpoint=%s,writable=%s" % (
                    i, i, mnt, "on" if writable else "off"),
            ]
        self.mnt = self.mnts[0]
        self.log_path = self.mnt + ".log"
        self.proc = None

    def __str__(self):
        return "QSD export %s" % self.mnt

    def start(self):
        with open(self.log_path, "ab") as lf:
            lf.write(("### %s\n" % " ".join(self.argv)).encode())
            lf.flush()
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=lf,
                                         stderr=subprocess.STDOUT)
        _live.append(self)
        for mnt in self.mnts:
            _wait_mounted(self.proc, mnt, "qemu-storage-daemon", self.log_path)
        return self

    def stop(self):
        if self in _live:
            _live.remove(self)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # QSD unmounts its exports on SIGTERM
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log("qemu-storage-daemon (pid %d) ignored SIGTERM: killing it" % self.proc.pid)
                self.proc.kill()
                self.proc.wait()
        for mnt in self.mnts:
            _fusermount_u(mnt)
            if not is_mounted(mnt):
                try:
                    os.unlink(mnt)
                except OSError:
                    pass


# --------------------------------------------------------------------------
# Images


def compressible_block(rng, n):
    """n bytes that compress well but not trivially (text-like, varying words)."""
    out = bytearray()
    while len(out) < n:
        word = b"kvmfs-bench-%08x-%04d " % (rng.getrandbits(32), rng.randrange(10000))
        out += word * rng.randrange(4, 64)
    return bytes(out[:n])


def executable_corpus(limit):
    """Up to `limit` bytes of the host's executables (/usr/bin regular files in name order):
    what half of a real system disk holds, and what compresses worst among it."""
    out = bytearray()
    for name in sorted(os.listdir("/usr/bin")):
        p = os.path.join("/usr/bin", name)
        if os.path.islink(p) or not os.path.isfile(p):
            continue
        try:
            with open(p, "rb") as f:
                out += f.read(limit - len(out))
        except OSError:
            continue
        if len(out) >= limit:
            break
    if len(out) < 4 * MiB:
        raise BenchError("/usr/bin holds only %d bytes of executables" % len(out))
    return bytes(out)


def write_source_raw(path, size, seed=5, corpus=None):
    """`size` bytes, every 64 KiB block either random or compressible (50/50), no holes. The
    compressible blocks are text-like words, or with `corpus` its next 64 KiB (wrapping)."""
    rng = random.Random(seed)
    block = 64 * KiB
    pool = rng.randbytes(8 * MiB)  # random blocks are slices of this: compression cannot tell
    cpos = 0
    with open(path, "wb") as f:
        written = 0
        while written < size:
            chunk = bytearray()
            while len(chunk) < MiB and written + len(chunk) < size:
                if rng.random() < 0.5:
                    off = rng.randrange(0, len(pool) - block)
                    chunk += pool[off:off + block]
                elif corpus is None:
                    chunk += compressible_block(rng, block)
                else:
                    if cpos + block > len(corpus):
                        cpos = 0
                    chunk += corpus[cpos:cpos + block]
                    cpos += block
            chunk = chunk[:size - written]
            f.write(chunk)
            written += len(chunk)


def build_chain(src_raw, chain_dir, size, depth, stripe):
    """depth qcow2 layers l00 (base) .. l<depth-1> (top); layer i holds the stripes
    j with j % depth == i, so the top flattened equals src_raw and reads visit every layer."""
    os.makedirs(chain_dir, exist_ok=True)
    layers = []
    tmp = [os.path.join(chain_dir, "stripe-%02d.tmp" % i) for i in range(depth)]
    outs = [open(p, "wb") for p in tmp]
    try:
        with open(src_raw, "rb") as src:
            j = 0
            while True:
                b = src.read(stripe)
                if not b:
                    break
                o = outs[j % depth]
                o.seek(j * stripe)
                o.write(b)
                j += 1
        for o in outs:
            o.truncate(size)
    finally:
        for o in outs:
            o.close()
    for i in range(depth):
        name = "l%02d.qcow2" % i
        out = os.path.join(chain_dir, name)
        run([QEMU_IMG, "convert", "-q", "-f", "raw", "-O", "qcow2", tmp[i], out])
        os.unlink(tmp[i])
        if layers:
            run([QEMU_IMG, "rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b", layers[-1], out],
                cwd=chain_dir)
        layers.append(name)
    return os.path.join(chain_dir, layers[-1])


# --------------------------------------------------------------------------
# fio


def parse_fio(text):
    start = text.find("{")
    if start < 0:
        raise BenchError("fio printed no JSON:\n" + text[-2000:])
    data = json.loads(text[start:])
    job = data["jobs"][0]
    if job.get("error"):
        raise BenchError("fio job error %s" % job.get("error"))
    return job


def run_fio(path, rw, bs, jobs, runtime, direct=True, time_based=True, size=None):
    argv = [FIO, "--name=bench", "--filename=" + path, "--rw=" + rw, "--bs=" + bs,
            "--ioengine=psync", "--direct=%d" % (1 if direct else 0), "--numjobs=%d" % jobs,
            "--group_reporting", "--output-format=json", "--runtime=%d" % runtime,
            "--fallocate=none", "--invalidate=0", "--randrepeat=0", "--norandommap",
            "--random_generator=tausworthe64", "--allow_file_create=0"]
    if time_based:
        argv.append("--time_based")
    if size:
        argv.append("--size=%d" % size)
    p = run(argv, check=False, timeout=runtime + 300)
    if p.returncode != 0:
        raise BenchError("fio failed (rc=%d): %s\n%s" % (
            p.returncode, p.stderr.strip()[-1500:], p.stdout.strip()[-500:]))
    job = parse_fio(p.stdout)
    side = job["write"] if "write" in rw else job["read"]
    if side["io_bytes"] <= 0:
        raise BenchError("fio moved no data: %s" % (p.stderr.strip()[-1000:]))
    return {
        "MiB/s": side["bw_bytes"] / MiB,
        "IOPS": side["iops"],
        "io_MiB": side["io_bytes"] / MiB,
        "runtime_ms": side["runtime"],
        "clat_p50_us": side.get("clat_ns", {}).get("percentile", {}).get("50.000000", 0) / 1000.0,
        "clat_p99_us": side.get("clat_ns", {}).get("percentile", {}).get("99.000000", 0) / 1000.0,
    }


# --------------------------------------------------------------------------
# The benchmark


def fmt_num(v):
    if v is None:
        return "—"
    if v >= 100:
        return "%.0f" % v
    if v >= 10:
        return "%.1f" % v
    return "%.2f" % v


class Bench:
    def __init__(self, args):
        self.args = args
        self.kvmfs = os.path.abspath(args.kvmfs)
        self.smoke = args.smoke
        self.size = args.size
        self.rounds = args.rounds
        self.runtime = args.runtime
        self.workloads = args.workloads
        self.have_qsd = os.access(QSD, os.X_OK) and not args.no_qsd
        self.results = {}      # workload -> {"kvmfs": [..], "qsd": [..], "unit": .., "notes": {...}}
        self.ceiling = []
        self.snap_view = []   # kvmfs: 2nd buffered seq read of a snapshot view, MiB/s per round
        self.decode = {}      # image key -> codec_bench's limit line
        self.round_load = []  # 1-min load average when each round started
        self.codec_bench = args.codec_bench or find_codec_bench(self.kvmfs)
        self.scale = {}
        self.checks = []       # (name, ok, detail)
        self.cases = [0, 0, 0]  # passed, failed, skipped
        self.failures = []
        self.kvmfs_readonly = None  # None: not probed; str: why writes are n/a
        if args.workdir:
            self.workdir = os.path.abspath(args.workdir)
            os.makedirs(self.workdir, exist_ok=True)
            self.own_workdir = False
        else:
            self.workdir = tempfile.mkdtemp(prefix="kvmfs-bench-", dir="/tmp")
            self.own_workdir = True
        self.pool = os.path.join(self.workdir, "pool")           # read images (kvmfs pool)
        self.wpool = {"kvmfs": os.path.join(self.workdir, "write-kvmfs"),
                      "qsd": os.path.join(self.workdir, "write-qsd")}
        self.images = {}

    # ---- bookkeeping ------------------------------------------------------

    def case(self, ok, what, detail=""):
        if ok is None:
            self.cases[2] += 1
        elif ok:
            self.cases[0] += 1
        else:
            self.cases[1] += 1
            self.failures.append("%s: %s" % (what, detail))
            log("FAILED %s: %s" % (what, detail))

    def check(self, name, ok, detail=""):
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        self.case(bool(ok), "check " + name, detail)
        log("check %s: %s %s" % (name, "ok" if ok else "FAILED", detail))

    def prepare_cache(self):
        """Before a run: flush what earlier runs wrote (fdatasync of the write images, so no
        system pays for the other's writeback), optionally drop the whole page cache
        (--drop-caches: `sync; echo 3 > /proc/sys/vm/drop_caches`), then warm() reads back the
        files the next run uses: both systems start with the same hot host cache. A global drop
        is not the default: on a busy shared machine it once stalled for minutes."""
        if self.args.no_cache_prep:
            return
        for d in self.wpool.values():
            for name in (os.listdir(d) if os.path.isdir(d) else []):
                try:
                    fd = os.open(os.path.join(d, name), os.O_RDONLY)
                except OSError:
                    continue
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
        if self.args.drop_caches:
            os.sync()
            try:
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("3\n")
            except OSError:
                pass

    def warm(self, paths):
        if self.args.no_cache_prep:
            return
        for p in paths:
            with open(p, "rb", buffering=0) as f:
                while f.read(8 * MiB):
                    pass

    # ---- images -----------------------------------------------------------

    def build_images(self):
        size = self.size
        stamp_path = os.path.join(self.workdir, "images.json")
        stamp = {"size": size, "chain_depth": CHAIN_DEPTH, "chain_stripe": CHAIN_STRIPE, "v": 2}
        pool = self.pool
        self.images = {
            "raw": (os.path.join(pool, "raw.raw"), "raw", "raw.raw"),
            "plain": (os.path.join(pool, "plain.qcow2"), "qcow2", "plain.qcow2"),
            "zlib": (os.path.join(pool, "zlib.qcow2"), "qcow2", "zlib.qcow2"),
            "zstd": (os.path.join(pool, "zstd.qcow2"), "qcow2", "zstd.qcow2"),
            "zlibx": (os.path.join(pool, "zlib-exe.qcow2"), "qcow2", "zlib-exe.qcow2"),
            "zstdx": (os.path.join(pool, "zstd-exe.qcow2"), "qcow2", "zstd-exe.qcow2"),
            "extl2": (os.path.join(pool, "extl2.qcow2"), "qcow2", "extl2.qcow2"),
            "chain16": (os.path.join(pool, "chain16", "l%02d.qcow2" % (CHAIN_DEPTH - 1)), "qcow2",
                        "chain16/l%02d.qcow2" % (CHAIN_DEPTH - 1)),
            # plain.qcow2 with an internal snapshot s1 of all of it (the snapshot view row).
            "snap": (os.path.join(pool, "snap.qcow2"), "qcow2", "snap.qcow2"),
        }
        # The executable-like source is only compared with, never mounted.
        self.exe_raw = os.path.join(self.workdir, "exe-source.raw")
        try:
            with open(stamp_path) as f:
                if json.load(f) == stamp and all(os.path.exists(v[0]) for v in self.images.values()) \
                        and os.path.exists(self.exe_raw):
                    log("reusing the images in %s" % pool)
                    return
        except (OSError, ValueError):
            pass
        t0 = time.monotonic()
        shutil.rmtree(pool, ignore_errors=True)
        os.makedirs(pool)
        src = self.images["raw"][0]
        log("building images (%d MiB each) in %s" % (size // MiB, pool))
        write_source_raw(src, size)
        write_source_raw(self.exe_raw, size, corpus=executable_corpus(min(size // 2, 512 * MiB)))
        conv = [QEMU_IMG, "convert", "-q", "-f", "raw", "-O", "qcow2"]
        run(conv + [src, self.images["plain"][0]])
        for key, source, ctype in (("zlib", src, "zlib"), ("zstd", src, "zstd"),
                                   ("zlibx", self.exe_raw, "zlib"), ("zstdx", self.exe_raw, "zstd")):
            run(conv + ["-c", "-o", "compression_type=" + ctype, source, self.images[key][0]])
        run(conv + ["-o", "extended_l2=on", src, self.images["extl2"][0]])
        shutil.copyfile(self.images["plain"][0], self.images["snap"][0])
        run([QEMU_IMG, "snapshot", "-q", "-c", "s1", self.images["snap"][0]])
        build_chain(src, os.path.join(pool, "chain16"), size, CHAIN_DEPTH, CHAIN_STRIPE)
        with open(stamp_path, "w") as f:
            json.dump(stamp, f)
        log("images built in %.1f s" % (time.monotonic() - t0))

    def source_of(self, key):
        """The raw bytes image `key` must read as."""
        return self.exe_raw if key in ("zlibx", "zstdx") else self.images["raw"][0]

    def image_paths_for_warm(self, key):
        if key == "chain16":
            d = os.path.join(self.pool, "chain16")
            return [os.path.join(d, n) for n in sorted(os.listdir(d)) if n.endswith(".qcow2")]
        return [self.images[key][0]]

    def prepare_write_image(self, system, key):
        """The image a write workload uses on `system`: its own copy, never shared."""
        d = self.wpool[system]
        os.makedirs(d, exist_ok=True)
        if key == "over":
            path = os.path.join(d, "over.qcow2")
            if not os.path.exists(path):
                shutil.copyfile(self.images["plain"][0], path)
        else:
            path = os.path.join(d, "alloc.qcow2")
            if os.path.exists(path):
                os.unlink(path)
            run([QEMU_IMG, "create", "-q", "-f", "qcow2", path, str(self.size)])
        return path

    # ---- verification (the bench measures the right bytes) ----------------

    def start_read_mounts(self):
        """kvmfs (read-only, over the read pool) and one QSD exporting every read image: both
        mounted for the whole run, so every read run finds the other system mounted too."""
        self.read_kvmfs = KvmfsMount(self, self.pool, readonly=True).start()
        self.read_files = {"kvmfs": {k: self.read_kvmfs.path(self.images[k][2], "disk.raw")
                                     for k in READ_KEYS},
                           "qsd": {}}
        self.read_files["kvmfs"]["snap"] = self.read_kvmfs.path(
            self.images["snap"][2], "snapshots", "s1", "disk.raw")
        if self.have_qsd:
            self.read_qsd = QsdExport(self, [self.images[k][:2] for k in READ_KEYS],
                                      writable=False).start()
            self.read_files["qsd"] = dict(zip(READ_KEYS, self.read_qsd.mnts))

    def stop_read_mounts(self):
        for m in (getattr(self, "read_kvmfs", None), getattr(self, "read_qsd", None)):
            if m is not None:
                m.stop()

    def verify_reads(self):
        """Every read image, through kvmfs (and QSD), has the bytes of its source raw image."""
        full = self.smoke or self.size <= 64 * MiB
        probes = [0, self.size // 3, self.size - 4 * MiB] if not full else None

        def digest(path, direct):
            h = hashlib.md5()
            flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
            fd = os.open(path, flags)
            abuf = mmap.mmap(-1, 4 * MiB)  # page-aligned, as O_DIRECT wants
            try:
                for off in (probes if probes is not None else range(0, self.size, 4 * MiB)):
                    off = max(0, off - off % (4 * MiB))
                    n = os.preadv(fd, [abuf], off)
                    h.update(abuf[:n])
            finally:
                abuf.close()
                os.close(fd)
            return h.hexdigest()

        want = {}
        for system in ("kvmfs", "qsd"):
            for key, path in sorted(self.read_files[system].items()):
                src = self.source_of(key)
                if src not in want:
                    want[src] = digest(src, False)
                name = "bytes-" + key + ("" if system == "kvmfs" else "-qsd")
                try:
                    got = digest(path, True)
                    self.check(name, got == want[src], "%s disk.raw %s source" % (
                        system, "==" if got == want[src] else "!="))
                except OSError as e:
                    self.check(name, False, "reading %s: %s" % (path, e))

    # ---- runs -------------------------------------------------------------

    def probe_writable(self, path):
        """None if disk.raw opens for writing, else why (EROFS: kvmfs is read-only)."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_DIRECT)
        except OSError as e:
            if e.errno == errno.EROFS:
                return "n/a (kvmfs read-only: open O_RDWR -> EROFS)"
            raise BenchError("open(%s, O_RDWR|O_DIRECT): %s" % (path, e))
        os.close(fd)
        return None

    def one_run(self, system, wl):
        name, desc, key, rw, bs, jobs, target = wl
        write = "write" in rw
        alloc = key == "alloc"
        time_based = not (alloc and rw == "write")  # allocating seq write: one pass, no wrap
        if write:
            image = self.prepare_write_image(system, key)
            fmt, rel, src_dir = "qcow2", os.path.basename(image), self.wpool[system]
            warm = [image] if not alloc else []
        else:
            warm = self.image_paths_for_warm(key)
        t0 = time.monotonic()
        self.prepare_cache()
        self.warm(warm)
        prep = time.monotonic() - t0
        if prep > 10:
            log("  (cache preparation before %s on %s took %.0f s: busy machine)" % (
                name, system, prep))
        if not write:  # the mounts of the whole run
            res = run_fio(self.read_files[system][key], rw, bs, jobs, self.runtime)
            res["prep_s"] = round(prep, 2)
            return res
        # Teardown (unmount; kvmfs and QSD both flush written data to the image then) is
        # recorded as teardown_s, not counted in the fio figure.
        if system == "kvmfs":
            obj = KvmfsMount(self, src_dir, readonly=not write).start()
            target_file = obj.path(rel, "disk.raw")
        else:
            obj = QsdExport(self, [(image, fmt)], writable=write).start()
            target_file = obj.mnt
        res = None
        try:
            if system == "kvmfs" and write:
                why = self.probe_writable(target_file)
                if why:
                    self.kvmfs_readonly = why
                    return None
            res = run_fio(target_file, rw, bs, jobs, self.runtime, time_based=time_based)
            return res
        finally:
            t1 = time.monotonic()
            obj.stop()
            if res is not None:
                res["prep_s"] = round(prep, 2)
                res["teardown_s"] = round(time.monotonic() - t1, 2)
                if res["teardown_s"] > 10:
                    log("  (unmounting %s after %s took %.0f s: flushing writes to a busy disk)" % (
                        system, name, res["teardown_s"]))

    def run_workloads(self):
        wls = [w for w in WORKLOADS if w[0] in self.workloads]
        systems = ["kvmfs"] + (["qsd"] if self.have_qsd else [])
        for wl in wls:
            unit = "MiB/s" if wl[4] == "1M" else "IOPS"
            self.results[wl[0]] = {"desc": wl[1], "unit": unit, "target": wl[6],
                                   "kvmfs": [], "qsd": [], "kvmfs_runs": [], "qsd_runs": [],
                                   "kvmfs_error": None, "qsd_error": None}
        want_ceiling = self.args.ceiling and any(w[0] == "seqread-plain" for w in wls)
        want_snap = want_ceiling and not self.args.no_snapshot_row
        for r in range(self.rounds):
            order = systems if r % 2 == 0 else list(reversed(systems))
            self.round_load.append(os.getloadavg()[0])
            log("round %d/%d (order %s, load %.2f)" % (r + 1, self.rounds, " then ".join(order),
                                                       self.round_load[-1]))
            if want_ceiling:
                try:
                    self.prepare_cache()
                    self.warm([self.images["raw"][0]])
                    res = run_fio(self.images["raw"][0], "read", "1M", 1, self.runtime, direct=False)
                    self.ceiling.append(res["MiB/s"])
                    self.case(True, "ceiling")
                    log("  page-cache ceiling: %.0f MiB/s" % res["MiB/s"])
                except BenchError as e:
                    self.case(False, "page-cache ceiling", str(e))
            if want_snap:
                self.snapshot_view_run()
            for wl in wls:
                rec = self.results[wl[0]]
                for system in order:
                    if system == "kvmfs" and "write" in wl[3] and self.kvmfs_readonly:
                        self.case(None, "%s %s" % (wl[0], system))
                        continue
                    try:
                        res = self.one_run(system, wl)
                    except BenchError as e:
                        rec[system + "_error"] = str(e).splitlines()[0][:300]
                        self.case(False, "%s on %s (round %d)" % (wl[0], system, r + 1), str(e))
                        continue
                    if res is None:
                        log("  %-16s %-5s %s" % (wl[0], system, self.kvmfs_readonly))
                        self.case(None, "%s %s" % (wl[0], system))
                        continue
                    rec[system].append(res[rec["unit"]])
                    rec[system + "_runs"].append(res)
                    self.case(True, "%s %s" % (wl[0], system))
                    log("  %-16s %-5s %8s %s  (p99 %.0f us)" % (
                        wl[0], system, fmt_num(res[rec["unit"]]), rec["unit"], res["clat_p99_us"]))
        if self.kvmfs_readonly:
            for wl in wls:
                if "write" in wl[3]:
                    self.results[wl[0]]["kvmfs_error"] = self.kvmfs_readonly

    def snapshot_view_run(self):
        """A snapshot view read twice, buffered: the first read fills the kernel's page cache of
        the view (it can never change, so kvmfs lets the kernel keep it), the second is timed."""
        path = self.read_files["kvmfs"]["snap"]
        try:
            self.warm([self.images["snap"][0]])
            run_fio(path, "read", "1M", 1, self.runtime + 600, direct=False, time_based=False)
            res = run_fio(path, "read", "1M", 1, self.runtime, direct=False)
            self.snap_view.append(res["MiB/s"])
            self.case(True, "snapshot view")
            log("  snapshot view, 2nd buffered read: %.0f MiB/s" % res["MiB/s"])
        except BenchError as e:
            self.case(False, "snapshot view", str(e))

    def decode_limits(self):
        """The two-core decode limit of each compressed image's clusters (bench/codec_bench: CPU
        time of kvmfs's decoder over every compressed cluster, as two cores would share it)."""
        exe = self.codec_bench
        if not exe:
            log("no codec_bench (ninja bench/codec_bench, or --codec-bench): no decode-limit rows")
            return
        keys = [k for k in ("zlib", "zstd", "zlibx", "zstdx")
                if any(w[2] == k for w in WORKLOADS if w[0] in self.workloads)]
        for key in keys:
            p = run([exe, self.images[key][0], "1000000000", "3" if self.smoke else "5"],
                    check=False, timeout=1800)
            line = [x for x in p.stdout.splitlines() if x.startswith("limit: ")]
            if p.returncode != 0 or not line:
                self.case(False, "codec_bench " + key, (p.stdout + p.stderr)[-500:])
                continue
            self.decode[key] = json.loads(line[-1][len("limit: "):])
            self.case(True, "codec_bench " + key)
            log("  two-core decode limit of %s: %.0f MiB/s of guest data" % (
                key, self.decode[key]["limit_2core_MiB_s"]))

    def check_written_images(self):
        """After the write runs: qemu-img check on what kvmfs wrote (no corruption, no leaks)."""
        if self.kvmfs_readonly:
            return
        d = self.wpool["kvmfs"]
        for name in ("over.qcow2", "alloc.qcow2"):
            p = os.path.join(d, name)
            if not os.path.exists(p):
                continue
            r = run([QEMU_IMG, "check", "-q", p], check=False)
            self.check("qemu-img-check-kvmfs-" + name, r.returncode == 0,
                       (r.stdout + r.stderr).strip()[-300:] or "clean")

    # ---- scale ------------------------------------------------------------

    def build_big_pool(self, n):
        d = os.path.join(self.workdir, "pool-%d" % n)
        done = os.path.join(self.workdir, "pool-%d.done" % n)
        if os.path.exists(done):
            return d
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        tpl = os.path.join(self.workdir, "template.qcow2")
        run([QEMU_IMG, "create", "-q", "-f", "qcow2", tpl, "10G"])
        with open(tpl, "rb") as f:
            data = f.read()
        tsize = len(data)
        # Nonzero 4 KiB blocks only: each copy is a distinct file of a few KiB on disk.
        blocks = [(o, data[o:o + 4096]) for o in range(0, tsize, 4096)
                  if data[o:o + 4096].strip(b"\0")]
        per_dir = 100
        for i in range(n):
            sub = os.path.join(d, "d%03d" % (i // per_dir))
            if i % per_dir == 0:
                os.makedirs(sub, exist_ok=True)
            if i % 10 == 9:  # every tenth a sparse raw image
                with open(os.path.join(sub, "vm%05d.raw" % i), "wb") as f:
                    f.truncate(10 * GiB)
                continue
            with open(os.path.join(sub, "vm%05d.qcow2" % i), "wb") as f:
                for o, b in blocks:
                    f.seek(o)
                    f.write(b)
                f.truncate(tsize)
        os.unlink(tpl)
        open(done, "w").close()
        return d

    def scale_ls(self):
        n = self.args.scale_images
        t0 = time.monotonic()
        d = self.build_big_pool(n)
        log("scale: %d-image pool ready in %.1f s" % (n, time.monotonic() - t0))
        mounts, lss, lss2, entries = [], [], [], None
        for r in range(self.rounds):
            self.prepare_cache()  # the pool's metadata stays cached from its creation: hot
            try:
                m = KvmfsMount(self, d, readonly=True).start()
            except BenchError as e:
                self.case(False, "scale ls -R mount", str(e))
                self.scale["ls"] = {"error": str(e).splitlines()[0]}
                return
            try:
                t0 = time.monotonic()
                p = subprocess.run(["ls", "-R", m.mnt], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, timeout=600)
                dt = time.monotonic() - t0
                if p.returncode != 0:
                    self.case(False, "scale ls -R", p.stderr.decode(errors="replace")[-500:])
                    self.scale["ls"] = {"error": "ls -R rc=%d: %s" % (
                        p.returncode, p.stderr.decode(errors="replace").strip()[:200])}
                    return
                entries = sum(1 for line in p.stdout.splitlines() if line and not line.endswith(b":"))
                t0 = time.monotonic()
                p = subprocess.run(["ls", "-R", m.mnt], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, timeout=600)
                dt2 = time.monotonic() - t0
                if p.returncode != 0:
                    self.case(False, "scale second ls -R", p.stderr.decode(errors="replace")[-500:])
                mounts.append(m.mount_s)
                lss.append(dt)
                lss2.append(dt2)
                self.case(True, "scale ls -R")
                log("  ls -R of %d images: mount %.2f s, ls -R %.2f s, again %.2f s (%d entries)" % (
                    n, m.mount_s, dt, dt2, entries))
            finally:
                m.stop()
        self.scale["ls"] = {"images": n, "mount_s": mounts, "ls_s": lss, "entries": entries,
                            "mount_median_s": statistics.median(mounts),
                            "ls_median_s": statistics.median(lss), "ls2_s": lss2,
                            "ls2_median_s": statistics.median(lss2)}

    def scale_cp(self):
        vsize = self.args.cp_size
        d = os.path.join(self.workdir, "pool-big")
        img = os.path.join(d, "big.qcow2")
        data_mib = 16
        if not os.path.exists(img + ".done"):
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
            run([QEMU_IMG, "create", "-q", "-f", "qcow2", img, str(vsize)])
            cmds = []
            for k in range(data_mib):  # 16 x 1 MiB of data spread over the disk
                off = (vsize // data_mib) * k
                cmds += ["-c", "write -P 0x%02x %d 1M" % (0x11 + k, off)]
            run([QEMU_IO, "-f", "qcow2"] + cmds + [img])
            open(img + ".done", "w").close()
        out = os.path.join(self.workdir, "cp-out.raw")
        res = {"virtual_size": vsize, "data_MiB": data_mib, "kvmfs_s": [], "qsd_s": [],
               "qsd_timeout_s": self.args.cp_qsd_timeout}
        systems = ["kvmfs"] + (["qsd"] if self.have_qsd and self.args.cp_qsd_timeout > 0 else [])
        for r in range(self.rounds):
            for system in (systems if r % 2 == 0 else list(reversed(systems))):
                self.prepare_cache()
                if system == "kvmfs":
                    obj = KvmfsMount(self, d, readonly=True).start()
                    src = obj.path("big.qcow2", "disk.raw")
                    timeout = 600
                else:
                    obj = QsdExport(self, [(img, "qcow2")], writable=False).start()
                    src = obj.mnt
                    timeout = self.args.cp_qsd_timeout
                try:
                    if os.path.exists(out):
                        os.unlink(out)
                    t0 = time.monotonic()
                    try:
                        p = subprocess.run(["cp", "--sparse=always", src, out], stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, timeout=timeout)
                    except subprocess.TimeoutExpired:
                        res[system + "_s"].append(None)
                        log("  cp --sparse=always %s: > %d s (stopped)" % (system, timeout))
                        self.case(True, "scale cp " + system)
                        continue
                    dt = time.monotonic() - t0
                    if p.returncode != 0:
                        err = p.stderr.decode(errors="replace").strip()
                        self.case(False, "scale cp " + system, err)
                        res[system + "_error"] = err[:200]
                        continue
                    st = os.stat(out)
                    ok = st.st_size == vsize and st.st_blocks * 512 < vsize // 64
                    if system == "kvmfs":
                        self.check("cp-sparse-output", ok, "size %d, %d MiB allocated" % (
                            st.st_size, st.st_blocks * 512 // MiB))
                    else:
                        self.case(True, "scale cp " + system)
                    res[system + "_s"].append(dt)
                    log("  cp --sparse=always %s: %.2f s" % (system, dt))
                finally:
                    obj.stop()
                    if os.path.exists(out):
                        os.unlink(out)
        self.scale["cp"] = res

    # ---- report -----------------------------------------------------------

    def table_rows(self):
        """[(workload, kvmfs, qsd, ratio, target, result)] as strings."""
        rows = []

        def med(xs):
            return statistics.median(xs) if xs else None

        def spread(xs):
            if len(xs) < 2:
                return ""
            return " (%s–%s)" % (fmt_num(min(xs)), fmt_num(max(xs)))

        meds = {}
        for name in WORKLOAD_NAMES:
            rec = self.results.get(name)
            if rec is None:
                continue
            k, q = med(rec["kvmfs"]), med(rec["qsd"])
            meds[name] = (k, q)
            kcell = ("%s %s%s" % (fmt_num(k), rec["unit"], spread(rec["kvmfs"])) if k is not None
                     else (rec["kvmfs_error"] or "failed"))
            if q is not None:
                qcell = "%s %s%s" % (fmt_num(q), rec["unit"], spread(rec["qsd"]))
            elif not self.have_qsd:
                qcell = "n/a (no qemu-storage-daemon)"
            else:
                qcell = rec["qsd_error"] or "failed"
            ratio = k / q if k is not None and q else None
            tgt = rec["target"]
            rows.append((rec["desc"], kcell, qcell, "%.2f×" % ratio if ratio else "—",
                         "≥ %.2f×" % tgt if tgt else "—", verdict(ratio, tgt)))
        if self.ceiling:
            c = statistics.median(self.ceiling)
            rows.append(("ceiling: raw image from the host page cache, seq read 1 MiB (buffered)",
                         "%s MiB/s%s" % (fmt_num(c), spread(self.ceiling)), "", "", "", ""))
            k, q = meds.get("seqread-plain", (None, None))
            rk = k / c if k is not None and c else None
            rq = q / c if q is not None and c else None
            rows.append(("plain qcow2 seq read 1 MiB (O_DIRECT) / ceiling",
                         "%.2f×" % rk if rk is not None else "—",
                         "%.2f×" % rq if rq is not None else "—", "", "≥ %.2f× (kvmfs)" % CEILING_TARGET,
                         verdict(rk, CEILING_TARGET)))
            if self.snap_view:
                sv = statistics.median(self.snap_view)
                rows.append(("snapshot view: 2nd buffered seq read 1 MiB",
                             "%s MiB/s%s" % (fmt_num(sv), spread(self.snap_view)),
                             "— (QSD exports no snapshot)", "", "", ""))
                rows.append(("snapshot view 2nd buffered read / ceiling", "%.2f×" % (sv / c), "—", "",
                             "≥ %.2f× (kvmfs)" % SNAP_TARGET, verdict(sv / c, SNAP_TARGET)))
        for key, lim in sorted(self.decode.items()):
            wl = [w for w in WORKLOADS if w[2] == key][0]
            k, q = meds.get(wl[0], (None, None))
            limit = lim["limit_2core_MiB_s"]
            rk = k / limit if k is not None and limit else None
            rq = q / limit if q is not None and limit else None
            rows.append(("%s / two-core decode limit (%s MiB/s)" % (wl[1].split(":")[0], fmt_num(limit)),
                         "%.2f×" % rk if rk is not None else "—",
                         "%.2f×" % rq if rq is not None else "—", "",
                         "≥ %.2f× (kvmfs)" % DECODE_TARGET, verdict(rk, DECODE_TARGET)))
        if "seqread-chain16" in meds and "seqread-plain" in meds:
            (k16, q16), (k1, q1) = meds["seqread-chain16"], meds["seqread-plain"]
            rk = k16 / k1 if k16 is not None and k1 else None
            rq = q16 / q1 if q16 is not None and q1 else None
            rows.append(("16-deep chain seq read / depth-1 (plain) seq read",
                         "%.2f×" % rk if rk is not None else "—",
                         "%.2f×" % rq if rq is not None else "—", "",
                         "≥ %.2f× (kvmfs)" % CHAIN_TARGET, verdict(rk, CHAIN_TARGET)))
        ls = self.scale.get("ls")
        if ls:
            if "error" in ls:
                rows.append(("scale: ls -R of a fresh mount of a pool of N images", ls["error"], "—", "",
                             "< %.1f s" % LS_TARGET_S, "FAIL"))
            else:
                big = ls["images"] >= 10000
                for what, t, limit, extra in (
                        ("ls -R of a fresh mount", ls["ls_median_s"], LS_TARGET_S,
                         " (mount %.2f s)" % ls["mount_median_s"]),
                        ("second ls -R of the same mount", ls["ls2_median_s"], LS2_TARGET_S, "")):
                    tgt = "< %.1f s" % limit if big else "(info: < %.1f s at 10,000)" % limit
                    rows.append(("scale: %s of %d images (%s entries)" % (what, ls["images"], ls["entries"]),
                                 "%.2f s%s" % (t, extra), "— (QSD exports one image)", "", tgt,
                                 ("PASS" if t < limit else "FAIL") if big else "info"))
        cp = self.scale.get("cp")
        if cp:
            ks = [x for x in cp["kvmfs_s"] if x is not None]
            k = statistics.median(ks) if ks else None
            qs = cp["qsd_s"]
            if not qs:
                qcell = "not run"
            elif all(x is None for x in qs):
                qcell = "> %d s (stopped)" % cp["qsd_timeout_s"]
            else:
                vals = [x if x is not None else float("inf") for x in qs]
                qm = statistics.median(vals)
                qcell = "%.2f s" % qm if qm != float("inf") else "> %d s (stopped)" % cp["qsd_timeout_s"]
            big = cp["virtual_size"] >= TiB
            rows.append(("scale: cp --sparse=always of a %s mostly-empty qcow2's disk.raw" % human(cp["virtual_size"]),
                         "%.2f s" % k if k is not None else cp.get("kvmfs_error", "failed"), qcell, "",
                         "< %.0f s" % CP_TARGET_S if big else "(info: < %.0f s at 1 TiB)" % CP_TARGET_S,
                         ("PASS" if k is not None and k < CP_TARGET_S else "FAIL") if big else "info"))
        return rows

    def report(self, started, finished):
        rows = self.table_rows()
        sha, dirty = git_state()
        if self.args.kvmfs_sha:
            sha, dirty = self.args.kvmfs_sha, False
        date = datetime.datetime.utcnow().strftime("%Y-%m-%d")
        meta = {
            "date_utc": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
            "git_sha": sha,
            "git_dirty": dirty,
            "repo_head": git_state()[0],
            "mode": "smoke" if self.smoke else "full",
            "kvmfs": self.kvmfs,
            "kvmfs_buildtype": buildtype_of(self.kvmfs),
            "kvmfs_version": first_line([self.kvmfs, "--version"]),
            "qemu": first_line([QEMU_IMG, "--version"]),
            "qsd": first_line([QSD, "--version"]) if self.have_qsd else None,
            "fio": first_line([FIO, "--version"]),
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "loadavg_start": started["load"],
            "loadavg_end": os.getloadavg(),
            "duration_s": round(finished - started["t"], 1),
            "size": self.size,
            "rounds": self.rounds,
            "runtime_s": self.runtime,
            "cache_prep": not self.args.no_cache_prep,
            "drop_caches": self.args.drop_caches,
            "kvmfs_opts": self.args.kvmfs_opts,
            "qsd_file_opts": self.args.qsd_file_opts,
            "note": self.args.note,
        }
        head = ["workload", "kvmfs", "QSD", "kvmfs/QSD", "target", "result"]
        md = []
        md.append("# kvmfs benchmark %s (%s%s), %s mode" % (date, sha, "-dirty" if dirty else "",
                                                          meta["mode"]))
        md.append("")
        md.append("Medians of %d round(s), (min–max) over the rounds, %d s per fio run, images of %s; "
                  "fio psync with O_DIRECT on the FUSE file; kvmfs and qemu-storage-daemon FUSE exports "
                  "of the same images, both mounted for all the read runs, each workload alternating "
                  "between them in every round (writes: a copy per system, a fresh mount per run)." % (
                      self.rounds, self.runtime, human(self.size)))
        md.append("")
        md.append("| " + " | ".join(head) + " |")
        md.append("|" + "|".join(["---"] * len(head)) + "|")
        for r in rows:
            md.append("| " + " | ".join(c.replace("|", "/") for c in r) + " |")
        md.append("")
        if self.checks:
            bad = [c for c in self.checks if not c["ok"]]
            md.append("Checks: %d of %d passed%s." % (len(self.checks) - len(bad), len(self.checks),
                                                     "".join("; FAILED %s: %s" % (c["check"], c["detail"])
                                                             for c in bad)))
            md.append("")
        md.append("Machine and build: %d CPUs, kernel %s, load average %.2f at start, %s at the start "
                  "of each round and %.2f at end; "
                  "kvmfs %s (%s build), %s, %s, %s. Total time %.0f s." % (
                      meta["cpus"], meta["kernel"], meta["loadavg_start"][0],
                      "/".join("%.2f" % x for x in self.round_load) or "—", meta["loadavg_end"][0],
                      meta["kvmfs_version"] or "?", meta["kvmfs_buildtype"] or "unknown",
                      meta["qemu"], meta["qsd"] or "no qemu-storage-daemon", meta["fio"], meta["duration_s"]))
        md.append("")
        md.append("Setup: `kvmfs -f -o ro%s` over the read images and one `qemu-storage-daemon "
                  "--blockdev driver=file%s --blockdev driver=qcow2|raw --export type=fuse,writable=off` "
                  "per read image, for the whole run; for each write run a fresh `kvmfs -f` and a "
                  "fresh QSD export (writable=on) (QSD %s); "
                  "page cache %s before each run." % (
                      "," + self.args.kvmfs_opts if self.args.kvmfs_opts else "",
                      "," + self.args.qsd_file_opts if self.args.qsd_file_opts else "",
                      "defaults otherwise: aio=threads, cache=writeback, one FUSE thread"
                      if not self.args.qsd_file_opts else "defaults otherwise",
                      "left as it was" if self.args.no_cache_prep else
                      ("synced, dropped (echo 3) and the run's images read back (hot)" if self.args.drop_caches
                       else "write images fdatasync'ed and the run's images read back (hot)")))
        if self.decode:
            md.append("")
            md.append("Decode limits (bench/codec_bench, kvmfs's decoders over every compressed "
                      "cluster of the image, CPU time, two cores' worth; uncompressed clusters count as "
                      "free): " + "; ".join(
                          "%s %s MiB/s of guest data (%d of %d clusters compressed, %.0f MiB/s per core)" % (
                              k, fmt_num(v["limit_2core_MiB_s"]), v["compressed_clusters"],
                              v["virtual_clusters"], v["decode_MiB_s_1core"])
                          for k, v in sorted(self.decode.items())) + ".")
        if dirty:
            md.append("")
            md.append("The working tree had uncommitted changes when this ran (%s-dirty)." % sha)
        if self.args.note:
            md.append("")
            md.append("Note: " + self.args.note)
        if self.failures:
            md.append("")
            md.append("Failures:")
            md.extend("- " + f.splitlines()[0][:300] for f in self.failures)
        text = "\n".join(md) + "\n"
        meta["loadavg_rounds"] = self.round_load
        data = {"meta": meta, "workloads": self.results, "ceiling_MiB_s": self.ceiling,
                "snapshot_view_MiB_s": self.snap_view, "decode_limits": self.decode,
                "scale": self.scale, "checks": self.checks, "failures": self.failures,
                "table": [dict(zip(head, r)) for r in rows]}
        print(text)
        out = self.args.out or (None if self.smoke else os.path.join(REPO, "bench", "results"))
        if out is None:
            print("(smoke mode: results not saved; --out DIR saves them)")
            return
        os.makedirs(out, exist_ok=True)
        base = os.path.join(out, "%s-%s%s" % (date, sha, "-smoke" if self.smoke else ""))
        with open(base + ".md", "w") as f:
            f.write(text)
        with open(base + ".json", "w") as f:
            json.dump(data, f, indent=1, default=str)
            f.write("\n")
        print("written: %s.md, %s.json" % (base, base))

    def cleanup(self):
        _cleanup_all()
        if self.own_workdir and not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            log("kept %s" % self.workdir)


def verdict(value, target):
    if target is None:
        return ""
    if value is None:
        return "n/a"
    return "PASS" if value >= target else "FAIL"


def human(n):
    for unit, v in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB)):
        if n >= v and n % v == 0:
            return "%d %s" % (n // v, unit)
    return "%d bytes" % n


def first_line(argv):
    try:
        p = run(argv, check=False, timeout=30)
        return (p.stdout or p.stderr).strip().splitlines()[0]
    except Exception:
        return None


def git_state():
    try:
        sha = run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], timeout=30).stdout.strip()
        st = run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"], timeout=60).stdout
        return sha, bool(st.strip())
    except Exception:
        return "nogit", False


def buildtype_of(exe):
    d = os.path.dirname(exe)
    while d and d != "/":
        p = os.path.join(d, "meson-info", "intro-buildoptions.json")
        if os.path.exists(p):
            try:
                with open(p) as f:
                    for o in json.load(f):
                        if o.get("name") == "buildtype":
                            return o.get("value")
            except (OSError, ValueError):
                return None
        d = os.path.dirname(d)
    return None


def find_codec_bench(kvmfs):
    """BUILD/bench/codec_bench next to BUILD/src/fuse/kvmfs, when built."""
    p = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(kvmfs))), "bench", "codec_bench")
    return p if os.access(p, os.X_OK) else None


def parse_size(s):
    s = s.strip().upper().rstrip("B").rstrip("I")
    mult = {"K": KiB, "M": MiB, "G": GiB, "T": TiB}
    if s and s[-1] in mult:
        return int(float(s[:-1]) * mult[s[-1]])
    return int(s)


def skip(reason):
    line = "=" * 72
    msg = "\n%s\nSKIPPED: %s\n  -> the kvmfs benchmark did NOT run on this machine.\n%s\n" % (line, reason, line)
    sys.stdout.write(msg)
    sys.stderr.write(msg)
    print("KVMFS-IT-RESULT: file=bench-run.py passed=0 failed=0 skipped=all", flush=True)
    sys.exit(SKIP_EXIT_CODE)


def find_kvmfs():
    for d in ("build-bench", "build", "build-test"):
        for base in (REPO, os.path.dirname(REPO)):
            p = os.path.join(base, d, "src", "fuse", "kvmfs")
            if os.access(p, os.X_OK):
                return p
    return shutil.which("kvmfs")


def parse_args(argv):
    ap = argparse.ArgumentParser(description="kvmfs vs qemu-storage-daemon FUSE benchmark (see bench/README.md)")
    ap.add_argument("--kvmfs", help="the kvmfs binary (default: build-bench/, build/ or PATH)")
    ap.add_argument("--smoke", action="store_true",
                    help="CI smoke: 32 MiB images, 1 round, 1 s per run, 500-image pool, 64 GiB sparse cp")
    ap.add_argument("--size", type=parse_size, help="image size (default 1G; smoke 32M)")
    ap.add_argument("--rounds", type=int, help="rounds, each system once per workload per round (default 3)")
    ap.add_argument("--runtime", type=int, help="seconds per fio run (default 10; smoke 1)")
    ap.add_argument("--workloads", help="comma-separated subset of: " + ",".join(WORKLOAD_NAMES)
                    + " (or 'none')")
    ap.add_argument("--no-scale", action="store_true", help="skip the ls -R and cp --sparse checks")
    ap.add_argument("--scale-images", type=int, help="images in the ls -R pool (default 10000; smoke 500)")
    ap.add_argument("--cp-size", type=parse_size, help="virtual size of the cp --sparse image (default 1T)")
    ap.add_argument("--cp-qsd-timeout", type=int,
                    help="stop QSD's cp --sparse after this many s (default 30; smoke 10; 0: not run)")
    ap.add_argument("--no-ceiling", dest="ceiling", action="store_false", help="skip the page-cache ceiling")
    ap.add_argument("--no-qsd", action="store_true", help="kvmfs only")
    ap.add_argument("--no-snapshot-row", action="store_true",
                    help="skip the buffered snapshot-view reads (they need 2 x --size of RAM)")
    ap.add_argument("--codec-bench", help="bench/codec_bench for the decode-limit rows "
                    "(default: BUILD/bench/codec_bench next to --kvmfs, when built)")
    ap.add_argument("--drop-caches", action="store_true",
                    help="also sync and drop the whole page cache (echo 3) before each run")
    ap.add_argument("--no-cache-prep", action="store_true",
                    help="before each run, do not fdatasync the write images nor read the run's "
                    "images into the host page cache (default in smoke mode)")
    ap.add_argument("--out", help="results directory (default bench/results; smoke: the scratch dir)")
    ap.add_argument("--workdir", help="scratch dir for images and mounts (kept; images reused when "
                    "the size matches). Default: a fresh /tmp/kvmfs-bench-* removed at the end")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir")
    ap.add_argument("--kvmfs-opts", default="", help="extra kvmfs -o options, e.g. max_threads=4")
    ap.add_argument("--qsd-file-opts", default="",
                    help="extra options for QSD's file blockdev, e.g. aio=io_uring or cache.direct=on")
    ap.add_argument("--kvmfs-sha", help="the commit the kvmfs binary was built from, when not the "
                    "repository's HEAD (names the results; default: git HEAD, -dirty if modified)")
    ap.add_argument("--note", default="", help="free text recorded in the results (machine state...)")
    a = ap.parse_args(argv)
    d = dict(size=32 * MiB, rounds=1, runtime=1, scale_images=500, cp_size=64 * GiB, cp_qsd_timeout=10) \
        if a.smoke else dict(size=GiB, rounds=3, runtime=10, scale_images=10000, cp_size=TiB, cp_qsd_timeout=30)
    for k, v in d.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.smoke:
        a.no_cache_prep = True
    if a.size % MiB or a.size < 16 * MiB:
        ap.error("--size must be a multiple of 1 MiB, at least 16 MiB")
    if a.workloads in (None, "all"):
        a.workloads = list(WORKLOAD_NAMES)
    elif a.workloads == "none":
        a.workloads = []
    else:
        a.workloads = [w.strip() for w in a.workloads.split(",") if w.strip()]
        bad = [w for w in a.workloads if w not in WORKLOAD_NAMES]
        if bad:
            ap.error("unknown workload(s) %s; known: %s" % (", ".join(bad), ", ".join(WORKLOAD_NAMES)))
    if a.rounds < 1 or a.runtime < 1:
        ap.error("--rounds and --runtime must be at least 1")
    a.kvmfs = a.kvmfs or find_kvmfs()
    return a


def main(argv):
    args = parse_args(argv)
    if not os.path.exists(FUSE_DEV):
        skip("%s missing (no FUSE in this kernel/container)" % FUSE_DEV)
    try:
        os.close(os.open(FUSE_DEV, os.O_RDWR))
    except OSError as e:
        skip("%s cannot be opened: %s" % (FUSE_DEV, e.strerror))
    for tool, pkg in ((FUSERMOUNT, "fuse3"), (FIO, "fio"), (QEMU_IMG, "qemu-utils"), (QEMU_IO, "qemu-utils")):
        if not os.access(tool, os.X_OK):
            skip("%s missing (apt-get install %s)" % (tool, pkg))
    if not args.kvmfs or not os.access(args.kvmfs, os.X_OK):
        print("bench: no kvmfs binary (%r); build it and pass --kvmfs BUILD/src/fuse/kvmfs" % args.kvmfs)
        print("KVMFS-IT-RESULT: file=bench-run.py passed=0 failed=1 skipped=0", flush=True)
        return 1
    bench = Bench(args)
    started = {"t": time.monotonic(), "load": os.getloadavg()}
    log("kvmfs %s; scratch %s; %s mode: %s images, %d round(s), %d s per run" % (
        args.kvmfs, bench.workdir, "smoke" if args.smoke else "full", human(args.size), args.rounds,
        args.runtime))
    if not bench.have_qsd:
        log("qemu-storage-daemon not found (apt-get install qemu-system-common): kvmfs only")
    try:
        try:
            bench.build_images()
            try:
                bench.start_read_mounts()
                bench.verify_reads()
                bench.decode_limits()
                bench.run_workloads()
            finally:
                bench.stop_read_mounts()
            bench.check_written_images()
            if not args.no_scale:
                bench.scale_ls()
                bench.scale_cp()
        except EnvironmentUnusable as e:
            bench.cleanup()
            skip("mounting FUSE is impossible here: %s" % e)
        except BenchError as e:
            bench.case(False, "bench", str(e))
        bench.report(started, time.monotonic())
    finally:
        bench.cleanup()
    p, f, s = bench.cases
    print("KVMFS-IT-RESULT: file=bench-run.py passed=%d failed=%d skipped=%d" % (p, f, s), flush=True)
    if f:
        print("bench: %d failure(s):" % f)
        for x in bench.failures:
            print("  " + x[:3000].replace("\n", "\n    "))
    return 1 if f else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
