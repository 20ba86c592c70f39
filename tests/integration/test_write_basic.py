#!/usr/bin/python3
"""Writes on a read-write mount, quickly: pwrite/dd into the disk.raw of a raw
and of a qcow2 image, fsync, read back through the mount, unmount, and compare
with `qemu-img convert` / `qemu-img check`; modes, refusals, ftruncate,
fallocate, QEMU's locks while writing, -o ro."""

import errno
import os
import stat
import subprocess

import kvmfs_harness as h
from kvmfs_harness import MiB

SIZE = 8 * MiB


def converted(img, out, fmt):
    """`qemu-img convert -O raw` of img into out (not cached: images change here)."""
    if os.path.exists(out):
        os.unlink(out)
    h.qemu_img("convert", "-U", "-f", fmt, "-O", "raw", os.path.abspath(img), out, cwd=h.imgdir(img))
    with open(out, "rb") as f:
        return f.read()


def pwrite_all(path, writes, sync=True):
    fd = os.open(path, os.O_RDWR)
    try:
        for off, data in writes:
            assert os.pwrite(fd, data, off) == len(data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


class WriteBasic(h.KvmfsTestCase):
    @classmethod
    def make_images(cls):
        cls.raw = h.write_raw(os.path.join(cls.pool, "a.raw"), SIZE, seed=3)
        cls.q = h.create_qcow2(os.path.join(cls.pool, "q.qcow2"), SIZE, "cluster_size=64k")
        h.qemu_io(cls.q, "write -P 0x11 0 1M", "write -P 0x22 3M 64k")
        cls.base = h.write_raw(os.path.join(cls.pool, "base.img"), SIZE, seed=5)
        cls.ovl = h.create_qcow2(os.path.join(cls.pool, "ovl.qcow2"), SIZE, backing="base.img",
                                 backing_fmt="raw")
        # corrupt bit (incompatible feature bit 1, last byte of the field at 72)
        cls.corrupt = h.create_qcow2(os.path.join(cls.pool, "corrupt.qcow2"), MiB)
        h.poke(cls.corrupt, 79, b"\x02")

    def setUp(self):
        self.m = self.mount(options=h.RW)

    def tearDown(self):
        self.unmount(self.m)

    def disk(self, img):
        return self.m.path(os.path.basename(img), "disk.raw")

    def writes(self, seed):
        # unaligned, cluster-crossing, page-sized and large writes
        return [(0, h.gen_bytes(seed, 4096)),
                (65536 - 100, h.gen_bytes(seed + 1, 300)),
                (3 * MiB + 12345, h.gen_bytes(seed + 2, 200000)),
                (SIZE - 1 * MiB, h.gen_bytes(seed + 3, MiB))]

    def check_rw(self, img, fmt, seed):
        model = bytearray(converted(img, os.path.join(self.work, "before.raw"), fmt))
        w = self.writes(seed)
        pwrite_all(self.disk(img), w)
        for off, data in w:
            model[off:off + len(data)] = data
        with open(self.disk(img), "rb") as f:
            self.assertEqual(h.md5_bytes(f.read()), h.md5_bytes(bytes(model)), "read back through the mount")
        self.unmount(self.m)
        after = converted(img, os.path.join(self.work, "after.raw"), fmt)
        self.assertEqual(len(after), len(model))
        self.assertEqual(h.md5_bytes(after), h.md5_bytes(bytes(model)), "qemu-img convert after unmount")
        if fmt == "qcow2":
            rc, out = h.qemu_check(img)
            self.assertEqual(rc, 0, out)
            self.assertFalse(h.qemu_info(img).get("dirty-flag", False))

    def test_raw_pwrite_fsync(self):
        self.check_rw(self.raw, "raw", 10)

    def test_qcow2_pwrite_fsync(self):
        self.check_rw(self.q, "qcow2", 20)

    def test_overlay_writes_go_to_the_top(self):
        base_md5 = h.md5_file(self.base)
        self.check_rw(self.ovl, "qcow2", 30)
        self.assertEqual(h.md5_file(self.base), base_md5)

    def test_dd_conv_notrunc(self):
        data = h.gen_bytes(40, 256 * 1024)
        src = os.path.join(self.work, "dd.in")
        with open(src, "wb") as f:
            f.write(data)
        for img, fmt in ((self.raw, "raw"), (self.q, "qcow2")):
            p = h.run(["dd", "if=" + src, "of=" + self.disk(img), "bs=64k", "seek=5",
                       "conv=notrunc,fsync", "status=none"], check=False)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(h.peek(self.disk(img), 5 * 65536, len(data)), data)
        self.unmount(self.m)
        for img, fmt in ((self.raw, "raw"), (self.q, "qcow2")):
            after = converted(img, os.path.join(self.work, "dd.raw"), fmt)
            self.assertEqual(after[5 * 65536:5 * 65536 + len(data)], data, img)

    def test_modes(self):
        self.assertEqual(stat.S_IMODE(os.stat(self.disk(self.raw)).st_mode), 0o644)
        self.assertEqual(stat.S_IMODE(os.stat(self.disk(self.q)).st_mode), 0o644)
        self.assertEqual(stat.S_IMODE(os.stat(self.m.path("q.qcow2", "info.json")).st_mode), 0o444)
        self.assertEqual(stat.S_IMODE(os.stat(self.m.path("q.qcow2", "snapshots")).st_mode), 0o755)
        self.assertEqual(stat.S_IMODE(os.stat(self.m.path("q.qcow2")).st_mode), 0o555)
        self.assertEqual(stat.S_IMODE(os.stat(self.m.path("ovl.qcow2", "backing", "1-base.img",
                                                          "disk.raw")).st_mode), 0o444)
        self.assertFalse(os.statvfs(self.m.mnt).f_flag & os.ST_RDONLY)

    def test_refusals(self):
        disk = self.disk(self.raw)
        self.assertEqual(h.open_err(disk, os.O_WRONLY | os.O_TRUNC), errno.EINVAL)
        self.assertEqual(h.open_err(self.m.path("a.raw", "info.json"), os.O_RDWR), errno.EROFS)
        self.assertEqual(h.open_err(self.m.path("ovl.qcow2", "backing", "1-base.img", "disk.raw"),
                                    os.O_RDWR), errno.EROFS)
        for fn in (lambda: os.unlink(disk), lambda: os.rename(disk, disk + "2"),
                   lambda: os.rmdir(self.m.path("a.raw")),
                   lambda: os.close(os.open(self.m.path("new.raw"), os.O_CREAT | os.O_WRONLY, 0o644))):
            with self.assertRaises(OSError) as cm:
                fn()
            self.assertIn(cm.exception.errno, (errno.EPERM, errno.EROFS))
        # a disk does not grow by writing past its end
        fd = os.open(disk, os.O_WRONLY)
        try:
            with self.assertRaises(OSError) as cm:
                os.pwrite(fd, b"x" * 10, SIZE)
            self.assertEqual(cm.exception.errno, errno.ENOSPC)
            self.assertEqual(os.pwrite(fd, b"y" * 10, SIZE - 4), 4)
        finally:
            os.close(fd)
        self.assertEqual(os.stat(disk).st_size, SIZE)

    def test_ftruncate_grows(self):
        for img, fmt in ((self.raw, "raw"), (self.q, "qcow2")):
            disk = self.disk(img)
            fd = os.open(disk, os.O_RDWR)
            try:
                with self.assertRaises(OSError) as cm:
                    os.ftruncate(fd, SIZE - MiB)
                self.assertEqual(cm.exception.errno, errno.EINVAL)
                os.ftruncate(fd, SIZE + 2 * MiB)
                self.assertEqual(os.fstat(fd).st_size, SIZE + 2 * MiB)
                os.pwrite(fd, b"tail", SIZE + 2 * MiB - 4)
                self.assertEqual(os.pread(fd, 8, SIZE + MiB), b"\0" * 8)
            finally:
                os.close(fd)
        self.unmount(self.m)
        for img, fmt in ((self.raw, "raw"), (self.q, "qcow2")):
            self.assertEqual(h.qemu_info(img, fmt)["virtual-size"], SIZE + 2 * MiB)
            after = converted(img, os.path.join(self.work, "grown.raw"), fmt)
            self.assertEqual(after[-4:], b"tail")
            self.assertEqual(after[SIZE:SIZE + 4096], b"\0" * 4096)
        rc, out = h.qemu_check(self.q)
        self.assertEqual(rc, 0, out)
        # back to the original size for the other tests
        h.qemu_img("resize", "-f", "raw", "--shrink", self.raw, str(SIZE))
        h.qemu_img("resize", "-f", "qcow2", "--shrink", self.q, str(SIZE))

    def test_fallocate_punch_and_zero(self):
        for img, fmt in ((self.raw, "raw"), (self.q, "qcow2")):
            disk = self.disk(img)
            pwrite_all(disk, [(MiB, b"\x77" * (2 * MiB))])
            p = h.run(["fallocate", "-p", "-o", str(MiB), "-l", str(256 * 1024), disk], check=False)
            self.assertEqual(p.returncode, 0, p.stderr)
            p = h.run(["fallocate", "-z", "-o", str(2 * MiB), "-l", str(100000), disk], check=False)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(h.peek(disk, MiB, 256 * 1024), b"\0" * (256 * 1024))
            self.assertEqual(h.peek(disk, MiB + 256 * 1024, 16), b"\x77" * 16)
            self.assertEqual(h.peek(disk, 2 * MiB, 100000), b"\0" * 100000)
            self.assertEqual(h.peek(disk, 2 * MiB + 100000, 16), b"\x77" * 16)
        self.unmount(self.m)
        for img, fmt in ((self.raw, "raw"), (self.q, "qcow2")):
            after = converted(img, os.path.join(self.work, "falloc.raw"), fmt)
            self.assertEqual(after[MiB:MiB + 256 * 1024], b"\0" * (256 * 1024), img)
            self.assertEqual(after[2 * MiB:2 * MiB + 100000], b"\0" * 100000, img)
            self.assertEqual(after[2 * MiB + 100000:2 * MiB + 100016], b"\x77" * 16, img)
        rc, out = h.qemu_check(self.q)
        self.assertEqual(rc, 0, out)

    def test_locks_while_writing(self):
        for img, fmt in ((self.raw, "raw"), (self.q, "qcow2")):
            disk = self.disk(img)
            self.assertEqual(h.ofd_locked_bytes(img), {}, "no locks for metadata")
            fd = os.open(disk, os.O_RDWR)
            try:
                self.assertEqual(sorted(h.ofd_locked_bytes(img)), [100, 101, 103, 201, 203])
                p = subprocess.run([h.QEMU_IO, "-f", fmt, "-c", "write 0 512", img],
                                   capture_output=True, text=True, cwd=h.imgdir(img))
                self.assertNotEqual(p.returncode, 0)
                self.assertIn('Failed to get "write" lock', p.stdout + p.stderr)
                if fmt == "qcow2":  # qemu-img info on raw shares writes even in QEMU
                    p = h.qemu_img("info", "-f", fmt, img, check=False)
                    self.assertNotEqual(p.returncode, 0)
                    self.assertIn('Failed to get shared "write" lock', p.stderr)
                self.assertEqual(h.qemu_img("info", "-U", "-f", fmt, img, check=False).returncode, 0)
            finally:
                os.close(fd)
            # back to nothing once the file is released (asynchronously)
            self.assertTrue(h.wait_until(lambda: not h.ofd_locked_bytes(img)), h.ofd_locked_bytes(img))

    def test_qemu_holds_image(self):
        # a VM writing the qcow2 image (qemu-storage-daemon)
        disk = self.disk(self.q)
        with h.QemuHolder(self.q, fmt="qcow2"):
            self.assertEqual(h.open_err(disk, os.O_RDWR), errno.EBUSY)
            self.assertEqual(h.open_err(disk, os.O_RDONLY), errno.EBUSY)
            self.assertEqual(h.open_err(self.m.path("q.qcow2", "info.json")), 0)
            with self.assertRaises(OSError) as cm:
                os.mkdir(self.m.path("q.qcow2", "snapshots", "while-qemu-runs"))
            self.assertEqual(cm.exception.errno, errno.EBUSY)
        self.assertEqual(h.open_err(disk, os.O_RDWR), 0)
        # qemu-io writing the raw image (QEMU's raw writer: bytes 100, 101)
        disk = self.disk(self.raw)
        self.assertTrue(h.wait_until(lambda: not h.ofd_locked_bytes(self.raw)))
        p = subprocess.Popen([h.QEMU_IO, "-f", "raw", "-c", "sleep 20000", self.raw],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self.assertTrue(h.wait_until(lambda: {100, 101} <= set(h.ofd_locked_bytes(self.raw))))
            self.assertEqual(h.open_err(disk, os.O_RDWR), errno.EBUSY)
            self.assertEqual(h.open_err(disk, os.O_RDONLY), errno.EBUSY)
        finally:
            p.kill()
            p.wait()
        self.assertEqual(h.open_err(disk, os.O_RDWR), 0)

    def test_corrupt_image_is_read_only(self):
        disk = self.disk(self.corrupt)
        self.assertEqual(stat.S_IMODE(os.stat(disk).st_mode), 0o444)
        self.assertEqual(h.open_err(disk, os.O_RDWR), errno.EROFS)
        self.assertEqual(h.open_err(disk, os.O_RDONLY), 0)
        info = h.read_json(self.m.path("corrupt.qcow2", "info.json"))
        self.assertIn("corrupt", info.get("read-only-reason", ""))
        self.assertIn("corrupt", self.m.log_text())

    def test_snapshot_mkdir_rmdir(self):
        snaps = self.m.path("q.qcow2", "snapshots")
        os.mkdir(os.path.join(snaps, "kvmfs-snap"))
        self.assertIn("kvmfs-snap", os.listdir(snaps))
        with self.assertRaises(FileExistsError):
            os.mkdir(os.path.join(snaps, "kvmfs-snap"))
        os.rmdir(os.path.join(snaps, "kvmfs-snap"))
        self.assertNotIn("kvmfs-snap", os.listdir(snaps))
        self.unmount(self.m)
        rc, out = h.qemu_check(self.q)
        self.assertEqual(rc, 0, out)


class WriteReadOnlyMount(h.KvmfsTestCase):
    @classmethod
    def make_images(cls):
        cls.raw = h.write_raw(os.path.join(cls.pool, "a.raw"), MiB, seed=7)
        cls.m = cls.mount(options=("ro",))

    def test_ro_refuses_writes(self):
        disk = self.m.path("a.raw", "disk.raw")
        self.assertEqual(stat.S_IMODE(os.stat(disk).st_mode), 0o444)
        self.assertEqual(h.open_err(disk, os.O_RDWR), errno.EROFS)
        with self.assertRaises(OSError) as cm:
            os.truncate(disk, 2 * MiB)
        self.assertEqual(cm.exception.errno, errno.EROFS)
        self.assertTrue(os.statvfs(self.m.mnt).f_flag & os.ST_RDONLY)
        # reading still locks as a reader, and only while open
        fd = os.open(disk, os.O_RDONLY)
        try:
            self.assertEqual(sorted(h.ofd_locked_bytes(self.raw)), [100, 201, 203])
        finally:
            os.close(fd)


if __name__ == "__main__":
    h.main()
