#!/usr/bin/python3
"""Formats: every qcow2 variant the issue lists, and raw, read through the mount
byte-exact with `qemu-img convert`, with SEEK_DATA/SEEK_HOLE equal to
`qemu-img map` and info.json equal to `qemu-img info` where comparable."""

import os
import struct
import subprocess

import kvmfs_harness as h
from kvmfs_harness import KiB, MiB

SIZE = 4 * MiB

# (offset, length, pattern) writes: aligned, unaligned and cluster-crossing.
WRITES = [
    (0, 64 * KiB, 0x11),
    (1234, 5000, 0x22),
    (300 * KiB + 7, 3 * KiB, 0x33),
    (1 * MiB - 512, 1024, 0x44),
    (2 * MiB + 4 * KiB, 256 * KiB, 0x55),
    (SIZE - 512, 512, 0x66),
]


def write_all(img, writes=WRITES, fmt="qcow2"):
    h.qemu_io(img, *["write -P 0x%x %d %d" % (p, o, n) for o, n, p in writes], fmt=fmt)


class Formats(h.KvmfsTestCase):
    images = {}

    @classmethod
    def add(cls, name):
        p = os.path.join(cls.pool, name)
        cls.images[name] = p
        return p

    @classmethod
    def make_images(cls):
        cls.images = {}
        # cluster sizes, v3
        for cs in (512, 4 * KiB, 64 * KiB, 2 * MiB):
            p = h.create_qcow2(cls.add("cs%d.qcow2" % cs), SIZE, "cluster_size=%d" % cs)
            write_all(p)
        # v2 and v3 explicitly
        write_all(h.create_qcow2(cls.add("v2.qcow2"), SIZE, "compat=0.10"))
        write_all(h.create_qcow2(cls.add("v3.qcow2"), SIZE, "compat=1.1"))
        # refcount widths
        for bits in (1, 64):
            write_all(h.create_qcow2(cls.add("rc%d.qcow2" % bits), SIZE, "refcount_bits=%d" % bits))
        # raw, by extension (.raw and .img)
        h.write_raw(cls.add("plain.raw"), 3 * MiB, seed=1)
        h.write_raw(cls.add("plain.img"), 2 * MiB + 512, seed=2)
        # compressed: whole image converted with -c (zlib and zstd) ...
        src = h.write_raw(os.path.join(cls.work, "compressible.bin"), SIZE, seed=3, compressible=True)
        h.qemu_img("convert", "-q", "-f", "raw", "-c", "-O", "qcow2", src, cls.add("conv-zlib.qcow2"))
        h.qemu_img("convert", "-q", "-f", "raw", "-c", "-O", "qcow2", "-o", "compression_type=zstd",
                   src, cls.add("conv-zstd.qcow2"))
        # ... and single compressed clusters written by qemu-io next to normal ones
        for ct in ("zlib", "zstd"):
            p = h.create_qcow2(cls.add("wc-%s.qcow2" % ct), SIZE, "compression_type=" + ct)
            h.qemu_io(p, "write -c -P 0x71 0 64k", "write -c -P 0x72 128k 64k",
                      "write -P 0x73 192k 64k", "write -c -P 0x74 1M 64k")
        # compressed clusters with small clusters (4k) too
        h.qemu_img("convert", "-q", "-f", "raw", "-c", "-O", "qcow2", "-o", "cluster_size=4k",
                   src, cls.add("conv-zlib-4k.qcow2"))
        # zero clusters and discard (v3), no backing
        p = h.create_qcow2(cls.add("zero.qcow2"), SIZE)
        write_all(p)
        h.qemu_io(p, "write -z 0 64k", "write -z 2M 128k", "discard 2304k 64k", "write -z 3M 64k")
        # zero/discard in v2 (no zero flag: qemu writes zeros or deallocates)
        p = h.create_qcow2(cls.add("zero-v2.qcow2"), SIZE, "compat=0.10")
        write_all(p)
        h.qemu_io(p, "write -z 0 64k", "discard 2M 64k")
        # zero clusters over a backing file: zeros must hide the backing data
        base = h.create_qcow2(cls.add("zbase.qcow2"), SIZE)
        h.qemu_io(base, "write -P 0x5a 0 4M")
        top = h.create_qcow2(cls.add("ztop.qcow2"), SIZE, backing="zbase.qcow2", backing_fmt="qcow2")
        h.qemu_io(top, "write -P 0x21 64k 64k", "write -z 1M 128k", "discard 2M 64k", "write -z 3M 4k")
        # extended L2 over a backing file: partly allocated and zero subclusters
        xbase = h.create_qcow2(cls.add("xbase.qcow2"), SIZE)
        h.qemu_io(xbase, "write -P 0x3c 0 4M")
        xl2 = h.create_qcow2(cls.add("xl2.qcow2"), SIZE, "extended_l2=on", "cluster_size=64k",
                             backing="xbase.qcow2", backing_fmt="qcow2")
        h.qemu_io(xl2, "write -P 0x41 2k 2k", "write -P 0x42 10k 6k", "write -z 20k 4k",
                  "write -P 0x43 64k 64k", "write -z 192k 64k", "write -P 0x44 1M 1k",
                  "write -z 1030k 2k", "discard 1M 2k")
        # extended L2 without backing, 2M clusters (64k subclusters)
        xl2b = h.create_qcow2(cls.add("xl2-2m.qcow2"), SIZE, "extended_l2=on", "cluster_size=2M")
        h.qemu_io(xl2b, "write -P 0x45 64k 64k", "write -P 0x46 3M 128k", "write -z 3M 64k")
        # external data files (name without an image extension: hidden in the mount)
        p = h.create_qcow2(cls.add("ext.qcow2"), SIZE, "data_file=ext.qcow2.data")
        write_all(p)
        h.qemu_io(p, "write -z 2M 64k")
        p = h.create_qcow2(cls.add("extraw.qcow2"), SIZE, "data_file=extraw.qcow2.data",
                           "data_file_raw=on")
        write_all(p)
        # dirty bit (lazy refcounts, qemu-io killed before clean close)
        p = h.create_qcow2(cls.add("dirty.qcow2"), SIZE, "lazy_refcounts=on")
        subprocess.run([h.QEMU_IO, "-f", "qcow2", "-c", "write -P 0x61 0 64k", "-c", "sigraise 9", p],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # compressed clusters with 2M and 512 B clusters
        h.qemu_img("convert", "-q", "-f", "raw", "-c", "-O", "qcow2", "-o", "cluster_size=2M,compression_type=zstd",
                   src, cls.add("conv-zstd-2m.qcow2"))
        h.qemu_img("convert", "-q", "-f", "raw", "-c", "-O", "qcow2", "-o", "cluster_size=512",
                   src, cls.add("conv-zlib-512.qcow2"))
        # a virtual size that is not a multiple of the cluster size (qemu rounds to 512)
        p = h.create_qcow2(cls.add("odd.qcow2"), 1000000, "cluster_size=64k")
        h.qemu_io(p, "write -P 0x4f 983040 17408", "write -P 0x4e 0 1000")
        # "tiny petabyte" (reliability §7 case 55): 64 TiB virtual, a few MiB on disk
        p = h.create_qcow2(cls.add("huge.qcow2"), "64T")
        h.qemu_io(p, "write -P 0x51 10T 64k", "write -P 0x52 %d 4k" % (63 * 2**40 + 12345 * 512),
                  "write -P 0x53 0 4k")
        # a qcow2 file named .raw is a raw image: its bytes as they are, never parsed
        qsrc = h.create_qcow2(os.path.join(cls.work, "q.qcow2"), SIZE)
        h.qemu_io(qsrc, "write -P 0x54 0 64k")
        with open(qsrc, "rb") as f, open(cls.add("looks-qcow2.raw"), "wb") as g:
            g.write(f.read())
        # corrupt bit (incompatible feature bit 1): a read-only export still works
        # (reliability §7 case 6) and info.json says "corrupt": true like qemu-img info
        p = h.create_qcow2(cls.add("corrupt-bit.qcow2"), SIZE)
        write_all(p)
        feats = struct.unpack(">Q", h.peek(p, 72, 8))[0]
        h.poke(p, 72, struct.pack(">Q", feats | 2))
        cls.m = cls.mount()

    # one test per image, so each result is reported by name
    def check(self, name, fmt=None, seek=True):
        img = self.images[name]
        self.assertIn(name, os.listdir(self.m.mnt))
        view = self.m.path(name)
        self.assertViewMatches(view, img, fmt=fmt, seek=seek)
        self.assertInfoMatches(os.path.join(view, "info.json"), img, fmt=fmt)

    def test_cluster_512(self): self.check("cs512.qcow2")
    def test_cluster_4k(self): self.check("cs4096.qcow2")
    def test_cluster_64k(self): self.check("cs65536.qcow2")
    def test_cluster_2m(self): self.check("cs2097152.qcow2")
    def test_v2(self): self.check("v2.qcow2")
    def test_v3(self): self.check("v3.qcow2")
    def test_refcount_bits_1(self): self.check("rc1.qcow2")
    def test_refcount_bits_64(self): self.check("rc64.qcow2")
    # raw: qemu-img map of a raw file reflects host holes; ours are fully written.
    def test_raw_ext_raw(self): self.check("plain.raw", fmt="raw")
    def test_raw_ext_img(self): self.check("plain.img", fmt="raw")
    def test_compressed_zlib_convert(self): self.check("conv-zlib.qcow2")
    def test_compressed_zstd_convert(self): self.check("conv-zstd.qcow2")
    def test_compressed_zlib_4k_convert(self): self.check("conv-zlib-4k.qcow2")
    def test_compressed_zlib_write_c(self): self.check("wc-zlib.qcow2")
    def test_compressed_zstd_write_c(self): self.check("wc-zstd.qcow2")
    def test_zero_and_discard_v3(self): self.check("zero.qcow2")
    def test_zero_and_discard_v2(self): self.check("zero-v2.qcow2")
    def test_zero_clusters_over_backing(self): self.check("ztop.qcow2")
    def test_extended_l2_over_backing(self): self.check("xl2.qcow2")
    def test_extended_l2_2m_clusters(self): self.check("xl2-2m.qcow2")
    def test_external_data_file(self): self.check("ext.qcow2")
    def test_external_data_file_raw(self): self.check("extraw.qcow2")

    def test_dirty_flag(self):
        info = h.qemu_info(self.images["dirty.qcow2"])
        self.assertTrue(info.get("dirty-flag"), "recipe did not leave the dirty bit set")
        self.check("dirty.qcow2")

    def test_compressed_zstd_2m(self): self.check("conv-zstd-2m.qcow2")
    def test_compressed_zlib_512(self): self.check("conv-zlib-512.qcow2")
    def test_odd_virtual_size(self): self.check("odd.qcow2")

    def test_raw_name_wins_over_qcow2_magic(self):
        self.check("looks-qcow2.raw", fmt="raw")
        info = h.read_json(self.m.path("looks-qcow2.raw", "info.json"))
        self.assertEqual(info["format"], "raw")
        self.assertEqual(h.md5_file(self.m.path("looks-qcow2.raw", "disk.raw")),
                         h.md5_file(self.images["looks-qcow2.raw"]))

    def test_huge_sparse_image(self):
        img = self.images["huge.qcow2"]
        disk = self.m.path("huge.qcow2", "disk.raw")
        self.assertEqual(os.stat(disk).st_size, 64 * 2**40)
        self.assertInfoMatches(self.m.path("huge.qcow2", "info.json"), img)
        self.assertEqual(h.seek_data_extents(disk), h.qemu_data_extents(img))
        fd = os.open(disk, os.O_RDONLY)
        try:
            self.assertEqual(os.pread(fd, 65536, 10 * 2**40), b"\x51" * 65536)
            self.assertEqual(os.pread(fd, 4096, 63 * 2**40 + 12345 * 512), b"\x52" * 4096)
            self.assertEqual(os.pread(fd, 1 << 20, 32 * 2**40), bytes(1 << 20))
            self.assertEqual(os.pread(fd, 4096, 64 * 2**40 - 4096), bytes(4096))
            self.assertEqual(os.pread(fd, 4096, 64 * 2**40), b"")
        finally:
            os.close(fd)
        st = os.stat(disk)
        self.assertLess(st.st_blocks * 512, 64 * 2**20, "st_blocks of a sparse 64 TiB image")

    def test_corrupt_bit(self):
        info = h.qemu_info(self.images["corrupt-bit.qcow2"])
        self.assertTrue(info["format-specific"]["data"]["corrupt"], "recipe did not set the corrupt bit")
        self.check("corrupt-bit.qcow2")

    def test_compressed_images_are_compressed(self):
        # Recipe sanity: the compressed images really hold compressed clusters
        # (smaller on disk than the data), or the test above proves nothing.
        for n in ("conv-zlib.qcow2", "conv-zstd.qcow2"):
            self.assertLess(os.path.getsize(self.images[n]), SIZE // 2, n)
        info = h.qemu_info(self.images["conv-zstd.qcow2"])
        self.assertEqual(info["format-specific"]["data"]["compression-type"], "zstd")

    def test_data_files_hidden(self):
        names = os.listdir(self.m.mnt)
        self.assertNotIn("ext.qcow2.data", names)
        self.assertNotIn("extraw.qcow2.data", names)

    def test_st_blocks_follows_allocation(self):
        # An image with data has blocks; an empty 1 GiB image has almost none.
        st = os.stat(self.m.path("cs65536.qcow2", "disk.raw"))
        self.assertGreater(st.st_blocks, 0)
        self.assertLessEqual(st.st_blocks * 512, SIZE + MiB)
        st = os.stat(self.m.path("zbase.qcow2", "disk.raw"))
        self.assertGreaterEqual(st.st_blocks * 512, 2 * MiB, "fully written 4 MiB image")

    def test_odirect_read(self):
        for n in ("cs512.qcow2", "conv-zstd.qcow2", "xl2.qcow2", "plain.raw"):
            disk = self.m.path(n, "disk.raw")
            p = subprocess.run("dd if='%s' iflag=direct bs=64k status=none | md5sum" % disk, shell=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertNotIn("Invalid argument", p.stderr, p.stderr)
            self.assertEqual(p.stdout.split()[0], h.oracle_md5(self.images[n], self.work), n + " O_DIRECT")

    def test_small_unaligned_reads(self):
        # 1-byte and 497-byte reads across cluster boundaries (reliability §7 case 58).
        img = "cs512.qcow2"
        ref = h.oracle_raw(self.images[img], self.work)
        fd = os.open(self.m.path(img, "disk.raw"), os.O_RDONLY)
        try:
            with open(ref, "rb") as r:
                for off in (0, 1, 511, 1233, 1234, 6233, 65535, 300 * KiB + 6, SIZE - 497, SIZE - 1):
                    for n in (1, 497, 4096):
                        r.seek(off)
                        want = r.read(n)
                        self.assertEqual(os.pread(fd, n, off), want, "pread(%d, %d)" % (n, off))
            self.assertEqual(os.pread(fd, 4096, SIZE), b"", "read at EOF")
        finally:
            os.close(fd)


if __name__ == "__main__":
    h.main()
