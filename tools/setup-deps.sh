#!/bin/bash
# Installs everything kvmfs needs to build, test and demo on Debian 12 (bookworm).
# The one list of packages: README, tools/demo.sh, tools/test.sh and .ci/run use it.
# Run as root (or with sudo available). Does nothing when all packages are present.
set -euo pipefail

PACKAGES=(
  # build
  build-essential g++ meson ninja-build pkg-config
  # libraries
  libfuse3-dev libspdlog-dev zlib1g-dev libzstd-dev libdeflate-dev liblz4-dev
  libssl-dev libyaml-cpp-dev nlohmann-json3-dev libgtest-dev libgmock-dev libcryptsetup-dev
  libmicrohttpd-dev libcurl4-openssl-dev libexpat1-dev
  # sd_notify readiness under systemd (Type=notify); systemd for systemd-analyze verify in tests
  libsystemd-dev systemd
  # runtime and tests
  fuse3 qemu-utils qemu-system-common python3 fio util-linux man-db groff
  cryptsetup-bin gdb openssl
  # the metrics test scrapes kvmfs with a real Prometheus
  prometheus
  # Ceph RBD pools (librbd, librados) and the Ceph test fixture (one mon, one memstore
  # OSD, radosgw), the qemu rbd driver for the oracle and the benchmark
  librbd-dev librados-dev ceph-mon ceph-osd radosgw ceph-common qemu-block-extra
  # bench/s3_bench.py compares S3 pools with s3fs
  s3fs
  # bench/fuse_uring_probe (FUSE-over-io_uring measured against /dev/fuse; optional)
  liburing-dev
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  SUDO=(sudo)
fi
echo "setup-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update
"${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
