#!/usr/bin/env python3
"""check.json for formats besides qcow2 that qemu-img 7.2 checks: what
`qemu-img check --output=json` says, key for key and in its order, on clean
images and on images damaged at test time.

VDI: QEMU's check looks at the block map only. Damage: two guest blocks naming
one data block, an entry past blocks_in_image, blocks_allocated off by one.

VMDK: QEMU's check looks up every grain; one past the end of its extent file
ends it with "Check failed: Invalid argument" (qemu-img prints no counts and
exits 1; check.json says the same under "error"). Clean images of four
subformats; damage: the last grain cut off, a flat extent file emptied.
"""

import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvmfs_harness as h  # noqa: E402

MiB = h.MiB

# VDI header fields (QEMU block/vdi.c VdiHeader, little-endian).
VDI_OFFSET_BMAP = 340
VDI_BLOCKS_ALLOCATED = 388


def vdi_bmap_offset(img):
    return struct.unpack("<I", h.peek(img, VDI_OFFSET_BMAP, 4))[0]


def poke_u32(img, offset, value):
    h.poke(img, offset, struct.pack("<I", value))


class VdiCheck(h.KvmfsTestCase):

    @classmethod
    def make_images(cls):
        p = cls.pool
        cls.images = {}

        def vdi(name, *opts):
            path = os.path.join(p, name)
            h.qemu_img("create", "-q", "-f", "vdi", *opts, path, str(8 * MiB))
            h.qemu_io(path, "write -P 1 0 1M", "write -P 2 3M 1M", "write -P 3 5M 512", fmt="vdi")
            cls.images[name] = path
            return path

        vdi("clean.vdi")
        vdi("static.vdi", "-o", "static=on")
        h.qemu_img("create", "-q", "-f", "vdi", os.path.join(p, "empty.vdi"), str(4 * MiB))
        cls.images["empty.vdi"] = os.path.join(p, "empty.vdi")
        # Guest block 5 names data block 0, as guest block 0 does.
        img = vdi("shared.vdi")
        poke_u32(img, vdi_bmap_offset(img) + 5 * 4, 0)
        # Guest block 3 names data block 100 of 8 (and the count no longer matches).
        img = vdi("past.vdi")
        poke_u32(img, vdi_bmap_offset(img) + 3 * 4, 100)
        # The header counts 2 allocated blocks; the map has 3.
        img = vdi("count.vdi")
        poke_u32(img, VDI_BLOCKS_ALLOCATED, 2)
        cls.m = cls.mount()

    def compare(self, name):
        img = self.images[name]
        p = h.qemu_img("check", "--output=json", img, check=False)
        want = json.loads(p.stdout)
        with open(self.m.path(name, "check.json"), "rb") as f:
            got = json.loads(f.read())
        want["filename"] = os.path.realpath(img)
        self.assertEqual(got, want, name)
        self.assertEqual(list(got), list(want), "key order of %s" % name)
        return p.returncode, got

    def test_clean(self):
        for name in ("clean.vdi", "static.vdi", "empty.vdi"):
            rc, got = self.compare(name)
            self.assertEqual(rc, 0, name)
            self.assertEqual(got["format"], "vdi")
            self.assertNotIn("corruptions", got)

    def test_block_shared_by_two_guest_blocks(self):
        rc, got = self.compare("shared.vdi")
        self.assertEqual((rc, got["corruptions"]), (2, 1))

    def test_entry_past_blocks_in_image(self):
        rc, got = self.compare("past.vdi")
        self.assertEqual((rc, got["corruptions"]), (2, 2))

    def test_blocks_allocated_mismatch(self):
        rc, got = self.compare("count.vdi")
        self.assertEqual((rc, got["corruptions"]), (2, 1))


class VmdkCheck(h.KvmfsTestCase):

    SUBFORMATS = ("monolithicSparse", "streamOptimized", "monolithicFlat", "twoGbMaxExtentSparse")

    @classmethod
    def make_images(cls):
        cls.images = {}
        for sub in cls.SUBFORMATS + ("truncated", "emptyflat"):
            path = os.path.join(cls.pool, sub + ".vmdk")
            kind = {"truncated": "monolithicSparse", "emptyflat": "monolithicFlat"}.get(sub, sub)
            h.qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=" + kind, path, str(4 * MiB))
            h.qemu_io(path, "write -P 1 0 64k", "write -P 2 3M 64k", fmt="vmdk")
            cls.images[sub] = path
        # The grain of 3M was appended last: cut it off.
        path = cls.images["truncated"]
        os.truncate(path, os.path.getsize(path) - 65536)
        os.truncate(os.path.join(cls.pool, "emptyflat-flat.vmdk"), 0)
        # Grain table 0 named far past the end of the file: QEMU reads zeros there
        # (its grains are unallocated) and finds nothing wrong.
        path = os.path.join(cls.pool, "gtfar.vmdk")
        h.qemu_img("create", "-q", "-f", "vmdk", path, str(4 * MiB))
        h.qemu_io(path, "write -P 1 0 64k", fmt="vmdk")
        gd_sector = struct.unpack("<Q", h.peek(path, 56, 8))[0]
        poke_u32(path, gd_sector * 512, 0x7fffffff)
        cls.images["gtfar"] = path
        cls.m = cls.mount()

    def qemu_check(self, name):
        img = self.images[name]
        return h.qemu_img("check", "--output=json", img, check=False), os.path.realpath(img)

    def test_clean(self):
        for name in self.SUBFORMATS + ("gtfar",):
            p, path = self.qemu_check(name)
            self.assertEqual(p.returncode, 0, name)
            want = json.loads(p.stdout)
            want["filename"] = path
            with open(self.m.path(name + ".vmdk", "check.json"), "rb") as f:
                got = json.loads(f.read())
            self.assertEqual(got, want, name)
            self.assertEqual(list(got), list(want), "key order of %s" % name)

    def test_grain_past_end_of_file(self):
        for name in ("truncated", "emptyflat"):
            p, path = self.qemu_check(name)
            self.assertEqual(p.returncode, 1, name)
            self.assertEqual(p.stdout.strip(), "", name)
            self.assertIn("Check failed: Invalid argument", p.stderr, name)
            got = h.read_json(self.m.path(name + ".vmdk", "check.json"))
            self.assertEqual(got["error"], "Check failed: Invalid argument", (name, got))
            self.assertEqual((got["filename"], got["format"]), (path, "vmdk"))


if __name__ == "__main__":
    h.main()
