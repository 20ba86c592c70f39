"""Shared helpers for the kvmfs integration tests.

Every test mounts the real `kvmfs` binary (path in $KVMFS_BIN) over images that
`qemu-img`/`qemu-io` make at test time, and compares what the mount shows with
what QEMU says about the same images:

  bytes    `qemu-img convert -O raw` (the oracle for every disk.raw)
  extents  `qemu-img map --output=json` (the oracle for SEEK_DATA/SEEK_HOLE)
  metadata `qemu-img info --output=json` (the oracle for info.json)

Standard library only. Run a test file directly (`python3 test_x.py`) or through
`meson test --suite integration`. A test file exits 77 (meson's "skipped") with a
loud banner when FUSE cannot be used on this machine; it never passes silently.
"""

import atexit
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

SKIP_EXIT_CODE = 77
MOUNT_TIMEOUT_S = 20
CMD_TIMEOUT_S = 120

KiB = 1024
MiB = 1024 * 1024

QEMU_IMG = shutil.which("qemu-img") or "/usr/bin/qemu-img"
QEMU_IO = shutil.which("qemu-io") or "/usr/bin/qemu-io"
# qemu-img for commands that derive a LUKS key: runs it again while QEMU's PBKDF2 calibration
# measures no CPU time (the script says why).
QEMU_IMG_PBKDF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools",
                              "qemu-img-pbkdf")
FUSERMOUNT = shutil.which("fusermount3") or "/usr/bin/fusermount3"
# Overridable only to test the skip path itself.
FUSE_DEV = os.environ.get("KVMFS_IT_FUSE_DEV", "/dev/fuse")


# --------------------------------------------------------------------------
# Environment checks


def kvmfs_bin():
    return os.environ.get("KVMFS_BIN", "")


_instrumented = None


def kvmfs_instrumented():
    """True when the kvmfs binary is built with ASan or TSan (its memory
    figures are then the sanitizer's, not kvmfs's)."""
    global _instrumented
    if _instrumented is None:
        try:
            with open(kvmfs_bin(), "rb") as f:
                data = f.read()
            _instrumented = b"__asan_init" in data or b"__tsan_init" in data
        except OSError:
            _instrumented = False
    return _instrumented


def sanitizer_skip(what, checked_by="the release phase of tools/test.sh"):
    """Says loudly that `what` is not checked with this (instrumented) kvmfs."""
    print("\n%s\nSKIPPED: %s in a sanitizer build (%s);\n  %s checks it.\n%s" %
          ("=" * 72, what, kvmfs_bin(), checked_by, "=" * 72), flush=True)


def core_dump(pid, work_dir):
    """The bytes of a core dump of process `pid` (gcore, while it runs), or None
    after a loud SKIPPED when kvmfs is a sanitizer build: gcore writes out the
    sanitizer's terabytes of shadow mappings and fills the disk."""
    if kvmfs_instrumented():
        sanitizer_skip("the core-dump check")
        return None
    base = os.path.join(work_dir, "core")
    p = subprocess.run(["gcore", "-o", base, str(pid)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=300)
    core = "%s.%d" % (base, pid)
    try:
        if p.returncode != 0:
            raise AssertionError("gcore failed: " + p.stdout.decode(errors="replace")[-2000:])
        with open(core, "rb") as f:
            return f.read()
    finally:
        if os.path.exists(core):
            os.unlink(core)


def environment_problem():
    """Why these tests cannot run here, or None when they can."""
    if not os.path.exists(FUSE_DEV):
        return "%s missing (no FUSE in this kernel/container)" % FUSE_DEV
    try:
        fd = os.open(FUSE_DEV, os.O_RDWR)
        os.close(fd)
    except OSError as e:
        return "%s cannot be opened: %s" % (FUSE_DEV, e.strerror)
    if not os.access(FUSERMOUNT, os.X_OK):
        return "fusermount3 missing (apt-get install fuse3)"
    for tool in (QEMU_IMG, QEMU_IO):
        if not os.access(tool, os.X_OK):
            return "%s missing (apt-get install qemu-utils)" % tool
    b = kvmfs_bin()
    if not b or not os.access(b, os.X_OK):
        return "KVMFS_BIN not set or not executable (%r); run through meson test" % b
    return None


def skip_banner(reason):
    line = "=" * 72
    msg = "\n%s\nSKIPPED: %s\n  -> kvmfs integration tests did NOT run on this machine.\n%s\n" % (
        line, reason, line)
    sys.stdout.write(msg)
    sys.stderr.write(msg)
    sys.stdout.flush()


class MountImpossible(Exception):
    """FUSE mounting is refused by the environment (not a kvmfs bug)."""


# Markers in a failed mount's stderr that mean "this machine cannot mount FUSE".
_ENV_MOUNT_FAILURES = (
    "fuse: device not found",
    "fusermount3: mount failed: Operation not permitted",
    "fuse: failed to open /dev/fuse",
    "fusermount: mount failed: Operation not permitted",
)


# --------------------------------------------------------------------------
# Commands


def run(cmd, check=True, timeout=CMD_TIMEOUT_S, **kw):
    """Runs cmd (a list), returns CompletedProcess with text output."""
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)
    if check and p.returncode != 0:
        raise AssertionError("command failed (rc=%d): %s\nstdout: %s\nstderr: %s" % (
            p.returncode, " ".join(cmd), p.stdout, p.stderr))
    return p


