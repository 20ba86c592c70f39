#!/usr/bin/python3
"""`backend: rbd` pools on a real single-node Ceph (tests/integration/ceph_fixture.py:
one mon, one memstore OSD on 127.0.0.1, started here and stopped afterwards).
Images made by `rbd create` and `qemu-img create rbd:...` are listed as image
folders; disk.raw reads what `qemu-img convert -O raw rbd:...` reads, writes
through kvmfs are read back by `qemu-img convert`/`qemu-img compare` (and
discard, write-zeroes, growing by truncate); mkdir/rmdir under snapshots/ make
and remove RBD snapshots (`rbd snap ls`), their views read what QEMU reads of
IMAGE@SNAP; info.json carries rbd's size, object size and features; a second
writer (QEMU) is refused while kvmfs holds the exclusive lock; a clone shows
its parent snapshot under backing/. TwoHosts: three kvmfs processes on one
pool (two read-write, one read-only) as three hosts: one writer at a time
(EBUSY for the other kvmfs), readers see flushed writes and resizes, rbd
export holds exactly what was written. Skipped loudly
(exit 77, not passed) when the Ceph packages are missing or the cluster cannot
start."""

import errno
import json
import os
import sys
import unittest

import ceph_fixture
import kvmfs_harness as h
from kvmfs_harness import MiB

CLUSTER = None


def start_cluster():
    global CLUSTER
    CLUSTER = ceph_fixture.CephCluster(memstore_bytes=512 * MiB)
    CLUSTER.start()


def stop_cluster():
    if CLUSTER is not None:
        CLUSTER.stop()


def uri(image, snap=None):
    return CLUSTER.qemu_uri(image, snap)


def qemu_raw(work, image, snap=None, name=None):
    """`qemu-img convert -O raw` of rbd image (or snapshot) into work/."""
    out = os.path.join(work, (name or image + (("@" + snap) if snap else "")) + ".raw")
    if os.path.exists(out):
        os.unlink(out)
    h.run([h.QEMU_IMG, "convert", "-f", "raw", "-O", "raw", uri(image, snap), out],
          env=CLUSTER.env())
    return out


def qemu_io(image, *cmds):
    argv = [h.QEMU_IO, "-f", "raw"]
    for c in cmds:
        argv += ["-c", c]
    p = h.run(argv + [uri(image)], env=CLUSTER.env())
    if "error" in (p.stdout + p.stderr).lower() or "failed" in (p.stdout + p.stderr).lower():
        raise AssertionError("qemu-io %s: %s%s" % (cmds, p.stdout, p.stderr))
    return p


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


