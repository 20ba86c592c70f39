#!/usr/bin/env python3
"""Seed corpora of the libFuzzer targets, made at run time with qemu-img and
qemu-io (no binary is committed): OUT/<target>/<seed> for every target of
tests/fuzz/. Standard library only.

    make_seeds.py OUT [--targets a,b,...]

Each format gets its interesting shapes (qcow2 v2/v3, cluster sizes,
extended L2, compressed zlib/zstd, snapshots, external data file, lazy
refcounts left dirty, backing name, bitmaps, LUKS; qcow; vdi static and
dynamic; vmdk subformats with their extents as "@@file" sections and their
descriptors alone; vpc fixed and dynamic; vhdx plain, large blocks and with
a pending log; luks; YAML configs). Targets whose input is not a plain image
get the image rewritten to their layout (see each target's comment).
"""
import argparse
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile

KiB, MiB = 1024, 1024 * 1024
SECRET = ["--object", "secret,id=sec0,data=fuzz"]


def run(*cmd, check=True):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if check and r.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(cmd), r.stdout.decode(errors="replace")))
    return r.returncode


def img(*args):
    run("qemu-img", *args)


# qemu-img for commands that derive a LUKS key: again while QEMU's PBKDF2 calibration measures
# no CPU time (the script says why).
QEMU_IMG_PBKDF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools",
                              "qemu-img-pbkdf")


def img_pbkdf(*args):
    run(QEMU_IMG_PBKDF, *args)


