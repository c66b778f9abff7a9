//! Regular files and host block devices (the `file` protocol), and name-based opening.
//!
//! Cache modes map to open flags as in QEMU: `none` = O_DIRECT, `writeback` = page cache,
//! `writethrough` = O_DSYNC, `directsync` = O_DIRECT|O_DSYNC, `unsafe` = page cache with
//! flushes ignored. Under O_DIRECT the logical block size is the host's O_DIRECT request
//! alignment (statx STATX_DIOALIGN, else QEMU's read probe; BLKSSZGET for block devices) and
//! `BlockInfo::mem_align` its buffer alignment; unaligned buffers are bounced (see
//! [`crate::engine`]).
//!
//! What the optional operations do:
//! - discard: files punch a hole (FALLOC_FL_PUNCH_HOLE|KEEP_SIZE, so `discard_zeroes`), block
//!   devices BLKDISCARD. A host answering EOPNOTSUPP turns discard into an accepted no-op.
//! - write-zeroes: files punch a hole (`may_unmap`) or use FALLOC_FL_ZERO_RANGE, block devices
//!   BLKZEROOUT; otherwise zero buffers are written (a shared 1 MiB buffer).
//! - secure erase: files punch a hole and fdatasync, so the data can no longer be read through
//!   the device (`secure_erase` is reported where hole punching works; the filesystem may keep
//!   the old blocks on the medium). Block devices report `secure_erase = false` because the
//!   kernel cannot tell in advance; a request still tries BLKSECDISCARD and fails with
//!   `Error::Unsupported` where the device cannot.

use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use crate::aligned::AlignedBuf;
use crate::engine;
use crate::error::{Error, Result};
use crate::iovec::IoVec;
use crate::memory::{MemoryDev, MemoryOptions};
use crate::null::{NullDev, NullOptions};
use crate::open::OpenOptions;
use crate::request::IoQueue;
use crate::types::{check_range, BlockDev, BlockInfo, BlockStatus, EngineKind, QueueOptions};

pub(crate) mod core;
mod host;

use self::core::{FileCore, HostKind};

/// Largest discard / write-zeroes request a file device asks for.
pub const MAX_DISCARD_BYTES: u64 = 1 << 30;

/// Size of the bounce buffer `read_at`/`write_at` use under O_DIRECT.
const SYNC_BOUNCE: u64 = 1 << 20;

/// Parses a size with an optional K/M/G/T suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = || Error::InvalidOption {
        name: "size",
        value: s.to_string(),
        reason: "expected a number with an optional K, M, G or T suffix".into(),
    };
    let (num, shift) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 10),
        Some('M') => (&s[..s.len() - 1], 20),
        Some('G') => (&s[..s.len() - 1], 30),
        Some('T') => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// Opens a named device (see [`crate::open::open`]).
pub(crate) fn open_by_name(name: &str, opts: &OpenOptions) -> Result<Arc<dyn BlockDev>> {
    let protocol = name.starts_with("null:") || name.starts_with("memory:");
    match opts.format.as_deref() {
        None | Some("raw") => {}
        Some(f) if protocol => {
            return Err(Error::Unsupported {
                op: "open",
                what: format!(
                    "{name}: image format {f:?} on a {} device",
                    &name[..name.find(':').unwrap_or(0)]
                ),
            })
        }
        Some(_) => {}
    }
    if let Some(size) = name.strip_prefix("null:") {
        return Ok(Arc::new(NullDev::new(
            parse_size(size)?,
            NullOptions {
                read_zeroes: opts.read_zeroes,
                read_only: opts.read_only,
                logical_block_size: opts.logical_block_size.unwrap_or(512),
            },
        )?));
    }
    if let Some(size) = name.strip_prefix("memory:") {
        return Ok(Arc::new(MemoryDev::new(
            parse_size(size)?,
            MemoryOptions {
                logical_block_size: opts.logical_block_size.unwrap_or(512),
                read_only: opts.read_only,
            },
        )?));
    }
    crate::probe::open_path(Path::new(name), opts)
}

/// A regular file or host block device.
pub struct FileDev {
    core: Arc<FileCore>,
    engine: EngineKind,
    requested: EngineKind,
}

impl std::fmt::Debug for FileDev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileDev")
            .field("info", &self.core.info)
            .field("engine", &self.engine)
            .finish()
    }
}

