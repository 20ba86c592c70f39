#!/usr/bin/python3
"""Encrypted qcow2 and qcow v1 through the engine: LUKS inside qcow2 in
several cipher/mode/ivgen/hash combinations, a compressed cluster (QEMU
stores those unencrypted), an internal snapshot, a backing chain of two
encrypted layers each with its own key, legacy AES (crypt_method 1) in qcow2
and in qcow v1. Every view is compared with `qemu-img convert --object
secret,... --image-opts`, info.json's `encrypt` object with `qemu-img info`;
writes through kvmfs are checked with `qemu-img check` (clean) and `qemu-img
compare` given the secrets. Key problems (no key, wrong key, a cipher OpenSSL
cannot compute) leave the image listed with an error and disk.raw refused
with EACCES / ENOTSUP; the passphrases never reach the log or info.json."""

import errno
import os
import shutil

import kvmfs_harness as h
from kvmfs_harness import KiB, MiB

PASS_A = b"qcow2-luks-A-kvmfs"
PASS_B = b"other key, B: kvmfs"
WRONG = b"not-the-passphrase"

LUKS = "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10"

# (name, extra -o options): QEMU's default and a spread of the others.
COMBOS = [
    ("xts.qcow2", ""),  # aes-256-xts-plain64, sha256
    ("cbc-essiv.qcow2", "encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,"
                        "encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256,"
                        "encrypt.hash-alg=sha1"),
    ("cbc-plain.qcow2", "encrypt.cipher-alg=aes-256,encrypt.cipher-mode=cbc,"
                        "encrypt.ivgen-alg=plain,encrypt.hash-alg=sha512"),
    # (aes-192 key material is not sector-sized: qemu-img 7.2 asserts.)
    ("ctr.qcow2", "encrypt.cipher-alg=aes-256,encrypt.cipher-mode=ctr,"
                  "encrypt.ivgen-alg=plain64,encrypt.hash-alg=sha256,cluster_size=4096"),
]


def write_pass(path, data):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def write_keys(path, rules):
    with open(path, "w") as f:
        f.write("keys:\n")
        for match, key_file in rules:
            f.write('  - match: "%s"\n    file: %s\n' % (match, key_file))


def objects(secrets):
    """--object arguments for {id: pass_file}."""
    out = []
    for sid, pf in sorted(secrets.items()):
        out += ["--object", "secret,id=%s,file=%s" % (sid, pf)]
    return out


def opts_of(path, fmt="qcow2", secret="sec0", backing_secret=None):
    o = "driver=%s,encrypt.key-secret=%s,file.filename=%s" % (fmt, secret, path)
    if backing_secret:
        o += ",backing.encrypt.key-secret=" + backing_secret
    return o


def qemu_create(path, size, opts, secrets, fmt="qcow2", backing=None):
    """qemu-img create through h.run_pbkdf (QEMU's PBKDF2 calibration)."""
    argv = ["create", "-q", "-f", fmt] + objects(secrets) + ["-o", opts]
    if backing:
        argv += ["-b", backing, "-F", "qcow2"]
    argv += [path, size]
    h.run_pbkdf(argv, "qemu-img create %s" % path)
    return path


def qemu_io(image_opts, secrets, *cmds):
    argv = [h.QEMU_IO] + objects(secrets) + ["--image-opts", image_opts]
    for c in cmds:
        argv += ["-c", c]
    h.run(argv)


def oracle(image_opts, secrets, out, snapshot=None):
    argv = [h.QEMU_IMG, "convert"] + objects(secrets)
    if snapshot:
        argv += ["-l", "snapshot.name=" + snapshot]
    h.run(argv + ["--image-opts", image_opts, "-O", "raw", out])
    return out


def check_clean(tc, image_opts, secrets):
    p = h.run([h.QEMU_IMG, "check"] + objects(secrets) + ["--image-opts", image_opts],
              check=False)
    tc.assertEqual(p.returncode, 0, p.stdout + p.stderr)


def compare(tc, image_opts, secrets, raw):
    p = h.run([h.QEMU_IMG, "compare"] + objects(secrets) +
              ["--image-opts", image_opts, "driver=raw,file.filename=" + raw], check=False)
    tc.assertEqual(p.returncode, 0, p.stdout + p.stderr)


