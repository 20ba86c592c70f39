// A temporary directory for one test, removed afterwards.
#pragma once

#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <string>

namespace kvmfs::pool::testing {

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/kvmfs-pool-XXXXXX";
    if (::mkdtemp(tmpl) != nullptr) {
      char canon[PATH_MAX];
      if (::realpath(tmpl, canon) != nullptr) path_ = canon;
    }
  }
  ~TempDir() {
    if (!path_.empty()) Run("rm -rf '" + path_ + "'");
  }
  const std::string& path() const { return path_; }
  std::string P(const std::string& name) const { return path_ + "/" + name; }
  void Write(const std::string& name, const std::string& bytes) const {
    std::ofstream(P(name), std::ios::binary) << bytes;
  }
  void MkDir(const std::string& name) const { ::mkdir(P(name).c_str(), 0755); }
  static bool Run(const std::string& cmd) {
    return std::system((cmd + " >/dev/null 2>&1").c_str()) == 0;
  }

 private:
  std::string path_;
};

inline bool HaveQemuImg() { return TempDir::Run("qemu-img --version"); }

}  // namespace kvmfs::pool::testing
