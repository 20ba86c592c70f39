#!/bin/bash
# Installs what is missing, builds kvmfs, makes a small demo pool with qemu-img
# and mounts it read-write, then prints what to try.
#
# usage: tools/demo.sh [DEMO_DIR]      (default /tmp/kvmfs-demo)
#   DEMO_DIR/pool   the images (made fresh on every run)
#   DEMO_DIR/mnt    the kvmfs mount (unmount: fusermount3 -u DEMO_DIR/mnt)
# Build dir: build-demo/ at the top of the repo.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
demo=${1:-/tmp/kvmfs-demo}
pool=$demo/pool
mnt=$demo/mnt
build=$repo/build-demo

"$repo/tools/setup-deps.sh"

echo "=== building kvmfs in $build"
if [ ! -f "$build/build.ninja" ]; then
  meson setup "$build" "$repo" -Dtests=false
fi
ninja -C "$build"
kvmfs=$(/usr/bin/python3 - "$build" <<'PY'
import json, subprocess, sys
targets = json.loads(subprocess.check_output(["meson", "introspect", "--targets", sys.argv[1]]))
for t in targets:
    if t["type"] == "executable" and t["name"] == "kvmfs":
        print(t["filename"][0])
        break
PY
)
if [ -z "$kvmfs" ] || [ ! -x "$kvmfs" ]; then
  echo "demo: the kvmfs executable was not built" >&2
  exit 1
fi

echo "=== making the demo pool in $pool"
if mountpoint -q "$mnt" 2>/dev/null; then
  fusermount3 -u "$mnt" || fusermount3 -u -z "$mnt"
fi
rm -rf "$pool"
mkdir -p "$pool/chain" "$pool/vms" "$pool/formats" "$pool/secure" "$mnt"
q() { qemu-io -f qcow2 "$@" >/dev/null; }

# 1. a plain qcow2 with data at a few places
qemu-img create -q -f qcow2 "$pool/vms/plain.qcow2" 64M
q -c 'write -P 0x41 0 1M' -c 'write -P 0x42 10M 64k' -c 'write -P 0x43 63M 4k' "$pool/vms/plain.qcow2"

# 2. a compressed qcow2 (zstd) made from compressible text
for i in $(seq 1 20000); do echo "kvmfs demo line $i"; done > "$demo/text.raw"
truncate -s 16M "$demo/text.raw"
qemu-img convert -q -f raw -c -O qcow2 -o compression_type=zstd "$demo/text.raw" "$pool/vms/compressed.qcow2"
rm -f "$demo/text.raw"

# 3. a 3-deep backing chain: raw base <- qcow2 middle <- qcow2 top
head -c 8M /dev/zero | tr '\0' 'B' > "$pool/chain/base.raw"
qemu-img create -q -f qcow2 -b base.raw -F raw "$pool/chain/middle.qcow2" 16M
q -c 'write -P 0x4d 1M 1M' "$pool/chain/middle.qcow2"
qemu-img create -q -f qcow2 -b middle.qcow2 -F qcow2 "$pool/chain/top.qcow2" 16M
q -c 'write -P 0x54 1536k 64k' -c 'write -z 0 4k' "$pool/chain/top.qcow2"

# 4. an image with internal snapshots taken between writes
qemu-img create -q -f qcow2 "$pool/vms/snap.qcow2" 32M
q -c 'write -P 0x31 0 1M' "$pool/vms/snap.qcow2"
qemu-img snapshot -c before-upgrade "$pool/vms/snap.qcow2"
q -c 'write -P 0x32 0 512k' "$pool/vms/snap.qcow2"
qemu-img snapshot -c 'nightly/2024-01-01' "$pool/vms/snap.qcow2"
q -c 'write -P 0x33 0 4k' "$pool/vms/snap.qcow2"

# 5. the same small disk in the other formats QEMU writes (made by qemu-img convert)
for f in "vmdk -o subformat=monolithicSparse" "vmdk -o subformat=streamOptimized" vdi vpc vhdx qcow; do
  set -- $f
  fmt=$1; shift
  case "$fmt$*" in
    *streamOptimized) name=stream.vmdk ;;
    vpc) name=disk.vhd ;;
    *) name=disk.$fmt ;;
  esac
  qemu-img convert -q -f qcow2 -O "$fmt" "$@" "$pool/vms/plain.qcow2" "$pool/formats/$name"
done

