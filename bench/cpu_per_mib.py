#!/usr/bin/python3
"""CPU cost per MiB of a sequential O_DIRECT 1 MiB read, for A/B comparisons of kvmfs builds.

    python3 bench/cpu_per_mib.py ROUNDS SECONDS NAME=PID:MOUNT [NAME=PID:MOUNT ...] -- IMAGE...

For each round, each IMAGE (a folder name under every MOUNT, e.g. zlib-exe.qcow2) and each
mount (alternating which goes first per round), runs fio (psync, direct=1, bs=1M, one job) on
MOUNT/IMAGE/disk.raw and prints MiB/s, the kvmfs process's CPU time (utime+stime of PID) per
MiB read, and fio's. Throughput on a shared machine says little; CPU per MiB does: on a quiet
2-core machine a CPU-bound reader gets at most 2 s / (kvmfs + fio CPU per MiB). The last line
is JSON: {"IMAGE|NAME": [[MiB/s, kvmfs ms/MiB, fio ms/MiB], ...]}. Standard library only.
"""
import json
import os
import statistics
import subprocess
import sys


def cpu_seconds(pid):
    fields = open("/proc/%s/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv):
    if "--" not in argv or len(argv) < 5:
        sys.exit(__doc__)
    sep = argv.index("--")
    rounds, secs = int(argv[1]), int(argv[2])
    systems = []
    for a in argv[3:sep]:
        name, rest = a.split("=", 1)
        pid, mnt = rest.split(":", 1)
        systems.append((name, pid, mnt))
    images = argv[sep + 1:]
    res = {}
    for r in range(rounds):
        for img in images:
            for name, pid, mnt in (systems if r % 2 == 0 else systems[::-1]):
                c0 = cpu_seconds(pid)
                p = subprocess.run(
                    ["fio", "--name=cpu", "--filename=" + os.path.join(mnt, img, "disk.raw"),
                     "--rw=read", "--bs=1M", "--ioengine=psync", "--direct=1",
                     "--runtime=%d" % secs, "--time_based", "--invalidate=0",
                     "--allow_file_create=0", "--output-format=json"],
                    capture_output=True, text=True, check=True)
                c1 = cpu_seconds(pid)
                job = json.loads(p.stdout)["jobs"][0]
                mib = job["read"]["io_bytes"] / 2**20
                runtime = job["read"]["runtime"] / 1000
                fio_cpu = (job["usr_cpu"] + job["sys_cpu"]) / 100 * runtime
                row = [mib / runtime, (c1 - c0) * 1000 / mib, fio_cpu * 1000 / mib]
                res.setdefault("%s|%s" % (img, name), []).append(row)
                print("round %d %-16s %-6s %7.0f MiB/s  kvmfs %.3f ms/MiB  fio %.3f ms/MiB  "
                      "load %.1f" % (r + 1, img, name, row[0], row[1], row[2], os.getloadavg()[0]),
                      flush=True)
    for key, rows in res.items():
        cols = list(zip(*rows))
        print("median %-24s %7.0f MiB/s  kvmfs %.3f ms/MiB (%.3f-%.3f)  fio %.3f ms/MiB" % (
            key, statistics.median(cols[0]), statistics.median(cols[1]), min(cols[1]),
            max(cols[1]), statistics.median(cols[2])))
    print(json.dumps(res))


if __name__ == "__main__":
    main(sys.argv)
