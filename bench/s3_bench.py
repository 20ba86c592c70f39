#!/usr/bin/python3
"""S3 pools (issue 13, Performance): sequential reads of one raw object from radosgw of a
throwaway single-node Ceph (tests/integration/ceph_fixture.py), side by side in one run:

  cold   kvmfs `backend: s3` with an empty cache_dir   vs  s3fs (Debian's s3fs) on the same bucket
  warm   kvmfs `backend: s3`, second mount, cache_dir from the cold run
         vs  kvmfs over a local directory pool holding the same bytes

    python3 bench/s3_bench.py --kvmfs BUILD/src/fuse/kvmfs              # 1 GiB object, 3 rounds
    python3 bench/s3_bench.py --kvmfs BUILD/src/fuse/kvmfs --smoke      # 64 MiB, 1 round

Each read is `dd`-like (1 MiB reads of the whole file) on a fresh mount, so no page cache of an
earlier round helps; the bytes are compared with the object. Goals (issue 13): cold >= 2x s3fs,
warm >= 0.8x the local pool. Exit 0 when every row ran and read the right bytes, 1 otherwise,
77 without FUSE, s3fs or the Ceph packages. Everything is made under a temporary directory that
is removed at the end, and the cluster is stopped.
"""

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import ceph_fixture  # noqa: E402

MiB = 1024 * 1024
REGION = "us-east-1"
BUCKET = "bench"


def run(argv, **kw):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=3600, **kw)
    if p.returncode != 0:
        raise RuntimeError("%s: rc %d: %s" % (" ".join(argv), p.returncode, p.stderr.strip()))
    return p


def curl(cluster, *args):
    run(["curl", "-sS", "-f", "--aws-sigv4", "aws:amz:%s:s3" % REGION, "--user",
         "%s:%s" % (ceph_fixture.S3_ACCESS_KEY, ceph_fixture.S3_SECRET_KEY),
         "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"] + list(args))


