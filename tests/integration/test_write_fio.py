#!/usr/bin/python3
"""Write path under fio: `fio --verify=crc32c` through disk.raw (random sizes 512 B to
192 KiB, one O_DIRECT and one buffered job) on every qcow2 shape and on a raw image.
After a clean unmount QEMU must agree: `qemu-img check` exits 0 (no corruption, no
leaks), `qemu-img compare` finds the image equal to a copy read back through kvmfs,
bytes fio did not touch are unchanged, snapshots and backing files keep their content.

Each shape is its own test method with its own pool and mount, so a failure names the
shape. fio's seed is fixed per shape; the fio command line is printed on failure.
"""

import os
import subprocess

import kvmfs_harness as h
from kvmfs_harness import MiB

SIZE = 64 * MiB
JOB_SIZE = 16 * MiB
# Two regions, deliberately not aligned to any cluster size: the clusters at their
# edges are shared with bytes fio never writes, so COW mistakes show up there.
JOBS = (("direct", 1, 1 * MiB + 1536), ("buffered", 0, 30 * MiB + 3584))

# qemu-io prefill: allocated data, unaligned overlaps, zero clusters, a discard,
# data inside and outside the fio regions.
PREFILL = ("write -P 0x11 0 3M", "write -P 0x22 1000k 2M", "write -P 0x12 1536 1k",
           "write -z 6M 1M", "write -P 0x33 17M 4M", "discard 18M 1M", "write -P 0x44 23M 3M",
           "write -P 0x55 40M 512k", "write -P 0x66 60M 4M", "write -P 0x67 46M 64k")


def fio_argv(disk, seed):
    a = [h.FIO, "--ioengine=psync", "--rw=randwrite", "--bsrange=512-192k", "--verify=crc32c",
         "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--fallocate=none",
         "--randseed=%d" % seed, "--filename=" + disk, "--size=%d" % JOB_SIZE]
    for name, direct, off in JOBS:
        a += ["--name=" + name, "--direct=%d" % direct, "--offset=%d" % off]
    return a


def untouched_ranges():
    """[start, end) ranges of the disk no fio job writes."""
    out, pos = [], 0
    for _, _, off in sorted(JOBS, key=lambda j: j[2]):
        out.append((pos, off))
        pos = off + JOB_SIZE
    out.append((pos, SIZE))
    return out


