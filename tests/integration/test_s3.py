#!/usr/bin/python3
"""`backend: s3` pools (kvmfs.yaml(5)).

Against a real S3 server, radosgw of a single-node Ceph (ceph_fixture.py,
started here and stopped afterwards): images of every format uploaded as
objects (and a qcow2 chain inside the bucket) are listed as image folders and
every disk.raw reads what `qemu-img convert -O raw` reads of the same bytes;
an object rewritten on the server is read anew (ETag); wrong keys fail the
mount with one line naming the pool and no secret; with overlay_dir, the
first write makes a local qcow2 overlay over the object, reads and writes go
through it, also after a remount, `qemu-img check` of it is clean and
info.json names it.

Against fake_s3.py (a stdlib S3 server that checks SigV4 and injects faults):
503 SlowDown and connection resets are retried; during an outage reads fail
with EIO, the mount stays up and listing serves the last good listing, and
reads recover with the server; the block cache under cache_dir serves a
second mount without a GET to the server and stays within cache_max; the
store counters of /metrics (requests by kind and result, retries, bytes
fetched, block-cache hits, misses, evictions and bytes) move by what the
server counted and the cache holds.

Without Ceph the radosgw class is SKIPPED loudly (not passed); the fake_s3
tests still run."""

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import unittest
import urllib.request

import ceph_fixture
import kvmfs_harness as h
from kvmfs_harness import MiB
from test_metrics import free_port, http_get, parse_text, sample

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE_S3 = os.path.join(HERE, "..", "unit", "backend", "s3", "fake_s3.py")
CURL = shutil.which("curl") or "/usr/bin/curl"
REGION = "us-east-1"

CLUSTER = None
CEPH_PROBLEM = None


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def write_credentials(path, ak, sk):
    with open(path, "w") as f:
        f.write("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n" % (ak, sk))
    os.chmod(path, 0o600)


def pool_config(path, name, endpoint, bucket, creds, prefix="", extra=""):
    with open(path, "w") as f:
        f.write("pools:\n  - name: %s\n    backend: s3\n    endpoint: %s\n    region: %s\n"
                "    bucket: %s\n    path_style: true\n    credentials: %s\n%s%s" % (
                    name, endpoint, REGION, bucket, creds,
                    ("    prefix: %s\n" % prefix) if prefix else "", extra))
    return path


class RgwClient:
    """PUTs through curl's own SigV4 (with the x-amz-content-sha256 header
    curl 7.88 leaves out)."""

    def __init__(self, endpoint, ak, sk):
        self.endpoint, self.ak, self.sk = endpoint, ak, sk

    def _curl(self, *args):
        h.run([CURL, "-sS", "-f", "--aws-sigv4", "aws:amz:%s:s3" % REGION, "--user",
               "%s:%s" % (self.ak, self.sk), "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]
              + list(args))

    def make_bucket(self, bucket):
        self._curl("-X", "PUT", "%s/%s" % (self.endpoint, bucket))

    def put(self, bucket, key, path):
        self._curl("-T", path, "%s/%s/%s" % (self.endpoint, bucket, key))


def make_format_images(d):
    """Small images of every format kvmfs reads, made by qemu-img from one raw;
    returns {object key: (local file, format)}."""
    raw = os.path.join(d, "plain.raw")
    h.write_raw(raw, 4 * MiB, seed=11)
    with open(raw, "r+b") as f:  # a hole in the middle: allocation must not matter
        f.seek(MiB)
        f.write(bytes(MiB))
    out = {"plain.raw": (raw, "raw")}
    for fmt, ext, opts in (("qcow2", "qcow2", []), ("vdi", "vdi", []),
                           ("vmdk", "vmdk", ["-o", "subformat=monolithicSparse"]),
                           ("vpc", "vhd", []), ("vhdx", "vhdx", []), ("qcow", "qcow", [])):
        p = os.path.join(d, "golden." + ext)
        h.qemu_img("convert", "-f", "raw", "-O", fmt, *opts, raw, p)
        out["golden." + ext] = (p, fmt)
    # A chain inside the bucket: vms/top.qcow2 over vms/base.qcow2 (relative name).
    vms = os.path.join(d, "vms")
    os.makedirs(vms)
    base = os.path.join(vms, "base.qcow2")
    h.qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, base)
    top = os.path.join(vms, "top.qcow2")
    h.qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top, "4M", cwd=vms)
    h.qemu_io(top, "write -P 0x6b 512k 128k", "write -P 0x6c 3M 4k")
    out["vms/base.qcow2"] = (base, "qcow2")
    out["vms/top.qcow2"] = (top, "qcow2")
    return out


