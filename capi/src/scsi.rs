//! virtio-scsi devices: `vstor_scsi_new`, `vstor_scsi_attach`, `vstor_scsi_detach`,
//! `vstor_scsi_lun_resized`.
//!
//! A virtio-scsi device starts with no logical unit. Units are attached at a target (0..=255)
//! and LUN (0..16384) on an open block device, as disks or CD-ROMs, before the driver starts or
//! while it runs: a live driver that negotiated VIRTIO_SCSI_F_HOTPLUG then finds a
//! TRANSPORT_RESET event (reason RESCAN on attach, REMOVED on detach) in its event queue, and
//! the other units of the target report REPORTED LUNS DATA HAS CHANGED. The device's queues
//! are the control queue (0), the event queue (1) and the request queues (2..). Commands run
//! on the thread that processes their queue (`vstor_device_kick`, or a worker thread);
//! events are delivered when the event queue is kicked, or through
//! `vstor_device_completion_fd` + `vstor_device_process` (or the event queue's worker) as
//! soon as they are raised.
//!
//! ```
//! use std::ffi::CString;
//! use vstor::*;
//!
//! let mut dev = std::ptr::null_mut();
//! // SAFETY: NULL config takes the defaults (one request queue); valid out pointer.
//! assert_eq!(unsafe { vstor_scsi_new(std::ptr::null(), &mut dev) }, 0);
//! let mut bdev = std::ptr::null_mut();
//! let path = CString::new("memory:1M").unwrap();
//! // SAFETY: valid string, NULL options, valid out pointer.
//! assert_eq!(unsafe { vstor_blockdev_open(path.as_ptr(), std::ptr::null(), &mut bdev) }, 0);
//! // SAFETY: NULL options: a read-write disk with the default identification.
//! assert_eq!(unsafe { vstor_scsi_attach(dev, 0, 3, bdev, std::ptr::null()) }, 0);
//! // SAFETY: as above; the LUN is taken now.
//! assert_eq!(unsafe { vstor_scsi_attach(dev, 0, 3, bdev, std::ptr::null()) }, -libc::EEXIST);
//! assert_eq!(vstor_blockdev_close(bdev), 0); // the unit keeps its own reference
//! assert_eq!(vstor_scsi_detach(dev, 0, 3), 0);
//! assert_eq!(vstor_scsi_detach(dev, 0, 3), -libc::ENOENT);
//! assert_eq!(vstor_device_free(dev), 0);
//! ```

use std::ffi::c_char;
use std::path::PathBuf;
use std::sync::Arc;

use vstor_scsi_disk::{LogicalUnit, LunKind, LunOptions};
use vstor_virtio_core::Transport;
use vstor_virtio_scsi::{LunAddr, ScsiOptions, ScsiShared, VirtioScsi};

use crate::blk::VSTOR_DEVICE_WORKER_THREADS;
use crate::blockdev::{c_str, vstor_blockdev, BLOCKDEVS};
use crate::device::{device, vstor_device, Device, DEVICES};
use crate::error::{boundary, CError, CResult};
use crate::irq::Routes;
use crate::structs::{read_in, Sized32};

/// virtio-scsi flag: do not offer VIRTIO_SCSI_F_HOTPLUG (the driver then gets no event when a
/// unit is attached or detached while it runs, and must rescan by itself).
pub const VSTOR_SCSI_NO_HOTPLUG: u32 = 1 << 8;
/// virtio-scsi flag: do not offer VIRTIO_SCSI_F_CHANGE (no PARAM_CHANGE event after
/// `vstor_scsi_lun_resized`; the unit attention still tells the driver).
pub const VSTOR_SCSI_NO_CHANGE: u32 = 1 << 9;
const SCSI_FLAGS: u32 = VSTOR_DEVICE_WORKER_THREADS | VSTOR_SCSI_NO_HOTPLUG | VSTOR_SCSI_NO_CHANGE;

