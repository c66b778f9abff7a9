//! vstor-virtio-blk: the virtio-blk device (VIRTIO 1.2 §5.2) over a vstor [`BlockDev`].
//!
//! Every request type of virtio 1.2 except zoned: IN, OUT, FLUSH, GET_ID, GET_LIFETIME,
//! DISCARD, WRITE_ZEROES (with UNMAP) and SECURE_ERASE, with the full configuration space.
//!
//! The device is split so that every transport can use it:
//! - [`BlkShared`] holds what all queues share: the block device, the options, the write-cache
//!   mode the driver chose, the configuration space;
//! - a [`BlkQueueHandler`] per virtqueue turns descriptor chains into block requests, keeps up to
//!   a queue's worth in flight, and writes completions to the used ring. vhost-user workers and
//!   in-process transports drive it the same way;
//! - [`VirtioBlk`] implements [`vstor_virtio_core::VirtioDevice`] for in-process transports
//!   (the C ABI, tests).
//!
//! ```
//! use std::sync::Arc;
//! use vstor_blockdev::memory::MemoryDev;
//! use vstor_virtio_blk::{BlkOptions, BlkShared};
//!
//! let dev = Arc::new(MemoryDev::new(1 << 20, Default::default()).unwrap());
//! let shared = BlkShared::new(dev, BlkOptions::default()).unwrap();
//! let mut capacity = [0u8; 8];
//! shared.read_config(0, &mut capacity).unwrap();
//! assert_eq!(u64::from_le_bytes(capacity), (1 << 20) / 512);
//! ```
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod config;
pub mod device;
pub mod error;
#[cfg(any(test, feature = "test-utils"))]
pub mod fuzzing;
pub mod handler;
mod inflight;
#[cfg(any(test, feature = "test-utils"))]
pub mod mock;
pub mod request;

pub use config::{BlkOptions, BlkShared};
pub use device::VirtioBlk;
pub use error::{Error, Result};
pub use handler::BlkQueueHandler;
pub use vstor_blockdev::BlockDev;

#[cfg(test)]
mod tests;