fn round_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a).saturating_mul(a)
}

impl FileDev {
    /// Opens `path` (a regular file or a block device) with `opts.cache`, `opts.read_only`,
    /// `opts.engine` and `opts.logical_block_size`. The format is not looked at here (see
    /// [`crate::open::open`]). Errors name the path.
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<FileDev> {
        Self::open_with(path.as_ref(), opts, false)
    }

    /// Opens `path` as the file under a format: offsets are not limited to the size at open
    /// (writes past the end grow the file, reads there return zeroes). See
    /// [`crate::image::FileImage`].
    pub fn open_unbounded(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<FileDev> {
        Self::open_with(path.as_ref(), opts, true)
    }

    /// The file's current length in bytes (block devices: their size).
    pub fn host_len(&self) -> Result<u64> {
        let open_err = |source| Error::Open {
            path: self.core.path.clone(),
            source,
        };
        match self.core.kind {
            HostKind::Regular => Ok(self.core.file.metadata().map_err(open_err)?.len()),
            HostKind::BlockDevice => host::blk_size(&self.core.file).map_err(open_err),
        }
    }

    /// Truncates or extends a regular file (block devices refuse).
    pub fn set_host_len(&self, len: u64) -> Result<()> {
        if self.core.info.read_only {
            return Err(Error::ReadOnly { op: "truncate" });
        }
        if self.core.kind != HostKind::Regular {
            return Err(Error::Unsupported {
                op: "truncate",
                what: format!("host block device {}", self.core.path.display()),
            });
        }
        self.core
            .file
            .set_len(len)
            .map_err(|e| Error::io("truncate", len, 0, e))
    }

    /// Writes `iovs` at `offset` with pwritev, in the calling thread (buffered files only:
    /// under O_DIRECT the caller uses a queue, which knows how to bounce).
    pub fn write_vectored(&self, iovs: &[IoVec], offset: u64) -> Result<()> {
        if self.core.info.read_only {
            return Err(Error::ReadOnly { op: "write" });
        }
        let len = IoVec::total_len(iovs).unwrap_or(u64::MAX);
        if self.core.direct {
            return Err(Error::Unsupported {
                op: "write",
                what: "synchronous vectored writes under O_DIRECT".into(),
            });
        }
        let mut v = iovs.to_vec();
        self.core
            .pwritev_full(&mut v, offset)
            .map_err(|e| Error::io("write", offset, len, e))
    }

    /// Deallocates a range (advisory, see [`BlockDev`] discard).
    pub fn discard_range(&self, offset: u64, len: u64) -> Result<()> {
        if self.core.info.read_only {
            return Err(Error::ReadOnly { op: "discard" });
        }
        self.core.discard(offset, len)
    }

    fn open_with(path: &Path, opts: &OpenOptions, unbounded: bool) -> Result<FileDev> {
        let open_err = |source| Error::Open {
            path: path.to_path_buf(),
            source,
        };
        let cache = opts.cache;
        let mut flags = 0;
        if cache.direct() {
            flags |= libc::O_DIRECT;
        }
        if cache.write_through() {
            flags |= libc::O_DSYNC;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!opts.read_only)
            .custom_flags(flags)
            .open(path)
            .map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        let kind = if meta.file_type().is_file() {
            HostKind::Regular
        } else if meta.file_type().is_block_device() {
            HostKind::BlockDevice
        } else {
            return Err(open_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file or a block device",
            )));
        };
        let engine = engine::resolve(opts.engine)?;
        let ro = opts.read_only;

