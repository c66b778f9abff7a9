//! Request validation shared by the engines, and bounce buffers for O_DIRECT.
//!
//! Every request is checked here before an engine sees it: buffers add up to the length,
//! read-only refusal, range, and for O_DIRECT the alignment rules. Under O_DIRECT:
//! - offsets/lengths of writes, discards, write-zeroes and erases must be multiples of the
//!   logical block size (`Error::Unaligned` otherwise: a read-modify-write would race with
//!   concurrent writes to the same block);
//! - reads at unaligned offsets/lengths are widened to whole blocks in a bounce buffer;
//! - buffers whose address is not a multiple of `mem_align`, or whose length is not a multiple
//!   of the logical block size, go through a bounce buffer (as QEMU does), so the kernel never
//!   answers EINVAL. Requests with more than `IOV_MAX` buffers are bounced the same way.

use crate::aligned::AlignedBuf;
use crate::error::{Error, Result};
use crate::file::core::{FileCore, IOV_MAX};
use crate::iovec::IoVec;
use crate::memory::check_iovecs;
use crate::request::{Completion, IoOp, IoRequest};
use crate::types::check_range;

/// Largest bounce buffer a single request may need.
pub(crate) const MAX_BOUNCE: u64 = 64 << 20;

/// A validated request, ready for an engine.
pub(crate) struct Prepared {
    /// The caller's tag.
    pub tag: u64,
    /// The operation.
    pub op: IoOp,
    /// Offset of the request as submitted (for error messages).
    pub req_offset: u64,
    /// Length of the request as submitted.
    pub req_len: u64,
    /// Host offset of the I/O (differs from `req_offset` for widened reads).
    pub offset: u64,
    /// Host length of the I/O.
    pub len: u64,
    /// Buffers handed to the host (the bounce buffer when bouncing).
    pub iovecs: Vec<IoVec>,
    bounce: Option<Bounce>,
}

struct Bounce {
    buf: AlignedBuf,
    /// The caller's buffers.
    user: Vec<IoVec>,
    /// Offset of the caller's data inside `buf`.
    skip: usize,
}

/// Outcome of validation.
pub(crate) enum Prep {
    /// Hand it to the engine.
    Ready(Prepared),
    /// Finished without I/O (validation error, zero length, ignored flush).
    Done(Result<()>),
}

/// Validates `req` against the device and bounces it when O_DIRECT needs that.
pub(crate) fn prepare(core: &FileCore, req: IoRequest) -> Prep {
    match validate(core, req) {
        Ok(p) => p,
        Err(e) => Prep::Done(Err(e)),
    }
}

fn validate(core: &FileCore, req: IoRequest) -> Result<Prep> {
    let info = &core.info;
    let op = req.op;
    let name = op.name();
    check_iovecs(&req)?;
    if op.is_write() && info.read_only {
        return Err(Error::ReadOnly { op: name });
    }
    let mut p = Prepared {
        tag: req.tag,
        op,
        req_offset: req.offset,
        req_len: req.len,
        offset: req.offset,
        len: req.len,
        iovecs: req.iovecs,
        bounce: None,
    };
    if op == IoOp::Flush {
        if info.cache.ignores_flush() {
            return Ok(Prep::Done(Ok(())));
        }
        p.offset = 0;
        p.len = 0;
        return Ok(Prep::Ready(p));
    }
    check_range(name, req.offset, req.len, info.size)?;
    if req.len == 0 {
        return Ok(Prep::Done(Ok(())));
    }
    let a = u64::from(info.logical_block_size.max(1));
    let range_aligned = !core.direct || (req.offset % a == 0 && req.len % a == 0);
    if !range_aligned && op != IoOp::Read {
        return Err(Error::Unaligned {
            op: name,
            offset: req.offset,
            len: req.len,
            align: info.logical_block_size,
        });
    }
    if !matches!(op, IoOp::Read | IoOp::Write) {
        p.iovecs = Vec::new();
        return Ok(Prep::Ready(p));
    }
    let mem_align = info.mem_align.max(1) as usize;
    let bufs_ok = p.iovecs.len() <= IOV_MAX
        && (!core.direct
            || p.iovecs
                .iter()
                .all(|v| v.as_ptr() as usize % mem_align == 0 && v.len() as u64 % a == 0));
    if range_aligned && bufs_ok {
        return Ok(Prep::Ready(p));
    }
    bounce(p, a, mem_align, core.direct)
}

fn bounce(mut p: Prepared, a: u64, mem_align: usize, direct: bool) -> Result<Prep> {
    let name = p.op.name();
    let (start, end) = if direct {
        (p.offset / a * a, (p.offset + p.len).div_ceil(a) * a)
    } else {
        (p.offset, p.offset + p.len)
    };
    let len = end - start;
    if len > MAX_BOUNCE {
        return Err(Error::InvalidOption {
            name: "iovecs",
            value: format!("{} buffers, {} bytes", p.iovecs.len(), p.len),
            reason: format!(
                "need a bounce buffer (unaligned for O_DIRECT or more than {IOV_MAX}) \
                 larger than {MAX_BOUNCE} bytes"
            ),
        });
    }
    let mut buf = AlignedBuf::new(len as usize, mem_align)
        .map_err(|e| Error::io(name, p.req_offset, p.req_len, e))?;
    let skip = (p.offset - start) as usize;
    if p.op == IoOp::Write {
        let mut pos = skip;
        let dst = buf.as_mut_slice();
        for v in &p.iovecs {
            // SAFETY: the submitter guarantees each IoVec is readable for its length until the
            // request completes; the destination range lies inside `buf` because the buffers
            // add up to `p.len` (checked) and `skip + p.len <= len`.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    v.as_ptr(),
                    dst[pos..pos + v.len()].as_mut_ptr(),
                    v.len(),
                )
            };
            pos += v.len();
        }
    }
    // SAFETY: the IoVec points into `buf`, which moves into the Prepared together with it and
    // lives until the request completes (the heap block does not move with the struct).
    let iov = unsafe { IoVec::new(buf.as_mut_ptr(), len as usize) };
    let user = std::mem::replace(&mut p.iovecs, vec![iov]);
    p.offset = start;
    p.len = len;
    p.bounce = Some(Bounce { buf, user, skip });
    Ok(Prep::Ready(p))
}

impl Prepared {
    /// Builds an [`Error::Io`] for this request.
    pub fn io_error(&self, e: std::io::Error) -> Error {
        Error::io(self.op.name(), self.req_offset, self.req_len, e)
    }

    /// Finishes the request: copies bounced read data to the caller's buffers and builds the
    /// completion (the bounce buffer is freed here).
    pub fn complete(self, result: Result<()>) -> Completion {
        if let (Ok(()), IoOp::Read, Some(b)) = (&result, self.op, &self.bounce) {
            let src = b.buf.as_slice();
            let mut pos = b.skip;
            for v in &b.user {
                // SAFETY: the submitter guarantees each IoVec is writable for its length until
                // the request completes (now); the source range lies inside the bounce buffer
                // since the user buffers add up to `req_len` and `skip + req_len <= len`.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        src[pos..pos + v.len()].as_ptr(),
                        v.as_ptr(),
                        v.len(),
                    )
                };
                pos += v.len();
            }
        }
        Completion {
            tag: self.tag,
            result,
        }
    }
}
