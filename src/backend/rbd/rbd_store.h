// Ceph RBD pools (issue 13, kvmfs.yaml(5) `backend: rbd`): a Store of the RBD
// images of one pool (and namespace), each image a file of the store.
//
// Paths: the store's root is "rbd:POOL" or "rbd:POOL/NAMESPACE"; an image is
// ROOT/IMAGE and its snapshot ROOT/IMAGE@SNAP (read-only). A clone's parent
// snapshot in the same pool and namespace is the image's parent
// (Store::Parent): kvmfs shows it under backing/, while the clone itself reads
// through it as librbd does.
//
// Every backend is on librbd's asynchronous API (reads of several ranges are
// issued together); discard and write-zeroes are librbd's; Truncate resizes.
// Writers take RBD's exclusive lock with rbd_lock_acquire(EXCLUSIVE) when a
// write handle opens (after checking that nobody holds it: a running QEMU
// holds it cooperatively, and would give it up), so a second writer — another
// kvmfs on any host, or QEMU — fails cleanly (EBUSY for kvmfs, an I/O error
// for QEMU) instead of both writing. Nothing else of kvmfs takes that lock:
// librbd would take it by itself on a read-write handle for a flush or an
// object-map query (kvmfs sends those elsewhere) and for a snapshot (given
// back at once unless this mount is writing). librbd's cache is off: a
// reader on another host sees what a writer flushed; read-only handles,
// which librbd does not keep current, watch the image header themselves
// and are opened anew after a resize or a snapshot change by anyone
// (ImageHandle::WatchHeader).
#pragma once

#include <memory>
#include <string>

#include "kvmfs/status.h"
#include "kvmfs/store.h"

namespace kvmfs::rbd {

struct RbdConfig {
  std::string ceph_conf;  // ceph.conf (empty: librados' search path)
  std::string client;     // cephx id without "client." (empty: "admin")
  std::string keyring;    // keyring file (empty: the one ceph.conf names)
  std::string pool;       // RADOS pool of the images
  std::string ns;         // RBD namespace inside the pool (empty: the default)
};

// Connects to the cluster as `config` says and opens the pool. Errors, in one
// line naming the pool and the client: kPermission (cephx refused the key),
// kNotFound (no such pool), kIOError (no monitor reachable within 15 s, an
// unreadable ceph.conf). Returns kNotSupported when kvmfs was built without
// librbd.
Result<std::shared_ptr<Store>> NewRbdStore(const RbdConfig& config);

// Whether this build has librbd.
bool RbdAvailable();

}  // namespace kvmfs::rbd
