//! Block devices: `vstor_blockdev_open`, `vstor_blockdev_get_info`, `vstor_blockdev_close`.

use std::ffi::{c_char, CStr};
use std::sync::Arc;

use ::vstor_blockdev::{BlockDev, CacheMode, EngineKind, OpenOptions};

use crate::error::{boundary, CError, CResult};
use crate::handle::Registry;
use crate::structs::{read_in, write_out, Sized32};

/// An open block device (opaque). Devices created on it keep their own reference, so it may be
/// closed while they live.
pub struct vstor_blockdev {
    _opaque: [u8; 0],
}

pub(crate) static BLOCKDEVS: Registry<Arc<dyn BlockDev>> = Registry::new("block device", 1);

/// `vstor_blockdev_opts.flags`: refuse writes.
pub const VSTOR_BDEV_READ_ONLY: u32 = 1 << 0;
/// `vstor_blockdev_opts.flags`: `null:` devices fill read buffers with zeroes.
pub const VSTOR_BDEV_READ_ZEROES: u32 = 1 << 1;
const BDEV_FLAGS: u32 = VSTOR_BDEV_READ_ONLY | VSTOR_BDEV_READ_ZEROES;

/// Host page cache used, flushes honoured (QEMU `cache=writeback`, the default).
pub const VSTOR_CACHE_WRITEBACK: u32 = 0;
/// O_DIRECT, flushes honoured (QEMU `cache=none`).
pub const VSTOR_CACHE_NONE: u32 = 1;
/// Page cache, every write durable before it completes.
pub const VSTOR_CACHE_WRITETHROUGH: u32 = 2;
/// O_DIRECT and every write durable before it completes.
pub const VSTOR_CACHE_DIRECTSYNC: u32 = 3;
/// Page cache, flushes ignored (fast, loses data on a host crash).
pub const VSTOR_CACHE_UNSAFE: u32 = 4;

/// io_uring where the kernel allows it, else a thread pool (the default).
pub const VSTOR_AIO_AUTO: u32 = 0;
/// io_uring only: opening fails where it is refused.
pub const VSTOR_AIO_IO_URING: u32 = 1;
/// A thread pool doing preadv/pwritev.
pub const VSTOR_AIO_THREADS: u32 = 2;

/// How to open a block device. Set `size = sizeof(struct vstor_blockdev_opts)`; zeroed fields
/// take the defaults.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct vstor_blockdev_opts {
    /// `sizeof(struct vstor_blockdev_opts)`.
    pub size: u32,
    /// `VSTOR_BDEV_*` bits.
    pub flags: u32,
    /// Image format ("raw" or "qcow2"), or NULL to probe (a probed raw image refuses writes that
    /// would make its first sector look like an image format).
    pub format: *const c_char,
    /// `VSTOR_CACHE_*`.
    pub cache_mode: u32,
    /// `VSTOR_AIO_*`.
    pub aio: u32,
    /// Logical block size to expose (512 or 4096); 0 = the host's.
    pub logical_block_size: u32,
    /// Must be zero.
    pub reserved: u32,
}

impl Default for vstor_blockdev_opts {
    fn default() -> Self {
        vstor_blockdev_opts {
            size: std::mem::size_of::<Self>() as u32,
            flags: 0,
            format: std::ptr::null(),
            cache_mode: VSTOR_CACHE_WRITEBACK,
            aio: VSTOR_AIO_AUTO,
            logical_block_size: 0,
            reserved: 0,
        }
    }
}

// SAFETY: repr(C), leading u32 size, integer and pointer fields only.
unsafe impl Sized32 for vstor_blockdev_opts {
    const MIN_SIZE: u32 = std::mem::size_of::<Self>() as u32;
    const NAME: &'static str = "vstor_blockdev_opts";
}

/// `vstor_blockdev_info.flags`: writes are refused.
pub const VSTOR_BDEV_INFO_READ_ONLY: u32 = 1 << 0;
/// `vstor_blockdev_info.flags`: discard frees space.
pub const VSTOR_BDEV_INFO_DISCARD: u32 = 1 << 1;
/// `vstor_blockdev_info.flags`: discarded ranges read as zeroes.
pub const VSTOR_BDEV_INFO_DISCARD_ZEROES: u32 = 1 << 2;
/// `vstor_blockdev_info.flags`: the device has a volatile write cache (flushes matter).
pub const VSTOR_BDEV_INFO_WRITE_CACHE: u32 = 1 << 3;

/// What `vstor_blockdev_get_info` reports. Set `size` before the call.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct vstor_blockdev_info {
    /// `sizeof(struct vstor_blockdev_info)`; on return, the bytes filled in.
    pub size: u32,
    /// `VSTOR_BDEV_INFO_*` bits.
    pub flags: u32,
    /// Capacity in bytes.
    pub capacity: u64,
    /// Logical block size in bytes.
    pub logical_block_size: u32,
    /// Physical block size in bytes.
    pub physical_block_size: u32,
    /// Buffer alignment zero-copy I/O needs, in bytes.
    pub mem_align: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

// SAFETY: repr(C), leading u32 size, integer fields only.
unsafe impl Sized32 for vstor_blockdev_info {
    const MIN_SIZE: u32 = std::mem::size_of::<Self>() as u32;
    const NAME: &'static str = "vstor_blockdev_info";
}

const CACHE_MODES: [(u32, CacheMode); 5] = [
    (VSTOR_CACHE_WRITEBACK, CacheMode::Writeback),
    (VSTOR_CACHE_NONE, CacheMode::None),
    (VSTOR_CACHE_WRITETHROUGH, CacheMode::Writethrough),
    (VSTOR_CACHE_DIRECTSYNC, CacheMode::Directsync),
    (VSTOR_CACHE_UNSAFE, CacheMode::Unsafe),
];
const ENGINES: [(u32, EngineKind); 3] = [
    (VSTOR_AIO_AUTO, EngineKind::Auto),
    (VSTOR_AIO_IO_URING, EngineKind::IoUring),
    (VSTOR_AIO_THREADS, EngineKind::Threads),
];

