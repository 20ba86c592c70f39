#!/usr/bin/python3
"""Concurrent readers: several processes read the same and different views at
once, with different offsets and block sizes; every byte must match QEMU.
Concurrent writers: several processes write interleaved pieces of the same
clusters and blocks of every writable format at once; QEMU must read what
they wrote, and qemu-img check must be clean."""

import hashlib
import os
import subprocess
import sys

import kvmfs_harness as h
from kvmfs_harness import KiB, MiB

SIZE = 8 * MiB
RACE_SIZE = 64 * MiB

# A reader process: python3 -c READER path offset length bs  -> md5 of that range
READER = r"""
import hashlib, os, sys
path, off, length, bs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fd = os.open(path, os.O_RDONLY)
m = hashlib.md5()
end = off + length
while off < end:
    b = os.pread(fd, min(bs, end - off), off)
    if not b:
        break
    m.update(b)
    off += len(b)
os.close(fd)
print(m.hexdigest())
"""


# A racing writer: python3 -c RACER disk k n piece all_direct -> writes piece i = k, k+6, ...
# (O_DIRECT if k is odd or all_direct is 1)
RACER = r"""
import mmap, os, sys
path, k, n, piece = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fd = os.open(path, os.O_RDWR | (os.O_DIRECT if k % 2 or sys.argv[5] == "1" else 0))
buf = mmap.mmap(-1, piece)
buf.write(bytes([0x40 + k]) * piece)
for i in range(k, n, 6):
    os.pwrite(fd, buf, i * piece)
os.fsync(fd)
os.close(fd)
"""


def range_md5(path, off, length):
    with open(path, "rb") as f:
        f.seek(off)
        return hashlib.md5(f.read(length)).hexdigest()