def qemu_img(*args, check=True, cwd=None):
    return run([QEMU_IMG] + [str(a) for a in args], check=check, cwd=cwd)


def run_pbkdf(args, what):
    """qemu-img `args` (create, convert) that derive a LUKS key, through QEMU_IMG_PBKDF; a
    failure raises with qemu-img's message."""
    p = subprocess.run([QEMU_IMG_PBKDF] + [str(a) for a in args], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=300)
    if p.returncode != 0:
        raise AssertionError("%s: %s" % (what, p.stdout.decode(errors="replace")))


def imgdir(img):
    """QEMU 7.2 opens a relative external data_file name relative to its cwd
    (backing names are relative to the image): run qemu in the image's folder
    so that both mean the same file."""
    return os.path.dirname(os.path.abspath(str(img)))


def qemu_io(img, *cmds, fmt="qcow2"):
    """Runs qemu-io commands on img; fails if any command reports an error."""
    argv = [QEMU_IO, "-f", fmt]
    for c in cmds:
        argv += ["-c", c]
    argv.append(str(img))
    p = run(argv, cwd=imgdir(img))
    out = (p.stdout + p.stderr).lower()
    if "failed" in out or "error" in out or "invalid" in out:
        raise AssertionError("qemu-io reported an error: %s\n%s%s" % (cmds, p.stdout, p.stderr))
    return p


def create_qcow2(path, size, *opts, backing=None, backing_fmt=None, unsafe=False):
    argv = ["create", "-q", "-f", "qcow2"]
    o = [x for x in opts if x]
    if o:
        argv += ["-o", ",".join(o)]
    if backing is not None:
        argv += ["-b", str(backing)]
        if backing_fmt:
            argv += ["-F", backing_fmt]
        if unsafe:
            argv.append("-u")
    argv += [str(path), str(size)]
    # cwd = the image's folder: qemu-img creates a relative data_file= name
    # relative to its cwd but resolves it, on open, relative to the image.
    qemu_img(*argv, cwd=os.path.dirname(os.path.abspath(str(path))))
    return str(path)


