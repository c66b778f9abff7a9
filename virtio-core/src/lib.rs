//! vstor-virtio-core: what every vstor virtio device shares.
//!
//! - [`features`]: feature bits and negotiation (VIRTIO 1.2 §2.2 and §6);
//! - [`status`]: the device status state machine (§2.1);
//! - [`memory`]: guest memory built by vstor or from regions the embedder already mapped;
//! - [`chain`]: a strict walk of a split-queue descriptor chain into readable and writable
//!   buffers, with a [`chain::Reader`] and [`chain::Writer`] that make no framing assumptions
//!   (§2.7.4: "the device MUST NOT make assumptions about the particular arrangement of
//!   descriptors");
//! - [`interrupt`]: used-buffer and configuration notifications by callback or eventfd;
//! - [`device`]: the [`VirtioDevice`] trait a transport (PCI, MMIO, vhost-user, C ABI) drives;
//! - [`state`]: device state snapshots for live migration;
//! - [`transport`]: the register-level state machine (features, status, queues, memory,
//!   kicks, reset, save/restore) a PCI/MMIO model or the C ABI drives around a device.
//!
//! ```
//! use vm_memory::{Bytes, GuestAddress};
//! use vstor_virtio_core::chain::{Chain, ChainLimits};
//! use vstor_virtio_core::memory::anonymous;
//!
//! // One descriptor table with a two-descriptor chain: 16 readable bytes, 4 writable bytes.
//! let mem = anonymous(&[(GuestAddress(0), 0x10000)]).unwrap();
//! let desc = |addr: u64, len: u32, flags: u16, next: u16| {
//!     let mut b = [0u8; 16];
//!     b[0..8].copy_from_slice(&addr.to_le_bytes());
//!     b[8..12].copy_from_slice(&len.to_le_bytes());
//!     b[12..14].copy_from_slice(&flags.to_le_bytes());
//!     b[14..16].copy_from_slice(&next.to_le_bytes());
//!     b
//! };
//! mem.write_slice(&desc(0x1000, 16, 1, 1), GuestAddress(0)).unwrap(); // NEXT
//! mem.write_slice(&desc(0x2000, 4, 2, 0), GuestAddress(16)).unwrap(); // WRITE
//! mem.write_slice(b"0123456789abcdef", GuestAddress(0x1000)).unwrap();
//!
//! let chain = Chain::walk(&mem, GuestAddress(0), 8, 0, &ChainLimits::default()).unwrap();
//! let mut reader = chain.reader();
//! let mut hdr = [0u8; 10];
//! reader.read_exact(&mem, &mut hdr).unwrap();
//! assert_eq!(&hdr, b"0123456789");
//! assert_eq!(chain.writable_len(), 4);
//! ```
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod chain;
pub mod device;
pub mod error;
pub mod features;
pub mod interrupt;
pub mod memory;
pub mod ring;
pub mod state;
pub mod status;
pub mod transport;

pub use device::{DeviceType, QueueConfig, VirtioDevice};
pub use error::{Error, Result};
pub use interrupt::{Interrupt, InterruptKind};
pub use memory::{GuestMemory, GuestMemoryAtomic};
pub use transport::Transport;

/// Re-exported so embedders and tests use the same versions vstor was built against.
pub use virtio_queue;
/// Re-exported so embedders and tests use the same versions vstor was built against.
pub use vm_memory;
