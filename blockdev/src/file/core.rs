//! The open host file shared by a `FileDev` and its queues, with the synchronous operations
//! every engine falls back to (preadv/pwritev loops, flush, discard, write-zeroes, erase).

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use super::host;
use crate::aligned::AlignedBuf;
use crate::error::{Error, Result};
use crate::iovec::IoVec;
use crate::types::BlockInfo;

/// Most buffers one preadv/pwritev/io_uring request may carry (`UIO_MAXIOV`).
pub(crate) const IOV_MAX: usize = 1024;

/// Size of the shared zero buffer used to emulate write-zeroes.
pub(crate) const ZERO_BUF_LEN: usize = 1 << 20;

/// What kind of host object backs the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostKind {
    /// A regular file.
    Regular,
    /// A host block device (S_ISBLK).
    BlockDevice,
}

/// An open host file plus what was learnt about it at open time.
pub(crate) struct FileCore {
    pub file: File,
    pub path: PathBuf,
    pub info: BlockInfo,
    pub kind: HostKind,
    /// Opened with O_DIRECT: offsets/lengths must be multiples of `info.logical_block_size`
    /// and buffers aligned to `info.mem_align`.
    pub direct: bool,
    /// Discard still works (cleared on the first EOPNOTSUPP; discard is then a no-op).
    discard_ok: AtomicBool,
    /// FALLOC_FL_PUNCH_HOLE works (regular files).
    punch_ok: AtomicBool,
    /// FALLOC_FL_ZERO_RANGE works (regular files).
    zero_range_ok: AtomicBool,
    /// BLKZEROOUT works (block devices).
    zeroout_ok: AtomicBool,
    zero_buf: OnceLock<AlignedBuf>,
}

fn retryable(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN))
}

/// Drops the first `n` bytes of a buffer list, returning what is left.
pub(crate) fn advance(iovs: &mut [IoVec], mut n: usize) -> &mut [IoVec] {
    let mut skip = 0;
    while skip < iovs.len() && n >= iovs[skip].len() {
        n -= iovs[skip].len();
        skip += 1;
    }
    let rest = &mut iovs[skip..];
    if n > 0 {
        if let Some(first) = rest.first_mut() {
            // SAFETY: `n < first.len()`, so the new buffer is the tail of the old one and stays
            // inside the memory its creator vouched for.
            *first = unsafe { IoVec::new(first.as_ptr().add(n), first.len() - n) };
        }
    }
    rest
}

/// Fills every buffer with zeroes.
pub(crate) fn zero_fill(iovs: &[IoVec]) {
    for v in iovs {
        // SAFETY: the request's submitter guarantees each IoVec is writable for its length until
        // the request completes (IoVec::new); the request has not completed yet.
        unsafe { std::ptr::write_bytes(v.as_ptr(), 0, v.len()) };
    }
}

impl FileCore {
    /// Wraps an opened file; `punch_ok` is the result of the hole-punch probe.
    pub fn new(
        file: File,
        path: PathBuf,
        info: BlockInfo,
        kind: HostKind,
        direct: bool,
        punch_ok: bool,
    ) -> Self {
        FileCore {
            file,
            path,
            kind,
            direct,
            discard_ok: AtomicBool::new(info.discard),
            punch_ok: AtomicBool::new(punch_ok),
            zero_range_ok: AtomicBool::new(kind == HostKind::Regular),
            zeroout_ok: AtomicBool::new(kind == HostKind::BlockDevice),
            zero_buf: OnceLock::new(),
            info,
        }
    }

    fn align(&self) -> u64 {
        u64::from(self.info.logical_block_size)
    }