/// Targets of a virtio-scsi device: `target` is 0..=255.
pub const VSTOR_SCSI_MAX_TARGETS: u32 = 256;
/// Logical units per target: `lun` is 0..16383 (flat space addressing).
pub const VSTOR_SCSI_MAX_LUNS: u32 = 16384;
const _: () = assert!(VSTOR_SCSI_MAX_LUNS == vstor_scsi_disk::target::MAX_LUNS);
const _: () = assert!(VSTOR_SCSI_MAX_TARGETS == vstor_virtio_scsi::lun_addr::MAX_TARGETS as u32);

/// virtio-scsi device configuration. Set `size = sizeof(struct vstor_scsi_config)`; zeroed
/// fields take the defaults.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct vstor_scsi_config {
    /// `sizeof(struct vstor_scsi_config)`.
    pub size: u32,
    /// `VSTOR_DEVICE_*` and `VSTOR_SCSI_*` bits.
    pub flags: u32,
    /// Request queues (1..=254); 0 = 1. The device has two more: control (queue 0) and event
    /// (queue 1); request queues are 2 and up.
    pub num_queues: u16,
    /// Largest queue size (power of two, 2..=32768); 0 = 256.
    pub queue_size: u16,
    /// `seg_max`: most data segments in one command (1..=queue_size); 0 = queue_size - 2.
    pub seg_max: u32,
    /// `max_sectors`: largest transfer of one command in 512-byte sectors (1..=131072);
    /// 0 = 65535.
    pub max_sectors: u32,
    /// `cmd_per_lun`: commands the driver may queue per logical unit; 0 = 128.
    pub cmd_per_lun: u32,
}

impl Default for vstor_scsi_config {
    fn default() -> Self {
        vstor_scsi_config {
            size: std::mem::size_of::<Self>() as u32,
            flags: 0,
            num_queues: 0,
            queue_size: 0,
            seg_max: 0,
            max_sectors: 0,
            cmd_per_lun: 0,
        }
    }
}

// SAFETY: repr(C), leading u32 size, integer fields only.
unsafe impl Sized32 for vstor_scsi_config {
    const MIN_SIZE: u32 = std::mem::size_of::<Self>() as u32;
    const NAME: &'static str = "vstor_scsi_config";
}

/// `vstor_lun_opts.flags`: the unit refuses writes (DATA PROTECT / WRITE PROTECTED), whatever
/// the block device allows.
pub const VSTOR_LUN_READ_ONLY: u32 = 1 << 0;
/// `vstor_lun_opts.flags`: a CD/DVD-ROM drive (MMC, read-only, 2048-byte blocks, removable
/// medium) instead of a disk.
pub const VSTOR_LUN_CDROM: u32 = 1 << 1;
const LUN_FLAGS: u32 = VSTOR_LUN_READ_ONLY | VSTOR_LUN_CDROM;

/// How a logical unit presents itself. Set `size = sizeof(struct vstor_lun_opts)`; zeroed
/// fields (NULL strings) take the defaults. Strings are copied: they need to live only for the
/// call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct vstor_lun_opts {
    /// `sizeof(struct vstor_lun_opts)`.
    pub size: u32,
    /// `VSTOR_LUN_*` bits.
    pub flags: u32,
    /// Unit serial number (VPD page 80h): 1 to 64 printable ASCII characters, no spaces;
    /// NULL = "vstor-<target>-<lun>".
    pub serial: *const c_char,
    /// NAA identifier (VPD page 83h); 0 = derived from the serial number.
    pub wwn: u64,
    /// T10 vendor identification: at most 8 printable ASCII characters; NULL = "VSTOR".
    pub vendor: *const c_char,
    /// Product identification: at most 16 printable ASCII characters; NULL = "VSTOR DISK"
    /// (or "VSTOR CD-ROM").
    pub product: *const c_char,
    /// Product revision level: at most 4 printable ASCII characters; NULL = "0001".
    pub revision: *const c_char,
    /// File that keeps persistent reservations across restarts while the initiator set
    /// APTPL (loaded now if it exists; e.g. "<image>.pr"); NULL = APTPL refused. Disks only.
    pub pr_file: *const c_char,
}

impl Default for vstor_lun_opts {
    fn default() -> Self {
        vstor_lun_opts {
            size: std::mem::size_of::<Self>() as u32,
            flags: 0,
            serial: std::ptr::null(),
            wwn: 0,
            vendor: std::ptr::null(),
            product: std::ptr::null(),
            revision: std::ptr::null(),
            pr_file: std::ptr::null(),
        }
    }
}

