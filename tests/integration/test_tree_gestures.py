#!/usr/bin/python3
"""Images made, cloned and renamed through the tree (kvmfs(8) IMAGES MADE
THROUGH THE TREE), and check.json: `mkdir NAME.qcow2` makes what `qemu-img
create` makes, `ln -s base.qcow2 clone.qcow2` an overlay as `qemu-img create
-b base.qcow2 -F qcow2`, `mv` renames an image nothing uses, rmdir/unlink never
delete an image, and check.json says what `qemu-img check --output=json` says.
qemu-img info/check/compare judge what kvmfs made."""

import errno
import json
import os
import stat

import kvmfs_harness as h
from kvmfs_harness import MiB


def qemu_json(*args, cwd=None):
    p = h.qemu_img(*args, cwd=cwd)
    return json.loads(p.stdout)


class TreeGestures(h.KvmfsTestCase):
    @classmethod
    def make_images(cls):
        p = cls.pool
        os.makedirs(os.path.join(p, "sub"))
        cls.base = h.create_qcow2(os.path.join(p, "base.qcow2"), 4 * MiB)
        h.qemu_io(cls.base, "write -P 0x21 0 256k", "write -P 0x22 3M 64k")
        cls.base_md5 = h.oracle_md5(cls.base, cls.work)
        cls.m = cls.mount(options=h.RW)

    def host(self, *parts):
        return os.path.join(self.pool, *parts)

    def assertErrno(self, err, fn, *args):
        with self.assertRaises(OSError) as cm:
            fn(*args)
        self.assertEqual(cm.exception.errno, err, "%s%r" % (fn.__name__, args))

    def assertClean(self, img):
        p = h.qemu_img("check", img, check=False)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    # ---- mkdir ------------------------------------------------------------

    def test_mkdir_qcow2_is_qemu_img_create(self):
        os.mkdir(self.m.path("new.qcow2"))
        made = self.host("new.qcow2")
        self.assertTrue(os.path.isfile(made))
        self.assertTrue(stat.S_ISDIR(os.stat(self.m.path("new.qcow2")).st_mode))
        self.assertEqual(os.stat(self.m.path("new.qcow2", "disk.raw")).st_size, 0)
        # byte for byte what qemu-img create -f qcow2 makes (qcow2 holds nothing random)
        ref = os.path.join(self.work, "ref-new.qcow2")
        h.qemu_img("create", "-q", "-f", "qcow2", ref, "0")
        with open(made, "rb") as a, open(ref, "rb") as b:
            self.assertEqual(a.read(), b.read())
        # the pool's create rules (default mode 0600)
        self.assertEqual(stat.S_IMODE(os.stat(made).st_mode), 0o600)
        # truncate -s sizes it; writes land; qemu-img agrees
        disk = self.m.path("new.qcow2", "disk.raw")
        h.run(["truncate", "-s", "20M", disk])
        self.assertEqual(os.stat(disk).st_size, 20 * MiB)
        with open(disk, "r+b") as f:
            f.seek(5 * MiB)
            f.write(b"\x5a" * 65536)
        info = qemu_json("info", "-U", "--output=json", made)
        self.assertEqual(info["virtual-size"], 20 * MiB)
        self.assertEqual(info["format"], "qcow2")
        self.assertClean(made)
        p = h.qemu_img("compare", "-U", "-f", "raw", "-F", "qcow2", disk, made, check=False)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_mkdir_raw_and_img(self):
        for name in ("new.raw", "new.img"):
            os.mkdir(self.m.path(name))
            info = qemu_json("info", "-U", "--output=json", self.host(name))
            self.assertEqual((info["format"], info["virtual-size"]), ("raw", 0), name)
            h.run(["truncate", "-s", "3M", self.m.path(name, "disk.raw")])
            self.assertEqual(os.path.getsize(self.host(name)), 3 * MiB)

    def test_mkdir_plain_name_is_a_folder(self):
        os.mkdir(self.m.path("plain"))
        self.assertTrue(os.path.isdir(self.host("plain")))
        self.assertEqual(os.listdir(self.m.path("plain")), [])
        os.mkdir(self.m.path("plain", "inner.qcow2"))
        self.assertEqual(qemu_json("info", "-U", "--output=json",
                                   self.host("plain", "inner.qcow2"))["format"], "qcow2")
        self.assertErrno(errno.ENOTEMPTY, os.rmdir, self.m.path("plain"))
        os.mkdir(self.m.path("plain", "gone"))
        os.rmdir(self.m.path("plain", "gone"))
        self.assertFalse(os.path.exists(self.host("plain", "gone")))

    def test_mkdir_refusals(self):
        self.assertErrno(errno.EEXIST, os.mkdir, self.m.path("base.qcow2"))
        self.assertErrno(errno.EEXIST, os.mkdir, self.m.path("sub"))
        self.assertErrno(errno.EPERM, os.mkdir, self.m.path(".hidden.qcow2"))
        # a format kvmfs does not create: refused, nothing left behind
        self.assertErrno(errno.ENOTSUP, os.mkdir, self.m.path("nope.vmdk"))
        self.assertFalse(os.path.exists(self.host("nope.vmdk")))
        # inside an image directory only snapshots/NAME is made
        self.assertErrno(errno.EROFS, os.mkdir, self.m.path("base.qcow2", "x"))

    def test_images_are_never_deleted(self):
        os.mkdir(self.m.path("keep.qcow2"))
        self.assertErrno(errno.EPERM, os.rmdir, self.m.path("keep.qcow2"))
        self.assertErrno(errno.EPERM, os.unlink, self.m.path("keep.qcow2", "disk.raw"))
        # (an image shows as a directory: the kernel answers unlink itself)
        self.assertErrno(errno.EISDIR, os.unlink, self.m.path("keep.qcow2"))
        p = h.run(["rm", "-rf", self.m.path("keep.qcow2")], check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertTrue(os.path.isfile(self.host("keep.qcow2")))
        self.assertClean(self.host("keep.qcow2"))

    # ---- ln -s: overlays ----------------------------------------------------

    def test_symlink_makes_an_overlay(self):
        os.symlink("base.qcow2", self.m.path("clone.qcow2"))
        made = self.host("clone.qcow2")
        info = qemu_json("info", "-U", "--output=json", made)
        self.assertEqual(info["format"], "qcow2")
        self.assertEqual(info["backing-filename"], "base.qcow2")
        self.assertEqual(info["backing-filename-format"], "qcow2")
        self.assertEqual(info["virtual-size"], 4 * MiB)
        # the same header qemu-img create -b base.qcow2 -F qcow2 writes
        ref = os.path.join(self.pool, "sub", "ref-clone.qcow2")
        h.qemu_img("create", "-q", "-f", "qcow2", "-b", "../base.qcow2", "-F", "qcow2", ref)
        ref_info = qemu_json("info", "-U", "--output=json", ref)
        for key in ("cluster-size", "format-specific", "virtual-size"):
            self.assertEqual(info[key], ref_info[key], key)
        os.unlink(ref)
        self.assertClean(made)
        # an image directory with backing/1-base.qcow2, reading the base's bytes
        self.assertTrue(stat.S_ISDIR(os.lstat(self.m.path("clone.qcow2")).st_mode))
        self.assertEqual(os.listdir(self.m.path("clone.qcow2", "backing")), ["1-base.qcow2"])
        self.assertEqual(h.md5_file(self.m.path("clone.qcow2", "disk.raw")), self.base_md5)
        # writes go to the clone; the base keeps its bytes
        with open(self.m.path("clone.qcow2", "disk.raw"), "r+b") as f:
            f.write(b"\x99" * 4096)
        self.assertClean(made)
        self.assertEqual(h.oracle_md5(self.base, self.work), self.base_md5)
        p = h.qemu_img("compare", "-U", "-f", "raw", "-F", "qcow2",
                       self.m.path("clone.qcow2", "disk.raw"), made, check=False)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_symlink_in_a_subfolder_records_the_relative_path(self):
        os.symlink("../base.qcow2", self.m.path("sub", "c2.qcow2"))
        info = qemu_json("info", "-U", "--output=json", self.host("sub", "c2.qcow2"))
        self.assertEqual(info["backing-filename"], "../base.qcow2")
        self.assertEqual(os.listdir(self.m.path("sub", "c2.qcow2", "backing")), ["1-base.qcow2"])
        self.assertEqual(h.md5_file(self.m.path("sub", "c2.qcow2", "disk.raw")), self.base_md5)

    def test_symlink_refusals(self):
        self.assertErrno(errno.EACCES, os.symlink, "/etc/passwd", self.m.path("evil.qcow2"))
        self.assertErrno(errno.EACCES, os.symlink, "../../../../etc/passwd", self.m.path("evil2.qcow2"))
        self.assertErrno(errno.ENOENT, os.symlink, "missing.qcow2", self.m.path("c3.qcow2"))
        self.assertErrno(errno.EPERM, os.symlink, "base.qcow2", self.m.path("plainlink"))
        self.assertErrno(errno.EEXIST, os.symlink, "base.qcow2", self.m.path("base.qcow2"))
        self.assertErrno(errno.ENOTSUP, os.symlink, "base.qcow2", self.m.path("c4.raw"))
        for name in ("evil.qcow2", "evil2.qcow2", "c3.qcow2", "plainlink", "c4.raw"):
            self.assertFalse(os.path.lexists(self.host(name)), name)

    # ---- mv ---------------------------------------------------------------

    def test_rename_within_the_pool(self):
        os.mkdir(self.m.path("a.qcow2"))
        h.run(["truncate", "-s", "1M", self.m.path("a.qcow2", "disk.raw")])
        os.rename(self.m.path("a.qcow2"), self.m.path("b.qcow2"))
        self.assertFalse(os.path.exists(self.host("a.qcow2")))
        self.assertFalse(os.path.exists(self.m.path("a.qcow2")))
        self.assertEqual(os.stat(self.m.path("b.qcow2", "disk.raw")).st_size, MiB)
        self.assertClean(self.host("b.qcow2"))
        # to another folder: an image naming no other file moves
        os.rename(self.m.path("b.qcow2"), self.m.path("sub", "b.qcow2"))
        self.assertTrue(os.path.isfile(self.host("sub", "b.qcow2")))
        self.assertEqual(os.stat(self.m.path("sub", "b.qcow2", "disk.raw")).st_size, MiB)

    def test_rename_then_read_at_once(self):
        # The kernel keeps the moved directory (and disk.raw looked up in it)
        # under the new name: reading through it at once reads the image.
        os.symlink("base.qcow2", self.m.path("hop0.qcow2"))
        for i in range(6):
            old, new = "hop%d.qcow2" % i, "hop%d.qcow2" % (i + 1)
            self.assertEqual(h.md5_file(self.m.path(old, "disk.raw")), self.base_md5)
            os.rename(self.m.path(old), self.m.path(new))
            self.assertEqual(h.md5_file(self.m.path(new, "disk.raw")), self.base_md5, new)
            self.assertEqual(os.listdir(self.m.path(new, "backing")), ["1-base.qcow2"])
            self.assertFalse(os.path.exists(self.m.path(old)))

    def test_rename_refusals(self):
        os.symlink("base.qcow2", self.m.path("r-clone.qcow2"))
        # the base of an overlay in the pool
        self.assertErrno(errno.EBUSY, os.rename, self.m.path("base.qcow2"), self.m.path("base2.qcow2"))
        # an overlay with a relative backing name: not into another folder
        self.assertErrno(errno.EPERM, os.rename, self.m.path("r-clone.qcow2"),
                         self.m.path("sub", "r-clone.qcow2"))
        # open in kvmfs
        os.mkdir(self.m.path("busy.qcow2"))
        with open(self.m.path("busy.qcow2", "disk.raw"), "rb"):
            self.assertErrno(errno.EBUSY, os.rename, self.m.path("busy.qcow2"), self.m.path("busy2.qcow2"))
        # a name showing another format, an existing name, a folder, a file in an image
        self.assertErrno(errno.EINVAL, os.rename, self.m.path("busy.qcow2"), self.m.path("busy.raw"))
        self.assertErrno(errno.EEXIST, os.rename, self.m.path("busy.qcow2"), self.m.path("r-clone.qcow2"))
        self.assertErrno(errno.EPERM, os.rename, self.m.path("sub"), self.m.path("sub2"))
        self.assertErrno(errno.EPERM, os.rename, self.m.path("busy.qcow2", "disk.raw"),
                         self.m.path("busy.qcow2", "d.raw"))
        for name in ("base.qcow2", "r-clone.qcow2", "busy.qcow2"):
            self.assertTrue(os.path.isfile(self.host(name)), name)
        # once closed, and nothing refers to it, it moves
        os.rename(self.m.path("busy.qcow2"), self.m.path("busy2.qcow2"))
        self.assertTrue(os.path.isfile(self.host("busy2.qcow2")))
        # the overlay renamed in its folder still finds its base
        os.rename(self.m.path("r-clone.qcow2"), self.m.path("r-clone2.qcow2"))
        self.assertEqual(h.md5_file(self.m.path("r-clone2.qcow2", "disk.raw")), self.base_md5)


class OtherFormats(h.KvmfsTestCase):
    """The gestures with the other formats kvmfs creates (vmdk, vdi, vpc,
    vhdx, qcow): overlays of VMDK and VDI bases, in the formats that take a
    backing file; mkdir and truncate refused for the formats QEMU cannot
    resize (an empty image of them could never hold data)."""

    @classmethod
    def make_images(cls):
        p = cls.pool
        cls.vmdk = os.path.join(p, "base.vmdk")
        h.qemu_img("create", "-q", "-f", "vmdk", cls.vmdk, str(3 * MiB))
        h.qemu_io(cls.vmdk, "write -P 0x31 0 100k", "write -P 0x32 2M 70000", fmt="vmdk")
        cls.vdi = os.path.join(p, "base.vdi")
        h.qemu_img("create", "-q", "-f", "vdi", cls.vdi, str(3 * MiB))
        h.qemu_io(cls.vdi, "write -P 0x41 512k 300k", fmt="vdi")
        cls.md5 = {"vmdk": h.oracle_md5(cls.vmdk, cls.work), "vdi": h.oracle_md5(cls.vdi, cls.work)}

    def host(self, *parts):
        return os.path.join(self.pool, *parts)

    def test_overlays_of_vmdk_and_vdi(self):
        m = self.mount(options=h.RW)
        made = {  # clone -> (its format, its base, the base's format)
            "c.vmdk": ("vmdk", "base.vmdk", "vmdk"),
            "c-vmdk.qcow2": ("qcow2", "base.vmdk", "vmdk"),
            "c-vdi.qcow2": ("qcow2", "base.vdi", "vdi"),
            "c-vdi.qcow": ("qcow", "base.vdi", "vdi"),
        }
        for clone, (fmt, base, base_fmt) in made.items():
            os.symlink(base, m.path(clone))
            info = qemu_json("info", "-U", "--output=json", self.host(clone))
            self.assertEqual((info["format"], info["backing-filename"], info["virtual-size"]),
                             (fmt, base, 3 * MiB), clone)
            if fmt == "qcow2":
                self.assertEqual(info["backing-filename-format"], base_fmt, clone)
            self.assertEqual(os.listdir(m.path(clone, "backing")), ["1-" + base], clone)
            self.assertEqual(h.md5_file(m.path(clone, "disk.raw")), self.md5[base_fmt], clone)
        # a VMDK overlay records its parent's CID, or QEMU would not read through
        cid = qemu_json("info", "-U", "--output=json", self.vmdk)["format-specific"]["data"]["cid"]
        got = qemu_json("info", "-U", "--output=json", self.host("c.vmdk"))["format-specific"]["data"]
        self.assertEqual(got["parent-cid"], cid)
        # writes land in the clones, the bases keep their bytes
        expected = {}
        for i, clone in enumerate(sorted(made)):
            with open(m.path(clone, "disk.raw"), "r+b") as f:
                f.seek(MiB + 4096 * i)
                f.write(bytes([0x70 + i]) * 70000)
            expected[clone] = os.path.join(self.work, clone + ".raw")
            h.copy_file(m.path(clone, "disk.raw"), expected[clone])
        self.unmount(m)
        for clone, (fmt, base, base_fmt) in made.items():
            p = h.qemu_img("check", self.host(clone), check=False)
            self.assertIn(p.returncode, (0, 63) if fmt == "qcow" else (0,), clone + p.stdout + p.stderr)
            p = h.qemu_img("compare", "-f", "raw", "-F", fmt, expected[clone], self.host(clone), check=False)
            self.assertEqual(p.returncode, 0, clone + p.stdout + p.stderr)
        self.assertEqual(h.oracle_md5(self.vmdk, self.work), self.md5["vmdk"])
        self.assertEqual(h.oracle_md5(self.vdi, self.work), self.md5["vdi"])

    def test_formats_that_cannot_grow_are_refused(self):
        m = self.mount(options=h.RW, name="mnt-refusals")
        # mkdir: a 0-byte disk of these could never be resized (qemu-img resize refuses them)
        for name in ("new.vdi", "new.vmdk", "new.vhd", "new.vhdx", "new.qcow"):
            with self.assertRaises(OSError) as cm:
                os.mkdir(m.path(name))
            self.assertEqual(cm.exception.errno, errno.EOPNOTSUPP, name)
            self.assertFalse(os.path.lexists(self.host(name)), name)
        # truncate of an existing one: EOPNOTSUPP, nothing changed
        size = os.path.getsize(self.vdi)
        p = h.run(["truncate", "-s", "8M", m.path("base.vdi", "disk.raw")], check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("not supported", p.stderr)
        self.assertEqual(os.stat(m.path("base.vdi", "disk.raw")).st_size, 3 * MiB)
        self.assertEqual(os.path.getsize(self.vdi), size)
        # overlays only where the format takes a backing file, of a parent QEMU accepts
        for clone, base in (("c.vdi", "base.vmdk"), ("c.vhdx", "base.vmdk"), ("c.vhd", "base.vdi"),
                            ("c2.vmdk", "base.vdi")):
            with self.assertRaises(OSError) as cm:
                os.symlink(base, m.path(clone))
            self.assertEqual(cm.exception.errno, errno.EOPNOTSUPP, clone)
            self.assertFalse(os.path.lexists(self.host(clone)), clone)
        self.unmount(m)
        self.assertEqual(h.qemu_img("check", self.vdi, check=False).returncode, 0)


class PoolRules(h.KvmfsTestCase):
    """A config with two pools: the create rules of kvmfs.yaml(5), and images
    that do not move between pools."""

    @classmethod
    def make_images(cls):
        cls.one = os.path.join(cls.tmp, "one")
        cls.two = os.path.join(cls.tmp, "two")
        os.makedirs(cls.one)
        os.makedirs(cls.two)
        cls.img = h.create_qcow2(os.path.join(cls.one, "vm.qcow2"), MiB)
        cfg = os.path.join(cls.tmp, "kvmfs.yaml")
        with open(cfg, "w") as f:
            f.write("pools:\n"
                    "  - name: one\n    path: %s\n    create_mode: \"0640\"\n"
                    "    create_owner: \"4321\"\n    create_group: \"8765\"\n"
                    "  - name: two\n    path: %s\n" % (cls.one, cls.two))
        cls.m = cls.mount(source=cfg, options=h.RW)

    def test_create_rules(self):
        os.mkdir(self.m.path("one", "made.qcow2"))
        st = os.stat(os.path.join(self.one, "made.qcow2"))
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid), (0o640, 4321, 8765))
        os.mkdir(self.m.path("one", "folder"))
        st = os.stat(os.path.join(self.one, "folder"))
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid), (0o750, 4321, 8765))
        os.symlink("vm.qcow2", self.m.path("one", "clone.qcow2"))
        st = os.stat(os.path.join(self.one, "clone.qcow2"))
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid), (0o640, 4321, 8765))
        # the other pool: 0600, the folder's owner
        os.mkdir(self.m.path("two", "made.qcow2"))
        st = os.stat(os.path.join(self.two, "made.qcow2"))
        folder = os.stat(self.two)
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid),
                         (0o600, folder.st_uid, folder.st_gid))

    def test_no_moves_between_pools(self):
        with self.assertRaises(OSError) as cm:
            os.rename(self.m.path("one", "vm.qcow2"), self.m.path("two", "vm.qcow2"))
        self.assertEqual(cm.exception.errno, errno.EPERM)
        p = h.run(["mv", self.m.path("one", "vm.qcow2"), self.m.path("two", "vm.qcow2")], check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertTrue(os.path.isfile(self.img))
        self.assertFalse(os.path.exists(os.path.join(self.two, "vm.qcow2")))
        # nor are pool folders made, removed or renamed
        for fn, args in ((os.mkdir, (self.m.path("three"),)), (os.rmdir, (self.m.path("two"),)),
                         (os.rename, (self.m.path("two"), self.m.path("three")))):
            with self.assertRaises(OSError, msg=fn.__name__):
                fn(*args)
        self.assertTrue(os.path.isdir(self.two))


class MountInsideSource(h.KvmfsTestCase):
    """A mount point inside SOURCE: ln -s never reaches into the mount itself."""

    @classmethod
    def make_images(cls):
        cls.base = h.create_qcow2(os.path.join(cls.tmp, "base.qcow2"), MiB)
        cls.m = cls.mount(source=cls.tmp, options=h.RW, name="mnt")

    def test_link_into_the_mount_refused(self):
        for target in ("mnt/base.qcow2/disk.raw", os.path.join(self.m.mnt, "base.qcow2", "disk.raw")):
            with self.assertRaises(OSError) as cm:
                os.symlink(target, self.m.path("evil.qcow2"))
            self.assertEqual(cm.exception.errno, errno.EACCES, target)
            self.assertFalse(os.path.lexists(os.path.join(self.tmp, "evil.qcow2")))
        os.symlink("base.qcow2", self.m.path("good.qcow2"))
        self.assertEqual(os.listdir(self.m.path("good.qcow2", "backing")), ["1-base.qcow2"])


class CheckFiles(h.KvmfsTestCase):
    """check.json: what qemu-img check --output=json says, clean, leaking, corrupt."""

    @classmethod
    def make_images(cls):
        p = cls.pool
        cls.clean = h.create_qcow2(os.path.join(p, "clean.qcow2"), 8 * MiB)
        h.qemu_io(cls.clean, "write -P 1 0 1M", "write -c -P 2 4M 64k", "write -P 3 6M 64k")
        cls.over = h.create_qcow2(os.path.join(p, "over.qcow2"), 8 * MiB,
                                  backing="clean.qcow2", backing_fmt="qcow2")
        h.qemu_io(cls.over, "write -P 4 64k 64k")
        cls.leak = h.create_qcow2(os.path.join(p, "leak.qcow2"), 8 * MiB)
        h.qemu_io(cls.leak, "write -P 5 0 64k")
        cls.corrupt = h.create_qcow2(os.path.join(p, "corrupt.qcow2"), 8 * MiB)
        h.qemu_io(cls.corrupt, "write -P 6 0 64k")
        # leaking: a cluster past the data counted once, referenced by nothing
        clusters = (os.path.getsize(cls.leak) + 65535) // 65536
        os.truncate(cls.leak, (clusters + 2) * 65536)
        h.poke(cls.leak, cls.refblock(cls.leak) + 2 * (clusters + 1), (1).to_bytes(2, "big"))
        # corrupt: a data cluster counted zero times
        h.poke(cls.corrupt, cls.refblock(cls.corrupt) + 2 * cls.first_data_cluster(cls.corrupt),
               (0).to_bytes(2, "big"))
        h.write_raw(os.path.join(p, "plain.raw"), MiB, seed=3)
        cls.m = cls.mount()

    @staticmethod
    def refblock(img):
        """The file offset of the first refcount block (16-bit refcounts)."""
        table = int.from_bytes(h.peek(img, 48, 8), "big")
        return int.from_bytes(h.peek(img, table, 8), "big")

    @staticmethod
    def first_data_cluster(img):
        ext = [e for e in json.loads(h.qemu_img("map", "--output=json", img).stdout) if e["data"]]
        return ext[0]["offset"] // 65536

    def compare(self, rel, img):
        p = h.qemu_img("check", "--output=json", img, check=False)
        want = json.loads(p.stdout)
        with open(self.m.path(rel, "check.json"), "rb") as f:
            text = f.read()
        got = json.loads(text)
        want["filename"] = os.path.realpath(img)
        self.assertEqual(got, want)
        self.assertEqual(list(got), list(want), "key order")
        return p.returncode

    def test_clean(self):
        self.assertEqual(self.compare("clean.qcow2", self.clean), 0)
        self.assertEqual(self.compare("over.qcow2", self.over), 0)

    def test_leaking(self):
        self.assertEqual(self.compare("leak.qcow2", self.leak), 3)

    def test_corrupt(self):
        self.assertEqual(self.compare("corrupt.qcow2", self.corrupt), 2)

    def test_backing_layer_checked(self):
        path = self.m.path("over.qcow2", "backing", "1-clean.qcow2", "check.json")
        self.assertEqual(h.read_json(path)["filename"], os.path.realpath(self.clean))
        self.assertEqual(h.read_json(path).get("corruptions", 0), 0)

    def test_listed_beside_info_json(self):
        self.assertIn("check.json", os.listdir(self.m.path("clean.qcow2")))
        self.assertIn("check.json", os.listdir(self.m.path("plain.raw")))

    def test_raw_does_not_support_checks(self):
        p = h.qemu_img("check", os.path.join(self.pool, "plain.raw"), check=False)
        self.assertEqual(p.returncode, 63)
        got = h.read_json(self.m.path("plain.raw", "check.json"))
        self.assertEqual(got["format"], "raw")
        self.assertIn("does not support checks", got["error"])
        self.assertIn("does not support checks", p.stderr)

    def test_read_by_cat_and_cp(self):
        # size 0 in stat (made at each open), yet programs reading to the end get all of it
        path = self.m.path("clean.qcow2", "check.json")
        self.assertEqual(os.stat(path).st_size, 0)
        text = h.run(["cat", path]).stdout
        self.assertEqual(json.loads(text)["format"], "qcow2")
        out = os.path.join(self.work, "check-copy.json")
        h.run(["cp", path, out])
        with open(out) as f:
            self.assertEqual(json.load(f), json.loads(text))

    def test_check_json_is_read_only(self):
        self.assertEqual(h.open_errno(self.m.path("clean.qcow2", "check.json"), os.O_WRONLY), errno.EROFS)


if __name__ == "__main__":
    h.main()
