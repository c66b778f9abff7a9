//! vstor-benches: side-by-side performance comparisons with vstor's peers.
//!
//! The comparisons are scripts, because the peers are separate programs that must run in the
//! same session as vstor on the same machine (the figures are ratios, never absolute times):
//!
//! - `benches/scripts/compare-qsd.sh` runs `vstor bench` (libblkio's virtio-blk-vhost-user
//!   driver) against `vstor serve blk` and against `qemu-storage-daemon --export
//!   type=vhost-user-blk`, on a null backend (QEMU's `null-co`) and on a raw file, 4k random
//!   reads at QD1 and QD32, and prints vstor's IOPS over QEMU's.
//!
//! This library crate itself holds no code yet; in-process micro-benchmarks of single layers
//! will go here. The in-process request path such a benchmark would time:
//!
//! ```
//! use std::sync::Arc;
//! use vstor_blockdev::null::NullDev;
//! use vstor_virtio_blk::{BlkOptions, BlkShared};
//!
//! let dev = Arc::new(NullDev::new(1 << 30, Default::default()).unwrap());
//! let shared = BlkShared::new(dev, BlkOptions::default()).unwrap();
//! assert_eq!(shared.options().num_queues, 1);
//! ```
#![deny(missing_docs)]
