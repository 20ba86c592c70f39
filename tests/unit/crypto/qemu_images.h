// Encrypted images made by qemu-img/qemu-io at test time, and the bytes
// QEMU reads from them (the oracle for the cipher layer and the luks driver).
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>
#include "../qemu_img_pbkdf.h"
#include "../test_files.h"

namespace kvmfs::testing {

// Runs `cmd` with sh; its stdout, or nullopt when it exits non-zero.
inline std::optional<std::string> Shell(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return std::nullopt;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  int rc = ::pclose(p);
  if (rc != 0) {
    ADD_FAILURE() << cmd << "\n" << out;
    return std::nullopt;
  }
  return out;
}

inline std::vector<uint8_t> ReadAll(const std::string& path) {
  return kvmfs::test::ReadFileBytes(path);
}

inline void WriteAll(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

// A temporary directory, removed afterwards.
class ScratchDir {
 public:
  ScratchDir() {
    char tmpl[] = "/tmp/kvmfs-crypto-XXXXXX";
    if (::mkdtemp(tmpl) != nullptr) path_ = tmpl;
  }
  ~ScratchDir() {
    if (!path_.empty()) (void)std::system(("rm -rf '" + path_ + "'").c_str());
  }
  std::string P(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline std::string SecretObject(const std::string& pass) {
  return "--object secret,id=sec0,data=" + pass;
}

// qemu-img create with LUKS options (`opts` e.g. "cipher-alg=aes-128,...")
// through tools/qemu-img-pbkdf (qemu_img_pbkdf.h).
inline bool CreateLuks(const std::string& path, const std::string& pass, const std::string& opts,
                       const std::string& size, const std::string& format = "luks") {
  const std::string prefix = format == "luks" ? "" : "encrypt.";
  std::string o = prefix + "key-secret=sec0," + prefix + "iter-time=10";
  if (format != "luks") o += ",encrypt.format=luks";
  if (!opts.empty()) o += "," + opts;
  return Shell(kvmfs::test::kQemuImgPbkdf + " create -q -f " + format + " " + SecretObject(pass) +
               " -o " + o + " '" + path + "' " + size)
      .has_value();
}

// Several CreateLuks() at once, three at a time (qemu-img spends seconds of
// CPU calibrating PBKDF2 for every image, whatever iter-time says). Each
// entry: path, options. True when all were made.
inline bool CreateManyLuks(const std::vector<std::pair<std::string, std::string>>& images,
                           const std::string& pass, const std::string& format = "luks") {
  const std::string prefix = format == "luks" ? "" : "encrypt.";
  std::string script = "set -u\nmk() { out=$(" + kvmfs::test::kQemuImgPbkdf + " create -q -f " +
                       format + " " + SecretObject(pass) + " -o \"$2\" \"$1\" 192K 2>&1) || "
                       "{ echo \"$1: $out\"; return 1; }; }\nrc=0\nn=0\npids=''\n";
  for (const auto& [path, opts] : images) {
    std::string o = prefix + "key-secret=sec0," + prefix + "iter-time=10";
    if (format != "luks") o += ",encrypt.format=luks";
    if (!opts.empty()) o += "," + opts;
    script += "mk '" + path + "' '" + o + "' & pids=\"$pids $!\"; n=$((n+1)); "
              "if [ $n -ge 3 ]; then for p in $pids; do wait $p || rc=1; done; pids=''; n=0; fi\n";
  }
  script += "for p in $pids; do wait $p || rc=1; done\nexit $rc\n";
  std::string file = images.empty() ? "/dev/null" : images.front().first + ".sh";
  std::ofstream(file) << script;
  return Shell("bash '" + file + "'").has_value();
}

// --image-opts for an encrypted image with secret sec0.
inline std::string ImageOpts(const std::string& path, const std::string& format) {
  const std::string key = format == "luks" ? "key-secret=sec0" : "encrypt.key-secret=sec0";
  return "--image-opts driver=" + format + "," + key + ",file.filename='" + path + "'";
}

// qemu-io commands (-c each) on the encrypted image.
inline bool QemuIo(const std::string& path, const std::string& pass, const std::string& format,
                   const std::vector<std::string>& cmds) {
  std::string cmd = "qemu-io " + SecretObject(pass) + " " + ImageOpts(path, format);
  for (const std::string& c : cmds) cmd += " -c '" + c + "'";
  return Shell(cmd).has_value();
}

// The guest disk as QEMU reads it (qemu-img convert -O raw).
inline std::vector<uint8_t> QemuRaw(const std::string& path, const std::string& pass,
                                    const std::string& format, const std::string& out) {
  if (!Shell("qemu-img convert " + SecretObject(pass) + " " + ImageOpts(path, format) +
             " -O raw '" + out + "'"))
    return {};
  return ReadAll(out);
}

}  // namespace kvmfs::testing
