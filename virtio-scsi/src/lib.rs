//! vstor-virtio-scsi: the virtio-scsi device (VIRTIO 1.2 §5.6) over `vstor-scsi-disk`.
//!
//! **Not built yet** (issue #5, "The SCSI stack"): this crate holds no code so far. It will
//! implement [`vstor_virtio_core::VirtioDevice`] with the control, event and request queues,
//! parse requests with the same chain reader/writer virtio-blk uses, and hand CDBs to
//! `vstor-scsi-disk`.
//!
//! Its device type is already known to virtio-core:
//!
//! ```
//! use vstor_virtio_core::device::DeviceType;
//!
//! assert_eq!(DeviceType::Scsi as u32, 8);
//! ```
#![deny(missing_docs)]
