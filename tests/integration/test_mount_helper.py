#!/usr/bin/python3
"""mount.kvmfs, the mount(8) helper: called with mount(8)'s argument order
(`mount.kvmfs SOURCE DIR -o OPTS`) it mounts through kvmfs and returns once the
mount is ready; -f (fake) mounts nothing; -v prints the kvmfs command; a bad
source fails with kvmfs's one-line reason. And `meson install --destdir` puts
kvmfs, mount.kvmfs, the man pages and the systemd unit where they belong.

mount(8) itself is not run: it finds helpers only in /sbin, and installing one
there would change the machine. The helper is called as mount(8) calls it."""

import os
import shlex
import shutil
import stat
import subprocess

import kvmfs_harness as h
from kvmfs_harness import MiB


def helper_bin():
    return os.environ.get("KVMFS_MOUNT_HELPER", "")


def run_helper(*args, env_extra=None, timeout=60):
    env = dict(os.environ)
    env["KVMFS_BIN"] = h.kvmfs_bin()
    if env_extra:
        env.update(env_extra)
    return subprocess.run([helper_bin()] + [str(a) for a in args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env)


class MountHelper(h.KvmfsTestCase):
    @classmethod
    def make_images(cls):
        cls.outside = os.path.join(cls.tmp, "outside")
        os.makedirs(cls.outside)
        base = h.create_qcow2(os.path.join(cls.outside, "base.qcow2"), 4 * MiB)
        h.qemu_io(base, "write -P 0x21 0 1M", "write -P 0x22 3M 64k")
        cls.img = h.create_qcow2(os.path.join(cls.pool, "disk.qcow2"), 4 * MiB,
                                 backing=base, backing_fmt="qcow2")
        h.qemu_io(cls.img, "write -P 0x23 512k 1M")

    def setUp(self):
        b = helper_bin()
        self.assertTrue(b and os.access(b, os.X_OK),
                        "KVMFS_MOUNT_HELPER not set or not executable (%r)" % b)

    def mnt(self, name):
        d = os.path.join(self.tmp, name)
        os.makedirs(d, exist_ok=True)
        return d

    def _unmount(self, mnt):
        if h.is_mounted(mnt):
            h.run([h.FUSERMOUNT, "-u", mnt], check=False, timeout=30)
        if h.is_mounted(mnt):
            h.run([h.FUSERMOUNT, "-u", "-z", mnt], check=False, timeout=30)

    def mount_via_helper(self, mnt, *args):
        p = run_helper(self.pool, mnt, *args)
        out = p.stdout + p.stderr
        for marker in h._ENV_MOUNT_FAILURES:
            if marker in out:
                raise h.MountImpossible(marker)
        self.addCleanup(self._unmount, mnt)
        return p

    def test_mount_with_mount_argument_order(self):
        mnt = self.mnt("mnt-order")
        p = self.mount_via_helper(mnt, "-o", "ro,backing_root=" + self.outside)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        # The helper returns once the mount is ready: no polling.
        self.assertTrue(h.is_mounted(mnt), "mounted when mount.kvmfs returns")
        self.assertViewMatches(os.path.join(mnt, "disk.qcow2"), self.img)
        h.run([h.FUSERMOUNT, "-u", mnt])
        self.assertFalse(h.is_mounted(mnt))

    def test_fstab_options_and_flags(self):
        # What mount(8) passes for `SRC DIR kvmfs defaults,nofail,ro,... 0 0`
        # under `mount -sn`: mount-only options are dropped by kvmfs.
        mnt = self.mnt("mnt-fstab")
        p = self.mount_via_helper(mnt, "-s", "-n", "-o",
                                  "defaults,nofail,_netdev,x-systemd.automount,ro",
                                  "-o", "backing_root=" + self.outside)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertTrue(h.is_mounted(mnt))
        self.assertViewMatches(os.path.join(mnt, "disk.qcow2"), self.img, seek=False)

    def test_yaml_config_source(self):
        # fstab line `/etc/kvmfs/NAME.yaml DIR kvmfs defaults,nofail,ro 0 0`
        cfg = os.path.join(self.tmp, "vms.yaml")
        with open(cfg, "w") as f:
            f.write("pools:\n  - name: local0\n    path: %s\n    backing_roots: [%s]\n" % (
                self.pool, self.outside))
        mnt = self.mnt("mnt-yaml")
        p = run_helper(cfg, mnt, "-o", "defaults,nofail,ro")
        self.addCleanup(self._unmount, mnt)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertTrue(h.is_mounted(mnt))
        self.assertViewMatches(os.path.join(mnt, "local0", "disk.qcow2"), self.img, seek=False)

    def test_fake_mounts_nothing(self):
        mnt = self.mnt("mnt-fake")
        p = run_helper(self.pool, mnt, "-f", "-o", "ro")
        self.addCleanup(self._unmount, mnt)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertFalse(h.is_mounted(mnt), "-f must not mount")
        self.assertIn(h.kvmfs_bin(), p.stdout)
        self.assertIn(self.pool, p.stdout)
        self.assertEqual(os.listdir(mnt), [])

    def test_verbose_prints_command(self):
        mnt = self.mnt("mnt-verbose")
        p = self.mount_via_helper(mnt, "-v", "-o", "ro,backing_root=" + self.outside)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertTrue(h.is_mounted(mnt))
        want = "%s %s %s -o ro,backing_root=%s" % (h.kvmfs_bin(), self.pool, mnt, self.outside)
        self.assertIn(want, p.stdout + p.stderr)

    def test_combined_flags_fake_verbose(self):
        mnt = self.mnt("mnt-fv")
        p = run_helper(self.pool, mnt, "-fvsn", "-o", "ro")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertFalse(h.is_mounted(mnt))
        self.assertIn("-o ro", p.stdout)

    def test_bad_source_fails_with_reason(self):
        mnt = self.mnt("mnt-bad")
        missing = os.path.join(self.tmp, "no-such-dir")
        p = run_helper(missing, mnt, "-o", "ro")
        self.addCleanup(self._unmount, mnt)
        self.assertNotEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertFalse(h.is_mounted(mnt))
        lines = p.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, p.stderr)
        self.assertIn("no-such-dir", lines[0])

    def test_usage_errors(self):
        p = run_helper(self.pool)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("usage", p.stderr)
        p = run_helper(self.pool, self.mnt("mnt-x"), "-q")
        self.assertEqual(p.returncode, 1)
        self.assertIn("-q", p.stderr)
        p = run_helper("-h")
        self.assertEqual(p.returncode, 0)
        self.assertIn("usage: mount.kvmfs", p.stdout)

    def test_kvmfs_not_found(self):
        # No KVMFS_BIN, an empty PATH, run from a copy in a dir without kvmfs: the
        # configured bindir may hold an installed kvmfs, so only check the
        # message names what it looked for when it fails.
        d = os.path.join(self.tmp, "lonely")
        os.makedirs(d, exist_ok=True)
        copy = os.path.join(d, "mount.kvmfs")
        shutil.copy(helper_bin(), copy)
        env = {"PATH": "/nonexistent"}
        p = subprocess.run(["/bin/sh", copy, self.pool, self.mnt("mnt-nf"), "-f"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                           timeout=30)
        if p.returncode != 0:
            self.assertIn("kvmfs not found", p.stderr)
        else:
            self.assertIn("would run", p.stdout)

    def test_quoting_of_odd_paths(self):
        odd = os.path.join(self.tmp, "pool with 'quote' and space")
        os.makedirs(odd)
        shutil.copy(self.img, os.path.join(odd, "disk.qcow2"))
        mnt = self.mnt("mnt odd")
        p = run_helper(odd, mnt, "-v", "-o", "ro,backing_root=" + self.outside)
        self.addCleanup(self._unmount, mnt)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertTrue(h.is_mounted(mnt))
        self.assertViewMatches(os.path.join(mnt, "disk.qcow2"), self.img, seek=False)
        # the printed command can be pasted back into a shell
        printed = p.stdout.split("running: ", 1)[1].strip()
        self.assertEqual(shlex.split(printed),
                         [h.kvmfs_bin(), odd, mnt, "-o", "ro,backing_root=" + self.outside])


class MesonInstall(h.KvmfsTestCase):
    def test_install_destdir(self):
        build = os.environ.get("KVMFS_BUILD_DIR", "")
        meson = shutil.which("meson")
        if not build or not meson:
            self.skipTest("KVMFS_BUILD_DIR or meson missing")
        dest = os.path.join(self.tmp, "destdir")
        # --no-rebuild: meson test already built everything; do not run ninja
        # from inside a test.
        p = h.run([meson, "install", "-C", build, "--no-rebuild", "--destdir", dest], check=False,
                  timeout=300)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        got = {}
        for root, _, files in os.walk(dest):
            for f in files:
                full = os.path.join(root, f)
                got[os.path.relpath(full, dest)] = full
        names = {os.path.basename(k): k for k in got}
        for want, folder in (("kvmfs", "/bin"), ("mount.kvmfs", "/sbin"),
                             ("kvmfs.8", "/man8"), ("mount.kvmfs.8", "/man8"),
                             ("kvmfs@.service", "/lib/systemd/system")):
            self.assertIn(want, names, "installed files: %s" % sorted(got))
            self.assertIn(folder + "/", "/" + names[want], names[want])
        helper = got[names["mount.kvmfs"]]
        self.assertTrue(os.stat(helper).st_mode & stat.S_IXUSR, "mount.kvmfs is executable")
        with open(helper) as f:
            text = f.read()
        self.assertNotIn("@KVMFS_BIN@", text)
        with open(got[names["kvmfs@.service"]]) as f:
            unit = f.read()
        self.assertNotIn("@bindir@", unit)
        self.assertIn("/kvmfs -f ", unit)
        # the man page renders without warnings
        man = shutil.which("man")
        if man:
            p = h.run([man, "--warnings", "-l", got[names["mount.kvmfs.8"]]], check=False)
            self.assertEqual(p.stderr.strip(), "", p.stderr)


if __name__ == "__main__":
    h.main()
