#!/usr/bin/python3
"""Compressed writes (config `compress:`, issue 12): a pool with `compress: zlib`
mounted from a YAML config; dd of a few MiB of mixed data (text, zeros, random)
into the disk.raw of new qcow2 images made by qemu-img create; after unmount
`qemu-img check` is clean, `qemu-img compare` equal to the data, `qemu-img map`
shows compressed clusters (no host offset in 7.2's output), and the image is
about as small as `qemu-img convert -c` of the same data. A second pool without
the key stores the same data uncompressed; partial writes into a compressed
image fall back to normal clusters; a bad value is refused with file:line."""

import json
import os
import subprocess

import kvmfs_harness as h
from kvmfs_harness import MiB

SIZE = 6 * MiB


def mixed_data(seed):
    """SIZE bytes: compressible text, a zero MiB, random (incompressible) MiB."""
    parts = [h.gen_bytes(seed, 2 * MiB, compressible=True),
             bytes(MiB),
             h.gen_bytes(seed + 1, MiB),
             h.gen_bytes(seed + 2, 2 * MiB, compressible=True)]
    return b"".join(parts)


def dd(src, dst):
    subprocess.run(["dd", "if=" + src, "of=" + dst, "bs=1M", "conv=notrunc,fsync",
                    "status=none"], check=True, timeout=h.CMD_TIMEOUT_S)


def map_kinds(img):
    """Bytes qemu-img map shows as data with no host offset (compressed) and with one."""
    out = h.qemu_img("map", "--output=json", "-U", os.path.abspath(img)).stdout
    compressed = normal = 0
    for e in json.loads(out):
        if not e["data"]:
            continue
        if "offset" in e:
            normal += e["length"]
        else:
            compressed += e["length"]
    return compressed, normal


class CompressWrites(h.KvmfsTestCase):
    @classmethod
    def make_images(cls):
        cls.plain_pool = os.path.join(cls.tmp, "plain")
        os.makedirs(cls.plain_pool)
        cls.data = os.path.join(cls.work, "data.raw")
        with open(cls.data, "wb") as f:
            f.write(mixed_data(7))
        cls.z = h.create_qcow2(os.path.join(cls.pool, "z.qcow2"), SIZE)
        cls.zs = h.create_qcow2(os.path.join(cls.pool, "zs.qcow2"), SIZE, "compression_type=zstd")
        cls.part = h.create_qcow2(os.path.join(cls.pool, "part.qcow2"), SIZE)
        cls.plain = h.create_qcow2(os.path.join(cls.plain_pool, "p.qcow2"), SIZE)
        cls.cfg = os.path.join(cls.tmp, "kvmfs.yaml")
        with open(cls.cfg, "w") as f:
            f.write("pools:\n"
                    "  - name: packed\n"
                    "    path: %s\n"
                    "    compress: zlib\n"
                    "  - name: plain\n"
                    "    path: %s\n"
                    "    compress: none\n" % (cls.pool, cls.plain_pool))
        # The reference: qemu-img convert -c of the same data.
        cls.ref = os.path.join(cls.work, "ref.qcow2")
        h.qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", cls.data, cls.ref)

    def assertCleanAndEqual(self, img, raw):
        rc, out = h.qemu_check(img)
        self.assertEqual(rc, 0, out)
        self.assertNotIn("leaked", out)
        rc, out = h.qemu_compare_raw(img, raw)
        self.assertEqual(rc, 0, out)

    def test_dd_into_compressing_pool(self):
        m = self.mount(source=self.cfg, options=h.RW)
        try:
            dd(self.data, m.path("packed", "z.qcow2", "disk.raw"))
            dd(self.data, m.path("plain", "p.qcow2", "disk.raw"))
            with open(m.path("packed", "z.qcow2", "disk.raw"), "rb") as f:
                self.assertEqual(h.md5_bytes(f.read()), h.md5_file(self.data), "read back")
        finally:
            self.unmount(m)
        self.assertCleanAndEqual(self.z, self.data)
        self.assertCleanAndEqual(self.plain, self.data)
        compressed, normal = map_kinds(self.z)
        # Text clusters compressed; the random MiB does not shrink: normal.
        self.assertGreaterEqual(compressed, 4 * MiB - 256 * 1024, (compressed, normal))
        self.assertGreaterEqual(normal, MiB, (compressed, normal))
        self.assertEqual(map_kinds(self.plain)[0], 0, "the plain pool does not compress")
        z_size = os.path.getsize(self.z)
        ref_size = os.path.getsize(self.ref)
        plain_size = os.path.getsize(self.plain)
        print("sizes: kvmfs compress=zlib %d, qemu-img convert -c %d, uncompressed %d"
              % (z_size, ref_size, plain_size), flush=True)
        # Same codec, window and packing as QEMU: about the same size.
        self.assertLessEqual(z_size, ref_size * 11 // 10 + 256 * 1024)
        self.assertLess(z_size, plain_size * 3 // 4)
        p = h.run([h.QEMU_IMG, "compare", "-U", self.z, self.ref], check=False)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_zstd_image(self):
        m = self.mount(source=self.cfg, options=h.RW)
        try:
            dd(self.data, m.path("packed", "zs.qcow2", "disk.raw"))
            info = h.read_json(m.path("packed", "zs.qcow2", "info.json"))
            self.assertEqual(info["format-specific"]["data"]["compression-type"], "zstd")
        finally:
            self.unmount(m)
        self.assertCleanAndEqual(self.zs, self.data)
        self.assertGreater(map_kinds(self.zs)[0], 3 * MiB)

    def test_partial_writes_fall_back(self):
        model = bytearray(SIZE)
        m = self.mount(source=self.cfg, options=h.RW)
        try:
            disk = m.path("packed", "part.qcow2", "disk.raw")
            fd = os.open(disk, os.O_RDWR)
            try:
                whole = h.gen_bytes(11, 2 * MiB, compressible=True)
                os.pwrite(fd, whole, 0)
                model[0:len(whole)] = whole
                # Unaligned and sub-cluster writes, over compressed clusters too.
                for off, n, seed in ((12345, 4096, 12), (MiB + 100, 70000, 13),
                                     (4 * MiB + 512, 512, 14)):
                    b = h.gen_bytes(seed, n, compressible=True)
                    os.pwrite(fd, b, off)
                    model[off:off + n] = b
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            self.unmount(m)
        raw = os.path.join(self.work, "part.raw")
        with open(raw, "wb") as f:
            f.write(model)
        self.assertCleanAndEqual(self.part, raw)
        compressed, normal = map_kinds(self.part)
        self.assertGreater(compressed, 0)
        self.assertGreater(normal, 0)

    def test_bad_value_refused(self):
        bad = os.path.join(self.tmp, "bad.yaml")
        with open(bad, "w") as f:
            f.write("pools:\n  - name: a\n    path: %s\n    compress: lz4\n" % self.pool)
        mnt = os.path.join(self.tmp, "mnt-bad")
        os.makedirs(mnt, exist_ok=True)
        p = subprocess.run([h.kvmfs_bin(), "-f", bad, mnt], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("%s:4: pools[0].compress: expected none, zlib or zstd" % bad,
                      p.stderr.decode())
        self.assertFalse(h.is_mounted(mnt))


if __name__ == "__main__":
    h.main()
