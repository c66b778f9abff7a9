//! vstor-capi (library name `vstor`): the C ABI — `libvstor.so.1`, `libvstor.a` and
//! `include/vstor.h` (generated from this crate by cbindgen).
//!
//! A C hypervisor keeps its own PCI/MMIO transport model and guest RAM, and hands vstor the
//! rest: it opens a block device, creates a virtio-blk device on it, registers its guest memory
//! mappings (vstor never owns them), forwards the driver's register writes (features, status,
//! queue addresses, configuration space), and forwards kicks; vstor raises interrupts through
//! a callback or irqfds. Requests run on the caller's thread (`vstor_device_kick`, or
//! `vstor_device_process` when the completion fd is readable) or on vstor worker threads.
//!
//! A virtio-scsi device ([`scsi`]: `vstor_scsi_new`) is driven the same way; its logical units
//! (disks or CD-ROMs on open block devices) are attached and detached with `vstor_scsi_attach`
//! and `vstor_scsi_detach`, also while the driver runs (hotplug events follow).
//!
//! Rules every function follows: opaque handles that are looked up, never dereferenced (a
//! stale or double-closed handle gives `-EBADF`); 0 (or a count) on success, a negative errno
//! on failure with a message from [`error::vstor_last_error`]; no panic crosses the boundary
//! (it becomes `-ENOTRECOVERABLE`); every struct the caller fills starts with a `size` field.
//!
//! The same calls from Rust (what `examples/c/` does in C):
//!
//! ```
//! use std::ffi::CString;
//! use vstor::*;
//!
//! let mut bdev = std::ptr::null_mut();
//! let path = CString::new("null:1M").unwrap();
//! // SAFETY: valid string, NULL options, valid out pointer.
//! assert_eq!(unsafe { vstor_blockdev_open(path.as_ptr(), std::ptr::null(), &mut bdev) }, 0);
//! let mut dev = std::ptr::null_mut();
//! // SAFETY: NULL config takes the defaults; valid out pointer.
//! assert_eq!(unsafe { vstor_blk_new(bdev, std::ptr::null(), &mut dev) }, 0);
//! assert_eq!(vstor_blockdev_close(bdev), 0); // the device keeps its own reference
//! let mut features = 0u64;
//! // SAFETY: valid out pointer.
//! assert_eq!(unsafe { vstor_device_features(dev, &mut features) }, 0);
//! assert_ne!(features & (1 << 32), 0); // VIRTIO_F_VERSION_1
//! assert_eq!(vstor_device_kick(dev, 0), -libc::EBUSY); // not live yet
//! assert_eq!(vstor_device_free(dev), 0);
//! assert_eq!(vstor_device_free(dev), -libc::EBADF); // double free is caught
//! ```
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![allow(non_camel_case_types)]

pub mod blk;
pub mod blockdev;
pub mod device;
pub mod error;
mod events;
mod handle;
pub mod io;
pub mod irq;
pub mod scsi;
pub mod state;
pub mod structs;
pub mod transport;
mod worker;

pub use blk::*;
pub use blockdev::*;
pub use device::vstor_device;
pub use error::vstor_last_error;
pub use io::*;
pub use irq::*;
pub use scsi::*;
pub use state::*;
pub use transport::*;

use std::ffi::c_char;

/// The ABI major version: bumped on any incompatible change; it is the soname suffix
/// (`libvstor.so.1`).
pub const VSTOR_ABI_VERSION: u32 = 1;

/// The ABI major version this library implements (compare with `VSTOR_ABI_VERSION` from the
/// header the caller was compiled with).
#[no_mangle]
pub extern "C" fn vstor_abi_version() -> u32 {
    VSTOR_ABI_VERSION
}

/// The library version as a static NUL-terminated string ("0.1.0"); never free it.
#[no_mangle]
pub extern "C" fn vstor_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