def gen_bytes(seed, n, compressible=False):
    """n deterministic pseudo-random bytes; compressible mixes in repeats."""
    rng = random.Random(seed)
    if not compressible:
        return rng.randbytes(n)
    out = bytearray()
    while len(out) < n:
        if rng.random() < 0.7:
            word = b"kvmfs-%08x " % rng.getrandbits(32)
            out += word * (4096 // len(word)) + b"\0" * (4096 % len(word))
        else:
            out += rng.randbytes(4096)
    return bytes(out[:n])


def write_raw(path, size, seed, compressible=False):
    """A raw image of `size` bytes, fully written (no host holes)."""
    with open(path, "wb") as f:
        left, i = size, 0
        while left > 0:
            n = min(left, MiB)
            f.write(gen_bytes(seed * 7919 + i, n, compressible))
            left -= n
            i += 1
    return str(path)


def poke(path, offset, data):
    """Overwrites bytes in a file (like dd conv=notrunc)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def peek(path, offset, n):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


# --------------------------------------------------------------------------
# Oracles


def md5_file(path, bs=MiB, flags=0):
    h = hashlib.md5()
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        while True:
            b = os.read(fd, bs)
            if not b:
                break
            h.update(b)
    finally:
        os.close(fd)
    return h.hexdigest()


def md5_bytes(b):
    return hashlib.md5(b).hexdigest()


_oracle_cache = {}


def oracle_raw(img, workdir, snapshot=None, fmt=None):
    """Path of `qemu-img convert -O raw` of img (optionally of one snapshot)."""
    key = (os.path.realpath(img), snapshot, fmt)
    if key in _oracle_cache and os.path.exists(_oracle_cache[key]):
        return _oracle_cache[key]
    os.makedirs(workdir, exist_ok=True)
    out = os.path.join(workdir, "oracle-%d.raw" % len(_oracle_cache))
    argv = ["convert", "-U", "-O", "raw"]
    if fmt:
        argv += ["-f", fmt]
    if snapshot is not None:
        argv += ["-l", "snapshot.name=" + snapshot]
    qemu_img(*(argv + [os.path.abspath(img), os.path.abspath(out)]), cwd=imgdir(img))
    _oracle_cache[key] = out
    return out


def oracle_md5(img, workdir, snapshot=None, fmt=None):
    return md5_file(oracle_raw(img, workdir, snapshot, fmt))


def qemu_info(img, fmt=None):
    argv = ["info", "-U", "--output=json"]
    if fmt:
        argv += ["-f", fmt]
    return json.loads(qemu_img(*(argv + [os.path.abspath(img)]), cwd=imgdir(img)).stdout)


def merge_extents(ext):
    out = []
    for s, e in sorted(ext):
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [tuple(x) for x in out]


def qemu_data_extents(img, fmt=None):
    """Merged [start, end) ranges that `qemu-img map` reports with data: true."""
    argv = ["map", "-U", "--output=json"]
    if fmt:
        argv += ["-f", fmt]
    m = json.loads(qemu_img(*(argv + [os.path.abspath(img)]), cwd=imgdir(img)).stdout)
    return merge_extents((e["start"], e["start"] + e["length"]) for e in m if e.get("data"))


def seek_data_extents(path):
    """Merged [start, end) data ranges found by walking SEEK_DATA/SEEK_HOLE."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        ext, off = [], 0
        while off < size:
            try:
                d = os.lseek(fd, off, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break
                raise
            h = os.lseek(fd, d, os.SEEK_HOLE)
            if h <= d:
                raise AssertionError("SEEK_HOLE(%d) returned %d" % (d, h))
            ext.append((d, h))
            off = h
        return merge_extents(ext)
    finally:
        os.close(fd)


def read_json(path):
    with open(path, "r") as f:
        return json.load(f)


def open_errno(path, flags=os.O_RDONLY):
    """0 if path opens (and its first block reads), else the errno."""
    try:
        fd = os.open(path, flags)
    except OSError as e:
        return e.errno
    try:
        os.pread(fd, 4096, 0)
    except OSError as e:
        return e.errno
    finally:
        os.close(fd)
    return 0


# --------------------------------------------------------------------------
# Mounting


def _unescape_mountinfo(s):
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def is_mounted(mnt):
    mnt = os.path.realpath(mnt)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 4 and _unescape_mountinfo(parts[4]) == mnt:
                    return True
    except OSError:
        pass
    return False


_live_mounts = []


def _emergency_unmount(*_):
    for m in list(_live_mounts):
        try:
            m.unmount()
        except Exception:
            pass


def _on_signal(signum, frame):
    _emergency_unmount()
    sys.exit(128 + signum)


atexit.register(_emergency_unmount)
signal.signal(signal.SIGTERM, _on_signal)


class Mount:
    """One kvmfs mount. `foreground=True` runs `kvmfs -f` as our child (so the
    test can watch it die); otherwise kvmfs daemonizes as users run it."""

    def __init__(self, source, mountpoint, options=("ro",), foreground=True,
                 log_path=None, extra_args=()):
        self.source = str(source)
        self.mnt = str(mountpoint)
        self.options = list(options)
        self.foreground = foreground
        self.log_path = log_path or (self.mnt.rstrip("/") + ".log")
        self.proc = None
        self.extra_args = list(extra_args)
        self.mounted = False

    def argv(self):
        a = [kvmfs_bin()]
        if self.foreground:
            a.append("-f")
        a += self.extra_args
        if self.options:
            a += ["-o", ",".join(self.options)]
        a += [self.source, self.mnt]
        return a

    def start(self):
        os.makedirs(self.mnt, exist_ok=True)
        self._log = open(self.log_path, "ab")
        argv = self.argv()
        self._log.write(("### %s\n" % " ".join(argv)).encode())
        self._log.flush()
        if self.foreground:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                         stderr=subprocess.STDOUT)
            deadline = time.time() + MOUNT_TIMEOUT_S
            while time.time() < deadline:
                if is_mounted(self.mnt):
                    break
                if self.proc.poll() is not None:
                    self._fail_start("kvmfs exited with %d before mounting" % self.proc.returncode)
                time.sleep(0.05)
            else:
                self.proc.kill()
                self.proc.wait()
                self._fail_start("not mounted after %ds" % MOUNT_TIMEOUT_S)
        else:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                               stderr=subprocess.STDOUT, timeout=MOUNT_TIMEOUT_S)
            if p.returncode != 0:
                self._fail_start("kvmfs exited with %d" % p.returncode)
            # The contract: kvmfs returns once the mount is ready.
            if not is_mounted(self.mnt):
                self._fail_start("kvmfs returned 0 but %s is not mounted" % self.mnt)
        self.mounted = True
        _live_mounts.append(self)
        return self

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _fail_start(self, why):
        text = self.log_text()
        for marker in _ENV_MOUNT_FAILURES:
            if marker in text:
                raise MountImpossible("%s: %s" % (why, marker))
        raise AssertionError("mount failed: %s\ncommand: %s\nlog:\n%s" % (
            why, " ".join(self.argv()), text[-4000:]))

    def alive(self):
        """True while the mount is up (and, in foreground mode, kvmfs runs)."""
        if self.proc is not None and self.proc.poll() is not None:
            return False
        return is_mounted(self.mnt)

    def unmount(self):
        if self in _live_mounts:
            _live_mounts.remove(self)
        if is_mounted(self.mnt):
            p = subprocess.run([FUSERMOUNT, "-u", self.mnt], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=30)
            if p.returncode != 0 and is_mounted(self.mnt):
                subprocess.run([FUSERMOUNT, "-u", "-z", self.mnt], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=30)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.mounted = False
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def path(self, *parts):
        return os.path.join(self.mnt, *parts)


