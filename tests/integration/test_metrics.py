#!/usr/bin/python3
"""Metrics (kvmfs(8) METRICS): a mount with `metrics:` in its YAML config and
-o metrics_file=PATH, scraped by a REAL Prometheus (Debian's `prometheus`,
started here on loopback with a 1 s scrape interval). Reads and writes go
through the mount with O_DIRECT (each byte reaches kvmfs exactly once), a
snapshot is created, QEMU's locks refuse an open; the values are then asked
of Prometheus' HTTP query API (/api/v1/query) and must be exactly what was
done. The same values are checked in the text kvmfs serves itself and in the
file it writes when unmounted. Without prometheus the Prometheus test prints
SKIPPED loudly; the direct scrape still runs."""

import errno
import json
import mmap
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import kvmfs_harness as h
from kvmfs_harness import MiB

SIZE = 4 * MiB
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
WAIT_S = 15.0  # for a value to reach Prometheus (scraped every second)


def free_port():
    """A loopback TCP port nobody listens on now."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def http_get(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode()


def parse_text(text):
    """{(name, frozenset(labels)): value} of a text exposition (no escapes in our labels)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        labels = frozenset()
        if "{" in head:
            name, rest = head.split("{", 1)
            pairs = []
            for item in rest.rstrip("}").split('",'):
                if not item:
                    continue
                k, v = item.split("=", 1)
                pairs.append((k, v.strip('"')))
            labels = frozenset(pairs)
        else:
            name = head
        out[(name, labels)] = float(value)
    return out


