//! `vstor_blk_new`: a virtio-blk device on an open block device.

use std::ffi::c_char;
use std::sync::Arc;

use vstor_virtio_blk::{BlkOptions, BlkShared, VirtioBlk};
use vstor_virtio_core::Transport;

use crate::blockdev::{c_str, vstor_blockdev, BLOCKDEVS};
use crate::device::{vstor_device, Device, DEVICES};
use crate::error::{boundary, CError};
use crate::irq::Routes;
use crate::structs::{read_in, Sized32};

/// Device flag: run each live queue on a vstor-owned worker thread (kicks by ioeventfd or
/// `vstor_device_kick`; no `vstor_device_process` calls needed).
pub const VSTOR_DEVICE_WORKER_THREADS: u32 = 1 << 0;
/// virtio-blk flag: expose the device read-only (VIRTIO_BLK_F_RO).
pub const VSTOR_BLK_READ_ONLY: u32 = 1 << 8;
/// virtio-blk flag: do not offer DISCARD.
pub const VSTOR_BLK_NO_DISCARD: u32 = 1 << 9;
/// virtio-blk flag: do not offer WRITE_ZEROES.
pub const VSTOR_BLK_NO_WRITE_ZEROES: u32 = 1 << 10;
/// virtio-blk flag: start with the write cache off (writethrough) whatever the block device.
pub const VSTOR_BLK_WRITETHROUGH: u32 = 1 << 11;
const BLK_FLAGS: u32 = VSTOR_DEVICE_WORKER_THREADS
    | VSTOR_BLK_READ_ONLY
    | VSTOR_BLK_NO_DISCARD
    | VSTOR_BLK_NO_WRITE_ZEROES
    | VSTOR_BLK_WRITETHROUGH;

/// virtio-blk device configuration. Set `size = sizeof(struct vstor_blk_config)`; zeroed
/// fields take the defaults.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct vstor_blk_config {
    /// `sizeof(struct vstor_blk_config)`.
    pub size: u32,
    /// `VSTOR_DEVICE_*` and `VSTOR_BLK_*` bits.
    pub flags: u32,
    /// Request queues (1..=256); 0 = 1.
    pub num_queues: u16,
    /// Largest queue size (power of two, 2..=32768); 0 = 256.
    pub queue_size: u16,
    /// Most segments in one DISCARD / WRITE_ZEROES request; 0 = 32.
    pub max_discard_seg: u32,
    /// Serial number for GET_ID (at most 20 bytes), or NULL for "vstor".
    pub serial: *const c_char,
}

impl Default for vstor_blk_config {
    fn default() -> Self {
        vstor_blk_config {
            size: std::mem::size_of::<Self>() as u32,
            flags: 0,
            num_queues: 0,
            queue_size: 0,
            max_discard_seg: 0,
            serial: std::ptr::null(),
        }
    }
}

// SAFETY: repr(C), leading u32 size, integer and pointer fields only.
unsafe impl Sized32 for vstor_blk_config {
    const MIN_SIZE: u32 = std::mem::size_of::<Self>() as u32;
    const NAME: &'static str = "vstor_blk_config";
}

/// Creates a virtio-blk device on `bdev` (which may be closed afterwards: the device keeps its
/// own reference). `config` may be NULL for the defaults. The device starts reset: register
/// guest memory, then drive it through the transport calls as the guest's driver does.
///
/// # Safety
/// `config` is NULL or points to a struct whose `size` bytes are readable; its `serial` is
/// NULL or NUL-terminated; `out` points to writable storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn vstor_blk_new(
    bdev: *const vstor_blockdev,
    config: *const vstor_blk_config,
    out: *mut *mut vstor_device,
) -> i32 {
    boundary("vstor_blk_new", || {
        if out.is_null() {
            return Err(CError::inval("out is NULL"));
        }
        let dev: Arc<dyn ::vstor_blockdev::BlockDev> = Arc::clone(&*BLOCKDEVS.get(bdev as usize)?);
        // SAFETY: the caller guarantees `config` is NULL or readable for its size.
        let c = unsafe { read_in(config) }?;
        if c.flags & !BLK_FLAGS != 0 {
            return Err(CError::inval(format!(
                "vstor_blk_config.flags has unknown bits {:#x}",
                c.flags & !BLK_FLAGS
            )));
        }
        let defaults = BlkOptions::default();
        // SAFETY: the caller guarantees `serial` is NULL or NUL-terminated.
        let serial = unsafe { c_str(c.serial, "vstor_blk_config.serial") }?;
        let opts = BlkOptions {
            serial: serial.map(str::to_string).unwrap_or(defaults.serial),
            num_queues: if c.num_queues == 0 { 1 } else { c.num_queues },
            queue_size: if c.queue_size == 0 {
                defaults.queue_size
            } else {
                c.queue_size
            },
            read_only: c.flags & VSTOR_BLK_READ_ONLY != 0,
            writeback: (c.flags & VSTOR_BLK_WRITETHROUGH != 0).then_some(false),
            discard: c.flags & VSTOR_BLK_NO_DISCARD == 0,
            write_zeroes: c.flags & VSTOR_BLK_NO_WRITE_ZEROES == 0,
            max_discard_seg: if c.max_discard_seg == 0 {
                defaults.max_discard_seg
            } else {
                c.max_discard_seg
            },
            ..defaults
        };
        let shared = BlkShared::new(dev, opts)?;
        let blk = VirtioBlk::new(shared);
        let routes = Arc::new(Routes::new(vstor_virtio_core::VirtioDevice::num_queues(
            &blk,
        )));
        let transport = Transport::new(Box::new(blk), routes.clone());
        let device = Device::new(
            transport,
            routes,
            c.flags & VSTOR_DEVICE_WORKER_THREADS != 0,
        )?;
        let key = DEVICES.insert(Arc::new(device))?;
        // SAFETY: `out` is non-NULL and writable (caller contract).
        unsafe { *out = key as *mut vstor_device };
        Ok(0)
    })
}