        let (host_len, host_lbs, host_pbs) = match kind {
            HostKind::Regular => (meta.len(), 512, 512),
            HostKind::BlockDevice => {
                let size = host::blk_size(&file).map_err(open_err)?;
                let lbs = host::blk_logical_block_size(&file).map_err(open_err)?;
                let pbs = host::blk_physical_block_size(&file).unwrap_or(lbs);
                (size, lbs, pbs)
            }
        };
        let (required, mem_align) = if cache.direct() {
            let a = host::direct_align(&file, host_len);
            (a.request.max(host_lbs), a.mem)
        } else {
            (1, 1)
        };
        let lbs = match opts.logical_block_size {
            None => required.max(host_lbs),
            Some(v) if (v == 512 || v == 4096) && v >= required => v,
            Some(v) => {
                return Err(Error::InvalidOption {
                    name: "logical_block_size",
                    value: v.to_string(),
                    reason: format!(
                        "must be 512 or 4096 and at least {} (the host's O_DIRECT alignment of {})",
                        required.max(512),
                        path.display()
                    ),
                })
            }
        };
        let a = u64::from(lbs);
        let size = match kind {
            _ if unbounded => crate::image::MAX_IMAGE_FILE_SIZE,
            // A file's partial last block reads as zeroes past the end (as in QEMU).
            HostKind::Regular => round_up(host_len, a),
            HostKind::BlockDevice => host_len / a * a,
        };
        let punch_ok = kind == HostKind::Regular && !ro && host::probe_punch_hole(&file, host_len);
        let queue_attr = |attr| match kind {
            HostKind::BlockDevice => host::blk_queue_attr(&file, attr),
            HostKind::Regular => None,
        };
        let blk_discard_max = queue_attr("discard_max_bytes");
        let blk_zeroes_max = queue_attr("write_zeroes_max_bytes");
        let (discard, discard_zeroes, write_zeroes, secure_erase) = match kind {
            HostKind::Regular => (punch_ok, punch_ok, punch_ok, punch_ok),
            HostKind::BlockDevice => (
                !ro && blk_discard_max.is_none_or(|m| m > 0),
                false,
                !ro && blk_zeroes_max.is_some_and(|m| m > 0),
                false,
            ),
        };
        let max_discard_bytes = blk_discard_max
            .filter(|&m| m > 0)
            .unwrap_or(MAX_DISCARD_BYTES)
            .min(MAX_DISCARD_BYTES)
            / a
            * a;
        let kind_name = match kind {
            HostKind::Regular => "file",
            HostKind::BlockDevice => "host_device",
        };
        let info = BlockInfo {
            size,
            logical_block_size: lbs,
            physical_block_size: host_pbs.max(lbs),
            mem_align,
            read_only: ro,
            discard,
            discard_zeroes,
            write_zeroes,
            secure_erase,
            write_cache: !cache.write_through(),
            max_discard_bytes: max_discard_bytes.max(a),
            cache,
            description: format!(
                "{kind_name} {} (cache={cache}, aio={engine})",
                path.display()
            ),
        };
        log::debug!("opened {info:?}");
        let core = FileCore::new(
            file,
            path.to_path_buf(),
            info,
            kind,
            cache.direct(),
            punch_ok,
        );
        Ok(FileDev {
            core: Arc::new(core),
            engine,
            requested: opts.engine,
        })
    }

    /// The engine queues use (never `Auto`: the choice is made at open).
    pub fn engine(&self) -> EngineKind {
        self.engine
    }

    /// The shared host file (for the engines' unit tests).
    #[cfg(test)]
    pub(crate) fn core(&self) -> &Arc<FileCore> {
        &self.core
    }

    /// The path the device was opened from.
    pub fn path(&self) -> &Path {
        &self.core.path
    }

    /// Whether the device is a host block device (else a regular file).
    pub fn is_block_device(&self) -> bool {
        self.core.kind == HostKind::BlockDevice
    }

    /// Runs `f` over the O_DIRECT-aligned chunks covering `[offset, offset+len)`: `f` gets an
    /// aligned chunk buffer, its device offset, and the part of the caller's range inside it.
    fn direct_chunks(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&mut [u8], u64, std::ops::Range<u64>) -> io::Result<()>,
    ) -> io::Result<()> {
        let a = u64::from(self.core.info.logical_block_size);
        let start = offset / a * a;
        let end = round_up(offset + len, a);
        let chunk_max = SYNC_BOUNCE.max(a) / a * a;
        let align = (self.core.info.mem_align as usize).max(512);
        let mut bounce = AlignedBuf::new((end - start).min(chunk_max) as usize, align)?;
        let mut pos = start;
        while pos < end {
            let n = (end - pos).min(chunk_max);
            let lo = pos.max(offset);
            let hi = (pos + n).min(offset + len);
            f(&mut bounce.as_mut_slice()[..n as usize], pos, lo..hi)?;
            pos += n;
        }
        Ok(())
    }

    fn read_io(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if !self.core.direct {
            // SAFETY: `buf` outlives the synchronous read and is not otherwise accessed.
            let mut iov = [unsafe { IoVec::from_slice(buf) }];
            return self.core.preadv_full(&mut iov, offset);
        }
        self.direct_chunks(offset, buf.len() as u64, |chunk, pos, want| {
            // SAFETY: `chunk` outlives the synchronous read and is not otherwise accessed.
            let mut iov = [unsafe { IoVec::from_slice(chunk) }];
            self.core.preadv_full(&mut iov, pos)?;
            let (b, c) = ((want.start - offset) as usize, (want.start - pos) as usize);
            let n = (want.end - want.start) as usize;
            buf[b..b + n].copy_from_slice(&chunk[c..c + n]);
            Ok(())
        })
    }

    fn write_io(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.core.direct {
            // SAFETY: pwritev only reads the buffer, which outlives the synchronous write.
            let mut iov = [unsafe { IoVec::new(buf.as_ptr().cast_mut(), buf.len()) }];
            return self.core.pwritev_full(&mut iov, offset);
        }
        // Partial blocks are read, modified and written back (not atomic against concurrent
        // writers of the same block; this path is for tools and tests).
        self.direct_chunks(offset, buf.len() as u64, |chunk, pos, want| {
            let n = (want.end - want.start) as usize;
            if n != chunk.len() {
                // SAFETY: `chunk` outlives the synchronous read and is not otherwise accessed.
                let mut iov = [unsafe { IoVec::from_slice(chunk) }];
                self.core.preadv_full(&mut iov, pos)?;
            }
            let (b, c) = ((want.start - offset) as usize, (want.start - pos) as usize);
            chunk[c..c + n].copy_from_slice(&buf[b..b + n]);
            // SAFETY: pwritev only reads `chunk`, which outlives the synchronous write.
            let mut iov = [unsafe { IoVec::from_slice(chunk) }];
            self.core.pwritev_full(&mut iov, pos)
        })
    }
}