# --------------------------------------------------------------------------
# Test case base


INFO_TOP_KEYS = ("virtual-size", "format", "cluster-size", "backing-filename",
                 "backing-filename-format")
INFO_QCOW2_KEYS = ("compat", "compression-type", "lazy-refcounts", "refcount-bits",
                   "corrupt", "extended-l2")
INFO_SNAPSHOT_KEYS = ("id", "name", "vm-state-size", "date-sec", "date-nsec",
                      "vm-clock-sec", "vm-clock-nsec", "icount")


class KvmfsTestCase(unittest.TestCase):
    """Base: a temp dir per class with pool/, mnt/, work/ (oracle outputs)."""

    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="kvmfs-it-%s-" % cls.__name__)
        cls.pool = os.path.join(cls.tmp, "pool")
        cls.work = os.path.join(cls.tmp, "work")
        os.makedirs(cls.pool)
        os.makedirs(cls.work)
        cls.mounts = []
        try:
            cls.make_images()
        except Exception:
            cls._cleanup_class()
            raise

    @classmethod
    def make_images(cls):
        pass

    @classmethod
    def tearDownClass(cls):
        cls._cleanup_class()

    @classmethod
    def _cleanup_class(cls):
        for m in cls.mounts:
            m.unmount()
        cls.mounts = []
        if os.environ.get("KVMFS_IT_KEEP"):
            print("kept %s" % cls.tmp)
        else:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def mount(cls, source=None, options=("ro",), foreground=True, name="mnt"):
        mnt = os.path.join(cls.tmp, name)
        m = Mount(source or cls.pool, mnt, options=options, foreground=foreground)
        cls.mounts.append(m)
        m.start()
        return m

    def unmount(self, m):
        m.unmount()
        if m in self.mounts:
            self.mounts.remove(m)

    # ---- assertions -------------------------------------------------------

    def assertViewMatches(self, view_dir, img, snapshot=None, fmt=None, seek=True):
        """disk.raw under view_dir: same bytes and size as qemu-img convert of img,
        and (for whole images) same data extents as qemu-img map."""
        disk = os.path.join(view_dir, "disk.raw")
        ref = oracle_raw(img, self.work, snapshot, fmt)
        st = os.stat(disk)
        self.assertEqual(st.st_size, os.path.getsize(ref), "st_size of %s" % disk)
        self.assertEqual(md5_file(disk), md5_file(ref), "bytes of %s vs qemu-img convert %s%s" % (
            disk, img, " snapshot " + snapshot if snapshot else ""))
        if seek and snapshot is None:
            self.assertEqual(seek_data_extents(disk), qemu_data_extents(img, fmt),
                             "SEEK_DATA/SEEK_HOLE of %s vs qemu-img map %s" % (disk, img))

    def assertInfoMatches(self, info_path, img, fmt=None):
        """info.json vs `qemu-img info --output=json` of the same file."""
        got = read_json(info_path)
        want = qemu_info(img, fmt)
        self.assertNotIn("error", got, "%s has an error: %s" % (info_path, got.get("error")))
        for k in INFO_TOP_KEYS:
            self.assertEqual(got.get(k), want.get(k), "%s: key %s" % (info_path, k))
        # qemu-img omits "encrypted"/"dirty-flag" when false for some formats; absent == false.
        for k in ("encrypted", "dirty-flag"):
            self.assertEqual(bool(got.get(k, False)), bool(want.get(k, False)), "%s: key %s" % (info_path, k))
        # full-backing-filename: qemu builds it from the path it was given; kvmfs from
        # the canonical host path. Same file either way, so compare canonical paths.
        if "full-backing-filename" in want:
            self.assertIn("full-backing-filename", got, info_path)
            self.assertEqual(os.path.realpath(got["full-backing-filename"]),
                             os.path.realpath(want["full-backing-filename"]), info_path)
        else:
            self.assertNotIn("full-backing-filename", got, info_path)
        # filename: qemu prints the path as typed on its command line; kvmfs may print the
        # host path or the name only. The file name itself must agree.
        self.assertEqual(os.path.basename(str(got.get("filename", ""))),
                         os.path.basename(want["filename"]), "%s: filename" % info_path)
        # actual-size is host allocation (st_blocks), which moves with the host file
        # system and with when it is sampled; only check it is a sane number.
        if "actual-size" in got:
            self.assertIsInstance(got["actual-size"], int)
            self.assertGreaterEqual(got["actual-size"], 0)
        ws, gs = want.get("snapshots", []), got.get("snapshots", [])
        self.assertEqual(len(gs), len(ws), "%s: snapshot count" % info_path)
        for g, w in zip(gs, ws):
            for k in INFO_SNAPSHOT_KEYS:
                if k in w:
                    self.assertEqual(g.get(k), w[k], "%s: snapshot %s key %s" % (info_path, w.get("id"), k))
        wf = want.get("format-specific")
        if wf is None:
            self.assertIsNone(got.get("format-specific"), "%s: format-specific" % info_path)
        else:
            gf = got.get("format-specific") or {}
            self.assertEqual(gf.get("type"), wf.get("type"), "%s: format-specific.type" % info_path)
            wd, gd = wf.get("data", {}), gf.get("data", {})
            for k in INFO_QCOW2_KEYS:
                if k in wd:
                    self.assertEqual(gd.get(k), wd[k], "%s: format-specific.data.%s" % (info_path, k))
            for k in ("data-file", "data-file-raw"):  # optional in kvmfs; equal when given
                if k in gd:
                    self.assertEqual(gd[k], wd.get(k), "%s: format-specific.data.%s" % (info_path, k))
        return got

    def assertBroken(self, mount, rel_image_dir, errnos, other_ok=None):
        """A listed image that cannot be opened: info.json says why, disk.raw
        fails with one of errnos, the mount stays up, other images still read."""
        d = mount.path(rel_image_dir)
        parent = os.path.dirname(d)
        self.assertIn(os.path.basename(d), os.listdir(parent), "broken image must still be listed")
        info = read_json(os.path.join(d, "info.json"))
        self.assertIn("error", info, "info.json of %s must carry an error" % rel_image_dir)
        self.assertIsInstance(info["error"], str)
        self.assertTrue(info["error"], "error text must not be empty")
        e = open_errno(os.path.join(d, "disk.raw"))
        self.assertIn(e, errnos, "open(%s/disk.raw): got %s, want one of %s" % (
            rel_image_dir, errno.errorcode.get(e, e) if e else "success",
            [errno.errorcode[x] for x in errnos]))
        self.assertTrue(mount.alive(), "kvmfs died after opening a broken image\n" + mount.log_text()[-3000:])
        if other_ok:
            img, rel = other_ok
            self.assertViewMatches(mount.path(rel), img, seek=False)
        return info


