//! Requests, completions and the per-queue I/O interface.

use std::os::unix::io::RawFd;

use crate::iovec::IoVec;
use crate::Result;

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// Read `len` bytes at `offset` into the request's buffers.
    Read,
    /// Write the request's buffers at `offset`.
    Write,
    /// Make every completed write durable.
    Flush,
    /// Deallocate `len` bytes at `offset`; the range may read back as anything (zeroes if the
    /// device reports `discard_zeroes`).
    Discard,
    /// Make `len` bytes at `offset` read as zeroes.
    WriteZeroes {
        /// The range may also be deallocated (virtio-blk `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`,
        /// SCSI WRITE SAME with UNMAP).
        may_unmap: bool,
    },
    /// Erase `len` bytes at `offset` so the old data cannot be recovered (the range then reads
    /// as zeroes).
    SecureErase,
}

impl IoOp {
    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::Flush => "flush",
            IoOp::Discard => "discard",
            IoOp::WriteZeroes { .. } => "write-zeroes",
            IoOp::SecureErase => "secure-erase",
        }
    }

    /// Whether the operation changes the device's content.
    pub fn is_write(self) -> bool {
        !matches!(self, IoOp::Read | IoOp::Flush)
    }
}

/// One request submitted to an [`IoQueue`].
#[derive(Debug)]
pub struct IoRequest {
    /// The operation.
    pub op: IoOp,
    /// Byte offset on the device.
    pub offset: u64,
    /// Byte length (for Read/Write it equals the sum of `iovecs`).
    pub len: u64,
    /// Data buffers for Read/Write; empty otherwise.
    pub iovecs: Vec<IoVec>,
    /// Caller's tag, returned in the [`Completion`].
    pub tag: u64,
}

/// A finished request.
#[derive(Debug)]
pub struct Completion {
    /// The tag of the request.
    pub tag: u64,
    /// The outcome.
    pub result: Result<()>,
}

/// What `submit` did with a request.
#[derive(Debug)]
pub enum Submitted {
    /// Queued; its [`Completion`] will come from [`IoQueue::reap`].
    Queued,
    /// Already finished (null and memory devices, validation errors): no completion follows.
    Done(Result<()>),
}

/// A queue of requests in flight on one device, owned by one device queue (one thread).
///
/// Requests are queued with [`submit`](IoQueue::submit), handed to the kernel in a batch with
/// [`kick`](IoQueue::kick), and collected with [`reap`](IoQueue::reap) once
/// [`completion_fd`](IoQueue::completion_fd) becomes readable.
pub trait IoQueue: Send {
    /// Queues a request. The buffers in `req.iovecs` must stay valid until it completes.
    fn submit(&mut self, req: IoRequest) -> Result<Submitted>;

    /// Like [`IoQueue::submit`], but the engine takes `req.iovecs` only if it keeps the
    /// request past the call: engines that complete at once leave the list to the caller, who
    /// reuses its allocation for the next request.
    fn submit_ref(&mut self, req: &mut IoRequest) -> Result<Submitted> {
        let owned = IoRequest {
            op: req.op,
            offset: req.offset,
            len: req.len,
            iovecs: std::mem::take(&mut req.iovecs),
            tag: req.tag,
        };
        self.submit(owned)
    }

    /// Hands queued requests to the engine (one syscall for a batch where the engine allows).
    fn kick(&mut self) -> Result<()>;

    /// Moves finished requests into `out`; returns how many were added. Never blocks.
    fn reap(&mut self, out: &mut Vec<Completion>) -> usize;

    /// A file descriptor (an eventfd) that becomes readable when completions are waiting, or
    /// `None` when every request completes inside `submit`.
    fn completion_fd(&self) -> Option<RawFd>;

    /// Requests queued or in flight.
    fn in_flight(&self) -> usize;

    /// How many requests can be in flight at once.
    fn depth(&self) -> usize;
}

/// Runs one request of `len` bytes at `offset` through `q` and waits for it, for tools, tests
/// and fuzzing: reads and writes use `buf` (exactly `len` bytes), which stays borrowed until
/// the request has completed, so callers need no `unsafe`. The queue should be otherwise idle
/// (completions of other requests reaped while waiting are dropped).
pub fn run_blocking(
    q: &mut dyn IoQueue,
    op: IoOp,
    offset: u64,
    len: u64,
    buf: &mut [u8],
) -> Result<()> {
    const TAG: u64 = u64::MAX;
    let data = matches!(op, IoOp::Read | IoOp::Write);
    if data && buf.len() as u64 != len {
        return Err(crate::Error::InvalidOption {
            name: "len",
            value: len.to_string(),
            reason: format!("the buffer holds {} bytes", buf.len()),
        });
    }
    let iovecs = if data {
        // SAFETY: `buf` is mutably borrowed for this whole call and the request completes (or
        // fails) before the call returns, so the memory outlives the request and nothing else
        // touches it meanwhile.
        vec![unsafe { IoVec::from_slice(buf) }]
    } else {
        Vec::new()
    };
    let req = IoRequest {
        op,
        offset,
        len,
        iovecs,
        tag: TAG,
    };
    if let Submitted::Done(r) = q.submit(req)? {
        return r;
    }
    q.kick()?;
    let mut out = Vec::new();
    loop {
        out.clear();
        q.reap(&mut out);
        if let Some(c) = out.iter_mut().find(|c| c.tag == TAG) {
            return std::mem::replace(&mut c.result, Ok(()));
        }
        match q.completion_fd() {
            Some(fd) => {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: `p` is a valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut p, 1, 100) };
            }
            None => std::thread::yield_now(),
        }
    }
}
