//! What a PCI or MMIO transport model calls: features, status, configuration space, queues.

use std::ffi::c_void;

use vstor_virtio_core::QueueConfig;

use crate::device::{device, vstor_device};
use crate::error::{boundary, CError, CResult};
use crate::structs::{read_in, write_out, Sized32};

/// What `vstor_device_get_info` reports. Set `size` before the call.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct vstor_device_info {
    /// `sizeof(struct vstor_device_info)`; on return, the bytes filled in.
    pub size: u32,
    /// Virtio device ID (2 = block, 8 = SCSI).
    pub device_type: u32,
    /// Number of virtqueues.
    pub num_queues: u16,
    /// Largest queue size the device accepts.
    pub max_queue_size: u16,
    /// Length of the device configuration space in bytes.
    pub config_len: u32,
}

// SAFETY: repr(C), leading u32 size, integer fields only.
unsafe impl Sized32 for vstor_device_info {
    const MIN_SIZE: u32 = std::mem::size_of::<Self>() as u32;
    const NAME: &'static str = "vstor_device_info";
}

/// One split virtqueue as the driver placed it (the `queue_*` registers of virtio-pci).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct vstor_queue_config {
    /// `sizeof(struct vstor_queue_config)`.
    pub size: u32,
    /// Queue size in entries (a power of two no larger than the maximum); 0 = the maximum.
    pub queue_size: u16,
    /// Non-zero when the driver enabled the queue (`queue_enable`).
    pub enabled: u16,
    /// Guest physical address of the descriptor table (16-byte aligned).
    pub desc_addr: u64,
    /// Guest physical address of the available (driver) ring (2-byte aligned).
    pub avail_addr: u64,
    /// Guest physical address of the used (device) ring (4-byte aligned).
    pub used_addr: u64,
}

// SAFETY: repr(C), leading u32 size, integer fields only.
unsafe impl Sized32 for vstor_queue_config {
    const MIN_SIZE: u32 = std::mem::size_of::<Self>() as u32;
    const NAME: &'static str = "vstor_queue_config";
}

fn out_ptr<T>(p: *mut T, name: &str) -> CResult<*mut T> {
    if p.is_null() {
        Err(CError::inval(format!("{name} is NULL")))
    } else {
        Ok(p)
    }
}

/// Fills `*info` (set `info->size` first).
///
/// # Safety
/// `info` points to a struct whose `size` bytes are writable.
#[no_mangle]
pub unsafe extern "C" fn vstor_device_get_info(
    dev: *const vstor_device,
    info: *mut vstor_device_info,
) -> i32 {
    boundary("vstor_device_get_info", || {
        let d = device(dev)?;
        let inner = d.lock()?;
        let t = &inner.transport;
        let v = vstor_device_info {
            size: std::mem::size_of::<vstor_device_info>() as u32,
            device_type: t.device().device_type() as u32,
            num_queues: t.num_queues(),
            max_queue_size: t.max_queue_size(),
            config_len: t.device().config_len() as u32,
        };
        // SAFETY: caller contract.
        unsafe { write_out(info, &v) }?;
        Ok(0)
    })
}

/// Stores the feature bits the device offers in `*features`.
///
/// # Safety
/// `features` points to a writable `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn vstor_device_features(
    dev: *const vstor_device,
    features: *mut u64,
) -> i32 {
    boundary("vstor_device_features", || {
        let p = out_ptr(features, "features")?;
        let v = device(dev)?.lock()?.transport.device_features();
        // SAFETY: non-NULL and writable (caller contract).
        unsafe { p.write_unaligned(v) };
        Ok(0)
    })
}

/// Records the driver's feature selection (after DRIVER, before FEATURES_OK). Bits the device
/// did not offer and selections without VIRTIO_F_VERSION_1 are refused with `-EINVAL`.
#[no_mangle]
pub extern "C" fn vstor_device_set_driver_features(dev: *mut vstor_device, features: u64) -> i32 {
    boundary("vstor_device_set_driver_features", || {
        device(dev)?
            .lock()?
            .transport
            .set_driver_features(features)?;
        Ok(0)
    })
}

/// Stores the device status byte in `*status` (DEVICE_NEEDS_RESET, 0x40, is set after an
/// unrecoverable driver error).
///
/// # Safety
/// `status` points to a writable `uint8_t`.
#[no_mangle]
pub unsafe extern "C" fn vstor_device_status(dev: *const vstor_device, status: *mut u8) -> i32 {
    boundary("vstor_device_status", || {
        let p = out_ptr(status, "status")?;
        let v = device(dev)?.lock()?.transport.status();
        // SAFETY: non-NULL and writable (caller contract).
        unsafe { p.write(v) };
        Ok(0)
    })
}

/// A driver status write. 0 resets the device (requests in flight finish first). Steps out of
/// the order of VIRTIO 1.2 §3.1.1 are refused with `-EBUSY`; FEATURES_OK with an unacceptable
/// selection, and DRIVER_OK with a queue outside registered memory, with `-EINVAL` (the latter
/// also sets DEVICE_NEEDS_RESET).
#[no_mangle]
pub extern "C" fn vstor_device_set_status(dev: *mut vstor_device, status: u8) -> i32 {
    boundary("vstor_device_set_status", || {
        let d = device(dev)?;
        d.reconfigure(|inner| Ok(inner.transport.set_status(status)?))?;
        Ok(0)
    })
}