def start_cluster():
    global CLUSTER, CEPH_PROBLEM
    CEPH_PROBLEM = h.environment_problem() or ceph_fixture.unavailable(with_rgw=True)
    if CEPH_PROBLEM:
        return
    cluster = ceph_fixture.CephCluster(with_rgw=True, memstore_bytes=512 * MiB)
    try:
        cluster.start()
        CLUSTER = cluster
    except Exception as e:  # (in a thread: whatever it is, the Rgw class says it)
        try:
            cluster.stop()
        except Exception:
            pass
        CEPH_PROBLEM = "a Ceph cluster with radosgw cannot start here: %s" % e


STARTER = threading.Thread(target=start_cluster)


class Rgw(h.KvmfsTestCase):
    """A real S3 server: radosgw."""

    @classmethod
    def setUpClass(cls):
        STARTER.join()
        if CLUSTER is None:
            h.skip_banner("test_s3 Rgw: %s (the radosgw tests did NOT run)" % CEPH_PROBLEM)
            raise unittest.SkipTest(CEPH_PROBLEM)
        super().setUpClass()

    @classmethod
    def make_images(cls):
        cls.rgw = RgwClient(CLUSTER.s3_endpoint, ceph_fixture.S3_ACCESS_KEY,
                            ceph_fixture.S3_SECRET_KEY)
        cls.bucket = "kvmfs-images"
        cls.rgw.make_bucket(cls.bucket)
        cls.images = make_format_images(cls.pool)
        for key, (path, _) in cls.images.items():
            cls.rgw.put(cls.bucket, "golden/" + key, path)
        cls.creds = os.path.join(cls.tmp, "credentials")
        write_credentials(cls.creds, ceph_fixture.S3_ACCESS_KEY, ceph_fixture.S3_SECRET_KEY)
        cls.overlays = os.path.join(cls.tmp, "overlays")
        cls.cfg = pool_config(os.path.join(cls.tmp, "kvmfs.yaml"), "s3", CLUSTER.s3_endpoint,
                              cls.bucket, cls.creds, prefix="golden/",
                              extra="    overlay_dir: %s\n    cache_dir: %s\n" % (
                                  cls.overlays, os.path.join(cls.tmp, "cache")))
        cls.m = cls.mount(source=cls.cfg, options=h.RW)

    def oracle(self, key):
        path, fmt = self.images[key]
        out = os.path.join(self.work, key.replace("/", "_") + ".out")
        if not os.path.exists(out):
            h.qemu_img("convert", "-f", fmt, "-O", "raw", path, out)
        return out

    def test_listing(self):
        names = set(os.listdir(self.m.path("s3")))
        expected = set([k for k in self.images if "/" not in k] + ["vms"])
        self.assertTrue(expected <= names, "%s not all in %s" % (expected, names))
        self.assertEqual(sorted(os.listdir(self.m.path("s3", "vms"))), ["base.qcow2", "top.qcow2"])
        self.assertIn("disk.raw", os.listdir(self.m.path("s3", "golden.qcow2")))
        # Objects are made with S3's own tools, not through the tree.
        with self.assertRaises(OSError) as cm:
            os.mkdir(self.m.path("s3", "new.qcow2"))
        self.assertEqual(cm.exception.errno, errno.EOPNOTSUPP)

    def test_every_format_reads_as_qemu(self):
        for key in sorted(self.images):
            if key == "plain.raw":
                continue  # written by test_overlay_write
            with self.subTest(key=key):
                got = file_bytes(self.m.path("s3", key, "disk.raw"))
                self.assertTrue(got == file_bytes(self.oracle(key)),
                                "%s differs from qemu-img convert" % key)
                info = h.read_json(self.m.path("s3", key, "info.json"))
                self.assertEqual(info["format"], self.images[key][1])
                self.assertEqual(info["virtual-size"], os.path.getsize(self.oracle(key)))

    def test_chain_in_bucket(self):
        self.assertEqual(os.listdir(self.m.path("s3", "vms", "top.qcow2", "backing")),
                         ["1-base.qcow2"])
        got = file_bytes(self.m.path("s3", "vms", "top.qcow2", "backing", "1-base.qcow2",
                                     "disk.raw"))
        self.assertTrue(got == file_bytes(self.oracle("vms/base.qcow2")))
        info = h.read_json(self.m.path("s3", "vms", "top.qcow2", "info.json"))
        self.assertEqual(info["backing-filename"], "base.qcow2")
        self.assertEqual(info["s3"]["key"], "golden/vms/top.qcow2")

    def test_etag_change_invalidates(self):
        a = os.path.join(self.work, "changing.raw")
        h.write_raw(a, 2 * MiB, seed=21)
        self.rgw.put(self.bucket, "golden/changing.raw", a)
        disk = self.m.path("s3", "changing.raw", "disk.raw")
        self.assertTrue(file_bytes(disk) == file_bytes(a))
        b = os.path.join(self.work, "changing2.raw")
        h.write_raw(b, 2 * MiB, seed=22)
        self.rgw.put(self.bucket, "golden/changing.raw", b)
        # Noticed within the recheck interval (1 s) at the next open.
        self.assertTrue(h.wait_until(lambda: file_bytes(disk) == file_bytes(b), timeout=10),
                        "the rewritten object is not read anew")

    def test_overlay_write(self):
        disk = self.m.path("s3", "plain.raw", "disk.raw")
        expect = bytearray(file_bytes(self.images["plain.raw"][0]))
        self.assertEqual(os.listdir(self.overlays) if os.path.exists(self.overlays) else [], [])
        fd = os.open(disk, os.O_RDWR)
        try:
            os.pwrite(fd, b"\xa5" * 65536, 1536 * 1024)
            os.pwrite(fd, b"\x3c" * 4096, 4 * MiB - 4096)
            os.fsync(fd)
            self.assertEqual(os.pread(fd, 4096, 1536 * 1024), b"\xa5" * 4096)
        finally:
            os.close(fd)
        expect[1536 * 1024:1536 * 1024 + 65536] = b"\xa5" * 65536
        expect[4 * MiB - 4096:] = b"\x3c" * 4096
        self.assertTrue(file_bytes(disk) == bytes(expect), "overlay-over-object reads wrong")
        info = h.read_json(self.m.path("s3", "plain.raw", "info.json"))
        overlay = info["s3"]["overlay"]
        self.assertTrue(overlay.startswith(self.overlays + "/"), overlay)
        self.assertEqual(info["format"], "qcow2")
        self.assertEqual(info["backing-filename"], "s3://%s/golden/plain.raw" % self.bucket)
        self.assertEqual(info["backing-filename-format"], "raw")
        # The object itself is untouched.
        self.assertTrue(file_bytes(self.m.path("s3", "plain.raw", "backing", "1-plain.raw",
                                               "disk.raw")) == file_bytes(self.images["plain.raw"][0]))
        # Survives a remount; QEMU finds the overlay clean (its backing is not
        # a QEMU protocol: checked without it).
        self.unmount(self.m)
        check = h.run([h.QEMU_IMG, "check", "--output=json", "json:" + json.dumps(
            {"driver": "qcow2", "file": {"driver": "file", "filename": overlay},
             "backing": None})], check=False)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        result = json.loads(check.stdout)
        self.assertEqual(result.get("corruptions", 0), 0)
        self.assertEqual(result.get("leaks", 0), 0)
        type(self).m = self.mount(source=self.cfg, options=h.RW)
        self.assertTrue(file_bytes(self.m.path("s3", "plain.raw", "disk.raw")) == bytes(expect),
                        "the overlay did not survive a remount")

    def test_wrong_credentials_fail_the_mount(self):
        bad = os.path.join(self.tmp, "bad-credentials")
        secret = "wrongsecret0000000000000000000000000099"
        write_credentials(bad, ceph_fixture.S3_ACCESS_KEY, secret)
        cfg = pool_config(os.path.join(self.tmp, "bad.yaml"), "badpool", CLUSTER.s3_endpoint,
                          self.bucket, bad)
        mnt = os.path.join(self.tmp, "badmnt")
        os.makedirs(mnt, exist_ok=True)
        p = h.run([h.kvmfs_bin(), cfg, mnt], check=False, timeout=60)
        self.assertNotEqual(p.returncode, 0)
        self.assertFalse(h.is_mounted(mnt))
        err = p.stderr.strip()
        self.assertIn("badpool", err)
        self.assertIn("wrong secret key", err)
        self.assertNotIn(secret, p.stdout + p.stderr)


