//! The null device: accepts everything, stores nothing (QEMU's `null-co`). Reads leave the
//! buffers untouched unless `read_zeroes` is set.

use std::os::unix::io::RawFd;

use crate::error::{Error, Result};
use crate::memory::check_iovecs;
use crate::request::{Completion, IoOp, IoQueue, IoRequest, Submitted};
use crate::types::{check_range, BlockDev, BlockInfo, CacheMode, QueueOptions};

/// Options for a [`NullDev`].
#[derive(Debug, Clone, Copy, Default)]
pub struct NullOptions {
    /// Fill read buffers with zeroes (costs a memset per read).
    pub read_zeroes: bool,
    /// Refuse writes.
    pub read_only: bool,
    /// Logical block size (512 or 4096; 0 means 512).
    pub logical_block_size: u32,
}

/// A device that completes every request at once.
pub struct NullDev {
    info: BlockInfo,
    read_zeroes: bool,
}

impl NullDev {
    /// A null device of `size` bytes.
    pub fn new(size: u64, opts: NullOptions) -> Result<Self> {
        let lbs = if opts.logical_block_size == 0 {
            512
        } else {
            opts.logical_block_size
        };
        if (lbs != 512 && lbs != 4096) || size % u64::from(lbs) != 0 {
            return Err(Error::InvalidOption {
                name: "size",
                value: size.to_string(),
                reason: format!("must be a multiple of the block size {lbs} (512 or 4096)"),
            });
        }
        Ok(NullDev {
            info: BlockInfo {
                size,
                logical_block_size: lbs,
                physical_block_size: lbs,
                mem_align: 1,
                read_only: opts.read_only,
                discard: true,
                discard_zeroes: opts.read_zeroes,
                write_zeroes: true,
                secure_erase: false,
                write_cache: false,
                max_discard_bytes: 1 << 30,
                cache: CacheMode::Writeback,
                description: format!("null ({size} bytes)"),
            },
            read_zeroes: opts.read_zeroes,
        })
    }
}

struct NullQueue {
    size: u64,
    read_only: bool,
    read_zeroes: bool,
    depth: usize,
}

impl NullQueue {
    fn execute(&self, req: &IoRequest) -> Result<()> {
        let op = req.op.name();
        if req.op.is_write() && self.read_only {
            return Err(Error::ReadOnly { op });
        }
        if req.op == IoOp::SecureErase {
            return Err(Error::Unsupported {
                op,
                what: "the null device".into(),
            });
        }
        if req.op != IoOp::Flush {
            check_range(op, req.offset, req.len, self.size)?;
        }
        if req.op == IoOp::Read && self.read_zeroes {
            for v in &req.iovecs {
                // SAFETY: the submitter guarantees each IoVec is valid for writes of its length
                // until the request completes, which is now.
                unsafe { std::ptr::write_bytes(v.as_ptr(), 0, v.len()) };
            }
        }
        Ok(())
    }
}

impl IoQueue for NullQueue {
    fn submit(&mut self, req: IoRequest) -> Result<Submitted> {
        check_iovecs(&req)?;
        Ok(Submitted::Done(self.execute(&req)))
    }
    fn submit_ref(&mut self, req: &mut IoRequest) -> Result<Submitted> {
        check_iovecs(req)?;
        Ok(Submitted::Done(self.execute(req)))
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

impl BlockDev for NullDev {
    fn info(&self) -> &BlockInfo {
        &self.info
    }

    fn open_queue(&self, opts: &QueueOptions) -> Result<Box<dyn IoQueue>> {
        Ok(Box::new(NullQueue {
            size: self.info.size,
            read_only: self.info.read_only,
            read_zeroes: self.read_zeroes,
            depth: opts.depth,
        }))
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range("read", offset, buf.len() as u64, self.info.size)?;
        if self.read_zeroes {
            buf.fill(0);
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if self.info.read_only {
            return Err(Error::ReadOnly { op: "write" });
        }
        check_range("write", offset, buf.len() as u64, self.info.size)
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}
