#!/usr/bin/python3
"""Internal snapshots made and deleted through the mount: `mkdir <image>/snapshots/NAME`
creates one of the current state, `rmdir` deletes it.

The oracle is a twin: a copy of the pool, taken before mounting, on which QEMU does the
same steps (`qemu-io` for the writes kvmfs does through disk.raw, `qemu-img snapshot
-c/-d` for mkdir/rmdir). Afterwards the snapshot tables must agree (`qemu-img info`:
ids, names, VM state size, VM clock), every snapshot and the current state must read
the same (`qemu-img convert -l snapshot.name=NAME`), snapshot views must not change
when the disk is written after them, and `qemu-img check` must exit 0 (no leaks).
"""

import errno
import os
import shutil

import kvmfs_harness as h
from kvmfs_harness import KiB, MiB

SIZE = 16 * MiB
SNAP_KEYS = ("id", "name", "vm-state-size", "vm-clock-sec", "vm-clock-nsec")

# (offset, byte, length) writes, done by kvmfs on the image and by qemu-io on the twin
W1 = [(0, 0x91, 1536), (1 * MiB + 512, 0x92, 300 * KiB), (9 * MiB, 0x93, 64 * KiB)]
W2 = [(1 * MiB, 0xa1, 100 * KiB), (4 * MiB + 4096, 0xa2, 2 * MiB), (9 * MiB + 512, 0xa3, 512)]
W3 = [(0, 0xb1, 4 * MiB), (12 * MiB, 0xb2, 1 * MiB)]


def kvmfs_write(path, writes, fd=None):
    own = fd is None
    if own:
        fd = os.open(path, os.O_RDWR)
    try:
        for off, byte, n in writes:
            os.pwrite(fd, bytes([byte]) * n, off)
        os.fsync(fd)
    finally:
        if own:
            os.close(fd)


def qemu_cmds(writes):
    return ["write -P 0x%x %d %d" % (b, off, n) for off, b, n in writes]


def snap_table(img):
    return [{k: s.get(k) for k in SNAP_KEYS} for s in h.qemu_info(img).get("snapshots", [])]


def convert_md5(img, work, snap=None):
    out = os.path.join(work, "cmp.raw")
    argv = [h.QEMU_IMG, "convert", "-U", "-O", "raw"]
    if snap is not None:
        argv += ["-l", "snapshot.name=" + snap]
    h.run(argv + [os.path.abspath(img), out], cwd=h.imgdir(img))
    try:
        return h.md5_file(out)
    finally:
        os.unlink(out)


