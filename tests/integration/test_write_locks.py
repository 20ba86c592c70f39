#!/usr/bin/python3
"""QEMU image locks and QEMU interoperability on read-write mounts.

Against a real QEMU (qemu-storage-daemon, as a running VM holds its disk): while QEMU
holds an image read-write, opening its disk.raw fails with EBUSY (for reading too,
unless the mount has -o force_share); while kvmfs has disk.raw open for writing,
`qemu-img info` (no -U) and `qemu-io` fail with QEMU's "Failed to get ... lock", and
/proc/locks shows QEMU's writer bytes 100, 101, 103, 201, 203; after close QEMU can
open the image. Then data: what qemu-io writes reads correctly through kvmfs and the
other way round, within one mount (close in between) and across remounts.
"""

import errno
import os

import kvmfs_harness as h
from kvmfs_harness import KiB, MiB

SIZE = 16 * MiB


def qemu_io_argv(img, *cmds, readonly=False):
    a = [h.QEMU_IO, "-f", "qcow2"] + (["-r"] if readonly else [])
    for c in cmds:
        a += ["-c", c]
    return a + [os.path.abspath(img)]


def lock_refused(p):
    out = p.stdout + p.stderr
    return p.returncode != 0 and "Failed to get" in out and "lock" in out


def qemu_io_when_free(img, *cmds, timeout=10):
    """Runs qemu-io once kvmfs has let go of img (FUSE release is asynchronous to
    close(2)); fails if qemu-io still cannot get its locks after `timeout`."""
    last = [None]

    def attempt():
        last[0] = h.run(qemu_io_argv(img, *cmds), check=False, cwd=h.imgdir(img))
        return not lock_refused(last[0])
    if not h.wait_until(attempt, timeout=timeout, step=0.2):
        raise AssertionError("qemu-io still refused %ds after disk.raw was closed: %s" % (
            timeout, last[0].stdout + last[0].stderr))
    p = last[0]
    out = (p.stdout + p.stderr).lower()
    if p.returncode != 0 or "fail" in out or "error" in out or "pattern verification" in out:
        raise AssertionError("qemu-io %s: rc=%d\n%s%s" % (cmds, p.returncode, p.stdout, p.stderr))
    return p


