#!/usr/bin/python3
"""A model test of disk.raw in the spirit of fsx (issue 15).

For every writable format and qcow2 shape, random operations on the image's
disk.raw through a read-write mount are checked against an in-memory model
of the disk (a bytearray, plus one copy per internal snapshot):

  pwrite/pread of random sizes and alignments, buffered and O_DIRECT; writes
  at and across the end (ENOSPC, short write); fsync/fdatasync; ftruncate and
  fallocate growing the disk (or refused, for formats that cannot resize),
  ftruncate shrinking (refused); fallocate PUNCH_HOLE and ZERO_RANGE;
  mkdir/rmdir snapshots/NAME and reads of snapshot views; whole-disk
  comparisons; closing and reopening; unmounting and mounting again.

At the end of each shape the mount goes away and QEMU judges the file:
`qemu-img check` clean (where the format has a check), `qemu-img compare`
with the model identical, every remaining snapshot equal to its model copy
(`qemu-img convert -l`), and a backing file unchanged.

The operations follow from a seed (printed at the start and on failure, with
the command that replays the run) and, for each shape, only from the seed and
the model, so the same seed replays the same sequence:

  KVMFS_BIN=build/src/fuse/kvmfs python3 test_model.py --seed S \\
      [--shape NAME[,NAME]] [--ops N] [--trace]

Environment: KVMFS_MODEL_SEED, KVMFS_MODEL_OPS (operations per shape),
KVMFS_MODEL_SHAPES (comma-separated names). Without --ops the run is
CI-sized (CI_OPS per shape: about 45 s for every shape on a release build).
Under a sanitizer build (the ASAN_OPTIONS/TSAN_OPTIONS that tools/test.sh
sets) it is SANITIZER_OPS per shape, and KVMFS_MODEL_OPS is cut to that too
(only an explicit --ops runs longer there). The long run README "Hardening"
quotes is `--seed 20261203 --ops 46000`. Each shape's files are removed once
it is judged (a failed one's are kept with --keep or KVMFS_IT_KEEP=1), and
SIGTERM ends the run through its unmounts.
"""

import argparse
import collections
import ctypes
import errno
import hashlib
import mmap
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import unittest

import kvmfs_harness as h
from kvmfs_harness import KiB, MiB

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

# Errors that mean "this format cannot do that" for a resize.
RESIZE_REFUSED = (errno.EINVAL, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP)

PASS = b"model-test passphrase"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def fallocate(fd, mode, off, length):
    if _libc.fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def sanitizer_build():
    return h.kvmfs_instrumented()


# Operations per shape of the CI run: all shapes in well under 90 s on a
# release build of a quiet 2-core machine (about 200 operations a second,
# plus a few seconds per shape to make images and judge them).
CI_OPS = 300
# Under a sanitizer the run is shorter, and a longer run asked for by the
# environment is cut to this (an explicit --ops is obeyed).
SANITIZER_OPS = 60


def default_ops():
    v = os.environ.get("KVMFS_MODEL_OPS")
    if sanitizer_build():
        if v and int(v) > SANITIZER_OPS:
            print("model test: sanitizer build, KVMFS_MODEL_OPS=%s cut to %d (the long run is for "
                  "release builds; --ops overrides)" % (v, SANITIZER_OPS), flush=True)
        return min(int(v), SANITIZER_OPS) if v else SANITIZER_OPS
    return int(v) if v else CI_OPS


# --------------------------------------------------------------------------
# Shapes: how each image is made and what its format can do


class Shape:
    """One image to test. `make(dir, rng)` creates it (and whatever it needs)
    in its own folder and returns the image path."""

    def __init__(self, name, file, fmt, make, size=4 * MiB, resize=False, snapshots=False,
                 check=True, luks=False, backing=None):
        self.name, self.file, self.fmt, self.make = name, file, fmt, make
        self.size, self.resize, self.snapshots = size, resize, snapshots
        self.check, self.luks, self.backing = check, luks, backing


