#!/usr/bin/python3
"""qcow (v1) and VDI through the mount.

Reading: qcow images (converted, compressed cluster by cluster, over a qcow2
backing file) and VDI images (dynamic, static, written by qemu-io, odd sizes),
a qcow2 overlay on a VDI base; every disk.raw and backing view byte-exact with
`qemu-img convert`, SEEK_DATA/SEEK_HOLE equal to `qemu-img map`, info.json equal
to `qemu-img info`. Broken headers are listed with an "error" and give EIO (an
AES qcow without a key: EACCES).

Writing: dd and `fio --verify=crc32c` through disk.raw of each writable shape;
after a clean unmount `qemu-img check` (VDI; qcow has no check) is clean,
`qemu-img compare` finds the image equal to what kvmfs read back, bytes outside
the writes are unchanged and backing files untouched.
"""

import errno
import os
import random
import struct
import subprocess

import kvmfs_harness as h
from kvmfs_harness import KiB, MiB


def mixed_raw(path, size, seed):
    """size bytes of zero, text, random and never-written (host hole) regions."""
    rng = random.Random(seed)
    text = b"kvmfs reads qcow and vdi images through FUSE; "
    with open(path, "wb") as f:
        f.truncate(size)
        off = 0
        while off < size:
            n = min(size - off, rng.randrange(3000, 300000))
            kind = rng.randrange(4)
            if kind == 1:
                f.seek(off)
                f.write((text * (n // len(text) + 2))[off % len(text):off % len(text) + n])
            elif kind == 2:
                f.seek(off)
                f.write(rng.randbytes(n))
            elif kind == 3:
                f.seek(off)
                f.write(bytes(n))  # zeros, written
            off += n  # kind 0: left a hole
    return path


def compressed_qcow(src, img, cwd):
    """A qcow of src (size a multiple of 512) with every cluster written by
    `qemu-io write -c` (qemu-img convert -c -O qcow fails in QEMU 7.2)."""
    with open(src, "rb") as f:
        data = f.read()
    assert len(data) % 512 == 0
    h.qemu_img("create", "-q", "-f", "qcow", img, str(len(data)))
    cmds = []
    for i, off in enumerate(range(0, len(data), 4096)):
        chunk = data[off:off + 4096]
        if not chunk.strip(b"\0"):
            continue
        name = os.path.join(cwd, "chunk.%d" % i)
        with open(name, "wb") as g:
            g.write(chunk)
        cmds.append("write -q -c -s %s %d %d" % (name, off, len(chunk)))
    for k in range(0, len(cmds), 400):
        h.qemu_io(img, *cmds[k:k + 400], fmt="qcow")
    for n in os.listdir(cwd):
        if n.startswith("chunk."):
            os.unlink(os.path.join(cwd, n))
    return img


class ReadQcowVdi(h.KvmfsTestCase):
    images = {}

    @classmethod
    def add(cls, name):
        p = os.path.join(cls.pool, name)
        cls.images[name] = p
        return p

    @classmethod
    def make_images(cls):
        cls.images = {}
        src = mixed_raw(os.path.join(cls.work, "mixed.raw"), 5 * MiB + 12345, 1)
        src512 = mixed_raw(os.path.join(cls.work, "mixed512.raw"), 3 * MiB + 7 * 512, 2)
        comp = h.write_raw(os.path.join(cls.work, "comp.raw"), 2 * MiB + 1536, 3, compressible=True)
        # VDI: dynamic, static, written by qemu-io (odd size, zero writes)
        h.qemu_img("convert", "-q", "-f", "raw", "-O", "vdi", src, cls.add("dyn.vdi"))
        h.qemu_img("convert", "-q", "-f", "raw", "-O", "vdi", "-o", "static=on", src512,
                   cls.add("static.vdi"))
        p = cls.add("io.vdi")
        h.qemu_img("create", "-q", "-f", "vdi", p, "7340000")
        h.qemu_io(p, "write -P 0x11 1000 5000", "write -P 0x22 2M 1M", "write -P 0x33 3M 100k",
                  "write -z 5M 4k", "write -P 0x44 7339520 512", fmt="vdi")
        # qcow: converted, compressed, over a qcow2 backing file
        h.qemu_img("convert", "-q", "-f", "raw", "-O", "qcow", src, cls.add("plain.qcow"))
        compressed_qcow(comp, cls.add("comp.qcow"), cls.work)
        base = h.create_qcow2(cls.add("base.qcow2"), 3 * MiB)
        h.qemu_io(base, "write -P 0x61 0 3M", "write -z 1M 64k")
        p = cls.add("over.qcow")
        h.qemu_img("create", "-q", "-f", "qcow", "-b", "base.qcow2", "-F", "qcow2", p, str(4 * MiB),
                   cwd=cls.pool)
        h.qemu_io(p, "write -P 0x62 1000 5000", "write -P 0x63 1M 4k", "write -P 0x64 3M 4k", fmt="qcow")
        # a qcow2 overlay on a VDI base
        h.qemu_img("convert", "-q", "-f", "raw", "-O", "vdi", src512, cls.add("vbase.vdi"))
        p = h.create_qcow2(cls.add("ov.qcow2"), 3 * MiB + 7 * 512, backing="vbase.vdi", backing_fmt="vdi")
        h.qemu_io(p, "write -P 0x55 100k 200k", "write -z 2M 64k")
        # broken headers
        p = cls.add("badbits.qcow")
        h.qemu_img("create", "-q", "-f", "qcow", p, "1M")
        h.poke(p, 32, b"\x1f")
        p = cls.add("badl1.qcow")
        h.qemu_img("create", "-q", "-f", "qcow", p, "1M")
        h.poke(p, 40, struct.pack(">Q", 1 << 30))
        with open(cls.add("short.qcow"), "wb") as f:
            f.write(b"QFI\xfb\0\0\0\1" + bytes(20))
        p = cls.add("badmap.vdi")
        h.qemu_img("create", "-q", "-f", "vdi", p, "4M")
        h.poke(p, 340, struct.pack("<I", 0))  # block map over the header
        p = cls.add("badsize.vdi")
        h.qemu_img("create", "-q", "-f", "vdi", p, "4M")
        h.poke(p, 368, struct.pack("<Q", 64 * MiB))  # more than its 4 blocks
        h.qemu_img("create", "-q", "--object", "secret,id=s0,data=abc", "-f", "qcow", "-o",
                   "encrypt.format=aes,encrypt.key-secret=s0", cls.add("aes.qcow"), "1M")
        cls.m = cls.mount()

    def check(self, name, fmt=None):
        img = self.images[name]
        self.assertIn(name, os.listdir(self.m.mnt))
        view = self.m.path(name)
        self.assertViewMatches(view, img, fmt=fmt)
        info = self.assertInfoMatches(os.path.join(view, "info.json"), img, fmt=fmt)
        self.assertEqual(info["format"], fmt or os.path.splitext(name)[1][1:])
        return info

    def test_vdi_dynamic(self): self.check("dyn.vdi")
    def test_vdi_static(self): self.check("static.vdi")
    def test_vdi_written_by_qemu_io(self): self.check("io.vdi")
    def test_qcow_converted(self): self.check("plain.qcow")

    def test_qcow_compressed(self):
        # Recipe sanity: the clusters really are compressed.
        self.assertLess(os.path.getsize(self.images["comp.qcow"]), 2 * MiB)
        self.check("comp.qcow")

    def test_qcow_over_qcow2(self):
        info = self.check("over.qcow")
        self.assertEqual(info["backing-filename"], "base.qcow2")
        self.assertEqual(os.listdir(self.m.path("over.qcow", "backing")), ["1-base.qcow2"])
        b = self.m.path("over.qcow", "backing", "1-base.qcow2")
        self.assertViewMatches(b, self.images["base.qcow2"])
        self.assertInfoMatches(os.path.join(b, "info.json"), self.images["base.qcow2"])

    def test_qcow2_over_vdi(self):
        self.check("ov.qcow2")
        self.assertEqual(os.listdir(self.m.path("ov.qcow2", "backing")), ["1-vbase.vdi"])
        b = self.m.path("ov.qcow2", "backing", "1-vbase.vdi")
        self.assertViewMatches(b, self.images["vbase.vdi"])
        self.assertInfoMatches(os.path.join(b, "info.json"), self.images["vbase.vdi"])

    def test_no_snapshots_dir_content(self):
        for name in ("dyn.vdi", "plain.qcow"):
            entries = os.listdir(self.m.path(name))
            self.assertIn("disk.raw", entries)
            if "snapshots" in entries:
                self.assertEqual(os.listdir(self.m.path(name, "snapshots")), [])

    def test_broken_headers(self):
        ok = (self.images["dyn.vdi"], "dyn.vdi")
        # (image, field named in the error, whether QEMU refuses it too: an L1
        # table past the end of the file or a block map over the header are
        # kvmfs's own checks, QEMU reads zeros or header bytes there)
        for name, field, qemu_refuses in (("badbits.qcow", "cluster_bits", True),
                                          ("badl1.qcow", "l1_table_offset", False),
                                          ("short.qcow", "header", True),
                                          ("badmap.vdi", "block map", False),
                                          ("badsize.vdi", "disk size", True)):
            with self.subTest(name=name):
                info = self.assertBroken(self.m, name, (errno.EIO,), other_ok=ok)
                self.assertIn(field, info["error"])
                rc = h.qemu_img("info", self.images[name], check=False).returncode
                self.assertEqual(rc != 0, qemu_refuses, "qemu-img info %s rc=%d" % (name, rc))

    def test_aes_qcow_without_key(self):
        info = self.assertBroken(self.m, "aes.qcow", (errno.EACCES,))
        self.assertIn("key", info["error"])

    def test_odirect_and_small_reads(self):
        for name in ("dyn.vdi", "comp.qcow", "over.qcow"):
            disk = self.m.path(name, "disk.raw")
            p = subprocess.run("dd if='%s' iflag=direct bs=64k status=none | md5sum" % disk, shell=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(p.stdout.split()[0], h.oracle_md5(self.images[name], self.work), name)
            ref = h.oracle_raw(self.images[name], self.work)
            fd = os.open(disk, os.O_RDONLY)
            try:
                with open(ref, "rb") as r:
                    size = os.path.getsize(ref)
                    for off in (0, 1, 511, 4095, 4097, MiB - 1, size - 497, size - 1):
                        r.seek(off)
                        self.assertEqual(os.pread(fd, 497, off), r.read(497), "%s pread at %d" % (name, off))
            finally:
                os.close(fd)


# ---- writing -------------------------------------------------------------

SIZE = 32 * MiB + 3 * 512  # odd: the last qcow cluster and VDI block are partial
JOB_SIZE = 8 * MiB
JOBS = (("direct", 1, 1 * MiB + 1536), ("buffered", 0, 18 * MiB + 3584))
DD_WRITES = ((5000, 300, 0x41), (10 * MiB - 100, 70 * KiB, 0x42), (SIZE - 1000, 1000, 0x43))


def untouched_ranges():
    out, pos = [], 0
    spans = sorted([(off, off + JOB_SIZE) for _, _, off in JOBS] +
                   [(off, off + n) for off, n, _ in DD_WRITES])
    for s, e in spans:
        if s > pos:
            out.append((pos, s))
        pos = max(pos, e)
    if pos < SIZE:
        out.append((pos, SIZE))
    return out


class WriteQcowVdi(h.KvmfsTestCase):
    seed = 2000

    def new_pool(self, shape):
        pool = os.path.join(self.tmp, "pool-" + shape)
        os.makedirs(pool)
        return pool

    def prefill(self, img, fmt):
        h.qemu_io(img, "write -P 0x11 0 3M", "write -P 0x22 1000k 2M", "write -P 0x33 17M 4M",
                  "write -P 0x44 26M 3M", fmt=fmt)

    def run_shape(self, shape, pool, img, fmt, bases=()):
        WriteQcowVdi.seed += 1
        name = os.path.basename(img)
        orig = h.copy_file(h.oracle_raw(img, self.work, fmt=fmt), os.path.join(self.work, shape + ".orig"))
        base_md5 = {b: h.md5_file(b) for b in bases}
        m = h.Mount(pool, os.path.join(self.tmp, "mnt-" + shape), options=h.RW)
        self.mounts.append(m)
        m.start()
        try:
            disk = m.path(name, "disk.raw")
            self.assertEqual(os.stat(disk).st_size, SIZE)
            for off, n, pat in DD_WRITES:
                p = subprocess.run(["dd", "of=" + disk, "bs=%d" % n, "seek=%d" % off, "count=1",
                                    "iflag=fullblock", "oflag=seek_bytes", "conv=notrunc,fsync", "status=none"],
                                   input=bytes([pat]) * n, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, timeout=60)
                self.assertEqual(p.returncode, 0, p.stderr)
            argv = [h.FIO, "--ioengine=psync", "--rw=randwrite", "--bsrange=512-192k",
                    "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0",
                    "--fallocate=none", "--randseed=%d" % self.seed, "--filename=" + disk,
                    "--size=%d" % JOB_SIZE]
            for jname, direct, off in JOBS:
                argv += ["--name=" + jname, "--direct=%d" % direct, "--offset=%d" % off]
            p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=self.work, timeout=300, stdin=subprocess.DEVNULL)
            self.assertEqual(p.returncode, 0, "fio failed on %s (rc=%d)\n%s\n%s\nkvmfs log:\n%s" % (
                shape, p.returncode, " ".join(argv), p.stdout[-4000:], m.log_text()[-3000:]))
            self.assertNotIn("verify:", p.stdout, p.stdout[-4000:])
            # ftruncate to grow: neither format can (QEMU's drivers cannot either)
            fd = os.open(disk, os.O_WRONLY)
            try:
                with self.assertRaises(OSError) as cm:
                    os.ftruncate(fd, SIZE + MiB)
                self.assertIn(cm.exception.errno, (errno.ENOTSUP, errno.EOPNOTSUPP), cm.exception)
            finally:
                os.close(fd)
            self.assertTrue(m.alive(), "kvmfs died:\n" + m.log_text()[-3000:])
            copy = h.copy_file(disk, os.path.join(self.work, shape + ".copy"))
        finally:
            m.unmount()
            self.mounts.remove(m)
        self.assertEqual(m.proc.returncode, 0, "%s: kvmfs exit status\n%s" % (shape, m.log_text()[-3000:]))
        with open(copy, "rb") as g:
            for off, n, pat in DD_WRITES:
                g.seek(off)
                self.assertEqual(g.read(n), bytes([pat]) * n, "%s: dd write at %d" % (shape, off))
        with open(orig, "rb") as f, open(copy, "rb") as g:
            for s, e in untouched_ranges():
                f.seek(s)
                g.seek(s)
                a, b = f.read(e - s), g.read(e - s)
                if a != b:
                    i = next(k for k in range(len(a)) if a[k] != b[k])
                    self.fail("%s: byte %d (outside the writes) changed: 0x%02x -> 0x%02x" % (
                        shape, s + i, a[i], b[i]))
        if fmt == "vdi":
            rc, out = h.qemu_check(img, fmt=fmt)
            self.assertEqual(rc, 0, "%s: qemu-img check rc=%d\n%s" % (shape, rc, out))
        rc, out = h.qemu_compare_raw(img, copy, fmt=fmt)
        self.assertEqual(rc, 0, "%s: qemu-img compare vs bytes read through kvmfs rc=%d\n%s" % (
            shape, rc, out))
        for b, want in base_md5.items():
            self.assertEqual(h.md5_file(b), want, "%s: backing file %s modified" % (shape, b))

    def test_qcow_plain(self):
        pool = self.new_pool("qcow")
        img = os.path.join(pool, "vm.qcow")
        h.qemu_img("create", "-q", "-f", "qcow", img, str(SIZE))
        self.prefill(img, "qcow")
        self.run_shape("qcow", pool, img, "qcow")

    def test_qcow_compressed(self):
        pool = self.new_pool("qcowc")
        src = h.write_raw(os.path.join(self.work, "qcowc.src"), SIZE, seed=7, compressible=True)
        img = compressed_qcow(src, os.path.join(pool, "vm.qcow"), self.work)
        os.unlink(src)
        self.run_shape("qcowc", pool, img, "qcow")

    def test_qcow_over_qcow2(self):
        pool = self.new_pool("qcowb")
        base = h.create_qcow2(os.path.join(pool, "base.qcow2"), 30 * MiB)  # shorter than the top
        self.prefill(base, "qcow2")
        img = os.path.join(pool, "vm.qcow")
        h.qemu_img("create", "-q", "-f", "qcow", "-b", "base.qcow2", "-F", "qcow2", img, str(SIZE),
                   cwd=pool)
        h.qemu_io(img, "write -P 0x71 2M 100k", "write -P 0x72 20M 1M", fmt="qcow")
        self.run_shape("qcowb", pool, img, "qcow", bases=[base])

    def test_vdi_dynamic(self):
        pool = self.new_pool("vdid")
        img = os.path.join(pool, "vm.vdi")
        h.qemu_img("create", "-q", "-f", "vdi", img, str(SIZE))
        self.prefill(img, "vdi")
        self.run_shape("vdid", pool, img, "vdi")

    def test_vdi_static(self):
        pool = self.new_pool("vdis")
        img = os.path.join(pool, "vm.vdi")
        h.qemu_img("create", "-q", "-f", "vdi", "-o", "static=on", img, str(SIZE))
        self.prefill(img, "vdi")
        self.run_shape("vdis", pool, img, "vdi")

    def test_qcow2_overlay_on_vdi_base(self):
        # The writes go to the qcow2 top; the VDI base stays as it was.
        pool = self.new_pool("ovl")
        base = os.path.join(pool, "base.vdi")
        h.qemu_img("create", "-q", "-f", "vdi", base, str(SIZE))
        self.prefill(base, "vdi")
        img = h.create_qcow2(os.path.join(pool, "vm.qcow2"), SIZE, backing="base.vdi", backing_fmt="vdi")
        self.run_shape_qcow2(pool, img, base)

    def run_shape_qcow2(self, pool, img, base):
        m = h.Mount(pool, os.path.join(self.tmp, "mnt-ovl"), options=h.RW)
        self.mounts.append(m)
        m.start()
        try:
            disk = m.path("vm.qcow2", "disk.raw")
            p = subprocess.run(["dd", "of=" + disk, "bs=4096", "seek=1000", "count=10", "conv=notrunc",
                                "status=none"], input=b"\x5e" * 40960, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)
            # the VDI base is read-only in backing/
            self.assertEqual(h.open_err(m.path("vm.qcow2", "backing", "1-base.vdi", "disk.raw"), os.O_WRONLY),
                             errno.EROFS)
            copy = h.copy_file(disk, os.path.join(self.work, "ovl.copy"))
        finally:
            m.unmount()
            self.mounts.remove(m)
        rc, out = h.qemu_check(base, fmt="vdi")
        self.assertEqual(rc, 0, out)
        rc, out = h.qemu_check(img)
        self.assertEqual(rc, 0, out)
        rc, out = h.qemu_compare_raw(img, copy)
        self.assertEqual(rc, 0, out)


if __name__ == "__main__":
    h.main()