fn lookup<T: Copy>(table: &[(u32, T)], v: u32, field: &str) -> CResult<T> {
    table
        .iter()
        .find(|(k, _)| *k == v)
        .map(|(_, t)| *t)
        .ok_or_else(|| CError::inval(format!("{field} = {v} is not a known value")))
}

/// # Safety
/// `p` is NULL or a NUL-terminated string.
pub(crate) unsafe fn c_str<'a>(p: *const c_char, what: &str) -> CResult<Option<&'a str>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller passes a NUL-terminated string.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(Some)
        .map_err(|_| CError::inval(format!("{what} is not valid UTF-8")))
}

fn open_options(o: &vstor_blockdev_opts, format: Option<&str>) -> CResult<OpenOptions> {
    if o.flags & !BDEV_FLAGS != 0 {
        return Err(CError::inval(format!(
            "vstor_blockdev_opts.flags has unknown bits {:#x}",
            o.flags & !BDEV_FLAGS
        )));
    }
    if o.reserved != 0 {
        return Err(CError::inval("vstor_blockdev_opts.reserved must be zero"));
    }
    Ok(OpenOptions {
        read_only: o.flags & VSTOR_BDEV_READ_ONLY != 0,
        read_zeroes: o.flags & VSTOR_BDEV_READ_ZEROES != 0,
        cache: lookup(&CACHE_MODES, o.cache_mode, "vstor_blockdev_opts.cache_mode")?,
        engine: lookup(&ENGINES, o.aio, "vstor_blockdev_opts.aio")?,
        format: format.map(str::to_string),
        logical_block_size: match o.logical_block_size {
            0 => None,
            n => Some(n),
        },
        // qcow2 caches: QEMU's defaults (the C ABI has no fields for them yet).
        l2_cache_bytes: None,
        refcount_cache_bytes: None,
    })
}

/// Opens a block device: a path to an image file or host block device, `null:<size>` or
/// `memory:<size>` (sizes with K/M/G/T suffixes). `opts` may be NULL for the defaults
/// (read-write, probed format, writeback cache, automatic engine). On success `*out` holds the
/// handle. Returns 0 or a negative errno (`-ENOENT`, `-EACCES`, `-EINVAL`, ...).
///
/// # Safety
/// `path` is a NUL-terminated string; `opts` is NULL or points to a struct whose `size` bytes
/// are readable; `out` points to writable storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn vstor_blockdev_open(
    path: *const c_char,
    opts: *const vstor_blockdev_opts,
    out: *mut *mut vstor_blockdev,
) -> i32 {
    boundary("vstor_blockdev_open", || {
        if out.is_null() {
            return Err(CError::inval("out is NULL"));
        }
        // SAFETY: the caller guarantees `path` is NULL or NUL-terminated.
        let path = unsafe { c_str(path, "path") }?.ok_or_else(|| CError::inval("path is NULL"))?;
        // SAFETY: the caller guarantees `opts` is NULL or readable for its size.
        let o = unsafe { read_in(opts) }?;
        // SAFETY: as above for `o.format`.
        let format = unsafe { c_str(o.format, "vstor_blockdev_opts.format") }?;
        let dev = ::vstor_blockdev::open(path, &open_options(&o, format)?)?;
        let key = BLOCKDEVS.insert(Arc::new(dev))?;
        // SAFETY: `out` is non-NULL and writable (caller contract).
        unsafe { *out = key as *mut vstor_blockdev };
        Ok(0)
    })
}

/// Fills `*info` (set `info->size` first). Returns 0, `-EBADF` for a handle that is not open,
/// or `-EINVAL`.
///
/// # Safety
/// `info` points to a struct whose `size` bytes are writable.
#[no_mangle]
pub unsafe extern "C" fn vstor_blockdev_get_info(
    bdev: *const vstor_blockdev,
    info: *mut vstor_blockdev_info,
) -> i32 {
    boundary("vstor_blockdev_get_info", || {
        let dev = BLOCKDEVS.get(bdev as usize)?;
        let i = dev.info();
        let flag = |on: bool, bit: u32| if on { bit } else { 0 };
        let out = vstor_blockdev_info {
            size: std::mem::size_of::<vstor_blockdev_info>() as u32,
            flags: flag(i.read_only, VSTOR_BDEV_INFO_READ_ONLY)
                | flag(i.discard, VSTOR_BDEV_INFO_DISCARD)
                | flag(i.discard_zeroes, VSTOR_BDEV_INFO_DISCARD_ZEROES)
                | flag(i.write_cache, VSTOR_BDEV_INFO_WRITE_CACHE),
            capacity: i.size,
            logical_block_size: i.logical_block_size,
            physical_block_size: i.physical_block_size,
            mem_align: i.mem_align,
            reserved: 0,
        };
        // SAFETY: the caller guarantees `info` is writable for its size.
        unsafe { write_out(info, &out) }?;
        Ok(0)
    })
}

/// Closes a block device handle. Devices created on it keep working (they hold their own
/// reference); the file is closed when the last of them is freed. Returns 0, or `-EBADF` when
/// the handle is not open (a double close is caught, not undefined).
#[no_mangle]
pub extern "C" fn vstor_blockdev_close(bdev: *mut vstor_blockdev) -> i32 {
    boundary("vstor_blockdev_close", || {
        BLOCKDEVS.remove(bdev as usize)?;
        Ok(0)
    })
}