class Rbd(h.KvmfsTestCase):
    @classmethod
    def make_images(cls):
        # img-a: made by rbd, written by QEMU; img-b: made by qemu-img, with data.
        CLUSTER.rbd("create", "img-a", "--size", "12M")
        qemu_io("img-a", "write -P 0x5a 0 1M", "write -P 0x11 7M 64k", "write -P 0x77 12220k 68k")
        h.run([h.QEMU_IMG, "create", "-f", "raw", uri("img-b"), "6M"], env=CLUSTER.env())
        qemu_io("img-b", "write -P 0x33 4096 8192", "write -P 0x44 5M 4096")
        cls.cfg = write_config(cls.tmp)
        cls.m = cls.mount(source=cls.cfg, options=h.RW)

    def disk(self, image, *rest):
        return self.m.path("ceph", image, *rest) if rest else self.m.path("ceph", image, "disk.raw")

    def assertSameAsQemu(self, image, snap=None, view=None):
        ref = qemu_raw(self.work, image, snap)
        got = file_bytes(view or self.disk(image))
        self.assertEqual(len(got), os.path.getsize(ref), "size of %s" % (view or image))
        self.assertTrue(got == file_bytes(ref), "%s differs from qemu-img convert of %s" % (
            view or image, uri(image, snap)))

    def test_listing(self):
        self.assertEqual(os.listdir(self.m.mnt), ["ceph"])
        names = sorted(os.listdir(self.m.path("ceph")))
        self.assertIn("img-a", names)
        self.assertIn("img-b", names)
        self.assertIn("disk.raw", os.listdir(self.m.path("ceph", "img-a")))
        self.assertIn("snapshots", os.listdir(self.m.path("ceph", "img-a")))

    def test_read_matches_qemu(self):
        self.assertSameAsQemu("img-a")
        self.assertSameAsQemu("img-b")
        self.assertEqual(os.stat(self.disk("img-a")).st_size, 12 * MiB)

    def test_info_json(self):
        info = h.read_json(self.disk("img-a", "info.json"))
        self.assertEqual(info["virtual-size"], 12 * MiB)
        self.assertEqual(info["format"], "raw")
        rbd_info = json.loads(CLUSTER.rbd("info", "--format", "json", "img-a").stdout)
        self.assertEqual(info["rbd"]["size"], rbd_info["size"])
        self.assertEqual(info["rbd"]["object-size"], rbd_info["object_size"])
        self.assertEqual(info["rbd"]["order"], rbd_info["order"])
        self.assertEqual(sorted(info["rbd"]["features"].split(",")), sorted(rbd_info["features"]))
        self.assertEqual(info["rbd"]["image"], "img-a")

    def test_write_read_back(self):
        CLUSTER.rbd("create", "img-w", "--size", "8M")
        self.assertTrue(h.wait_until(lambda: os.path.exists(self.disk("img-w"))))
        payload = h.gen_bytes(7, 300000)
        with open(self.disk("img-w"), "r+b") as f:
            f.seek(4 * MiB - 1000)  # across an object boundary
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        self.assertSameAsQemu("img-w")
        ref = qemu_raw(self.work, "img-w")
        self.assertEqual(file_bytes(ref)[4 * MiB - 1000:4 * MiB - 1000 + len(payload)], payload)
        # qemu-img compare of the image with kvmfs' view, byte for byte.
        p = h.run([h.QEMU_IMG, "compare", "-f", "raw", "-F", "raw", uri("img-w"),
                   self.disk("img-w")], check=False, env=CLUSTER.env())
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_discard_write_zeroes_grow(self):
        CLUSTER.rbd("create", "img-z", "--size", "8M")
        qemu_io("img-z", "write -P 0x66 0 8M")
        self.assertTrue(h.wait_until(lambda: os.path.exists(self.disk("img-z"))))
        fd = os.open(self.disk("img-z"), os.O_RDWR)
        try:
            punch = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
            zero = 0x10  # FALLOC_FL_ZERO_RANGE
            _fallocate(fd, punch, 1 * MiB, 4 * MiB + 4096)
            _fallocate(fd, zero, 6 * MiB + 512, 8192)
            os.ftruncate(fd, 10 * MiB)
            os.fsync(fd)
            # The grown part is a hole (no RBD object there), as qemu-img map
            # says, until written (allocation follows a resize at once).
            with self.assertRaises(OSError) as cm:
                os.lseek(fd, 8 * MiB + 4096, os.SEEK_DATA)
            self.assertEqual(cm.exception.errno, errno.ENXIO)
            os.pwrite(fd, b"\x67" * 4096, 9 * MiB)
            os.fsync(fd)
            self.assertEqual(os.lseek(fd, 8 * MiB + 4096, os.SEEK_DATA), 8 * MiB + 4096)
            os.pwrite(fd, b"\0" * 4096, 9 * MiB)  # as the expected bytes below
        finally:
            os.close(fd)
        ref = file_bytes(qemu_raw(self.work, "img-z"))
        want = bytearray(b"\x66" * 8 * MiB + b"\0" * 2 * MiB)
        want[1 * MiB:5 * MiB + 4096] = b"\0" * (4 * MiB + 4096)
        want[6 * MiB + 512:6 * MiB + 512 + 8192] = b"\0" * 8192
        self.assertEqual(len(ref), 10 * MiB)
        self.assertTrue(ref == bytes(want), "discard/zero/grow not as expected (qemu-img convert)")
        self.assertSameAsQemu("img-z")
        rbd_info = json.loads(CLUSTER.rbd("info", "--format", "json", "img-z").stdout)
        self.assertEqual(rbd_info["size"], 10 * MiB)

    def test_snapshots_mkdir_rmdir(self):
        CLUSTER.rbd("create", "img-s", "--size", "4M")
        qemu_io("img-s", "write -P 0x01 0 1M")
        CLUSTER.rbd("snap", "create", "img-s@before")
        self.assertTrue(h.wait_until(lambda: os.path.exists(self.disk("img-s"))))
        snaps = self.disk("img-s", "snapshots")
        self.assertEqual(os.listdir(snaps), ["before"])
        with open(self.disk("img-s"), "r+b") as f:
            f.write(b"\x02" * 65536)
        os.mkdir(os.path.join(snaps, "made-by-kvmfs"))
        listed = json.loads(CLUSTER.rbd("snap", "ls", "--format", "json", "img-s").stdout)
        self.assertEqual(sorted(s["name"] for s in listed), ["before", "made-by-kvmfs"])
        with open(self.disk("img-s"), "r+b") as f:
            f.write(b"\x03" * 4096)
        self.assertEqual(sorted(os.listdir(snaps)), ["before", "made-by-kvmfs"])
        for snap in ("before", "made-by-kvmfs"):
            self.assertSameAsQemu("img-s", snap, os.path.join(snaps, snap, "disk.raw"))
        self.assertEqual(file_bytes(os.path.join(snaps, "made-by-kvmfs", "disk.raw"))[:4096],
                         b"\x02" * 4096)
        # Read-only views.
        self.assertNotEqual(h.open_err(os.path.join(snaps, "before", "disk.raw"), os.O_RDWR), 0)
        # A protected snapshot cannot go; an unprotected one can.
        CLUSTER.rbd("snap", "protect", "img-s@before")
        with self.assertRaises(OSError):
            os.rmdir(os.path.join(snaps, "before"))
        CLUSTER.rbd("snap", "unprotect", "img-s@before")
        os.rmdir(os.path.join(snaps, "made-by-kvmfs"))
        listed = json.loads(CLUSTER.rbd("snap", "ls", "--format", "json", "img-s").stdout)
        self.assertEqual([s["name"] for s in listed], ["before"])
        self.assertTrue(h.wait_until(lambda: sorted(os.listdir(snaps)) == ["before"]))

    def test_clone_backing(self):
        # golden@base (protected) and a clone of it, vm1, written after
        # cloning; golden itself moves on after the snapshot.
        CLUSTER.rbd("create", "golden", "--size", "8M")
        qemu_io("golden", "write -P 0x61 0 3M", "write -P 0x6a 6M 64k")
        CLUSTER.rbd("snap", "create", "golden@base")
        CLUSTER.rbd("snap", "protect", "golden@base")
        CLUSTER.rbd("clone", "golden@base", "vm1")
        qemu_io("vm1", "write -P 0x62 1M 64k", "write -P 0x64 7M 4k")
        qemu_io("golden", "write -P 0x63 2M 4k")  # not in golden@base
        self.assertTrue(h.wait_until(lambda: os.path.exists(self.disk("vm1"))))
        backing = self.disk("vm1", "backing")
        self.assertEqual(os.listdir(backing), ["1-golden@base"])
        layer = os.path.join(backing, "1-golden@base")
        self.assertEqual(sorted(os.listdir(layer)), ["check.json", "disk.raw", "info.json"])
        # The clone reads through its parent as librbd does; the layer is
        # golden@base exactly (not golden as it is now).
        self.assertSameAsQemu("vm1")
        self.assertSameAsQemu("golden", "base", os.path.join(layer, "disk.raw"))
        exported = os.path.join(self.work, "golden@base.export")
        CLUSTER.rbd("export", "golden@base", exported)
        self.assertTrue(file_bytes(os.path.join(layer, "disk.raw")) == file_bytes(exported),
                        "backing/1-golden@base differs from rbd export golden@base")
        self.assertEqual(h.peek(os.path.join(layer, "disk.raw"), 2 * MiB, 4096), b"\x61" * 4096)
        # Read-only, as a snapshot.
        self.assertNotEqual(h.open_err(os.path.join(layer, "disk.raw"), os.O_RDWR), 0)
        # info.json of the clone names the parent, as `rbd info` does.
        rbd_info = json.loads(CLUSTER.rbd("info", "--format", "json", "vm1").stdout)
        info = h.read_json(self.disk("vm1", "info.json"))
        parent = rbd_info["parent"]
        self.assertEqual(info["rbd"]["parent"], "%s/%s@%s" % (
            parent["pool"], parent["image"], parent["snapshot"]))
        self.assertEqual(info["rbd"]["overlap"], parent["overlap"])
        # QEMU's rbd driver reads the parent itself and reports no backing
        # file (nor does kvmfs' info.json); the parent is in "rbd".
        want = json.loads(h.run([h.QEMU_IMG, "info", "--output=json", "-f", "raw", uri("vm1")],
                                env=CLUSTER.env()).stdout)
        self.assertEqual(info.get("backing-filename"), want.get("backing-filename"))
        self.assertEqual(info["virtual-size"], want["virtual-size"])
        layer_info = h.read_json(os.path.join(layer, "info.json"))
        self.assertEqual(layer_info["virtual-size"], 8 * MiB)
        self.assertEqual(layer_info["rbd"]["snapshot"], "base")
        # A write to the clone through kvmfs leaves the parent alone.
        with open(self.disk("vm1"), "r+b") as f:
            f.seek(2 * MiB)
            f.write(b"\x65" * 4096)
            os.fsync(f.fileno())
        self.assertSameAsQemu("vm1")
        self.assertSameAsQemu("golden", "base", os.path.join(layer, "disk.raw"))
        p = h.run([h.QEMU_IMG, "compare", "-f", "raw", "-F", "raw", uri("golden", "base"),
                   os.path.join(layer, "disk.raw")], check=False, env=CLUSTER.env())
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_exclusive_lock(self):
        CLUSTER.rbd("create", "img-l", "--size", "4M")
        self.assertTrue(h.wait_until(lambda: os.path.exists(self.disk("img-l"))))
        with open(self.disk("img-l"), "r+b") as f:
            f.write(b"\x09" * 4096)
            f.flush()
            os.fsync(f.fileno())
            owners = json.loads(CLUSTER.rbd("lock", "ls", "--format", "json", "img-l").stdout)
            status = CLUSTER.rbd("status", "img-l").stdout
            self.assertTrue(owners or "watcher" in status, status)
            # A second writer, QEMU, fails instead of writing.
            p = h.run([h.QEMU_IO, "-f", "raw", "-c", "write -P 0xee 0 4096", uri("img-l")],
                      check=False, env=CLUSTER.env(), timeout=120)
            out = (p.stdout + p.stderr).lower()
            self.assertTrue(p.returncode != 0 or "error" in out or "failed" in out,
                            "a second writer wrote while kvmfs held the lock: %s" % out)
        # kvmfs' data is what the image holds.
        self.assertEqual(file_bytes(qemu_raw(self.work, "img-l"))[:4096], b"\x09" * 4096)


