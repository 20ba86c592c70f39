#!/usr/bin/python3
"""The kernel's caches (kvmfs(8) "CACHING"): what the kernel may keep, and what kvmfs
invalidates when it changes something itself.

  - a write through one fd is seen at once by buffered readers of the same disk.raw and of an
    overlay above it (whose pages the kernel held before the write);
  - mkdir/rmdir of snapshots/NAME is seen at once by listings and by info.json;
  - a second buffered read of a snapshot or backing view (and of anything in a read-only
    mount) is served from the page cache: no FUSE READ requests (counted in the debug log);
  - an image changed from outside while a read-only mount is up reads fresh at the next open;
  - inode numbers stay the same across lookups and after the kernel forgot the inodes;
  - `ls -R` costs no OPENDIR/RELEASEDIR round trips, and a second `ls -R` of a read-only
    mount costs no listing or lookup requests at all.

Request counts come from the debug log ("request READ ino N", one line per request)."""

import errno
import os
import re
import subprocess
import time

import kvmfs_harness as h
from kvmfs_harness import KiB, MiB

SIZE = 8 * MiB


def read_all(path, bs=MiB):
    """Buffered read of the whole file through a fresh fd."""
    with open(path, "rb") as f:
        return f.read()


def requests(log, op, start=0):
    """How many `op` requests the debug log shows after byte `start`."""
    return len(re.findall(r"debug: request %s ino " % op, log[start:]))


