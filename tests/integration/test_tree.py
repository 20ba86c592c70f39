#!/usr/bin/python3
"""The mount as a tree: a SOURCE with subfolders mirrored, non-image files hidden,
the background (daemon) mount, bad command lines, writes refused with EROFS,
and image files left closed until a view is used."""

import errno
import os
import stat
import subprocess

import kvmfs_harness as h
from kvmfs_harness import MiB


class Tree(h.KvmfsTestCase):
    @classmethod
    def make_images(cls):
        p = cls.pool
        for d in ("a", "a/b", "a/b/c", "x", "empty", "notes"):
            os.makedirs(os.path.join(p, d))
        cls.imgs = {}

        def q(rel, size=2 * MiB, pat=0x10):
            path = h.create_qcow2(os.path.join(p, rel), size)
            h.qemu_io(path, "write -P 0x%x 0 64k" % pat)
            cls.imgs[rel] = path

        q("top.qcow2")
        q("a/one.qcow2", pat=0x11)
        q("a/b/c/deep.qcow2", pat=0x12)
        q("x/vm.qcow2", pat=0x13)
        # qcow2 found by content under a name without a known extension
        q("x/disk-without-extension", pat=0x14)
        cls.imgs["a/b/raw.img"] = h.write_raw(os.path.join(p, "a/b/raw.img"), 1 * MiB, seed=5)
        cls.imgs["seed.iso"] = h.write_raw(os.path.join(p, "seed.iso"), 1 * MiB, seed=6)
        # not images: hidden
        with open(os.path.join(p, "README.txt"), "w") as f:
            f.write("not an image\n")
        with open(os.path.join(p, "notes", "todo.md"), "w") as f:
            f.write("# todo\n")
        with open(os.path.join(p, "a", "random.bin"), "wb") as f:
            f.write(h.gen_bytes(7, 100000))
        with open(os.path.join(p, "x", "run.sh"), "w") as f:
            f.write("#!/bin/sh\n")
        cls.m = cls.mount()

    def test_top_level(self):
        names = set(os.listdir(self.m.mnt))
        for want in ("top.qcow2", "a", "x", "seed.iso"):
            self.assertIn(want, names)
        for hidden in ("README.txt",):
            self.assertNotIn(hidden, names)

    def test_subfolders_mirrored(self):
        self.assertEqual(sorted(os.listdir(self.m.path("a"))), ["b", "one.qcow2"])
        self.assertIn("c", os.listdir(self.m.path("a", "b")))
        self.assertIn("raw.img", os.listdir(self.m.path("a", "b")))
        self.assertEqual(os.listdir(self.m.path("a", "b", "c")), ["deep.qcow2"])
        for rel, img in self.imgs.items():
            fmt = "raw" if rel.endswith((".img", ".iso")) else None
            self.assertViewMatches(self.m.path(rel), img, fmt=fmt, seek=fmt is None)

    def test_image_found_by_content(self):
        self.assertIn("disk-without-extension", os.listdir(self.m.path("x")))
        info = h.read_json(self.m.path("x", "disk-without-extension", "info.json"))
        self.assertEqual(info.get("format"), "qcow2")

    def test_non_images_hidden(self):
        self.assertNotIn("random.bin", os.listdir(self.m.path("a")))
        self.assertNotIn("run.sh", os.listdir(self.m.path("x")))
        self.assertFalse(os.path.exists(self.m.path("README.txt")))
        if os.path.exists(self.m.path("notes")):
            self.assertEqual(os.listdir(self.m.path("notes")), [])

    def test_types(self):
        import stat
        self.assertTrue(stat.S_ISDIR(os.stat(self.m.path("top.qcow2")).st_mode))
        st = os.stat(self.m.path("top.qcow2", "disk.raw"))
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual(st.st_size, 2 * MiB)
        self.assertTrue(stat.S_ISREG(os.stat(self.m.path("top.qcow2", "info.json")).st_mode))

    def test_writes_refused(self):
        disk = self.m.path("top.qcow2", "disk.raw")
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC):
            with self.assertRaises(OSError) as cm:
                os.open(disk, flags)
            self.assertEqual(cm.exception.errno, errno.EROFS, "open flags %#x" % flags)
        for fn, arg in ((os.mkdir, self.m.path("newdir")), (os.mkdir, self.m.path("top.qcow2", "snapshots", "s")),
                        (lambda p: os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)), self.m.path("new.raw")),
                        (os.unlink, disk), (os.rmdir, self.m.path("a", "b", "c")),
                        (lambda p: os.truncate(p, 0), disk), (lambda p: os.chmod(p, 0o600), disk)):
            with self.assertRaises(OSError) as cm:
                fn(arg)
            self.assertEqual(cm.exception.errno, errno.EROFS, "%s" % arg)
        p = subprocess.run(["touch", self.m.path("touched")], stderr=subprocess.PIPE, text=True)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("Read-only file system", p.stderr)
        # still the same bytes after the refused writes
        self.assertViewMatches(self.m.path("top.qcow2"), self.imgs["top.qcow2"])

    def test_info_json_size_matches_content(self):
        # cat/cp read up to st_size: the size must be the exact length of the JSON
        for rel in self.imgs:
            p = self.m.path(rel, "info.json")
            with open(p, "rb") as f:
                data = f.read()
            self.assertEqual(os.stat(p).st_size, len(data), p)
            h.read_json(p)

    def test_mmap_read(self):
        import mmap
        with open(self.m.path("a", "one.qcow2", "disk.raw"), "rb") as f:
            with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
                self.assertEqual(h.md5_bytes(mm[:]), h.oracle_md5(self.imgs["a/one.qcow2"], self.work))

    def test_qemu_img_compare_on_mount(self):
        # QEMU itself reading the mounted raw file agrees with QEMU reading the image
        p = h.run([h.QEMU_IMG, "compare", "-U", "-f", "raw", "-F", "qcow2",
                   self.m.path("a", "b", "c", "deep.qcow2", "disk.raw"), self.imgs["a/b/c/deep.qcow2"]], check=False)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_lookup_missing_names(self):
        for rel in (("nope",), ("top.qcow2", "nope"), ("top.qcow2", "snapshots", "nope"),
                    ("top.qcow2", "backing", "1-nope"), ("a", "random.bin")):
            with self.assertRaises(FileNotFoundError, msg="/".join(rel)):
                os.stat(self.m.path(*rel))

    def test_no_backing_dir_content_without_backing(self):
        p = self.m.path("top.qcow2", "backing")
        if os.path.exists(p):
            self.assertEqual(os.listdir(p), [])

    def test_cp_sparse(self):
        out = os.path.join(self.tmp, "copy.raw")
        h.run(["cp", "--sparse=always", self.m.path("a", "one.qcow2", "disk.raw"), out])
        self.assertEqual(h.md5_file(out), h.oracle_md5(self.imgs["a/one.qcow2"], self.work))

    def test_image_files_not_opened_by_listing(self):
        # On a fresh mount, listing folders leaves every image file closed:
        # images are opened only when one of their views is used.
        m = self.mount(name="mnt-lazy")
        try:
            for rel in ("", "a", "a/b", "a/b/c", "x"):
                os.listdir(os.path.join(m.mnt, rel))
            opened = self.open_files(m)
            for rel, img in self.imgs.items():
                self.assertNotIn(os.path.realpath(img), opened, "image opened by a directory listing: %s" % rel)
            # and using one view opens only that image's files
            h.md5_file(m.path("x", "vm.qcow2", "disk.raw"))
            self.assertTrue(m.alive())
        finally:
            self.unmount(m)

    def open_files(self, m):
        opened = set()
        for fd in os.listdir("/proc/%d/fd" % m.proc.pid):
            try:
                opened.add(os.readlink("/proc/%d/fd/%s" % (m.proc.pid, fd)))
            except OSError:
                pass
        return opened

    def walk(self, root):
        found = {}
        for d, dirs, files in os.walk(root):
            found[os.path.relpath(d, root)] = (sorted(dirs), sorted(files))
        return found

    def test_ls_recursive_opens_nothing(self):
        # ls -R (and os.walk) of a fresh read-only mount: qcow2 images without
        # backing file or snapshots and raw images are listed from their
        # headers, so walking a large pool opens no image. The tree is the one
        # a mount that opened every image shows.
        m = self.mount(name="mnt-walk")
        try:
            h.run(["ls", "-R", m.mnt])
            walked = self.walk(m.mnt)
            opened = self.open_files(m)
            for rel, img in self.imgs.items():
                self.assertNotIn(os.path.realpath(img), opened, "image opened by ls -R: %s" % rel)
            self.assertEqual(walked["top.qcow2"], (["snapshots"], ["check.json", "disk.raw", "info.json"]))
            self.assertEqual(walked["top.qcow2/snapshots"], ([], []))
            self.assertEqual(walked["a/b/raw.img"], ([], ["check.json", "disk.raw", "info.json"]))
            self.assertEqual(stat.S_IMODE(os.stat(m.path("top.qcow2", "snapshots")).st_mode), 0o555)
        finally:
            self.unmount(m)
        # the same tree once every image is open (info.json read first)
        m = self.mount(name="mnt-walk-open")
        try:
            for rel in self.imgs:
                with open(m.path(rel, "info.json")) as f:
                    f.read()
            self.assertEqual(self.walk(m.mnt), walked)
        finally:
            self.unmount(m)
        # read-write: snapshots/ of a writable image is 0755 (its image is
        # opened to know), and a snapshot made by qemu-img shows up
        m = self.mount(name="mnt-walk-rw", options=())
        try:
            self.assertEqual(stat.S_IMODE(os.stat(m.path("top.qcow2", "snapshots")).st_mode), 0o755)
            self.assertEqual(self.walk(m.mnt), walked)
        finally:
            self.unmount(m)