# --------------------------------------------------------------------------
# Runner


class _CountingResult(unittest.TextTestResult):
    pass


def main():
    """Runs the calling module's tests, verbosity 2, prints a summary line
    `KVMFS-IT-RESULT: file=... passed=N failed=N skipped=N`, exits 0/1/77."""
    name = os.path.basename(sys.argv[0])
    problem = environment_problem()
    if problem:
        skip_banner(problem)
        print("KVMFS-IT-RESULT: file=%s passed=0 failed=0 skipped=all" % name, flush=True)
        sys.exit(SKIP_EXIT_CODE)
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules["__main__"])
    runner = unittest.TextTestRunner(verbosity=2, stream=sys.stdout, resultclass=_CountingResult)
    result = runner.run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    # An error or SkipTest in setUpClass counts once for its class (its tests did not run and
    # are not in testsRun): only skips and errors of tests that ran are taken from testsRun.
    passed = max(0, result.testsRun - len(result.failures) - sum(
        1 for t, _ in result.errors if isinstance(t, unittest.TestCase)) - sum(
        1 for t, _ in result.skipped if isinstance(t, unittest.TestCase))
        - len(result.unexpectedSuccesses) - len(result.expectedFailures))
    impossible = [e for _, e in result.errors if "MountImpossible" in e]
    if impossible and len(impossible) == len(result.errors) and not result.failures and passed == 0:
        skip_banner("mounting FUSE is impossible here: " + impossible[0].strip().splitlines()[-1])
        print("KVMFS-IT-RESULT: file=%s passed=0 failed=0 skipped=all" % name, flush=True)
        sys.exit(SKIP_EXIT_CODE)
    print("KVMFS-IT-RESULT: file=%s passed=%d failed=%d skipped=%d" % (name, passed, failed, skipped),
          flush=True)
    sys.exit(0 if failed == 0 else 1)


