"""The crafted images of test_hostile.py: reliability.md §7 (case numbers in
`where`) and the same classes for qcow, VDI, VMDK, VHD/VHDX and LUKS.

Each builder gets the path the case's image must have (in the pool) and may
make more files next to it. `T` is the test class (its `outside` folder, the
loop device `loop` over the outside file, the pass file)."""

import errno
import os
import shutil
import socket
import struct
import subprocess

import kvmfs_harness as h
from kvmfs_harness import KiB, MiB
import threading

OP_TIMEOUT_S = 20

# --------------------------------------------------------------------------
# Every operation under a timeout


class Hang(AssertionError):
    pass


def timed(fn, *args, timeout=OP_TIMEOUT_S, what=None):
    """fn(*args) in a thread; raises Hang when it does not return in time.
    OSError from fn comes back as it is."""
    box = {}

    def body():
        try:
            box["v"] = fn(*args)
        except BaseException as e:  # noqa: B902 (passed on)
            box["e"] = e

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise Hang("%s did not return within %ds" % (what or getattr(fn, "__name__", fn), timeout))
    if "e" in box:
        raise box["e"]
    return box.get("v")


def t_errno(fn, *args, what=None):
    """0 when fn(*args) succeeds, else its errno (under the timeout)."""
    try:
        timed(fn, *args, what=what)
    except OSError as e:
        return e.errno
    return 0


def read_all(path, limit=64 * MiB):
    with open(path, "rb") as f:
        return f.read(limit)


def open_read(path):
    """Opens and reads the first block (as harness.open_errno), under the timeout."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, 4096, 0)
    finally:
        os.close(fd)


def open_write(path):
    os.close(os.open(path, os.O_WRONLY))


# --------------------------------------------------------------------------
# Byte surgery


def u32be(v):
    return struct.pack(">I", v)


def u64be(v):
    return struct.pack(">Q", v)


def u32le(v):
    return struct.pack("<I", v)


def u64le(v):
    return struct.pack("<Q", v)


def q2(path, size=4 * MiB, opts=(), writes=("write -P 0x5c 0 1M", "write -P 0x5d 2M 64k"),
       backing=None, fmt="qcow2"):
    d = os.path.dirname(path)
    argv = ["create", "-q", "-f", "qcow2"]
    if opts:
        argv += ["-o", ",".join(opts)]
    if backing:
        argv += ["-b", backing, "-F", fmt, "-u"]
    h.qemu_img(*(argv + [path, str(size)]), cwd=d)
    if writes and not backing:
        h.qemu_io(path, *writes)
    return path


def q2_field(path, off, fmt):
    return struct.unpack(fmt, h.peek(path, off, struct.calcsize(fmt)))[0]


def q2_l1(path):
    return q2_field(path, 40, ">Q")


def q2_l2(path):
    """Host offset of the first L2 table."""
    return q2_field(path, q2_l1(path), ">Q") & 0x00fffffffffffe00


def q2_snap_table(path):
    return q2_field(path, 64, ">Q")


def set_backing_name(path, name):
    """Writes `name` as the backing file name (after the header extensions),
    no backing format extension: as an old qemu-img would."""
    hl = q2_field(path, 100, ">I")
    off = hl + 4096  # well after the extensions, inside cluster 0
    h.poke(path, off, name)
    h.poke(path, 8, u64be(off) + u32be(len(name)))


# --------------------------------------------------------------------------
# The cases
#
# kind:
#   "error"  listed; info.json has "error"; open(disk.raw) fails with one of errnos
#   "qemu"   reads as `qemu-img convert` (QEMU reads it and so does kvmfs)
#   "hidden" not listed at all (not an image of the pool)
#   "custom" its check function says


class Case:
    def __init__(self, name, build, kind, errnos=(), fmt=None, check=None, qemu_args=None,
                 where=""):
        self.name, self.build, self.kind, self.errnos = name, build, kind, tuple(errnos)
        self.fmt, self.check, self.qemu_args, self.where = fmt, check, qemu_args, where



EIO, ENOTSUP, ENOENT, EACCES, EROFS, EINVAL, EFBIG = (
    errno.EIO, errno.ENOTSUP, errno.ENOENT, errno.EACCES, errno.EROFS, errno.EINVAL, errno.EFBIG)
CORRUPT = (EIO,)
UNSUPPORTED = (ENOTSUP, EIO)
POLICY = (EACCES,)
NOT_A_FILE = (EINVAL,)  # "not a regular file or block device"
LOOP = (EINVAL,)        # "backing loop"


def poke_q2(off, data, **kw):
    def build(p):
        q2(p, **kw)
        h.poke(p, off, data)
    return build


def poke_q2_fn(fn, **kw):
    """fn(path) returns [(offset, bytes)] computed from the made image."""
    def build(p):
        q2(p, **kw)
        for off, data in fn(p):
            h.poke(p, off, data)
    return build


def with_snapshot(p):
    q2(p)
    h.qemu_img("snapshot", "-c", "s1", p)
    h.qemu_io(p, "write -P 0x77 0 64k")


def snap_poke(rel, data):
    def build(p):
        with_snapshot(p)
        h.poke(p, q2_snap_table(p) + rel, data)
    return build


def backing_named(name, fmt_ext=None, base=None):
    """An overlay whose backing name is `name` (raw bytes), written by hand
    (qemu-img would resolve it); with fmt_ext, also a backing format extension."""
    def build(p):
        d = os.path.dirname(p)
        if base:
            base(d)
        q2(p, writes=())
        if fmt_ext is not None:
            hl = q2_field(p, 100, ">I")
            # the backing format extension (0xe2792aca) before the others
            ext = struct.pack(">II", 0xE2792ACA, len(fmt_ext)) + fmt_ext
            ext += b"\0" * ((8 - len(fmt_ext) % 8) % 8)
            rest = h.peek(p, hl, 4096 - len(ext))
            h.poke(p, hl, ext + rest)
        set_backing_name(p, name)
    return build


def data_file_named(name, prep=None):
    """A qcow2 with an external data file called `name` (raw bytes)."""
    def build(p):
        d = os.path.dirname(p)
        stem = os.path.basename(p) + ".data"
        h.create_qcow2(p, 4 * MiB, "data_file=" + stem)
        h.qemu_io(p, "write -P 0x3c 0 64k")
        os.unlink(os.path.join(d, stem))
        # the data file name extension: 0x44415441 ("DATA")
        hl = q2_field(p, 100, ">I")
        blob = h.peek(p, hl, 4096)
        off = hl
        while True:
            typ, ln = struct.unpack(">II", blob[off - hl:off - hl + 8])
            if typ == 0:
                raise AssertionError("no data file extension in %s" % p)
            if typ == 0x44415441:
                break
            off += 8 + ((ln + 7) & ~7)
        # move the end-of-extensions to after the new name
        after = blob[off - hl + 8 + ((ln + 7) & ~7):]
        ext = struct.pack(">II", 0x44415441, len(name)) + name + b"\0" * ((8 - len(name) % 8) % 8)
        h.poke(p, off, ext + after[:4096 - (off - hl) - len(ext)])
        if prep:
            prep(d, p)
    return build


def vdi(p, pokes=(), static=False):
    argv = ["create", "-q", "-f", "vdi"] + (["-o", "static=on"] if static else []) + [p, str(4 * MiB)]
    h.qemu_img(*argv)
    h.run([h.QEMU_IO, "-f", "vdi", "-c", "write -P 0x51 0 1M", "-c", "write -P 0x52 2M 1M", p])
    for off, data in pokes:
        h.poke(p, off, data)


def vdi_poke(*pokes):
    return lambda p: vdi(p, pokes)


def vmdk_sparse(p, pokes=()):
    h.qemu_img("create", "-q", "-f", "vmdk", p, str(4 * MiB))
    h.run([h.QEMU_IO, "-f", "vmdk", "-c", "write -P 0x61 0 1M", p])
    for off, data in pokes:
        h.poke(p, off, data)


def vmdk_poke(*pokes):
    return lambda p: vmdk_sparse(p, pokes)


DESC = """# Disk DescriptorFile
version=1
CID=12345678
parentCID=ffffffff
createType="%(type)s"