def wait_mounted(mnt, proc=None, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(mnt):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("exited with %d before mounting %s" % (proc.returncode, mnt))
        time.sleep(0.05)
    raise RuntimeError("%s not mounted" % mnt)


def unmount(mnt, proc=None):
    subprocess.run(["fusermount3", "-u", mnt], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if proc is not None:
        proc.wait(timeout=60)


def timed_read(path):
    """Seconds to read `path` sequentially in 1 MiB pieces, and the bytes' SHA-256."""
    h = hashlib.sha256()
    t0 = time.monotonic()
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(MiB)
            if not b:
                break
            h.update(b)
    return time.monotonic() - t0, h.hexdigest()


def kvmfs_read(args, work, cfg, rel, tag):
    mnt = os.path.join(work, "mnt-" + tag)
    os.makedirs(mnt, exist_ok=True)
    log = open(os.path.join(work, tag + ".log"), "ab")
    proc = subprocess.Popen([args.kvmfs, "-f", "-o", "ro", cfg, mnt], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_mounted(mnt, proc)
        return timed_read(os.path.join(mnt, rel))
    finally:
        unmount(mnt, proc)
        log.close()


def s3fs_read(cluster, work, key, tag):
    mnt = os.path.join(work, "mnt-" + tag)
    os.makedirs(mnt, exist_ok=True)
    pw = os.path.join(work, "s3fs.passwd")
    with open(pw, "w") as f:
        f.write("%s:%s\n" % (ceph_fixture.S3_ACCESS_KEY, ceph_fixture.S3_SECRET_KEY))
    os.chmod(pw, 0o600)
    proc = subprocess.Popen(["s3fs", BUCKET, mnt, "-f", "-o", "url=" + cluster.s3_endpoint,
                             "-o", "use_path_request_style", "-o", "passwd_file=" + pw,
                             "-o", "endpoint=" + REGION],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_mounted(mnt, proc)
        return timed_read(os.path.join(mnt, key))
    finally:
        unmount(mnt, proc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvmfs", required=True)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.size_mib, args.rounds = 64, 1
    problem = ceph_fixture.unavailable(with_rgw=True)
    if problem or not shutil.which("s3fs") or not os.path.exists("/dev/fuse"):
        print("SKIPPED: %s" % (problem or "s3fs or /dev/fuse missing (tools/setup-deps.sh)"))
        return 77
    work = tempfile.mkdtemp(prefix="kvmfs-s3-bench-")
    cluster = ceph_fixture.CephCluster(with_rgw=True,
                                       memstore_bytes=max(2048, 2 * args.size_mib + 512) * MiB)
    ok = True
    try:
        cluster.start()
        local = os.path.join(work, "local")
        os.makedirs(local)
        obj = os.path.join(local, "disk.raw")
        with open(obj, "wb") as f:
            for i in range(args.size_mib):
                f.write(os.urandom(MiB // 2) + bytes(MiB // 2))
        _, want = timed_read(obj)
        curl(cluster, "-X", "PUT", "%s/%s" % (cluster.s3_endpoint, BUCKET))
        curl(cluster, "-T", obj, "%s/%s/disk.raw" % (cluster.s3_endpoint, BUCKET))
        creds = os.path.join(work, "credentials")
        with open(creds, "w") as f:
            f.write("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n" % (
                ceph_fixture.S3_ACCESS_KEY, ceph_fixture.S3_SECRET_KEY))
        os.chmod(creds, 0o600)
        rows = {"kvmfs s3 cold": [], "s3fs cold": [], "kvmfs s3 warm": [], "kvmfs dir pool": []}
        local_cfg = os.path.join(work, "local.yaml")
        with open(local_cfg, "w") as f:
            f.write("pools:\n  - name: p\n    path: %s\n" % local)
        for r in range(args.rounds):
            cache = os.path.join(work, "cache-%d" % r)
            cfg = os.path.join(work, "s3-%d.yaml" % r)
            with open(cfg, "w") as f:
                f.write("pools:\n  - name: p\n    backend: s3\n    endpoint: %s\n    bucket: %s\n"
                        "    path_style: true\n    credentials: %s\n    cache_dir: %s\n"
                        "    cache_max: %dM\n" % (cluster.s3_endpoint, BUCKET, creds, cache,
                                                  2 * args.size_mib + 64))
            order = [("s3fs cold", lambda: s3fs_read(cluster, work, "disk.raw", "s3fs")),
                     ("kvmfs s3 cold", lambda: kvmfs_read(args, work, cfg, "p/disk.raw/disk.raw",
                                                          "cold"))]
            warm = [("kvmfs s3 warm", lambda: kvmfs_read(args, work, cfg, "p/disk.raw/disk.raw",
                                                         "warm")),
                    ("kvmfs dir pool", lambda: kvmfs_read(args, work, local_cfg,
                                                          "p/disk.raw/disk.raw", "dir"))]
            # Which side goes first alternates per round (the warm row needs
            # the cold row's cache, so the pairs stay in that order).
            if r % 2:
                order.reverse()
                warm.reverse()
            order += warm
            for name, fn in order:
                secs, digest = fn()
                if digest != want:
                    print("%s read wrong bytes" % name)
                    ok = False
                rows[name].append(secs)
        mb = args.size_mib
        med = {k: statistics.median(v) for k, v in rows.items() if v}
        print("\nS3 sequential read, %d MiB object, %d round(s) (medians, range of the rounds)"
              % (mb, args.rounds))
        print("| reader | MiB/s | range |")
        print("|---|---:|---:|")
        for k in rows:
            if k in med:
                print("| %s | %.1f | %.1f-%.1f |" % (k, mb / med[k], mb / max(rows[k]),
                                                      mb / min(rows[k])))

        def ratio(line, fast, slow, goal):
            if fast in med and slow in med:
                per_round = sorted(b / a for a, b in zip(rows[fast], rows[slow]))
                print("%s %.2fx (rounds %s; goal >= %s)" % (
                    line, med[slow] / med[fast], ", ".join("%.2f" % x for x in per_round), goal))
        ratio("cold: kvmfs vs s3fs", "kvmfs s3 cold", "s3fs cold", 2)
        ratio("warm: kvmfs s3 vs the local pool", "kvmfs s3 warm", "kvmfs dir pool", 0.8)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        print("FAILED: %s" % e)
        ok = False
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
