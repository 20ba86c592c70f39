#!/usr/bin/python3
"""Mounts of a YAML config: one folder per pool (a layout pool resolved with a
fake os-release, a readonly pool), a pool with a missing path shown empty,
broken configs refused before mounting with file:line:key, SIGHUP reload
(adding a pool, a bad reload keeping the old pools), images appearing in a
pool without a remount, and a blockdev pool on a loop device."""

import os
import shutil
import signal
import subprocess
import time

import kvmfs_harness as h
from kvmfs_harness import MiB


def wait_for(pred, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def listdir(path):
    try:
        return sorted(os.listdir(path))
    except OSError:
        return None


class Config(h.KvmfsTestCase):
    @classmethod
    def make_images(cls):
        t = cls.tmp
        cls.osr = os.path.join(t, "os-release")
        with open(cls.osr, "w") as f:
            f.write('NAME="Ubuntu"\nID=ubuntu\nVERSION_ID="22.04"\nID_LIKE=debian\n')
        cls.layout_dir = os.path.join(t, "ubuntu-22.04", "disks")
        cls.ro_dir = os.path.join(t, "ro")
        cls.extra_dir = os.path.join(t, "extra")
        for d in (cls.layout_dir, cls.ro_dir, cls.extra_dir):
            os.makedirs(d)
        cls.imgs = {}
        cls.imgs["vm1"] = h.create_qcow2(os.path.join(cls.layout_dir, "vm1.qcow2"), 2 * MiB)
        h.qemu_io(cls.imgs["vm1"], "write -P 0x21 0 64k")
        cls.imgs["ro"] = h.create_qcow2(os.path.join(cls.ro_dir, "ro.qcow2"), 2 * MiB)
        h.qemu_io(cls.imgs["ro"], "write -P 0x22 1M 64k")
        cls.imgs["raw"] = h.write_raw(os.path.join(cls.ro_dir, "seed.img"), 1 * MiB, seed=9)
        cls.imgs["extra"] = h.create_qcow2(os.path.join(cls.extra_dir, "x.qcow2"), 1 * MiB)
        cls.cfg = os.path.join(t, "kvmfs.yaml")
        cls.write_config(cls.base_config())
        cls.m = cls.mount(source=cls.cfg)

    @classmethod
    def base_config(cls):
        return ("layouts:\n"
                "  kvm:\n"
                "    ubuntu: %s/{id}-{version_id}/disks\n"
                "    default: /nonexistent\n"
                "os_release: %s\n"
                "pools:\n"
                "  - name: dist\n"
                "    layout: kvm\n"
                "  - name: fixed\n"
                "    path: %s\n"
                "    readonly: true\n"
                "  - name: gone\n"
                "    path: %s/missing\n" % (cls.tmp, cls.osr, cls.ro_dir, cls.tmp))

    @classmethod
    def write_config(cls, text, path=None):
        path = path or cls.cfg
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.rename(path + ".tmp", path)

    def test_pools_listed(self):
        self.assertEqual(sorted(os.listdir(self.m.mnt)), ["dist", "fixed", "gone"])
        self.assertEqual(os.listdir(self.m.path("dist")), ["vm1.qcow2"])
        self.assertEqual(sorted(os.listdir(self.m.path("fixed"))), ["ro.qcow2", "seed.img"])

    def test_images_byte_exact(self):
        self.assertViewMatches(self.m.path("dist", "vm1.qcow2"), self.imgs["vm1"])
        self.assertViewMatches(self.m.path("fixed", "ro.qcow2"), self.imgs["ro"])
        self.assertViewMatches(self.m.path("fixed", "seed.img"), self.imgs["raw"], fmt="raw", seek=False)

    def test_missing_pool_empty(self):
        self.assertTrue(os.path.isdir(self.m.path("gone")))
        self.assertEqual(os.listdir(self.m.path("gone")), [])
        self.assertTrue(wait_for(lambda: "gone" in self.m.log_text() and "missing" in self.m.log_text()),
                        self.m.log_text())

    def test_readonly(self):
        with self.assertRaises(OSError):
            open(self.m.path("fixed", "ro.qcow2", "disk.raw"), "r+b")

    def test_image_added_without_remount(self):
        dst = os.path.join(self.ro_dir, "later.qcow2")
        shutil.copy(self.imgs["vm1"], dst)
        try:
            self.assertTrue(wait_for(lambda: "later.qcow2" in (listdir(self.m.path("fixed")) or [])))
            self.assertViewMatches(self.m.path("fixed", "later.qcow2"), dst)
        finally:
            os.unlink(dst)
        self.assertTrue(wait_for(lambda: "later.qcow2" not in (listdir(self.m.path("fixed")) or [])))

    def test_sighup_reload(self):
        # Runs in its own mount so the other tests see the base config.
        cfg = os.path.join(self.tmp, "reload.yaml")
        self.write_config(self.base_config(), cfg)
        m = self.mount(source=cfg, name="mnt-reload")
        try:
            self.assertEqual(sorted(os.listdir(m.mnt)), ["dist", "fixed", "gone"])
            # An open file survives the reload.
            held = open(m.path("dist", "vm1.qcow2", "disk.raw"), "rb")
            self.write_config(self.base_config() + "  - name: extra\n    path: %s\n" % self.extra_dir, cfg)
            m.proc.send_signal(signal.SIGHUP)
            self.assertTrue(wait_for(lambda: "extra" in (listdir(m.mnt) or [])), m.log_text())
            self.assertTrue(m.alive())
            self.assertViewMatches(m.path("extra", "x.qcow2"), self.imgs["extra"])
            self.assertEqual(held.read(65536), b"\x21" * 65536)
            held.close()
            # A bad config: logged, the old pools kept.
            self.write_config(self.base_config() + "  - name: extra\n    path: %s\n    readonly: maybe\n"
                              % self.extra_dir, cfg)
            m.proc.send_signal(signal.SIGHUP)
            self.assertTrue(wait_for(lambda: "keeping the previous pools" in m.log_text()), m.log_text())
            self.assertIn("readonly", m.log_text())
            self.assertTrue(m.alive())
            self.assertEqual(sorted(os.listdir(m.mnt)), ["dist", "extra", "fixed", "gone"])
            # Removing a pool.
            self.write_config(self.base_config(), cfg)
            m.proc.send_signal(signal.SIGHUP)
            self.assertTrue(wait_for(lambda: "extra" not in (listdir(m.mnt) or ["extra"])), m.log_text())
        finally:
            self.unmount(m)

    def test_config_option_with_label_source(self):
        m = self.mount(source="mylabel", options=("ro", "config=" + self.cfg), name="mnt-label")
        try:
            self.assertEqual(sorted(os.listdir(m.mnt)), ["dist", "fixed", "gone"])
        finally:
            self.unmount(m)

    def refused(self, text, line, key):
        bad = os.path.join(self.tmp, "bad.yaml")
        self.write_config(text, bad)
        mnt = os.path.join(self.tmp, "mnt-bad")
        os.makedirs(mnt, exist_ok=True)
        p = subprocess.run([h.kvmfs_bin(), "-f", bad, mnt], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(p.returncode, 1, p.stderr)
        err = p.stderr.decode()
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn("%s:%d: %s" % (bad, line, key), err)
        self.assertFalse(h.is_mounted(mnt))

    def test_bad_key_refused(self):
        self.refused("pools:\n  - name: a\n    path: /tmp\n    colour: red\n", 4, "pools[0].colour")

    def test_bad_type_refused(self):
        self.refused("pools:\n  - name: a\n    path: /tmp\n  - name: b\n    path: /tmp\n    readonly: maybe\n",
                     6, "pools[1].readonly: expected true or false")

    def test_blockdev_pool(self):
        img = os.path.join(self.tmp, "lv.img")
        h.qemu_img("create", "-f", "qcow2", img, "4M")
        h.qemu_io(img, "write -P 0x33 0 64k")
        p = subprocess.run(["losetup", "-f", "--show", img], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
        if p.returncode != 0:
            print("SKIPPED: cannot create loop devices (%s)" % p.stderr.decode().strip(), flush=True)
            self.skipTest("cannot create loop devices")
        loop = p.stdout.decode().strip()
        try:
            vg = os.path.join(self.tmp, "vg")
            os.makedirs(vg, exist_ok=True)
            os.symlink(loop, os.path.join(vg, "lv0"))
            with open(os.path.join(vg, "notes.qcow2"), "w") as f:
                f.write("not a device\n")
            cfg = os.path.join(self.tmp, "blk.yaml")
            self.write_config("pools:\n  - name: vg\n    path: %s\n    backend: blockdev\n" % vg, cfg)
            m = self.mount(source=cfg, name="mnt-blk")
            try:
                self.assertEqual(os.listdir(m.path("vg")), ["lv0"])
                info = h.read_json(m.path("vg", "lv0", "info.json"))
                self.assertEqual(info.get("format"), "qcow2")
                self.assertViewMatches(m.path("vg", "lv0"), img, seek=False)
            finally:
                self.unmount(m)
        finally:
            subprocess.run(["losetup", "-d", loop])


if __name__ == "__main__":
    h.main()