# 6. an encrypted image (LUKS) whose key kvmfs gets from a keys file
printf 'demo-passphrase' > "$demo/secure.pass"
chmod 600 "$demo/secure.pass"
cat > "$demo/keys.yaml" <<KEYS
keys:
  - match: "secure/*"
    file: $demo/secure.pass
KEYS
# (qemu-img-pbkdf: qemu-img, again when QEMU's PBKDF2 calibration reads no CPU time)
"$repo/tools/qemu-img-pbkdf" create -q -f luks --object secret,id=s0,file="$demo/secure.pass" \
  -o key-secret=s0 "$pool/secure/vault.luks" 16M
qemu-io --object secret,id=s0,file="$demo/secure.pass" \
  --image-opts "driver=luks,key-secret=s0,file.filename=$pool/secure/vault.luks" \
  -c 'write -P 0x53 0 1M' >/dev/null

# a file that is not an image: not shown in the mount
echo "not an image" > "$pool/vms/README.txt"

echo "=== mounting: $kvmfs -o keys=$demo/keys.yaml,metrics=127.0.0.1:9109 $pool $mnt"
"$kvmfs" -o keys="$demo/keys.yaml",metrics=127.0.0.1:9109 "$pool" "$mnt"

cat <<EOF

kvmfs is mounted at $mnt (read-write; add -o ro for read-only). Try:

  ls -R $mnt
  cat $mnt/vms/plain.qcow2/info.json
  qemu-img convert -O raw $pool/vms/plain.qcow2 /tmp/plain.raw
  cmp $mnt/vms/plain.qcow2/disk.raw /tmp/plain.raw && echo same
  ls $mnt/vms/snap.qcow2/snapshots/          # nightly/2024-01-01 shows as nightly%2F2024-01-01
  qemu-img convert -O raw -l snapshot.name=before-upgrade $pool/vms/snap.qcow2 /tmp/snap.raw
  cmp $mnt/vms/snap.qcow2/snapshots/before-upgrade/disk.raw /tmp/snap.raw && echo same
  ls $mnt/chain/top.qcow2/backing/           # 1-middle.qcow2  2-base.raw
  cp --sparse=always $mnt/chain/top.qcow2/disk.raw /tmp/top.raw && du -h --apparent-size /tmp/top.raw && du -h /tmp/top.raw
  dd if=$mnt/vms/compressed.qcow2/disk.raw bs=1k count=1 status=none | head -3
  ls $mnt/formats/                            # VMDK (sparse, streamOptimized), VDI, VHD, VHDX, qcow v1
  for f in $mnt/formats/*/disk.raw; do cmp -n 67108864 \$f $mnt/vms/plain.qcow2/disk.raw && echo "\$f same"; done
  grep -E '"(encrypted|cipher-alg|cipher-mode)"' $mnt/secure/vault.luks/info.json; od -An -tx1 -N4 $mnt/secure/vault.luks/disk.raw
  qemu-io -c 'write -P 0x77 4M 64k' $pool/chain/middle.qcow2   # change a layer from outside...
  od -An -tx1 -N4 -j 4M $mnt/chain/top.qcow2/disk.raw        # ...the overlay shows it (77 77 77 77)
  cat $mnt/vms/snap.qcow2/check.json          # qemu-img check --output=json, as a file
  cat $mnt/formats/disk.vdi/check.json        # ... for VDI and VMDK too
  ln -s disk.vmdk $mnt/formats/clone.vmdk && cat $mnt/formats/clone.vmdk/info.json | grep -E 'parent|backing'   # a VMDK linked clone
  mkdir $mnt/vms/new.qcow2 && truncate -s 1G $mnt/vms/new.qcow2/disk.raw   # a new image, sized
  ln -s plain.qcow2 $mnt/vms/clone.qcow2 && ls $mnt/vms/clone.qcow2/backing/   # a linked clone
  curl -s http://127.0.0.1:9109/metrics | grep -E '^kvmfs_(read|pool)_' | head   # Prometheus metrics
  mkdir $mnt/vms/plain.qcow2/snapshots/mine   # qemu-img snapshot -c mine
  echo hello | dd of=$mnt/vms/plain.qcow2/disk.raw conv=notrunc,fsync status=none
  fusermount3 -u $mnt && qemu-img check $pool/vms/plain.qcow2 && qemu-img snapshot -l $pool/vms/plain.qcow2

When done:

  fusermount3 -u $mnt
EOF
