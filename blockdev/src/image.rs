//! The byte store a format lives in: an [`ImageFile`] is a protocol seen from above a format
//! (it grows on writes past its end, reads as zeroes there, and can be truncated), as opposed
//! to a [`BlockDev`], which has a fixed size a guest sees.
//!
//! Implementations: [`FileImage`] (a regular file or host block device, data I/O through the
//! file's engine), [`MemImage`] (memory, for tests and fuzzing). Test suites add their own
//! (the qcow2 crash test injects faults through one).

use std::os::unix::io::RawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::file::FileDev;
use crate::memory::check_iovecs;
use crate::open::OpenOptions;
use crate::request::{Completion, IoOp, IoQueue, IoRequest, Submitted};
use crate::types::{BlockDev, BlockInfo, QueueOptions};

/// Largest image file a format may address (QEMU's limit for qcow2 host offsets is 2^56).
pub const MAX_IMAGE_FILE_SIZE: u64 = 1 << 56;

/// A growable byte store under a format.
pub trait ImageFile: Send + Sync {
    /// Name for messages (the path).
    fn name(&self) -> &str;

    /// Current length in bytes.
    fn len(&self) -> Result<u64>;

    /// Whether the file is empty.
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Reads exactly `buf.len()` bytes at `offset`; bytes past the end read as zeroes.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Writes `buf` at `offset`, growing the file when needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;

    /// Makes every completed write durable.
    fn flush(&self) -> Result<()>;

    /// Sets the length (truncates or extends with zeroes).
    fn set_len(&self, len: u64) -> Result<()>;

    /// Deallocates a range (advisory: the range may keep its data, or read as zeroes).
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let _ = (offset, len);
        Ok(())
    }

    /// Whether writes are refused.
    fn read_only(&self) -> bool;

    /// Alignment data I/O needs (offsets and lengths), in bytes: 1 for buffered files.
    fn request_align(&self) -> u32 {
        1
    }

    /// Writes the buffers `iovs` at `offset` in the calling thread, when that is cheaper than a
    /// queue (buffered files: the copy into the page cache is the whole cost, and io_uring
    /// would hand it to a kernel worker thread). `Ok(false)`: not offered, use a queue.
    fn write_vectored_inline(&self, iovs: &[crate::IoVec], offset: u64) -> Result<bool> {
        let _ = (iovs, offset);
        Ok(false)
    }

    /// Opens an asynchronous queue for data I/O at any offset, or `None` when this store has no
    /// engine of its own (callers then use [`SyncQueue`]).
    fn open_queue(&self, opts: &QueueOptions) -> Result<Option<Box<dyn IoQueue>>> {
        let _ = opts;
        Ok(None)
    }
}

/// A regular file or host block device as an image file.
pub struct FileImage {
    dev: FileDev,
    name: String,
}

impl FileImage {
    /// Opens `path` with the cache mode, engine and read-only flag of `opts` (the format field
    /// is not looked at).
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<FileImage> {
        let path = path.as_ref();
        let dev = FileDev::open_unbounded(path, opts)?;
        Ok(FileImage {
            dev,
            name: path.display().to_string(),
        })
    }

    /// The underlying device's description (protocol, cache mode, engine).
    pub fn info(&self) -> &BlockInfo {
        self.dev.info()
    }
}

impl ImageFile for FileImage {
    fn name(&self) -> &str {
        &self.name
    }
    fn len(&self) -> Result<u64> {
        self.dev.host_len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.dev.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        check_end(self.name(), offset, buf.len() as u64)?;
        self.dev.write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        self.dev.flush()
    }
    fn set_len(&self, len: u64) -> Result<()> {
        check_end(self.name(), len, 0)?;
        self.dev.set_host_len(len)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.dev.discard_range(offset, len)
    }
    fn read_only(&self) -> bool {
        self.dev.info().read_only
    }
    fn request_align(&self) -> u32 {
        if self.dev.info().cache.direct() {
            self.dev.info().logical_block_size
        } else {
            1
        }
    }
    fn open_queue(&self, opts: &QueueOptions) -> Result<Option<Box<dyn IoQueue>>> {
        self.dev.open_queue(opts).map(Some)
    }
    fn write_vectored_inline(&self, iovs: &[crate::IoVec], offset: u64) -> Result<bool> {
        if self.dev.info().cache.direct() {
            return Ok(false);
        }
        check_end(
            self.name(),
            offset,
            crate::IoVec::total_len(iovs).unwrap_or(u64::MAX),
        )?;
        self.dev.write_vectored(iovs, offset).map(|()| true)
    }
}

fn check_end(name: &str, offset: u64, len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= MAX_IMAGE_FILE_SIZE => Ok(()),
        _ => Err(Error::InvalidOption {
            name: "offset",
            value: format!("{offset}+{len}"),
            reason: format!("{name}: past the largest image file ({MAX_IMAGE_FILE_SIZE} bytes)"),
        }),
    }
}

/// An image file in memory (for tests, fuzzing and scratch images).
pub struct MemImage {
    data: Mutex<Vec<u8>>,
    limit: u64,
    read_only: bool,
}

impl MemImage {
    /// An image holding `bytes`, which may grow to `limit` bytes.
    pub fn new(bytes: Vec<u8>, limit: u64) -> MemImage {
        MemImage {
            data: Mutex::new(bytes),
            limit,
            read_only: false,
        }
    }