def write_config(tmp, name="kvmfs.yaml"):
    cfg = os.path.join(tmp, name)
    with open(cfg, "w") as f:
        f.write("pools:\n"
                "  - name: ceph\n"
                "    backend: rbd\n"
                "    ceph_conf: %s\n"
                "    client: admin\n"
                "    keyring: %s\n"
                "    pool: %s\n" % (CLUSTER.conf, CLUSTER.keyring, CLUSTER.pool))
    return cfg


def pread(fd, off, n):
    return os.pread(fd, n, off)


class TwoHosts(h.KvmfsTestCase):
    """Two kvmfs processes on one RBD pool, as two hosts mount it (kvmfs(8)
    COHERENCE, "RBD pools on several hosts"): one writer at a time through
    RBD's exclusive lock (a second writer's open fails with EBUSY), and a
    reader on the other mount sees what the writer flushed at its next read,
    also through a descriptor that was open (and had read the old bytes)
    before the write."""

    @classmethod
    def make_images(cls):
        CLUSTER.rbd("create", "shared", "--size", "8M")
        qemu_io("shared", "write -P 0x10 0 8M")
        cfg = write_config(cls.tmp, "two-hosts.yaml")
        cls.a = cls.mount(source=cfg, options=h.RW, name="host-a")
        cls.b = cls.mount(source=cfg, options=h.RW, name="host-b")
        cls.ro = cls.mount(source=cfg, options=("ro",), name="host-ro")

    def disk(self, m, image="shared"):
        return m.path("ceph", image, "disk.raw")

    def assertExported(self, image, want):
        out = os.path.join(self.work, image + ".export")
        if os.path.exists(out):
            os.unlink(out)
        CLUSTER.rbd("export", image, out)
        got = file_bytes(out)
        self.assertEqual(len(got), len(want))
        self.assertTrue(got == bytes(want), "rbd export of %s differs from what was written "
                        "(first difference at %s)" % (image, next(
                            (i for i in range(len(got)) if got[i] != want[i]), None)))

    def test_one_writer_reader_sees_flushed(self):
        want = bytearray(b"\x10" * 8 * MiB)
        # Readers on the other hosts, open before the write, with the old
        # bytes read (and so in any cache they could be kept in).
        rb = os.open(self.disk(self.b), os.O_RDONLY)
        rro = os.open(self.disk(self.ro), os.O_RDONLY)
        wa = os.open(self.disk(self.a), os.O_RDWR)
        try:
            for fd in (rb, rro):
                self.assertEqual(pread(fd, 0, 1 * MiB), b"\x10" * MiB)
            payload = h.gen_bytes(21, 300000)
            os.pwrite(wa, payload, 4 * MiB - 1000)  # across an object boundary
            want[4 * MiB - 1000:4 * MiB - 1000 + len(payload)] = payload
            os.pwrite(wa, b"\xa1" * 65536, 0)
            want[0:65536] = b"\xa1" * 65536
            os.fsync(wa)
            # Seen by the readers that were open, and by new opens, at once.
            for fd in (rb, rro):
                self.assertEqual(pread(fd, 0, 65536), b"\xa1" * 65536)
                self.assertEqual(pread(fd, 4 * MiB - 1000, len(payload)), payload)
            for m in (self.b, self.ro):
                self.assertEqual(h.peek(self.disk(m), 0, 65536), b"\xa1" * 65536)
            # A second writer (the other kvmfs) is refused while A holds the
            # lock: EBUSY at open, and nothing of the image changes.
            self.assertEqual(h.open_err(self.disk(self.b), os.O_RDWR), errno.EBUSY)
            self.assertEqual(h.open_err(self.disk(self.b), os.O_WRONLY), errno.EBUSY)
            owners = json.loads(CLUSTER.rbd("lock", "ls", "--format", "json", "shared").stdout)
            self.assertEqual(len(owners), 1, owners)
            # Nor may the other host snapshot the image under the writer.
            with self.assertRaises(OSError) as cm:
                os.mkdir(self.b.path("ceph", "shared", "snapshots", "from-b"))
            self.assertEqual(cm.exception.errno, errno.EBUSY)
            # Still A's lock: A writes on.
            os.pwrite(wa, b"\xa2" * 4096, 7 * MiB)
            want[7 * MiB:7 * MiB + 4096] = b"\xa2" * 4096
            os.fsync(wa)
            self.assertEqual(pread(rb, 7 * MiB, 4096), b"\xa2" * 4096)
            self.assertExported("shared", want)
        finally:
            os.close(wa)
            os.close(rb)
            os.close(rro)
        # A closed: its lock is given back, and B can write (A reads it).
        self.assertTrue(h.wait_until(
            lambda: not json.loads(CLUSTER.rbd("lock", "ls", "--format", "json", "shared").stdout)),
            "the exclusive lock outlived the writer's close")
        ra = os.open(self.disk(self.a), os.O_RDONLY)
        try:
            self.assertEqual(pread(ra, 7 * MiB, 4096), b"\xa2" * 4096)
            with open(self.disk(self.b), "r+b") as f:
                f.seek(7 * MiB)
                f.write(b"\xb3" * 8192)
                f.flush()
                os.fsync(f.fileno())
                want[7 * MiB:7 * MiB + 8192] = b"\xb3" * 8192
                # ... and now A is the one refused.
                self.assertEqual(h.open_err(self.disk(self.a), os.O_RDWR), errno.EBUSY)
                self.assertEqual(pread(ra, 7 * MiB, 8192), b"\xb3" * 8192)
        finally:
            os.close(ra)
        self.assertEqual(h.peek(self.disk(self.a), 7 * MiB, 8192), b"\xb3" * 8192)
        self.assertExported("shared", want)
        # Nobody writes now: a snapshot by A, removed by B, leaves no lock
        # behind (librbd takes it for them; kvmfs gives it back).
        os.mkdir(self.a.path("ceph", "shared", "snapshots", "from-a"))
        listed = json.loads(CLUSTER.rbd("snap", "ls", "--format", "json", "shared").stdout)
        self.assertEqual([x["name"] for x in listed], ["from-a"])
        os.rmdir(self.b.path("ceph", "shared", "snapshots", "from-a"))
        self.assertEqual(json.loads(CLUSTER.rbd("snap", "ls", "--format", "json", "shared").stdout), [])
        self.assertEqual(json.loads(CLUSTER.rbd("lock", "ls", "--format", "json", "shared").stdout), [])
        p = h.run([h.QEMU_IMG, "compare", "-f", "raw", "-F", "raw", uri("shared"),
                   self.disk(self.ro)], check=False, env=CLUSTER.env())
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_resize_seen_by_other_host(self):
        CLUSTER.rbd("create", "grows", "--size", "4M")
        self.assertTrue(h.wait_until(lambda: os.path.exists(self.disk(self.b, "grows"))))
        self.assertEqual(os.stat(self.disk(self.b, "grows")).st_size, 4 * MiB)
        self.assertEqual(os.stat(self.disk(self.ro, "grows")).st_size, 4 * MiB)
        with open(self.disk(self.a, "grows"), "r+b") as f:
            os.ftruncate(f.fileno(), 6 * MiB)
            f.seek(5 * MiB)
            f.write(b"\xc4" * 4096)
            os.fsync(f.fileno())
        # Sizes are attributes: within the attribute timeout (1 s).
        for m in (self.b, self.ro):
            self.assertTrue(h.wait_until(
                lambda: os.stat(self.disk(m, "grows")).st_size == 6 * MiB, timeout=5),
                "%s still has size %d" % (m.mnt, os.stat(self.disk(m, "grows")).st_size))
            self.assertEqual(h.peek(self.disk(m, "grows"), 5 * MiB, 4096), b"\xc4" * 4096)
        # A snapshot made elsewhere (rbd snap create) shows on every host too.
        for m in (self.b, self.ro):
            self.assertEqual(os.listdir(m.path("ceph", "grows", "snapshots")), [])
        CLUSTER.rbd("snap", "create", "grows@elsewhere")
        for m in (self.a, self.b, self.ro):
            snaps = m.path("ceph", "grows", "snapshots")
            self.assertTrue(h.wait_until(lambda: os.listdir(snaps) == ["elsewhere"], timeout=5),
                            "%s lists %s" % (snaps, os.listdir(snaps)))
            self.assertEqual(h.peek(os.path.join(snaps, "elsewhere", "disk.raw"), 5 * MiB, 4096),
                             b"\xc4" * 4096)


def _fallocate(fd, mode, off, length):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if libc.fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def main():
    problem = h.environment_problem() or ceph_fixture.unavailable()
    if problem:
        h.skip_banner("test_rbd: " + problem)
        print("KVMFS-IT-RESULT: file=test_rbd.py passed=0 failed=0 skipped=all", flush=True)
        sys.exit(h.SKIP_EXIT_CODE)
    global CLUSTER
    try:
        start_cluster()
    except (RuntimeError, OSError) as e:
        h.skip_banner("test_rbd: a Ceph cluster cannot start here: %s" % e)
        print("KVMFS-IT-RESULT: file=test_rbd.py passed=0 failed=0 skipped=all", flush=True)
        sys.exit(h.SKIP_EXIT_CODE)
    try:
        h.main()
    finally:
        stop_cluster()


if __name__ == "__main__":
    main()