// SAFETY: repr(C), leading u32 size, integer and pointer fields only.
unsafe impl Sized32 for vstor_lun_opts {
    const MIN_SIZE: u32 = std::mem::size_of::<Self>() as u32;
    const NAME: &'static str = "vstor_lun_opts";
}

/// `value` (field `field`, NULL = `default`) checked to be printable ASCII of `min..=max`
/// bytes; `spaces` allows blanks.
///
/// # Safety
/// `value` is NULL or NUL-terminated.
unsafe fn ascii_field(
    value: *const c_char,
    field: &str,
    default: String,
    min: usize,
    max: usize,
    spaces: bool,
) -> CResult<String> {
    // SAFETY: the caller passes NULL or a NUL-terminated string.
    let Some(s) = (unsafe { c_str(value, field) })? else {
        return Ok(default);
    };
    let ok = |b: u8| b.is_ascii_graphic() || (spaces && b == b' ');
    if s.len() < min || s.len() > max || !s.bytes().all(ok) {
        return Err(CError::inval(format!(
            "{field} {s:?}: want {min} to {max} printable ASCII characters{}",
            if spaces { "" } else { " without spaces" }
        )));
    }
    Ok(s.to_string())
}

/// The unit options from the caller's struct.
///
/// # Safety
/// The string fields of `o` are NULL or NUL-terminated.
unsafe fn lun_options(
    o: &vstor_lun_opts,
    target: u8,
    lun: u16,
    dev_read_only: bool,
) -> CResult<LunOptions> {
    if o.flags & !LUN_FLAGS != 0 {
        return Err(CError::inval(format!(
            "vstor_lun_opts.flags has unknown bits {:#x}",
            o.flags & !LUN_FLAGS
        )));
    }
    let cdrom = o.flags & VSTOR_LUN_CDROM != 0;
    let d = LunOptions::default();
    let product = if cdrom { "VSTOR CD-ROM" } else { "VSTOR DISK" };
    // SAFETY: the caller guarantees the strings are NULL or NUL-terminated.
    let serial = unsafe {
        ascii_field(
            o.serial,
            "vstor_lun_opts.serial",
            format!("vstor-{target}-{lun}"),
            1,
            64,
            false,
        )
    }?;
    // SAFETY: as above.
    let vendor = unsafe { ascii_field(o.vendor, "vstor_lun_opts.vendor", d.vendor, 0, 8, true) }?;
    // SAFETY: as above.
    let product = unsafe {
        ascii_field(
            o.product,
            "vstor_lun_opts.product",
            product.into(),
            0,
            16,
            true,
        )
    }?;
    // SAFETY: as above.
    let revision = unsafe {
        ascii_field(
            o.revision,
            "vstor_lun_opts.revision",
            d.revision,
            0,
            4,
            true,
        )
    }?;
    // SAFETY: as above.
    let pr_file = unsafe { c_str(o.pr_file, "vstor_lun_opts.pr_file") }?;
    if pr_file.is_some() && cdrom {
        return Err(CError::inval(
            "vstor_lun_opts.pr_file: persistent reservations are for disks (VSTOR_LUN_CDROM is \
             set)",
        ));
    }
    if pr_file == Some("") {
        return Err(CError::inval("vstor_lun_opts.pr_file is empty"));
    }
    Ok(LunOptions {
        kind: if cdrom { LunKind::Cdrom } else { LunKind::Disk },
        vendor,
        product,
        revision,
        serial,
        wwn: o.wwn,
        read_only: cdrom || dev_read_only || o.flags & VSTOR_LUN_READ_ONLY != 0,
        pr_file: pr_file.map(PathBuf::from),
        ..d
    })
}

/// The virtio-scsi state of device handle `dev`.
fn scsi_device(dev: *const vstor_device) -> CResult<Arc<ScsiShared>> {
    device(dev)?
        .scsi
        .clone()
        .ok_or_else(|| CError::inval("not a virtio-scsi device (made by vstor_scsi_new)"))
}

