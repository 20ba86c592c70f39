#!/usr/bin/python3
"""fallocate, ftruncate and read-only views on read-write mounts.

- `fallocate -p` (PUNCH_HOLE) and `fallocate -z` (ZERO_RANGE), aligned and not, on
  plain, overlay (the backing file must not show through) and raw images: the range
  reads back as zeros, the rest is unchanged, and after unmount QEMU reads the same
  bytes and `qemu-img check` exits 0.
- ftruncate to a larger size grows the disk (`qemu-img info` virtual-size afterwards),
  to a smaller one fails with EINVAL and changes nothing.
- EROFS: any write open on a `-o ro` mount, of snapshots/*/disk.raw, of
  backing/*/disk.raw, and of images in a `readonly: true` pool.
"""

import errno
import mmap
import os
import subprocess

import kvmfs_harness as h
from kvmfs_harness import KiB, MiB

SIZE = 16 * MiB
FALLOCATE = "/usr/bin/fallocate"

# (mode flag, offset, length): aligned and unaligned, inside allocated data, across
# the allocated/unallocated edge, and a range wholly inside one cluster
RANGES = [("-p", 1 * MiB, 1 * MiB), ("-z", 3 * MiB, 256 * KiB), ("-p", 5 * MiB + 1000, 70000),
          ("-z", 6 * MiB + 512, 3 * 65536 + 4096), ("-p", 8 * MiB - 64 * KiB, 192 * KiB),
          ("-z", 10 * MiB + 100, 300), ("-p", 11 * MiB + 4096, 512)]


def fallocate(flag, off, n, path):
    return subprocess.run([FALLOCATE, flag, "-o", str(off), "-l", str(n), path],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)


def mmap_buf(data):
    """An anonymous page-aligned buffer holding data (O_DIRECT needs aligned memory)."""
    m = mmap.mmap(-1, len(data))
    m.write(bytes(data))
    return m


def read_all(path):
    with open(path, "rb") as f:
        return f.read()


