#!/usr/bin/python3
"""Backing chains: a 3-deep mixed chain (raw base outside the pool and shorter
than the overlays, qcow2 middle, qcow2 top) with and without -o backing_root,
the backing/<n>-<file>/ views, missing backing files, loops and too deep chains."""

import errno
import os

import kvmfs_harness as h
from kvmfs_harness import KiB, MiB


class Chain(h.KvmfsTestCase):
    """pool/vms/top.qcow2 -> pool/vms/mid.qcow2 -> <tmp>/outside/base.raw"""

    @classmethod
    def make_images(cls):
        cls.outside = os.path.join(cls.tmp, "outside")
        os.makedirs(cls.outside)
        vms = os.path.join(cls.pool, "vms")
        os.makedirs(vms)
        cls.base = h.write_raw(os.path.join(cls.outside, "base.raw"), 3 * MiB, seed=11)
        # middle: 6 MiB over a 3 MiB raw base (reads past the base's end are zeros)
        cls.mid = h.create_qcow2(os.path.join(vms, "mid.qcow2"), 6 * MiB, "cluster_size=4k",
                                 backing=cls.base, backing_fmt="raw")
        h.qemu_io(cls.mid, "write -P 0x81 512k 64k", "write -P 0x82 %d 8k" % (3 * MiB - 4 * KiB),
                  "write -P 0x83 5M 4k", "write -z 1M 64k")
        # top: 8 MiB, relative backing name, different cluster size
        cls.top = h.create_qcow2(os.path.join(vms, "top.qcow2"), 8 * MiB, "cluster_size=64k",
                                 backing="mid.qcow2", backing_fmt="qcow2")
        h.qemu_io(cls.top, "write -P 0x91 0 4k", "write -P 0x92 520k 10k", "write -P 0x93 7M 64k",
                  "write -z 2M 64k")
        # a plain image in the same pool, to show the mount keeps serving
        cls.plain = h.create_qcow2(os.path.join(cls.pool, "plain.qcow2"), 2 * MiB)
        h.qemu_io(cls.plain, "write -P 0xa1 0 1M")
        # a second root: pool/two.qcow2 -> outside2/b2.qcow2 -> outside/base.raw
        cls.outside2 = os.path.join(cls.tmp, "outside2")
        os.makedirs(cls.outside2)
        cls.b2 = h.create_qcow2(os.path.join(cls.outside2, "b2.qcow2"), 4 * MiB,
                                backing="../outside/base.raw", backing_fmt="raw")
        h.qemu_io(cls.b2, "write -P 0xb2 1M 64k")
        cls.two = h.create_qcow2(os.path.join(cls.pool, "two.qcow2"), 4 * MiB,
                                 backing=cls.b2, backing_fmt="qcow2")
        h.qemu_io(cls.two, "write -P 0xb3 0 4k")
        cls.m = cls.mount(options=("ro", "backing_root=" + cls.outside, "backing_root=" + cls.outside2),
                          name="mnt-root")

    def test_top_view(self):
        self.assertViewMatches(self.m.path("vms", "top.qcow2"), self.top)

    def test_top_info(self):
        info = self.assertInfoMatches(self.m.path("vms", "top.qcow2", "info.json"), self.top)
        self.assertEqual(info.get("backing-filename"), "mid.qcow2")

    def test_mid_view_and_info(self):
        self.assertViewMatches(self.m.path("vms", "mid.qcow2"), self.mid)
        self.assertInfoMatches(self.m.path("vms", "mid.qcow2", "info.json"), self.mid)

    def test_backing_listing(self):
        self.assertEqual(sorted(os.listdir(self.m.path("vms", "top.qcow2", "backing"))),
                         ["1-mid.qcow2", "2-base.raw"])
        self.assertEqual(sorted(os.listdir(self.m.path("vms", "mid.qcow2", "backing"))), ["1-base.raw"])
        self.assertEqual(sorted(os.listdir(self.m.path("vms", "top.qcow2", "backing", "1-mid.qcow2"))),
                         ["check.json", "disk.raw", "info.json"])

    def test_backing_views(self):
        b = self.m.path("vms", "top.qcow2", "backing")
        self.assertViewMatches(os.path.join(b, "1-mid.qcow2"), self.mid)
        # the raw base: qemu-img map on raw depends on host holes; write_raw leaves none
        self.assertViewMatches(os.path.join(b, "2-base.raw"), self.base, fmt="raw")
        self.assertInfoMatches(os.path.join(b, "1-mid.qcow2", "info.json"), self.mid)
        self.assertInfoMatches(os.path.join(b, "2-base.raw", "info.json"), self.base, fmt="raw")

    def test_two_backing_roots(self):
        self.assertViewMatches(self.m.path("two.qcow2"), self.two)
        self.assertEqual(sorted(os.listdir(self.m.path("two.qcow2", "backing"))), ["1-b2.qcow2", "2-base.raw"])
        self.assertViewMatches(self.m.path("two.qcow2", "backing", "1-b2.qcow2"), self.b2)

    def test_one_root_of_two_refused(self):
        m = self.mount(options=("ro", "backing_root=" + self.outside), name="mnt-oneroot")
        try:
            info = self.assertBroken(m, "two.qcow2", (errno.EACCES,), other_ok=(self.top, "vms/top.qcow2"))
            self.assertIn("b2.qcow2", info["error"])
        finally:
            self.unmount(m)

    def test_base_outside_pool_not_listed(self):
        self.assertEqual(sorted(os.listdir(self.m.path("vms"))), ["mid.qcow2", "top.qcow2"])

    def test_backing_views_readonly(self):
        for p in (self.m.path("vms", "top.qcow2", "backing", "1-mid.qcow2", "disk.raw"),
                  self.m.path("vms", "top.qcow2", "disk.raw")):
            with self.assertRaises(OSError) as cm:
                os.open(p, os.O_RDWR)
            self.assertEqual(cm.exception.errno, errno.EROFS, p)

    def test_without_backing_root_refused(self):
        m = self.mount(name="mnt-noroot")
        try:
            for rel in (("vms", "top.qcow2"), ("vms", "mid.qcow2")):
                info = self.assertBroken(m, os.path.join(*rel), (errno.EACCES, errno.ENOENT),
                                         other_ok=(self.plain, "plain.qcow2"))
                self.assertIn("base.raw", info["error"], "the error should name the refused file")
        finally:
            self.unmount(m)


