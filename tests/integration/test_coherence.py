#!/usr/bin/python3
"""Coherence across chains (issue 10): one open engine per image file, so that
every view shows what QEMU shows now, whichever path changed the bytes.

Each test makes its own images in a folder of the pool of one read-write
mount: a write to a base through the mount or from outside (qemu-io), a
qemu-img commit of an overlay into the base beside a sibling overlay, a
middle layer rebased onto another base, a base replaced by mv, a reader
opened right after a writer closes (no EBUSY from kvmfs's own locks), a
force_share reader that stays open while the base changes, and writers,
readers and snapshot mkdir/rmdir at once. Every view is compared with
`qemu-img convert` of the same image at that moment."""

import errno
import os
import random
import threading
import time

import kvmfs_harness as h
from kvmfs_harness import KiB, MiB

BLOCK = 64 * KiB


def fresh_oracle_md5(img, workdir):
    """md5 of `qemu-img convert -O raw` of img now (no cache: images change here)."""
    out = os.path.join(workdir, "now-%d.raw" % random.getrandbits(48))
    h.qemu_img("convert", "-U", "-O", "raw", os.path.abspath(img), out, cwd=h.imgdir(img))
    try:
        return h.md5_file(out)
    finally:
        os.unlink(out)


def read_at(path, off, n, direct=False):
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    try:
        if direct:
            import mmap
            buf = mmap.mmap(-1, n)
            os.preadv(fd, [buf], off)
            return bytes(buf)
        return os.pread(fd, n, off)
    finally:
        os.close(fd)


def write_at(path, off, data, fsync=True):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, off)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