class FakeS3(h.KvmfsTestCase):
    """fake_s3.py: faults on request, counted requests."""

    AK, SK, BUCKET = "AKFAKE000000000000001", "fakesecret00000000000000000000000000001", "fakebucket"

    @classmethod
    def make_images(cls):
        cls.server = subprocess.Popen(
            [sys.executable, FAKE_S3, "--port", "0", "--bucket", cls.BUCKET, "--access-key",
             cls.AK, "--secret-key", cls.SK, "--region", REGION],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            port = int(cls.server.stdout.readline())
        except ValueError:
            cls.server.kill()
            cls.server.wait()
            raise
        cls.endpoint = "http://127.0.0.1:%d" % port
        cls.data = {}
        for key, size, seed in (("big.raw", 8 * MiB, 31), ("small.qcow2", None, 32),
                                ("dir/other.raw", MiB, 33)):
            local = os.path.join(cls.pool, key.replace("/", "_"))
            if key.endswith(".qcow2"):
                raw = local + ".src"
                h.write_raw(raw, 2 * MiB, seed=seed)
                h.qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, local)
                cls.data[key] = file_bytes(raw)
            else:
                h.write_raw(local, size, seed=seed)
                cls.data[key] = file_bytes(local)
            cls.ctl("put?key=" + key, file_bytes(local))
        cls.creds = os.path.join(cls.tmp, "credentials")
        write_credentials(cls.creds, cls.AK, cls.SK)

    @classmethod
    def _cleanup_class(cls):
        super()._cleanup_class()
        if getattr(cls, "server", None) is not None:
            cls.server.kill()
            cls.server.wait()
            cls.server.stdout.close()

    @classmethod
    def ctl(cls, what, body=b""):
        req = urllib.request.Request(cls.endpoint + "/_ctl/" + what, data=body, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read()

    def stats(self):
        with urllib.request.urlopen(self.endpoint + "/_ctl/stats", timeout=10) as r:
            return json.loads(r.read())

    def setUp(self):
        self.ctl("clear")
        self.cache = os.path.join(self.tmp, "cache-" + self._testMethodName)
        self.cfg = pool_config(os.path.join(self.tmp, self._testMethodName + ".yaml"), "fake",
                               self.endpoint, self.BUCKET, self.creds,
                               extra="    cache_dir: %s\n    cache_max: 6M\n" % self.cache)
        self.m = self.mount(source=self.cfg, name="mnt-" + self._testMethodName)

    def tearDown(self):
        self.ctl("clear")
        self.unmount(self.m)

    def disk(self, key):
        return self.m.path("fake", key, "disk.raw")

    @staticmethod
    def open_no_readahead(path):
        # No kernel read-ahead: a read-ahead request still retrying when the
        # test unmounts would keep the kernel from sending RELEASE in time.
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        return fd

    def test_reads_and_read_only(self):
        self.assertTrue({"big.raw", "dir", "small.qcow2"} <= set(os.listdir(self.m.path("fake"))))
        for key in ("small.qcow2", "dir/other.raw"):
            self.assertTrue(file_bytes(self.disk(key)) == self.data[key], key)
        # No overlay_dir: the pool is read-only.
        self.assertEqual(h.open_err(self.disk("big.raw"), os.O_RDWR), errno.EROFS)

    def test_new_object_shows(self):
        self.assertNotIn("late.raw", os.listdir(self.m.path("fake")))
        self.ctl("put?key=late.raw", b"\x42" * 4096)
        self.assertTrue(h.wait_until(lambda: "late.raw" in os.listdir(self.m.path("fake")),
                                     timeout=10), "a new object is not listed")
        self.assertEqual(file_bytes(self.disk("late.raw")), b"\x42" * 4096)

    def test_slowdown_and_resets_are_retried(self):
        self.ctl("fault?kind=get&count=2&action=status:503:SlowDown")
        self.ctl("fault?kind=get&count=2&action=reset")
        fd = self.open_no_readahead(self.disk("big.raw"))
        try:
            self.assertEqual(os.pread(fd, MiB, 5 * MiB), self.data["big.raw"][5 * MiB:6 * MiB])
        finally:
            os.close(fd)
        self.assertTrue(self.m.alive())

    def test_outage_then_recovery(self):
        fd = self.open_no_readahead(self.disk("big.raw"))
        try:
            self.assertEqual(os.pread(fd, 65536, 0), self.data["big.raw"][:65536])
            names = sorted(os.listdir(self.m.path("fake")))
            self.ctl("fault?kind=any&count=100000&action=status:500")
            with self.assertRaises(OSError) as cm:
                os.pread(fd, 65536, 7 * MiB)
            self.assertEqual(cm.exception.errno, errno.EIO)
            self.assertTrue(self.m.alive())
            # Listing falls back to the last good one (past the attribute
            # timeout, the kernel asks for the folder again).
            time.sleep(1.2)
            os.stat(self.m.path("fake"))
            self.assertEqual(sorted(os.listdir(self.m.path("fake"))), names)
            self.ctl("clear")
            self.assertEqual(os.pread(fd, 65536, 7 * MiB),
                             self.data["big.raw"][7 * MiB:7 * MiB + 65536])
        finally:
            os.close(fd)
        self.assertIn("serving the last good listing", self.m.log_text())

    def test_cache_survives_remount_bounded(self):
        key = "small.qcow2"
        self.assertTrue(file_bytes(self.disk(key)) == self.data[key])
        self.unmount(self.m)
        self.ctl("reset_stats")
        self.m = self.mount(source=self.cfg, name="mnt-" + self._testMethodName)
        self.assertTrue(file_bytes(self.disk(key)) == self.data[key])
        self.assertEqual(self.stats().get("get", 0), 0,
                         "the second mount fetched blocks the cache held: %s" % self.stats())
        # Reading more than cache_max (6 MiB) keeps the cache within it.
        self.assertTrue(file_bytes(self.disk("big.raw")) == self.data["big.raw"])
        used = sum(os.path.getsize(os.path.join(d, f))
                   for d, _, fs in os.walk(self.cache) for f in fs)
        self.assertLessEqual(used, 6 * MiB + 64 * 1024)

    def scrape(self, port):
        status, _, text = http_get("http://127.0.0.1:%d/metrics" % port)
        self.assertEqual(status, 200)
        return parse_text(text)

    def cache_entries(self):
        """(key, block index, block bytes, bytes on disk) of every entry in the cache
        (block_cache.cpp: header with the index at 16 and the length at 24, then
        bucket NUL key NUL etag)."""
        out = []
        for d, _, fs in os.walk(self.cache):
            for f in fs:
                if f.startswith(".") or f.startswith("tmp."):
                    continue
                b = file_bytes(os.path.join(d, f))
                ident = b[48:48 + int.from_bytes(b[32:36], "little")].split(b"\0")
                out.append((ident[1].decode(), int.from_bytes(b[16:24], "little"),
                            int.from_bytes(b[24:28], "little"), (len(b) + 4095) // 4096 * 4096))
        return out

    def test_store_counters_in_metrics(self):
        self.unmount(self.m)
        port = free_port()
        cfg = os.path.join(self.tmp, "metrics.yaml")
        with open(self.cfg) as f:
            text = f.read()
        with open(cfg, "w") as f:
            f.write(text + "metrics:\n  listen: 127.0.0.1:%d\n" % port)
        self.m = self.mount(source=cfg, name="mnt-" + self._testMethodName)

        def value(s, name, **labels):
            v = sample(s, name, pool="fake", **labels)
            self.assertIsNotNone(v, "%s %s missing from /metrics" % (name, labels))
            return v

        def delta(a, b, name, **labels):
            return value(b, name, **labels) - value(a, name, **labels)

        def settled():
            """A scrape once the cache writes (after the readers have their bytes) are done:
            every miss was fetched and stored or stored and evicted since."""
            def check():
                a = self.scrape(port)
                e = self.cache_entries()
                ok = (value(a, "kvmfs_store_cache_misses_total") ==
                      len(e) + value(a, "kvmfs_store_cache_evictions_total") and
                      value(a, "kvmfs_store_cache_bytes") == sum(x[3] for x in e))
                return (a, e) if ok else None
            got = h.wait_until(check)
            self.assertTrue(got, "the cache counters do not match the cache: %s %s" % (
                {k: v for k, v in self.scrape(port).items() if "cache" in k[0]}, self.cache_entries()))
            return got

        # Cold reads (and whatever the pool probes): each GET the server saw is
        # counted with result ok; each block missed in the cache was stored
        # there, its bytes counted; nothing was a hit or evicted yet.
        self.ctl("reset_stats")
        before = self.scrape(port)
        self.assertTrue(file_bytes(self.disk("dir/other.raw")) == self.data["dir/other.raw"])
        after, entries = settled()
        self.assertEqual(delta(before, after, "kvmfs_store_requests_total", request="GET",
                               result="ok"), self.stats().get("get", 0))
        self.assertEqual(delta(before, after, "kvmfs_store_requests_total", request="HEAD",
                               result="ok") + delta(before, after, "kvmfs_store_requests_total",
                                                    request="HEAD", result="not_found"),
                         self.stats().get("head", 0))
        self.assertIn(("dir/other.raw", 0, MiB), [e[:3] for e in entries])
        self.assertEqual(value(after, "kvmfs_store_cache_evictions_total"), 0)
        self.assertEqual(value(after, "kvmfs_store_cache_hits_total"), 0)
        self.assertEqual(value(after, "kvmfs_store_cache_inserted_bytes_total"),
                         sum(e[2] for e in entries))
        # Every block stored came by GET (probes add their first bytes).
        self.assertGreaterEqual(value(after, "kvmfs_store_fetched_bytes_total"),
                                sum(e[2] for e in entries))
        # Two 503 SlowDown answers: two retries, then ok.
        self.ctl("fault?kind=get&count=2&action=status:503:SlowDown")
        before = self.scrape(port)
        fd = self.open_no_readahead(self.disk("big.raw"))
        try:
            self.assertEqual(os.pread(fd, 4096, 3 * MiB), self.data["big.raw"][3 * MiB:3 * MiB + 4096])
        finally:
            os.close(fd)
        after = self.scrape(port)
        self.assertEqual(delta(before, after, "kvmfs_store_retries_total", request="GET"), 2)
        # The whole of big.raw (8 MiB) through a 6 MiB cache: blocks evicted.
        self.assertTrue(file_bytes(self.disk("big.raw")) == self.data["big.raw"])
        after, entries = settled()
        self.assertGreaterEqual(value(after, "kvmfs_store_cache_evictions_total"), 3)
        self.assertLessEqual(value(after, "kvmfs_store_cache_bytes"), 6 * MiB)
        # A second mount on the same cache: a block it holds comes from the disk.
        self.unmount(self.m)
        self.m = self.mount(source=cfg, name="mnt-" + self._testMethodName)
        self.assertEqual(value(self.scrape(port), "kvmfs_store_cache_bytes"),
                         sum(e[3] for e in self.cache_entries()))
        index = max(e[1] for e in self.cache_entries() if e[0] == "big.raw")
        fd = self.open_no_readahead(self.disk("big.raw"))
        try:
            time.sleep(0.2)
            self.ctl("reset_stats")
            before = self.scrape(port)
            self.assertEqual(os.pread(fd, 4096, index * MiB + 100),
                             self.data["big.raw"][index * MiB + 100:index * MiB + 4196])
            after = self.scrape(port)
        finally:
            os.close(fd)
        self.assertEqual(delta(before, after, "kvmfs_store_cache_hits_total"), 1)
        self.assertEqual(delta(before, after, "kvmfs_store_cache_hit_bytes_total"), MiB)
        self.assertEqual(delta(before, after, "kvmfs_store_requests_total", request="GET",
                               result="ok"), self.stats().get("get", 0))

    def test_wrong_credentials_fail_the_mount(self):
        bad = os.path.join(self.tmp, "bad-credentials")
        write_credentials(bad, self.AK, "not-the-secret-000000000000000000000042")
        cfg = pool_config(os.path.join(self.tmp, "bad.yaml"), "badpool", self.endpoint,
                          self.BUCKET, bad)
        mnt = os.path.join(self.tmp, "badmnt")
        os.makedirs(mnt, exist_ok=True)
        p = h.run([h.kvmfs_bin(), cfg, mnt], check=False, timeout=60)
        self.assertNotEqual(p.returncode, 0)
        lines = [l for l in p.stderr.splitlines() if l.strip()]
        self.assertEqual(len(lines), 1, p.stderr)
        self.assertIn("badpool", lines[0])
        self.assertNotIn("not-the-secret", p.stdout + p.stderr)


def main():
    problem = h.environment_problem()
    if problem:
        h.skip_banner("test_s3: " + problem)
        print("KVMFS-IT-RESULT: file=test_s3.py passed=0 failed=0 skipped=all", flush=True)
        sys.exit(h.SKIP_EXIT_CODE)
    # Ceph starts (about 20 s) while the fake_s3 tests run.
    STARTER.start()
    try:
        h.main()
    finally:
        STARTER.join()
        if CLUSTER is not None:
            CLUSTER.stop()


if __name__ == "__main__":
    main()
