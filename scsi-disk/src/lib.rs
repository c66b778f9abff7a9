//! vstor-scsi-disk: SCSI logical units over a vstor `BlockDev` (no virtio).
//!
//! A [`LogicalUnit`] executes one CDB with its data-out and data-in buffers and returns a
//! status, the bytes transferred and sense data (fixed or descriptor format, with field
//! pointers where SPC asks for them). Commands are dispatched from one table ([`table`]) that
//! also feeds REPORT SUPPORTED OPERATION CODES; unit attentions are kept per I_T nexus.
//!
//! ```
//! use std::sync::Arc;
//! use vstor_blockdev::memory::MemoryDev;
//! use vstor_scsi_disk::{Command, LogicalUnit, LunOptions};
//!
//! let dev = Arc::new(MemoryDev::new(64 << 20, Default::default()).unwrap());
//! let lun = LogicalUnit::new(dev, LunOptions::default());
//! let mut buf = [0u8; 36];
//! // INQUIRY, allocation length 36.
//! let out = lun.execute(&mut Command { cdb: &[0x12, 0, 0, 0, 36, 0], data_out: &[], data_in: &mut buf, nexus: 1 });
//! assert_eq!(out.status, 0);
//! assert_eq!(&buf[8..13], b"VSTOR");
//! ```
#![deny(missing_docs)]

pub mod fuzzing;
pub mod lun;
pub mod mmc;
pub mod pr;
pub mod sbc;
pub mod sense;
pub mod spc;
pub mod table;
pub mod target;

pub use lun::{status, Command, LogicalUnit, LunKind, LunOptions, Outcome};
pub use sense::Sense;
pub use target::Target;
