#!/usr/bin/env python3
"""What FUSE-over-io_uring would give kvmfs, measured before building it (issue 16).

Mounts bench/fuse_uring_probe twice for the whole run -- one over classic /dev/fuse
(libfuse-like: threads on cloned descriptors, read + writev) and one over FUSE-over-io_uring
-- each serving one file of --size-mib MiB from memory, and optionally kvmfs (-o ro) over a
plain qcow2 of the same bytes. Then, for --rounds rounds, alternating the order every round,
runs fio exactly as bench/run.py does (psync):
  seq:   1 MiB sequential reads, O_DIRECT, 1 job
  rand:  4 KiB random reads, O_DIRECT, 2 jobs
and the page-cache ceiling (the same fio, buffered, on a raw file of the same bytes in the
host page cache). Reports medians, (min-max) and the ratios.

FUSE-over-io_uring needs the fuse module parameter enable_uring=Y: this script sets it for
the run and always puts back the value it found (root only). Nothing else is changed.

  python3 bench/fuse_uring_bench.py --probe BUILD/bench/fuse_uring_probe \
      [--kvmfs BUILD/src/fuse/kvmfs] [--rounds 3] [--runtime 5] [--size-mib 512] [--out FILE.md]
  python3 bench/fuse_uring_bench.py --probe ... --self-test classic|uring   (the meson test)
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

URING_PARAM = "/sys/module/fuse/parameters/enable_uring"
MiB = 1 << 20


def log(msg):
    print(msg, flush=True)


def read_param():
    try:
        with open(URING_PARAM) as f:
            return f.read().strip()
    except OSError:
        return None


def write_param(value):
    with open(URING_PARAM, "w") as f:
        f.write(value)


def is_mounted(path):
    return subprocess.run(["mountpoint", "-q", path]).returncode == 0


def wait_mounted(proc, path, what, timeout=30):
    t0 = time.monotonic()
    while not is_mounted(path):
        if proc.poll() is not None:
            raise RuntimeError("%s exited (rc=%s) before mounting %s" % (what, proc.returncode, path))
        if time.monotonic() - t0 > timeout:
            raise RuntimeError("%s did not mount %s in %d s" % (what, path, timeout))
        time.sleep(0.05)


def unmount(proc, path):
    if is_mounted(path):
        subprocess.run(["umount", "-l", path], check=False)
    if proc is not None and proc.poll() is None:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def self_test(args):
    """The meson test: the probe reads its own file for ~2 s per transport, checking bytes."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        print("SKIPPED: needs root and /dev/fuse", file=sys.stderr)
        return 77
    before = read_param()
    if args.self_test == "uring" and before != "Y":
        # On for this test only, as the benchmark does (only a server that asks for it in
        # FUSE_INIT gets a ring: other mounts meanwhile are not affected).
        try:
            write_param("Y")
        except OSError as e:
            print("*** SKIPPED: FUSE-over-io_uring is not available here (%s = %s, cannot set "
                  "it: %s) ***" % (URING_PARAM, before, e), file=sys.stderr)
            return 77
    mnt = tempfile.mkdtemp(prefix="kvmfs-uring-probe-")
    try:
        p = subprocess.run([args.probe, "--mode", args.self_test, "--mount", mnt, "--size-mib", "32",
                            "--self-test", "2"], timeout=60, capture_output=True, text=True)
        sys.stdout.write(p.stdout)
        sys.stderr.write(p.stderr)
        if p.returncode == 0 and "READ requests" not in p.stdout:
            return 1  # "passed" without having read anything
        return p.returncode
    finally:
        if is_mounted(mnt):
            subprocess.run(["umount", "-l", mnt], check=False)
        os.rmdir(mnt)
        if args.self_test == "uring" and before is not None and before != "Y":
            write_param(before)


def fio(path, rw, bs, jobs, runtime, direct):
    argv = ["fio", "--name=bench", "--filename=" + path, "--rw=" + rw, "--bs=" + bs,
            "--ioengine=psync", "--direct=%d" % direct, "--numjobs=%d" % jobs, "--group_reporting",
            "--output-format=json", "--runtime=%d" % runtime, "--time_based", "--invalidate=0",
            "--randrepeat=0", "--norandommap", "--random_generator=tausworthe64",
            "--allow_file_create=0"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=runtime + 120)
    if p.returncode != 0:
        raise RuntimeError("fio %s failed: %s" % (path, p.stderr[-800:]))
    out = p.stdout[p.stdout.index("{"):]
    job = json.loads(out)["jobs"][0]
    rd = job["read"]
    mib = rd["io_bytes"] / MiB
    # fio's own CPU (the reader: syscalls, the kernel's copy into its buffer), per MiB read
    fio_cpu = (job["usr_cpu"] + job["sys_cpu"]) / 100.0 * rd["runtime"] / 1000.0 * jobs
    return (rd["bw_bytes"] / MiB if bs == "1M" else rd["iops"]), mib, fio_cpu