def drop_kernel_caches():
    """Makes the kernel forget dentries and inodes (FORGET requests follow)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


class WritesAndSnapshots(h.KvmfsTestCase):
    """Read-write mount (force_share, so that readers of an overlay may read the base while a
    writer holds it)."""

    @classmethod
    def make_images(cls):
        cls.base = h.create_qcow2(os.path.join(cls.pool, "base.qcow2"), SIZE, "cluster_size=64k")
        h.qemu_io(cls.base, "write -P 0x11 0 8M")
        cls.ovl = h.create_qcow2(os.path.join(cls.pool, "ovl.qcow2"), SIZE, backing="base.qcow2",
                                 backing_fmt="qcow2")
        h.qemu_io(cls.ovl, "write -P 0x22 0 1M")  # the overlay's own data: first MiB only
        cls.snap = h.create_qcow2(os.path.join(cls.pool, "snap.qcow2"), SIZE)
        h.qemu_io(cls.snap, "write -P 0x33 0 1M")
        cls.m = cls.mount(options=("force_share", "log_level=debug"))

    def test_write_seen_by_reader_of_same_file_and_overlay(self):
        base_disk = self.m.path("base.qcow2", "disk.raw")
        ovl_disk = self.m.path("ovl.qcow2", "disk.raw")
        # The page cache holds both before the write; a reader keeps its fd open across it.
        self.assertEqual(read_all(ovl_disk)[2 * MiB:2 * MiB + 4], b"\x11" * 4)
        self.assertEqual(read_all(base_disk)[2 * MiB:2 * MiB + 4], b"\x11" * 4)
        ovl_reader = open(ovl_disk, "rb")
        base_reader = open(base_disk, "rb")
        try:
            ovl_reader.read()
            base_reader.read()
            new = b"\xab" * (64 * KiB)
            fd = os.open(base_disk, os.O_WRONLY)
            try:
                self.assertEqual(os.pwrite(fd, new, 2 * MiB), len(new))
            finally:
                os.close(fd)
            # Same file, an fd opened before the write, and a fresh open.
            base_reader.seek(2 * MiB)
            self.assertEqual(base_reader.read(len(new)), new, "base: reader open across the write")
            self.assertEqual(read_all(base_disk)[2 * MiB:2 * MiB + len(new)], new, "base: fresh open")
            # The overlay reads the base there (its own data is in the first MiB only).
            ovl_reader.seek(2 * MiB)
            self.assertEqual(ovl_reader.read(len(new)), new, "overlay: reader open across the write")
            got = read_all(ovl_disk)
            self.assertEqual(got[2 * MiB:2 * MiB + len(new)], new, "overlay: fresh open")
            self.assertEqual(got[:MiB], b"\x22" * MiB, "overlay: its own data")
            # The overlay's backing view (backing/1-base.qcow2) is the base's bytes too.
            layer = self.m.path("ovl.qcow2", "backing", "1-base.qcow2", "disk.raw")
            self.assertEqual(read_all(layer)[2 * MiB:2 * MiB + len(new)], new, "backing view")
            # A second write while the overlay's pages are cached again.
            read_all(ovl_disk)
            newer = b"\xcd" * 4096
            fd = os.open(base_disk, os.O_WRONLY)
            try:
                os.pwrite(fd, newer, 3 * MiB)
            finally:
                os.close(fd)
            ovl_reader.seek(3 * MiB)
            self.assertEqual(ovl_reader.read(4096), newer, "overlay: second write")
        finally:
            ovl_reader.close()
            base_reader.close()

    def test_snapshot_mkdir_rmdir_seen_at_once(self):
        d = self.m.path("snap.qcow2")
        snaps = os.path.join(d, "snapshots")
        self.assertEqual(os.listdir(snaps), [])
        self.assertEqual(h.read_json(os.path.join(d, "info.json")).get("snapshots", []), [])
        os.mkdir(os.path.join(snaps, "one"))
        self.assertEqual(os.listdir(snaps), ["one"], "listing right after mkdir")
        names = [s["name"] for s in h.read_json(os.path.join(d, "info.json")).get("snapshots", [])]
        self.assertEqual(names, ["one"], "info.json right after mkdir")
        self.assertEqual(read_all(os.path.join(snaps, "one", "disk.raw"))[:MiB], b"\x33" * MiB)
        os.mkdir(os.path.join(snaps, "two"))
        self.assertEqual(sorted(os.listdir(snaps)), ["one", "two"])
        os.rmdir(os.path.join(snaps, "one"))
        self.assertEqual(os.listdir(snaps), ["two"], "listing right after rmdir")
        with self.assertRaises(OSError) as cm:
            os.stat(os.path.join(snaps, "one"))
        self.assertEqual(cm.exception.errno, errno.ENOENT)
        names = [s["name"] for s in h.read_json(os.path.join(d, "info.json")).get("snapshots", [])]
        self.assertEqual(names, ["two"], "info.json right after rmdir")
        # QEMU agrees (the mount holds no handle of the image now).
        listed = h.qemu_img("snapshot", "-U", "-l", self.snap).stdout
        self.assertIn("two", listed)
        self.assertNotIn(" one ", listed)


class ReadOnlyCaching(h.KvmfsTestCase):
    """Read-only mount with request counting."""

    @classmethod
    def make_images(cls):
        cls.img = h.create_qcow2(os.path.join(cls.pool, "vm.qcow2"), SIZE)
        h.qemu_io(cls.img, "write -P 0x41 0 4M")
        h.qemu_img("snapshot", "-c", "s1", cls.img)
        h.qemu_io(cls.img, "write -P 0x42 1M 1M")
        cls.top = h.create_qcow2(os.path.join(cls.pool, "top.qcow2"), SIZE, backing="vm.qcow2",
                                 backing_fmt="qcow2")
        h.qemu_io(cls.top, "write -P 0x43 6M 1M")
        cls.outside = h.create_qcow2(os.path.join(cls.pool, "outside.qcow2"), SIZE)
        h.qemu_io(cls.outside, "write -P 0x51 0 2M")
        for i in range(12):
            sub = os.path.join(cls.pool, "f%d" % (i % 3))
            os.makedirs(sub, exist_ok=True)
            h.create_qcow2(os.path.join(sub, "i%02d.qcow2" % i), MiB)
        cls.m = cls.mount(options=("ro", "log_level=debug"))

    def assertSecondReadCached(self, path, oracle):
        start = len(self.m.log_text())
        first = read_all(path)
        self.assertEqual(h.md5_bytes(first), h.md5_file(oracle), "first read of %s" % path)
        self.assertGreater(requests(self.m.log_text(), "READ", start), 0, "the log counts no READ requests")
        # Readahead replies of the first read may still be in flight: wait
        # until the log stops growing (a loaded machine takes its time).
        deadline, last = time.time() + 10, -1
        while time.time() < deadline:
            now = requests(self.m.log_text(), "READ", start)
            if now == last:
                break
            last = now
            time.sleep(0.3)
        start = len(self.m.log_text())
        second = read_all(path)
        reads = requests(self.m.log_text(), "READ", start)
        self.assertEqual(h.md5_bytes(second), h.md5_file(oracle), "second read of %s" % path)
        if reads:
            # Seen once in a loaded ASan run (2 READs, never reproduced in 3
            # reruns): a late request of the first read, or pages the kernel
            # dropped. A view the kernel caches serves the next read whole;
            # one that it does not would reach kvmfs again.
            print("note: second buffered read of %s reached kvmfs %d times; reading once more"
                  % (path, reads), flush=True)
            start = len(self.m.log_text())
            third = read_all(path)
            reads = requests(self.m.log_text(), "READ", start)
            self.assertEqual(h.md5_bytes(third), h.md5_file(oracle), "third read of %s" % path)
        self.assertEqual(reads, 0, "repeated buffered read of %s reached kvmfs %d times" % (path, reads))

    def test_second_read_of_snapshot_view_from_page_cache(self):
        self.assertSecondReadCached(self.m.path("vm.qcow2", "snapshots", "s1", "disk.raw"),
                                    h.oracle_raw(self.img, self.work, snapshot="s1"))

    def test_second_read_of_backing_view_from_page_cache(self):
        self.assertSecondReadCached(self.m.path("top.qcow2", "backing", "1-vm.qcow2", "disk.raw"),
                                    h.oracle_raw(self.img, self.work))

    def test_second_read_of_read_only_top_from_page_cache(self):
        self.assertSecondReadCached(self.m.path("top.qcow2", "disk.raw"), h.oracle_raw(self.top, self.work))

    def test_outside_change_seen_at_next_open(self):
        disk = self.m.path("outside.qcow2", "disk.raw")
        self.assertEqual(read_all(disk)[:4], b"\x51" * 4)
        read_all(disk)  # second open: pages kept
        h.qemu_io(self.outside, "write -P 0x52 0 64k")
        got = read_all(disk)
        self.assertEqual(got[:64 * KiB], b"\x52" * (64 * KiB), "outside write not seen at the next open")
        self.assertEqual(got[64 * KiB:2 * MiB], b"\x51" * (2 * MiB - 64 * KiB))

    def test_inode_numbers_stable_across_forget(self):
        paths = [self.m.path(*p) for p in (("vm.qcow2",), ("vm.qcow2", "disk.raw"), ("vm.qcow2", "info.json"),
                                           ("vm.qcow2", "snapshots"), ("vm.qcow2", "snapshots", "s1"),
                                           ("vm.qcow2", "snapshots", "s1", "disk.raw"),
                                           ("top.qcow2", "backing", "1-vm.qcow2", "info.json"),
                                           ("f1",), ("f1", "i04.qcow2", "disk.raw"))]
        before = [os.stat(p).st_ino for p in paths]
        self.assertEqual(len(set(before)), len(before), "distinct nodes share an inode number")
        self.assertEqual([os.stat(p).st_ino for p in paths], before, "numbers changed between lookups")
        start = len(self.m.log_text())
        drop_kernel_caches()
        self.assertTrue(h.wait_until(lambda: requests(self.m.log_text(), "FORGET", start) > 0, timeout=5),
                        "the kernel sent no FORGET after drop_caches")
        self.assertEqual([os.stat(p).st_ino for p in paths], before, "numbers changed after FORGET")
        # Listings give the same numbers as stat.
        for name in os.listdir(self.m.path("vm.qcow2")):
            ino = next(e.inode() for e in os.scandir(self.m.path("vm.qcow2")) if e.name == name)
            self.assertEqual(ino, os.stat(self.m.path("vm.qcow2", name)).st_ino, "d_ino of " + name)

    def test_ls_R_round_trips(self):
        # Its own mount, so that nothing else has warmed the kernel's caches.
        m = self.mount(options=("ro", "log_level=debug"), name="mnt-ls")
        try:
            start = len(m.log_text())
            first = subprocess.run(["ls", "-R", m.mnt], stdout=subprocess.PIPE, check=True).stdout
            log = m.log_text()
            dirs = first.count(b":\n")
            self.assertGreater(dirs, 30, first)
            # OPENDIR answers ENOSYS once; the kernel opens directories itself from then on.
            self.assertLessEqual(requests(log, "OPENDIR", start), 1, "OPENDIR round trips")
            self.assertEqual(requests(log, "RELEASEDIR", start), 0, "RELEASEDIR round trips")
            listings = requests(log, "READDIR", start) + requests(log, "READDIRPLUS", start)
            self.assertGreaterEqual(listings, dirs, "the log counts fewer listings than directories")
            self.assertLessEqual(listings, 2 * dirs, "more than two listing requests per directory")
            start = len(m.log_text())
            second = subprocess.run(["ls", "-R", m.mnt], stdout=subprocess.PIPE, check=True).stdout
            log = m.log_text()
            self.assertEqual(second, first)
            for op in ("OPENDIR", "READDIR", "READDIRPLUS", "LOOKUP"):
                self.assertEqual(requests(log, op, start), 0, "second ls -R sent %s requests" % op)
        finally:
            self.unmount(m)


if __name__ == "__main__":
    h.main()
