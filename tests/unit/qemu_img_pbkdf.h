// The command that runs qemu-img for anything deriving a LUKS key (create,
// convert to LUKS): tools/qemu-img-pbkdf, which runs it again while QEMU's
// PBKDF2 calibration measures no CPU time ("Unable to get accurate CPU
// usage"), and passes every other failure on. The test executables that
// include this get the script's path from meson (qemu_img_pbkdf_arg in
// tests/unit/meson.build).
#pragma once

#include <string>

#ifndef KVMFS_QEMU_IMG_PBKDF
#error "add qemu_img_pbkdf_arg to this test executable's cpp_args"
#endif

namespace kvmfs::test {

// Shell-quoted, in place of "qemu-img" in a command line.
inline const std::string kQemuImgPbkdf = "'" KVMFS_QEMU_IMG_PBKDF "'";

}  // namespace kvmfs::test