class LargeFolder(h.KvmfsTestCase):
    """A folder of more images than one readdir reply holds: listed in pieces
    with offsets (and READDIRPLUS attributes), nothing lost or repeated."""

    N = 700

    @classmethod
    def make_images(cls):
        d = os.path.join(cls.pool, "many")
        os.makedirs(d)
        for i in range(cls.N):
            with open(os.path.join(d, "vm%04d.raw" % i), "wb") as f:
                f.truncate((i + 1) * 4096)
        cls.m = cls.mount()

    def test_listing_complete(self):
        want = ["vm%04d.raw" % i for i in range(self.N)]
        self.assertEqual(sorted(os.listdir(self.m.path("many"))), want)
        # twice through one handle's worth of requests, and with d_type
        with os.scandir(self.m.path("many")) as it:
            entries = list(it)
        self.assertEqual(sorted(e.name for e in entries), want)
        self.assertTrue(all(e.is_dir() for e in entries))

    def test_attributes_match_lookup(self):
        # The attributes READDIRPLUS handed out are those of a lookup.
        for e in os.scandir(self.m.path("many")):
            st = os.stat(e.path)
            self.assertEqual(e.stat().st_mode, st.st_mode, e.name)
            self.assertEqual(e.stat().st_mtime_ns, st.st_mtime_ns, e.name)
        i = 123
        st = os.stat(self.m.path("many", "vm%04d.raw" % i, "disk.raw"))
        self.assertEqual(st.st_size, (i + 1) * 4096)

    def test_ls_recursive(self):
        text = h.run(["ls", "-R", self.m.path("many")]).stdout
        # every image directory shows disk.raw and info.json (raw: no snapshots/)
        self.assertEqual(text.count("disk.raw"), self.N)
        self.assertEqual(text.count("info.json"), self.N)