/// `target`/`lun` as an address, or `-EINVAL` naming the LUN out of range.
fn lun_addr(target: u8, lun: u16) -> CResult<LunAddr> {
    if u32::from(lun) >= VSTOR_SCSI_MAX_LUNS {
        return Err(CError::inval(format!(
            "lun {lun} is out of range (0..{VSTOR_SCSI_MAX_LUNS})"
        )));
    }
    Ok(LunAddr { target, lun })
}

/// Creates a virtio-scsi device with no logical unit (attach them with `vstor_scsi_attach`).
/// `config` may be NULL for the defaults (one request queue of 256 entries, hotplug and
/// capacity-change events offered). The device starts reset: register guest memory, then
/// drive it through the transport calls as the guest's driver does.
///
/// # Safety
/// `config` is NULL or points to a struct whose `size` bytes are readable; `out` points to
/// writable storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn vstor_scsi_new(
    config: *const vstor_scsi_config,
    out: *mut *mut vstor_device,
) -> i32 {
    boundary("vstor_scsi_new", || {
        if out.is_null() {
            return Err(CError::inval("out is NULL"));
        }
        // SAFETY: the caller guarantees `config` is NULL or readable for its size.
        let c = unsafe { read_in(config) }?;
        if c.flags & !SCSI_FLAGS != 0 {
            return Err(CError::inval(format!(
                "vstor_scsi_config.flags has unknown bits {:#x}",
                c.flags & !SCSI_FLAGS
            )));
        }
        let d = ScsiOptions::default();
        let or = |v: u32, default: u32| if v == 0 { default } else { v };
        let queue_size = if c.queue_size == 0 {
            d.queue_size
        } else {
            c.queue_size
        };
        let opts = ScsiOptions {
            num_queues: if c.num_queues == 0 { 1 } else { c.num_queues },
            queue_size,
            seg_max: or(c.seg_max, u32::from(queue_size).saturating_sub(2).max(1)),
            max_sectors: or(c.max_sectors, d.max_sectors),
            cmd_per_lun: or(c.cmd_per_lun, d.cmd_per_lun),
            hotplug: c.flags & VSTOR_SCSI_NO_HOTPLUG == 0,
            change: c.flags & VSTOR_SCSI_NO_CHANGE == 0,
        };
        let shared = ScsiShared::new(opts).map_err(|e| match e {
            vstor_virtio_scsi::Error::InvalidOption {
                name,
                value,
                reason,
            } => CError::inval(format!("vstor_scsi_config.{name} = {value}: {reason}")),
            other => other.into(),
        })?;
        let scsi = VirtioScsi::new(shared.clone());
        let routes = Arc::new(Routes::new(vstor_virtio_core::VirtioDevice::num_queues(
            &scsi,
        )));
        let transport = Transport::new(Box::new(scsi), routes.clone());
        let mut device = Device::new(
            transport,
            routes,
            c.flags & VSTOR_DEVICE_WORKER_THREADS != 0,
        )?;
        device.scsi = Some(shared);
        let key = DEVICES.insert(Arc::new(device))?;
        // SAFETY: `out` is non-NULL and writable (caller contract).
        unsafe { *out = key as *mut vstor_device };
        Ok(0)
    })
}