class BrokenChains(h.KvmfsTestCase):
    @classmethod
    def make_images(cls):
        p = cls.pool
        cls.good = h.create_qcow2(os.path.join(p, "good.qcow2"), 2 * MiB)
        h.qemu_io(cls.good, "write -P 0x12 64k 64k")
        # missing backing file (created, then removed)
        gone = h.create_qcow2(os.path.join(p, "gone.qcow2"), 2 * MiB)
        h.create_qcow2(os.path.join(p, "orphan.qcow2"), 2 * MiB, backing="gone.qcow2", backing_fmt="qcow2")
        os.unlink(gone)
        # loop: a -> b -> a, and self -> self
        h.create_qcow2(os.path.join(p, "loop-a.qcow2"), 1 * MiB)
        h.create_qcow2(os.path.join(p, "loop-b.qcow2"), 1 * MiB, backing="loop-a.qcow2", backing_fmt="qcow2")
        h.qemu_img("rebase", "-u", "-b", "loop-b.qcow2", "-F", "qcow2", os.path.join(p, "loop-a.qcow2"))
        h.create_qcow2(os.path.join(p, "self.qcow2"), 1 * MiB)
        h.qemu_img("rebase", "-u", "-b", "self.qcow2", "-F", "qcow2", os.path.join(p, "self.qcow2"))
        # a chain of 70 layers in deep/: d00 is the base; d69 is 70 deep
        deep = os.path.join(p, "deep")
        os.makedirs(deep)
        h.create_qcow2(os.path.join(deep, "d00.qcow2"), 1 * MiB)
        h.qemu_io(os.path.join(deep, "d00.qcow2"), "write -P 0x20 0 4k")
        for i in range(1, 70):
            h.create_qcow2(os.path.join(deep, "d%02d.qcow2" % i), 1 * MiB,
                           backing="d%02d.qcow2" % (i - 1), backing_fmt="qcow2", unsafe=True)
        h.qemu_io(os.path.join(deep, "d09.qcow2"), "write -P 0x29 8k 4k")
        # backing names that leave the pool: relative "..", absolute, through a
        # symlink inside the pool, and a json: pseudo-protocol
        secret = h.write_raw(os.path.join(cls.tmp, "secret.raw"), 1 * MiB, seed=99)
        h.create_qcow2(os.path.join(p, "esc-dotdot.qcow2"), 1 * MiB, backing="../secret.raw",
                       backing_fmt="raw")
        h.create_qcow2(os.path.join(p, "esc-abs.qcow2"), 1 * MiB, backing="/etc/passwd",
                       backing_fmt="raw", unsafe=True)
        os.makedirs(os.path.join(p, "links"))
        os.symlink(secret, os.path.join(p, "links", "inside.bin"))
        h.create_qcow2(os.path.join(p, "links", "esc-link.qcow2"), 1 * MiB, backing="inside.bin",
                       backing_fmt="raw")
        h.create_qcow2(os.path.join(p, "esc-json.qcow2"), 1 * MiB, unsafe=True, backing_fmt="raw",
                       backing='json:{"driver":"raw","file":{"driver":"file","filename":"%s"}}' % secret)
        cls.m = cls.mount()

    def test_backing_escapes_refused(self):
        for rel in ("esc-dotdot.qcow2", "esc-abs.qcow2", os.path.join("links", "esc-link.qcow2")):
            with self.subTest(image=rel):
                self.assertBroken(self.m, rel, (errno.EACCES,), other_ok=(self.good, "good.qcow2"))

    def test_backing_json_protocol_refused(self):
        # never parsed as a protocol: refused by policy, or simply not found as a file name
        self.assertBroken(self.m, "esc-json.qcow2", (errno.EACCES, errno.ENOENT, errno.EINVAL, errno.ENOTSUP),
                          other_ok=(self.good, "good.qcow2"))

    def test_missing_backing_file(self):
        info = self.assertBroken(self.m, "orphan.qcow2", (errno.ENOENT,), other_ok=(self.good, "good.qcow2"))
        self.assertIn("gone.qcow2", info["error"])

    def test_backing_loop(self):
        for n in ("loop-a.qcow2", "loop-b.qcow2"):
            self.assertBroken(self.m, n, (errno.EINVAL, errno.ELOOP, errno.EIO),
                              other_ok=(self.good, "good.qcow2"))

    def test_backing_self_loop(self):
        self.assertBroken(self.m, "self.qcow2", (errno.EINVAL, errno.ELOOP, errno.EIO),
                          other_ok=(self.good, "good.qcow2"))

    def test_shallow_chain_reads(self):
        # 10 layers: well within any depth limit
        self.assertViewMatches(self.m.path("deep", "d09.qcow2"), os.path.join(self.pool, "deep", "d09.qcow2"))
        self.assertEqual(len(os.listdir(self.m.path("deep", "d09.qcow2", "backing"))), 9)

    def test_too_deep_chain_refused(self):
        # 70 layers is past kvmfs's documented limit (kMaxChainDepth = 64).
        self.assertBroken(self.m, os.path.join("deep", "d69.qcow2"), (errno.EINVAL, errno.ELOOP, errno.EFBIG),
                          other_ok=(self.good, "good.qcow2"))

    def test_depth_limit_boundary(self):
        # kMaxChainDepth = 64 counts the top image: 64 layers read, 65 are refused.
        d63 = os.path.join(self.pool, "deep", "d63.qcow2")
        self.assertViewMatches(self.m.path("deep", "d63.qcow2"), d63, seek=False)
        self.assertEqual(len(os.listdir(self.m.path("deep", "d63.qcow2", "backing"))), 63)
        self.assertBroken(self.m, os.path.join("deep", "d64.qcow2"), (errno.EINVAL, errno.ELOOP, errno.EFBIG))

    def test_mount_survives(self):
        self.assertTrue(self.m.alive())
        self.assertViewMatches(self.m.path("good.qcow2"), self.good)


if __name__ == "__main__":
    h.main()