class Locks(h.KvmfsTestCase):
    @classmethod
    def make_images(cls):
        cls.imgs = {}
        for n in ("held.qcow2", "rheld.qcow2", "mine.qcow2", "reader.qcow2"):
            cls.imgs[n] = h.create_qcow2(os.path.join(cls.pool, n), SIZE)
            h.qemu_io(cls.imgs[n], "write -P 0x5a 0 1M", "write -P 0x5b 3M 64k")
        cls.base = h.create_qcow2(os.path.join(cls.pool, "base.qcow2"), SIZE)
        h.qemu_io(cls.base, "write -P 0x61 0 4M")
        cls.ovl = h.create_qcow2(os.path.join(cls.pool, "ovl.qcow2"), SIZE, backing="base.qcow2",
                                 backing_fmt="qcow2")
        cls.m = cls.mount(options=h.RW, name="mnt")
        cls.mf = cls.mount(options=("force_share",), name="mnt-fs")

    def disk(self, name, m=None):
        return (m or self.m).path(name, "disk.raw")

    def assertOpenErr(self, path, flags, want, what):
        e = h.open_err(path, flags)
        self.assertEqual(e, want, "%s: open(%s) gave %s, want %s" % (what, path, h.errname(e), h.errname(want)))

    def test_qemu_writer_refuses_kvmfs_opens(self):
        d = self.disk("held.qcow2")
        with h.QemuHolder(self.imgs["held.qcow2"]):
            self.assertOpenErr(d, os.O_RDWR, errno.EBUSY, "QEMU holds the image read-write")
            self.assertOpenErr(d, os.O_WRONLY, errno.EBUSY, "QEMU holds the image read-write")
            self.assertOpenErr(d, os.O_RDONLY, errno.EBUSY, "QEMU holds the image read-write, no force_share")
            self.assertTrue(self.m.alive())
        # once QEMU is gone the same image opens for writing
        self.assertOpenErr(d, os.O_RDWR, 0, "after QEMU exited")
        self.assertEqual(h.md5_file(d), h.oracle_md5(self.imgs["held.qcow2"], self.work))

    def test_force_share_reads_while_qemu_writes(self):
        img = self.imgs["held.qcow2"]
        d = self.disk("held.qcow2", self.mf)
        with h.QemuHolder(img):
            self.assertOpenErr(d, os.O_RDWR, errno.EBUSY, "force_share mount, QEMU holds the image")
            self.assertEqual(h.md5_file(d), h.oracle_md5(img, self.work),
                             "force_share read while QEMU holds the image")

    def test_qemu_reader_refuses_kvmfs_writer(self):
        # A read-only QEMU user does not share "write" (QEMU's own rule: qemu-io -r
        # blocks qemu-io): kvmfs may read but not write.
        img = self.imgs["rheld.qcow2"]
        d = self.disk("rheld.qcow2")
        with h.QemuHolder(img, readonly=True):
            self.assertOpenErr(d, os.O_RDWR, errno.EBUSY, "QEMU holds the image read-only")
            self.assertEqual(h.md5_file(d), h.oracle_md5(img, self.work))

    def test_kvmfs_writer_refuses_qemu(self):
        img = self.imgs["mine.qcow2"]
        d = self.disk("mine.qcow2")
        fd = os.open(d, os.O_RDWR)
        try:
            os.pwrite(fd, b"\xc3" * 4096, 2 * MiB)
            os.fsync(fd)
            locked = h.ofd_locked_bytes(img)
            self.assertTrue(set(h.QEMU_WRITER_LOCK_BYTES) <= set(locked),
                            "/proc/locks for %s while disk.raw is open for writing: %s" % (
                                img, sorted(locked)))
            p = h.run([h.QEMU_IMG, "info", os.path.abspath(img)], check=False)
            self.assertTrue(lock_refused(p), "qemu-img info (no -U) while kvmfs writes: rc=%d %s%s" % (
                p.returncode, p.stdout, p.stderr))
            p = h.run(qemu_io_argv(img, "read 0 512"), check=False)
            self.assertTrue(lock_refused(p), "qemu-io while kvmfs writes: rc=%d %s%s" % (
                p.returncode, p.stdout, p.stderr))
            p = h.run(qemu_io_argv(img, "read 0 512", readonly=True), check=False)
            self.assertTrue(lock_refused(p), "qemu-io -r while kvmfs writes: rc=%d %s%s" % (
                p.returncode, p.stdout, p.stderr))
            h.qemu_img("info", "-U", img)  # sharing QEMU still can look
            # kvmfs's own readers do not conflict with its writer
            self.assertEqual(h.open_err(d, os.O_RDONLY), 0)
        finally:
            os.close(fd)
        qemu_io_when_free(img, "read -P 0xc3 2M 4k", "read -P 0x5a 0 1M", "write -P 0xc4 5M 4k")
        self.assertTrue(h.wait_until(lambda: not h.ofd_locked_bytes(img), timeout=5),
                        "locks left on %s after close: %s" % (img, sorted(h.ofd_locked_bytes(img))))

    def test_kvmfs_writer_holds_backing_read_only(self):
        fd = os.open(self.disk("ovl.qcow2"), os.O_RDWR)
        try:
            os.pwrite(fd, b"\x71" * 512, 1 * MiB + 512)
            os.fsync(fd)
            p = h.run(qemu_io_argv(self.base, "write -P 0x99 0 4k"), check=False)
            self.assertTrue(lock_refused(p), "qemu-io writing the backing file while kvmfs writes the "
                            "overlay: rc=%d %s%s" % (p.returncode, p.stdout, p.stderr))
        finally:
            os.close(fd)
        h.wait_until(lambda: not h.ofd_locked_bytes(self.base), timeout=5)
        self.assertEqual(h.md5_file(self.disk("base.qcow2")), h.oracle_md5(self.base, self.work))

    def test_kvmfs_reader_refuses_qemu_writer(self):
        # QEMU's rule for readers: they share reading but not writing.
        img = self.imgs["reader.qcow2"]
        fd = os.open(self.disk("reader.qcow2"), os.O_RDONLY)
        try:
            os.pread(fd, 4096, 0)
            p = h.run(qemu_io_argv(img, "write -P 0x99 0 4k"), check=False)
            self.assertTrue(lock_refused(p), "qemu-io writing while kvmfs reads: rc=%d %s%s" % (
                p.returncode, p.stdout, p.stderr))
            h.qemu_img("info", img)  # a QEMU reader next to kvmfs's reader is fine
        finally:
            os.close(fd)


