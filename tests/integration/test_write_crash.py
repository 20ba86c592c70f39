#!/usr/bin/python3
"""Crash safety: kill -9 kvmfs while a writer fsyncs batches through disk.raw, five
rounds at random moments. After each crash the dead mount is cleaned up, `qemu-img
check` must find no corruption (exit 0, or 3 = leaked clusters only), every batch
the writer saw fsync() acknowledge must read back intact with QEMU (`qemu-img
convert`), including those of earlier rounds, and kvmfs must read the crashed image
exactly as QEMU does on the next mount.

The writer (WRITER below) loops over its round's region writing whole 12 KiB slots
with a pattern made from (round, generation, slot), logs "B batch gen slots..."
before a batch and "A batch" once fsync() returned. A batch without "A" may have
landed partly, so its slots are not checked. Set KVMFS_IT_SEED to replay a run.
"""

import os
import random
import signal
import subprocess
import sys
import time

import kvmfs_harness as h
from kvmfs_harness import KiB, MiB

SIZE = 64 * MiB
ROUNDS = 5
SLOT = 12 * KiB
REGION = 12 * MiB
BATCH = 8

WRITER = r"""
import os, random, sys
path, start, nslots, slot, rnd, batch, log = sys.argv[1:8]
start, nslots, slot, rnd, batch = int(start), int(nslots), int(slot), int(rnd), int(batch)
def pattern(rnd, gen, s, n):
    head = b"kvmfs r%d g%d s%d " % (rnd, gen, s)
    return (head + random.Random(rnd * 1000003 + gen * 10007 + s).randbytes(n))[:n]
fd = os.open(path, os.O_RDWR)
lf = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
rng = random.Random(rnd)
gen, b = 0, 0
while True:
    order = list(range(nslots))
    rng.shuffle(order)
    for i in range(0, nslots, batch):
        slots = order[i:i + batch]
        os.write(lf, ("B %d %d %s\n" % (b, gen, " ".join(map(str, slots)))).encode())
        for s in slots:
            os.pwrite(fd, pattern(rnd, gen, s, slot), start + s * slot)
        os.fsync(fd)
        os.write(lf, ("A %d\n" % b).encode())
        b += 1
    gen += 1
"""


def pattern(rnd, gen, s, n):
    head = b"kvmfs r%d g%d s%d " % (rnd, gen, s)
    return (head + random.Random(rnd * 1000003 + gen * 10007 + s).randbytes(n))[:n]


def region_start(rnd):
    return rnd * REGION + 7 * 512  # odd offset: slots straddle clusters


def read_all(path):
    with open(path, "rb") as f:
        return f.read()


