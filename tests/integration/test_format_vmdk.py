#!/usr/bin/python3
"""VMDK: every subformat qemu-img makes (monolithicSparse, monolithicFlat,
twoGbMaxExtentSparse/Flat, streamOptimized, zeroed grains), a descriptor in a
file named .img, a parentFileNameHint overlay and a qcow2 overlay on a VMDK
base, read through the mount byte-exact with `qemu-img convert`, with
SEEK_DATA/SEEK_HOLE equal to `qemu-img map` and info.json equal to
`qemu-img info` (the vmdk keys included). Extent files are not listed; a
descriptor naming /etc/passwd or itself is listed with an error. Writes (dd,
fio --verify=crc32c) on the sparse and flat subformats, and whole new grains
written into a streamOptimized image (the writes QEMU takes there), leave
images that `qemu-img check` passes and `qemu-img compare` finds equal."""

import errno
import mmap
import os
import shutil
import subprocess

import kvmfs_harness as h
from kvmfs_harness import KiB, MiB

# Not a multiple of the 64 KiB grain.
SIZE = 5 * MiB + 7 * 512
SUBFORMATS = ("monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse",
              "twoGbMaxExtentFlat", "streamOptimized")
EXTENT_FILES = ("flat-flat.vmdk", "twoGbMaxExtentFlat-f001.vmdk",
                "twoGbMaxExtentSparse-s001.vmdk", "monolithicFlat-flat.vmdk", "desc-flat.vmdk")
FIO = shutil.which("fio")


def make_source(path):
    """Text, random, zero and hole regions, a random tail in the last grain."""
    with open(path, "wb") as f:
        f.truncate(SIZE)
        f.seek(0)
        f.write((b"kvmfs reads VMDK as QEMU does.\n" * 10000)[:300000])
        f.seek(512 * KiB)
        f.write(os.urandom(200 * KiB + 512))
        f.seek(1 * MiB)
        f.write(bytes(128 * KiB))
        f.seek(2 * MiB + 4096)
        f.write(b"U" * 41)
        f.seek(SIZE - 1000)
        f.write(os.urandom(1000))
    return path


def vmdk_data(info):
    return (info.get("format-specific") or {}).get("data", {})