def io(path, fmt, *cmds, check=True):
    args = ["qemu-io", "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    return run(*args, path, check=check)


def read(path):
    with open(path, "rb") as f:
        return f.read()


class Seeds:
    def __init__(self, out, targets):
        self.out, self.targets, self.count = out, targets, {}

    def add(self, target, name, data):
        if self.targets and target not in self.targets:
            return
        d = os.path.join(self.out, target)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
        self.count[target] = self.count.get(target, 0) + 1


def with_files(main, files):
    """main, then a "\\n@@file NAME\\n" section per related file."""
    out = bytearray(main)
    for name, data in files:
        out += b"\n@@file " + name.encode() + b"\n" + data
    return bytes(out)


def ops_section(rng, n):
    return b"\n@@ops\n" + bytes(rng.getrandbits(8) for _ in range(13 * n))


# ---- qcow2 ---------------------------------------------------------------------------

def qcow2_images(w):
    """(name, image bytes, related files) of every qcow2 shape."""
    out = []

    def make(name, size, opts, writes=(), fmt_cmds=None, related=()):
        p = os.path.join(w, name)
        args = ["create", "-q", "-f", "qcow2"]
        if opts:
            args += ["-o", opts]
        img(*args, p, size)
        if writes:
            io(p, "qcow2", *writes)
        out.append((name, read(p), [(r, read(os.path.join(w, r))) for r in related]))
        return p

    pattern = ["write -P 0x11 0 4k", "write -P 0x22 100k 8k", "write -z 300k 64k"]
    make("v2-64k", "4M", "compat=0.10", ["write -P 0x11 0 4k", "write -P 0x22 1M 70k"])
    make("v3-512", "1M", "cluster_size=512", pattern)
    make("v3-4k", "4M", "cluster_size=4096", pattern + ["write -P 0x33 3M 12k"])
    make("v3-64k", "8M", "", pattern + ["write -P 0x44 7M 130k", "discard 0 4k"])
    make("v3-ext-l2-32k", "4M", "extended_l2=on,cluster_size=32k",
         ["write -P 0x55 0 1k", "write -P 0x66 40k 3k", "write -z 96k 2k"])
    make("v3-ext-l2-64k", "4M", "extended_l2=on", ["write -P 0x77 2k 2k", "write -P 0x78 1M 64k"])
    make("v3-refcount1", "2M", "refcount_bits=1", pattern)
    make("v3-refcount64", "2M", "refcount_bits=64,cluster_size=4096", pattern)
    make("v3-lazy", "2M", "lazy_refcounts=on", pattern)
    make("v3-zstd", "2M", "compression_type=zstd", ["write -c -P 0x12 0 64k", "write -P 1 64k 64k"])
    make("v3-zlib-c", "2M", "cluster_size=4096", ["write -c -P 0x13 0 4k", "write -c -P 0x14 8k 8k",
                                                   "write -P 2 64k 4k"])
    make("base.qcow2", "2M", "", ["write -P 4 0 64k"])
    make("v3-backing", "2M", "backing_file=base.qcow2,backing_fmt=qcow2", ["write -P 3 0 4k"])
    # Snapshots: writes between them, so the tables share and differ.
    p = make("v3-snap", "2M", "cluster_size=4096", ["write -P 0x21 0 8k"])
    img("snapshot", "-q", "-c", "one", p)
    io(p, "qcow2", "write -P 0x22 4k 8k")
    img("snapshot", "-q", "-c", "two", p)
    io(p, "qcow2", "write -P 0x23 64k 4k")
    out[-1] = ("v3-snap", read(p), [])
    p = make("v2-snap", "1M", "compat=0.10,cluster_size=4096", ["write -P 0x31 0 8k"])
    img("snapshot", "-q", "-c", "s1", p)
    io(p, "qcow2", "write -P 0x32 0 4k")
    out[-1] = ("v2-snap", read(p), [])
    # External data file (relative name, as the pool gives it).
    cwd = os.getcwd()
    os.chdir(w)
    try:
        img("create", "-q", "-f", "qcow2", "-o", "data_file=data.raw,cluster_size=4096", "df.qcow2", "256K")
        io("df.qcow2", "qcow2", "write -P 0x41 0 8k", "write -P 0x42 128k 4k")
        out.append(("v3-data-file", read("df.qcow2"), [("data.raw", read("data.raw"))]))
        img("create", "-q", "-f", "qcow2", "-o", "data_file=raw.raw,data_file_raw=on,cluster_size=4096",
            "dfr.qcow2", "128K")
        io("dfr.qcow2", "qcow2", "write -P 0x43 4k 8k")
        out.append(("v3-data-file-raw", read("dfr.qcow2"), [("raw.raw", read("raw.raw"))]))
    finally:
        os.chdir(cwd)
    # Left dirty: lazy refcounts and a write that never closed.
    p = make("v3-dirty", "2M", "lazy_refcounts=on,cluster_size=4096", ["write -P 0x51 0 4k"])
    io(p, "qcow2", "write -P 0x52 64k 8k", "abort", check=False)
    out[-1] = ("v3-dirty", read(p), [])
    # A persistent bitmap (autoclear bit, extension).
    p = make("v3-bitmap", "1M", "cluster_size=4096", ["write -P 0x61 0 4k"])
    img("bitmap", "--add", p, "bm0")
    out[-1] = ("v3-bitmap", read(p), [])
    return out


def qcow2_luks(w):
    p = os.path.join(w, "enc.qcow2")
    img_pbkdf("create", "-q", *SECRET, "-f", "qcow2", "-o",
              "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,cluster_size=4096", p, "1M")
    return read(p)


def header_fields(d):
    cluster_bits = struct.unpack_from(">I", d, 20)[0]
    size = struct.unpack_from(">Q", d, 24)[0]
    l1_size, l1_off = struct.unpack_from(">IQ", d, 36)
    nb, snap_off = struct.unpack_from(">IQ", d, 60)
    version = struct.unpack_from(">I", d, 4)[0]
    incompat = struct.unpack_from(">Q", d, 72)[0] if version >= 3 else 0
    return dict(cluster_bits=cluster_bits, size=size, l1_size=l1_size, l1_off=l1_off, nb=nb,
                snap_off=snap_off, version=version, incompat=incompat)


def shape_byte(h):
    b = (h["cluster_bits"] - 9) & 7
    if h["incompat"] & 16:
        b |= 8
    if h["version"] == 2:
        b |= 0x10
    if h["incompat"] & 8:
        b |= 0x20
    return b


def qcow2_seeds(s, w):
    rng = random.Random(15)
    images = qcow2_images(w)
    for name, d, related in images:
        h = header_fields(d)
        cs = 1 << h["cluster_bits"]
        s.add("format_qcow2", name, with_files(d, related))
        s.add("qcow2_header", name, d[:2 * cs])
        s.add("qcow2_write", name, with_files(d, related) + ops_section(rng, 12))
        if name in ("v3-zstd", "v3-zlib-c"):
            s.add("qcow2_compressed", name, d)
        if not related:
            if h["version"] == 3:
                s.add("qcow2_refcount", name + "-dirty", d + b"\x01")
            else:
                s.add("qcow2_refcount", name, d)
        # qcow2_l2: shape, then the file from cluster 1 with the L1 moved there.
        if h["cluster_bits"] <= 16 and not related:
            body = bytearray(d[cs:])
            l1 = d[h["l1_off"]:h["l1_off"] + 8 * h["l1_size"]]
            body[0:len(l1)] = l1
            sectors = min(h["size"] // 512, 0xffffffff)
            s.add("qcow2_l2", name, bytes([shape_byte(h)]) + struct.pack(">I", sectors) + bytes(body))
        if h["nb"]:
            table = d[h["snap_off"]:h["snap_off"] + 16 * KiB]
            sectors = min(h["size"] // 512, 0xffffffff)
            s.add("qcow2_snapshot", name, bytes([shape_byte(h)]) + struct.pack(">I", sectors) +
                  struct.pack(">I", h["nb"]) + table)
    # Damaged refcounts (hostile_write_test.cpp's cases): a zeroed refcount
    # table, a zeroed first refcount block, cluster 0 marked free.
    d = dict((n, x) for n, x, _ in images)["v3-64k"]
    rt = struct.unpack_from(">Q", d, 48)[0]
    b = bytearray(d)
    b[rt:rt + 64 * KiB] = bytes(64 * KiB)
    s.add("qcow2_refcount", "zeroed-reftable", bytes(b))
    s.add("qcow2_write", "zeroed-reftable", bytes(b) + ops_section(rng, 8))
    rb = struct.unpack_from(">Q", d, rt)[0]
    b = bytearray(d)
    b[rb:rb + 2] = b"\0\0"
    s.add("qcow2_refcount", "cluster0-free", bytes(b))
    s.add("qcow2_write", "cluster0-free", bytes(b) + ops_section(rng, 8))
    enc = qcow2_luks(w)
    s.add("qcow2_header", "luks", enc[:8 * KiB])
    # Compressed images of varied content (qemu-img convert -c).
    src = os.path.join(w, "src.raw")
    with open(src, "wb") as f:
        f.write((b"kvmfs fuzz seed: sphinx of black quartz, judge my vow\n" * 3000)[:128 * KiB])
        f.write(bytes(rng.getrandbits(8) for _ in range(64 * KiB)))
        f.write(bytes(128 * KiB))
        f.write(bytes(range(256)) * 256)
    for cs, ct in (("4096", "zlib"), ("65536", "zlib"), ("4096", "zstd"), ("512", "zlib"), ("16384", "zstd")):
        p = os.path.join(w, "c-%s-%s.qcow2" % (cs, ct))
        img("convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o",
            "cluster_size=%s,compression_type=%s" % (cs, ct), src, p)
        d = read(p)
        s.add("qcow2_compressed", os.path.basename(p), d)
        s.add("format_qcow2", os.path.basename(p), d)
        if ct == "zstd":
            s.add("qcow2_write", os.path.basename(p), d + ops_section(rng, 10))
        h = header_fields(d)
        c = 1 << h["cluster_bits"]
        body = bytearray(d[c:])
        l1 = d[h["l1_off"]:h["l1_off"] + 8 * h["l1_size"]]
        body[0:len(l1)] = l1
        s.add("qcow2_l2", os.path.basename(p), bytes([shape_byte(h)]) + struct.pack(">I", h["size"] // 512) +
              bytes(body))


# ---- other formats -------------------------------------------------------------------

def other_seeds(s, w):
    def mk(fmt, name, size, opts="", writes=()):
        p = os.path.join(w, name)
        args = ["create", "-q", "-f", fmt]
        if opts:
            args += ["-o", opts]
        img(*args, p, size)
        if writes:
            io(p, fmt, *writes)
        return p

    w1 = ["write -P 0x11 0 4k", "write -P 0x22 300k 70k", "write -z 600k 64k"]
    # qcow (v1)
    s.add("format_qcow", "plain", read(mk("qcow", "a.qcow", "1M", "", w1)))
    mk("qcow", "base.qcow", "1M")
    s.add("format_qcow", "backing", read(mk("qcow", "b.qcow", "1M", "backing_file=base.qcow,backing_fmt=qcow", w1[:1])))
    # Compressed clusters (qemu-io write -c: one whole 4 KiB cluster each).
    s.add("format_qcow", "compressed", read(mk("qcow", "c.qcow", "256K", "", [
        "write -c -P 0x41 0 4k", "write -c -P 0x42 8k 4k", "write -P 0x43 64k 4k"])))
    # vdi
    s.add("format_vdi", "dynamic", read(mk("vdi", "d.vdi", "4M", "", w1)))
    s.add("format_vdi", "static", read(mk("vdi", "s.vdi", "1M", "static=on", w1[:1])))
    s.add("format_vdi", "empty", read(mk("vdi", "e.vdi", "3M")))
    # vpc
    s.add("format_vpc", "dynamic", read(mk("vpc", "d.vhd", "4M", "", w1)))
    s.add("format_vpc", "fixed", read(mk("vpc", "f.vhd", "64K", "subformat=fixed")))
    s.add("format_vpc", "force", read(mk("vpc", "g.vhd", "100K", "force_size=on", ["write -P 1 0 4k"])))
    s.add("format_vpc", "empty", read(mk("vpc", "e.vhd", "1M")))
    # vhdx: trailing zeros cut (they read as zeros)
    for name, size, opts, writes in (("plain", "4M", "block_size=1M", ["write -P 0x11 0 4k", "write -z 64k 4k"]),
                                     ("big-block", "64M", "block_size=8M", []),
                                     ("small", "1M", "log_size=1M", [])):
        d = read(mk("vhdx", name + ".vhdx", size, opts, writes))
        d = vhdx_relocate(d)
        s.add("format_vhdx", name, d if writes else d.rstrip(b"\0"))
    s.add("format_vhdx", "dirty", vhdx_dirty(w, mk))
    # luks
    p = os.path.join(w, "l.luks")
    img_pbkdf("create", "-q", *SECRET, "-f", "luks", "-o", "key-secret=sec0,iter-time=10", p, "64K")
    d = read(p)
    s.add("format_luks", "qemu", d[:4 * MiB])
    s.add("luks_header", "qemu", d[:2 * MiB])
    if shutil.which("cryptsetup"):
        # Cheap iteration counts, so that the targets go through the unlock.
        p = os.path.join(w, "cheap.luks")
        with open(p, "wb") as f:
            f.truncate(2 * MiB + 64 * KiB)
        r = subprocess.run(["cryptsetup", "luksFormat", "-q", "--type", "luks1", "--pbkdf-force-iterations",
                            "1000", "--key-size", "256", "--cipher", "aes-xts-plain64", "--key-file=-", p],
                           input=b"fuzz", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if r.returncode == 0:
            d = read(p)
            s.add("format_luks", "cheap", d)
            s.add("luks_header", "cheap", d[:1 * MiB])
    vmdk_seeds(s, w)


def vhdx_dirty(w, mk):
    """A VHDX whose last BAT update is pending in its log again (as
    tests/integration/test_format_vhd.py make_dirty)."""
    p = mk("vhdx", "dirty.vhdx", "4M", "block_size=1M", ["write -P 0x41 1M 4096", "write -P 0x42 3M 4096"])
    d = bytearray(read(p))
    s1, s2 = (struct.unpack_from("<Q", d, o + 8)[0] for o in (64 * KiB, 128 * KiB))
    cur = 128 * KiB if s2 > s1 else 64 * KiB
    bat = None
    rt = 192 * KiB
    for i in range(struct.unpack_from("<I", d, rt + 8)[0]):
        e = rt + 16 + 32 * i
        if d[e:e + 4] == bytes.fromhex("6677c22d"):  # BAT region GUID 2DC27766-...
            bat = struct.unpack_from("<Q", d, e + 16)[0]
    log = struct.unpack_from("<Q", d, cur + 72)[0]
    entry = log + 8192
    if bat is not None and d[entry:entry + 4] == b"loge":
        struct.pack_into("<Q", d, bat + 8 * 3, 2)
        d[cur + 48:cur + 64] = d[entry + 32:entry + 48]
        struct.pack_into("<I", d, cur + 4, 0)
        struct.pack_into("<I", d, cur + 4, crc32c(bytes(d[cur:cur + 4096])))
    return bytes(d)


def vhdx_relocate(d):
    """The metadata region moved to 320 KiB (128 KiB: the table and the items
    QEMU writes 64 KiB into it) and the BAT to 448 KiB (64 KiB: enough for
    small disks), region tables re-checksummed: the log
    (at 1 MiB, where it must be) is then followed by no megabytes of zeros
    (blocks beyond 4 MiB keep their place)."""
    d = bytearray(d)
    moves = {}
    for rt in (192 * KiB, 256 * KiB):
        for i in range(struct.unpack_from("<I", d, rt + 8)[0]):
            e = rt + 16 + 32 * i
            off, length = struct.unpack_from("<QI", d, e + 16)
            bat = d[e:e + 4] == bytes.fromhex("6677c22d")
            new, n = (448 * KiB, 64 * KiB) if bat else (320 * KiB, 128 * KiB)
            moves[new] = bytes(d[off:off + n])
            struct.pack_into("<QI", d, e + 16, new, n)
        struct.pack_into("<I", d, rt + 4, 0)
        struct.pack_into("<I", d, rt + 4, crc32c(bytes(d[rt:rt + 64 * KiB])))
    keep = bytearray(d[:2 * MiB])
    keep[320 * KiB:1 * MiB] = bytes(1 * MiB - 320 * KiB)
    for off, data in moves.items():
        keep[off:off + len(data)] = data
    # Blocks of 1 MiB (block_size=1M) move to 2 MiB on (two at most).
    bat, placed = 448 * KiB, 0
    for i in range(8):
        e = struct.unpack_from("<Q", keep, bat + 8 * i)[0]
        if e & 7 in (6, 7) and placed < 2:
            old = (e >> 20) << 20
            keep[len(keep):] = bytes(2 * MiB + placed * MiB - len(keep)) + d[old:old + MiB]
            struct.pack_into("<Q", keep, bat + 8 * i, ((2 + placed) << 20) | (e & 7))
            placed += 1
        elif e & 7 in (6, 7):
            struct.pack_into("<Q", keep, bat + 8 * i, 0)
    return bytes(keep)


def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    return table


CRC32C_TABLE = _crc32c_table()


def crc32c(data):
    crc = 0xffffffff
    for b in data:
        crc = (crc >> 8) ^ CRC32C_TABLE[(crc ^ b) & 0xff]
    return crc ^ 0xffffffff


def vmdk_seeds(s, w):
    cwd = os.getcwd()
    os.chdir(w)
    try:
        for sub in ("monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat",
                    "streamOptimized"):
            name = "v-%s.vmdk" % sub
            before = set(os.listdir("."))
            img("create", "-q", "-f", "vmdk", "-o", "subformat=%s" % sub, name, "1M")
            if sub != "streamOptimized":
                io(name, "vmdk", "write -P 0x31 0 4k", "write -P 0x32 512k 70k")
            else:
                p = "so-src.raw"
                with open(p, "wb") as f:
                    f.write(bytes(range(256)) * 1024)
                os.remove(name)
                img("convert", "-q", "-O", "vmdk", "-o", "subformat=streamOptimized", p, name)
            extents = sorted(set(os.listdir(".")) - before - {name})
            main = read(name)
            s.add("format_vmdk", sub, with_files(main, [(e, read(e)) for e in extents]) + b"\1")
            s.add("format_vmdk", sub + "-ro", with_files(main, [(e, read(e)) for e in extents]) + b"\0")
            at = main.find(b"# Disk DescriptorFile")
            if at >= 0:
                end = main.find(b"\0", at)
                s.add("vmdk_descriptor", sub, main[at:end if end >= 0 else len(main)])
        img("create", "-q", "-f", "vmdk", "-o", "zeroed_grain=on,adapter_type=lsilogic,hwversion=6",
            "z.vmdk", "2M")
        s.add("format_vmdk", "zeroed-grain", read("z.vmdk") + b"\1")
        img("create", "-q", "-f", "vmdk", "-b", "v-monolithicSparse.vmdk", "-F", "vmdk", "child.vmdk")
        d = read("child.vmdk")
        s.add("format_vmdk", "child", d)
        at = d.find(b"# Disk DescriptorFile")
        s.add("vmdk_descriptor", "child", d[at:d.find(b"\0", at)])
    finally:
        os.chdir(cwd)


# ---- configs ---------------------------------------------------------------------------

CONFIGS = {
    "minimal": "pools:\n  - name: a\n    path: /srv/images\n",
    "all-keys": """pools:
  - name: one
    path: images
    backend: dir
    readonly: true
    backing_roots: [/srv/base, ../base]
    extensions: [qcow2, vmdk]
  - name: two
    layout: kvm
  - name: lvm
    path: /dev/vg0
    backend: blockdev
keys:
  - match: "secure/*.luks"
    file: keys/secure.pass
layouts:
  kvm:
    debian: /var/lib/kvm/{id}-{version_id}/disks
    ubuntu: /srv/{version_codename}
    default: /var/lib/libvirt/images
os_release: /etc/os-release
extensions: [qcow2, qcow, img, raw, vdi, vmdk, vhd, vhdx, iso]
@@os-release
ID=debian
ID_LIKE="ubuntu rhel"
VERSION_ID="12"
VERSION_CODENAME=bookworm
""",
    "keys-only": "keys:\n  - match: '*'\n    file: /dev/null\n",
    "s3": "pools:\n  - name: s\n    backend: s3\n    path: bucket\n",
    "flow": "{pools: [{name: x, path: /x, extensions: [raw]}], layouts: {l: {default: '/{id}'}}}\n",
    "anchors": "base: &b [/a, /b]\npools:\n  - &p {name: p, path: /p, backing_roots: *b}\n",
    "bad": "pools:\n  - name: ../x\n    path: 3\n    readonly: maybe\n",
}


def config_seeds(s, repo):
    for name, text in CONFIGS.items():
        s.add("config", name, text.encode())
    ex = os.path.join(repo, "configs", "kvmfs.example.yaml")
    if os.path.exists(ex):
        s.add("config", "example", read(ex))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--targets", default="", help="comma-separated; default: all")
    a = ap.parse_args()
    targets = set(t for t in a.targets.split(",") if t)
    s = Seeds(os.path.abspath(a.out), targets)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with tempfile.TemporaryDirectory(prefix="kvmfs-fuzz-seeds-") as w:
        qcow2_seeds(s, w)
        other_seeds(s, w)
        config_seeds(s, repo)
    for t in sorted(s.count):
        print("%-20s %3d seeds" % (t, s.count[t]))


if __name__ == "__main__":
    sys.exit(main())
