//! The `BlockDev` trait and the value types that describe a device.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::request::IoQueue;

/// How the host page cache is used, with QEMU's names and meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// O_DIRECT, flushes honoured (QEMU `cache=none`).
    None,
    /// Page cache, flushes honoured (QEMU `cache=writeback`, the default).
    #[default]
    Writeback,
    /// Page cache, every write durable before completion (O_DSYNC).
    Writethrough,
    /// O_DIRECT and O_DSYNC.
    Directsync,
    /// Page cache, flushes ignored: fast and unsafe on host crash.
    Unsafe,
}

impl CacheMode {
    /// Every mode with its QEMU name.
    pub const ALL: [(CacheMode, &'static str); 5] = [
        (CacheMode::None, "none"),
        (CacheMode::Writeback, "writeback"),
        (CacheMode::Writethrough, "writethrough"),
        (CacheMode::Directsync, "directsync"),
        (CacheMode::Unsafe, "unsafe"),
    ];

    /// Whether the mode bypasses the host page cache.
    pub fn direct(self) -> bool {
        matches!(self, CacheMode::None | CacheMode::Directsync)
    }

    /// Whether every write is durable on completion (so the guest sees a write-through cache).
    pub fn write_through(self) -> bool {
        matches!(self, CacheMode::Writethrough | CacheMode::Directsync)
    }

    /// Whether flush requests are dropped.
    pub fn ignores_flush(self) -> bool {
        self == CacheMode::Unsafe
    }
}

impl fmt::Display for CacheMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = CacheMode::ALL
            .iter()
            .find(|(m, _)| m == self)
            .map(|(_, n)| *n)
            .unwrap_or("?");
        f.write_str(name)
    }
}

impl FromStr for CacheMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        CacheMode::ALL
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(m, _)| *m)
            .ok_or_else(|| Error::InvalidOption {
                name: "cache",
                value: s.to_string(),
                reason: "expected none, writeback, writethrough, directsync or unsafe".into(),
            })
    }
}

/// Which I/O engine a file-backed device uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// io_uring when the kernel allows it, else threads (decided once, at open).
    #[default]
    Auto,
    /// io_uring only; opening fails where it is refused.
    IoUring,
    /// A small pool of threads doing preadv/pwritev.
    Threads,
}

impl EngineKind {
    /// Every engine with its option name.
    pub const ALL: [(EngineKind, &'static str); 3] = [
        (EngineKind::Auto, "auto"),
        (EngineKind::IoUring, "io_uring"),
        (EngineKind::Threads, "threads"),
    ];
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = EngineKind::ALL
            .iter()
            .find(|(k, _)| k == self)
            .map(|(_, n)| *n)
            .unwrap_or("?");
        f.write_str(name)
    }
}

impl FromStr for EngineKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(EngineKind::Auto),
            "io_uring" | "io-uring" => Ok(EngineKind::IoUring),
            "threads" => Ok(EngineKind::Threads),
            _ => Err(Error::InvalidOption {
                name: "aio",
                value: s.to_string(),
                reason: "expected auto, io_uring or threads".into(),
            }),
        }
    }
}

/// What a device is and can do. Fixed while it is open (resize gives a new `BlockInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockInfo {
    /// Size in bytes (a multiple of `logical_block_size`).
    pub size: u64,
    /// Smallest addressable unit in bytes (512 or 4096).
    pub logical_block_size: u32,
    /// Physical block size in bytes (>= logical).
    pub physical_block_size: u32,
    /// Required buffer address alignment for zero-copy I/O (O_DIRECT), in bytes.
    pub mem_align: u32,
    /// Whether writes are refused.
    pub read_only: bool,
    /// Whether discard does anything (else it is accepted and ignored).
    pub discard: bool,
    /// Whether discarded ranges read back as zeroes.
    pub discard_zeroes: bool,
    /// Whether write-zeroes is efficient (else it is emulated by writing zero buffers).
    pub write_zeroes: bool,
    /// Whether secure erase is possible.
    pub secure_erase: bool,
    /// Whether the device has a volatile write cache that needs flushes.
    pub write_cache: bool,
    /// Largest single discard / write-zeroes request the device wants, in bytes.
    pub max_discard_bytes: u64,
    /// The cache mode in use.
    pub cache: CacheMode,
    /// Human-readable description: protocol and path.
    pub description: String,
}