# --------------------------------------------------------------------------
# Write-path helpers (read-write mounts; issue 3)

RW = ()  # Mount options for a read-write mount (kvmfs mounts read-write by default)
FIO = shutil.which("fio") or "/usr/bin/fio"
QEMU_SD = shutil.which("qemu-storage-daemon") or "/usr/bin/qemu-storage-daemon"
# Byte offsets QEMU locks while it writes (100 + perm bit: consistent read, write,
# resize; 200 + bit: write and resize not shared).
QEMU_WRITER_LOCK_BYTES = (100, 101, 103, 201, 203)


def open_err(path, flags=os.O_RDONLY):
    """0 if path opens (then closes it), else the errno."""
    try:
        os.close(os.open(path, flags))
    except OSError as e:
        return e.errno
    return 0


def errname(e):
    return errno.errorcode.get(e, str(e)) if e else "success"


def wait_until(fn, timeout=10.0, step=0.05):
    """Polls fn() until it returns a true value (returned) or timeout (returns the last value)."""
    deadline = time.time() + timeout
    while True:
        v = fn()
        if v or time.time() >= deadline:
            return v
        time.sleep(step)


def qemu_check(img, fmt="qcow2"):
    """`qemu-img check` of img: (exit code, output)."""
    p = run([QEMU_IMG, "check", "-f", fmt, os.path.abspath(img)], check=False, cwd=imgdir(img))
    return p.returncode, p.stdout + p.stderr