class FormatVmdk(h.KvmfsTestCase):
    images = {}

    @classmethod
    def add(cls, name):
        p = os.path.join(cls.pool, name)
        cls.images[name] = p
        return p

    @classmethod
    def make_images(cls):
        cls.images = {}
        src = make_source(os.path.join(cls.work, "src.raw"))
        for sub in SUBFORMATS:
            h.qemu_img("convert", "-q", "-f", "raw", "-O", "vmdk", "-o", "subformat=" + sub, src,
                       cls.add(sub + ".vmdk"))
        # zeroed grains, unallocated grains and unaligned writes by qemu-io
        z = cls.add("zg.vmdk")
        h.qemu_img("create", "-q", "-f", "vmdk", "-o", "zeroed_grain=on", z, str(SIZE))
        h.qemu_io(z, "write -P 0x41 0 100k", "write -P 0x42 192k 64k", "write -z 192k 64k",
                  "write -z 512k 128k", "write -P 7 1000k 3k",
                  "write -P 9 %d 700" % (SIZE - 700), fmt="vmdk")
        # a monolithicFlat descriptor in a file named .img
        d = os.path.join(cls.pool, "desc.vmdk")
        h.qemu_img("convert", "-q", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicFlat",
                   src, d)
        os.rename(d, cls.add("desc.img"))
        # parentFileNameHint: an overlay of a monolithicSparse base
        base = cls.add("base.vmdk")
        h.qemu_img("convert", "-q", "-f", "raw", "-O", "vmdk", src, base)
        child = cls.add("child.vmdk")
        h.qemu_img("create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", child)
        h.qemu_io(child, "write -P 0x66 60k 10k", "write -P 0x67 3M 128k", fmt="vmdk")
        # a qcow2 overlay on a VMDK base (split sparse)
        qtop = cls.add("top.qcow2")
        h.create_qcow2(qtop, SIZE, backing="twoGbMaxExtentSparse.vmdk", backing_fmt="vmdk")
        h.qemu_io(qtop, "write -P 0x70 100k 200k")
        # hostile descriptors: a host file, and itself
        with open(os.path.join(cls.pool, "passwd.vmdk"), "w") as f:
            f.write('# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\n'
                    'createType="monolithicFlat"\n\nRW 8 FLAT "/etc/passwd" 0\n')
        with open(os.path.join(cls.pool, "loop.img"), "w") as f:
            f.write('# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\n'
                    'createType="twoGbMaxExtentSparse"\n\nRW 8 SPARSE "loop.img"\n')

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.m = cls.mount()

    def test_listing_hides_extents(self):
        names = set(os.listdir(self.m.path()))
        for n in self.images:
            self.assertIn(n, names)
        for n in EXTENT_FILES:
            if os.path.exists(os.path.join(self.pool, n)):
                self.assertNotIn(n, names, "extent file %s must not be listed" % n)
        self.assertIn("passwd.vmdk", names)

    def test_every_image_reads_as_qemu(self):
        for name, img in sorted(self.images.items()):
            with self.subTest(image=name):
                self.assertViewMatches(self.m.path(name), img)

    def test_info_json_matches_qemu_img(self):
        for name, img in sorted(self.images.items()):
            if not name.endswith((".vmdk", ".img")):
                continue
            with self.subTest(image=name):
                got = self.assertInfoMatches(self.m.path(name, "info.json"), img)
                want = h.qemu_info(img)
                gd, wd = vmdk_data(got), vmdk_data(want)
                for k in ("cid", "parent-cid", "create-type"):
                    self.assertEqual(gd.get(k), wd.get(k), "%s: %s" % (name, k))
                self.assertEqual(len(gd.get("extents", [])), len(wd["extents"]), name)
                for ge, we in zip(gd["extents"], wd["extents"]):
                    self.assertEqual(sorted(ge), sorted(we), name)
                    for k, v in we.items():
                        if k == "filename":
                            self.assertEqual(os.path.realpath(ge[k]), os.path.realpath(v), name)
                        else:
                            self.assertEqual(ge[k], v, "%s: extent %s" % (name, k))

    def test_backing_views(self):
        self.assertEqual(os.listdir(self.m.path("child.vmdk", "backing")), ["1-base.vmdk"])
        self.assertViewMatches(self.m.path("child.vmdk", "backing", "1-base.vmdk"),
                               self.images["base.vmdk"])
        self.assertInfoMatches(self.m.path("child.vmdk", "backing", "1-base.vmdk", "info.json"),
                               self.images["base.vmdk"])
        layer = self.m.path("top.qcow2", "backing", "1-twoGbMaxExtentSparse.vmdk")
        self.assertViewMatches(layer, self.images["twoGbMaxExtentSparse.vmdk"])
        info = h.read_json(self.m.path("top.qcow2", "info.json"))
        self.assertEqual(info.get("backing-filename-format"), "vmdk")
        # images without a parent have no backing/
        self.assertFalse(os.path.exists(self.m.path("monolithicFlat.vmdk", "backing")))

    def test_descriptor_naming_etc_passwd_is_refused(self):
        info = self.assertBroken(self.m, "passwd.vmdk", (errno.EACCES,),
                                 other_ok=(self.images["monolithicFlat.vmdk"], "monolithicFlat.vmdk"))
        self.assertIn("/etc/passwd", info["error"])

    def test_descriptor_naming_itself_is_refused(self):
        self.assertBroken(self.m, "loop.img", (errno.EIO,))


