#!/usr/bin/env python3
"""kvmfs under systemd: configs/kvmfs@.service is Type=notify, and the command
it runs speaks sd_notify(3) and logs to the journal with priorities.

The unit's own ExecStart line is run (its %i paths pointed at a test config
and mount point) with NOTIFY_SOCKET naming an AF_UNIX datagram socket this
test binds and reads, as systemd would:

  READY=1     arrives only once the mount answers: at that moment a stat(2)
              of the mount point already shows the FUSE root (st_dev of the
              mount, the pools listed, within 5 s), never the folder
              underneath (a READY sent before mounting fails here; kvmfs
              sends it after a stat of its own came back from the loop);
  STATUS=     names the pools, and follows the files open through the mount;
  RELOADING=1 then READY=1 around a SIGHUP reload (with the new pools);
  STOPPING=1  when fusermount3 -u unmounts.

The journal: with JOURNAL_STREAM naming kvmfs's stderr (dev:inode, as
systemd sets it), lines are "<N>message" with the syslog priority N; with a
JOURNAL_STREAM that does not match stderr, the log is as it always was.

`systemd-analyze verify` of the unit when the tool is installed (package
systemd), else that case says SKIPPED.
"""

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvmfs_harness as h  # noqa: E402

UNIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs",
                    "kvmfs@.service")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
MSG_TIMEOUT_S = 15


def unit_text():
    with open(UNIT) as f:
        return f.read()


def unit_settings(text):
    """[Service] key -> list of values."""
    out = {}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]" and "=" in line:
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def unit_command(config, mnt):
    """The unit's ExecStart as argv, for instance config/mnt."""
    s = unit_settings(unit_text())
    env = dict(e.split("=", 1) for e in s.get("Environment", []))
    cmd = s["ExecStart"][0]
    cmd = cmd.replace("@bindir@/kvmfs", h.kvmfs_bin())
    cmd = cmd.replace("/etc/kvmfs/%i.yaml", config).replace("/srv/kvmfs/%i", mnt)
    cmd = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], cmd)
    return shlex.split(cmd)