/// Resets the device, as a status write of 0.
#[no_mangle]
pub extern "C" fn vstor_device_reset(dev: *mut vstor_device) -> i32 {
    boundary("vstor_device_reset", || {
        let d = device(dev)?;
        d.reconfigure(|inner| {
            inner.transport.reset();
            Ok(())
        })?;
        Ok(0)
    })
}

fn config_args(buf: *const c_void, len: u32) -> CResult<()> {
    if buf.is_null() && len > 0 {
        return Err(CError::inval("buf is NULL"));
    }
    Ok(())
}

/// Reads `len` bytes of device configuration space at `offset` into `buf`. Accesses outside
/// the configuration structure fail with `-EINVAL`.
///
/// # Safety
/// `buf` points to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn vstor_device_config_read(
    dev: *const vstor_device,
    offset: u32,
    buf: *mut c_void,
    len: u32,
) -> i32 {
    boundary("vstor_device_config_read", || {
        config_args(buf, len)?;
        let d = device(dev)?;
        let inner = d.lock()?;
        if len == 0 {
            return Ok(0);
        }
        // SAFETY: `buf` is non-NULL and `len` bytes writable (caller contract).
        let data = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len as usize) };
        inner.transport.read_config(u64::from(offset), data)?;
        Ok(0)
    })
}

/// Writes `len` bytes of configuration space at `offset` (only fields the device type makes
/// writable, such as virtio-blk `writeback`).
///
/// # Safety
/// `buf` points to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn vstor_device_config_write(
    dev: *mut vstor_device,
    offset: u32,
    buf: *const c_void,
    len: u32,
) -> i32 {
    boundary("vstor_device_config_write", || {
        config_args(buf, len)?;
        let d = device(dev)?;
        let mut inner = d.lock()?;
        if len == 0 {
            return Ok(0);
        }
        // SAFETY: `buf` is non-NULL and `len` bytes readable (caller contract).
        let data = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len as usize) };
        inner.transport.write_config(u64::from(offset), data)?;
        Ok(0)
    })
}

/// Stores the configuration generation (VIRTIO 1.2 §2.5.1) in `*generation`.
///
/// # Safety
/// `generation` points to a writable `uint32_t`.
#[no_mangle]
pub unsafe extern "C" fn vstor_device_config_generation(
    dev: *const vstor_device,
    generation: *mut u32,
) -> i32 {
    boundary("vstor_device_config_generation", || {
        let p = out_ptr(generation, "generation")?;
        let v = device(dev)?.lock()?.transport.config_generation();
        // SAFETY: non-NULL and writable (caller contract).
        unsafe { p.write_unaligned(v) };
        Ok(0)
    })
}

/// Sets queue `queue`'s size, ring addresses and enable flag. Refused (`-EINVAL`) for a queue
/// that does not exist, a size that is not a power of two up to the maximum, misaligned rings,
/// or while the device is live. Rings are checked against registered memory at DRIVER_OK.
///
/// # Safety
/// `config` points to a struct whose `size` bytes are readable.
#[no_mangle]
pub unsafe extern "C" fn vstor_device_queue_setup(
    dev: *mut vstor_device,
    queue: u16,
    config: *const vstor_queue_config,
) -> i32 {
    boundary("vstor_device_queue_setup", || {
        if config.is_null() {
            return Err(CError::inval("config is NULL"));
        }
        // SAFETY: non-NULL and readable for its size (caller contract).
        let c = unsafe { read_in(config) }?;
        device(dev)?.lock()?.transport.set_queue(
            queue,
            QueueConfig {
                size: c.queue_size,
                desc_table: c.desc_addr,
                avail_ring: c.avail_addr,
                used_ring: c.used_addr,
                ready: c.enabled != 0,
            },
        )?;
        Ok(0)
    })
}

/// Reads queue `queue`'s configuration back into `*config` (set `config->size` first).
///
/// # Safety
/// `config` points to a struct whose `size` bytes are writable.
#[no_mangle]
pub unsafe extern "C" fn vstor_device_queue_get(
    dev: *const vstor_device,
    queue: u16,
    config: *mut vstor_queue_config,
) -> i32 {
    boundary("vstor_device_queue_get", || {
        let q = device(dev)?.lock()?.transport.queue(queue)?;
        let v = vstor_queue_config {
            size: std::mem::size_of::<vstor_queue_config>() as u32,
            queue_size: q.size,
            enabled: u16::from(q.ready),
            desc_addr: q.desc_table,
            avail_addr: q.avail_ring,
            used_addr: q.used_ring,
        };
        // SAFETY: caller contract.
        unsafe { write_out(config, &v) }?;
        Ok(0)
    })
}

/// Returns queue `queue` to its reset values (size 0 = maximum, addresses 0, disabled). Only
/// while the device is not live (per-queue reset of a live queue, VIRTIO_F_RING_RESET, is not
/// offered): `-EINVAL` otherwise.
#[no_mangle]
pub extern "C" fn vstor_device_queue_reset(dev: *mut vstor_device, queue: u16) -> i32 {
    boundary("vstor_device_queue_reset", || {
        device(dev)?
            .lock()?
            .transport
            .set_queue(queue, QueueConfig::default())?;
        Ok(0)
    })
}