class WriteVmdk(h.KvmfsTestCase):
    """dd and fio through disk.raw on the subformats QEMU writes."""

    WRITABLE = ("monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse",
                "twoGbMaxExtentFlat")

    @classmethod
    def make_images(cls):
        cls.src = make_source(os.path.join(cls.work, "src.raw"))
        for sub in cls.WRITABLE:
            h.qemu_img("convert", "-q", "-f", "raw", "-O", "vmdk", "-o", "subformat=" + sub,
                       cls.src, os.path.join(cls.pool, sub + ".vmdk"))
        h.qemu_img("create", "-q", "-f", "vmdk", "-o", "zeroed_grain=on",
                   os.path.join(cls.pool, "zg.vmdk"), str(SIZE))
        h.qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized",
                   os.path.join(cls.pool, "so-empty.vmdk"), str(SIZE))
        base = os.path.join(cls.pool, "base.vmdk")
        h.qemu_img("convert", "-q", "-f", "raw", "-O", "vmdk", cls.src, base)
        h.qemu_img("create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk",
                   os.path.join(cls.pool, "child.vmdk"))

    def check_and_compare(self, names):
        """After unmount: qemu-img check clean, and equal to what kvmfs showed."""
        for name, copy in names:
            img = os.path.join(self.pool, name)
            rc, out = h.qemu_check(img, fmt="vmdk")
            self.assertEqual(rc, 0, "qemu-img check %s: %s" % (name, out))
            rc, out = h.qemu_compare_raw(img, copy, fmt="vmdk")
            self.assertEqual(rc, 0, "qemu-img compare %s: %s" % (name, out))

    def test_dd_and_fio_then_qemu_agrees(self):
        if FIO is None:
            self.skipTest("fio not installed")
        m = self.mount(options=("rw",), name="mnt-rw")
        copies = []
        for sub in self.WRITABLE + ("zg", "child"):
            name = sub + ".vmdk"
            disk = m.path(name, "disk.raw")
            with self.subTest(image=name):
                # dd: unaligned, across grains, and into the last partial grain
                for off, n, b in ((1234, 70000, 0x21), (SIZE - 3000, 3000, 0x22),
                                  (2 * MiB - 100, 200, 0x23)):
                    fd = os.open(disk, os.O_WRONLY)
                    try:
                        os.pwrite(fd, bytes([b]) * n, off)
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                subprocess.run(["dd", "if=/dev/urandom", "of=" + disk, "bs=64k", "seek=40",
                                "count=8", "conv=notrunc,fsync", "status=none"], check=True)
                argv = [FIO, "--name=v", "--ioengine=psync", "--rw=randwrite",
                        "--bsrange=512-128k", "--verify=crc32c", "--do_verify=1",
                        "--verify_fatal=1", "--verify_state_save=0", "--fallocate=none",
                        "--randseed=77", "--filename=" + disk, "--size=%d" % (2 * MiB),
                        "--offset=%d" % (2 * MiB + 1536)]
                p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                self.assertEqual(p.returncode, 0, " ".join(argv) + "\n" + p.stdout.decode()[-3000:])
                copy = os.path.join(self.work, name + ".raw")
                h.copy_file(disk, copy)
                copies.append((name, copy))
        # streamOptimized: whole new grains (O_DIRECT dd, 64 KiB = one grain), as QEMU
        so = m.path("so-empty.vmdk", "disk.raw")
        subprocess.run(["dd", "if=" + self.src, "of=" + so, "bs=64k", "count=20", "skip=3",
                        "seek=3", "oflag=direct", "conv=notrunc,fsync", "status=none"], check=True)
        fd = os.open(so, os.O_WRONLY | os.O_DIRECT)
        try:
            buf = mmap.mmap(-1, 64 * KiB)
            buf.write(b"y" * 64 * KiB)
            with self.assertRaises(OSError) as cm:  # a grain written already
                os.pwrite(fd, buf, 3 * 64 * KiB)
            self.assertEqual(cm.exception.errno, errno.EIO)
            with self.assertRaises(OSError) as cm:  # part of a grain
                os.pwrite(fd, memoryview(buf)[:4096], 40 * 64 * KiB + 4096)
            self.assertEqual(cm.exception.errno, errno.EINVAL)
        finally:
            os.close(fd)
        copy = os.path.join(self.work, "so-empty.raw")
        h.copy_file(so, copy)
        copies.append(("so-empty.vmdk", copy))
        with open(copy, "rb") as f, open(self.src, "rb") as g:
            f.seek(3 * 64 * KiB)
            g.seek(3 * 64 * KiB)
            self.assertEqual(f.read(20 * 64 * KiB), g.read(20 * 64 * KiB))
        self.unmount(m)
        self.check_and_compare(copies)
        # the base of child.vmdk is untouched
        rc, out = h.qemu_compare_raw(os.path.join(self.pool, "base.vmdk"), self.src, fmt="vmdk")
        self.assertEqual(rc, 0, out)


if __name__ == "__main__":
    h.main()