# Extent description
%(extents)s

ddb.virtualHWVersion = "4"
ddb.geometry.cylinders = "8"
ddb.geometry.heads = "16"
ddb.geometry.sectors = "63"
ddb.adapterType = "ide"
"""


def vmdk_desc(extents, type_="monolithicFlat", prep=None, raw=None):
    def build(p):
        d = os.path.dirname(p)
        if prep:
            prep(d, p)
        text = raw if raw is not None else (DESC % {"type": type_, "extents": extents}).encode()
        with open(p, "wb") as f:
            f.write(text)
    return build


def qcow1(p, pokes=()):
    h.qemu_img("create", "-q", "-f", "qcow", p, str(4 * MiB))
    h.run([h.QEMU_IO, "-f", "qcow", "-c", "write -P 0x71 0 64k", p])
    for off, data in pokes:
        h.poke(p, off, data)


def qcow1_poke(*pokes):
    return lambda p: qcow1(p, pokes)


def luks(T, pokes_fn=None):
    def build(p):
        sec = ["--object", "secret,id=s0,file=%s" % os.path.join(T.tmp, "pass")]
        h.run_pbkdf(["create", "-q", "-f", "luks"] + sec +
                    ["-o", "key-secret=s0,iter-time=10", p, str(4 * MiB)], "qemu-img create %s" % p)
        if pokes_fn:
            for off, data in pokes_fn(p):
                h.poke(p, off, data)
    return build


def luks_qemu_args(T):
    # (the name is filled in by qemu_reads: it passes the pool's file last)
    return None


def symlink_to(target_fn):
    def build(p):
        os.symlink(target_fn(), p)
    return build


def mkfifo(p):
    os.mkfifo(p)


def mksock(p):
    s = socket.socket(socket.AF_UNIX)
    s.bind(p)
    s.close()


def mkchr(p):
    os.mknod(p, 0o666 | 0o020000, os.makedev(1, 5))  # like /dev/zero


def mkblk_of(T):
    def build(p):
        if not T.loop:
            raise AssertionError("no loop device for the block-device cases (losetup failed)")
        st = os.stat(T.loop)
        os.mknod(p, 0o660 | 0o060000, st.st_rdev)
    return build


# ---- custom checks ---------------------------------------------------------


def check_corrupt_bit(T, d, info):
    """Case 6: the corrupt bit: reads as QEMU reads; never opened for writing."""
    T.assertNotIn("error", info)
    T.assertViewMatches(d, os.path.join(T.pool, os.path.basename(d)), seek=False)
    e = t_errno(open_write, os.path.join(d, "disk.raw"))
    T.assertIn(e, (EROFS, EACCES, EIO), "write open of a corrupt-flagged image: %s" % h.errname(e))
    return "read"


def check_named_format_write_refused(T, d, info):
    """A name that says qcow2 with content that is not: an error, never raw,
    and never written (writes would destroy what is left)."""
    p = os.path.join(T.pool, os.path.basename(d))
    before = h.md5_file(p)
    T.assertIn("error", info)
    T.assertNotEqual(info.get("format"), "raw", "a .qcow2 name was served as raw")
    T.assertNotEqual(t_errno(open_read, os.path.join(d, "disk.raw")), 0)
    e = t_errno(open_write, os.path.join(d, "disk.raw"))
    T.assertNotEqual(e, 0, "opened for writing")
    try:
        fd = os.open(os.path.join(d, "disk.raw"), os.O_WRONLY)
    except OSError:
        pass
    else:
        try:
            os.pwrite(fd, b"x" * 512, 0)
        except OSError:
            pass
        os.close(fd)
    T.assertEqual(h.md5_file(p), before, "the file changed")
    return "refused"


def check_shared_l2(T, d, info):
    """Two L1 entries sharing one L2 table: reads as QEMU; writes refused
    (a write at one guest offset would land on the other)."""
    p = os.path.join(T.pool, os.path.basename(d))
    T.assertNotIn("error", info)
    disk = os.path.join(d, "disk.raw")
    T.assertEqual(h.peek(disk, 0, 4096), b"\x5c" * 4096)
    T.assertEqual(h.peek(disk, 512 * MiB, 4096), b"\x5c" * 4096, "aliased L2 reads as QEMU")
    before = h.md5_file(p)
    try:
        fd = os.open(disk, os.O_WRONLY)
    except OSError:
        pass
    else:
        try:
            with T.assertRaises(OSError, msg="a write through a shared L2 table"):
                os.pwrite(fd, b"\x11" * 4096, 0)
                os.fsync(fd)
        finally:
            os.close(fd)
    T.assertEqual(h.peek(disk, 512 * MiB, 4096), b"\x5c" * 4096)
    return "read"


def check_write_eio(T, d, info):
    """A write the metadata makes unsafe (data cluster over metadata, free
    cluster 0): EIO in bounded time, the header intact afterwards."""
    p = os.path.join(T.pool, os.path.basename(d))
    disk = os.path.join(d, "disk.raw")
    # QEMU reads the image (and refuses the write): so does kvmfs
    T.assertNotIn("error", info)
    T.assertViewMatches(d, p, seek=False)
    try:
        fd = os.open(disk, os.O_WRONLY)
    except OSError as e:
        T.assertIn(e.errno, (EIO, EROFS, EACCES))
    else:
        try:
            with T.assertRaises(OSError, msg="an unsafe write was acknowledged") as cm:
                os.pwrite(fd, b"\x22" * 65536, 3 * MiB)
                os.pwrite(fd, b"\x23" * 4096, 0)
                os.fsync(fd)
            T.assertIn(cm.exception.errno, (EIO, EROFS))
        finally:
            # the image went read-only on the way: close (FUSE flush) may say so
            try:
                os.close(fd)
            except OSError as e:
                T.assertIn(e.errno, (EIO, EROFS))
    T.assertEqual(h.peek(p, 0, 4), b"QFI\xfb", "the header was overwritten")
    return "write-refused"


def check_tiny_petabyte(T, d, info):
    """Case 55: a small file declaring a petabyte: stat, sparse reads and
    SEEK_DATA are fast; RSS is checked at the end of the run."""
    disk = os.path.join(d, "disk.raw")
    T.assertNotIn("error", info)
    st = os.stat(disk)
    T.assertEqual(st.st_size, 1 << 50)
    for off in (0, 1 << 40, (1 << 50) - 4096, 123456789 * 4096):
        T.assertEqual(h.peek(disk, off, 4096), b"\0" * 4096 if off else h.peek(disk, 0, 4096))
    fd = os.open(disk, os.O_RDONLY)
    try:
        d0 = os.lseek(fd, 0, os.SEEK_DATA)
        hole = os.lseek(fd, d0, os.SEEK_HOLE)
        T.assertLess(hole, 1 << 50)
        try:
            os.lseek(fd, hole, os.SEEK_DATA)
        except OSError as e:
            T.assertEqual(e.errno, errno.ENXIO)
    finally:
        os.close(fd)
    return "read"


def check_snapshot_bad(T, d, info):
    """Cases 36/37: a bad snapshot: the active image still reads; the
    snapshot's view fails (or reads at its own size) without hanging."""
    p = os.path.join(T.pool, os.path.basename(d))
    T.assertViewMatches(d, p, seek=False)
    snaps = os.path.join(d, "snapshots")
    for n in os.listdir(snaps) if os.path.isdir(snaps) else []:
        disk = os.path.join(snaps, n, "disk.raw")
        e = t_errno(open_read, disk)
        T.assertIn(e, (0, EIO, EFBIG, ENOTSUP))
        if e == 0:
            size = os.stat(disk).st_size
            h.peek(disk, max(0, size - 4096), 4096)
            read_sparse = os.open(disk, os.O_RDONLY)
            try:
                try:
                    os.lseek(read_sparse, 0, os.SEEK_DATA)
                except OSError:
                    pass
            finally:
                os.close(read_sparse)
    return "read"


