//! Opening a block device from a name and an options struct: the one factory every front end
//! (CLI, vhost-user, C ABI) calls.

use std::sync::Arc;

use crate::types::{BlockDev, CacheMode, EngineKind};
use crate::Result;

/// How to open a device. `Default` gives a read-write raw file with writeback cache and the
/// automatically chosen engine.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Refuse writes.
    pub read_only: bool,
    /// Host cache mode.
    pub cache: CacheMode,
    /// I/O engine for file-backed devices.
    pub engine: EngineKind,
    /// Image format ("raw", "qcow2"); `None` probes (a probed raw device refuses writes that
    /// would make block 0 look like an image format).
    pub format: Option<String>,
    /// null devices: reads fill buffers with zeroes (QEMU null-co `read-zeroes=on`).
    pub read_zeroes: bool,
    /// qcow2: bytes of L2 tables to cache (QEMU's `l2-cache-size`); `None`: enough to map the
    /// whole disk, at most 32 MiB.
    pub l2_cache_bytes: Option<u64>,
    /// qcow2: bytes of refcount blocks to cache (QEMU's `refcount-cache-size`); `None`: 1 MiB.
    pub refcount_cache_bytes: Option<u64>,
    /// Logical block size to expose (512 or 4096); `None` uses the host's.
    pub logical_block_size: Option<u32>,
}

/// Opens `name`:
/// - `null:<size>` — a null device of `<size>` bytes (suffixes K, M, G, T),
/// - `memory:<size>` — a zero-filled in-memory device,
/// - anything else — a path to an image: a regular file or host block device
///   ([`crate::file::FileDev`]) in the format `opts.format` names or the probe finds
///   ([`crate::probe`]): raw or qcow2 ([`crate::qcow2::Qcow2Dev`]).
pub fn open(name: &str, opts: &OpenOptions) -> Result<Arc<dyn BlockDev>> {
    crate::file::open_by_name(name, opts)
}
