#!/usr/bin/python3
"""Concurrent readers: several processes read the same and different views at
once, with different offsets and block sizes; every byte must match QEMU."""

import hashlib
import os
import subprocess
import sys

import kvmfs_harness as h
from kvmfs_harness import KiB, MiB

SIZE = 8 * MiB

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


if __name__ == "__main__":
    h.main()