def check_raw_magic_write(T, d, info):
    """Case 51: a raw image whose sector 0 gets a qcow2 header through
    disk.raw stays raw (bytes as written) after a remount."""
    disk = os.path.join(d, "disk.raw")
    hdr = h.peek(os.path.join(T.pool, "good.qcow2"), 0, 512)
    fd = os.open(disk, os.O_WRONLY)
    try:
        os.pwrite(fd, hdr, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    T.assertEqual(h.peek(disk, 0, 512), hdr)
    T.assertEqual(os.stat(disk).st_size, 2 * MiB)
    T.raw_magic_checked = True
    return "read"


def check_names_newline_backing(T, d, info):
    T.assertNotIn("error", info)
    T.assertViewMatches(d, os.path.join(T.pool, os.path.basename(d)), seek=False)
    return "read"


# ---- the table -------------------------------------------------------------


def all_cases(T):
    o = T.outside
    loop_blk = mkblk_of(T)
    C = Case
    cases = [
        # A. qcow2 header and extensions
        C("q-badmagic.qcow2", poke_q2(0, b"QFI\x00"), "custom", check=check_named_format_write_refused,
          where="1, a name saying qcow2 is never raw"),
        C("q-empty.qcow2", lambda p: open(p, "wb").close(), "custom",
          check=check_named_format_write_refused, where="1/53"),
        C("q-is-qcow1.qcow2", lambda p: qcow1(p), "error", UNSUPPORTED, fmt="qcow2", where="1: version 1"),
        C("q-version4.qcow2", poke_q2(4, u32be(4)), "error", UNSUPPORTED, where="1"),
        C("q-cbits8.qcow2", poke_q2(20, u32be(8)), "error", UNSUPPORTED + CORRUPT, where="2"),
        C("q-cbits22.qcow2", poke_q2(20, u32be(22)), "error", UNSUPPORTED + CORRUPT, where="2"),
        C("q-cbitsff.qcow2", poke_q2(20, u32be(0xFFFFFFFF)), "error", UNSUPPORTED + CORRUPT, where="2"),
        C("q-hlen-huge.qcow2", poke_q2(100, u32be(0xFFFFFFFF)), "error", CORRUPT + UNSUPPORTED, where="3"),
        C("q-hlen-small.qcow2", poke_q2(100, u32be(50)), "error", CORRUPT + UNSUPPORTED, where="3"),
        C("q-hlen-cluster.qcow2", poke_q2(100, u32be(0x20000)), "error", CORRUPT + UNSUPPORTED, where="3"),
        C("q-ext-huge.qcow2", poke_q2(116, u32be(0x7FFFFFFF)), "error", CORRUPT, where="4"),
        C("q-backoff-far.qcow2", poke_q2(8, u64be(0x20000) + u32be(10)), "error", CORRUPT, where="4"),
        C("q-incompat5.qcow2", poke_q2(72, u64be(1 << 5)), "error", UNSUPPORTED, where="5"),
        C("q-corrupt-bit.qcow2", poke_q2(72, u64be(1 << 1)), "custom", check=check_corrupt_bit, where="6"),
        C("q-dirty.qcow2", poke_q2(72, u64be(1)), "qemu", opts_note(), where="7"),
        C("q-rorder7.qcow2", poke_q2(96, u32be(7)), "error", UNSUPPORTED + CORRUPT, where="8"),
        C("q-rtc0.qcow2", poke_q2(56, u32be(0)), "error", CORRUPT, where="9"),
        C("q-rtc-huge.qcow2", poke_q2(56, u32be(0xFFFFFFFF)), "error", CORRUPT + (EFBIG,), where="10"),
        C("q-rto-odd.qcow2", poke_q2(48, u64be(0x1234567890ABCDEF)), "error", CORRUPT, where="11"),
        C("q-nbsnap-huge.qcow2", poke_q2(60, u32be(0xFFFFFFFF) + u64be(0x10000)), "error",
          CORRUPT + (EFBIG,), where="12"),
        C("q-snapoff-odd.qcow2", poke_q2(60, u32be(1) + u64be(0x10001)), "error", CORRUPT, where="12"),
        C("q-snap-extra.qcow2", snap_poke(36, u32be(0x100000)), "error", CORRUPT + (EFBIG,), where="13"),
        C("q-snap-name-long.qcow2", snap_poke(14, struct.pack(">H", 0xFFFF)), "qemu", where="13"),
        C("q-l1size-huge.qcow2", poke_q2(36, u32be(0x7FFFFFFF)), "error", CORRUPT + (EFBIG,), where="14"),
        C("q-l1size-small.qcow2", poke_q2(24, u64be(1 << 40)), "error", CORRUPT + (EFBIG,), where="15"),
        C("q-size-huge.qcow2", poke_q2(24, u64be((1 << 63) - 1)), "error", CORRUPT + (EFBIG,), where="16"),
        C("q-size-odd.qcow2", poke_q2(24, u64be(4 * MiB - 100)), "qemu", where="16: not a multiple of 512"),
        C("q-l1off-huge.qcow2", poke_q2(40, u64be(0x8000000000000000)), "error", CORRUPT, where="17"),
        C("q-bname-huge.qcow2", poke_q2(8, u64be(0x200) + u32be(0xFFFFFFFF)), "error", CORRUPT, where="18"),
        C("q-bname-1024.qcow2", poke_q2(8, u64be(0x200) + u32be(1024)), "error", CORRUPT, where="18"),
        C("q-bfmt-unknown.qcow2", backing_named(b"good.raw", b"nonesuch"), "error",
          UNSUPPORTED + CORRUPT, where="19"),
        C("q-bfmt-long.qcow2", backing_named(b"good.raw", b"qcow2" * 4), "error",
          UNSUPPORTED + CORRUPT, where="19"),
        C("q-crypt2-noext.qcow2", poke_q2(32, u32be(2)), "error", CORRUPT + UNSUPPORTED + (EACCES,), where="20"),
        C("q-crypt3.qcow2", poke_q2(32, u32be(3)), "error", UNSUPPORTED + CORRUPT, where="21"),
        C("q-ctype1-nobit.qcow2", poke_q2(104, b"\x01"), "error", CORRUPT + UNSUPPORTED, where="22"),
        C("q-ctype2.qcow2", poke_q2_fn(lambda p: [(104, b"\x02"), (72, u64be(1 << 3))]), "error",
          UNSUPPORTED + CORRUPT, where="22"),
        C("q-datafile-bit.qcow2", poke_q2(72, u64be(1 << 2)), "error", (EINVAL,),
          where="24: data file bit without a name"),
        C("d-outside.qcow2", data_file_named(os.path.join(o, "secret.raw").encode()), "error", POLICY,
          where="24"),
        C("d-dotdot.qcow2", data_file_named(b"../outside/secret.raw"), "error", POLICY, where="24"),
        C("d-json.qcow2", data_file_named(b'json:{"driver":"file","filename":"/etc/passwd"}'), "error",
          (ENOTSUP,), where="24"),
        C("d-nbd.qcow2", data_file_named(b"nbd://127.0.0.1:1/x"), "error", POLICY + (ENOENT,), where="24"),
        C("d-fifo.qcow2", data_file_named(b"fifo.data", lambda d, p: os.mkfifo(os.path.join(d, "fifo.data"))),
          "error", NOT_A_FILE, where="24: a FIFO"),
        C("d-sock.qcow2", data_file_named(b"sock.data", lambda d, p: mksock(os.path.join(d, "sock.data"))),
          "error", NOT_A_FILE, where="24: a socket"),
        C("d-chr.qcow2", data_file_named(b"chr.data", lambda d, p: mkchr(os.path.join(d, "chr.data"))),
          "error", NOT_A_FILE, where="24: a character device"),
        C("d-blockdev.qcow2", data_file_named(b"blk.data", lambda d, p: loop_blk(os.path.join(d, "blk.data"))),
          "error", POLICY, where="24: a block device node in the pool"),
        C("d-link-out.qcow2", data_file_named(b"lnk.data", lambda d, p: os.symlink(
            os.path.join(o, "secret.raw"), os.path.join(d, "lnk.data"))), "error", POLICY, where="24"),
        # B. tables and data
        C("q-l2-odd.qcow2", poke_q2_fn(lambda p: [(q2_l1(p), u64be((1 << 63) | (q2_l2(p) + 0x200)))]),
          "readerr", where="25"),
        C("q-data-odd.qcow2", poke_q2_fn(lambda p: [(q2_l2(p), u64be((1 << 63) | 0x50200))]), "readerr", where="26"),
        C("q-l2-past-eof.qcow2", poke_q2_fn(lambda p: [(q2_l2(p), u64be((1 << 63) | 0x10000000))]),
          "readerr", where="27"),
        C("q-l2-reserved.qcow2", poke_q2_fn(lambda p: [(q2_l2(p), u64be((1 << 63) | (1 << 56) | 0x50000))]),
          "readerr", where="reserved bits in an L2 entry"),
        C("q-data-on-meta.qcow2", poke_q2_fn(lambda p: [(q2_l2(p) + 8 * 48, u64be((1 << 63) | q2_l1(p)))]),
          "custom", check=check_write_eio, where="28: a data cluster over the L1 table, then a write"),
        C("q-shared-l2.qcow2", poke_q2_fn(lambda p: [(q2_l1(p) + 8, h.peek(p, q2_l1(p), 8))], size=1 << 30),
          "custom", check=check_shared_l2, where="29: two L1 entries share one L2 table"),
        C("q-free-cluster0.qcow2", poke_q2_fn(lambda p: [(q2_field(p, q2_field(p, 48, ">Q"), ">Q"), b"\0\0")]),
          "custom", check=check_write_eio, where="30: refcount of cluster 0 is 0"),
        C("q-compressed-eof.qcow2", compressed_poke(lambda p, e: (e & ~((1 << 54) - 1)) | (1 << 40)), "readerr", where="33: compressed descriptor past EOF"),
        C("q-compressed-bad.qcow2", compressed_garbage, "readerr", where="33/34: a bad stream"),
        C("q-zero-v2.qcow2", poke_q2_fn(lambda p: [(q2_l2(p), u64be(1))], opts=("compat=0.10",)),
          "readerr", where="35: zero flag in a v2 image"),
        C("q-snap-l1odd.qcow2", snap_poke(0, u64be(0x30001)), "custom", check=check_snapshot_bad, where="36"),
        C("q-snap-l1huge.qcow2", snap_poke(8, u32be(0x10000000)), "custom", check=check_snapshot_bad,
          where="36"),
        C("q-snap-pib.qcow2", snap_disk_size(1 << 50), "custom", check=check_snapshot_bad,
          where="37: a snapshot of a petabyte"),
        # C. qcow v1
        C("c-cbits-ff.qcow", qcow1_poke((32, b"\xff")), "error", CORRUPT + UNSUPPORTED, where="38"),
        C("c-cbits-8.qcow", qcow1_poke((32, b"\x08")), "error", CORRUPT + UNSUPPORTED, where="38"),
        C("c-l2bits-5.qcow", qcow1_poke((33, b"\x05")), "error", CORRUPT + UNSUPPORTED, where="38"),
        C("c-l2bits-14.qcow", qcow1_poke((33, b"\x0e")), "error", CORRUPT + UNSUPPORTED, where="38"),
        C("c-size-huge.qcow", qcow1_poke((24, u64be(0x7FFFFFFFFFFFFFFF))), "error", CORRUPT + (EFBIG,),
          where="38"),
        C("c-bname-huge.qcow", qcow1_poke((8, u64be(0x30) + u32be(0xFFFFFFFF))), "error", CORRUPT, where="38"),
        C("c-l2-past-eof.qcow", qcow1_l2_poke(0x7FFF0000), "readerr", where="39: an L2 table past EOF"),
        # D. VDI
        C("v-signature.vdi", vdi_poke((0x40, u32le(0x12345678))), "error", CORRUPT + UNSUPPORTED, where="40"),
        C("v-version.vdi", vdi_poke((0x44, u32le(0x00020001))), "error", UNSUPPORTED + CORRUPT, where="40"),
        C("v-bmap-odd.vdi", vdi_poke((340, u32le(513))), "error", CORRUPT + UNSUPPORTED, where="40"),
        C("v-sector.vdi", vdi_poke((360, u32le(4096))), "error", UNSUPPORTED + CORRUPT, where="40"),
        C("v-block.vdi", vdi_poke((376, u32le(2 * MiB))), "error", UNSUPPORTED + CORRUPT, where="40"),
        C("v-disksize.vdi", vdi_poke((368, u64le(64 * MiB))), "error", CORRUPT, where="40"),
        C("v-blocks-huge.vdi", vdi_poke((384, u32le(0xFFFFFFF0))), "error", CORRUPT + (EFBIG,), where="40"),
        C("v-parent.vdi", vdi_poke((440, b"\x01" * 16)), "error", UNSUPPORTED + CORRUPT, where="40"),
        C("v-bmap-in-data.vdi", vdi_poke((340, u32le(1024))), "error", CORRUPT, where="41"),
        C("v-bmap-past-eof.vdi", vdi_poke((512 + 4, u32le(0x7FFF0000))), "readerr", where="42"),
        C("v-dup-block.vdi", vdi_poke((512 + 8, u32le(0))), "ro-qemu", where="43"),
        # E. VMDK
        C("k-version4.vmdk", vmdk_poke((4, u32le(4))), "error", UNSUPPORTED + CORRUPT, where="44"),
        C("k-gtes.vmdk", vmdk_poke((44, u32le(1024))), "error", CORRUPT + UNSUPPORTED, where="44"),
        C("k-gran0.vmdk", vmdk_poke((20, u64le(0))), "error", CORRUPT, where="44"),
        C("k-gran-huge.vmdk", vmdk_poke((20, u64le(0x400000))), "error", (EFBIG,), where="44"),
        C("k-grain-eof.vmdk", vmdk_poke((64, u64le(0x7FFFFFFF))), "error", CORRUPT, where="44"),
        C("k-desc-huge.vmdk", vmdk_desc("", raw=(DESC % {"type": "monolithicFlat", "extents":
                                                          'RW 8192 FLAT "x-flat.vmdk" 0'}).encode()
                                         + b"#" * (2 * MiB),
                                         prep=lambda d, p: h.write_raw(os.path.join(d, "x-flat.vmdk"),
                                                                       4 * MiB, 6)), "qemu", where="45"),
        C("k-desc-nul.vmdk", vmdk_desc("", raw=b"# Disk DescriptorFile\nversion=1\n\0\0\0createType=\"monolithicFlat\"\n"),
          "error", CORRUPT + UNSUPPORTED, where="45"),
        C("k-desc-type.vmdk", vmdk_desc('RW 8192 FLAT "x.bin" 0', "nonesuchType"), "error",
          UNSUPPORTED + CORRUPT, where="45"),
        C("k-desc-extent.vmdk", vmdk_desc('RW lots FLAT "x.bin" 0'), "error", CORRUPT + UNSUPPORTED, where="45"),
        C("k-desc-many.vmdk", vmdk_desc("\n".join('RW 1 FLAT "many.bin" %d' % i for i in range(200000)),
                                        prep=lambda d, p: h.write_raw(os.path.join(d, "many.bin"), MiB, 5)),
          "error", CORRUPT + UNSUPPORTED + (EFBIG,), where="45"),
        C("k-extent-outside.vmdk", vmdk_desc('RW 8192 FLAT "%s" 0' % os.path.join(o, "secret.raw")),
          "error", POLICY, where="46"),
        C("k-extent-dotdot.vmdk", vmdk_desc('RW 8192 FLAT "../outside/secret.raw" 0'), "error", POLICY,
          where="46"),
        C("k-extent-link.vmdk", vmdk_desc('RW 8192 FLAT "lnk.bin" 0', prep=lambda d, p: os.symlink(
            os.path.join(o, "secret.raw"), os.path.join(d, "lnk.bin"))), "error", POLICY, where="46"),
        C("k-extent-fifo.vmdk", vmdk_desc('RW 8192 FLAT "fifo.bin" 0',
                                          prep=lambda d, p: os.mkfifo(os.path.join(d, "fifo.bin"))),
          "error", NOT_A_FILE, where="46: a FIFO"),
        C("k-extent-blockdev.vmdk", vmdk_desc('RW 8192 FLAT "blk.bin" 0',
                                              prep=lambda d, p: loop_blk(os.path.join(d, "blk.bin"))),
          "error", POLICY, where="46: a block device node in the pool"),
        C("k-extent-json.vmdk", vmdk_desc('RW 8192 FLAT "json:{\\"driver\\":\\"file\\"}" 0'), "error",
          POLICY + (ENOENT,) + CORRUPT, where="46"),
        # F. backing chains and format selection
        C("b-self.qcow2", backing_named(b"b-self.qcow2", b"qcow2"), "error", LOOP,
          where="48: A->A"),
        C("b-loop-a.qcow2", backing_named(b"b-loop-b.qcow2", b"qcow2",
                                          base=lambda d: backing_named(b"b-loop-a.qcow2", b"qcow2")(
                                              os.path.join(d, "b-loop-b.qcow2"))),
          "error", LOOP, where="48: A->B->A"),
        C("b-loop-link.qcow2", backing_named(b"./loop-link.qcow2", b"qcow2",
                                             base=lambda d: os.symlink("b-loop-link.qcow2",
                                                                       os.path.join(d, "loop-link.qcow2"))),
          "error", LOOP, where="48: by a symlink"),
        C("b-outside.qcow2", backing_named(os.path.join(o, "secret-data.qcow2").encode(), b"qcow2"),
          "error", POLICY, where="49"),
        C("b-dotdot.qcow2", backing_named(b"../outside/secret-data.qcow2", b"qcow2"), "error", POLICY,
          where="49"),
        C("b-json.qcow2", backing_named(b'json:{"driver":"file","filename":"/etc/passwd"}', b"raw"),
          "error", (ENOTSUP,), where="49"),
        C("b-nbd.qcow2", backing_named(b"nbd:127.0.0.1:1", b"raw"), "error", POLICY + (ENOENT,), where="49"),
        C("b-file-proto.qcow2", backing_named(("file:" + os.path.join(o, "secret.raw")).encode(), b"raw"),
          "error", POLICY + (ENOENT,), where="49: file: is no protocol"),
        C("b-nul.qcow2", backing_named(b"good.raw\0../outside/secret.raw", b"raw"), "qemu",
          where="49: an embedded NUL ends the name (as QEMU)"),
        C("b-etc.qcow2", backing_named(b"/etc/passwd", b"raw"), "error", POLICY, where="49"),
        C("b-dev.qcow2", backing_named(b"/dev/zero", b"raw"), "error", POLICY, where="49"),
        C("b-fifo.qcow2", backing_named(b"bfifo.bin", b"raw", base=lambda d: os.mkfifo(os.path.join(d, "bfifo.bin"))),
          "error", NOT_A_FILE, where="a FIFO as backing file"),
        C("b-sock.qcow2", backing_named(b"bsock.bin", b"raw", base=lambda d: mksock(os.path.join(d, "bsock.bin"))),
          "error", NOT_A_FILE, where="a socket as backing file"),
        C("b-chr.qcow2", backing_named(b"bchr.bin", b"raw", base=lambda d: mkchr(os.path.join(d, "bchr.bin"))),
          "error", NOT_A_FILE, where="a character device as backing file"),
        C("b-blockdev.qcow2", backing_named(b"bblk.bin", b"raw", base=lambda d: loop_blk(os.path.join(d, "bblk.bin"))),
          "error", POLICY, where="a block device node as backing file"),
        C("b-link-out.qcow2", backing_named(b"blink.bin", b"raw", base=lambda d: os.symlink(
            os.path.join(o, "secret.raw"), os.path.join(d, "blink.bin"))), "error", POLICY,
          where="a symlink leaving the pool"),
        C("b-noformat.qcow2", backing_named(b"good.qcow2"), "qemu", where="50: no recorded format"),
        C("b-small.qcow2", lambda p: h.run([h.QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", "good.raw",
                                            "-F", "raw", p, str(8 * MiB)], cwd=os.path.dirname(p)),
          "qemu", where="52: backing smaller than the overlay"),
        C("b-missing.qcow2", backing_named(b"gone.qcow2", b"qcow2"), "error", (ENOENT,), where="52"),
        C("b-wrongfmt.qcow2", backing_named(b"good.raw", b"qcow2"), "error", (EINVAL,) + CORRUPT,
          where="52: good.raw, open as raw, asked for as qcow2"),
        C("b-newline.qcow2", backing_named(b"new\nline.qcow2", b"qcow2"), "custom",
          check=check_names_newline_backing, where="a backing name with a newline"),
        C("raw-magic.raw", lambda p: h.write_raw(p, 2 * MiB, 11), "custom", check=check_raw_magic_write,
          where="51"),
        C("q-truncated.qcow2", truncated_q2, "error", CORRUPT,
          where="53: shorter than its header"),
        C("polyglot.vmdk", lambda p: q2(p), "error", CORRUPT + UNSUPPORTED, where="53: qcow2 named .vmdk"),
        # G. LUKS (a key is configured for *.luks)
        C("l-iter0.luks", luks(T, lambda p: luks_slot(p, 4, u32be(0))),
          "error", CORRUPT + (EACCES,), where="54: iterations 0"),
        C("l-stripes.luks", luks(T, lambda p: luks_slot(p, 44, u32be(3999))), "error", CORRUPT + (EACCES,),
          where="54: stripes"),
        C("l-slot-overlap.luks", luks(T, lambda p: luks_slot(p, 40, u32be(0))), "error", CORRUPT + (EACCES,),
          where="54: a key slot over the header"),
        C("l-cipher.luks", luks(T, lambda p: [(40, b"nonesuch\0")]), "error", UNSUPPORTED + (EACCES,),
          where="54: unknown cipher"),
        C("l-payload0.luks", luks(T, lambda p: [(104, u32be(0))]), "error", CORRUPT + (EACCES,),
          where="54: payload over the header"),
        C("l-hash.luks", luks(T, lambda p: [(72, b"md77\0")]), "error", UNSUPPORTED + (EACCES,),
          where="54: unknown hash"),
        # H. resources, VHD/VHDX
        C("q-petabyte.qcow2", lambda p: q2(p, size=1 << 50, writes=("write -P 0x11 0 64k",)), "custom",
          check=check_tiny_petabyte, where="55"),
        C("h-cookie.vhd", vhd_poke(lambda p, n: [(0, b"nonesuch"), (n - 512, b"nonesuch")]), "error", CORRUPT + UNSUPPORTED,
          where="VHD footer cookie"),
        C("h-bat-eof.vhd", vhd_bat_poke(0x7FFFFFF0), "error", CORRUPT, where="VHD BAT entry past EOF"),
        C("h-blocksize.vhd", vhd_dyn_poke(32, u32be(0x7FFFFFF)), "error", CORRUPT + UNSUPPORTED,
          where="VHD block size"),
        C("x-sig.vhdx", vhdx_poke((0, b"nonesuch")), "error", CORRUPT + UNSUPPORTED, where="VHDX signature"),
        C("x-headers.vhdx", vhdx_poke((64 * KiB, b"\0" * 4096), (128 * KiB, b"\0" * 4096)), "error", CORRUPT,
          where="VHDX both headers broken"),
        # not images of the pool: never shown, never opened
        C("fifo.qcow2", mkfifo, "hidden", where="a FIFO named as an image"),
        C("sock.raw", mksock, "hidden", where="a socket named as an image"),
        C("zero.raw", mkchr, "hidden", where="a character device named as an image"),
        C("blk.raw", loop_blk, "hidden", where="a block device node named as an image"),
        C("out-link.qcow2", symlink_to(lambda: os.path.join(o, "secret-data.qcow2")), "hidden",
          where="a symlink to an image outside the pool"),
        C("out-dir", symlink_to(lambda: os.path.join(o, "dir")), "hidden",
          where="a symlink to a folder outside the pool"),
    ]
    return cases


def opts_note():
    return ()


def truncated_q2(p):
    q2(p)
    os.truncate(p, 50)


def compressed_image(p):
    d = os.path.dirname(p)
    src = os.path.join(d, ".src-" + os.path.basename(p))
    h.write_raw(src, 1 * MiB, 17, compressible=True)
    h.run([h.QEMU_IMG, "convert", "-c", "-f", "raw", "-O", "qcow2", src, p])
    os.unlink(src)


def compressed_poke(fn):
    def build(p):
        compressed_image(p)
        l2 = q2_l2(p)
        e = q2_field(p, l2, ">Q")
        h.poke(p, l2, u64be(fn(p, e)))
    return build


def compressed_garbage(p):
    compressed_image(p)
    l2 = q2_l2(p)
    e = q2_field(p, l2, ">Q")
    off = e & ((1 << 54) - 1)
    h.poke(p, off, b"\xff" * 512)


def snap_disk_size(size):
    def build(p):
        with_snapshot(p)
        t = q2_snap_table(p)
        id_len, name_len = struct.unpack(">HH", h.peek(p, t + 12, 4))
        extra = q2_field(p, t + 36, ">I")
        if extra >= 16:
            h.poke(p, t + 40 + 8, u64be(size))  # extra: vm_state_size_large, disk_size
    return build


def qcow1_l2_poke(value):
    def build(p):
        qcow1(p)
        l1 = q2_field(p, 40, ">Q")
        h.poke(p, l1, u64be(value))
    return build


def luks_slot(p, rel, data):
    """A change to LUKS1 key slot 0 (slots start at 208, 48 bytes each)."""
    return [(208 + rel, data)]


def vhd(p, fixed=False):
    argv = ["create", "-q", "-f", "vpc"] + (["-o", "subformat=fixed"] if fixed else []) + [p, str(4 * MiB)]
    h.qemu_img(*argv)
    h.run([h.QEMU_IO, "-f", "vpc", "-c", "write -P 0x48 0 1M", p])


def vhd_poke(fn):
    def build(p):
        vhd(p)
        n = os.path.getsize(p)
        for off, data in fn(p, n):
            h.poke(p, off, data)
    return build


def vhd_dyn_poke(rel, data):
    """A change to the dynamic disk header (at the footer's data offset, 512)."""
    return vhd_poke(lambda p, n: [(512 + rel, data)])


def vhd_bat_poke(value):
    def build(p):
        vhd(p)
        bat = struct.unpack(">Q", h.peek(p, 512 + 16, 8))[0]
        h.poke(p, bat, u32be(value))
    return build


def vhdx_poke(*pokes):
    def build(p):
        h.qemu_img("create", "-q", "-f", "vhdx", "-o", "block_size=1M", p, str(4 * MiB))
        h.run([h.QEMU_IO, "-f", "vhdx", "-c", "write -P 0x58 0 1M", p])
        for off, data in pokes:
            h.poke(p, off, data)
    return build