class Coherence(h.KvmfsTestCase):

    @classmethod
    def make_images(cls):
        cls.m = cls.mount(options=(), name="mnt-rw")
        cls.seq = 0

    def folder(self):
        Coherence.seq += 1
        d = os.path.join(self.pool, "t%d" % Coherence.seq)
        os.makedirs(d)
        return d, os.path.basename(d)

    def base_and_overlay(self, d):
        base = h.create_qcow2(os.path.join(d, "base.qcow2"), 16 * MiB)
        h.qemu_io(base, "write -P 0x11 0 1M")
        vm1 = h.create_qcow2(os.path.join(d, "vm1.qcow2"), 16 * MiB, backing="base.qcow2",
                             backing_fmt="qcow2")
        return base, vm1

    def assertSameAsQemu(self, view_disk, img):
        self.assertEqual(h.md5_file(view_disk), fresh_oracle_md5(img, self.work),
                         "%s differs from qemu-img convert of %s" % (view_disk, img))

    def test_write_to_base_through_the_mount_is_seen_by_the_overlay(self):
        d, name = self.folder()
        base, vm1 = self.base_and_overlay(d)
        vm1_disk = self.m.path(name, "vm1.qcow2", "disk.raw")
        self.assertSameAsQemu(vm1_disk, vm1)  # vm1's chain is open and cached now
        blk = os.urandom(BLOCK)
        write_at(self.m.path(name, "base.qcow2", "disk.raw"), 100 * BLOCK, blk)
        # No sleep: the writer's release may still be on its way.
        self.assertEqual(read_at(vm1_disk, 100 * BLOCK, BLOCK), blk)
        self.assertEqual(read_at(vm1_disk, 100 * BLOCK, BLOCK, direct=True), blk)
        self.assertSameAsQemu(vm1_disk, vm1)

    def test_write_to_base_from_outside_is_seen_at_the_next_open(self):
        d, name = self.folder()
        base, vm1 = self.base_and_overlay(d)
        vm1_disk = self.m.path(name, "vm1.qcow2", "disk.raw")
        self.assertSameAsQemu(vm1_disk, vm1)
        h.qemu_io(base, "write -P 0x5a 6400k 64k")
        self.assertEqual(read_at(vm1_disk, 6400 * KiB, BLOCK), b"\x5a" * BLOCK)
        self.assertSameAsQemu(vm1_disk, vm1)
        # and the stat of the view follows (allocation of the flattened chain)
        st = os.stat(vm1_disk)
        self.assertGreaterEqual(st.st_blocks * 512, MiB + BLOCK)

    def test_reader_opens_right_after_a_writer_closes(self):
        d, name = self.folder()
        base, vm1 = self.base_and_overlay(d)
        base_disk = self.m.path(name, "base.qcow2", "disk.raw")
        vm1_disk = self.m.path(name, "vm1.qcow2", "disk.raw")
        for i in range(30):
            blk = bytes([i]) * 4096
            write_at(base_disk, 2 * MiB + i * 4096, blk, fsync=(i % 3 == 0))
            # kvmfs's own write lock must not refuse kvmfs's own reader
            self.assertEqual(read_at(vm1_disk, 2 * MiB + i * 4096, 4096), blk)
            write_at(vm1_disk, 3 * MiB + i * 4096, blk, fsync=False)
            self.assertEqual(read_at(base_disk, 3 * MiB + i * 4096, 4096), b"\0" * 4096)
        self.assertSameAsQemu(vm1_disk, vm1)
        self.assertSameAsQemu(base_disk, base)

    def test_both_open_at_once_see_each_others_writes(self):
        d, name = self.folder()
        base, vm1 = self.base_and_overlay(d)
        base_disk = self.m.path(name, "base.qcow2", "disk.raw")
        vm1_disk = self.m.path(name, "vm1.qcow2", "disk.raw")
        rfd = os.open(vm1_disk, os.O_RDONLY | os.O_DIRECT)
        try:
            wfd = os.open(base_disk, os.O_WRONLY)
            try:
                blk = os.urandom(BLOCK)
                os.pwrite(wfd, blk, 9 * MiB)
                import mmap
                buf = mmap.mmap(-1, BLOCK)
                os.preadv(rfd, [buf], 9 * MiB)
                self.assertEqual(bytes(buf), blk)
            finally:
                os.close(wfd)
        finally:
            os.close(rfd)
        # Another program is still kept out while kvmfs holds the image.
        with open(vm1_disk, "rb"):
            p = h.run([h.QEMU_IO, "-f", "qcow2", "-c", "write 0 4k", base], check=False)
            self.assertIn("lock", (p.stdout + p.stderr).lower())
        self.assertSameAsQemu(vm1_disk, vm1)

    def test_commit_of_a_sibling_into_the_base(self):
        d, name = self.folder()
        base = h.create_qcow2(os.path.join(d, "base.qcow2"), 8 * MiB)
        h.qemu_io(base, "write -P 0x21 0 2M")
        a = h.create_qcow2(os.path.join(d, "a.qcow2"), 8 * MiB, backing="base.qcow2",
                           backing_fmt="qcow2")
        b = h.create_qcow2(os.path.join(d, "b.qcow2"), 8 * MiB, backing="base.qcow2",
                           backing_fmt="qcow2")
        h.qemu_io(a, "write -P 0xa1 1M 2M")
        h.qemu_io(b, "write -P 0xb1 0 64k")
        b_disk = self.m.path(name, "b.qcow2", "disk.raw")
        self.assertSameAsQemu(b_disk, b)
        # While b's disk.raw is open, its backing file is locked as QEMU locks
        # it: the commit is refused, and b is unchanged.
        before = h.md5_file(b_disk)
        with open(b_disk, "rb"):
            p = h.qemu_img("commit", a, check=False)
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("lock", (p.stdout + p.stderr).lower())
        self.assertEqual(h.md5_file(b_disk), before)
        # With b's chain cached but no view open, the commit goes through and
        # b shows the base as QEMU shows it now.
        h.qemu_img("commit", a)
        self.assertSameAsQemu(b_disk, b)
        self.assertEqual(read_at(b_disk, 2 * MiB, 4096), b"\xa1" * 4096)
        self.assertSameAsQemu(self.m.path(name, "b.qcow2", "backing", "1-base.qcow2", "disk.raw"), base)

    def test_middle_layer_rebased(self):
        d, name = self.folder()
        b1 = h.create_qcow2(os.path.join(d, "b1.qcow2"), 8 * MiB)
        h.qemu_io(b1, "write -P 0x31 0 8M")
        b2 = h.create_qcow2(os.path.join(d, "b2.qcow2"), 8 * MiB)
        h.qemu_io(b2, "write -P 0x32 0 8M")
        mid = h.create_qcow2(os.path.join(d, "mid.qcow2"), 8 * MiB, backing="b1.qcow2",
                             backing_fmt="qcow2")
        h.qemu_io(mid, "write -P 0x41 1M 1M")
        top = h.create_qcow2(os.path.join(d, "top.qcow2"), 8 * MiB, backing="mid.qcow2",
                             backing_fmt="qcow2")
        h.qemu_io(top, "write -P 0x51 0 64k")
        top_disk = self.m.path(name, "top.qcow2", "disk.raw")
        self.assertSameAsQemu(top_disk, top)
        self.assertEqual(sorted(os.listdir(self.m.path(name, "top.qcow2", "backing"))),
                         ["1-mid.qcow2", "2-b1.qcow2"])
        h.qemu_img("rebase", "-u", "-b", "b2.qcow2", "-F", "qcow2", mid)
        self.assertSameAsQemu(top_disk, top)
        self.assertEqual(read_at(top_disk, 4 * MiB, 4096), b"\x32" * 4096)
        self.assertEqual(sorted(os.listdir(self.m.path(name, "top.qcow2", "backing"))),
                         ["1-mid.qcow2", "2-b2.qcow2"])
        info = h.read_json(self.m.path(name, "mid.qcow2", "info.json"))
        self.assertEqual(info["backing-filename"], "b2.qcow2")

    def test_base_replaced_by_mv(self):
        d, name = self.folder()
        base, vm1 = self.base_and_overlay(d)
        vm1_disk = self.m.path(name, "vm1.qcow2", "disk.raw")
        self.assertSameAsQemu(vm1_disk, vm1)
        new = h.create_qcow2(os.path.join(d, "new.qcow2"), 16 * MiB)
        h.qemu_io(new, "write -P 0x77 0 4M")
        os.rename(new, base)
        self.assertEqual(read_at(vm1_disk, 3 * MiB, 4096), b"\x77" * 4096)
        self.assertSameAsQemu(vm1_disk, vm1)
        self.assertSameAsQemu(self.m.path(name, "vm1.qcow2", "backing", "1-base.qcow2", "disk.raw"),
                              base)

    def test_concurrent_writers_readers_and_snapshots(self):
        d, name = self.folder()
        img = h.create_qcow2(os.path.join(d, "busy.qcow2"), 32 * MiB, "cluster_size=4k")
        disk = self.m.path(name, "busy.qcow2", "disk.raw")
        snaps = self.m.path(name, "busy.qcow2", "snapshots")
        stop = threading.Event()
        errors = []
        final = {}
        lock = threading.Lock()

        def writer(wid):
            rng = random.Random(wid)
            fd = os.open(disk, os.O_WRONLY)
            try:
                while not stop.is_set():
                    blk = rng.randrange(wid, 32 * MiB // 4096, 2)  # disjoint per writer
                    data = bytes([rng.randrange(1, 256)]) * 4096
                    os.pwrite(fd, data, blk * 4096)
                    with lock:
                        final[blk] = data
                    if rng.random() < 0.05:
                        os.fsync(fd)
            except OSError as e:
                errors.append("writer %d: %s" % (wid, e))
            finally:
                os.close(fd)

        def reader(rid):
            rng = random.Random(100 + rid)
            try:
                while not stop.is_set():
                    n = read_at(disk, rng.randrange(0, (32 * MiB - 64 * KiB) // 4096) * 4096, 64 * KiB)
                    if len(n) != 64 * KiB:
                        errors.append("short read")
            except OSError as e:
                errors.append("reader %d: %s" % (rid, e))

        def snapshotter():
            made = []
            try:
                i = 0
                while not stop.is_set():
                    path = os.path.join(snaps, "s%d" % i)
                    os.mkdir(path)
                    made.append(path)
                    h.md5_file(os.path.join(path, "disk.raw"))
                    if len(made) > 2:
                        os.rmdir(made.pop(0))
                    i += 1
                    time.sleep(0.05)
            except OSError as e:
                errors.append("snapshots: %s" % e)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
        threads += [threading.Thread(target=reader, args=(r,)) for r in range(2)]
        threads.append(threading.Thread(target=snapshotter))
        for t in threads:
            t.start()
        time.sleep(4)
        stop.set()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        listed = sorted(os.listdir(snaps))
        self.assertGreaterEqual(len(listed), 1)
        # Every block as last written, through the mount and through QEMU.
        raw = os.path.join(self.work, "busy.raw")
        h.qemu_img("convert", "-U", "-O", "raw", img, raw)
        with open(raw, "rb") as f:
            for blk, data in final.items():
                f.seek(blk * 4096)
                self.assertEqual(f.read(4096), data, "block %d" % blk)
        self.assertEqual(h.md5_file(disk), h.md5_file(raw))
        table = h.qemu_img("snapshot", "-U", "-l", img).stdout
        for s in listed:
            self.assertIn(s, table)
        os.unlink(raw)
        # Nothing open any more: the image is clean once kvmfs let go.
        rc, out = h.qemu_check(img)
        self.assertEqual(rc, 0, out)


class ForceShareFollowsOutsideWrites(h.KvmfsTestCase):
    """A force_share reader that stays open while a VM (qemu-io) writes the
    base: the view follows within the recheck window (1 s)."""

    @classmethod
    def make_images(cls):
        cls.base = h.create_qcow2(os.path.join(cls.pool, "base.qcow2"), 8 * MiB)
        h.qemu_io(cls.base, "write -P 0x11 0 4M")
        cls.vm1 = h.create_qcow2(os.path.join(cls.pool, "vm1.qcow2"), 8 * MiB,
                                 backing="base.qcow2", backing_fmt="qcow2")
        cls.m = cls.mount(options=("ro", "force_share"), name="mnt-fs")

    def test_open_reader_sees_new_base_within_the_window(self):
        disk = self.m.path("vm1.qcow2", "disk.raw")
        fd = os.open(disk, os.O_RDONLY | os.O_DIRECT)
        try:
            import mmap
            buf = mmap.mmap(-1, 4096)
            os.preadv(fd, [buf], 5 * MiB)  # unallocated in the base: its L2 table is cached now
            self.assertEqual(bytes(buf), b"\0" * 4096)
            h.qemu_io(self.base, "write -P 0x99 5M 64k")  # a new cluster in the base
            deadline = time.time() + 3.0
            seen = False
            while time.time() < deadline and not seen:
                os.preadv(fd, [buf], 5 * MiB)
                seen = bytes(buf) == b"\x99" * 4096
                if not seen:
                    time.sleep(0.1)
            self.assertTrue(seen, "the open view still shows the old base after 3 s")
        finally:
            os.close(fd)


if __name__ == "__main__":
    h.main()
