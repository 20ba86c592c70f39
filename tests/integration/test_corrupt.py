#!/usr/bin/python3
"""Bad images (reliability.md §7): each is still listed, its info.json carries
"error", opening its disk.raw fails with the right errno, the log names it, the
mount stays up, and the good images of the same pool still read right.

Header offsets (big-endian), reliability.md Appendix: version 4,
l1_table_offset 40, incompatible_features 72."""

import errno
import os
import struct

import kvmfs_harness as h
from kvmfs_harness import MiB

EIO, ENOTSUP = errno.EIO, errno.ENOTSUP


class Corrupt(h.KvmfsTestCase):
    @classmethod
    def make_images(cls):
        p = cls.pool

        def img(name, *opts):
            path = h.create_qcow2(os.path.join(p, name), 4 * MiB, *opts)
            h.qemu_io(path, "write -P 0x5c 0 1M", "write -P 0x5d 2M 64k")
            return path

        cls.good = img("good.qcow2")
        cls.good_raw = h.write_raw(os.path.join(p, "good.raw"), 1 * MiB, seed=9)
        # truncated to 100 bytes (shorter than a v3 header)
        t = img("truncated.qcow2")
        os.truncate(t, 100)
        # version 4
        v = img("version4.qcow2")
        h.poke(v, 4, struct.pack(">I", 4))
        # version 0: no such qcow version
        v1 = img("version0.qcow2")
        h.poke(v1, 4, struct.pack(">I", 0))
        # L1 table offset far past EOF (aligned, so only the bounds check catches it)
        l1 = img("l1-past-eof.qcow2")
        h.poke(l1, 40, struct.pack(">Q", 0x40000000))
        # L1 table offset misaligned
        l1m = img("l1-misaligned.qcow2")
        h.poke(l1m, 40, struct.pack(">Q", 0x30001))
        # unknown incompatible feature bit 5
        f = img("feature5.qcow2")
        feats = struct.unpack(">Q", h.peek(f, 72, 8))[0]
        h.poke(f, 72, struct.pack(">Q", feats | (1 << 5)))
        # cluster_bits out of range (reliability §7 case 2)
        cb = img("cluster-bits.qcow2")
        h.poke(cb, 20, struct.pack(">I", 31))
        cls.m = cls.mount()

    def other(self):
        return (self.good, "good.qcow2")

    def test_good_images_read(self):
        self.assertViewMatches(self.m.path("good.qcow2"), self.good)
        self.assertViewMatches(self.m.path("good.raw"), self.good_raw, fmt="raw")

    def test_truncated_to_100_bytes(self):
        self.assertBroken(self.m, "truncated.qcow2", (EIO,), other_ok=self.other())

    def test_version_4(self):
        info = self.assertBroken(self.m, "version4.qcow2", (EIO, ENOTSUP), other_ok=self.other())
        self.assertIn("4", info["error"], "the error should say which version")

    def test_version_0(self):
        self.assertBroken(self.m, "version0.qcow2", (EIO, ENOTSUP), other_ok=self.other())

    def test_l1_table_past_eof(self):
        self.assertBroken(self.m, "l1-past-eof.qcow2", (EIO,), other_ok=self.other())

    def test_l1_table_misaligned(self):
        self.assertBroken(self.m, "l1-misaligned.qcow2", (EIO,), other_ok=self.other())

    def test_unknown_incompatible_feature(self):
        self.assertBroken(self.m, "feature5.qcow2", (ENOTSUP, EIO), other_ok=self.other())

    def test_cluster_bits_out_of_range(self):
        self.assertBroken(self.m, "cluster-bits.qcow2", (EIO, ENOTSUP), other_ok=self.other())

    def test_log_names_broken_image(self):
        h.open_errno(self.m.path("feature5.qcow2", "disk.raw"))
        log = self.m.log_text()
        self.assertIn("feature5.qcow2", log, "the log should name the image that failed:\n" + log[-2000:])

    def test_repeated_opens_stay_failed(self):
        for _ in range(3):
            self.assertNotEqual(h.open_errno(self.m.path("truncated.qcow2", "disk.raw")), 0)
        self.assertTrue(self.m.alive())

    def test_zz_mount_still_alive(self):
        # runs last (alphabetical): after every bad image was touched
        self.assertTrue(self.m.alive(), self.m.log_text()[-3000:])
        self.assertViewMatches(self.m.path("good.qcow2"), self.good)


if __name__ == "__main__":
    h.main()