impl BlockDev for FileDev {
    fn info(&self) -> &BlockInfo {
        &self.core.info
    }

    fn open_queue(&self, opts: &QueueOptions) -> Result<Box<dyn IoQueue>> {
        engine::open_queue(&self.core, self.engine, self.requested, opts)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let len = buf.len() as u64;
        check_range("read", offset, len, self.core.info.size)?;
        self.read_io(buf, offset)
            .map_err(|e| Error::io("read", offset, len, e))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let len = buf.len() as u64;
        if self.core.info.read_only {
            return Err(Error::ReadOnly { op: "write" });
        }
        check_range("write", offset, len, self.core.info.size)?;
        self.write_io(buf, offset)
            .map_err(|e| Error::io("write", offset, len, e))
    }

    fn flush(&self) -> Result<()> {
        if self.core.info.read_only {
            return Ok(());
        }
        self.core.flush()
    }

    /// Regular files answer from SEEK_DATA/SEEK_HOLE (holes read as zeroes); block devices
    /// report everything allocated.
    fn block_status(&self, offset: u64, len: u64) -> Result<BlockStatus> {
        check_range("block-status", offset, len, self.core.info.size)?;
        let allocated = BlockStatus {
            len,
            allocated: true,
            zero: false,
        };
        if self.core.kind != HostKind::Regular || len == 0 {
            return Ok(allocated);
        }
        let f = &self.core.file;
        let hole = |to: u64| BlockStatus {
            len: to.saturating_sub(offset).min(len),
            allocated: false,
            zero: true,
        };
        match host::seek(f, offset, libc::SEEK_DATA) {
            Ok(None) => Ok(hole(offset + len)),
            Ok(Some(d)) if d > offset => Ok(hole(d)),
            Ok(Some(_)) => match host::seek(f, offset, libc::SEEK_HOLE) {
                Ok(Some(h)) if h > offset => Ok(BlockStatus {
                    len: (h - offset).min(len),
                    ..allocated
                }),
                _ => Ok(allocated),
            },
            Err(e) => {
                log::debug!("{}: SEEK_DATA failed: {e}", self.core.path.display());
                Ok(allocated)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        for bad in ["", "K", "x", "-1", "99999999999T", "1.5M"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn round_up_works() {
        assert_eq!(round_up(0, 512), 0);
        assert_eq!(round_up(1, 512), 512);
        assert_eq!(round_up(512, 512), 512);
        assert_eq!(round_up(u64::MAX, 512), u64::MAX);
    }
}