class WriteCrash(h.KvmfsTestCase):
    @classmethod
    def make_images(cls):
        cls.img = h.create_qcow2(os.path.join(cls.pool, "vm.qcow2"), SIZE, "cluster_size=64k")
        h.qemu_io(cls.img, "write -P 0x11 0 5M", "write -P 0x22 13M 7M", "write -z 30M 2M",
                  "write -P 0x33 40M 10M", "write -P 0x44 62M 2M")
        cls.orig = bytearray(read_all(h.oracle_raw(cls.img, cls.work)))

    def expected(self, rounds):
        """The disk as QEMU must read it after `rounds` rounds, and the byte ranges
        that are unknown (batches that were never acknowledged)."""
        want = bytearray(self.orig)
        unknown = []
        acked_total = 0
        for rnd in range(rounds):
            begun = {}
            with open(os.path.join(self.work, "log-%d" % rnd)) as f:
                lines = f.read().split("\n")
            # the last line may be cut off by the kill
            for line in lines:
                p = line.split()
                if len(p) >= 3 and p[0] == "B":
                    begun[int(p[1])] = (int(p[2]), [int(x) for x in p[3:]])
                elif len(p) == 2 and p[0] == "A":
                    gen, slots = begun.pop(int(p[1]))
                    acked_total += 1
                    for s in slots:
                        off = region_start(rnd) + s * SLOT
                        want[off:off + SLOT] = pattern(rnd, gen, s, SLOT)
            for gen, slots in begun.values():
                for s in slots:
                    unknown.append((region_start(rnd) + s * SLOT, SLOT))
        return want, unknown, acked_total

    def test_kill9_during_fsynced_writes(self):
        seed = int(os.environ.get("KVMFS_IT_SEED", int(time.time())))
        print("\nKVMFS_IT_SEED=%d" % seed, flush=True)
        rng = random.Random(seed)
        for rnd in range(ROUNDS):
            with self.subTest(round=rnd):
                self.crash_round(rnd, rng.uniform(0.2, 2.5))
        # after all the crashes a clean mount/unmount keeps everything readable
        m = self.mount(options=h.RW, name="mnt-final")
        try:
            self.assertEqual(h.md5_file(m.path("vm.qcow2", "disk.raw")),
                             h.md5_file(h.oracle_raw(self.img, self.work)))
        finally:
            self.unmount(m)
        self.assertEqual(m.proc.returncode, 0, m.log_text()[-3000:])
        rc, out = h.qemu_check(self.img)
        self.assertIn(rc, (0, 3), "qemu-img check after the last clean unmount rc=%d\n%s" % (rc, out))

    def crash_round(self, rnd, delay):
        h._oracle_cache.clear()
        m = self.mount(options=h.RW, name="mnt-%d" % rnd)
        writer = None
        try:
            disk = m.path("vm.qcow2", "disk.raw")
            # kvmfs reads the (possibly crashed) image as QEMU does
            self.assertEqual(h.md5_file(disk), h.md5_file(h.oracle_raw(self.img, self.work)),
                             "round %d: kvmfs and qemu-img convert disagree before writing" % rnd)
            h._oracle_cache.clear()
            log = os.path.join(self.work, "log-%d" % rnd)
            writer = subprocess.Popen([sys.executable, "-c", WRITER, disk, str(region_start(rnd)),
                                       str(REGION // SLOT - 1), str(SLOT), str(rnd), str(BATCH), log],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            # wait for the first acknowledged batch, then kill at a random moment
            first = h.wait_until(lambda: writer.poll() is not None or (
                os.path.exists(log) and b"\nA " in b"\n" + read_all(log)), timeout=30)
            if writer.poll() is not None:
                self.fail("round %d: writer exited early: %s\n%s" % (
                    rnd, writer.communicate()[0], m.log_text()[-3000:]))
            self.assertTrue(first, "round %d: no batch acknowledged in 30 s\n%s" % (rnd, m.log_text()[-3000:]))
            time.sleep(delay)
            if writer.poll() is not None:
                self.fail("round %d: writer stopped before the kill: %s\n%s" % (
                    rnd, writer.communicate()[0], m.log_text()[-3000:]))
            os.kill(m.proc.pid, signal.SIGKILL)
            m.proc.wait(timeout=10)
            try:
                writer.wait(timeout=20)
            except subprocess.TimeoutExpired:
                writer.kill()
                writer.wait()
                self.fail("round %d: writer hung after kvmfs was killed" % rnd)
        finally:
            if writer is not None and writer.poll() is None:
                writer.kill()
                writer.wait()
            self.unmount(m)  # fusermount3 -u, then -u -z
        self.assertFalse(h.is_mounted(m.mnt), "round %d: dead mount left behind" % rnd)
        rc, out = h.qemu_check(self.img)
        self.assertIn(rc, (0, 3), "round %d (kill after %.2fs): qemu-img check rc=%d\n%s" % (
            rnd, delay, rc, out))
        want, unknown, acked = self.expected(rnd + 1)
        self.assertGreater(acked, 0)
        got = read_all(h.oracle_raw(self.img, self.work))
        self.assertEqual(len(got), SIZE)
        for off, n in unknown:
            want[off:off + n] = got[off:off + n]
        if got != want:
            i = next(k for k in range(SIZE) if got[k] != want[k])
            r = next((r for r in range(rnd + 1) if region_start(r) <= i < region_start(r) + REGION), None)
            self.fail("round %d (kill after %.2fs, %d batches acknowledged in all): byte %d differs "
                      "(round %s's region, slot %s): qemu reads 0x%02x, want 0x%02x" % (
                          rnd, delay, acked, i, r, None if r is None else (i - region_start(r)) // SLOT,
                          got[i], want[i]))
        print("round %d: killed after %.2fs, qemu-img check rc=%d, %d batches acknowledged so far" % (
            rnd, delay, rc, acked), flush=True)


class WriteCrashCowSnapshot(WriteCrash):
    """The same rounds on an overlay (4 KiB clusters over a raw base) with an internal
    snapshot: every write copies on write, from the backing file or from clusters the
    snapshot shares (refcount 2), so refcount updates race with the kill too."""

    @classmethod
    def make_images(cls):
        h.write_raw(os.path.join(cls.pool, "base.raw"), SIZE, seed=6)
        cls.img = h.create_qcow2(os.path.join(cls.pool, "vm.qcow2"), SIZE, "cluster_size=4k",
                                 backing="base.raw", backing_fmt="raw")
        h.qemu_io(cls.img, "write -P 0x11 0 5M", "write -P 0x22 13M 7M", "write -z 30M 2M",
                  "write -P 0x33 40M 10M")
        h.qemu_img("snapshot", "-c", "s", cls.img)
        cls.snap_md5 = h.oracle_md5(cls.img, cls.work, snapshot="s")
        cls.orig = bytearray(read_all(h.oracle_raw(cls.img, cls.work)))

    def crash_round(self, rnd, delay):
        super().crash_round(rnd, delay)
        h._oracle_cache.clear()
        self.assertEqual(h.oracle_md5(self.img, self.work, snapshot="s"), self.snap_md5,
                         "round %d: snapshot s changed" % rnd)


if __name__ == "__main__":
    h.main()