class WriteFio(h.KvmfsTestCase):
    seed = 1000

    # ---- shapes ---------------------------------------------------------------

    def new_pool(self, shape):
        pool = os.path.join(self.tmp, "pool-" + shape)
        os.makedirs(pool)
        return pool

    def qcow2_shape(self, shape, *opts, snapshots=False):
        pool = self.new_pool(shape)
        img = h.create_qcow2(os.path.join(pool, "vm.qcow2"), SIZE, *opts)
        h.qemu_io(img, *PREFILL[:5])
        snaps = []
        if snapshots:
            h.qemu_img("snapshot", "-c", "s1", img)
            snaps.append("s1")
        h.qemu_io(img, *PREFILL[5:])
        if snapshots:
            # the last step: kvmfs's writes find every L2 table and cluster shared
            h.qemu_io(img, "write -P 0x77 1M 2M", "write -P 0x78 31M 4M")
            h.qemu_img("snapshot", "-c", "s2", img)
            snaps.append("s2")
        return pool, img, snaps, []

    def compressed_shape(self, shape, ctype):
        pool = self.new_pool(shape)
        src = h.write_raw(os.path.join(self.work, shape + ".src"), SIZE, seed=3, compressible=True)
        img = os.path.join(pool, "vm.qcow2")
        h.qemu_img("convert", "-q", "-f", "raw", "-O", "qcow2", "-c", "-o",
                   "compression_type=" + ctype, src, img)
        os.unlink(src)
        # some normal clusters and zero clusters next to the compressed ones
        h.qemu_io(img, "write -P 0x31 5M 200k", "write -z 33M 1M")
        return pool, img, [], []

    def overlay_shape(self, shape, base_fmt, *opts):
        pool = self.new_pool(shape)
        if base_fmt == "raw":
            base = h.write_raw(os.path.join(pool, "base.raw"), SIZE, seed=5)
        else:
            base = h.create_qcow2(os.path.join(pool, "base.qcow2"), SIZE, "cluster_size=4k")
            h.qemu_io(base, *PREFILL)
        img = h.create_qcow2(os.path.join(pool, "vm.qcow2"), SIZE, *opts,
                             backing=os.path.basename(base), backing_fmt=base_fmt)
        h.qemu_io(img, "write -P 0x81 2M 100k", "write -z 10M 64k", "write -P 0x82 31M 1M",
                  "write -P 0x83 50M 1M", "write -P 0x84 100k 3k")
        return pool, img, [], [base]

    # ---- the check ------------------------------------------------------------

    def run_shape(self, shape, pool, img, snaps=(), bases=(), fmt="qcow2"):
        WriteFio.seed += 1
        name = os.path.basename(img)
        orig = h.copy_file(h.oracle_raw(img, self.work, fmt=fmt), os.path.join(self.work, shape + ".orig"))
        snap_orig = {s: h.oracle_md5(img, self.work, snapshot=s) for s in snaps}
        base_md5 = {b: h.md5_file(b) for b in bases}
        m = h.Mount(pool, os.path.join(self.tmp, "mnt-" + shape), options=h.RW)
        self.mounts.append(m)
        m.start()
        try:
            disk = m.path(name, "disk.raw")
            argv = fio_argv(disk, self.seed)
            p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=self.work, timeout=300, stdin=subprocess.DEVNULL)
            self.assertEqual(p.returncode, 0, "fio failed on %s (rc=%d)\n%s\n%s\nkvmfs log:\n%s" % (
                shape, p.returncode, " ".join(argv), p.stdout[-4000:], m.log_text()[-3000:]))
            self.assertNotIn("verify:", p.stdout, p.stdout[-4000:])
            self.assertTrue(m.alive(), "kvmfs died:\n" + m.log_text()[-3000:])
            # snapshot views still read what they read before the writes
            for s in snaps:
                self.assertEqual(h.md5_file(m.path(name, "snapshots", s, "disk.raw")), snap_orig[s],
                                 "%s: snapshot %s view changed by writes" % (shape, s))
            copy = h.copy_file(disk, os.path.join(self.work, shape + ".copy"))
        finally:
            m.unmount()
            self.mounts.remove(m)
        self.assertEqual(m.proc.returncode, 0, "%s: kvmfs exit status after unmount\n%s" % (
            shape, m.log_text()[-3000:]))
        self.assertEqual(os.path.getsize(copy), SIZE)
        # bytes fio never wrote are what they were
        with open(orig, "rb") as f, open(copy, "rb") as g:
            for s, e in untouched_ranges():
                f.seek(s)
                g.seek(s)
                a, b = f.read(e - s), g.read(e - s)
                if a != b:
                    i = next(k for k in range(len(a)) if a[k] != b[k])
                    self.fail("%s: byte %d (outside fio's regions) changed: 0x%02x -> 0x%02x" % (
                        shape, s + i, a[i], b[i]))
        if fmt == "qcow2":
            rc, out = h.qemu_check(img)
            self.assertEqual(rc, 0, "%s: qemu-img check %s rc=%d\n%s" % (shape, img, rc, out))
        rc, out = h.qemu_compare_raw(img, copy, fmt=fmt)
        self.assertEqual(rc, 0, "%s: qemu-img compare image vs bytes read through kvmfs rc=%d\n%s" % (
            shape, rc, out))
        for s in snaps:
            h._oracle_cache.pop((os.path.realpath(img), s, None), None)
            self.assertEqual(h.oracle_md5(img, self.work, snapshot=s), snap_orig[s],
                             "%s: qemu-img convert -l snapshot.name=%s changed by writes" % (shape, s))
        for b, want in base_md5.items():
            self.assertEqual(h.md5_file(b), want, "%s: backing file %s modified" % (shape, b))
        for f in (orig, copy):
            os.unlink(f)

    # ---- one method per shape -------------------------------------------------

    def test_qcow2_v2(self):
        self.run_shape("v2", *self.qcow2_shape("v2", "compat=0.10", snapshots=True))

    def test_qcow2_v3_cluster_512(self):
        self.run_shape("c512", *self.qcow2_shape("c512", "cluster_size=512"))

    def test_qcow2_v3_cluster_4k(self):
        self.run_shape("c4k", *self.qcow2_shape("c4k", "cluster_size=4k"))

    def test_qcow2_v3_cluster_64k(self):
        self.run_shape("c64k", *self.qcow2_shape("c64k", "cluster_size=64k"))

    def test_qcow2_v3_cluster_2m(self):
        self.run_shape("c2m", *self.qcow2_shape("c2m", "cluster_size=2M"))

    def test_qcow2_extended_l2(self):
        self.run_shape("extl2", *self.qcow2_shape("extl2", "extended_l2=on", "cluster_size=64k"))

    def test_qcow2_extended_l2_overlay(self):
        self.run_shape("extl2ovl", *self.overlay_shape("extl2ovl", "qcow2", "extended_l2=on",
                                                       "cluster_size=128k"))

    def test_qcow2_refcount_bits_1(self):
        self.run_shape("rc1", *self.qcow2_shape("rc1", "refcount_bits=1"))

    def test_qcow2_refcount_bits_64(self):
        self.run_shape("rc64", *self.qcow2_shape("rc64", "refcount_bits=64", snapshots=True))

    def test_qcow2_compressed_zlib(self):
        self.run_shape("zlib", *self.compressed_shape("zlib", "zlib"))

    def test_qcow2_compressed_zstd(self):
        self.run_shape("zstd", *self.compressed_shape("zstd", "zstd"))

    def test_qcow2_overlay_over_raw(self):
        self.run_shape("ovlraw", *self.overlay_shape("ovlraw", "raw"))

    def test_qcow2_overlay_over_qcow2(self):
        self.run_shape("ovlq", *self.overlay_shape("ovlq", "qcow2", "cluster_size=64k"))

    def test_qcow2_with_snapshots(self):
        self.run_shape("snaps", *self.qcow2_shape("snaps", "cluster_size=64k", snapshots=True))

    def test_qcow2_external_data_file(self):
        pool = self.new_pool("datafile")
        img = h.create_qcow2(os.path.join(pool, "vm.qcow2"), SIZE, "data_file=vm.qcow2.data")
        h.qemu_io(img, *PREFILL)
        self.run_shape("datafile", pool, img)

    def test_qcow2_external_data_file_raw(self):
        pool = self.new_pool("datafileraw")
        img = h.create_qcow2(os.path.join(pool, "vm.qcow2"), SIZE, "data_file=vm.qcow2.data",
                             "data_file_raw=on")
        h.qemu_io(img, *PREFILL)
        self.run_shape("datafileraw", pool, img)

    def test_raw(self):
        pool = self.new_pool("raw")
        img = h.write_raw(os.path.join(pool, "vm.raw"), SIZE, seed=9)
        self.run_shape("raw", pool, img, fmt="raw")


if __name__ == "__main__":
    h.main()