/// Allocation status of a range, as reported by `block_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockStatus {
    /// Length in bytes of the run starting at the queried offset that shares this status.
    pub len: u64,
    /// Whether the run is allocated (holds data) in this device.
    pub allocated: bool,
    /// Whether the run is known to read as zeroes.
    pub zero: bool,
}

/// Where a range of a device's content comes from, as `qemu-img map` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapExtent {
    /// Length in bytes of the run starting at the queried offset.
    pub len: u64,
    /// The run holds data (not known to be zeroes).
    pub data: bool,
    /// The run reads as zeroes.
    pub zero: bool,
    /// The run is allocated in some layer of the chain (data or an explicit zero).
    pub present: bool,
    /// Host offset of the data in the file of the layer that holds it, when it has one.
    pub offset: Option<u64>,
    /// Chain layer the run comes from (0: this device, 1: its backing file, ...).
    pub depth: u32,
    /// The data is compressed.
    pub compressed: bool,
}

/// Options for a new [`IoQueue`].
#[derive(Debug, Clone, Copy)]
pub struct QueueOptions {
    /// Maximum requests in flight (the virtqueue size is a good value).
    pub depth: usize,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions { depth: 128 }
    }
}

/// An opened block device: a protocol, or later a format over a protocol.
///
/// All methods take `&self`: a `BlockDev` is shared by every queue of a device (`Arc<dyn
/// BlockDev>`). Data I/O goes through the per-queue [`IoQueue`]s; the synchronous
/// `read_at`/`write_at` exist for tools, probing and tests.
pub trait BlockDev: Send + Sync {
    /// What the device is and can do.
    fn info(&self) -> &BlockInfo;

    /// Opens a queue for concurrent asynchronous I/O.
    fn open_queue(&self, opts: &QueueOptions) -> Result<Box<dyn IoQueue>>;

    /// Reads exactly `buf.len()` bytes at `offset` (synchronously).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Writes all of `buf` at `offset` (synchronously).
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;

    /// Makes every completed write durable.
    fn flush(&self) -> Result<()>;

    /// Writes back everything cached and leaves the image clean (formats clear their dirty
    /// bit), as on a clean shutdown. The device stays usable: a later write makes the image
    /// dirty again. Servers call this when they stop; dropping the last reference does it too.
    fn close(&self) -> Result<()> {
        self.flush()
    }

    /// Image format name ("raw", "qcow2").
    fn format_name(&self) -> &'static str {
        "raw"
    }

    /// Where the range starting at `offset` (at most `len` bytes) comes from. Protocols report
    /// their own offsets (raw: host offset = guest offset), from [`BlockDev::block_status`].
    fn map(&self, offset: u64, len: u64) -> Result<MapExtent> {
        let s = self.block_status(offset, len)?;
        Ok(MapExtent {
            len: s.len,
            data: s.allocated && !s.zero,
            zero: s.zero,
            present: true,
            offset: Some(offset),
            depth: 0,
            compressed: false,
        })
    }

    /// Allocation status of the range starting at `offset` (at most `len` bytes).
    fn block_status(&self, offset: u64, len: u64) -> Result<BlockStatus> {
        let _ = offset;
        Ok(BlockStatus {
            len,
            allocated: true,
            zero: false,
        })
    }
}

/// Checks that `[offset, offset+len)` lies inside a device of `size` bytes.
pub fn check_range(op: &'static str, offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange {
            op,
            offset,
            len,
            size,
        }),
    }
}