class Notifications:
    """The NOTIFY_SOCKET end: every datagram, parsed into KEY=VALUE dicts."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.messages = []

    def close(self):
        self.sock.close()

    def wait_for(self, pred, what, timeout=MSG_TIMEOUT_S, on_message=None):
        """Reads datagrams until one satisfies pred (returned); fails after timeout."""
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise AssertionError("no %s within %ds; got %r" % (what, timeout, self.messages))
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            msg = dict(l.split("=", 1) for l in data.decode().splitlines() if "=" in l)
            if on_message:
                on_message(msg)
            self.messages.append(msg)
            if pred(msg):
                return msg


def stat_within(path, timeout=5):
    """os.stat(path), failing the test instead of hanging when the mount does
    not answer."""
    result = {}

    def run():
        try:
            result["st"] = os.stat(path)
            result["names"] = sorted(os.listdir(path))
        except OSError as e:
            result["err"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise AssertionError("%s did not answer within %ds" % (path, timeout))
    if "err" in result:
        raise result["err"]
    return result


class SystemdTest(h.KvmfsTestCase):

    @classmethod
    def make_images(cls):
        for pool in ("a", "b"):
            os.makedirs(os.path.join(cls.tmp, pool))
            h.create_qcow2(os.path.join(cls.tmp, pool, "vm.qcow2"), h.MiB)

    def write_config(self, pools, name="vms.yaml"):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write("pools:\n")
            for p in pools:
                f.write("  - name: %s\n    path: %s\n" % (p, os.path.join(self.tmp, p)))
        return path

    def start(self, config, mnt_name, env_extra):
        """Runs the unit's command in the foreground: (proc, mnt, log path)."""
        mnt = os.path.join(self.tmp, mnt_name)
        os.makedirs(mnt)  # the unit's ExecStartPre
        log_path = mnt + ".log"
        log = open(log_path, "wb")
        self.addCleanup(log.close)
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "INVOCATION_ID")}
        st = os.fstat(log.fileno())
        env.update({k: v.replace("@LOG@", "%d:%d" % (st.st_dev, st.st_ino))
                    for k, v in env_extra.items()})
        argv = unit_command(config, mnt)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)

        def stop():
            if h.is_mounted(mnt):
                subprocess.run([h.FUSERMOUNT, "-u", "-z", mnt], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=30)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.addCleanup(stop)
        return proc, mnt, log_path

    def unmount(self, proc, mnt):
        subprocess.run([h.FUSERMOUNT, "-u", mnt], check=True, timeout=30)
        self.assertEqual(proc.wait(timeout=20), 0)

    def test_unit_is_type_notify(self):
        s = unit_settings(unit_text())
        self.assertEqual(s.get("Type"), ["notify"])
        self.assertTrue(any("-f" in shlex.split(c) for c in s["ExecStart"]),
                        "the unit runs kvmfs in the foreground (its MAINPID)")
        self.assertTrue(any("-HUP" in c for c in s.get("ExecReload", [])), s.get("ExecReload"))

    def test_notify_ready_status_reload_stopping(self):
        notify = Notifications(os.path.join(self.tmp, "notify.sock"))
        self.addCleanup(notify.close)
        config = self.write_config(["a", "b"])
        # A JOURNAL_STREAM that is not kvmfs's stderr: the log stays as it was.
        proc, mnt, log_path = self.start(config, "mnt", {"NOTIFY_SOCKET": notify.path,
                                                         "JOURNAL_STREAM": "1:1"})
        parent_dev = os.stat(self.tmp).st_dev
        seen = {}

        def at_ready(msg):
            # The moment READY=1 arrives, the mount point must be the mount.
            if msg.get("READY") == "1" and "ready" not in seen:
                seen["ready"] = stat_within(mnt)
                seen["mounted"] = h.is_mounted(mnt)

        ready = notify.wait_for(lambda m: m.get("READY") == "1", "READY=1", on_message=at_ready)
        self.assertTrue(seen["mounted"])
        self.assertNotEqual(seen["ready"]["st"].st_dev, parent_dev)
        self.assertEqual(seen["ready"]["names"], ["a", "b"])
        self.assertEqual(ready.get("MAINPID"), str(proc.pid))
        self.assertIn("serving 2 pools (a, b) at %s" % mnt, ready.get("STATUS", ""))
        self.assertIn("0 files open through the mount", ready["STATUS"])
        for m in notify.messages[:-1]:
            self.assertNotIn("READY", m)

        # STATUS follows the files open through the mount (at most a second late).
        fd = os.open(os.path.join(mnt, "a", "vm.qcow2", "disk.raw"), os.O_RDONLY)
        try:
            st = notify.wait_for(lambda m: "1 file open through" in m.get("STATUS", ""),
                                 "STATUS with the open file", timeout=5)
            self.assertIn("1 image file open", st["STATUS"])
        finally:
            os.close(fd)
        notify.wait_for(lambda m: "0 files open through" in m.get("STATUS", ""),
                        "STATUS after the close", timeout=5)

        # SIGHUP: RELOADING=1, then READY=1 with the reloaded pools.
        os.makedirs(os.path.join(self.tmp, "c"))
        self.write_config(["a", "b", "c"])
        n = len(notify.messages)
        proc.send_signal(signal.SIGHUP)
        reloaded = notify.wait_for(lambda m: m.get("READY") == "1", "READY=1 after SIGHUP")
        during = notify.messages[n:]
        reloading = [i for i, m in enumerate(during) if m.get("RELOADING") == "1"]
        self.assertEqual(len(reloading), 1, during)
        self.assertIn("MONOTONIC_USEC", during[reloading[0]])
        # Nothing between RELOADING=1 and READY=1 (STATUS waits for the reload).
        self.assertEqual(len(during) - 1, reloading[0] + 1, during)
        self.assertIn("serving 3 pools (a, b, c)", reloaded.get("STATUS", ""))
        self.assertEqual(sorted(os.listdir(mnt)), ["a", "b", "c"])

        # fusermount3 -u: STOPPING=1, exit 0.
        subprocess.run([h.FUSERMOUNT, "-u", mnt], check=True, timeout=30)
        notify.wait_for(lambda m: m.get("STOPPING") == "1", "STOPPING=1")
        self.assertEqual(proc.wait(timeout=20), 0)

        with open(log_path) as f:
            log = f.read()
        self.assertRegex(log, r"(?m)^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} kvmfs\[\d+\] info: serving ")
        self.assertNotRegex(log, r"(?m)^<\d>")

    def test_journal_stream_priorities(self):
        # Pool "missing" has no folder: a warning at start.
        config = self.write_config(["a", "missing"], name="journal.yaml")
        proc, mnt, log_path = self.start(config, "mnt-journal", {"JOURNAL_STREAM": "@LOG@"})
        self.assertTrue(h.wait_until(lambda: h.is_mounted(mnt), timeout=h.MOUNT_TIMEOUT_S),
                        "not mounted")
        stat_within(mnt)
        self.unmount(proc, mnt)
        with open(log_path) as f:
            lines = f.read().splitlines()
        self.assertTrue(any(re.match(r"<6>serving \S+ at %s \(" % re.escape(mnt), l) for l in lines),
                        lines)
        self.assertTrue(any(l.startswith("<4>") and "missing" in l for l in lines), lines)
        # No time or name of its own: the journal adds them.
        for l in lines:
            self.assertNotRegex(l, r"^\d{4}-\d\d-\d\d ")
            self.assertRegex(l, r"^<[0-7]>", lines)

    def test_journal_stream_failure_is_an_error(self):
        # A config refused before mounting: the one line is filed as an error.
        config = os.path.join(self.tmp, "bad.yaml")
        with open(config, "w") as f:
            f.write("pools:\n  - name: [\n")
        proc, mnt, log_path = self.start(config, "mnt-bad", {"JOURNAL_STREAM": "@LOG@"})
        self.assertEqual(proc.wait(timeout=20), 1)
        with open(log_path) as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(lines[0], r"^<3>kvmfs: .*bad\.yaml")

    def test_systemd_analyze_verify(self):
        if SYSTEMD_ANALYZE is None:
            print("\n%s\nSKIPPED: systemd-analyze is not installed (package systemd): "
                  "the unit is not verified\n%s" % ("=" * 72, "=" * 72), flush=True)
            self.skipTest("systemd-analyze missing")
        d = os.path.join(self.tmp, "unit")
        os.makedirs(d)
        with open(os.path.join(d, "kvmfs@.service"), "w") as f:
            f.write(unit_text().replace("@bindir@", os.path.dirname(h.kvmfs_bin())))
        p = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no",
                            os.path.join(d, "kvmfs@vms.service")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60, cwd=d)
        self.assertEqual(p.returncode, 0, p.stdout.decode())
        self.assertEqual(p.stdout.decode().strip(), "")


if __name__ == "__main__":
    h.main()
