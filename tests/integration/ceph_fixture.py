"""A throwaway single-node Ceph cluster for the tests: one mon, one memstore
OSD and, on request, radosgw (S3), from Debian 12's packages, as plain child
processes on 127.0.0.1 with random ports, all state in a temp dir, stopped by
PID. No systemd, no /etc/ceph, nothing outside the temp dir.

    cluster = CephCluster(with_rgw=False)
    cluster.start()                  # ~8 s without rgw, ~20 s with it (2 cores)
    cluster.rbd("create", "img", "--size", "64M")
    ...
    cluster.stop()

From the shell (bench/, the S3 tests, a developer):

    DIR=$(python3 tests/integration/ceph_fixture.py start [--rgw])
    . "$DIR/env"                     # CEPH_CONF CEPH_KEYRING CEPH_ARGS CEPH_POOL [S3_*]
    python3 tests/integration/ceph_fixture.py stop "$DIR"

`unavailable()` says why no cluster can run here (packages missing); tests
then skip loudly, never pass. The recipe and its pitfalls:
../shared/reference/backends/README.md (msgr2 only, `--no-mon-config` for the
OSD's mkfs, one keyring per daemon, pool size 1, pg num 8, autoscale off).

Standard library only.
"""

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

DAEMONS = ("ceph-mon", "ceph-osd", "ceph", "rbd", "ceph-authtool", "monmaptool")
RGW_DAEMONS = ("radosgw", "radosgw-admin")
# The packages tools/setup-deps.sh installs for these.
PACKAGES = "ceph-mon ceph-osd radosgw ceph-common librbd-dev librados-dev qemu-block-extra"
S3_ACCESS_KEY = "TESTACCESSKEY0000001"
S3_SECRET_KEY = "testsecretkey0000000000000000000000000001"


def unavailable(with_rgw=False):
    """Why a cluster cannot start here, or None."""
    missing = [d for d in DAEMONS + (RGW_DAEMONS if with_rgw else ()) if shutil.which(d) is None]
    if missing:
        return "Ceph not installed (%s missing; apt-get install %s)" % (", ".join(missing), PACKAGES)
    return None