def qemu_info(path):
    import json
    return json.loads(h.run([h.QEMU_IMG, "info", "--output=json", "-U", path]).stdout)


class Qcow2Encryption(h.KvmfsTestCase):
    """Read-only mount: views, info.json, key problems."""

    @classmethod
    def make_images(cls):
        t = cls.tmp
        cls.pa, cls.pb, cls.pw = (os.path.join(t, n) for n in ("a.pass", "b.pass", "w.pass"))
        for p, data in ((cls.pa, PASS_A), (cls.pb, PASS_B), (cls.pw, WRONG)):
            write_pass(p, data)
        cls.sa = {"sec0": cls.pa}
        enc = os.path.join(cls.pool, "enc")
        os.makedirs(enc)
        cls.opts = {}
        for name, extra in COMBOS:
            p = os.path.join(enc, name)
            qemu_create(p, "3M", LUKS + ("," + extra if extra else ""), cls.sa)
            o = opts_of(p)
            qemu_io(o, cls.sa, "write -P 0x5a 0 64k", "write -P 0x17 1M 3k",
                    "write -P 0xee 3071k 1k", "write -z 1030k 8k")
            cls.opts[name] = o
        # A compressed cluster: QEMU writes it unencrypted, and reads it so.
        qemu_io(cls.opts["xts.qcow2"], cls.sa, "write -c -P 0x77 2M 64k")
        # An internal snapshot, then the active layer moves on.
        h.run([h.QEMU_IMG, "snapshot"] + objects(cls.sa) +
              ["--image-opts", cls.opts["cbc-essiv.qcow2"], "-c", "s1"])
        qemu_io(cls.opts["cbc-essiv.qcow2"], cls.sa, "write -P 0x99 0 128k")
        # Legacy AES: qcow2 crypt_method 1 and qcow v1.
        for name, fmt in (("aes.qcow2", "qcow2"), ("aes.qcow", "qcow")):
            p = os.path.join(enc, name)
            qemu_create(p, "2M", "encrypt.format=aes,encrypt.key-secret=sec0", cls.sa, fmt=fmt)
            o = opts_of(p, fmt)
            qemu_io(o, cls.sa, "write -P 0x3c 0 96k", "write -P 0x4d 1000k 5k")
            cls.opts[name] = o
        # A chain: base with key A, top with key B over it.
        chain = os.path.join(cls.pool, "chain")
        os.makedirs(chain)
        cls.sab = {"sec0": cls.pa, "sec1": cls.pb}
        base = qemu_create(os.path.join(chain, "base.qcow2"), "2M", LUKS, cls.sa)
        qemu_io(opts_of(base), cls.sa, "write -P 0x11 0 1M")
        top = qemu_create(os.path.join(chain, "top.qcow2"), "2M",
                          LUKS.replace("sec0", "sec1"), cls.sab, backing="base.qcow2")
        cls.chain_opts = opts_of(top, secret="sec1", backing_secret="sec0")
        qemu_io(cls.chain_opts, cls.sab, "write -P 0x22 512k 64k", "write -P 0x23 1500k 4k")
        # Key problems.
        bad = os.path.join(cls.pool, "bad")
        os.makedirs(bad)
        for n in ("nokey.qcow2", "wrong.qcow2"):
            shutil.copy(os.path.join(enc, "xts.qcow2"), os.path.join(bad, n))
        qemu_create(os.path.join(bad, "xts192.qcow2"), "1M",
                    LUKS + ",encrypt.cipher-alg=aes-192,encrypt.cipher-mode=xts", cls.sa)
        cls.keys = os.path.join(t, "keys.yaml")
        write_keys(cls.keys, [("enc/*", cls.pa), ("chain/base.qcow2", cls.pa),
                              ("chain/top.qcow2", cls.pb), ("bad/wrong.qcow2", cls.pw),
                              ("bad/xts192.qcow2", cls.pa)])
        cls.m = cls.mount(options=("ro", "keys=" + cls.keys, "log_level=trace"))

    def raw(self, name):
        return os.path.join(self.work, name.replace("/", "_") + ".raw")

    def test_luks_views_match_qemu(self):
        for name, _ in COMBOS:
            with self.subTest(name=name):
                self.assertViewMatches(self.m.path("enc", name),
                                       oracle(self.opts[name], self.sa, self.raw(name)),
                                       fmt="raw", seek=False)

    def test_legacy_aes_views_match_qemu(self):
        for name in ("aes.qcow2", "aes.qcow"):
            with self.subTest(name=name):
                self.assertViewMatches(self.m.path("enc", name),
                                       oracle(self.opts[name], self.sa, self.raw(name)),
                                       fmt="raw", seek=False)
                info = h.read_json(self.m.path("enc", name, "info.json"))
                self.assertNotIn("error", info)
                self.assertIs(info.get("encrypted"), True)

    def test_snapshot_view_matches_qemu(self):
        name = "cbc-essiv.qcow2"
        self.assertEqual(os.listdir(self.m.path("enc", name, "snapshots")), ["s1"])
        want = oracle(self.opts[name], self.sa, self.raw("snap"), snapshot="s1")
        self.assertViewMatches(self.m.path("enc", name, "snapshots", "s1"), want, fmt="raw",
                               seek=False)
        with open(want, "rb") as f:
            self.assertEqual(f.read(16), b"\x5a" * 16)  # from before the later write

    def test_chain_with_two_keys_matches_qemu(self):
        want = oracle(self.chain_opts, self.sab, self.raw("chain"))
        self.assertViewMatches(self.m.path("chain", "top.qcow2"), want, fmt="raw", seek=False)
        base = self.m.path("chain", "top.qcow2", "backing", "1-base.qcow2")
        self.assertViewMatches(base, oracle(opts_of(os.path.join(self.pool, "chain", "base.qcow2")),
                                            self.sa, self.raw("base")), fmt="raw", seek=False)

    def test_info_encrypt_matches_qemu_img(self):
        for name in [n for n, _ in COMBOS] + ["aes.qcow2"]:
            with self.subTest(name=name):
                got = h.read_json(self.m.path("enc", name, "info.json"))
                want = qemu_info(os.path.join(self.pool, "enc", name))
                self.assertNotIn("error", got)
                self.assertIs(got.get("encrypted"), True)
                self.assertEqual(got["format-specific"]["data"]["encrypt"],
                                 want["format-specific"]["data"]["encrypt"])
                self.assertInfoMatches(self.m.path("enc", name, "info.json"),
                                       os.path.join(self.pool, "enc", name))

    def assertKeyError(self, rel, want_errno, words):
        info = self.assertBroken(self.m, rel, (want_errno,))
        self.assertIs(info.get("encrypted"), True, info)
        self.assertEqual(info["format-specific"]["data"]["encrypt"]["format"], "luks")
        for w in words:
            self.assertIn(w, info["error"])
        for secret in (PASS_A, PASS_B, WRONG):
            self.assertNotIn(secret.decode(), info["error"])

    def test_no_key(self):
        self.assertKeyError("bad/nokey.qcow2", errno.EACCES, ["no key configured", "nokey.qcow2"])

    def test_wrong_key(self):
        self.assertKeyError("bad/wrong.qcow2", errno.EACCES, ["wrong key"])

    def test_unsupported_cipher(self):
        self.assertKeyError("bad/xts192.qcow2", errno.ENOTSUP, ["aes-192", "xts"])

    def test_secrets_stay_out_of_the_log(self):
        for name, _ in COMBOS:
            h.md5_file(self.m.path("enc", name, "disk.raw"))
        log = self.m.log_text().encode()
        self.assertIn(b"opened image", log)  # the trace log is there
        for secret in (PASS_A, PASS_B, WRONG):
            self.assertNotIn(secret, log)


    def test_secrets_stay_out_of_the_core_dump(self):
        # Every key unlocked and used (LUKS in qcow2, legacy AES in qcow2 and
        # qcow v1, both layers of the chain), one image open while the core is
        # taken. Legacy AES's key is the passphrase itself, cut to 16 bytes.
        for name in [n for n, _ in COMBOS] + ["aes.qcow2", "aes.qcow"]:
            h.md5_file(self.m.path("enc", name, "disk.raw"))
        h.md5_file(self.m.path("chain", "top.qcow2", "disk.raw"))
        with open(self.m.path("enc", "aes.qcow", "disk.raw"), "rb") as disk:
            self.assertEqual(disk.read(16), b"\x3c" * 16)
            dump = h.core_dump(self.m.proc.pid, self.work)
        if dump is None:
            return
        self.assertIn(self.pool.encode(), dump)  # the dump is real
        for secret in (PASS_A, PASS_B, PASS_A[:16], PASS_B[:16]):
            self.assertNotIn(secret, dump, "secret %r in the core dump" % secret[:4])