class CommandLine(h.KvmfsTestCase):
    @classmethod
    def make_images(cls):
        cls.img = h.create_qcow2(os.path.join(cls.pool, "d.qcow2"), 1 * MiB)
        h.qemu_io(cls.img, "write -P 0x3 0 4k")

    def test_background_mount(self):
        # Without -f, kvmfs returns once the mount is ready (no polling needed).
        m = self.mount(foreground=False, name="mnt-bg")
        try:
            self.assertTrue(h.is_mounted(m.mnt))
            self.assertViewMatches(m.path("d.qcow2"), self.img)
        finally:
            self.unmount(m)
        self.assertFalse(h.is_mounted(m.mnt))

    def test_missing_source_fails_before_mount(self):
        mnt = os.path.join(self.tmp, "mnt-bad")
        os.makedirs(mnt)
        p = h.run([h.kvmfs_bin(), "-o", "ro", os.path.join(self.tmp, "no-such-dir"), mnt], check=False, timeout=30)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertFalse(h.is_mounted(mnt))
        self.assertTrue((p.stderr + p.stdout).strip(), "a one-line reason is printed")
        self.assertLessEqual(len((p.stderr + p.stdout).strip().splitlines()), 2, p.stderr)

    def test_missing_mountpoint_fails(self):
        p = h.run([h.kvmfs_bin(), "-o", "ro", self.pool, os.path.join(self.tmp, "no-such-mnt")],
                  check=False, timeout=30)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertTrue((p.stderr + p.stdout).strip())

    def test_unmount_ends_foreground_process(self):
        m = self.mount(name="mnt-fg")
        pid = m.proc.pid
        h.run([h.FUSERMOUNT, "-u", m.mnt])
        m.proc.wait(timeout=15)
        self.assertEqual(m.proc.returncode, 0, "kvmfs -f exit status after fusermount3 -u (pid %d)" % pid)
        self.unmount(m)

    def test_debug_and_options_accepted(self):
        m = self.mount(options=("ro", "max_threads=4", "log_level=debug", "force_share"), name="mnt-opts")
        try:
            self.assertViewMatches(m.path("d.qcow2"), self.img)
        finally:
            self.unmount(m)


if __name__ == "__main__":
    h.main()
