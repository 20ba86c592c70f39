#!/usr/bin/python3
"""`backend: rbd` pools on a real single-node Ceph (tests/integration/ceph_fixture.py:
one mon, one memstore OSD on 127.0.0.1, started here and stopped afterwards).
Images made by `rbd create` and `qemu-img create rbd:...` are listed as image
folders; disk.raw reads what `qemu-img convert -O raw rbd:...` reads, writes
through kvmfs are read back by `qemu-img convert`/`qemu-img compare` (and
discard, write-zeroes, growing by truncate); mkdir/rmdir under snapshots/ make
and remove RBD snapshots (`rbd snap ls`), their views read what QEMU reads of
IMAGE@SNAP; info.json carries rbd's size, object size and features; a second
writer (QEMU) is refused while kvmfs holds the exclusive lock. Skipped loudly
(exit 77, not passed) when the Ceph packages are missing or the cluster cannot
start."""

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
        cls.cfg = os.path.join(cls.tmp, "kvmfs.yaml")
        with open(cls.cfg, "w") as f:
            f.write("pools:\n"
                    "  - name: ceph\n"
                    "    backend: rbd\n"
                    "    ceph_conf: %s\n"
                    "    client: admin\n"
                    "    keyring: %s\n"
                    "    pool: %s\n" % (CLUSTER.conf, CLUSTER.keyring, CLUSTER.pool))
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