class Qcow2EncryptionWrites(h.KvmfsTestCase):
    """Writes through kvmfs, then qemu-img check and compare with the secrets."""

    WRITES = [(0, 64 * KiB), (1 * MiB + 512, 4 * KiB), (1 * MiB + 70 * KiB + 100, 5000),
              (2 * MiB + 8 * KiB, 4 * KiB), (3 * MiB - 7, 7)]

    @classmethod
    def make_images(cls):
        cls.pa, cls.pb = os.path.join(cls.tmp, "a.pass"), os.path.join(cls.tmp, "b.pass")
        write_pass(cls.pa, PASS_A)
        write_pass(cls.pb, PASS_B)
        cls.sa = {"sec0": cls.pa}
        cls.sab = {"sec0": cls.pa, "sec1": cls.pb}
        cls.opts = {}
        for name, extra in COMBOS[:3]:
            p = qemu_create(os.path.join(cls.pool, name), "3M",
                            LUKS + ("," + extra if extra else ""), cls.sa)
            cls.opts[name] = opts_of(p)
            qemu_io(cls.opts[name], cls.sa, "write -P 0x5a 0 128k", "write -P 0x17 1M 128k")
        # Writes into a compressed cluster (stored unencrypted by QEMU).
        qemu_io(cls.opts["xts.qcow2"], cls.sa, "write -c -P 0x77 2M 64k")
        p = qemu_create(os.path.join(cls.pool, "aes.qcow2"), "3M",
                        "encrypt.format=aes,encrypt.key-secret=sec0", cls.sa)
        cls.opts["aes.qcow2"] = opts_of(p)
        qemu_io(cls.opts["aes.qcow2"], cls.sa, "write -P 0x3c 0 96k")
        base = qemu_create(os.path.join(cls.pool, "base.qcow2"), "3M", LUKS, cls.sa)
        qemu_io(opts_of(base), cls.sa, "write -P 0x11 0 3M")
        top = qemu_create(os.path.join(cls.pool, "top.qcow2"), "3M",
                          LUKS.replace("sec0", "sec1"), cls.sab, backing="base.qcow2")
        cls.chain_opts = opts_of(top, secret="sec1", backing_secret="sec0")
        cls.keys = os.path.join(cls.tmp, "keys.yaml")
        write_keys(cls.keys, [("top.qcow2", cls.pb), ("*", cls.pa)])

    def write_and_check(self, name, image_opts, secrets):
        expect = oracle(image_opts, secrets, os.path.join(self.work, "expect.raw"))
        m = self.mount(options=("keys=" + self.keys,), name="mnt-rw")
        try:
            disk = m.path(name, "disk.raw")
            fd = os.open(disk, os.O_RDWR)
            try:
                for i, (off, n) in enumerate(self.WRITES):
                    data = h.gen_bytes(i + 1, n)
                    os.pwrite(fd, data, off)
                    h.poke(expect, off, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.assertEqual(h.md5_file(disk), h.md5_file(expect))
        finally:
            self.unmount(m)
        check_clean(self, image_opts, secrets)
        compare(self, image_opts, secrets, expect)
        os.unlink(expect)

    def test_luks_writes(self):
        for name, _ in COMBOS[:3]:
            with self.subTest(name=name):
                self.write_and_check(name, self.opts[name], self.sa)

    def test_legacy_aes_writes(self):
        self.write_and_check("aes.qcow2", self.opts["aes.qcow2"], self.sa)

    def test_chain_top_writes_leave_the_base_alone(self):
        base = os.path.join(self.pool, "base.qcow2")
        before = h.md5_file(base)
        self.write_and_check("top.qcow2", self.chain_opts, self.sab)
        self.assertEqual(h.md5_file(base), before)


if __name__ == "__main__":
    h.main()
