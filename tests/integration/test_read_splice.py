#!/usr/bin/python3
"""Read replies that splice ranges of image files (op_read.cpp, Image::PlanRead):
every layout read through the mount, read-only and read-write, with O_DIRECT
requests of the negotiated maximum and more, buffered and at odd offsets and
sizes, byte-exact with `qemu-img convert`; and reads of the spliced backing
racing with fio writes (with verify) to the top of the same chain."""

import os
import random
import subprocess
import threading

import kvmfs_harness as h
from kvmfs_harness import KiB, MiB

SIZE = 6 * MiB + 64 * KiB
CHAIN_DEPTH = 6
STRIPE = 64 * KiB


class ReadSplice(h.KvmfsTestCase):
    names = []

    @classmethod
    def make_images(cls):
        pool = cls.pool
        p = lambda n: os.path.join(pool, n)
        cls.names = []
        h.write_raw(p("plain.raw"), SIZE + 512, seed=11)
        cls.names.append("plain.raw")
        # qcow2 over a raw backing: data, zero, compressed, unaligned and
        # unallocated (backing) ranges inside single requests.
        h.write_raw(p("base.raw"), SIZE, seed=12)
        for name, opts in (("mixed.qcow2", ()), ("extl2.qcow2", ("extended_l2=on",)),
                           ("small.qcow2", ("cluster_size=4096",))):
            img = h.create_qcow2(p(name), SIZE, *opts, backing="base.raw", backing_fmt="raw")
            h.qemu_io(img, "write -P 0x21 64k 192k", "write -z 512k 128k",
                      "write -c -P 0x22 1M 64k", "write -P 0x23 2000000 3000",
                      "write -P 0x24 3M 1536k", "write -z 5M 4k")
            cls.names.append(name)
        # external data file
        img = h.create_qcow2(p("ext.qcow2"), SIZE, "data_file=ext.data")
        h.qemu_io(img, "write -P 0x31 0 1M", "write -P 0x32 4M 1M", "write -P 0x33 3333333 4444")
        cls.names.append("ext.qcow2")
        # a chain where every request walks every layer
        os.makedirs(p("chain"))
        prev = None
        for i in range(CHAIN_DEPTH):
            img = h.create_qcow2(p("chain/l%d.qcow2" % i), SIZE,
                                 backing=prev, backing_fmt="qcow2" if prev else None)
            h.qemu_io(img, *["write -P 0x%x %d %d" % (0x40 + i, c, STRIPE)
                             for c in range(i * STRIPE, SIZE, CHAIN_DEPTH * STRIPE)])
            prev = "l%d.qcow2" % i
        cls.names.append("chain/l%d.qcow2" % (CHAIN_DEPTH - 1))

    def check_all(self, m):
        rnd = random.Random(5)
        for name in self.names:
            disk = m.path(name, "disk.raw")
            ref = h.oracle_raw(os.path.join(self.pool, name), self.work)
            want = h.md5_file(ref)
            for bs in (4 * KiB, 896 * KiB, MiB, 4 * MiB):
                self.assertEqual(h.md5_file(disk, bs, os.O_DIRECT), want,
                                 "%s: O_DIRECT reads of %d" % (name, bs))
            self.assertEqual(h.md5_file(disk), want, "%s: buffered" % name)
            with open(ref, "rb") as r:
                data = r.read()
            fd = os.open(disk, os.O_RDONLY)
            try:
                for _ in range(200):
                    off = rnd.randrange(0, len(data))
                    n = rnd.choice((1, 511, 4097, 65537, 300000, 917505, 2 * MiB + 3))
                    self.assertEqual(os.pread(fd, n, off), data[off:off + n],
                                     "%s: pread(%d, %d)" % (name, n, off))
                self.assertEqual(os.pread(fd, 4096, len(data)), b"", "%s: read at EOF" % name)
            finally:
                os.close(fd)

    def test_read_only_mount(self):
        m = self.mount(options=("ro",), name="mnt-ro")
        try:
            self.check_all(m)
        finally:
            self.unmount(m)

    def test_read_write_mount(self):
        # The writable tops are read into memory; their backings are spliced.
        m = self.mount(options=h.RW, name="mnt-rw")
        try:
            self.check_all(m)
            self.assertTrue(m.alive(), m.log_text()[-3000:])
        finally:
            self.unmount(m)

    def test_reads_race_writes(self):
        # fio writes (and verifies) the first half of a qcow2 over a spliced
        # raw backing while readers read the second half, which the writes
        # never touch, and must see the backing's bytes throughout.
        pool = os.path.join(self.tmp, "race")
        os.makedirs(pool)
        h.write_raw(os.path.join(pool, "base.raw"), 16 * MiB, seed=21)
        img = h.create_qcow2(os.path.join(pool, "vm.qcow2"), 16 * MiB,
                             backing="base.raw", backing_fmt="raw")
        h.qemu_io(img, "write -P 0x51 9M 1M")
        ref = h.oracle_raw(img, self.work)
        with open(ref, "rb") as r:
            data = r.read()
        m = h.Mount(pool, os.path.join(self.tmp, "mnt-race"), options=h.RW)
        self.mounts.append(m)
        m.start()
        disk = m.path("vm.qcow2", "disk.raw")
        errors, stop = [], threading.Event()

        def reader(seed):
            rnd = random.Random(seed)
            fd = os.open(disk, os.O_RDONLY | os.O_DIRECT)
            try:
                while not stop.is_set():
                    off = 8 * MiB + rnd.randrange(0, 8) * MiB
                    n = min(rnd.choice((MiB, 896 * KiB, 64 * KiB)), 16 * MiB - off)
                    if os.pread(fd, n, off) != data[off:off + n]:
                        errors.append("pread(%d, %d) differs" % (n, off))
                        return
            finally:
                os.close(fd)

        threads = [threading.Thread(target=reader, args=(s,)) for s in (1, 2)]
        for t in threads:
            t.start()
        try:
            argv = [h.FIO, "--name=w", "--ioengine=psync", "--rw=randwrite", "--bsrange=4k-1m",
                    "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
                    "--verify_state_save=0", "--fallocate=none", "--randseed=7", "--numjobs=2",
                    "--filename=" + disk, "--offset=0", "--size=%d" % (8 * MiB), "--direct=1"]
            p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=self.work, timeout=300, stdin=subprocess.DEVNULL)
        finally:
            stop.set()
            for t in threads:
                t.join()
        self.assertEqual(p.returncode, 0, "fio failed:\n%s\n%s" % (p.stdout[-3000:], m.log_text()[-3000:]))
        self.assertNotIn("verify:", p.stdout)
        self.assertEqual(errors, [])
        self.unmount(m)
        after = os.path.join(self.work, "race-after.raw")  # not oracle_raw: it caches by image
        h.qemu_img("convert", "-U", "-O", "raw", img, after, cwd=pool)
        with open(after, "rb") as r:
            self.assertEqual(r.read()[8 * MiB:], data[8 * MiB:], "the second half changed")


if __name__ == "__main__":
    h.main()