class WriteSnapshots(h.KvmfsTestCase):

    def setup_shape(self, shape, *opts, overlay=False):
        """pool-<shape>/vm.qcow2 with one QEMU snapshot "old", and twin-<shape>/, a copy."""
        pool = os.path.join(self.tmp, "pool-" + shape)
        os.makedirs(pool)
        backing = None
        if overlay:
            base = h.create_qcow2(os.path.join(pool, "base.qcow2"), SIZE, "cluster_size=4k")
            h.qemu_io(base, "write -P 0x41 0 12M")
            backing = "base.qcow2"
        img = h.create_qcow2(os.path.join(pool, "vm.qcow2"), SIZE, *opts, backing=backing,
                             backing_fmt="qcow2" if overlay else None)
        h.qemu_io(img, "write -P 0x51 512k 3M", "write -z 5M 64k", "write -P 0x52 8M 2M")
        h.qemu_img("snapshot", "-c", "gone", img)
        h.qemu_img("snapshot", "-c", "old", img)
        h.qemu_img("snapshot", "-d", "gone", img)  # ids: QEMU takes max + 1, not the gap
        h.qemu_io(img, "write -P 0x53 1M 1M", "write -P 0x54 14M 64k")
        twin = os.path.join(self.tmp, "twin-" + shape)
        shutil.copytree(pool, twin)
        return pool, img, os.path.join(twin, "vm.qcow2")

    def mount_rw(self, pool, shape):
        m = h.Mount(pool, os.path.join(self.tmp, "mnt-" + shape), options=h.RW)
        self.mounts.append(m)
        m.start()
        return m

    def finish(self, m):
        self.unmount(m)
        self.assertEqual(m.proc.returncode, 0, "kvmfs exit status\n" + m.log_text()[-3000:])

    def assertSameAsTwin(self, img, twin, snaps):
        rc, out = h.qemu_check(img)
        self.assertEqual(rc, 0, "qemu-img check %s rc=%d\n%s" % (img, rc, out))
        self.assertEqual(snap_table(img), snap_table(twin), "snapshot table vs QEMU doing the same")
        listed = h.run([h.QEMU_IMG, "snapshot", "-U", "-l", img]).stdout
        for s in snaps:
            self.assertIn(" %s " % s, listed)
            self.assertEqual(convert_md5(img, self.work, s), convert_md5(twin, self.work, s),
                             "snapshot %s vs QEMU doing the same" % s)
        self.assertEqual(convert_md5(img, self.work), convert_md5(twin, self.work), "current state")

    # ---- mkdir ----------------------------------------------------------------

    def mkdir_flow(self, shape, *opts, overlay=False):
        pool, img, twin = self.setup_shape(shape, *opts, overlay=overlay)
        m = self.mount_rw(pool, shape)
        try:
            d = m.path("vm.qcow2")
            disk = os.path.join(d, "disk.raw")
            kvmfs_write(disk, W1)
            os.mkdir(os.path.join(d, "snapshots", "s1"))
            self.assertEqual(sorted(os.listdir(os.path.join(d, "snapshots"))), ["old", "s1"])
            s1_view = os.path.join(d, "snapshots", "s1", "disk.raw")
            at_s1 = h.md5_file(disk)
            self.assertEqual(h.md5_file(s1_view), at_s1, "new snapshot view vs disk.raw at mkdir")
            old_md5 = h.md5_file(os.path.join(d, "snapshots", "old", "disk.raw"))
            kvmfs_write(disk, W2)
            self.assertNotEqual(h.md5_file(disk), at_s1)
            self.assertEqual(h.md5_file(s1_view), at_s1, "snapshot view changed by later writes")
            os.mkdir(os.path.join(d, "snapshots", "s2"))
            kvmfs_write(disk, W3)
            self.assertEqual(h.md5_file(s1_view), at_s1, "snapshot view changed by later writes")
            self.assertEqual(h.md5_file(os.path.join(d, "snapshots", "old", "disk.raw")), old_md5)
            info = h.read_json(os.path.join(d, "info.json"))
            self.assertEqual([s["name"] for s in info.get("snapshots", [])], ["old", "s1", "s2"])
            sinfo = h.read_json(os.path.join(d, "snapshots", "s2", "info.json"))
            self.assertNotIn("error", sinfo)
        finally:
            self.finish(m)
        h.qemu_io(twin, *qemu_cmds(W1))
        h.qemu_img("snapshot", "-c", "s1", twin)
        h.qemu_io(twin, *qemu_cmds(W2))
        h.qemu_img("snapshot", "-c", "s2", twin)
        h.qemu_io(twin, *qemu_cmds(W3))
        self.assertEqual(convert_md5(img, self.work, "s1"), at_s1)
        self.assertSameAsTwin(img, twin, ["old", "s1", "s2"])

    def test_mkdir_v3_64k(self):
        self.mkdir_flow("v3", "cluster_size=64k")

    def test_mkdir_v2_4k(self):
        self.mkdir_flow("v2", "compat=0.10", "cluster_size=4k")

    def test_mkdir_overlay(self):
        self.mkdir_flow("ovl", "cluster_size=64k", overlay=True)

    def test_mkdir_extended_l2(self):
        self.mkdir_flow("extl2", "extended_l2=on", overlay=True)

    def test_mkdir_while_open_for_writing(self):
        pool, img, twin = self.setup_shape("open", "cluster_size=64k")
        m = self.mount_rw(pool, "open")
        try:
            d = m.path("vm.qcow2")
            fd = os.open(os.path.join(d, "disk.raw"), os.O_RDWR)
            try:
                kvmfs_write(None, W1, fd=fd)
                os.mkdir(os.path.join(d, "snapshots", "s1"))
                kvmfs_write(None, W2, fd=fd)
            finally:
                os.close(fd)
        finally:
            self.finish(m)
        h.qemu_io(twin, *qemu_cmds(W1))
        h.qemu_img("snapshot", "-c", "s1", twin)
        h.qemu_io(twin, *qemu_cmds(W2))
        self.assertSameAsTwin(img, twin, ["old", "s1"])

    def test_mkdir_escaped_name(self):
        # the directory name is the escaped snapshot name: x%2Fy%25 is "x/y%"
        pool, img, twin = self.setup_shape("esc", "cluster_size=64k")
        m = self.mount_rw(pool, "esc")
        try:
            os.mkdir(m.path("vm.qcow2", "snapshots", "x%2Fy%25"))
            self.assertIn("x%2Fy%25", os.listdir(m.path("vm.qcow2", "snapshots")))
        finally:
            self.finish(m)
        h.qemu_img("snapshot", "-c", "x/y%", twin)
        self.assertSameAsTwin(img, twin, ["old", "x/y%"])

    # ---- rmdir ----------------------------------------------------------------

    def test_rmdir(self):
        pool, img, twin = self.setup_shape("rm", "cluster_size=64k")
        for p in (img, twin):
            h.qemu_io(p, "write -P 0x61 2M 1M")
            h.qemu_img("snapshot", "-c", "b", p)
            h.qemu_io(p, "write -P 0x62 2560k 1M", "write -P 0x63 11M 512k")
            h.qemu_img("snapshot", "-c", "c", p)
            h.qemu_io(p, "write -P 0x64 11M 4k")
        want_old = convert_md5(img, self.work, "old")
        m = self.mount_rw(pool, "rm")
        try:
            snaps = m.path("vm.qcow2", "snapshots")
            os.rmdir(os.path.join(snaps, "b"))
            self.assertEqual(sorted(os.listdir(snaps)), ["c", "old"])
            self.assertFalse(os.path.exists(os.path.join(snaps, "b")))
            self.assertEqual(h.md5_file(os.path.join(snaps, "old", "disk.raw")), want_old)
            kvmfs_write(m.path("vm.qcow2", "disk.raw"), W1)   # clusters shared with "old"/"c"
            os.rmdir(os.path.join(snaps, "c"))
            # a snapshot made and deleted within this mount, after writes
            os.mkdir(os.path.join(snaps, "tmp"))
            kvmfs_write(m.path("vm.qcow2", "disk.raw"), W2)
            os.rmdir(os.path.join(snaps, "tmp"))
            self.assertEqual(sorted(os.listdir(snaps)), ["old"])
            self.assertEqual(h.md5_file(os.path.join(snaps, "old", "disk.raw")), want_old)
        finally:
            self.finish(m)
        h.qemu_img("snapshot", "-d", "b", twin)
        h.qemu_io(twin, *qemu_cmds(W1))
        h.qemu_img("snapshot", "-d", "c", twin)
        h.qemu_img("snapshot", "-c", "tmp", twin)
        h.qemu_io(twin, *qemu_cmds(W2))
        h.qemu_img("snapshot", "-d", "tmp", twin)
        self.assertSameAsTwin(img, twin, ["old"])  # check exit 0: deleting freed every cluster

    # ---- errors ---------------------------------------------------------------

    def test_errors(self):
        pool, img, _ = self.setup_shape("err", "cluster_size=64k")
        h.write_raw(os.path.join(pool, "r.raw"), 1 * MiB, seed=4)
        r1 = h.create_qcow2(os.path.join(pool, "rc1.qcow2"), SIZE, "refcount_bits=1")
        h.qemu_io(r1, "write -P 0x71 0 1M")
        want_r1 = convert_md5(r1, self.work)
        m = self.mount_rw(pool, "err")
        try:
            snaps = m.path("vm.qcow2", "snapshots")
            with self.assertRaises(OSError) as cm:
                os.mkdir(os.path.join(snaps, "old"))
            self.assertEqual(cm.exception.errno, errno.EEXIST, "mkdir of an existing snapshot")
            with self.assertRaises(OSError) as cm:
                os.rmdir(os.path.join(snaps, "nope"))
            self.assertEqual(cm.exception.errno, errno.ENOENT, "rmdir of a missing snapshot")
            with self.assertRaises(OSError, msg="mkdir next to disk.raw of a raw image"):
                os.mkdir(m.path("r.raw", "snapshots", "s"))
            # refcount_bits=1 cannot share a cluster: QEMU refuses such a snapshot too
            with self.assertRaises(OSError, msg="mkdir snapshot in a refcount_bits=1 image"):
                os.mkdir(m.path("rc1.qcow2", "snapshots", "s"))
            self.assertTrue(m.alive())
            self.assertEqual(h.md5_file(m.path("rc1.qcow2", "disk.raw")), want_r1)
        finally:
            self.finish(m)
        self.assertEqual(h.qemu_info(r1).get("snapshots", []), [])
        for p in (img, r1):
            rc, out = h.qemu_check(p)
            self.assertEqual(rc, 0, "qemu-img check %s after refused mkdir rc=%d\n%s" % (p, rc, out))
        # read-only mount: EROFS
        m = h.Mount(pool, os.path.join(self.tmp, "mnt-err-ro"), options=("ro",))
        self.mounts.append(m)
        m.start()
        try:
            for op, arg in ((os.mkdir, "new"), (os.rmdir, "old")):
                with self.assertRaises(OSError) as cm:
                    op(m.path("vm.qcow2", "snapshots", arg))
                self.assertEqual(cm.exception.errno, errno.EROFS, "%s on a -o ro mount" % op.__name__)
        finally:
            self.finish(m)
        self.assertEqual([s["name"] for s in h.qemu_info(img)["snapshots"]], ["old"])


if __name__ == "__main__":
    h.main()