    /// The same, refusing writes.
    pub fn read_only(bytes: Vec<u8>) -> MemImage {
        MemImage {
            limit: bytes.len() as u64,
            data: Mutex::new(bytes),
            read_only: true,
        }
    }

    /// A copy of the current content.
    pub fn bytes(&self) -> Vec<u8> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn grow(&self, d: &mut Vec<u8>, end: u64) -> Result<()> {
        if end > self.limit {
            return Err(Error::InvalidOption {
                name: "offset",
                value: end.to_string(),
                reason: format!("memory image limited to {} bytes", self.limit),
            });
        }
        if end as usize > d.len() {
            d.resize(end as usize, 0);
        }
        Ok(())
    }
}

impl ImageFile for MemImage {
    fn name(&self) -> &str {
        "memory image"
    }
    fn len(&self) -> Result<u64> {
        Ok(self.lock().len() as u64)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let d = self.lock();
        buf.fill(0);
        let len = d.len() as u64;
        if offset < len {
            let n = (len - offset).min(buf.len() as u64) as usize;
            buf[..n].copy_from_slice(&d[offset as usize..offset as usize + n]);
        }
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly { op: "write" });
        }
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| Error::io("write", offset, buf.len() as u64, einval()))?;
        let mut d = self.lock();
        self.grow(&mut d, end)?;
        d[offset as usize..end as usize].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn set_len(&self, len: u64) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly { op: "truncate" });
        }
        let mut d = self.lock();
        if len > self.limit {
            return self.grow(&mut d, len);
        }
        d.resize(len as usize, 0);
        Ok(())
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
}

fn einval() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::EINVAL)
}

/// A queue that runs every request at once through an [`ImageFile`]'s synchronous calls.
pub struct SyncQueue {
    file: Arc<dyn ImageFile>,
    depth: usize,
    bounce: Vec<u8>,
}

impl SyncQueue {
    /// A queue over `file`.
    pub fn new(file: Arc<dyn ImageFile>, depth: usize) -> SyncQueue {
        SyncQueue {
            file,
            depth: depth.max(1),
            bounce: Vec::new(),
        }
    }

    fn execute(&mut self, req: &IoRequest) -> Result<()> {
        check_iovecs(req)?;
        let len = usize::try_from(req.len).map_err(|_| Error::OutOfRange {
            op: req.op.name(),
            offset: req.offset,
            len: req.len,
            size: MAX_IMAGE_FILE_SIZE,
        })?;
        match req.op {
            IoOp::Read => {
                self.bounce.resize(len, 0);
                self.file.read_at(&mut self.bounce, req.offset)?;
                crate::iovec::scatter(&req.iovecs, &self.bounce);
                Ok(())
            }
            IoOp::Write => {
                self.bounce.resize(len, 0);
                crate::iovec::gather(&req.iovecs, &mut self.bounce);
                self.file.write_at(&self.bounce, req.offset)
            }
            IoOp::Flush => self.file.flush(),
            IoOp::Discard => self.file.discard(req.offset, req.len),
            IoOp::WriteZeroes { .. } | IoOp::SecureErase => {
                let zeroes = vec![0u8; len.min(1 << 20)];
                let mut pos = 0u64;
                while pos < req.len {
                    let n = (req.len - pos).min(zeroes.len() as u64) as usize;
                    self.file.write_at(&zeroes[..n], req.offset + pos)?;
                    pos += n as u64;
                }
                Ok(())
            }
        }
    }
}

impl IoQueue for SyncQueue {
    fn submit(&mut self, req: IoRequest) -> Result<Submitted> {
        Ok(Submitted::Done(self.execute(&req)))
    }
    fn kick(&mut self) -> Result<()> {
        Ok(())
    }
    fn reap(&mut self, _out: &mut Vec<Completion>) -> usize {
        0
    }
    fn completion_fd(&self) -> Option<RawFd> {
        None
    }
    fn in_flight(&self) -> usize {
        0
    }
    fn depth(&self) -> usize {
        self.depth
    }
}

/// Opens the asynchronous queue of `file`, or a [`SyncQueue`] over it when it has none.
pub fn open_data_queue(file: &Arc<dyn ImageFile>, opts: &QueueOptions) -> Result<Box<dyn IoQueue>> {
    match file.open_queue(opts)? {
        Some(q) => Ok(q),
        None => Ok(Box::new(SyncQueue::new(file.clone(), opts.depth))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_image_grows_and_reads_zero_past_end() {
        let m = MemImage::new(Vec::new(), 1 << 20);
        m.write_at(b"abc", 10).unwrap();
        assert_eq!(m.len().unwrap(), 13);
        let mut b = [9u8; 8];
        m.read_at(&mut b, 8).unwrap();
        assert_eq!(&b, &[0, 0, b'a', b'b', b'c', 0, 0, 0]);
        assert!(m.write_at(b"x", 1 << 20).is_err());
        m.set_len(4).unwrap();
        assert_eq!(m.len().unwrap(), 4);
    }

    #[test]
    fn file_image_grows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"").unwrap();
        let f = FileImage::open(&p, &OpenOptions::default()).unwrap();
        f.write_at(b"hello", 1 << 20).unwrap();
        assert_eq!(f.len().unwrap(), (1 << 20) + 5);
        let mut b = [1u8; 10];
        f.read_at(&mut b, (1 << 20) + 3).unwrap();
        assert_eq!(&b, b"lo\0\0\0\0\0\0\0\0");
        f.set_len(100).unwrap();
        assert_eq!(f.len().unwrap(), 100);
    }
}