/// Attaches a logical unit on `bdev` (which may be closed afterwards: the unit keeps its own
/// reference) at `target`/`lun` of a virtio-scsi device. `opts` may be NULL for a read-write
/// disk with the default identification (a read-only block device gives a read-only unit).
/// Allowed at any time: a live driver that negotiated hotplug gets a TRANSPORT_RESET / RESCAN
/// event for it. Returns 0; `-EINVAL` when `dev` is not a virtio-scsi device, `lun` is out of
/// range (0..16384) or an option is refused; `-EEXIST` when a unit is already attached there;
/// `-EBADF` for a handle that is not open.
///
/// # Safety
/// `opts` is NULL or points to a struct whose `size` bytes are readable; its strings are NULL
/// or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn vstor_scsi_attach(
    dev: *mut vstor_device,
    target: u8,
    lun: u16,
    bdev: *const vstor_blockdev,
    opts: *const vstor_lun_opts,
) -> i32 {
    boundary("vstor_scsi_attach", || {
        let shared = scsi_device(dev)?;
        let addr = lun_addr(target, lun)?;
        let bd: Arc<dyn ::vstor_blockdev::BlockDev> = Arc::clone(&*BLOCKDEVS.get(bdev as usize)?);
        // SAFETY: the caller guarantees `opts` is NULL or readable for its size.
        let o = unsafe { read_in(opts) }?;
        let busy = || {
            CError::new(
                libc::EEXIST,
                format!("target {target} LUN {lun} is already attached"),
            )
        };
        if shared.unit(addr).is_some() {
            return Err(busy());
        }
        // SAFETY: the caller guarantees the strings are NULL or NUL-terminated.
        let lo = unsafe { lun_options(&o, target, lun, bd.info().read_only) }?;
        let unit = if lo.kind == LunKind::Cdrom {
            LogicalUnit::new_cdrom(Some(bd), lo)
        } else {
            LogicalUnit::try_new(bd, lo).map_err(|e| CError::inval(e.to_string()))?
        };
        shared
            .attach(u32::from(target), u32::from(lun), Arc::new(unit))
            .map_err(|e| {
                // Lost a race with another attach at the same address.
                if shared.unit(addr).is_some() {
                    busy()
                } else {
                    e.into()
                }
            })?;
        Ok(0)
    })
}

/// Detaches the unit at `target`/`lun` of a virtio-scsi device; its block device is closed
/// once no command uses it (and no other handle or unit holds it). A live driver that
/// negotiated hotplug gets a TRANSPORT_RESET / REMOVED event. Returns 0; `-ENOENT` when no
/// unit is attached there; `-EINVAL` when `dev` is not a virtio-scsi device or `lun` is out of
/// range.
#[no_mangle]
pub extern "C" fn vstor_scsi_detach(dev: *mut vstor_device, target: u8, lun: u16) -> i32 {
    boundary("vstor_scsi_detach", || {
        let shared = scsi_device(dev)?;
        lun_addr(target, lun)?;
        shared.detach(u32::from(target), u32::from(lun))?;
        Ok(0)
    })
}

/// The disk at `target`/`lun` changed size: `bdev` is its block device reopened at the new
/// size (e.g. after the image file grew) and replaces the unit's medium (the unit keeps its
/// own reference; the old block device is closed once no command uses it). When the capacity
/// or block size differs, the unit reports CAPACITY DATA HAS CHANGED to its next command and a
/// live driver that negotiated VIRTIO_SCSI_F_CHANGE gets a PARAM_CHANGE event (ASC/ASCQ
/// 2Ah/09h). Returns 0; `-ENOENT` when no unit is attached there; `-EINVAL` for a CD-ROM unit,
/// a device that is not virtio-scsi or a `lun` out of range; `-EBADF` for a handle that is not
/// open.
#[no_mangle]
pub extern "C" fn vstor_scsi_lun_resized(
    dev: *mut vstor_device,
    target: u8,
    lun: u16,
    bdev: *const vstor_blockdev,
) -> i32 {
    boundary("vstor_scsi_lun_resized", || {
        let shared = scsi_device(dev)?;
        let addr = lun_addr(target, lun)?;
        let bd: Arc<dyn ::vstor_blockdev::BlockDev> = Arc::clone(&*BLOCKDEVS.get(bdev as usize)?);
        let unit = shared.unit(addr).ok_or_else(|| {
            CError::new(
                libc::ENOENT,
                format!("target {target} LUN {lun}: no unit attached"),
            )
        })?;
        if unit.options().kind == LunKind::Cdrom {
            return Err(CError::inval(format!(
                "target {target} LUN {lun} is a CD-ROM: its capacity is the disc's"
            )));
        }
        let geometry = |d: &dyn ::vstor_blockdev::BlockDev| {
            let i = d.info();
            (i.size, i.logical_block_size)
        };
        let new = geometry(&*bd);
        let old = unit.replace_medium(Some(bd));
        if old.as_deref().map(geometry) != Some(new) {
            shared.capacity_changed(addr);
        }
        Ok(0)
    })
}
