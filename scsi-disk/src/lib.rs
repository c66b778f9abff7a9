//! vstor-scsi-disk: SCSI targets and logical units over a vstor `BlockDev` (no virtio).
//!
//! **Not built yet** (issue #5, "The SCSI stack"): this crate holds no code so far, so that the
//! workspace already has the shape of the design and the dependency direction is fixed —
//! `scsi-disk` depends on `vstor-blockdev` only, and knows nothing of virtio. What will live here:
//! CDB parsing through one opcode table, sense data, VPD and mode pages, unit attentions and
//! reservations; `virtio-scsi` and a future C ABI entry point will drive it.
//!
//! The block devices it will sit on already exist:
//!
//! ```
//! use vstor_blockdev::{memory::MemoryDev, BlockDev};
//!
//! // A logical unit's backing store, as scsi-disk will receive it.
//! let dev = MemoryDev::new(64 << 20, Default::default()).unwrap();
//! assert_eq!(dev.info().logical_block_size, 512);
//! ```
#![deny(missing_docs)]