def prefill_cmds(rng, size, n=6):
    """qemu-io writes that give a new image some data to start from."""
    cmds = []
    for _ in range(n):
        ln = rng.choice((512, 4 * KiB, 64 * KiB, 200 * KiB))
        off = rng.randrange(0, max(1, (size - ln) // 512)) * 512
        cmds.append("write -P 0x%02x %d %d" % (rng.randrange(1, 256), off, ln))
    return cmds


def qemu_io_fmt(path, fmt, cmds):
    argv = [h.QEMU_IO, "-f", fmt]
    for c in cmds:
        argv += ["-c", c]
    h.run(argv + [path], cwd=h.imgdir(path))


def secret_args(d):
    return ["--object", "secret,id=sec0,file=%s" % os.path.join(d, "pass")]


def luks_opts(path):
    return "driver=luks,key-secret=sec0,file.filename=%s" % path


def make_qcow2(*opts, size=4 * MiB):
    def make(d, rng):
        p = h.create_qcow2(os.path.join(d, "img.qcow2"), size, *opts)
        qemu_io_fmt(p, "qcow2", prefill_cmds(rng, size))
        return p
    return make


def make_overlay(d, rng):
    # The backing file is smaller than the overlay: past its end reads zeros.
    base = h.create_qcow2(os.path.join(d, "base.qcow2"), 3 * MiB)
    qemu_io_fmt(base, "qcow2", prefill_cmds(rng, 3 * MiB, 10))
    p = os.path.join(d, "img.qcow2")
    h.qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", p, str(4 * MiB),
               cwd=d)
    qemu_io_fmt(p, "qcow2", prefill_cmds(rng, 3 * MiB, 3))
    return p


def make_simple(fmt, file, *opts, size=4 * MiB):
    def make(d, rng):
        p = os.path.join(d, file)
        argv = ["create", "-q", "-f", fmt]
        if opts:
            argv += ["-o", ",".join(opts)]
        h.qemu_img(*(argv + [p, str(size)]), cwd=d)
        if fmt == "raw":
            with open(p, "r+b") as f:
                for c in prefill_cmds(rng, size):
                    _, _, pat, off, ln = c.split()
                    f.seek(int(off))
                    f.write(bytes([int(pat, 16)]) * int(ln))
        else:
            qemu_io_fmt(p, fmt, prefill_cmds(rng, size))
        return p
    return make


def make_luks(d, rng):
    with open(os.path.join(d, "pass"), "wb") as f:
        f.write(PASS)
    p = os.path.join(d, "img.luks")
    h.run_pbkdf(["create", "-q", "-f", "luks"] + secret_args(d) +
                ["-o", "key-secret=sec0,iter-time=10", p, str(4 * MiB)], "qemu-img create %s" % p)
    argv = [h.QEMU_IO] + secret_args(d) + ["--image-opts", luks_opts(p)]
    for c in prefill_cmds(rng, 4 * MiB):
        argv += ["-c", c]
    h.run(argv)
    with open(os.path.join(d, "keys.yaml"), "w") as f:
        f.write('keys:\n  - match: "*.luks"\n    file: %s\n' % os.path.join(d, "pass"))
    return p


def all_shapes():
    Q = make_qcow2
    return [
        Shape("raw", "img.raw", "raw", make_simple("raw", "img.raw"), resize=True, check=False),
        # QEMU cannot resize a v2 image that has snapshots (ENOTSUP), nor can kvmfs.
        Shape("qcow2-v2", "img.qcow2", "qcow2", Q("compat=0.10"), resize="without-snapshots",
              snapshots=True),
        Shape("qcow2-v3-512", "img.qcow2", "qcow2", Q("cluster_size=512", size=2 * MiB),
              size=2 * MiB, resize=True, snapshots=True),
        Shape("qcow2-v3-64k", "img.qcow2", "qcow2", Q(), resize=True, snapshots=True),
        Shape("qcow2-v3-2m", "img.qcow2", "qcow2", Q("cluster_size=2M", size=16 * MiB),
              size=16 * MiB, resize=True, snapshots=True),
        Shape("qcow2-extl2", "img.qcow2", "qcow2", Q("extended_l2=on"), resize=True, snapshots=True),
        Shape("qcow2-extl2-2m", "img.qcow2", "qcow2", Q("extended_l2=on", "cluster_size=2M",
                                                          size=16 * MiB),
              size=16 * MiB, resize=True, snapshots=True),
        # A snapshot would need refcount 2: refused (QEMU refuses too, leaking a cluster).
        Shape("qcow2-refcount1", "img.qcow2", "qcow2", Q("refcount_bits=1"), resize=True,
              snapshots="refused"),
        Shape("qcow2-refcount64", "img.qcow2", "qcow2", Q("refcount_bits=64"), resize=True,
              snapshots=True),
        Shape("qcow2-lazy", "img.qcow2", "qcow2", Q("lazy_refcounts=on"), resize=True,
              snapshots=True),
        Shape("qcow2-overlay", "img.qcow2", "qcow2", make_overlay, resize=True, snapshots=True,
              backing="base.qcow2"),
        Shape("qcow2-datafile", "img.qcow2", "qcow2", Q("data_file=img.data"), resize=True),
        Shape("qcow2-datafile-raw", "img.qcow2", "qcow2", Q("data_file=img.data",
                                                            "data_file_raw=on"), resize=True),
        Shape("qcow", "img.qcow", "qcow", make_simple("qcow", "img.qcow")),
        Shape("vdi", "img.vdi", "vdi", make_simple("vdi", "img.vdi")),
        Shape("vdi-static", "img.vdi", "vdi", make_simple("vdi", "img.vdi", "static=on")),
        Shape("vmdk-sparse", "img.vmdk", "vmdk", make_simple("vmdk", "img.vmdk")),
        Shape("vmdk-flat", "img.vmdk", "vmdk", make_simple("vmdk", "img.vmdk",
                                                           "subformat=monolithicFlat")),
        Shape("vpc", "img.vhd", "vpc", make_simple("vpc", "img.vhd"), check=False),
        Shape("vpc-fixed", "img.vhd", "vpc", make_simple("vpc", "img.vhd", "subformat=fixed"),
              check=False),
        Shape("vhdx", "img.vhdx", "vhdx", make_simple("vhdx", "img.vhdx", "block_size=1M")),
        Shape("luks", "img.luks", "luks", make_luks, resize=True, check=False, luks=True),
    ]


# --------------------------------------------------------------------------
# QEMU's view of a shape's image


def qemu_convert(shape, d, img, out, snapshot=None):
    if shape.luks:
        argv = [h.QEMU_IMG, "convert"] + secret_args(d) + ["--image-opts", luks_opts(img),
                                                          "-O", "raw", out]
    else:
        argv = [h.QEMU_IMG, "convert", "-f", shape.fmt, "-O", "raw"]
        if snapshot is not None:
            argv += ["-l", "snapshot.name=" + snapshot]
        argv += [img, out]
    h.run(argv, cwd=d)
    with open(out, "rb") as f:
        return f.read()


def qemu_compare(shape, d, img, raw):
    if shape.luks:
        argv = [h.QEMU_IMG, "compare"] + secret_args(d) + [
            "--image-opts", luks_opts(img), "driver=raw,file.filename=%s" % raw]
    else:
        argv = [h.QEMU_IMG, "compare", "-f", shape.fmt, "-F", "raw", img, raw]
    return h.run(argv, check=False, cwd=d)


# --------------------------------------------------------------------------
# The run


class ModelFailure(AssertionError):
    pass


class Run:
    """One shape's random run against its model."""

    def __init__(self, shape, root, seed, ops, trace=False):
        self.shape, self.seed, self.nops, self.trace = shape, seed, ops, trace
        self.dir = os.path.join(root, shape.name)
        os.makedirs(self.dir)
        h_seed = int(hashlib.sha256(("%d:%s" % (seed, shape.name)).encode()).hexdigest()[:16], 16)
        self.rng = random.Random(h_seed)
        self.img = shape.make(self.dir, random.Random(h_seed ^ 0x5eed))
        self.model = bytearray(qemu_convert(shape, self.dir, self.img, os.path.join(root, shape.name + ".start")))
        self.base_md5 = None
        if shape.backing:
            self.base_md5 = h.md5_file(os.path.join(self.dir, shape.backing))
        self.snaps = collections.OrderedDict()  # snapshot name -> bytes at its creation
        self.snap_seq = 0
        self.recent = collections.deque(maxlen=25)
        self.done = 0
        self.mount = None
        self.fd = self.dfd = -1
        self.mnt = os.path.join(root, shape.name + ".mnt")
        self.remounts = 0

    # ---- plumbing --------------------------------------------------------

    def note(self, text):
        line = "#%d %s" % (self.done, text)
        self.recent.append(line)
        if self.trace:
            print("  [%s] %s" % (self.shape.name, line), flush=True)

    def fail(self, what):
        lines = "\n    ".join(self.recent)
        raise ModelFailure(
            "%s: %s\n  shape %s, seed %d, after %d operations\n  replay: KVMFS_BIN=%s python3 %s "
            "--seed %d --shape %s --ops %d --trace\n  last operations:\n    %s\n  kvmfs log (tail):\n%s" % (
                self.shape.name, what, self.shape.name, self.seed, self.done, h.kvmfs_bin(),
                os.path.abspath(__file__), self.seed, self.shape.name, self.nops, lines,
                self.mount.log_text()[-3000:] if self.mount else ""))

    def disk(self):
        return os.path.join(self.mnt, self.shape.file, "disk.raw")

    def start_mount(self):
        opts = list(h.RW)
        if self.shape.luks:
            opts.append("keys=" + os.path.join(self.dir, "keys.yaml"))
        self.mount = h.Mount(self.dir, self.mnt, options=opts,
                             log_path=os.path.join(os.path.dirname(self.dir), self.shape.name + ".log"))
        self.mount.start()
        self.open_fds()

    def open_fds(self):
        self.fd = os.open(self.disk(), os.O_RDWR)
        self.dfd = os.open(self.disk(), os.O_RDWR | os.O_DIRECT)

    def close_fds(self):
        for fd in (self.fd, self.dfd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.dfd = -1

    def stop_mount(self):
        self.close_fds()
        if self.mount:
            self.mount.unmount()
            if self.mount.proc is not None and self.mount.proc.returncode not in (0, None):
                self.fail("kvmfs exited with %d at unmount" % self.mount.proc.returncode)
            self.mount = None

    def force_unmount(self):
        """Whatever state a failure or a signal left: no mount, no kvmfs."""
        try:
            self.close_fds()
        except OSError:
            pass
        if self.mount:
            try:
                self.mount.unmount()
            except Exception:  # noqa: BLE001 (best effort; lazy unmount below)
                pass
            if self.mount.proc is not None and self.mount.proc.poll() is None:
                self.mount.proc.kill()
            self.mount = None
        with open("/proc/mounts") as f:
            if any(line.split()[1] == self.mnt for line in f):
                subprocess.run([h.FUSERMOUNT, "-u", "-z", self.mnt], check=False,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def remove_files(self):
        self.force_unmount()
        root = os.path.dirname(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.mnt, ignore_errors=True)
        for ext in (".log", ".start"):
            try:
                os.unlink(os.path.join(root, self.shape.name + ext))
            except FileNotFoundError:
                pass

    def expect_size(self):
        st = os.fstat(self.fd).st_size
        if st != len(self.model):
            self.fail("st_size %d, model %d" % (st, len(self.model)))

    # ---- random choices --------------------------------------------------

    def rand_len(self, cap=None):
        r = self.rng.random()
        if r < 0.35:
            n = self.rng.randint(1, 4096)
        elif r < 0.7:
            n = self.rng.randint(1, 64 * KiB)
        elif r < 0.93:
            n = self.rng.randint(1, 300 * KiB)
        else:
            n = self.rng.randint(1, 2 * MiB + 4096)
        return max(1, min(n, cap if cap is not None else len(self.model)))

    def rand_off(self, ln, align=1):
        size = len(self.model)
        r = self.rng.random()
        if r < 0.15:
            off = 0
        elif r < 0.3:  # near a cluster boundary
            b = self.rng.choice((512, 4096, 64 * KiB, 1 * MiB, 2 * MiB))
            off = self.rng.randrange(0, max(1, size // b)) * b + self.rng.randint(-700, 700)
        elif r < 0.4:  # near the end
            off = size - ln - self.rng.randint(0, 1024)
        else:
            off = self.rng.randrange(0, max(1, size - ln + 1))
        off = max(0, min(off, size - ln))
        return off - off % align

    def rand_data(self, n):
        r = self.rng.random()
        if r < 0.1:
            return bytes(n)
        if r < 0.25:
            return bytes([self.rng.randrange(256)]) * n
        return self.rng.randbytes(n)

    # ---- operations ------------------------------------------------------

    def op_write(self):
        ln = self.rand_len()
        off = self.rand_off(ln)
        data = self.rand_data(ln)
        self.note("pwrite %d+%d" % (off, ln))
        n = os.pwrite(self.fd, data, off)
        if n != ln:
            self.fail("pwrite %d+%d wrote %d" % (off, ln, n))
        self.model[off:off + ln] = data

    def op_write_direct(self):
        a = self.rng.choice((512, 4096))
        ln = max(a, self.rand_len() // a * a)
        if ln > len(self.model) - len(self.model) % a:
            ln = (len(self.model) - len(self.model) % a)
        off = self.rand_off(ln, a)
        data = self.rand_data(ln)
        self.note("O_DIRECT pwrite %d+%d" % (off, ln))
        buf = mmap.mmap(-1, ln)
        try:
            buf[:] = data
            n = os.pwritev(self.dfd, [buf], off)
        finally:
            buf.close()
        if n != ln:
            self.fail("O_DIRECT pwrite %d+%d wrote %d" % (off, ln, n))
        self.model[off:off + ln] = data

    def op_read(self):
        ln = self.rand_len()
        off = self.rand_off(ln)
        self.note("pread %d+%d" % (off, ln))
        self.compare(os.pread(self.fd, ln, off), off, ln, "pread")

    def op_read_direct(self):
        a = self.rng.choice((512, 4096))
        ln = max(a, self.rand_len() // a * a)
        off = self.rand_off(min(ln, len(self.model)), a)
        self.note("O_DIRECT pread %d+%d" % (off, ln))
        buf = mmap.mmap(-1, ln)
        try:
            n = os.preadv(self.dfd, [buf], off)
            got = bytes(buf[:n])
        finally:
            buf.close()
        self.compare(got, off, min(ln, len(self.model) - off), "O_DIRECT pread")

    def compare(self, got, off, ln, what):
        want = bytes(self.model[off:off + ln])
        if got != want:
            if len(got) != len(want):
                self.fail("%s %d+%d returned %d bytes, model %d" % (what, off, ln, len(got), len(want)))
            i = next(k for k in range(len(got)) if got[k] != want[k])
            self.fail("%s %d+%d differs from the model at %d: got %r, model %r" % (
                what, off, ln, off + i, got[i:i + 16], want[i:i + 16]))

    def op_edge(self):
        size = len(self.model)
        if self.rng.random() < 0.5:
            off = size + self.rng.choice((0, 1, 4096, 10 * MiB))
            self.note("pwrite at/after the end %d" % off)
            try:
                os.pwrite(self.fd, b"x" * 512, off)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    self.fail("pwrite at %d (size %d): %s, want ENOSPC" % (off, size, h.errname(e.errno)))
            else:
                self.fail("pwrite at %d (size %d) succeeded, want ENOSPC" % (off, size))
        else:
            k = self.rng.randint(1, 4096)
            data = self.rng.randbytes(k + self.rng.randint(1, 4096))
            off = size - k
            self.note("pwrite across the end %d+%d" % (off, len(data)))
            n = os.pwrite(self.fd, data, off)
            if n != k:
                self.fail("pwrite across the end %d+%d wrote %d, want %d" % (off, len(data), n, k))
            self.model[off:] = data[:k]
        self.expect_size()

    def op_sync(self):
        if self.rng.random() < 0.5:
            self.note("fsync")
            os.fsync(self.rng.choice((self.fd, self.dfd)))
        else:
            self.note("fdatasync")
            os.fdatasync(self.rng.choice((self.fd, self.dfd)))

    def can_resize(self):
        if self.shape.resize == "without-snapshots":
            return not self.snaps
        return bool(self.shape.resize)

    def op_grow(self):
        size = len(self.model)
        limit = self.shape.size * 2
        if size >= limit:
            return self.op_shrink()
        new = size + self.rng.randint(1, max(1, (limit - size) // 512)) * 512
        how = self.rng.choice(("ftruncate", "fallocate"))
        self.note("%s grow %d -> %d" % (how, size, new))
        try:
            if how == "ftruncate":
                os.ftruncate(self.fd, new)
            else:
                fallocate(self.fd, 0, size - 512, new - size + 512)
        except OSError as e:
            if self.can_resize() or e.errno not in RESIZE_REFUSED:
                self.fail("%s grow to %d: %s" % (how, new, h.errname(e.errno)))
        else:
            if not self.can_resize():
                self.fail("%s grow to %d succeeded on a format that cannot resize" % (how, new))
            if self.shape.luks:
                # LUKS grows by truncating the file: the new sectors read as a
                # hole decrypts, for QEMU as for kvmfs (judge() compares).
                self.model.extend(os.pread(self.fd, new - size, size))
            else:
                self.model.extend(bytes(new - size))
        self.expect_size()

    def op_shrink(self):
        size = len(self.model)
        new = self.rng.randrange(0, size // 512) * 512
        self.note("ftruncate shrink %d -> %d" % (size, new))
        try:
            os.ftruncate(self.fd, new)
        except OSError as e:
            if e.errno not in RESIZE_REFUSED:
                self.fail("ftruncate shrink: %s" % h.errname(e.errno))
        else:
            self.fail("ftruncate shrink %d -> %d succeeded" % (size, new))
        self.expect_size()

    def op_punch(self):
        ln = self.rand_len()
        off = self.rand_off(ln)
        self.note("PUNCH_HOLE %d+%d" % (off, ln))
        fallocate(self.rng.choice((self.fd, self.dfd)), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, ln)
        self.model[off:off + ln] = bytes(ln)

    def op_zero(self):
        ln = self.rand_len()
        off = self.rand_off(ln)
        keep = self.rng.random() < 0.5
        self.note("ZERO_RANGE %d+%d%s" % (off, ln, " KEEP_SIZE" if keep else ""))
        fallocate(self.fd, FALLOC_FL_ZERO_RANGE | (FALLOC_FL_KEEP_SIZE if keep else 0), off, ln)
        self.model[off:off + ln] = bytes(ln)

    def snap_dir(self, name=None):
        p = os.path.join(self.mnt, self.shape.file, "snapshots")
        return os.path.join(p, name) if name else p

    def op_snapshot(self):
        if self.shape.snapshots is not True:
            name = "nosnap"
            self.note("mkdir snapshots/%s (format without snapshots)" % name)
            try:
                os.mkdir(self.snap_dir(name))
            except OSError:
                return
            self.fail("mkdir snapshots/%s succeeded on a format or shape without snapshots" % name)
        if len(self.snaps) >= 4 or (self.snaps and self.rng.random() < 0.4):
            name = self.rng.choice(list(self.snaps))
            self.note("rmdir snapshots/%s" % name)
            os.rmdir(self.snap_dir(name))
            del self.snaps[name]
        else:
            self.snap_seq += 1
            name = "s%d" % self.snap_seq
            self.note("mkdir snapshots/%s" % name)
            os.mkdir(self.snap_dir(name))
            self.snaps[name] = bytes(self.model)
        got = sorted(n for n in os.listdir(self.snap_dir()))
        if got != sorted(self.snaps):
            self.fail("snapshots/ lists %s, model %s" % (got, sorted(self.snaps)))

    def op_snap_read(self):
        if not self.snaps:
            return
        name = self.rng.choice(list(self.snaps))
        want = self.snaps[name]
        disk = os.path.join(self.snap_dir(name), "disk.raw")
        self.note("read snapshots/%s/disk.raw" % name)
        st = os.stat(disk).st_size
        if st != len(want):
            self.fail("snapshots/%s/disk.raw size %d, model %d" % (name, st, len(want)))
        with open(disk, "rb") as f:
            got = f.read()
        if got != want:
            i = next((k for k in range(min(len(got), len(want))) if got[k] != want[k]), None)
            self.fail("snapshots/%s/disk.raw differs from the model at %s" % (name, i))
        try:
            os.close(os.open(disk, os.O_WRONLY))
        except OSError as e:
            if e.errno not in (errno.EROFS, errno.EACCES):
                self.fail("open snapshots/%s/disk.raw for writing: %s" % (name, h.errname(e.errno)))
        else:
            self.fail("snapshots/%s/disk.raw opened for writing" % name)

    def op_verify(self):
        self.note("read the whole disk")
        self.expect_size()
        off = 0
        while off < len(self.model):
            ln = min(MiB, len(self.model) - off)
            self.compare(os.pread(self.fd, ln, off), off, ln, "whole-disk read")
            off += ln
        if os.pread(self.fd, 4096, len(self.model)) != b"":
            self.fail("read at the end returned data")

    def op_reopen(self):
        self.note("close and reopen")
        self.close_fds()
        self.open_fds()

    def op_remount(self):
        self.note("unmount and mount again")
        self.stop_mount()
        self.remounts += 1
        self.start_mount()
        self.op_verify()

    OPS = (("op_write", 24), ("op_write_direct", 10), ("op_read", 20), ("op_read_direct", 8),
           ("op_edge", 2), ("op_sync", 5), ("op_grow", 2), ("op_shrink", 1), ("op_punch", 7),
           ("op_zero", 7), ("op_snapshot", 3), ("op_snap_read", 2), ("op_verify", 2),
           ("op_reopen", 2), ("op_remount", 1))

    # ---- the whole run ---------------------------------------------------

    def run(self):
        names = [n for n, _ in self.OPS]
        weights = [w for _, w in self.OPS]
        self.start_mount()
        try:
            self.op_verify()
            while self.done < self.nops:
                op = self.rng.choices(names, weights)[0]
                try:
                    getattr(self, op)()
                except OSError as e:
                    self.fail("%s raised %s (%s)" % (op, h.errname(e.errno), e))
                self.done += 1
                if not self.mount.alive():
                    self.fail("kvmfs died")
            self.op_verify()
        finally:
            self.stop_mount()
        self.judge()

    def judge(self):
        """After a clean unmount: QEMU reads what the model says."""
        d, s = self.dir, self.shape
        if s.check:
            p = h.run([h.QEMU_IMG, "check", "-f", s.fmt, self.img], check=False, cwd=d)
            unsupported = p.returncode == 63 and "does not support checks" in p.stderr
            if p.returncode != 0 and not unsupported:
                self.fail("qemu-img check rc %d:\n%s%s" % (p.returncode, p.stdout, p.stderr))
        raw = os.path.join(d, "model.raw")
        with open(raw, "wb") as f:
            f.write(self.model)
        p = qemu_compare(s, d, self.img, raw)
        if p.returncode != 0:
            self.fail("qemu-img compare with the model rc %d: %s%s" % (p.returncode, p.stdout, p.stderr))
        for name, want in self.snaps.items():
            # QEMU reads a snapshot at the image's current size, zeros past its own.
            got = qemu_convert(s, d, self.img, os.path.join(d, "snap.raw"), snapshot=name)
            if got[:len(want)] != want or got[len(want):].count(0) != len(got) - len(want):
                i = next((k for k in range(min(len(got), len(want))) if got[k] != want[k]), None)
                self.fail("qemu-img convert -l snapshot.name=%s (%d bytes) differs from the model "
                          "(%d bytes) at %s" % (name, len(got), len(want), i))
        if s.snapshots is True:
            info = h.qemu_info(self.img, s.fmt)
            names = sorted(x["name"] for x in info.get("snapshots", []))
            if names != sorted(self.snaps):
                self.fail("qemu-img info snapshots %s, model %s" % (names, sorted(self.snaps)))
        if self.base_md5 and h.md5_file(os.path.join(d, s.backing)) != self.base_md5:
            self.fail("the backing file changed")


# --------------------------------------------------------------------------
# unittest front end (meson) and command line (replay, long runs)

ARGS = argparse.Namespace(seed=None, shape=None, ops=None, trace=False, keep=False)


class ModelTest(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile_dir()
        cls.seed = ARGS.seed if ARGS.seed is not None else int(
            os.environ.get("KVMFS_MODEL_SEED") or int.from_bytes(os.urandom(4), "little"))
        cls.ops = ARGS.ops if ARGS.ops is not None else default_ops()
        cls.total = 0
        cls.runs = []
        cls.terminated = False
        # meson's timeout (or ^C of a long run) sends SIGTERM: end the current
        # shape through its finally blocks (unmount), skip the rest, and
        # remove the temporary folder in tearDownClass.
        signal.signal(signal.SIGTERM, cls.on_sigterm)
        print("model test: seed %d, %d operations per shape (replay with --seed %d)" % (
            cls.seed, cls.ops, cls.seed), flush=True)

    @classmethod
    def on_sigterm(cls, signum, frame):
        if not cls.terminated:
            cls.terminated = True
            raise Terminated("SIGTERM (timeout?) after %d operations" % cls.total)

    @classmethod
    def tearDownClass(cls):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        print("model test: seed %d, %d operations done" % (cls.seed, cls.total), flush=True)
        if keep():
            print("kept %s" % cls.tmp)
            return
        for r in cls.runs:
            r.force_unmount()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def run_shape(self, shape):
        if self.terminated:
            self.skipTest("terminated")
        t0 = time.time()
        r = Run(shape, self.tmp, self.seed, self.ops, ARGS.trace)
        type(self).runs.append(r)
        ok = False
        try:
            r.run()
            ok = True
        finally:
            type(self).total += r.done
            # A shape's files go as soon as it is judged (a long run of every
            # shape would fill /tmp otherwise); a failed shape's stay only
            # with --keep or KVMFS_IT_KEEP.
            if ok or not keep():
                r.remove_files()
        print("  %-20s %6d ops, %d remounts, %d snapshots kept, %.1fs" % (
            shape.name, r.done, r.remounts, len(r.snaps), time.time() - t0), flush=True)


class Terminated(Exception):
    pass


def keep():
    return bool(ARGS.keep or os.environ.get("KVMFS_IT_KEEP"))


def tempfile_dir():
    import tempfile
    return tempfile.mkdtemp(prefix="kvmfs-it-model-")


def selected_shapes():
    want = ARGS.shape or os.environ.get("KVMFS_MODEL_SHAPES")
    shapes = all_shapes()
    if not want:
        return shapes
    names = want.split(",")
    unknown = set(names) - {s.name for s in shapes}
    if unknown:
        sys.exit("unknown shape(s) %s; known: %s" % (sorted(unknown), [s.name for s in shapes]))
    return [s for s in shapes if s.name in names]


def add_shape_tests():
    for i, shape in enumerate(selected_shapes()):
        def t(self, shape=shape):
            self.run_shape(shape)
        setattr(ModelTest, "test_%02d_%s" % (i, shape.name.replace("-", "_")), t)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, help="the run's seed (default: random, printed)")
    p.add_argument("--shape", help="comma-separated shape names (default: all)")
    p.add_argument("--ops", type=int, help="operations per shape")
    p.add_argument("--trace", action="store_true", help="print every operation")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--list", action="store_true", help="list the shapes")
    a = p.parse_args()
    if a.list:
        for s in all_shapes():
            print(s.name)
        sys.exit(0)
    return a


if __name__ == "__main__":
    ARGS = parse_args()
    sys.argv = sys.argv[:1]
    add_shape_tests()
    h.main()
