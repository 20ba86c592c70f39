#!/usr/bin/python3
"""Internal snapshots: snapshots/<name>/ views equal `qemu-img convert -l
snapshot.name=NAME`, names escaped as the contract says, info.json snapshots."""

import errno
import os

import kvmfs_harness as h
from kvmfs_harness import MiB

SIZE = 4 * MiB


class Snapshots(h.KvmfsTestCase):
    @classmethod
    def make_images(cls):
        cls.img = h.create_qcow2(os.path.join(cls.pool, "vm.qcow2"), SIZE, "cluster_size=64k")
        h.qemu_io(cls.img, "write -P 0x01 0 1M")
        h.qemu_img("snapshot", "-c", "first", cls.img)                 # id 1
        h.qemu_io(cls.img, "write -P 0x02 512k 1M", "write -P 0x03 3M 4k")
        h.qemu_img("snapshot", "-c", "a/b%c", cls.img)                 # id 2 -> a%2Fb%25c
        h.qemu_io(cls.img, "write -z 0 64k", "discard 3M 64k", "write -P 0x04 2M 8k")
        h.qemu_img("snapshot", "-c", "..", cls.img)                    # id 3 -> "3"
        h.qemu_img("snapshot", "-c", "", cls.img)                      # id 4 -> "4"
        h.qemu_img("snapshot", "-c", ".", cls.img)                     # id 5 -> "5"
        h.qemu_io(cls.img, "write -P 0x05 1M 64k")                     # current state differs
        # v2 image with a snapshot, small clusters
        cls.v2 = h.create_qcow2(os.path.join(cls.pool, "old.qcow2"), SIZE, "compat=0.10", "cluster_size=4k")
        h.qemu_io(cls.v2, "write -P 0x06 0 128k")
        h.qemu_img("snapshot", "-c", "before", cls.v2)
        h.qemu_io(cls.v2, "write -P 0x07 64k 128k")
        # snapshot in an overlay: the snapshot view reads through the backing file
        cls.base = h.create_qcow2(os.path.join(cls.pool, "base.qcow2"), SIZE)
        h.qemu_io(cls.base, "write -P 0x08 0 4M")
        cls.ovl = h.create_qcow2(os.path.join(cls.pool, "ovl.qcow2"), SIZE, backing="base.qcow2",
                                 backing_fmt="qcow2")
        h.qemu_io(cls.ovl, "write -P 0x09 1M 64k")
        h.qemu_img("snapshot", "-c", "s", cls.ovl)
        h.qemu_io(cls.ovl, "write -P 0x0a 1M 64k", "write -P 0x0b 0 4k")
        cls.m = cls.mount()

    def test_listing_escaped(self):
        self.assertEqual(sorted(os.listdir(self.m.path("vm.qcow2", "snapshots"))),
                         sorted(["first", "a%2Fb%25c", "3", "4", "5"]))

    def test_image_dir_listing(self):
        self.assertEqual(sorted(os.listdir(self.m.path("vm.qcow2"))), ["check.json", "disk.raw", "info.json", "snapshots"])

    def test_current_state(self):
        self.assertViewMatches(self.m.path("vm.qcow2"), self.img)

    def test_info(self):
        info = self.assertInfoMatches(self.m.path("vm.qcow2", "info.json"), self.img)
        self.assertEqual([s["name"] for s in info["snapshots"]], ["first", "a/b%c", "..", "", "."])

    def check_snap(self, dirname, name, img=None):
        img = img or self.img
        view = self.m.path(os.path.basename(img), "snapshots", dirname)
        self.assertViewMatches(view, img, snapshot=name)
        info = h.read_json(os.path.join(view, "info.json"))
        self.assertNotIn("error", info)
        self.assertEqual(info.get("virtual-size"), os.path.getsize(h.oracle_raw(img, self.work, name)))

    def test_snapshot_plain_name(self): self.check_snap("first", "first")
    def test_snapshot_escaped_name(self): self.check_snap("a%2Fb%25c", "a/b%c")

    def test_snapshot_dotdot_as_id(self):
        self.check_snap("3", "..")

    def test_snapshot_empty_as_id(self):
        # qemu-img cannot select an empty name with snapshot.name=; select by id.
        view = self.m.path("vm.qcow2", "snapshots", "4")
        ref = h.run([h.QEMU_IMG, "convert", "-U", "-O", "raw", "-l", "snapshot.id=4", self.img,
                     os.path.join(self.work, "snap4.raw")])
        self.assertEqual(h.md5_file(os.path.join(view, "disk.raw")),
                         h.md5_file(os.path.join(self.work, "snap4.raw")))

    def test_snapshot_dot_as_id(self): self.check_snap("5", ".")

    def test_snapshots_differ(self):
        # recipe sanity: the states really differ, so the views prove something
        sums = {h.oracle_md5(self.img, self.work, s) for s in ("first", "a/b%c", "..")}
        sums.add(h.oracle_md5(self.img, self.work))
        self.assertEqual(len(sums), 4)

    def test_snapshot_view_readonly(self):
        with self.assertRaises(OSError) as cm:
            os.open(self.m.path("vm.qcow2", "snapshots", "first", "disk.raw"), os.O_WRONLY)
        self.assertEqual(cm.exception.errno, errno.EROFS)

    def test_unknown_snapshot(self):
        with self.assertRaises(FileNotFoundError):
            os.stat(self.m.path("vm.qcow2", "snapshots", "nope", "disk.raw"))

    def test_v2_snapshot(self):
        self.assertViewMatches(self.m.path("old.qcow2"), self.v2)
        self.assertInfoMatches(self.m.path("old.qcow2", "info.json"), self.v2)
        self.check_snap("before", "before", img=self.v2)

    def test_snapshot_in_overlay(self):
        self.assertViewMatches(self.m.path("ovl.qcow2"), self.ovl)
        self.check_snap("s", "s", img=self.ovl)
        self.assertInfoMatches(self.m.path("ovl.qcow2", "info.json"), self.ovl)

    def test_no_snapshots_dir_content_for_plain(self):
        # an image without snapshots: snapshots/ absent or empty, never an error
        p = self.m.path("base.qcow2", "snapshots")
        if os.path.exists(p):
            self.assertEqual(os.listdir(p), [])


if __name__ == "__main__":
    h.main()
