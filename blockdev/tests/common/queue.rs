//! Driving an `IoQueue` from tests: submit a batch, kick, reap until every request is done.

use std::time::{Duration, Instant};

use vstor_blockdev::{Completion, IoOp, IoQueue, IoRequest, IoVec, Submitted};

/// An IoVec over a test buffer.
pub fn iov(buf: &mut [u8]) -> IoVec {
    // SAFETY: every buffer handed to a queue here lives in a `Req::buf` (heap memory that does
    // not move when the `Req` does) until `run_queue` has reaped every completion.
    unsafe { IoVec::from_slice(buf) }
}

/// One request for `run_queue`: the op, offset, length and (for reads/writes) a buffer.
pub struct Req {
    /// The operation.
    pub op: IoOp,
    /// Device offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Data (written, or filled by a read); empty for other ops.
    pub buf: Vec<u8>,
}

/// Submits every request on a queue (keeping up to its depth in flight), kicks, reaps until
/// all are done, and returns the requests (read buffers filled) in order. Panics on an error.
pub fn run_queue(q: &mut dyn IoQueue, mut reqs: Vec<Req>) -> Vec<Req> {
    let mut done = vec![false; reqs.len()];
    let mut pending = 0usize;
    let mut next = 0usize;
    let mut out: Vec<Completion> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while next < reqs.len() || pending > 0 {
        while next < reqs.len() && pending < q.depth() {
            let r = &mut reqs[next];
            let iovecs = match r.op {
                IoOp::Read | IoOp::Write => vec![iov(&mut r.buf)],
                _ => Vec::new(),
            };
            let req = IoRequest {
                op: r.op,
                offset: r.offset,
                len: r.len,
                iovecs,
                tag: next as u64,
            };
            match q.submit(req) {
                Ok(Submitted::Done(res)) => {
                    res.unwrap_or_else(|e| {
                        panic!("{} at {} len {}: {e}", r.op.name(), r.offset, r.len)
                    });
                    done[next] = true;
                }
                Ok(Submitted::Queued) => pending += 1,
                Err(vstor_blockdev::Error::QueueFull { .. }) => break,
                Err(e) => panic!("submit {} at {}: {e}", r.op.name(), r.offset),
            }
            next += 1;
        }
        q.kick().unwrap();
        out.clear();
        q.reap(&mut out);
        for c in &out {
            let r = &reqs[c.tag as usize];
            if let Err(e) = &c.result {
                panic!("queued {} at {} len {}: {e}", r.op.name(), r.offset, r.len);
            }
            assert!(!done[c.tag as usize], "tag {} completed twice", c.tag);
            done[c.tag as usize] = true;
            pending -= 1;
        }
        if out.is_empty() && pending > 0 {
            assert!(
                Instant::now() < deadline,
                "queue stuck with {pending} in flight"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    assert!(done.iter().all(|d| *d));
    reqs
}