class Concurrency(h.KvmfsTestCase):
    @classmethod
    def make_images(cls):
        cls.imgs = {}
        base = h.write_raw(os.path.join(cls.pool, "base.raw"), SIZE, seed=21)
        cls.imgs["base.raw"] = base
        ovl = h.create_qcow2(os.path.join(cls.pool, "ovl.qcow2"), SIZE, "cluster_size=4k",
                             backing="base.raw", backing_fmt="raw")
        h.qemu_io(ovl, *["write -P 0x%x %dk 12k" % (0x30 + i, i * 333) for i in range(20)])
        cls.imgs["ovl.qcow2"] = ovl
        src = h.write_raw(os.path.join(cls.work, "c.bin"), SIZE, seed=22, compressible=True)
        comp = os.path.join(cls.pool, "comp.qcow2")
        h.qemu_img("convert", "-q", "-f", "raw", "-O", "qcow2", "-c", "-o", "compression_type=zstd",
                   src, comp)
        cls.imgs["comp.qcow2"] = comp
        small = h.create_qcow2(os.path.join(cls.pool, "small.qcow2"), SIZE, "cluster_size=512")
        h.qemu_io(small, "write -P 0x77 0 3M", "write -P 0x78 5M 1M")
        cls.imgs["small.qcow2"] = small
        cls.m = cls.mount(options=("ro", "max_threads=8"))

    def run_readers(self, jobs):
        """jobs: (image, offset, length, bs); all run at once."""
        procs = []
        for name, off, length, bs in jobs:
            path = self.m.path(name, "disk.raw")
            procs.append(subprocess.Popen([sys.executable, "-c", READER, path, str(off), str(length), str(bs)],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for (name, off, length, bs), p in zip(jobs, procs):
            out, err = p.communicate(timeout=300)
            self.assertEqual(p.returncode, 0, err)
            fmt = "raw" if name.endswith(".raw") else None
            want = range_md5(h.oracle_raw(self.imgs[name], self.work, fmt=fmt), off, length)
            self.assertEqual(out.strip(), want, "%s off=%d len=%d bs=%d" % (name, off, length, bs))

    def test_same_view_six_readers(self):
        jobs = [("ovl.qcow2", 0, SIZE, bs) for bs in (4 * KiB, 64 * KiB, 1 * MiB, 512, 128 * KiB + 512, 7777)]
        self.run_readers(jobs)

    def test_different_views_six_readers(self):
        jobs = [("ovl.qcow2", 1 * MiB + 1, 5 * MiB, 65536), ("comp.qcow2", 0, SIZE, 32 * KiB),
                ("comp.qcow2", 3 * MiB - 7, 4 * MiB, 4096), ("small.qcow2", 0, SIZE, 1 * MiB),
                ("base.raw", 12345, 6 * MiB, 100000), ("small.qcow2", 2 * MiB + 511, 4 * MiB, 513)]
        self.run_readers(jobs)

    def test_random_reads_match(self):
        import random
        rng = random.Random(1234)
        for name in ("ovl.qcow2", "comp.qcow2", "small.qcow2"):
            ref = h.oracle_raw(self.imgs[name], self.work)
            fd = os.open(self.m.path(name, "disk.raw"), os.O_RDONLY)
            try:
                with open(ref, "rb") as r:
                    for _ in range(300):
                        off = rng.randrange(0, SIZE)
                        n = rng.choice((1, 497, 512, 4096, 65536, 200000))
                        r.seek(off)
                        self.assertEqual(os.pread(fd, n, off), r.read(n), "%s pread(%d, %d)" % (name, n, off))
            finally:
                os.close(fd)

    def test_md5sum_processes(self):
        names = ["ovl.qcow2", "comp.qcow2", "small.qcow2", "base.raw", "ovl.qcow2", "comp.qcow2"]
        procs = [subprocess.Popen(["md5sum", self.m.path(n, "disk.raw")], stdout=subprocess.PIPE, text=True)
                 for n in names]
        for n, p in zip(names, procs):
            out, _ = p.communicate(timeout=300)
            fmt = "raw" if n.endswith(".raw") else None
            self.assertEqual(out.split()[0], h.oracle_md5(self.imgs[n], self.work, fmt=fmt), n)

    def test_concurrent_direct_io_and_info(self):
        procs = []
        for n in ("comp.qcow2", "small.qcow2", "ovl.qcow2"):
            procs.append((n, subprocess.Popen("dd if='%s' iflag=direct bs=64k status=none | md5sum"
                                              % self.m.path(n, "disk.raw"), shell=True,
                                              stdout=subprocess.PIPE, text=True)))
        for _ in range(20):
            for n in self.imgs:
                h.read_json(self.m.path(n, "info.json"))
        for n, p in procs:
            out, _ = p.communicate(timeout=300)
            self.assertEqual(out.split()[0], h.oracle_md5(self.imgs[n], self.work), n)
        self.assertTrue(self.m.alive())


class ConcurrentWriters(h.KvmfsTestCase):
    def new_pool(self, name):
        pool = os.path.join(self.tmp, "pool-" + name)
        os.makedirs(pool)
        return pool

    def test_concurrent_writers_share_clusters(self):
        # Four processes (two O_DIRECT) write interleaved 4 KiB pieces of the same 64 KiB
        # clusters of an overlay with a snapshot: allocation, COW from the backing file
        # and from snapshot-shared clusters race on every cluster.
        self.race("race", all_direct=False)

    def test_concurrent_direct_writers_share_clusters(self):
        # The same with four O_DIRECT writers: kvmfs lets the kernel send their writes at
        # once (FOPEN_PARALLEL_DIRECT_WRITES) instead of one at a time under the inode lock.
        self.race("race-direct", all_direct=True)

    def race(self, name, all_direct):
        pool = self.new_pool(name)
        h.write_raw(os.path.join(pool, "base.raw"), RACE_SIZE, seed=11)
        img = h.create_qcow2(os.path.join(pool, "vm.qcow2"), RACE_SIZE, "cluster_size=64k",
                             backing="base.raw", backing_fmt="raw")
        h.qemu_io(img, "write -P 0x11 0 6M", "write -P 0x12 20M 1M")
        h.qemu_img("snapshot", "-c", "s", img)
        snap = h.oracle_md5(img, self.work, snapshot="s")
        with open(h.oracle_raw(img, self.work), "rb") as f:
            want = bytearray(f.read())
        piece, n = 4 * KiB, (24 * MiB) // (4 * KiB)
        for i in range(n):
            if i % 6 < 4:  # two of every six pieces keep their old bytes
                want[i * piece:(i + 1) * piece] = bytes([0x40 + i % 6]) * piece
        m = h.Mount(pool, os.path.join(self.tmp, "mnt-" + name), options=h.RW)
        self.mounts.append(m)
        m.start()
        try:
            disk = m.path("vm.qcow2", "disk.raw")
            procs = [subprocess.Popen([sys.executable, "-c", RACER, disk, str(k), str(n), str(piece),
                                       "1" if all_direct else "0"],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                     for k in range(4)]
            for p in procs:
                out = p.communicate(timeout=300)[0]
                self.assertEqual(p.returncode, 0, out)
            with open(disk, "rb") as f:
                got = f.read()
            if got != want:
                i = next(k for k in range(len(want)) if got[k] != want[k])
                self.fail("through kvmfs byte %d (piece %d) is 0x%02x, want 0x%02x" % (
                    i, i // piece, got[i], want[i]))
            self.assertEqual(h.md5_file(m.path("vm.qcow2", "snapshots", "s", "disk.raw")), snap)
        finally:
            m.unmount()
            self.mounts.remove(m)
        self.assertEqual(m.proc.returncode, 0, m.log_text()[-3000:])
        rc, out = h.qemu_check(img)
        self.assertEqual(rc, 0, "qemu-img check rc=%d\n%s" % (rc, out))
        h._oracle_cache.clear()
        with open(h.oracle_raw(img, self.work), "rb") as f:
            got = f.read()
        if got != want:
            i = next(k for k in range(len(want)) if got[k] != want[k])
            self.fail("qemu-img convert byte %d (piece %d) is 0x%02x, want 0x%02x" % (
                i, i // piece, got[i], want[i]))
        self.assertEqual(h.oracle_md5(img, self.work, snapshot="s"), snap)

    def test_concurrent_direct_writers_every_format(self):
        # Four O_DIRECT writers at once on each other format kvmfs writes: VDI blocks,
        # VMDK grains, VHD and VHDX blocks and qcow clusters are allocated while other
        # writes to the same block are in flight. QEMU must read what was written.
        pool = self.new_pool("race-formats")
        size, piece = 8 * MiB, 4 * KiB
        n = size // piece
        images = {}
        for fmt, name, opts in (("raw", "r.img", ()), ("qcow", "q.qcow", ()), ("vdi", "d.vdi", ()),
                                ("vmdk", "k.vmdk", ()), ("vpc", "p.vhd", ("-o", "force_size=on")),
                                ("vhdx", "x.vhdx", ("-o", "block_size=1M"))):
            img = os.path.join(pool, name)
            h.qemu_img("create", "-q", "-f", fmt, *opts, img, str(size))
            h.qemu_io(img, "write -P 0x11 0 3M", "write -P 0x12 5M 1536k", fmt=fmt)
            with open(h.oracle_raw(img, self.work, fmt=fmt), "rb") as f:
                want = bytearray(f.read())
            self.assertEqual(len(want), size, name)
            for i in range(n):
                if i % 6 < 4:
                    want[i * piece:(i + 1) * piece] = bytes([0x40 + i % 6]) * piece
            images[name] = (img, fmt, want)
        m = h.Mount(pool, os.path.join(self.tmp, "mnt-race-formats"), options=h.RW)
        self.mounts.append(m)
        m.start()
        try:
            for name, (img, fmt, want) in images.items():
                disk = m.path(name, "disk.raw")
                procs = [subprocess.Popen([sys.executable, "-c", RACER, disk, str(k), str(n),
                                           str(piece), "1"],
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                         for k in range(4)]
                for p in procs:
                    out = p.communicate(timeout=300)[0]
                    self.assertEqual(p.returncode, 0, "%s: %s" % (name, out))
        finally:
            m.unmount()
            self.mounts.remove(m)
        self.assertEqual(m.proc.returncode, 0, m.log_text()[-3000:])
        h._oracle_cache.clear()
        for name, (img, fmt, want) in images.items():
            with self.subTest(image=name):
                rc, out = h.qemu_check(img, fmt)
                # 63: qemu-img has no check for this format (raw, qcow, vpc)
                self.assertIn(rc, (0, 63), "qemu-img check rc=%d\n%s" % (rc, out))
                with open(h.oracle_raw(img, self.work, fmt=fmt), "rb") as f:
                    got = f.read()
                if got != want:
                    i = next(k for k in range(len(want)) if got[k] != want[k])
                    self.fail("qemu-img convert byte %d (piece %d) is 0x%02x, want 0x%02x" % (
                        i, i // piece, got[i], want[i]))


if __name__ == "__main__":
    h.main()