def sample(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def direct_io(path, flags, offset, data_or_len):
    """One O_DIRECT pread/pwrite through a page-aligned buffer."""
    fd = os.open(path, flags | os.O_DIRECT)
    try:
        if isinstance(data_or_len, int):
            buf = mmap.mmap(-1, data_or_len)
            n = os.preadv(fd, [buf], offset)
            return bytes(buf[:n])
        buf = mmap.mmap(-1, len(data_or_len))
        buf[:] = data_or_len
        n = os.pwritev(fd, [buf], offset)
        os.fsync(fd)
        return n
    finally:
        os.close(fd)


class MetricsMount(h.KvmfsTestCase):
    """One mount for the class: two pools from a YAML config, metrics on."""

    @classmethod
    def make_images(cls):
        cls.alpha = os.path.join(cls.tmp, "alpha")
        cls.beta = os.path.join(cls.tmp, "beta")
        os.makedirs(cls.alpha)
        os.makedirs(cls.beta)
        cls.q = h.create_qcow2(os.path.join(cls.alpha, "q.qcow2"), SIZE, "cluster_size=64k")
        h.qemu_io(cls.q, "write -P 0x5a 0 1M")
        cls.held = h.create_qcow2(os.path.join(cls.alpha, "held.qcow2"), MiB)
        cls.raw = h.write_raw(os.path.join(cls.beta, "r.raw"), SIZE, seed=9)
        cls.port = free_port()
        cls.metrics_file = os.path.join(cls.tmp, "kvmfs.prom")
        cls.cfg = os.path.join(cls.tmp, "kvmfs.yaml")
        with open(cls.cfg, "w") as f:
            f.write("pools:\n"
                    "  - name: alpha\n    path: %s\n"
                    "  - name: beta\n    path: %s\n"
                    "metrics:\n  listen: 127.0.0.1:%d\n  capacity_interval: 1\n"
                    % (cls.alpha, cls.beta, cls.port))

    @classmethod
    def mount_metrics(cls):
        return cls.mount(source=cls.cfg,
                         options=("config=" + cls.cfg, "metrics_file=" + cls.metrics_file,
                                  "metrics_interval=0.5"))

    def scrape(self):
        status, ctype, text = http_get("http://127.0.0.1:%d/metrics" % self.port)
        self.assertEqual(status, 200)
        self.assertTrue(ctype.startswith("text/plain; version=0.0.4"), ctype)
        return parse_text(text)

    def drive(self, m):
        """The I/O the assertions count: 3 MiB read from q, 1 MiB written to
        r.raw, 1 snapshot created, 1 open refused by QEMU's locks."""
        q = m.path("alpha", "q.qcow2", "disk.raw")
        for off in (0, MiB, 2 * MiB):
            data = direct_io(q, os.O_RDONLY, off, MiB)
            self.assertEqual(data, (b"\x5a" if off == 0 else b"\0") * MiB)
        r = m.path("beta", "r.raw", "disk.raw")
        self.assertEqual(direct_io(r, os.O_RDWR, 2 * MiB, b"\xa5" * MiB), MiB)
        os.mkdir(m.path("alpha", "q.qcow2", "snapshots", "s1"))
        held = m.path("alpha", "held.qcow2", "disk.raw")
        with h.QemuHolder(self.held):
            self.assertEqual(h.open_err(held, os.O_RDWR), errno.EBUSY)

    def check_after_unmount(self):
        """The images are what QEMU expects, and the file holds the final values."""
        h.qemu_check(self.q)
        with open(self.raw, "rb") as f:
            f.seek(2 * MiB)
            self.assertEqual(f.read(MiB), b"\xa5" * MiB)
        snaps = h.qemu_info(self.q).get("snapshots", [])
        self.assertEqual([s["name"] for s in snaps], ["s1"])
        with open(self.metrics_file) as f:
            final = parse_text(f.read())
        self.assertEqual(sample(final, "kvmfs_read_bytes_total", pool="alpha", image="q.qcow2"), 3 * MiB)
        self.assertEqual(sample(final, "kvmfs_write_bytes_total", pool="beta", image="r.raw"), MiB)
        self.assertEqual(sample(final, "kvmfs_snapshot_creates_total", pool="alpha"), 1)


class DirectScrape(MetricsMount):
    """kvmfs' own /metrics and file, without Prometheus."""

    def test_values_served_and_written(self):
        m = self.mount_metrics()
        try:
            before = self.scrape()
            self.assertEqual([v for k, v in before.items() if k[0] == "kvmfs_build_info"], [1.0])
            self.drive(m)
            s = self.scrape()
            self.assertEqual(sample(s, "kvmfs_read_bytes_total", pool="alpha", image="q.qcow2"), 3 * MiB)
            self.assertGreaterEqual(sample(s, "kvmfs_read_requests_total", pool="alpha", image="q.qcow2"), 3)
            self.assertEqual(sample(s, "kvmfs_write_bytes_total", pool="beta", image="r.raw"), MiB)
            self.assertEqual(sample(s, "kvmfs_read_bytes_total", pool="beta", image="r.raw"), 0)
            self.assertGreaterEqual(sample(s, "kvmfs_fuse_request_duration_seconds_count", op="read"), 3)
            self.assertEqual(sample(s, "kvmfs_fuse_request_duration_seconds_bucket", op="read", le="+Inf"),
                             sample(s, "kvmfs_fuse_request_duration_seconds_count", op="read"))
            self.assertEqual(sample(s, "kvmfs_fuse_errors_total", op="open", errno="EBUSY"), 1)
            self.assertEqual(sample(s, "kvmfs_lock_conflicts_total"), 1)
            self.assertEqual(sample(s, "kvmfs_snapshot_creates_total", pool="alpha"), 1)
            self.assertEqual(sample(s, "kvmfs_snapshot_deletes_total", pool="alpha"), 0)
            # capacity: scanned every second (capacity_interval: 1); a scan begun after the I/O
            done = time.time()
            cap = h.wait_until(lambda: (lambda x: x if (sample(x, "kvmfs_pool_capacity_scan_timestamp_seconds")
                                                        or 0) > done + 0.2 else None)(self.scrape()),
                               timeout=WAIT_S)
            self.assertIsNotNone(cap, "no capacity scan after the I/O")
            self.assertEqual(sample(cap, "kvmfs_pool_images", pool="alpha"), 2)
            self.assertEqual(sample(cap, "kvmfs_pool_virtual_bytes", pool="alpha"), SIZE + MiB)
            self.assertEqual(sample(cap, "kvmfs_pool_virtual_bytes", pool="beta"), SIZE)
            self.assertEqual(sample(cap, "kvmfs_pool_images", pool="beta"), 1)
            host = sum(os.stat(os.path.join(self.alpha, n)).st_blocks * 512 for n in ("q.qcow2", "held.qcow2"))
            self.assertEqual(sample(cap, "kvmfs_pool_host_bytes", pool="alpha"), host)
            # the file is written every metrics_interval while mounted
            self.assertTrue(h.wait_until(lambda: os.path.exists(self.metrics_file), timeout=5))
        finally:
            self.unmount(m)
        self.check_after_unmount()

    def test_port_in_use_fails_the_mount(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            port = s.getsockname()[1]
            mnt = os.path.join(self.tmp, "busy")
            os.makedirs(mnt, exist_ok=True)
            p = subprocess.run([h.kvmfs_bin(), "-o", "metrics=127.0.0.1:%d" % port, self.alpha, mnt],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
            self.assertEqual(p.returncode, 1, p.stdout)
            self.assertIn(b"127.0.0.1:%d" % port, p.stdout)
            self.assertFalse(h.is_mounted(mnt))
        finally:
            s.close()

    def test_bad_options_refused(self):
        mnt = os.path.join(self.tmp, "bad")
        os.makedirs(mnt, exist_ok=True)
        for opt in ("metrics=127.0.0.1:notaport", "metrics_interval=0", "metrics_max_images=0"):
            p = subprocess.run([h.kvmfs_bin(), "-o", opt, self.alpha, mnt],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
            self.assertEqual(p.returncode, 1, (opt, p.stdout))
            self.assertTrue(p.stdout.startswith(b"kvmfs: "), (opt, p.stdout))
            self.assertFalse(h.is_mounted(mnt))


class Prometheus:
    """A real Prometheus on loopback scraping kvmfs every second."""

    def __init__(self, tmp, target_port):
        self.dir = os.path.join(tmp, "prometheus")
        os.makedirs(os.path.join(self.dir, "data"))
        self.port = free_port()
        cfg = os.path.join(self.dir, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                    "scrape_configs:\n  - job_name: kvmfs\n    static_configs:\n"
                    "      - targets: ['127.0.0.1:%d']\n" % target_port)
        self.log = open(os.path.join(self.dir, "prometheus.log"), "wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, "--config.file=" + cfg, "--storage.tsdb.path=" + os.path.join(self.dir, "data"),
             "--web.listen-address=127.0.0.1:%d" % self.port, "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir)

    def query(self, expr):
        """The instant vector of expr: [(labels, value)]."""
        url = "http://127.0.0.1:%d/api/v1/query?%s" % (self.port, urllib.parse.urlencode({"query": expr}))
        try:
            _, _, body = http_get(url)
        except (OSError, urllib.error.URLError):
            return None
        doc = json.loads(body)
        if doc.get("status") != "success":
            raise AssertionError("query %s: %s" % (expr, body))
        return [(r["metric"], float(r["value"][1])) for r in doc["data"]["result"]]

    def value(self, expr):
        r = self.query(expr)
        return r[0][1] if r and len(r) == 1 else None

    def wait_value(self, expr, want):
        got = h.wait_until(lambda: (lambda v: v if v == want else None)(self.value(expr)), timeout=WAIT_S)
        return got if got is not None else self.value(expr)

    def log_text(self):
        with open(os.path.join(self.dir, "prometheus.log"), "rb") as f:
            return f.read().decode(errors="replace")[-3000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def prometheus_banner():
    print("\n" + "!" * 72 + "\n!!! SKIPPED: prometheus is not installed (%s); the Prometheus\n"
          "!!! scrape test did not run (apt-get install prometheus; tools/setup-deps.sh)\n" % PROMETHEUS
          + "!" * 72 + "\n", flush=True)


SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ScrapedByPrometheus(MetricsMount):
    def check_shipped_queries(self, prom):
        """configs/grafana-kvmfs.json's queries are valid PromQL that names only series
        kvmfs serves, and configs/kvmfs-alerts.yml passes promtool."""
        with open(os.path.join(SOURCE_ROOT, "configs", "grafana-kvmfs.json")) as f:
            dash = json.load(f)
        served = {name for (name, _) in self.scrape()}
        exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
        self.assertGreater(len(exprs), 20)
        for e in exprs:
            q = (e.replace("$__rate_interval", "5s").replace("$instance", ".*")
                 .replace("$pool", ".*").replace("$job", "kvmfs"))
            self.assertIsNotNone(prom.query(q), q)  # query() fails on a PromQL error
            for name in set(re.findall(r"\b((?:kvmfs|process)_[a-z_]+)", q)):
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                self.assertTrue(name in served or base + "_bucket" in served, (name, e))
        promtool = shutil.which("promtool")
        if promtool:
            p = subprocess.run([promtool, "check", "rules",
                                os.path.join(SOURCE_ROOT, "configs", "kvmfs-alerts.yml")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
            self.assertEqual(p.returncode, 0, p.stdout.decode(errors="replace"))


    def test_prometheus_sees_the_mounts_values(self):
        if not os.access(PROMETHEUS, os.X_OK):
            prometheus_banner()
            self.skipTest("prometheus not installed")
        m = self.mount_metrics()
        prom = Prometheus(self.tmp, self.port)
        try:
            up = prom.wait_value('up{job="kvmfs"}', 1.0)
            self.assertEqual(up, 1.0, "Prometheus never scraped kvmfs:\n" + prom.log_text())
            self.drive(m)
            checks = [
                ('kvmfs_read_bytes_total{pool="alpha",image="q.qcow2"}', 3.0 * MiB),
                ('kvmfs_write_bytes_total{pool="beta",image="r.raw"}', 1.0 * MiB),
                ('kvmfs_fuse_errors_total{op="open",errno="EBUSY"}', 1.0),
                ("kvmfs_lock_conflicts_total", 1.0),
                ('kvmfs_snapshot_creates_total{pool="alpha"}', 1.0),
                ('kvmfs_pool_images{pool="alpha"}', 2.0),
                ('kvmfs_pool_virtual_bytes{pool="beta"}', 1.0 * SIZE),
                ('sum(kvmfs_pool_virtual_bytes)', 2.0 * SIZE + MiB),
                ('sum by (op) (kvmfs_fuse_request_duration_seconds_bucket{op="read",le="+Inf"}) - '
                 'sum by (op) (kvmfs_fuse_request_duration_seconds_count{op="read"})', 0.0),
            ]
            for expr, want in checks:
                self.assertEqual(prom.wait_value(expr, want), want, expr)
            # PromQL over the histogram: a quantile of the read latency exists and is sane.
            q = prom.value('histogram_quantile(0.5, sum by (le) (kvmfs_fuse_request_duration_seconds_bucket{op="read"}))')
            self.assertIsNotNone(q)
            self.assertTrue(0 < q <= 10, q)
            self.assertGreaterEqual(prom.value('kvmfs_read_requests_total{pool="alpha",image="q.qcow2"}'), 3)
            self.check_shipped_queries(prom)
        finally:
            prom.stop()
            self.unmount(m)
        self.check_after_unmount()


if __name__ == "__main__":
    h.main()
