//! vstor-virtio-scsi: the virtio-scsi device (VIRTIO 1.2 §5.6) over `vstor-scsi-disk`.
//!
//! One device carries up to 256 targets × 16384 logical units:
//! - [`ScsiShared`] holds what every queue shares: the targets and their units (attach and
//!   detach them while the driver runs: hotplug events follow), the sizes the driver chose,
//!   pending events and the task set that task management functions act on;
//! - a handler per virtqueue: [`CtrlQueueHandler`] (task management functions, asynchronous
//!   notification), [`EventQueueHandler`] (hotplug, hot-unplug, capacity change, media change,
//!   EVENTS_MISSED), [`ScsiQueueHandler`] (commands: the 8-byte LUN address, CDB, data-out and
//!   data-in handed to the target's logical unit);
//! - [`VirtioScsi`] implements [`vstor_virtio_core::VirtioDevice`] for in-process transports.
//!
//! ```
//! use std::sync::Arc;
//! use vstor_blockdev::memory::MemoryDev;
//! use vstor_scsi_disk::{LogicalUnit, LunOptions};
//! use vstor_virtio_scsi::{ScsiOptions, ScsiShared};
//!
//! let shared = ScsiShared::new(ScsiOptions::default()).unwrap();
//! let dev = Arc::new(MemoryDev::new(64 << 20, Default::default()).unwrap());
//! shared.attach(0, 3, Arc::new(LogicalUnit::new(dev, LunOptions::default()))).unwrap();
//! let mut max_target = [0u8; 2];
//! shared.read_config(30, &mut max_target).unwrap();
//! assert_eq!(u16::from_le_bytes(max_target), 255);
//! assert_eq!(shared.units().len(), 1);
//! ```
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod config;
pub mod ctrl;
pub mod device;
pub mod error;
pub mod eventq;
pub mod events;
#[cfg(any(test, feature = "test-utils"))]
pub mod fuzzing;
pub mod lun_addr;
#[cfg(any(test, feature = "test-utils"))]
pub mod mock;
pub mod protocol;
pub mod request;
mod ring;
pub mod shared;
pub mod tasks;

pub use config::ScsiOptions;
pub use ctrl::CtrlQueueHandler;
pub use device::{QueueHandler, VirtioScsi};
pub use error::{Error, Result};
pub use eventq::EventQueueHandler;
pub use lun_addr::LunAddr;
pub use request::ScsiQueueHandler;
pub use shared::ScsiShared;
