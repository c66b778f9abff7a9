//! An in-memory device: zero-filled at creation, gone when dropped. For tests and tools.

use std::os::unix::io::RawFd;
use std::sync::{Arc, RwLock};

use crate::error::{Error, Result};
use crate::iovec::IoVec;
use crate::request::{Completion, IoOp, IoQueue, IoRequest, Submitted};
use crate::types::{check_range, BlockDev, BlockInfo, CacheMode, QueueOptions};

/// Options for a [`MemoryDev`].
#[derive(Debug, Clone, Copy)]
pub struct MemoryOptions {
    /// Logical block size (512 or 4096).
    pub logical_block_size: u32,
    /// Refuse writes.
    pub read_only: bool,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        MemoryOptions {
            logical_block_size: 512,
            read_only: false,
        }
    }
}

/// A device whose content lives in host memory.
pub struct MemoryDev {
    info: BlockInfo,
    data: Arc<RwLock<Vec<u8>>>,
}

/// Largest memory device (guards against a size typo allocating the host away).
pub const MAX_MEMORY_SIZE: u64 = 16 << 30;

impl MemoryDev {
    /// A zero-filled device of `size` bytes (a multiple of the logical block size).
    pub fn new(size: u64, opts: MemoryOptions) -> Result<Self> {
        let lbs = opts.logical_block_size;
        if lbs != 512 && lbs != 4096 {
            return Err(Error::InvalidOption {
                name: "logical_block_size",
                value: lbs.to_string(),
                reason: "must be 512 or 4096".into(),
            });
        }
        if size % u64::from(lbs) != 0 || size > MAX_MEMORY_SIZE {
            return Err(Error::InvalidOption {
                name: "size",
                value: size.to_string(),
                reason: format!("must be a multiple of {lbs} and at most {MAX_MEMORY_SIZE}"),
            });
        }
        let info = BlockInfo {
            size,
            logical_block_size: lbs,
            physical_block_size: lbs,
            mem_align: 1,
            read_only: opts.read_only,
            discard: true,
            discard_zeroes: true,
            write_zeroes: true,
            secure_erase: true,
            write_cache: false,
            max_discard_bytes: 1 << 30,
            cache: CacheMode::Writeback,
            description: format!("memory ({size} bytes)"),
        };
        Ok(MemoryDev {
            info,
            data: Arc::new(RwLock::new(vec![0u8; size as usize])),
        })
    }
}

fn execute(info: &BlockInfo, data: &RwLock<Vec<u8>>, req: &IoRequest) -> Result<()> {
    let op = req.op.name();
    if req.op.is_write() && info.read_only {
        return Err(Error::ReadOnly { op });
    }
    if req.op == IoOp::Flush {
        return Ok(());
    }
    check_range(op, req.offset, req.len, info.size)?;
    let start = req.offset as usize;
    match req.op {
        IoOp::Read => {
            let d = data.read().unwrap_or_else(|e| e.into_inner());
            let mut pos = start;
            for v in &req.iovecs {
                let end = pos + v.len();
                // SAFETY: the submitter guarantees the IoVec is valid for writes of `len` bytes
                // until completion (IoVec::new); the source range was bounds-checked above and
                // the total of the iovecs equals `req.len` (checked in submit).
                unsafe { std::ptr::copy_nonoverlapping(d[pos..end].as_ptr(), v.as_ptr(), v.len()) };
                pos = end;
            }
        }
        IoOp::Write => {
            let mut d = data.write().unwrap_or_else(|e| e.into_inner());
            let mut pos = start;
            for v in &req.iovecs {
                let end = pos + v.len();
                // SAFETY: as above, the IoVec is valid for reads of `len` bytes until completion
                // and the destination range lies inside the device.
                unsafe {
                    std::ptr::copy_nonoverlapping(v.as_ptr(), d[pos..end].as_mut_ptr(), v.len())
                };
                pos = end;
            }
        }
        IoOp::Discard | IoOp::WriteZeroes { .. } | IoOp::SecureErase => {
            let mut d = data.write().unwrap_or_else(|e| e.into_inner());
            d[start..start + req.len as usize].fill(0);
        }
        IoOp::Flush => {}
    }
    Ok(())
}

/// Checks that a Read/Write request's buffers add up to its length.
pub(crate) fn check_iovecs(req: &IoRequest) -> Result<()> {
    if matches!(req.op, IoOp::Read | IoOp::Write) && IoVec::total_len(&req.iovecs) != Some(req.len)
    {
        return Err(Error::InvalidOption {
            name: "iovecs",
            value: format!("{} buffers", req.iovecs.len()),
            reason: format!("do not add up to the request length {}", req.len),
        });
    }
    Ok(())
}

struct MemoryQueue {
    info: BlockInfo,
    data: Arc<RwLock<Vec<u8>>>,
    depth: usize,
}

impl IoQueue for MemoryQueue {
    fn submit(&mut self, req: IoRequest) -> Result<Submitted> {
        check_iovecs(&req)?;
        Ok(Submitted::Done(execute(&self.info, &self.data, &req)))
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

impl BlockDev for MemoryDev {
    fn info(&self) -> &BlockInfo {
        &self.info
    }

    fn open_queue(&self, opts: &QueueOptions) -> Result<Box<dyn IoQueue>> {
        Ok(Box::new(MemoryQueue {
            info: self.info.clone(),
            data: self.data.clone(),
            depth: opts.depth,
        }))
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range("read", offset, buf.len() as u64, self.info.size)?;
        let d = self.data.read().unwrap_or_else(|e| e.into_inner());
        buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if self.info.read_only {
            return Err(Error::ReadOnly { op: "write" });
        }
        check_range("write", offset, buf.len() as u64, self.info.size)?;
        let mut d = self.data.write().unwrap_or_else(|e| e.into_inner());
        d[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}