class WriteMisc(h.KvmfsTestCase):
    @classmethod
    def make_images(cls):
        cls.imgs = {}
        for name, opts in (("plain.qcow2", ("cluster_size=64k",)), ("small.qcow2", ("cluster_size=4k",)),
                           ("v2.qcow2", ("compat=0.10",)), ("grow.qcow2", ()), ("shrink.qcow2", ())):
            cls.imgs[name] = h.create_qcow2(os.path.join(cls.pool, name), SIZE, *opts)
            h.qemu_io(cls.imgs[name], "write -P 0x21 0 12M", "write -P 0x22 14M 1M")
        base = h.create_qcow2(os.path.join(cls.pool, "base.qcow2"), SIZE)
        h.qemu_io(base, "write -P 0x31 0 16M")
        cls.imgs["base.qcow2"] = base
        for name, opts in (("ovl.qcow2", ("cluster_size=64k",)), ("ovlv2.qcow2", ("compat=0.10",)),
                           ("ovlgrow.qcow2", ())):
            cls.imgs[name] = h.create_qcow2(os.path.join(cls.pool, name), SIZE, *opts,
                                            backing="base.qcow2", backing_fmt="qcow2")
            h.qemu_io(cls.imgs[name], "write -P 0x41 1M 6M", "write -P 0x42 10M 64k")
        cls.imgs["r.raw"] = h.write_raw(os.path.join(cls.pool, "r.raw"), SIZE, seed=8)
        cls.imgs["rgrow.raw"] = h.write_raw(os.path.join(cls.pool, "rgrow.raw"), SIZE, seed=9)
        h.qemu_img("snapshot", "-c", "s", cls.imgs["plain.qcow2"])
        cls.orig = {n: read_all(h.oracle_raw(p, cls.work, fmt="raw" if n.endswith(".raw") else None))
                    for n, p in cls.imgs.items()}
        # a YAML config with a read-only pool over the same folder
        cls.cfg = os.path.join(cls.work, "ro.yaml")
        with open(cls.cfg, "w") as f:
            f.write("pools:\n  - name: p\n    path: %s\n    readonly: true\n" % cls.pool)

    def fmt(self, name):
        return "raw" if name.endswith(".raw") else "qcow2"

    def check_after_unmount(self, name, want):
        img = self.imgs[name]
        if self.fmt(name) == "qcow2":
            rc, out = h.qemu_check(img)
            self.assertEqual(rc, 0, "qemu-img check %s rc=%d\n%s" % (name, rc, out))
        fmt = "raw" if name.endswith(".raw") else None
        h._oracle_cache.pop((os.path.realpath(img), None, fmt), None)
        got = read_all(h.oracle_raw(img, self.work, fmt=fmt))
        self.assertEqual(len(got), len(want), "%s: size after unmount" % name)
        if got != want:
            i = next(k for k in range(len(want)) if got[k] != want[k])
            self.fail("%s: qemu-img convert byte %d is 0x%02x, want 0x%02x" % (name, i, got[i], want[i]))

    # ---- fallocate ------------------------------------------------------------

    def punch_and_zero(self, name, may_refuse=False):
        want = bytearray(self.orig[name])
        m = self.mount(options=h.RW, name="mnt-f-" + name)
        try:
            disk = m.path(name, "disk.raw")
            for flag, off, n in RANGES:
                p = fallocate(flag, off, n, disk)
                if p.returncode != 0 and may_refuse and "not supported" in p.stdout:
                    continue  # EOPNOTSUPP is honest; returning non-zero data is not
                self.assertEqual(p.returncode, 0, "fallocate %s -o %d -l %d %s: %s" % (flag, off, n, name, p.stdout))
                want[off:off + n] = bytes(n)
                with open(disk, "rb") as f:
                    f.seek(off)
                    got = f.read(n)
                self.assertEqual(got, bytes(n), "%s: fallocate %s -o %d -l %d does not read back zeros" % (
                    name, flag, off, n))
            self.assertEqual(os.path.getsize(disk), SIZE, "fallocate changed the size")
            with open(disk, "rb") as f:
                got = f.read()
            if got != want:
                i = next(k for k in range(len(want)) if got[k] != want[k])
                self.fail("%s: through kvmfs byte %d is 0x%02x, want 0x%02x" % (name, i, got[i], want[i]))
        finally:
            self.unmount(m)
        self.check_after_unmount(name, bytes(want))

    def test_fallocate_plain_64k(self):
        # plain.qcow2 has snapshot "s": discarding shared clusters must leave it intact
        img = self.imgs["plain.qcow2"]
        want = h.oracle_md5(img, self.work, snapshot="s")
        self.punch_and_zero("plain.qcow2")
        h._oracle_cache.pop((os.path.realpath(img), "s", None), None)
        self.assertEqual(h.oracle_md5(img, self.work, snapshot="s"), want, "snapshot s after fallocate")

    def test_fallocate_plain_4k(self):
        self.punch_and_zero("small.qcow2")

    def test_fallocate_v2(self):
        self.punch_and_zero("v2.qcow2", may_refuse=True)

    def test_fallocate_overlay(self):
        self.punch_and_zero("ovl.qcow2")

    def test_fallocate_overlay_v2(self):
        self.punch_and_zero("ovlv2.qcow2", may_refuse=True)

    def test_fallocate_raw(self):
        self.punch_and_zero("r.raw")

    # ---- ftruncate ------------------------------------------------------------

    def grow(self, name):
        new = SIZE + 5 * MiB
        m = self.mount(options=h.RW, name="mnt-g-" + name)
        try:
            disk = m.path(name, "disk.raw")
            fd = os.open(disk, os.O_RDWR)
            try:
                os.ftruncate(fd, new)
                self.assertEqual(os.fstat(fd).st_size, new)
                os.pwrite(fd, b"\x5e" * 4096, new - 4096)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.assertEqual(os.stat(disk).st_size, new)
            self.assertEqual(h.peek(disk, SIZE, 8192), bytes(8192), "grown area must read zeros")
            if self.fmt(name) == "qcow2":
                info = h.read_json(m.path(name, "info.json"))
                self.assertEqual(info.get("virtual-size"), new, "info.json virtual-size after ftruncate")
        finally:
            self.unmount(m)
        self.assertEqual(h.qemu_info(self.imgs[name], fmt=self.fmt(name))["virtual-size"], new)
        want = self.orig[name] + bytes(new - SIZE - 4096) + b"\x5e" * 4096
        self.check_after_unmount(name, want)

    def test_ftruncate_grow_qcow2(self):
        self.grow("grow.qcow2")

    def test_ftruncate_grow_overlay(self):
        # the overlay grows past its backing file: the new part is zeros, not backing data
        self.grow("ovlgrow.qcow2")

    def test_ftruncate_grow_raw(self):
        self.grow("rgrow.raw")

    def test_ftruncate_shrink_einval(self):
        name = "shrink.qcow2"
        m = self.mount(options=h.RW, name="mnt-s")
        try:
            disk = m.path(name, "disk.raw")
            fd = os.open(disk, os.O_RDWR)
            try:
                with self.assertRaises(OSError) as cm:
                    os.ftruncate(fd, SIZE - 1 * MiB)
                self.assertEqual(cm.exception.errno, errno.EINVAL, "ftruncate to a smaller size")
                os.ftruncate(fd, SIZE)  # same size: nothing to do, no error
            finally:
                os.close(fd)
            with self.assertRaises(OSError) as cm:
                os.truncate(disk, 0)
            self.assertEqual(cm.exception.errno, errno.EINVAL, "truncate(2) to 0")
            self.assertEqual(os.stat(disk).st_size, SIZE)
        finally:
            self.unmount(m)
        self.assertEqual(h.qemu_info(self.imgs[name])["virtual-size"], SIZE)
        self.check_after_unmount(name, self.orig[name])

    # ---- the end of the disk (kvmfs(8) WRITES) ---------------------------------

    def test_write_past_end(self):
        # "A disk does not grow by writing": at/after the end ENOSPC, across it a short write.
        name = "end.qcow2"
        img = h.create_qcow2(os.path.join(self.pool, name), SIZE)
        m = self.mount(options=h.RW, name="mnt-end")
        try:
            disk = m.path(name, "disk.raw")
            for flags in (0, os.O_DIRECT):
                fd = os.open(disk, os.O_RDWR | flags)
                try:
                    buf = bytearray(8192)
                    buf[:] = b"\x6d" * 8192
                    mv = memoryview(mmap_buf(buf))
                    with self.assertRaises(OSError, msg="pwrite at the end, flags 0x%x" % flags) as cm:
                        os.pwrite(fd, mv[:4096], SIZE)
                    self.assertEqual(cm.exception.errno, errno.ENOSPC)
                    with self.assertRaises(OSError, msg="pwrite past the end, flags 0x%x" % flags) as cm:
                        os.pwrite(fd, mv[:4096], SIZE + 1 * MiB)
                    self.assertEqual(cm.exception.errno, errno.ENOSPC)
                    self.assertEqual(os.pwrite(fd, mv, SIZE - 4096), 4096, "write across the end")
                    os.fsync(fd)
                    self.assertEqual(os.fstat(fd).st_size, SIZE)
                finally:
                    os.close(fd)
            self.assertEqual(os.stat(disk).st_size, SIZE)
            with self.assertRaises(OSError) as cm:
                os.open(disk, os.O_RDWR | os.O_TRUNC)
            self.assertEqual(cm.exception.errno, errno.EINVAL, "O_TRUNC open of disk.raw (kvmfs(8))")
        finally:
            self.unmount(m)
        self.assertEqual(h.qemu_info(img)["virtual-size"], SIZE)
        rc, out = h.qemu_check(img)
        self.assertEqual(rc, 0, out)
        h.qemu_io(img, "read -P 0x6d %d 4096" % (SIZE - 4096), "read -P 0 0 %d" % (SIZE - 4096))

    def test_fallocate_mode0(self):
        # mode 0 inside the disk succeeds and changes nothing; past the end it grows the disk
        name = "alloc.qcow2"
        img = h.create_qcow2(os.path.join(self.pool, name), SIZE)
        h.qemu_io(img, "write -P 0x26 0 1M")
        m = self.mount(options=h.RW, name="mnt-alloc")
        try:
            disk = m.path(name, "disk.raw")
            p = subprocess.run([FALLOCATE, "-o", "512", "-l", str(2 * MiB), disk],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            self.assertEqual(p.returncode, 0, p.stdout)
            self.assertEqual(h.peek(disk, 0, MiB), b"\x26" * MiB)
            self.assertEqual(os.stat(disk).st_size, SIZE)
            p = subprocess.run([FALLOCATE, "-o", str(SIZE - 4096), "-l", str(MiB), disk],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            self.assertEqual(p.returncode, 0, p.stdout)
            self.assertEqual(os.stat(disk).st_size, SIZE - 4096 + MiB)
        finally:
            self.unmount(m)
        self.assertEqual(h.qemu_info(img)["virtual-size"], SIZE - 4096 + MiB)
        rc, out = h.qemu_check(img)
        self.assertEqual(rc, 0, out)
        h.qemu_io(img, "read -P 0x26 0 1M", "read -P 0 1M %d" % (SIZE - 4096))

    # ---- read-only ------------------------------------------------------------

    def assertWriteOpensRefused(self, path, what):
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDWR | os.O_TRUNC):
            e = h.open_err(path, flags)
            self.assertEqual(e, errno.EROFS, "%s: open(%s, 0x%x) gave %s, want EROFS" % (
                what, path, flags, h.errname(e)))
        self.assertEqual(h.open_err(path, os.O_RDONLY), 0, "%s: read open" % what)

    def test_ro_mount(self):
        before = h.md5_file(self.imgs["plain.qcow2"])
        m = self.mount(options=("ro",), name="mnt-ro")
        try:
            disk = m.path("plain.qcow2", "disk.raw")
            self.assertWriteOpensRefused(disk, "-o ro mount")
            for argv in ([FALLOCATE, "-p", "-o", "0", "-l", "4096", disk],):
                p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                self.assertNotEqual(p.returncode, 0, "fallocate on a -o ro mount succeeded")
            with self.assertRaises(OSError) as cm:
                os.truncate(disk, SIZE * 2)
            self.assertEqual(cm.exception.errno, errno.EROFS)
        finally:
            self.unmount(m)
        self.assertEqual(h.md5_file(self.imgs["plain.qcow2"]), before, "image file changed by a -o ro mount")

    def test_views_read_only(self):
        m = self.mount(options=h.RW, name="mnt-views")
        try:
            self.assertWriteOpensRefused(m.path("plain.qcow2", "snapshots", "s", "disk.raw"), "snapshot view")
            self.assertWriteOpensRefused(m.path("ovl.qcow2", "backing", "1-base.qcow2", "disk.raw"),
                                         "backing view")
            for p in (m.path("plain.qcow2", "snapshots", "s", "disk.raw"),
                      m.path("ovl.qcow2", "backing", "1-base.qcow2", "disk.raw")):
                with self.assertRaises(OSError) as cm:
                    os.truncate(p, SIZE * 2)
                self.assertEqual(cm.exception.errno, errno.EROFS, "truncate " + p)
            # and the top image of the same mount is writable (the mount really is rw)
            self.assertEqual(h.open_err(m.path("plain.qcow2", "disk.raw"), os.O_RDWR), 0)
        finally:
            self.unmount(m)

    def test_readonly_pool(self):
        m = self.mount(source=self.cfg, options=h.RW, name="mnt-ropool")
        try:
            self.assertWriteOpensRefused(m.path("p", "plain.qcow2", "disk.raw"), "readonly: true pool")
            with self.assertRaises(OSError) as cm:
                os.mkdir(m.path("p", "plain.qcow2", "snapshots", "x"))
            self.assertEqual(cm.exception.errno, errno.EROFS, "mkdir snapshot in a read-only pool")
        finally:
            self.unmount(m)


if __name__ == "__main__":
    h.main()
