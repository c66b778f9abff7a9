//! vstor-capi (library name `vstor`): the C ABI, `libvstor.so` / `libvstor.a` and
//! `include/vstor.h`.
//!
//! **Not built yet** (issue #3, "The C ABI"): no function is exported so far. The rules it will
//! follow are fixed in `ARCHITECTURE.md`: opaque handles; every function returns 0 or a negative
//! errno with a message from `vstor_last_error()`; no panic crosses the boundary; structs the C
//! side fills carry a size field; guest memory is the embedder's (non-owning regions, see
//! [`vstor_virtio_core::memory::from_host_regions`]).
//!
//! What it will wrap already works in Rust: a virtio-blk device over a block device.
//!
//! ```
//! use std::sync::Arc;
//! use vstor_blockdev::null::NullDev;
//! use vstor_virtio_blk::{BlkOptions, BlkShared, VirtioBlk};
//! use vstor_virtio_core::VirtioDevice;
//!
//! let dev = Arc::new(NullDev::new(1 << 30, Default::default()).unwrap());
//! let blk = VirtioBlk::new(BlkShared::new(dev, BlkOptions::default()).unwrap());
//! assert_eq!(blk.device_type() as u32, 2);
//! ```
#![deny(missing_docs)]