def _free_port(taken=()):
    for _ in range(200):
        port = random.randint(20000, 39999)
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port on 127.0.0.1")


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class CephCluster:
    def __init__(self, with_rgw=False, memstore_bytes=2 << 30, tmp_parent=None):
        self.with_rgw = with_rgw
        self.memstore_bytes = memstore_bytes
        self.dir = None
        self.pids = []
        self._children = []
        self.tmp_parent = tmp_parent
        self.pool = "rbd"
        self.s3_endpoint = None

    # ---- paths ----------------------------------------------------------

    @property
    def conf(self):
        return os.path.join(self.dir, "ceph.conf")

    @property
    def keyring(self):
        return os.path.join(self.dir, "keyring")

    def env(self):
        """Environment for the ceph/rbd/qemu-img tools of this cluster."""
        e = dict(os.environ)
        e["CEPH_CONF"] = self.conf
        e["CEPH_ARGS"] = "-c %s" % self.conf
        return e

    # ---- start / stop ---------------------------------------------------

    def _log(self, msg):
        sys.stderr.write("[ceph_fixture] %s\n" % msg)
        sys.stderr.flush()

    def _run(self, *argv, check=True, timeout=120, input=None):
        p = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout, input=input, env=self.env() if self.dir else None)
        if check and p.returncode != 0:
            raise RuntimeError("%s failed (%d): %s" % (" ".join(argv), p.returncode,
                                                        p.stderr.decode(errors="replace")[-2000:]))
        return p

    def _spawn(self, name, *argv):
        log = open(os.path.join(self.dir, "log", name + ".out"), "ab")
        p = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             env=self.env())
        log.close()
        self._children.append(p)
        self.pids.append(p.pid)
        with open(os.path.join(self.dir, "pids"), "a") as f:
            f.write("%d\n" % p.pid)
        return p

    def _wait(self, what, fn, timeout):
        end = time.time() + timeout
        while time.time() < end:
            for p in self._children:
                if p.poll() is not None:
                    raise RuntimeError("%s: a daemon exited with %d while waiting for %s" % (
                        self.dir, p.returncode, what))
            if fn():
                return
            time.sleep(0.5)
        raise RuntimeError("timeout waiting for %s" % what)

    def _ceph_ok(self, *args):
        return self._run("ceph", "-c", self.conf, "--connect-timeout", "5", *args,
                         check=False, timeout=30).returncode == 0

    def _write_conf(self, mon_port, rgw_port, port_min):
        d = self.dir
        text = """[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
mon initial members = a
public addr = 127.0.0.1
ms bind msgr1 = false
ms bind ipv6 = false
ms bind port min = {port_min}
ms bind port max = {port_max}
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
run dir = {d}/run
admin socket = {d}/run/$name.asok
pid file = {d}/run/$name.pid
log file = {d}/log/$name.log
crash dir = {d}/crash
log to stderr = false
err to stderr = true
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
mon allow pool delete = true
osd crush chooseleaf type = 0
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
mon data avail warn = 2
mon data avail crit = 1
osd op num shards = 1
osd op num threads per shard = 2
[client]
keyring = {d}/keyring
[mon]
mon data = {d}/mon/ceph-$id
keyring = {d}/keyring
[osd]
osd data = {d}/osd/ceph-$id
keyring = {d}/osd/ceph-$id/keyring
osd objectstore = memstore
memstore device bytes = {memstore}
osd crush update on start = true
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {d}/rgw
keyring = {d}/rgw/keyring
rgw dns name = 127.0.0.1
""".format(fsid=uuid.uuid4(), mon_port=mon_port, port_min=port_min, port_max=port_min + 99,
           d=d, memstore=self.memstore_bytes, rgw_port=rgw_port)
        with open(self.conf, "w") as f:
            f.write(text)

    def start(self):
        problem = unavailable(self.with_rgw)
        if problem:
            raise RuntimeError(problem)
        t0 = time.time()
        self.dir = tempfile.mkdtemp(prefix="ceph-fixture-", dir=self.tmp_parent)
        for sub in ("run", "log", "mon/ceph-a", "osd/ceph-0", "rgw", "crash"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        open(os.path.join(self.dir, "pids"), "w").close()
        try:
            self._start(t0)
        except BaseException:
            for name in os.listdir(os.path.join(self.dir, "log")):
                try:
                    with open(os.path.join(self.dir, "log", name), "rb") as f:
                        tail = f.read()[-1500:].decode(errors="replace")
                    self._log("%s:\n%s" % (name, tail))
                except OSError:
                    pass
            self.stop()
            raise
        self._log("ready in %.1f s (%s)" % (time.time() - t0, self.dir))
        return self

    def _start(self, t0):
        d = self.dir
        mon_port = _free_port()
        rgw_port = _free_port({mon_port})
        port_min = 41000 + random.randint(0, 199) * 100
        self._write_conf(mon_port, rgw_port, port_min)
        c = ("-c", self.conf)
        # mon
        self._run("ceph-authtool", "--create-keyring", self.keyring, "--gen-key", "-n", "mon.",
                  "--cap", "mon", "allow *")
        self._run("ceph-authtool", self.keyring, "--gen-key", "-n", "client.admin",
                  "--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *",
                  "--cap", "mds", "allow *")
        self._run("monmaptool", "--create", "--fsid", self._fsid(), "--addv", "a",
                  "[v2:127.0.0.1:%d]" % mon_port, os.path.join(d, "monmap"))
        self._run("ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", os.path.join(d, "monmap"),
                  "--keyring", self.keyring)
        self._spawn("mon.a", "ceph-mon", *c, "-f", "-i", "a")
        self._wait("mon", lambda: self._ceph_ok("mon", "stat"), 60)
        self._log("mon up on 127.0.0.1:%d after %.1f s" % (mon_port, time.time() - t0))
        # osd (memstore)
        osd_uuid = str(uuid.uuid4())
        osd_id = self._run("ceph", *c, "osd", "new", osd_uuid).stdout.decode().strip()
        self._run("ceph-osd", *c, "-i", osd_id, "--mkfs", "--mkkey", "--no-mon-config",
                  "--osd-uuid", osd_uuid)
        self._run("ceph", *c, "auth", "add", "osd." + osd_id, "osd", "allow *", "mon",
                  "allow profile osd", "mgr", "allow profile osd", "-i",
                  os.path.join(d, "osd", "ceph-" + osd_id, "keyring"))
        self._spawn("osd." + osd_id, "ceph-osd", *c, "-f", "-i", osd_id)

        def osd_up():
            p = self._run("ceph", *c, "osd", "dump", check=False, timeout=30)
            return p.returncode == 0 and ("osd.%s up" % osd_id) in p.stdout.decode()
        self._wait("osd up", osd_up, 90)
        self._log("osd.%s up after %.1f s" % (osd_id, time.time() - t0))
        # rbd pool
        self._run("ceph", *c, "osd", "pool", "create", self.pool, "8", "8")
        self._run("rbd", *c, "pool", "init", self.pool)
        if self.with_rgw:
            self._start_rgw(rgw_port, t0)
        with open(os.path.join(d, "env"), "w") as f:
            f.write("export CEPH_DIR=%s\nexport CEPH_CONF=%s\nexport CEPH_KEYRING=%s\n"
                    "export CEPH_ARGS=\"-c %s\"\nexport CEPH_POOL=%s\n" % (
                        d, self.conf, self.keyring, self.conf, self.pool))
            if self.with_rgw:
                f.write("export S3_ENDPOINT=%s\nexport S3_REGION=us-east-1\n"
                        "export AWS_ACCESS_KEY_ID=%s\nexport AWS_SECRET_ACCESS_KEY=%s\n" % (
                            self.s3_endpoint, S3_ACCESS_KEY, S3_SECRET_KEY))

    def _fsid(self):
        with open(self.conf) as f:
            for line in f:
                if line.startswith("fsid = "):
                    return line.split("=", 1)[1].strip()
        raise RuntimeError("no fsid in " + self.conf)

    def _start_rgw(self, rgw_port, t0):
        import urllib.request
        c = ("-c", self.conf)
        rgw_keyring = os.path.join(self.dir, "rgw", "keyring")
        self._run("ceph", *c, "auth", "get-or-create", "client.rgw.a", "mon", "allow rw", "osd",
                  "allow rwx", "-o", rgw_keyring)
        self._spawn("rgw.a", "radosgw", *c, "-f", "-n", "client.rgw.a", "-k", rgw_keyring)
        self.s3_endpoint = "http://127.0.0.1:%d" % rgw_port

        def rgw_up():
            try:
                urllib.request.urlopen(self.s3_endpoint + "/", timeout=2).close()
                return True
            except Exception as e:  # an HTTP error answer is up too
                return hasattr(e, "code")
        self._wait("radosgw", rgw_up, 120)
        self._run("radosgw-admin", *c, "user", "create", "--uid=test", "--display-name=test",
                  "--access-key=" + S3_ACCESS_KEY, "--secret-key=" + S3_SECRET_KEY)
        self._log("radosgw up on 127.0.0.1:%d after %.1f s" % (rgw_port, time.time() - t0))

    def stop(self):
        """SIGKILLs exactly the daemons it started (newest first) and removes
        the dir (KEEP_CEPH_DIR=1 keeps it, for the logs)."""
        for pid in reversed(self.pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in self._children:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.pids = []
        self._children = []
        if self.dir and not os.environ.get("KEEP_CEPH_DIR"):
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    # ---- clients --------------------------------------------------------

    def rbd(self, *args, check=True, timeout=120, input=None):
        """Runs the rbd CLI against this cluster's pool; returns the CompletedProcess."""
        return self._run("rbd", "-c", self.conf, *args, check=check, timeout=timeout, input=input)

    def ceph(self, *args, check=True, timeout=60):
        return self._run("ceph", "-c", self.conf, *args, check=check, timeout=timeout)

    def add_client(self, name, caps=("mon", "profile rbd", "osd", "profile rbd")):
        """A cephx user client.NAME with `caps`; returns the path of its keyring."""
        path = os.path.join(self.dir, "client.%s.keyring" % name)
        self.ceph("auth", "get-or-create", "client." + name, *caps, "-o", path)
        return path

    def qemu_uri(self, image, snap=None):
        """The `rbd:` file name qemu-img takes for `image` (and snapshot)."""
        s = "rbd:%s/%s" % (self.pool, image)
        if snap:
            s += "@" + snap
        return s + ":conf=" + self.conf


def _stop_dir(d):
    """Stop the cluster of a dir made by `start` from the shell."""
    try:
        with open(os.path.join(d, "pids")) as f:
            pids = [int(x) for x in f.read().split()]
    except OSError as e:
        sys.stderr.write("[ceph_fixture] %s: %s\n" % (d, e))
        return 1
    for pid in reversed(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in pids:
        for _ in range(100):
            if not _alive(pid):
                break
            time.sleep(0.05)
    if not os.environ.get("KEEP_CEPH_DIR"):
        shutil.rmtree(d, ignore_errors=True)
    return 0


def main(argv):
    if len(argv) >= 1 and argv[0] == "start":
        cluster = CephCluster(with_rgw="--rgw" in argv[1:])
        try:
            cluster.start()
        except RuntimeError as e:
            sys.stderr.write("[ceph_fixture] %s\n" % e)
            return 1
        # The daemons outlive this process; `stop DIR` kills them by PID.
        print(cluster.dir)
        return 0
    if len(argv) == 2 and argv[0] == "stop":
        return _stop_dir(argv[1])
    if len(argv) == 1 and argv[0] == "check":
        problem = unavailable(True)
        print(problem or "ok")
        return 1 if problem else 0
    sys.stderr.write("usage: ceph_fixture.py start [--rgw] | stop DIR | check\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
