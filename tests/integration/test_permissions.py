#!/usr/bin/python3
"""Who may read what (issue 15; kvmfs(8) PERMISSIONS).

With `-o allow_other`, other users see the mount. kvmfs must not let anyone
in where the host would not: views carry the owner, group and mode of the
file they come from (folders those of the folder they mirror; info.json no
wider than its image; a data view no wider than every file below it), write
bits only where writing is allowed, and the kernel enforces them because
`default_permissions` is on unless the admin says `no_default_permissions`.

The checks run as `nobody` (a forked child that drops to nobody/nogroup, as
tests/unit/chain/chain_write_test.cpp does) against 0600/0640/0644 images in
0700/0755 folders, owned by root or by nobody: every read, write, listing
and `mkdir snapshots/NAME` through the mount must succeed exactly when the
same user may do the matching thing on the host files (read every file of
the chain, write the image file, list the folder). Under the old attributes
(everything 0444/0555, owned by the mounting user) nobody read every disk.
"""

import errno
import json
import os
import pwd
import stat
import unittest

import kvmfs_harness as h
from kvmfs_harness import MiB

NOBODY = pwd.getpwnam("nobody")
NOGROUP_GID = NOBODY.pw_gid


def as_nobody(fn):
    """fn() in a forked child running as nobody (no supplementary groups);
    returns what fn returns (JSON-able)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOGROUP_GID)
            os.setuid(NOBODY.pw_uid)
            out = json.dumps({"v": fn()}).encode()
        except BaseException as e:  # noqa: B902 (reported to the parent)
            out = json.dumps({"e": repr(e)}).encode()
            code = 1
        with os.fdopen(w, "wb") as f:
            f.write(out)
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    got = json.loads(data.decode() or '{"e": "child died"}')
    if "e" in got:
        raise AssertionError("as nobody: " + got["e"])
    return got["v"]


def try_errno(fn, *args):
    try:
        fn(*args)
    except OSError as e:
        return e.errno
    return 0


def read_first(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, 512, 0)
    finally:
        os.close(fd)


def open_write(path):
    os.close(os.open(path, os.O_WRONLY))


def write_first(path):
    """Writes sector 0 with what it holds (no change to the guest data)."""
    fd = os.open(path, os.O_RDWR)
    try:
        data = os.pread(fd, 512, 0)
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


def mkdir_rmdir(path):
    os.mkdir(path)
    os.rmdir(path)


# image name -> (mode, owner "root"/"nobody", folder, backing name)
IMAGES = {
    "pub.qcow2": (0o644, "root", "", None),
    "grp.qcow2": (0o640, "root", "", None),
    "priv.raw": (0o600, "root", "", None),
    "mine.qcow2": (0o644, "nobody", "", None),
    "mine-priv.raw": (0o600, "nobody", "", None),
    "base-priv.qcow2": (0o600, "root", "", None),
    "over.qcow2": (0o644, "root", "", "base-priv.qcow2"),
    "mine-over.qcow2": (0o644, "nobody", "", "pub.qcow2"),
    "open/inner.qcow2": (0o644, "root", "open", None),
    "closed/inner.qcow2": (0o644, "root", "closed", None),
}
FOLDERS = {"open": 0o755, "closed": 0o700}


class Permissions(h.KvmfsTestCase):
    @classmethod
    def make_images(cls):
        # nobody must reach the mount point: the class folder is 0700
        os.chmod(cls.tmp, 0o711)
        os.chmod(cls.pool, 0o755)
        for name, mode in FOLDERS.items():
            os.makedirs(os.path.join(cls.pool, name))
            os.chmod(os.path.join(cls.pool, name), mode)
        for name, (mode, owner, _, backing) in sorted(IMAGES.items(), key=lambda x: x[1][3] or ""):
            p = os.path.join(cls.pool, name)
            if name.endswith(".raw"):
                h.write_raw(p, MiB, seed=len(name))
            elif backing:
                h.qemu_img("create", "-q", "-f", "qcow2", "-b", backing, "-F", "qcow2", p, str(MiB),
                           cwd=os.path.dirname(p))
            else:
                h.create_qcow2(p, MiB)
                h.qemu_io(p, "write -P 0x5a 0 64k")
            os.chmod(p, mode)
            if owner == "nobody":
                os.chown(p, NOBODY.pw_uid, NOGROUP_GID)

    def setUp(self):
        self.m = self.mount(options=h.RW + ("allow_other",))

    def tearDown(self):
        self.unmount(self.m)

    # ---- what the host allows nobody --------------------------------------

    def chain_files(self, name):
        files = [os.path.join(self.pool, name)]
        backing = IMAGES[name][3]
        if backing:
            files.append(os.path.join(self.pool, os.path.dirname(name), backing))
        return files

    def host_allows(self):
        """As nobody, on the host: per image, may it read every file of the
        chain, read the image file, write the image file, list the folder."""
        pool, table = self.pool, {n: self.chain_files(n) for n in IMAGES}

        def probe():
            out = {}
            for name, files in table.items():
                out[name] = {
                    "read_chain": all(try_errno(read_first, f) == 0 for f in files),
                    "read_image": try_errno(read_first, files[0]) == 0,
                    "write_image": try_errno(open_write, files[0]) == 0,
                    "list": try_errno(os.listdir, os.path.dirname(files[0])) == 0,
                }
            out["pool"] = try_errno(os.listdir, pool) == 0
            return out
        return as_nobody(probe)

    def through_mount(self):
        mnt, names = self.m.mnt, list(IMAGES)

        def probe():
            out = {}
            for name in names:
                d = os.path.join(mnt, name)
                disk = os.path.join(d, "disk.raw")
                snaps = os.path.join(d, "snapshots")
                out[name] = {
                    "read_disk": try_errno(read_first, disk),
                    "read_info": try_errno(read_first, os.path.join(d, "info.json")),
                    "list_image": try_errno(os.listdir, d),
                    "write_disk": try_errno(write_first, disk),
                    "mkdir_snapshot": try_errno(mkdir_rmdir, os.path.join(snaps, "by-nobody"))
                    if name.endswith(".qcow2") else None,
                    "list_folder": try_errno(os.listdir, os.path.dirname(d)),
                    "read_backing": try_errno(read_first, os.path.join(
                        d, "backing", "1-" + IMAGES[name][3], "disk.raw")) if IMAGES[name][3] else None,
                }
            out["pool"] = try_errno(os.listdir, mnt)
            return out
        return as_nobody(probe)

    # ---- tests -------------------------------------------------------------

    def test_default_permissions_in_mount_options(self):
        with open("/proc/mounts") as f:
            line = next(x for x in f if x.split()[1] == self.m.mnt)
        opts = line.split()[3].split(",")
        self.assertIn("default_permissions", opts)
        self.assertIn("allow_other", opts)

    def test_nobody_gets_what_the_host_gives(self):
        host, got = self.host_allows(), self.through_mount()
        EACCES = errno.EACCES
        self.assertTrue(host["pool"])
        self.assertEqual(got["pool"], 0)
        problems = []

        def expect(name, what, allowed, e):
            if allowed and e != 0:
                problems.append("%s %s: %s, the host allows it" % (name, what, h.errname(e)))
            if not allowed and e not in (EACCES, errno.EPERM):
                problems.append("%s %s: %s, the host refuses it (want EACCES)" % (
                    name, what, "allowed" if e == 0 else h.errname(e)))

        for name in IMAGES:
            a, g = host[name], got[name]
            expect(name, "list folder", a["list"], g["list_folder"])
            expect(name, "read disk.raw", a["list"] and a["read_chain"], g["read_disk"])
            expect(name, "read info.json", a["list"] and a["read_image"], g["read_info"])
            expect(name, "list image dir", a["list"] and a["read_image"], g["list_image"])
            expect(name, "write disk.raw", a["list"] and a["write_image"] and a["read_chain"],
                   g["write_disk"])
            if g["mkdir_snapshot"] is not None:
                expect(name, "mkdir snapshots/", a["list"] and a["write_image"] and a["read_image"],
                       g["mkdir_snapshot"])
            if g["read_backing"] is not None:
                base = os.path.join(os.path.dirname(name), IMAGES[name][3]).lstrip("/")
                expect(name, "read backing view", a["list"] and host[base]["read_chain"],
                       g["read_backing"])
        self.assertFalse(problems, "\n".join(problems))
        # The cases are not all one answer: the table has both outcomes.
        self.assertEqual(got["priv.raw"]["read_disk"], EACCES)
        self.assertEqual(got["over.qcow2"]["read_disk"], EACCES, "narrowed by its 0600 backing file")
        self.assertEqual(got["over.qcow2"]["read_info"], 0)
        self.assertEqual(got["pub.qcow2"]["read_disk"], 0)
        self.assertEqual(got["mine-priv.raw"]["write_disk"], 0)
        self.assertEqual(got["mine.qcow2"]["mkdir_snapshot"], 0)
        self.assertEqual(got["pub.qcow2"]["mkdir_snapshot"], EACCES)
        self.assertEqual(got["closed/inner.qcow2"]["list_folder"], EACCES)

    def test_modes_as_root_sees_them(self):
        def mode(*p):
            return stat.S_IMODE(os.stat(self.m.path(*p)).st_mode)
        self.assertEqual(mode("priv.raw", "disk.raw"), 0o600)
        self.assertEqual(mode("priv.raw", "info.json"), 0o400)
        self.assertEqual(mode("priv.raw"), 0o500)
        self.assertEqual(mode("grp.qcow2", "disk.raw"), 0o640)
        self.assertEqual(mode("grp.qcow2", "snapshots"), 0o750)
        self.assertEqual(mode("pub.qcow2", "disk.raw"), 0o644)
        self.assertEqual(mode("over.qcow2", "disk.raw"), 0o600, "no wider than its backing file")
        self.assertEqual(mode("over.qcow2", "info.json"), 0o444)
        self.assertEqual(mode("over.qcow2", "backing", "1-base-priv.qcow2", "disk.raw"), 0o400)
        self.assertEqual(mode("closed"), 0o700)
        self.assertEqual(mode("open"), 0o755)
        st = os.stat(self.m.path("mine-priv.raw", "disk.raw"))
        self.assertEqual((st.st_uid, st.st_gid), (NOBODY.pw_uid, NOGROUP_GID))
        st = os.stat(self.m.path("closed"))
        self.assertEqual((st.st_uid, st.st_gid), (0, 0))


class ReadOnlyPermissions(h.KvmfsTestCase):
    """-o ro: the same owners and read bits, no write bit anywhere."""

    @classmethod
    def make_images(cls):
        os.chmod(cls.tmp, 0o711)
        os.chmod(cls.pool, 0o755)
        p = os.path.join(cls.pool, "mine.qcow2")
        h.create_qcow2(p, MiB)
        os.chown(p, NOBODY.pw_uid, NOGROUP_GID)
        os.chmod(p, 0o600)

    def test_no_write_bits(self):
        m = self.mount(options=("ro", "allow_other"))
        try:
            for rel in ((), ("mine.qcow2",), ("mine.qcow2", "disk.raw"), ("mine.qcow2", "snapshots")):
                st = os.stat(m.path(*rel))
                self.assertEqual(st.st_mode & 0o222, 0, "%s: %o" % (rel, st.st_mode))
            self.assertEqual(stat.S_IMODE(os.stat(m.path("mine.qcow2", "disk.raw")).st_mode), 0o400)
            disk = m.path("mine.qcow2", "disk.raw")
            got = as_nobody(lambda: [try_errno(read_first, disk), try_errno(open_write, disk)])
            self.assertEqual(got[0], 0, "its owner reads it")
            self.assertIn(got[1], (errno.EACCES, errno.EROFS), "nobody writes a read-only mount")
        finally:
            self.unmount(m)


class NoDefaultPermissions(h.KvmfsTestCase):
    """-o no_default_permissions: the kernel checks nothing, as kvmfs(8)
    warns; with allow_other every user then reads every disk."""

    @classmethod
    def make_images(cls):
        os.chmod(cls.tmp, 0o711)
        os.chmod(cls.pool, 0o755)
        p = os.path.join(cls.pool, "priv.raw")
        h.write_raw(p, MiB, seed=9)
        os.chmod(p, 0o600)

    def test_kernel_checks_nothing(self):
        m = self.mount(options=("ro", "allow_other", "no_default_permissions"))
        try:
            with open("/proc/mounts") as f:
                line = next(x for x in f if x.split()[1] == m.mnt)
            self.assertNotIn("default_permissions", line.split()[3].split(","))
            disk = m.path("priv.raw", "disk.raw")
            self.assertEqual(as_nobody(lambda: try_errno(read_first, disk)), 0)
        finally:
            self.unmount(m)


if __name__ == "__main__":
    h.main()
