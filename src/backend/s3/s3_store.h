// The Store of one `backend: s3` pool (issue 13, kvmfs.yaml(5)): a bucket and
// prefix of an S3-compatible object store, read through S3Client (ranged
// GETs, the block cache), written through local qcow2 overlays.
//
// Paths. The store's root is "s3://BUCKET" or "s3://BUCKET/PREFIX" (without
// its trailing slash), and ROOT/REL is the object or folder REL below the
// prefix, as ListObjectsV2 with '/' shows it. Without overlay_dir that is
// all: every object is a read-only file.
//
// With overlay_dir, writes go to a local qcow2 overlay per image whose
// backing file is the object ("s3://BUCKET/KEY", overlay.h). The listed name
// ROOT/REL then stands for the image as the tree shows it, like a symbolic
// link: to ROOT/.kvmfs-object/REL (the object itself) until the first write,
// and to ROOT/.kvmfs-overlay/FILE (the overlay, a local file under
// overlay_dir) from then on, also after a remount. Both targets lie below the
// root (so the chain policy allows them) in folders whose names start with
// '.', which the tree never shows; the object a chain reads as a backing
// file is always the .kvmfs-object one, never redirected.
//
// Objects have no locks: Lock() of an object claims nothing (two hosts may
// read one golden image). An overlay takes QEMU's locks as any local file.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "backend/s3/config.h"
#include "kvmfs/status.h"
#include "kvmfs/store.h"

namespace kvmfs::s3 {

struct S3StoreConfig {
  S3Config s3;                   // credentials filled by the caller
  std::string cache_dir;         // absolute; empty: no disk cache
  uint64_t cache_max = 1ull << 30;
  std::string overlay_dir;       // absolute; empty: read-only pool
};

// Opens the store and checks the bucket and the keys with one signed listing
// (S3Client::Verify). Errors in one line, nothing secret: kPermission (wrong
// keys), kNotFound (no such bucket), kIOError (unreachable after the
// retries), the block cache's (kBusy: another process uses cache_dir).
Result<std::shared_ptr<Store>> NewS3Store(const S3StoreConfig& config);

// The S3 store of a pool config (StoreConfig::options: endpoint, region,
// bucket, prefix, path_style, ca_file, credentials, profile, cache_dir,
// cache_max, overlay_dir): credentials from the file, else from the AWS_*
// environment, then NewS3Store(). Errors: as NewS3Store, kInvalidArgument for
// missing credentials.
Result<std::shared_ptr<Store>> OpenS3Store(const StoreConfig& config);

}  // namespace kvmfs::s3