class Interop(h.KvmfsTestCase):
    """qemu-io writes, kvmfs reads, and the other way round; kvmfs must not keep
    stale metadata (L2/refcount caches) or page cache across its close/open."""

    @classmethod
    def make_images(cls):
        cls.imgs = {}
        for n, opts in (("remount.qcow2", "cluster_size=64k"), ("close.qcow2", "cluster_size=4k"),
                        ("k2q.qcow2", "cluster_size=64k"), ("alt.qcow2", "cluster_size=64k"),
                        ("alt2m.qcow2", "cluster_size=2M"), ("lazy.qcow2", "lazy_refcounts=on")):
            cls.imgs[n] = h.create_qcow2(os.path.join(cls.pool, n), SIZE, opts)
            h.qemu_io(cls.imgs[n], "write -P 0x10 0 2M", "write -P 0x11 8M 1M")

    def fresh_oracle(self, img):
        h._oracle_cache.pop((os.path.realpath(img), None, None), None)
        return h.oracle_md5(img, self.work)

    def test_qemu_io_writes_seen_after_remount(self):
        img = self.imgs["remount.qcow2"]
        m = self.mount(options=h.RW, name="mnt-a")
        try:
            self.assertEqual(h.md5_file(m.path("remount.qcow2", "disk.raw")), self.fresh_oracle(img))
        finally:
            self.unmount(m)
        h.qemu_io(img, "write -P 0x21 1M 1536k", "write -z 8M 64k", "write -P 0x22 12M 100k",
                  "discard 0 64k")
        m = self.mount(options=h.RW, name="mnt-b")
        try:
            self.assertEqual(h.md5_file(m.path("remount.qcow2", "disk.raw")), self.fresh_oracle(img))
        finally:
            self.unmount(m)

    def test_qemu_io_writes_seen_after_close(self):
        img = self.imgs["close.qcow2"]
        m = self.mount(options=h.RW, name="mnt-c")
        try:
            d = m.path("close.qcow2", "disk.raw")
            for rnd in range(2):
                # read everything (fills kvmfs's caches and the page cache), close
                self.assertEqual(h.md5_file(d), self.fresh_oracle(img), "round %d before qemu-io" % rnd)
                qemu_io_when_free(img, "write -P 0x%x %dk 1536k" % (0x31 + rnd, 1000 + rnd * 64),
                                  "write -z %dM 12k" % (8 + rnd), "discard %dM 4k" % (1 + rnd),
                                  "write -P 0x%x %dM 200k" % (0x41 + rnd, 12 + rnd))
                self.assertEqual(h.md5_file(d), self.fresh_oracle(img),
                                 "round %d: disk.raw reopened after qemu-io wrote the image" % rnd)
        finally:
            self.unmount(m)

    def test_kvmfs_writes_seen_by_qemu_io(self):
        img = self.imgs["k2q.qcow2"]
        m = self.mount(options=h.RW, name="mnt-d")
        try:
            d = m.path("k2q.qcow2", "disk.raw")
            fd = os.open(d, os.O_RDWR)
            try:
                os.pwrite(fd, b"\xa1" * (300 * KiB), 1 * MiB + 4096)     # overwrite + allocate
                os.pwrite(fd, b"\xa2" * 512, 14 * MiB + 512)              # new cluster, partial
                os.fsync(fd)
            finally:
                os.close(fd)
            # while still mounted: fsync'd and closed data is in the image for QEMU
            qemu_io_when_free(img, "read -P 0xa1 %d %d" % (MiB + 4096, 300 * KiB),
                              "read -P 0x10 %d 4096" % MiB, "read -P 0 14M 512",
                              "read -P 0xa2 %d 512" % (14 * MiB + 512), "read -P 0 %d 1024" % (14 * MiB + 1024))
            rc, out = h.qemu_check(img)
            self.assertEqual(rc, 0, "qemu-img check while mounted, disk.raw closed:\n" + out)
        finally:
            self.unmount(m)

    def test_close_without_fsync_is_durable(self):
        # kvmfs(8): data is durable once the last writer closes the file, and the
        # qcow2 dirty bit (lazy refcounts) is cleared then.
        img = self.imgs["lazy.qcow2"]
        m = self.mount(options=h.RW, name="mnt-lazy")
        try:
            fd = os.open(m.path("lazy.qcow2", "disk.raw"), os.O_RDWR)
            try:
                os.pwrite(fd, b"\xe1" * (200 * KiB), 3 * MiB + 512)
                os.pwrite(fd, b"\xe2" * 4096, 0)
            finally:
                os.close(fd)
            qemu_io_when_free(img, "read -P 0xe1 %d %d" % (3 * MiB + 512, 200 * KiB),
                              "read -P 0xe2 0 4096", "read -P 0x10 4096 4096")
            info = h.qemu_info(img)
            self.assertFalse(info.get("dirty-flag", False), "dirty flag still set after the last close")
            rc, out = h.qemu_check(img)
            self.assertEqual(rc, 0, "qemu-img check while mounted, disk.raw closed:\n" + out)
        finally:
            self.unmount(m)

    def alternate(self, name):
        img = self.imgs[name]
        m = self.mount(options=h.RW, name="mnt-" + name)
        expect = []
        try:
            d = m.path(name, "disk.raw")
            for rnd in range(3):
                fd = os.open(d, os.O_RDWR)
                try:
                    off = (2 + 4 * rnd) * MiB + 1024
                    os.pwrite(fd, bytes([0xb0 + rnd]) * (700 * KiB), off)     # allocates
                    os.pwrite(fd, bytes([0xc0 + rnd]) * 3000, rnd * 100 * KiB)  # overwrites
                    os.fsync(fd)
                finally:
                    os.close(fd)
                expect += ["read -P 0x%x %d %d" % (0xb0 + rnd, off, 700 * KiB),
                           "read -P 0x%x %d 3000" % (0xc0 + rnd, rnd * 100 * KiB)]
                qoff = (4 + 4 * rnd) * MiB + 512
                qemu_io_when_free(img, *(expect + ["write -P 0x%x %d 900k" % (0xd0 + rnd, qoff)]))
                expect.append("read -P 0x%x %d %d" % (0xd0 + rnd, qoff, 900 * KiB))
                self.assertEqual(h.md5_file(d), self.fresh_oracle(img), "round %d" % rnd)
        finally:
            self.unmount(m)
        self.assertEqual(m.proc.returncode, 0)
        rc, out = h.qemu_check(img)
        self.assertEqual(rc, 0, "qemu-img check after alternating kvmfs/qemu-io writes:\n" + out)
        h.qemu_io(img, *expect)

    def test_alternating_allocating_writes_64k(self):
        self.alternate("alt.qcow2")

    def test_alternating_allocating_writes_2m(self):
        self.alternate("alt2m.qcow2")


if __name__ == "__main__":
    h.main()