def cpu_seconds(pid):
    """utime + stime of process `pid` (all its threads), in seconds."""
    if pid is None:
        return 0.0
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spread(v):
    return "%.0f (%.0f–%.0f)" % (statistics.median(v), min(v), max(v))


def measure(args):
    if os.geteuid() != 0:
        print("needs root (mount, enable_uring)", file=sys.stderr)
        return 1
    before = read_param()
    if before is None:
        print("this kernel has no %s: no FUSE-over-io_uring to measure" % URING_PARAM,
              file=sys.stderr)
        return 77
    work = tempfile.mkdtemp(prefix="kvmfs-uring-bench-", dir=args.workdir)
    procs = []
    try:
        if not args.no_probe:
            write_param("Y")
            log("%s: %s -> Y for the run" % (URING_PARAM, before))
        mounts = {}
        names = {}
        pids = {}
        for mode in ([] if args.no_probe else ["classic", "uring"]):
            mnt = os.path.join(work, "mnt-" + mode)
            os.mkdir(mnt)
            proc = subprocess.Popen([args.probe, "--mode", mode, "--mount", mnt, "--size-mib",
                                     str(args.size_mib), "--threads", str(args.threads),
                                     "--depth", str(args.depth)],
                                    stdout=subprocess.DEVNULL, stderr=open(mnt + ".log", "w"))
            procs.append((proc, mnt))
            pids[mode] = proc.pid
            wait_mounted(proc, mnt, "probe " + mode)
            mounts[mode] = os.path.join(mnt, "data")
        # The same bytes as a raw file in the page cache: the ceiling (and kvmfs's image).
        raw = os.path.join(work, "disk.img")
        with open(raw, "wb") as dst:
            if mounts:
                with open(mounts["classic"], "rb") as src:
                    shutil.copyfileobj(src, dst, MiB)
            else:
                for _ in range(args.size_mib):
                    dst.write(os.urandom(MiB))
        if args.kvmfs:
            pool = os.path.join(work, "pool")
            os.mkdir(pool)
            image = os.path.join(pool, "plain.qcow2")
            if args.compress:
                # bench/run.py's compressed rows: half random, half the host's executables
                sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
                import run as bench_run
                src = os.path.join(work, "exe.raw")
                bench_run.write_source_raw(src, args.size_mib * MiB, corpus=bench_run.executable_corpus(
                    min(args.size_mib * MiB, 256 * MiB)))
                subprocess.run(["qemu-img", "convert", "-O", "qcow2", "-c", "-o",
                                "compression_type=" + args.compress, src, image], check=True)
                os.unlink(src)
            else:
                subprocess.run(["qemu-img", "convert", "-O", "qcow2", raw, image], check=True)
            for i, spec in enumerate(args.kvmfs):
                binary, _, extra = spec.partition(":")
                name = "kvmfs" if len(args.kvmfs) == 1 else "kvmfs%d" % (i + 1)
                mnt = os.path.join(work, "mnt-" + name)
                os.mkdir(mnt)
                opts = ",".join(["ro"] + [o for o in (args.kvmfs_opts + "," + extra).split(",") if o])
                proc = subprocess.Popen([binary, "-f", "-o", opts, pool, mnt],
                                        stdout=subprocess.DEVNULL, stderr=open(mnt + ".log", "w"))
                procs.append((proc, mnt))
                pids[name] = proc.pid
                wait_mounted(proc, mnt, name)
                mounts[name] = os.path.join(mnt, "plain.qcow2", "disk.raw")
                names[name] = "%s %s, %s qcow2, -o %s" % (name, binary, args.compress or "plain", opts)
            subprocess.run(["cat", image], stdout=subprocess.DEVNULL)
        subprocess.run(["cat", raw], stdout=subprocess.DEVNULL)
        mounts["ceiling"] = raw
        systems = list(mounts)
        res = {w: {s: [] for s in systems} for w in ("seq", "rand")}
        # CPU per MiB read: the server (probe or kvmfs) and the reader (fio), seq and rand
        cpu = {w: {s: {"server": [], "fio": []} for s in systems} for w in ("seq", "rand")}
        for r in range(args.rounds):
            order = systems if r % 2 == 0 else list(reversed(systems))
            log("round %d/%d (load %.2f): %s" % (r + 1, args.rounds, os.getloadavg()[0], " ".join(order)))
            for s in order:
                direct = 0 if s == "ceiling" else 1
                for w, rw, bs, jobs in (("seq", "read", "1M", 1), ("rand", "randread", "4k", 2)):
                    c0 = cpu_seconds(pids.get(s))
                    rate, mib, fio_cpu = fio(mounts[s], rw, bs, jobs, args.runtime, direct)
                    res[w][s].append(rate)
                    cpu[w][s]["server"].append((cpu_seconds(pids.get(s)) - c0) * 1e6 / mib)
                    cpu[w][s]["fio"].append(fio_cpu * 1e6 / mib)
                log("  %-8s seq 1 MiB %6.0f MiB/s   rand 4 KiB %7.0f IOPS" % (
                    s, res["seq"][s][-1], res["rand"][s][-1]))
        report(args, res, systems, before, names, cpu)
    finally:
        for proc, mnt in procs:
            unmount(proc, mnt)
        cur = read_param()
        if cur != before:
            write_param(before)
        log("%s: back to %s" % (URING_PARAM, read_param()))
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(args, res, systems, before, names, cpu):
    med = {w: {s: statistics.median(v) for s, v in res[w].items()} for w in res}
    names = dict(names)
    names.update({"classic": "probe, classic /dev/fuse (%d threads, read + writev)" % args.threads,
                  "uring": "probe, FUSE-over-io_uring (1 queue per CPU, depth %d)" % args.depth,
                  "ceiling": "ceiling: raw file in the host page cache, buffered"})
    lines = ["| transport | seq 1 MiB O_DIRECT, MiB/s | / ceiling | rand 4 KiB O_DIRECT, 2 jobs, IOPS | / ceiling (buffered 4 KiB) |",
             "|---|---|---|---|---|"]
    for s in systems:
        lines.append("| %s | %s | %.2f× | %s | %.2f× |" % (
            names[s], spread(res["seq"][s]), med["seq"][s] / med["seq"]["ceiling"],
            spread(res["rand"][s]), med["rand"][s] / med["rand"]["ceiling"]))
    lines.append("")
    lines.append("CPU time per MiB read (medians; less sensitive to a loaded machine than the rates):")
    lines.append("")
    lines.append("| transport | seq: server µs/MiB | seq: fio µs/MiB | rand: server µs/MiB | rand: fio µs/MiB |")
    lines.append("|---|---|---|---|---|")
    for s in systems:
        m = lambda w, side: statistics.median(cpu[w][s][side])
        lines.append("| %s | %.0f | %.0f | %.0f | %.0f |" % (
            s, m("seq", "server"), m("seq", "fio"), m("rand", "server"), m("rand", "fio")))
    lines.append("")
    if "uring" in systems:
        lines.append("io_uring / classic: seq %.2f×, rand %.2f×" % (
            med["seq"]["uring"] / med["seq"]["classic"], med["rand"]["uring"] / med["rand"]["classic"]))
    for k in [s for s in systems if s.startswith("kvmfs")]:
        base = "classic" if "classic" in systems else "kvmfs1"
        if k != base:
            lines.append("%s / %s: seq %.2f×, rand %.2f×" % (
                k, base, med["seq"][k] / med["seq"][base], med["rand"][k] / med["rand"][base]))
    lines.append("")
    lines.append("Medians of %d rounds (min–max), %d s per fio run, %d MiB file, order reversed "
                 "every round; %d CPUs, kernel %s, load %.2f at the end; enable_uring was %s before "
                 "the run and is again." % (args.rounds, args.runtime, args.size_mib,
                                            os.cpu_count(), os.uname().release,
                                            os.getloadavg()[0], before))
    text = "\n".join(lines)
    log("\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--probe", help="the fuse_uring_probe binary (not needed with --no-probe)")
    ap.add_argument("--self-test", choices=["classic", "uring"], help="the meson test")
    ap.add_argument("--kvmfs", action="append", default=[],
                    help="also measure kvmfs (-o ro) over a plain qcow2 of the same bytes: "
                         "BINARY[:OPTS,...]; repeat to compare builds or options (A/B)")
    ap.add_argument("--no-probe", action="store_true", help="kvmfs mounts and the ceiling only")
    ap.add_argument("--compress", choices=["zlib", "zstd"],
                    help="kvmfs's image compressed, half executables (as bench/run.py's rows)")
    ap.add_argument("--kvmfs-opts", default="", help="extra kvmfs -o options")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runtime", type=int, default=5)
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2, help="classic probe threads")
    ap.add_argument("--depth", type=int, default=4, help="io_uring entries per queue")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", help="also write the table (markdown) here")
    args = ap.parse_args()
    if not args.probe and (args.self_test or not args.no_probe):
        ap.error("--probe is needed (unless --no-probe)")
    if args.self_test:
        return self_test(args)
    return measure(args)


if __name__ == "__main__":
    sys.exit(main())
