// Helpers of the encrypted-image tests (qcow2 LUKS and AES, qcow AES):
// images made by qemu-img with `--object secret` at test time, opened with
// their passphrases, and compared with what qemu-img reads, checks and
// compares given the same secrets.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kvmfs/chain.h"
#include "kvmfs/cipher.h"
#include "kvmfs/format.h"
#include "../../qemu_img_pbkdf.h"
#include "write_helpers.h"

namespace kvmfs::test {

// The key lookup of an OpenContext for passphrase `pass`.
inline KeyLookup KeyOf(const std::string& pass) {
  return [pass]() -> Result<std::shared_ptr<const Secret>> {
    KVMFS_ASSIGN_OR_RETURN(Secret s,
                           Secret::Copy(reinterpret_cast<const uint8_t*>(pass.data()), pass.size()));
    return std::make_shared<const Secret>(std::move(s));
  };
}

class CryptoImageTest : public WriteTest {
 public:
  // Passphrases by secret id; sec0 is the default.
  std::map<std::string, std::string> secrets_ = {
      {"sec0", "kvmfs-pass-0"}, {"sec1", "kvmfs-pass-1"}, {"sec2", "kvmfs-pass-2"}};

  // --object for every secret.
  std::string Objects() const {
    std::string o;
    for (const auto& [id, pass] : secrets_) o += " --object secret,id=" + id + ",data=" + pass;
    return o + " ";
  }
  // --image-opts of image `name` (driver `fmt`) with secret `sec`; `more`
  // adds options (backing.*, a snapshot).
  static std::string Opts(const std::string& name, const std::string& fmt = "qcow2",
                          const std::string& sec = "sec0", const std::string& more = "") {
    return "--image-opts 'driver=" + fmt + ",encrypt.key-secret=" + sec + ",file.filename=" +
           name + (more.empty() ? "" : "," + more) + "' ";
  }

  // Runs the qemu-img create commands (arguments after `create -q`, with
  // Objects()) three at a time through tools/qemu-img-pbkdf
  // (qemu_img_pbkdf.h). Fails the test when one fails.
  void CreateMany(const std::vector<std::string>& args) {
    std::string script =
        "set -u\nmk() { out=$(eval \"" + kQemuImgPbkdf + " create -q " + Objects() +
        " $1\" 2>&1) || { echo \"$1: $out\"; return 1; }; }\n"
        "rc=0; n=0; pids=''\n";
    for (const std::string& a : args) {
      std::string quoted;
      for (char c : a) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
      script += "mk '" + quoted + "' & pids=\"$pids $!\"; n=$((n+1)); "
                "if [ $n -ge 3 ]; then for p in $pids; do wait $p || rc=1; done; pids=''; n=0; fi\n";
    }
    script += "for p in $pids; do wait $p || rc=1; done\nexit $rc\n";
    WriteHostFile(P("create.sh"), std::vector<uint8_t>(script.begin(), script.end()));
    Sh("bash create.sh");
  }

  // qemu-io commands on an encrypted image.
  void IoEnc(const std::string& opts, const std::vector<std::string>& cmds) {
    std::string cmd = "qemu-io" + Objects() + opts;
    for (const auto& c : cmds) cmd += " -c '" + c + "'";
    Sh(cmd + " >/dev/null");
  }
  // The guest disk as qemu-img reads it with the secrets.
  std::vector<uint8_t> QemuRawEnc(const std::string& opts, const std::string& snapshot = "") {
    const std::string l = snapshot.empty() ? "" : "-l snapshot.name=" + snapshot + " ";
    Sh("qemu-img convert -U" + Objects() + l + opts + " -O raw qemu.raw");
    auto v = ReadHostFile(P("qemu.raw"));
    fs::remove(P("qemu.raw"));
    return v;
  }
  // `qemu-img check` with the secrets: exit status (0 clean).
  int CheckEnc(const std::string& opts, std::string* out) {
    return RunCmd("cd " + dir_ + " && qemu-img check" + Objects() + opts, out);
  }
  // `qemu-img compare` of the image with `expect` (bytes): exit status.
  int CompareEnc(const std::string& opts, const std::vector<uint8_t>& expect, std::string* out) {
    WriteHostFile(P("expect.raw"), expect);
    // compare takes --image-opts for both: the raw file spelled out too.
    return RunCmd("cd " + dir_ + " && qemu-img compare" + Objects() + opts +
                      "'driver=raw,file.filename=expect.raw'",
                  out);
  }

  // Opens `name` (driver `fmt`) with passphrase `pass` (none: "").
  Result<std::unique_ptr<Image>> OpenEnc(const std::string& name, const std::string& pass,
                                         bool writable, const std::string& fmt = "qcow2") {
    KVMFS_ASSIGN_OR_RETURN(std::unique_ptr<Backend> local, OpenLocalFile(P(name), writable));
    OpenContext ctx;
    ctx.name = P(name);
    ctx.writable = writable;
    if (!pass.empty()) ctx.key = KeyOf(pass);
    const std::string dir = dir_;
    ctx.open_related = [dir, writable](const std::string& n) -> Result<std::shared_ptr<Backend>> {
      KVMFS_ASSIGN_OR_RETURN(std::unique_ptr<Backend> b, OpenLocalFile(dir + "/" + n, writable));
      return std::shared_ptr<Backend>(std::move(b));
    };
    const FormatDriver* driver = FindFormat(fmt);
    if (driver == nullptr) return Status::NotFound(fmt);
    return driver->Open(std::shared_ptr<Backend>(std::move(local)), ctx);
  }

  // A chain opened with each layer's own key (by file name: secret id).
  Result<Chain> OpenChainEnc(const std::string& name, const std::map<std::string, std::string>& keys,
                             bool writable) {
    ChainPolicy policy;
    policy.allowed_roots = {dir_};
    policy.writable_top = writable;
    policy.key_for = [this, keys](const std::string& path) -> Result<std::shared_ptr<const Secret>> {
      const std::string base = fs::path(path).filename().string();
      auto it = keys.find(base);
      if (it == keys.end()) return Status::Permission(path + ": no key configured");
      return KeyOf(secrets_.at(it->second))();
    };
    return OpenChain(P(name), policy);
  }
};

// Reads the whole of `image` (and, in odd unaligned pieces, again) and
// compares it with `expect`.
inline void ExpectImageEquals(Image& image, const std::vector<uint8_t>& expect) {
  ASSERT_EQ(image.size(), expect.size());
  std::vector<uint8_t> got = ReadImage(image, 0, expect.size());
  ASSERT_EQ(FirstDiff(got, expect), -1);
  for (uint64_t off = 3; off < expect.size(); off += 65536 + 4099) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(1500, expect.size() - off));
    std::vector<uint8_t> piece = ReadImage(image, off, n);
    ASSERT_TRUE(std::equal(piece.begin(), piece.end(), expect.begin() + off)) << "at " << off;
  }
}

}  // namespace kvmfs::test
