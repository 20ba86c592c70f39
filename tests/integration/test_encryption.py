#!/usr/bin/python3
"""Encrypted images (standalone LUKS1, QEMU's luks format; LUKS2 made by
cryptsetup, read through libcryptsetup): every LUKS1 view compared
with `qemu-img convert` given the secret, info.json with `qemu-img info`, keys
from -o keys=FILE and from a YAML config's keys:, writes checked with
`qemu-img compare`, SIGHUP re-reading keys, and every key problem (no key,
wrong key, unreadable key file, unsupported cipher, corrupted key slot, absurd
iteration count, truncated header) listed with an error and refused with the
contract's errno. The passphrase and the master key never reach the log at
log_level=trace, info.json, or a core dump (gcore). Encrypted qcow2 and qcow:
test_encryption_qcow2.py. LUKS2 (which QEMU 7.2 cannot open) is
checked against cryptsetup: containers it encrypted offline from known
plaintext, and kvmfs's writes decrypted with `openssl enc` and the volume key
`cryptsetup luksDump --dump-volume-key` prints."""

import errno
import hashlib
import os
import shutil
import signal
import struct
import subprocess
import time

import kvmfs_harness as h
from kvmfs_harness import KiB, MiB

PASS = b"Tr0ub4dor&3-kvmfs"
WRONG = b"not-the-passphrase"

# (name, qemu-img -o options): a spread of modes, IV generators and hashes
# (the unit tests decrypt every combination qemu-img makes).
COMBOS = [
    ("xts.luks", ""),  # QEMU's default: aes-256-xts-plain64, sha256
    ("cbc-essiv.luks", "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,hash-alg=sha1"),
    ("ctr-plain.luks", "cipher-alg=aes-256,cipher-mode=ctr,ivgen-alg=plain,hash-alg=sha512"),
    ("ecb.luks", "cipher-alg=aes-256,cipher-mode=ecb,ivgen-alg=plain64,hash-alg=sha256"),
    ("xts128.img", "cipher-alg=aes-128,cipher-mode=xts,ivgen-alg=plain64,hash-alg=sha256"),
]


def secret_object(pass_file):
    return "secret,id=sec0,file=%s" % pass_file


def image_opts(path):
    return "driver=luks,key-secret=sec0,file.filename=%s" % path


def create_luks(path, pass_file, opts="", size="4M"):
    """qemu-img create -f luks through h.run_pbkdf (QEMU's PBKDF2 calibration)."""
    o = "key-secret=sec0,iter-time=10" + ("," + opts if opts else "")
    h.run_pbkdf(["create", "-q", "-f", "luks", "--object", secret_object(pass_file),
                 "-o", o, path, size], "qemu-img create %s" % path)
    return path


def qemu_io_luks(path, pass_file, *cmds):
    argv = [h.QEMU_IO, "--object", secret_object(pass_file), "--image-opts", image_opts(path)]
    for c in cmds:
        argv += ["-c", c]
    h.run(argv)


def oracle(path, pass_file, out):
    h.run([h.QEMU_IMG, "convert", "--object", secret_object(pass_file), "--image-opts",
           image_opts(path), "-O", "raw", out])
    return out


def qemu_info_luks(path):
    import json
    return json.loads(h.run([h.QEMU_IMG, "info", "--output=json", "-f", "luks", path]).stdout)


def patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def write_keys(path, rules):
    with open(path, "w") as f:
        f.write("keys:\n")
        for match, key_file in rules:
            f.write('  - match: "%s"\n    file: %s\n' % (match, key_file))