def qemu_compare_raw(img, raw, fmt="qcow2"):
    """`qemu-img compare` of img with a raw file: (exit code, output); 0 = identical."""
    p = run([QEMU_IMG, "compare", "-U", "-f", fmt, "-F", "raw", os.path.abspath(img),
             os.path.abspath(raw)], check=False, cwd=imgdir(img))
    return p.returncode, p.stdout + p.stderr


def copy_file(src, dst, bs=MiB):
    """Reads src to the end (e.g. a disk.raw through the mount) into dst."""
    with open(src, "rb") as f, open(dst, "wb") as g:
        while True:
            b = f.read(bs)
            if not b:
                break
            g.write(b)
    return dst


def first_diff(a, b, bs=MiB):
    """Offset of the first differing byte of files a and b (None if equal, incl. size)."""
    with open(a, "rb") as f, open(b, "rb") as g:
        off = 0
        while True:
            x, y = f.read(bs), g.read(bs)
            if x != y:
                n = min(len(x), len(y))
                i = next((k for k in range(n) if x[k] != y[k]), n)
                return off + i
            if not x:
                return None
            off += len(x)


def ofd_locked_bytes(path):
    """Bytes of path's inode covered by OFD locks in /proc/locks: {byte: {"READ"/"WRITE"}}."""
    st = os.stat(path)
    dev = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    out = {}
    with open("/proc/locks") as f:
        for line in f:
            p = line.split()
            if "->" in p:
                p.remove("->")  # a blocked waiter
            if len(p) < 8 or p[1] != "OFDLCK" or p[5] != dev:
                continue
            end = p[7]
            hi = int(p[6]) + 1000 if end == "EOF" else int(end)
            for b in range(int(p[6]), min(hi, int(p[6]) + 1000) + 1):
                out.setdefault(b, set()).add(p[3])
    return out


class QemuHolder:
    """qemu-storage-daemon holding one image open, as a running VM would
    (readonly=False: QEMU's write locks; True: its reader locks)."""

    def __init__(self, img, fmt="qcow2", readonly=False):
        self.img = os.path.abspath(str(img))
        ro = "on" if readonly else "off"
        self.argv = [QEMU_SD,
                     "--blockdev", "driver=file,filename=%s,node-name=f,read-only=%s" % (self.img, ro),
                     "--blockdev", "driver=%s,file=f,node-name=d,read-only=%s" % (fmt, ro)]
        self.want = {100, 201, 203} if readonly else set(QEMU_WRITER_LOCK_BYTES)
        self.proc = None

    def __enter__(self):
        # kvmfs lets go of an image asynchronously after close(2) (FUSE release)
        wait_until(lambda: not ofd_locked_bytes(self.img), timeout=10)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, cwd=imgdir(self.img))
        ok = wait_until(lambda: self.proc.poll() is not None or
                        self.want <= set(ofd_locked_bytes(self.img)), timeout=15)
        if self.proc.poll() is not None or not ok:
            out = self.close()
            raise AssertionError("qemu-storage-daemon did not lock %s: %s" % (self.img, out))
        return self

    def close(self):
        out = ""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
            try:
                out = self.proc.communicate(timeout=15)[0].decode(errors="replace")
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out = self.proc.communicate()[0].decode(errors="replace")
            self.proc = None
        return out

    def __exit__(self, *exc):
        self.close()
        return False
