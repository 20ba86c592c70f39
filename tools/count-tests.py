#!/usr/bin/python3
"""Counts test cases from meson test logs and prints `N passed, N failed[, N skipped]`.

usage: count-tests.py [--extra-failed N] [--sanitizer-logs DIR] LABEL=build/meson-logs/testlog.json ...

Each line of a testlog.json is one meson test. Counting, per meson test:
  * integration tests print `KVMFS-IT-RESULT: file=F passed=N failed=N skipped=N`
    (tests/integration/kvmfs_harness.py); a whole file skipped counts as 1 skipped;
  * GoogleTest executables: one case per `[       OK ] X (N ms)`, `[  FAILED  ] X (N ms)`,
    `[  SKIPPED ] X (N ms)` line;
  * anything else counts as one case by meson's result.
A meson test that failed (crash, timeout, bad exit) without a counted failing case
adds one failure, so a crash never hides. `--extra-failed` adds failures that
happened outside meson (a build that did not compile); every distinct sanitizer
report (same error at the same stack, whichever process hit it) found in
`--sanitizer-logs` adds one failure and is printed once.
"""

import glob
import json
import os
import re
import sys

IT_RE = re.compile(r"^KVMFS-IT-RESULT: file=(\S+) passed=(\d+) failed=(\d+) skipped=(\d+|all)\s*$", re.M)
GT_OK = re.compile(r"^\[       OK \] .* \(\d+ ms\)$", re.M)
GT_FAILED = re.compile(r"^\[  FAILED  \] .* \(\d+ ms\)$", re.M)
GT_SKIPPED = re.compile(r"^\[  SKIPPED \] .* \(\d+ ms\)$", re.M)
GOOD = ("OK", "EXPECTEDFAIL")


def count_log(label, path):
    total = [0, 0, 0]
    lines = []
    if not os.path.exists(path):
        print("[%s] no test log at %s: counted as 1 failed" % (label, path))
        return [0, 1, 0]
    with open(path) as f:
        for raw in f:
            raw = raw.strip()
            if not raw:
                continue
            rec = json.loads(raw)
            text = (rec.get("stdout") or "") + "\n" + (rec.get("stderr") or "")
            result = rec.get("result", "?")
            p = fl = s = 0
            m = IT_RE.findall(text)
            if m:
                _, ps, fs, ss = m[-1]
                if ss == "all":
                    s = 1
                else:
                    p, fl, s = int(ps), int(fs), int(ss)
                kind = "cases"
            elif "[==========]" in text:
                p, fl, s = len(GT_OK.findall(text)), len(GT_FAILED.findall(text)), len(GT_SKIPPED.findall(text))
                kind = "gtest cases"
            else:
                if result in GOOD:
                    p = 1
                elif result == "SKIP":
                    s = 1
                else:
                    fl = 1
                kind = "meson test"
            if result not in GOOD and result != "SKIP" and fl == 0:
                fl = 1  # crashed, timed out or exited badly after its cases passed
            total[0] += p
            total[1] += fl
            total[2] += s
            lines.append("[%s] %-40s %-8s %d passed, %d failed, %d skipped (%s)" % (
                label, rec.get("name", "?"), result, p, fl, s, kind))
    print("\n".join(lines))
    return total


def main(argv):
    extra_failed = 0
    san_dir = None
    logs = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--extra-failed":
            extra_failed += int(argv[i + 1])
            i += 2
            continue
        if a == "--sanitizer-logs":
            san_dir = argv[i + 1]
            i += 2
            continue
        label, _, path = a.partition("=")
        logs.append((label, path))
        i += 1
    total = [0, extra_failed, 0]
    for label, path in logs:
        t = count_log(label, path)
        total = [x + y for x, y in zip(total, t)]
    if san_dir:
        distinct = {}
        for r in sorted(glob.glob(os.path.join(san_dir, "*"))):
            with open(r, errors="replace") as f:
                text = f.read()
            if not text.strip():
                continue
            key = re.sub(r"==\d+==|0x[0-9a-fA-F]+|\(pid=\d+\)|/tmp/\S+", "", text)
            distinct.setdefault(key, []).append((r, text))
        for key, hits in distinct.items():
            total[1] += 1
            print("sanitizer report (counted as 1 failed; %d processes hit it, e.g. %s):" % (len(hits), hits[0][0]))
            print(hits[0][1][-6000:])
    line = "%d passed, %d failed" % (total[0], total[1])
    if total[2]:
        line += ", %d skipped" % total[2]
    print(line)
    return 1 if total[1] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