def master_key_of(path, pass_bytes):
    """The master key of an aes-256-ecb LUKS1 image, computed independently of
    kvmfs: hashlib's PBKDF2, `openssl enc` for AES-ECB, the AF merge here."""
    with open(path, "rb") as f:
        hdr = f.read(592)
        key_bytes = struct.unpack(">I", hdr[108:112])[0]
        hash_name = hdr[72:104].split(b"\0")[0].decode()
        mk_digest, mk_salt = hdr[112:132], hdr[132:164]
        mk_iters = struct.unpack(">I", hdr[164:168])[0]
        slot = hdr[208:256]
        iters = struct.unpack(">I", slot[4:8])[0]
        salt = slot[8:40]
        key_offset, stripes = struct.unpack(">II", slot[40:48])
        slot_key = hashlib.pbkdf2_hmac(hash_name, pass_bytes, salt, iters, key_bytes)
        f.seek(key_offset * 512)
        material = f.read(key_bytes * stripes)
    plain = subprocess.run(["openssl", "enc", "-d", "-aes-256-ecb", "-nopad", "-K",
                            slot_key.hex()], input=material, stdout=subprocess.PIPE,
                           check=True).stdout
    dlen = hashlib.new(hash_name).digest_size

    def diffuse(block):
        out = b""
        for j in range((len(block) + dlen - 1) // dlen):
            chunk = block[j * dlen:(j + 1) * dlen]
            out += hashlib.new(hash_name, struct.pack(">I", j) + chunk).digest()[:len(chunk)]
        return out

    d = bytes(key_bytes)
    for i in range(stripes - 1):
        s = plain[i * key_bytes:(i + 1) * key_bytes]
        d = diffuse(bytes(a ^ b for a, b in zip(d, s)))
    last = plain[(stripes - 1) * key_bytes:]
    mk = bytes(a ^ b for a, b in zip(d, last))
    assert hashlib.pbkdf2_hmac(hash_name, mk, mk_salt, mk_iters, 20) == mk_digest, "master key"
    return mk


class Encryption(h.KvmfsTestCase):
    @classmethod
    def make_images(cls):
        t = cls.tmp
        cls.pass_file = os.path.join(t, "pass")
        cls.wrong_file = os.path.join(t, "wrong.pass")
        cls.gone_file = os.path.join(t, "gone.pass")
        for path, data in ((cls.pass_file, PASS), (cls.wrong_file, WRONG), (cls.gone_file, PASS)):
            with open(path, "wb") as f:
                f.write(data)
            os.chmod(path, 0o600)
        enc = os.path.join(cls.pool, "enc")
        os.makedirs(enc)
        cls.imgs = {}
        for name, opts in COMBOS:
            p = create_luks(os.path.join(enc, name), cls.pass_file, opts)
            qemu_io_luks(p, cls.pass_file, "write -P 0x5a 0 64k", "write -P 0x17 1M 3k",
                         "write -P 0xee 4095k 1k")
            cls.imgs[name] = p
        default = cls.imgs["xts.luks"]
        # Key problems: copies of the default image under other names.
        for name in ("wrong.luks", "gone.luks", "slot-state.luks", "slot-material.luks",
                     "iterations.luks", "truncated.luks"):
            shutil.copy(default, os.path.join(enc, name))
        nokey = os.path.join(cls.pool, "other")
        os.makedirs(nokey)
        shutil.copy(default, os.path.join(nokey, "nokey.luks"))
        patch(os.path.join(enc, "slot-state.luks"), 208, struct.pack(">I", 0x12345678))
        with open(default, "rb") as f:
            f.seek(208 + 40)
            key_offset = struct.unpack(">I", f.read(4))[0]
        patch(os.path.join(enc, "slot-material.luks"), key_offset * 512, b"\xff" * 4096)
        patch(os.path.join(enc, "iterations.luks"), 208 + 4, struct.pack(">I", 0xFFFFFFFF))
        with open(os.path.join(enc, "truncated.luks"), "r+b") as f:
            f.truncate(300)
        create_luks(os.path.join(enc, "aes192.luks"), cls.pass_file,
                    "cipher-alg=aes-192,cipher-mode=xts,ivgen-alg=plain64")
        # qcow2 overlays over LUKS backing files: no rule matches the overlay,
        # the backing file's key is found by its own path.
        chain = os.path.join(cls.pool, "chain")
        os.makedirs(chain)
        for name, base in (("over.qcow2", "../enc/xts.luks"), ("over-nokey.qcow2", "../other/nokey.luks")):
            h.run([h.QEMU_IMG, "create", "-q", "-f", "qcow2", "-F", "luks", "-b", base,
                   os.path.join(chain, name), "4M"])
        cls.over_opts = ("driver=qcow2,file.filename=%s,backing.driver=luks,backing.key-secret=sec0,"
                         "backing.file.filename=%s" % (os.path.join(chain, "over.qcow2"),
                                                       cls.imgs["xts.luks"]))
        h.run([h.QEMU_IO, "--object", secret_object(cls.pass_file), "--image-opts", cls.over_opts,
               "-c", "write -P 0x33 1M 64k"])
        cls.keys = os.path.join(t, "keys.yaml")
        write_keys(cls.keys, [("enc/wrong.luks", cls.wrong_file),
                              ("enc/gone.luks", cls.gone_file),
                              ("enc/*", cls.pass_file)])
        cls.m = cls.mount(options=("ro", "keys=" + cls.keys, "log_level=trace"))
        os.unlink(cls.gone_file)  # read when the image opens, not at mount

    def view(self, rel):
        return self.m.path(rel)

    def test_views_match_qemu(self):
        for name, _ in COMBOS:
            with self.subTest(name=name):
                self.assertViewMatches(self.view("enc/" + name),
                                       oracle(self.imgs[name], self.pass_file,
                                              os.path.join(self.work, name + ".raw")),
                                       fmt="raw", seek=False)

    def test_info_matches_qemu_img(self):
        for name, _ in COMBOS:
            with self.subTest(name=name):
                got = h.read_json(os.path.join(self.view("enc/" + name), "info.json"))
                want = qemu_info_luks(self.imgs[name])
                self.assertNotIn("error", got)
                self.assertIs(got.get("encrypted"), True)
                self.assertEqual(got["virtual-size"], want["virtual-size"])
                self.assertEqual(got["format"], "luks")
                self.assertEqual(got["format-specific"], want["format-specific"])

    def test_backing_file_key_is_found_by_its_own_path(self):
        out = os.path.join(self.work, "over.raw")
        h.run([h.QEMU_IMG, "convert", "--object", secret_object(self.pass_file), "--image-opts",
               self.over_opts, "-O", "raw", out])
        self.assertViewMatches(self.view("chain/over.qcow2"), out, fmt="raw", seek=False)
        st = os.stat(os.path.join(self.view("chain/over.qcow2"), "disk.raw"))
        self.assertEqual(st.st_mode & 0o077, 0, oct(st.st_mode))
        info = self.assertBroken(self.m, "chain/over-nokey.qcow2", (errno.EACCES,))
        self.assertIn("nokey.luks", info["error"])
        self.assertIn("no key configured", info["error"])

    def test_disk_is_for_the_mounting_user_only(self):
        st = os.stat(os.path.join(self.view("enc/xts.luks"), "disk.raw"))
        self.assertEqual(st.st_mode & 0o077, 0, oct(st.st_mode))

    def assertKeyError(self, rel, want_errno, words):
        info = self.assertBroken(self.m, rel, (want_errno,))
        self.assertIs(info.get("encrypted"), True, info)
        self.assertIn("format-specific", info)
        for w in words:
            self.assertIn(w, info["error"])
        self.assertNotIn(PASS.decode(), info["error"])
        return info

    def test_no_key(self):
        self.assertKeyError("other/nokey.luks", errno.EACCES, ["no key configured"])

    def test_wrong_key(self):
        self.assertKeyError("enc/wrong.luks", errno.EACCES, ["wrong key"])

    def test_unreadable_key_file(self):
        self.assertKeyError("enc/gone.luks", errno.EACCES, ["key file", self.gone_file])

    def test_unsupported_cipher(self):
        self.assertKeyError("enc/aes192.luks", errno.ENOTSUP, ["aes-192", "xts"])

    def test_corrupted_key_slot_state(self):
        info = self.assertBroken(self.m, "enc/slot-state.luks", (errno.EIO,))
        self.assertIn("key slot 0", info["error"])

    def test_corrupted_key_material_is_a_wrong_key(self):
        self.assertKeyError("enc/slot-material.luks", errno.EACCES, ["wrong key"])

    def test_absurd_iteration_count_is_refused_quickly(self):
        start = time.time()
        info = self.assertBroken(self.m, "enc/iterations.luks", (errno.ENOTSUP,))
        self.assertLess(time.time() - start, 20)
        self.assertIn("iterations", info["error"])

    def test_truncated_header(self):
        info = self.assertBroken(self.m, "enc/truncated.luks", (errno.EIO,))
        self.assertIn("truncated", info["error"])

    def test_key_file_readable_by_others_is_warned(self):
        loose = os.path.join(self.tmp, "loose.pass")
        with open(loose, "wb") as f:
            f.write(PASS)
        os.chmod(loose, 0o644)
        keys = os.path.join(self.tmp, "loose.yaml")
        write_keys(keys, [("*", loose)])
        m = self.mount(options=("ro", "keys=" + keys), name="mnt-loose")
        try:
            self.assertViewMatches(m.path("enc/xts.luks"),
                                   oracle(self.imgs["xts.luks"], self.pass_file,
                                          os.path.join(self.work, "loose.raw")),
                                   fmt="raw", seek=False)
            self.assertTrue(h.wait_until(lambda: "mode 0644" in m.log_text()), m.log_text())
        finally:
            self.unmount(m)

    def test_yaml_config_keys(self):
        cfg = os.path.join(self.tmp, "kvmfs.yaml")
        with open(cfg, "w") as f:
            f.write("pools:\n  - name: p\n    path: %s\n    readonly: true\n"
                    "keys:\n  - match: \"enc/xts.luks\"\n    file: %s\n" % (self.pool, self.pass_file))
        m = self.mount(source=cfg, options=(), name="mnt-yaml")
        try:
            self.assertViewMatches(m.path("p/enc/xts.luks"),
                                   oracle(self.imgs["xts.luks"], self.pass_file,
                                          os.path.join(self.work, "yaml.raw")),
                                   fmt="raw", seek=False)
            self.assertEqual(h.open_errno(m.path("p/enc/ecb.luks/disk.raw")), errno.EACCES)
        finally:
            self.unmount(m)

    def test_sighup_rereads_keys(self):
        keys = os.path.join(self.tmp, "later.yaml")
        write_keys(keys, [("nothing-matches", self.pass_file)])
        m = self.mount(options=("ro", "keys=" + keys), name="mnt-hup")
        try:
            disk = m.path("other/nokey.luks/disk.raw")
            self.assertEqual(h.open_errno(disk), errno.EACCES)
            write_keys(keys, [("other/*", self.pass_file)])
            m.proc.send_signal(signal.SIGHUP)
            self.assertTrue(h.wait_until(lambda: h.open_errno(disk) == 0, timeout=15),
                            m.log_text()[-2000:])
            self.assertEqual(h.md5_file(disk), h.md5_file(
                oracle(os.path.join(self.pool, "other", "nokey.luks"), self.pass_file,
                       os.path.join(self.work, "hup.raw"))))
        finally:
            self.unmount(m)

    def test_secrets_stay_out_of_log_info_and_core(self):
        # Open everything once: keys read, master keys unlocked, data decrypted.
        for name, _ in COMBOS:
            h.md5_file(os.path.join(self.view("enc/" + name), "disk.raw"))
        texts = []
        for d in ("enc", "other"):
            for name in os.listdir(self.view(d)):
                with open(os.path.join(self.view(d), name, "info.json"), "rb") as f:
                    texts.append(f.read())
        master = master_key_of(self.imgs["ecb.luks"], PASS)
        log = self.m.log_text().encode()
        self.assertIn(b"opened image", log)  # the trace log is there and says what it did
        for blob, what in [(log, "log"), (b"".join(texts), "info.json")]:
            self.assertNotIn(PASS, blob, "passphrase in " + what)
            self.assertNotIn(master, blob, "master key in " + what)
            self.assertNotIn(master.hex().encode(), blob, "master key (hex) in " + what)
        with open(os.path.join(self.view("enc/ecb.luks"), "disk.raw"), "rb") as disk:
            self.assertEqual(disk.read(16), b"\x5a" * 16)  # open while the core is taken
            dump = h.core_dump(self.m.proc.pid, self.work)
        if dump is None:
            return
        # The dump is real: it holds what kvmfs keeps in ordinary memory.
        self.assertIn(self.pool.encode(), dump)
        self.assertNotIn(PASS, dump, "passphrase in the core dump")
        self.assertNotIn(master, dump, "master key in the core dump")


class EncryptionWrites(h.KvmfsTestCase):
    @classmethod
    def make_images(cls):
        cls.pass_file = os.path.join(cls.tmp, "pass")
        with open(cls.pass_file, "wb") as f:
            f.write(PASS)
        os.chmod(cls.pass_file, 0o600)
        cls.img = create_luks(os.path.join(cls.pool, "rw.luks"), cls.pass_file,
                              "cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64")
        cls.img2 = create_luks(os.path.join(cls.pool, "rw-cbc.luks"), cls.pass_file,
                               "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv")
        cls.keys = os.path.join(cls.tmp, "keys.yaml")
        write_keys(cls.keys, [("*", cls.pass_file)])

    def test_writes_read_back_through_qemu(self):
        writes = [(0, h.gen_bytes(1, 64 * KiB)), (1 * MiB + 512, h.gen_bytes(2, 4 * KiB)),
                  (2 * MiB + 100, h.gen_bytes(3, 5000)), (4 * MiB - 7, h.gen_bytes(4, 7))]
        for img in (self.img, self.img2):
            with self.subTest(img=os.path.basename(img)):
                m = self.mount(options=("keys=" + self.keys,), name="mnt-rw")
                disk = m.path(os.path.basename(img), "disk.raw")
                expect = os.path.join(self.work, "expect.raw")
                shutil.copy(oracle(img, self.pass_file, os.path.join(self.work, "before.raw")),
                            expect)
                fd = os.open(disk, os.O_RDWR)
                try:
                    for off, data in writes:
                        os.pwrite(fd, data, off)
                        h.poke(expect, off, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                self.assertEqual(h.md5_file(disk), h.md5_file(expect))
                self.unmount(m)
                p = h.run([h.QEMU_IMG, "compare", "--object", secret_object(self.pass_file),
                           "--image-opts", image_opts(img), "driver=raw,file.filename=" + expect],
                          check=False)
                self.assertEqual(p.returncode, 0, p.stdout + p.stderr)


CRYPTSETUP = shutil.which("cryptsetup") or "/usr/sbin/cryptsetup"


def luks2_volume_key(path, key_file):
    out = h.run([CRYPTSETUP, "luksDump", "--dump-volume-key", "--batch-mode", "--key-file",
                 key_file, path]).stdout
    hexes = []
    on = False
    for line in out.splitlines():
        if line.startswith("MK dump:"):
            on = True
            line = line[len("MK dump:"):]
        elif on and not line.startswith("\t"):
            break
        if on:
            hexes += line.split()
    return bytes.fromhex("".join(hexes))


class Luks2(h.KvmfsTestCase):
    """LUKS2 containers made by cryptsetup (pbkdf2 with few iterations: Argon2
    would spend seconds and a GiB per unlock)."""

    KDF = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--batch-mode"]

    @classmethod
    def make_images(cls):
        cls.pass_file = os.path.join(cls.tmp, "pass")
        with open(cls.pass_file, "wb") as f:
            f.write(PASS)
        os.chmod(cls.pass_file, 0o600)
        cls.plain = {}
        # Offline encryption of known plaintext: cryptsetup is the oracle.
        for name, sector in (("xts512.img", "512"), ("xts4k.img", "4096")):
            p = os.path.join(cls.pool, name)
            h.write_raw(p, 24 * MiB, seed=len(name) + int(sector))
            with open(p, "rb") as f:
                cls.plain[name] = f.read(8 * MiB)  # what survives --reduce-device-size 16M
            h.run([CRYPTSETUP, "reencrypt", "--encrypt", "--type", "luks2", "--sector-size", sector,
                   "--reduce-device-size", "16M", "--key-file", cls.pass_file] + cls.KDF + [p])
        # For writes: CBC with plain64 IVs, which `openssl enc` can check.
        cls.cbc = os.path.join(cls.pool, "cbc4k.img")
        h.run(["truncate", "-s", "24M", cls.cbc])
        h.run([CRYPTSETUP, "luksFormat", "--type", "luks2", "--cipher", "aes-cbc-plain64",
               "--key-size", "256", "--sector-size", "4096", "--key-file", cls.pass_file] +
              cls.KDF + [cls.cbc])
        cls.keys = os.path.join(cls.tmp, "keys.yaml")
        write_keys(cls.keys, [("xts*", cls.pass_file), ("cbc*", cls.pass_file)])
        cls.wrong = os.path.join(cls.pool, "nokey.img")
        shutil.copy(os.path.join(cls.pool, "xts512.img"), cls.wrong)

    def test_reads_match_cryptsetup_plaintext(self):
        m = self.mount(options=("ro", "keys=" + self.keys), name="mnt-r")
        try:
            for name, plain in self.plain.items():
                with self.subTest(name=name):
                    with open(m.path(name, "disk.raw"), "rb") as f:
                        self.assertEqual(f.read(len(plain)), plain)
                    info = h.read_json(m.path(name, "info.json"))
                    self.assertIs(info["encrypted"], True)
                    self.assertEqual(info["format-specific"]["data"]["version"], 2)
                    self.assertEqual(info["format-specific"]["data"]["sector-size"],
                                     512 if "512" in name else 4096)
            info = self.assertBroken(m, "nokey.img", (errno.EACCES,))
            self.assertIn("no key configured", info["error"])
        finally:
            self.unmount(m)

    def test_writes_decrypt_with_the_volume_key(self):
        m = self.mount(options=("keys=" + self.keys,), name="mnt-w")
        data = h.gen_bytes(7, 64 * KiB)
        off = 1 * MiB + 4096  # 4 KiB sectors: an aligned write
        odd = h.gen_bytes(8, 100)
        odd_off = 2 * MiB + 10  # and a read-modify-write inside one sector
        try:
            fd = os.open(m.path("cbc4k.img", "disk.raw"), os.O_RDWR)
            try:
                os.pwrite(fd, data, off)
                os.pwrite(fd, odd, odd_off)
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            self.unmount(m)
        key = luks2_volume_key(self.cbc, self.pass_file)
        payload = 16 * MiB  # cryptsetup's default LUKS2 data offset
        dump = h.run([CRYPTSETUP, "luksDump", self.cbc]).stdout
        self.assertIn("offset: %d [bytes]" % payload, dump)

        def decrypt(guest_off, n):
            out = b""
            with open(self.cbc, "rb") as f:
                for s in range(guest_off, guest_off + n, 4096):
                    f.seek(payload + s)
                    iv = struct.pack("<Q", s // 512) + bytes(8)
                    out += subprocess.run(["openssl", "enc", "-d", "-aes-256-cbc", "-nopad", "-K",
                                           key.hex(), "-iv", iv.hex()], input=f.read(4096),
                                          stdout=subprocess.PIPE, check=True).stdout
            return out
        self.assertEqual(decrypt(off, len(data)), data)
        self.assertEqual(decrypt(2 * MiB, 4096)[10:110], odd)


if __name__ == "__main__":
    h.main()