    /// One `preadv`/`pwritev` of at most `IOV_MAX` buffers at `offset`, retried on EINTR and
    /// EAGAIN; returns the bytes moved.
    fn vectored(&self, write: bool, iovs: &[IoVec], offset: u64) -> io::Result<usize> {
        let cnt = iovs.len().min(IOV_MAX) as libc::c_int;
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        loop {
            let fd = self.file.as_raw_fd();
            let ptr = iovs.as_ptr().cast::<libc::iovec>();
            let n = if write {
                // SAFETY: IoVec is layout-compatible with iovec; each buffer is readable for
                // its length (IoVec contract) and `cnt` does not exceed the slice.
                unsafe { libc::pwritev(fd, ptr, cnt, off) }
            } else {
                // SAFETY: as above, and each buffer is writable for its length.
                unsafe { libc::preadv(fd, ptr, cnt, off) }
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if !retryable(&e) {
                return Err(e);
            }
        }
    }

    /// Reads into `iovs` at `offset` until they are full; what lies past the end of the file
    /// reads as zeroes.
    pub fn preadv_full(&self, iovs: &mut [IoVec], mut offset: u64) -> io::Result<()> {
        let mut rest = iovs;
        while !rest.is_empty() {
            let n = self.vectored(false, rest, offset)?;
            if n == 0 {
                zero_fill(rest);
                return Ok(());
            }
            offset += n as u64;
            rest = advance(rest, n);
            if self.direct && offset % self.align() != 0 && !rest.is_empty() {
                // An O_DIRECT read only stops mid-block at the end of the file.
                zero_fill(rest);
                return Ok(());
            }
        }
        Ok(())
    }

    /// Writes all of `iovs` at `offset`.
    pub fn pwritev_full(&self, iovs: &mut [IoVec], mut offset: u64) -> io::Result<()> {
        let mut rest = iovs;
        while !rest.is_empty() {
            let n = self.vectored(true, rest, offset)?;
            if n == 0 {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            offset += n as u64;
            rest = advance(rest, n);
        }
        Ok(())
    }

    /// fdatasync, or nothing for cache=unsafe.
    pub fn flush(&self) -> Result<()> {
        if self.info.cache.ignores_flush() {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| Error::io("flush", 0, 0, e))
    }

    /// Deallocates a range; a host that cannot is told nothing (discard is advisory).
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        if !self.discard_ok.load(Ordering::Relaxed) || len == 0 {
            return Ok(());
        }
        let res = match self.kind {
            HostKind::Regular => host::fallocate(&self.file, host::PUNCH_HOLE, offset, len),
            HostKind::BlockDevice => {
                // BLKDISCARD wants whole logical blocks: discard the aligned inside.
                let a = self.align();
                let start = offset.div_ceil(a) * a;
                let end = (offset + len) / a * a;
                if end <= start {
                    return Ok(());
                }
                host::blk_discard(&self.file, start, end - start)
            }
        };
        match res {
            Ok(()) => Ok(()),
            Err(e) if host::is_unsupported(&e) => {
                log::info!(
                    "{}: discard unsupported, ignoring discards: {e}",
                    self.path.display()
                );
                self.discard_ok.store(false, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(Error::io("discard", offset, len, e)),
        }
    }

    fn zero_buf(&self) -> io::Result<&AlignedBuf> {
        if let Some(b) = self.zero_buf.get() {
            return Ok(b);
        }
        let b = AlignedBuf::new(ZERO_BUF_LEN, (self.info.mem_align as usize).max(4096))?;
        Ok(self.zero_buf.get_or_init(|| b))
    }

    /// Emulates write-zeroes by writing a reused zero buffer (at most 1 MiB at a time).
    pub fn write_zero_buffers(&self, offset: u64, len: u64) -> io::Result<()> {
        let zeroes = self.zero_buf()?;
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let chunk = (end - pos).min(ZERO_BUF_LEN as u64) as usize;
            // SAFETY: the zero buffer is only ever read (pwritev reads from it); it lives as long
            // as `self` and `chunk` does not exceed its length.
            let mut iov = [unsafe { IoVec::new(zeroes.as_slice().as_ptr().cast_mut(), chunk) }];
            self.pwritev_full(&mut iov, pos)?;
            pos += chunk as u64;
        }
        Ok(())
    }

    /// Tries one fast zeroing method guarded by `flag`; `Ok(false)` means "fall back".
    fn try_fast(
        &self,
        flag: &AtomicBool,
        what: &str,
        f: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<bool> {
        if !flag.load(Ordering::Relaxed) {
            return Ok(false);
        }
        match f() {
            Ok(()) => Ok(true),
            Err(e) if host::is_unsupported(&e) || e.raw_os_error() == Some(libc::EINVAL) => {
                log::info!(
                    "{}: {what} unsupported, falling back: {e}",
                    self.path.display()
                );
                flag.store(false, Ordering::Relaxed);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Makes a range read as zeroes: hole punch (`may_unmap`), ZERO_RANGE or BLKZEROOUT, else
    /// writing zero buffers.
    pub fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.write_zeroes_io(offset, len, may_unmap)
            .map_err(|e| Error::io("write-zeroes", offset, len, e))
    }

    fn write_zeroes_io(&self, offset: u64, len: u64, may_unmap: bool) -> io::Result<()> {
        let f = &self.file;
        let done = match self.kind {
            HostKind::Regular => {
                (may_unmap
                    && self.try_fast(&self.punch_ok, "hole punching", || {
                        host::fallocate(f, host::PUNCH_HOLE, offset, len)
                    })?)
                    || self.try_fast(&self.zero_range_ok, "FALLOC_FL_ZERO_RANGE", || {
                        host::fallocate(f, libc::FALLOC_FL_ZERO_RANGE, offset, len)
                    })?
            }
            HostKind::BlockDevice => {
                let a = self.align();
                offset % a == 0
                    && len % a == 0
                    && self.try_fast(&self.zeroout_ok, "BLKZEROOUT", || {
                        host::blk_zeroout(f, offset, len)
                    })?
            }
        };
        if done {
            Ok(())
        } else {
            self.write_zero_buffers(offset, len)
        }
    }

    /// Erases a range so its data cannot be read back through the device: files punch a hole
    /// and fdatasync; block devices use BLKSECDISCARD.
    pub fn secure_erase(&self, offset: u64, len: u64) -> Result<()> {
        let unsupported = |why: String| Error::Unsupported {
            op: "secure-erase",
            what: format!("{} ({why})", self.path.display()),
        };
        let io_err = |e| Error::io("secure-erase", offset, len, e);
        match self.kind {
            HostKind::Regular => {
                if !self.punch_ok.load(Ordering::Relaxed) {
                    return Err(unsupported("no hole punching".into()));
                }
                match host::fallocate(&self.file, host::PUNCH_HOLE, offset, len) {
                    Ok(()) => {}
                    Err(e) if host::is_unsupported(&e) => return Err(unsupported(e.to_string())),
                    Err(e) => return Err(io_err(e)),
                }
                self.file.sync_data().map_err(io_err)
            }
            HostKind::BlockDevice => {
                let a = self.align();
                if offset % a != 0 || len % a != 0 {
                    return Err(Error::Unaligned {
                        op: "secure-erase",
                        offset,
                        len,
                        align: self.info.logical_block_size,
                    });
                }
                match host::blk_secure_discard(&self.file, offset, len) {
                    Ok(()) => Ok(()),
                    Err(e) if host::is_unsupported(&e) => Err(unsupported(e.to_string())),
                    Err(e) => Err(io_err(e)),
                }
            }
        }
    }
}
