//! The asynchronous path: a queue maps each request under the metadata lock, sends the runs
//! that are plain host data to the data file's engine (io_uring) and completes the rest
//! (zeroes, backing data, compressed clusters, allocating writes) synchronously. A request
//! whose clusters are all allocated costs a cache lookup and the data I/O, nothing more.

use std::os::unix::io::RawFd;
use std::sync::Arc;

use super::read::Src;
use super::Shared;
use crate::error::{Error, Result};
use crate::image::{open_data_queue, ImageFile};
use crate::iovec::{self, IoVec};
use crate::memory::check_iovecs;
use crate::request::{Completion, IoOp, IoQueue, IoRequest, Submitted};
use crate::types::{check_range, QueueOptions};

/// A request split over several data I/Os.
struct Parent {
    tag: u64,
    pending: usize,
    result: Result<()>,
}

/// One queue of a [`super::Qcow2Dev`].
pub(crate) struct Qcow2Queue {
    data: Arc<dyn ImageFile>,
    shared: Arc<Shared>,
    inner: Box<dyn IoQueue>,
    depth: usize,
    parents: Vec<Option<Parent>>,
    free: Vec<usize>,
    in_flight: usize,
    runs: Vec<(u64, u64, Src)>,
    reaped: Vec<Completion>,
    parts: Vec<Completion>,
    bounce: Vec<u8>,
}

impl Qcow2Queue {
    pub fn new(shared: Arc<Shared>, opts: &QueueOptions) -> Result<Qcow2Queue> {
        let data: Arc<dyn ImageFile> = shared.lock().data.clone();
        let depth = opts.depth.max(1);
        let _ = shared.engine_opts;
        // Requests may split into several data I/Os; leave room for that.
        let inner = open_data_queue(&data, &QueueOptions { depth: depth * 4 })?;
        Ok(Qcow2Queue {
            data,
            shared,
            inner,
            depth,
            parents: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            runs: Vec::new(),
            reaped: Vec::new(),
            parts: Vec::new(),
            bounce: Vec::new(),
        })
    }

    fn slot(&mut self, tag: u64, pending: usize) -> usize {
        let p = Parent {
            tag,
            pending,
            result: Ok(()),
        };
        match self.free.pop() {
            Some(i) => {
                self.parents[i] = Some(p);
                i
            }
            None => {
                self.parents.push(Some(p));
                self.parents.len() - 1
            }
        }
    }

    /// Maps the request; the runs land in `self.runs` as (guest, len, source). Writes get
    /// runs only when every cluster can be written in place.
    fn plan(&mut self, req: &IoRequest) -> Result<bool> {
        self.runs.clear();
        let mut m = self.shared.lock();
        let mut guest = req.offset;
        let end = req.offset + req.len;
        while guest < end {
            if req.op == IoOp::Write {
                let cs = m.cluster_size();
                let n = (cs - (guest & (cs - 1))).min(end - guest);
                let target = match m.in_place_target(guest, n)? {
                    Some(h) => Some(h),
                    None => m.fresh_target(guest)?,
                };
                match target {
                    Some(h) => push_run(&mut self.runs, guest, n, Src::Data(h)),
                    None => return Ok(false),
                }
                guest += n;
                continue;
            }
            let (n, src, _) = m.lookup(guest, end - guest)?;
            push_run(&mut self.runs, guest, n, src);
            guest += n;
        }
        if req.op == IoOp::Write {
            m.data_dirty = true;
        }
        Ok(true)
    }

    /// Runs a request synchronously through the metadata path.
    fn run_sync(&mut self, req: &IoRequest) -> Result<()> {
        let len = req.len as usize;
        self.bounce.resize(len, 0);
        let mut m = self.shared.lock();
        match req.op {
            IoOp::Read => {
                m.read_sync(req.offset, &mut self.bounce)?;
                iovec::scatter(&req.iovecs, &self.bounce);
                Ok(())
            }
            IoOp::Write => {
                iovec::gather(&req.iovecs, &mut self.bounce);
                m.write_sync(req.offset, &self.bounce)
            }
            op => Err(Error::Unsupported {
                op: op.name(),
                what: "the qcow2 data path".into(),
            }),
        }
    }

    fn submit_rw(&mut self, req: IoRequest) -> Result<Submitted> {
        if !self.plan(&req)? {
            return Ok(Submitted::Done(self.run_sync(&req)));
        }
        let data_runs = self
            .runs
            .iter()
            .filter(|r| matches!(r.2, Src::Data(_)))
            .count();
        if data_runs == 0 || self.inner.in_flight() + data_runs > self.inner.depth() {
            return Ok(Submitted::Done(self.run_sync(&req)));
        }
        if req.op == IoOp::Write {
            if let Some(r) = self.write_inline(&req) {
                return Ok(Submitted::Done(r));
            }
        }
        let slot = self.slot(req.tag, data_runs);
        self.in_flight += 1;
        let runs = std::mem::take(&mut self.runs);
        let mut result = Ok(());
        for &(guest, len, src) in &runs {
            let bufs = iovec::sub_range(&req.iovecs, guest - req.offset, len);
            match src {
                Src::Data(host) => {
                    let sub = IoRequest {
                        op: req.op,
                        offset: host,
                        len,
                        iovecs: bufs,
                        tag: slot as u64,
                    };
                    match self.inner.submit(sub) {
                        Ok(Submitted::Queued) => {}
                        Ok(Submitted::Done(r)) => self.finish_part(slot, r),
                        Err(e) => self.finish_part(slot, Err(e)),
                    }
                }
                other => {
                    if let Err(e) = self.read_other(guest, len, other, &bufs) {
                        result = Err(e);
                    }
                }
            }
        }
        self.runs = runs;
        match self.parents[slot].as_mut() {
            Some(p) => {
                if let Err(e) = result {
                    p.result = Err(e);
                }
                Ok(Submitted::Queued)
            }
            None => {
                // Every part finished inside submit: no completion will be signalled.
                let c = self
                    .reaped
                    .pop()
                    .expect("finish_part queued the completion");
                Ok(Submitted::Done(result.and(c.result)))
            }
        }
    }

    /// Buffered data files take in-place writes in this thread (see
    /// [`ImageFile::write_vectored_inline`]); `None` when the file prefers its queue.
    fn write_inline(&mut self, req: &IoRequest) -> Option<Result<()>> {
        for (i, &(guest, len, src)) in self.runs.iter().enumerate() {
            let Src::Data(host) = src else {
                return Some(Err(Error::Unsupported {
                    op: "write",
                    what: "non-data run".into(),
                }));
            };
            let bufs = iovec::sub_range(&req.iovecs, guest - req.offset, len);
            match self.data.write_vectored_inline(&bufs, host) {
                Ok(true) => {}
                Ok(false) if i == 0 => return None,
                Ok(false) => {
                    return Some(Err(Error::Unsupported {
                        op: "write",
                        what: "mixed write paths".into(),
                    }))
                }
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(()))
    }

    /// Fills the buffers of a non-data run (zeroes, backing, compressed).
    fn read_other(&mut self, guest: u64, len: u64, src: Src, bufs: &[IoVec]) -> Result<()> {
        self.bounce.resize(len as usize, 0);
        let mut m = self.shared.lock();
        m.read_run(guest, src, &mut self.bounce)?;
        iovec::scatter(bufs, &self.bounce);
        Ok(())
    }

    fn finish_part(&mut self, slot: usize, r: Result<()>) {
        let Some(p) = self.parents.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if let Err(e) = r {
            if p.result.is_ok() {
                p.result = Err(e);
            }
        }
        p.pending -= 1;
        if p.pending == 0 {
            let p = self.parents[slot].take().expect("present");
            self.free.push(slot);
            self.in_flight -= 1;
            self.reaped.push(Completion {
                tag: p.tag,
                result: p.result,
            });
        }
    }
}

fn push_run(runs: &mut Vec<(u64, u64, Src)>, guest: u64, len: u64, src: Src) {
    if let Some(last) = runs.last_mut() {
        if let (Src::Data(a), Src::Data(b)) = (last.2, src) {
            if a + last.1 == b && last.0 + last.1 == guest {
                last.1 += len;
                return;
            }
        }
    }
    runs.push((guest, len, src));
}

impl IoQueue for Qcow2Queue {
    fn submit(&mut self, req: IoRequest) -> Result<Submitted> {
        check_iovecs(&req)?;
        let size = self.shared.info.size;
        let op = req.op;
        if op.is_write() && self.shared.info.read_only {
            return Ok(Submitted::Done(Err(Error::ReadOnly { op: op.name() })));
        }
        if op != IoOp::Flush {
            if let Err(e) = check_range(op.name(), req.offset, req.len, size) {
                return Ok(Submitted::Done(Err(e)));
            }
        }
        if req.len == 0 && op != IoOp::Flush {
            return Ok(Submitted::Done(Ok(())));
        }
        if self.in_flight >= self.depth {
            return Err(Error::QueueFull { depth: self.depth });
        }
        let r = match op {
            IoOp::Read | IoOp::Write => return self.submit_rw(req),
            IoOp::Flush => self.shared.lock().write_back(),
            IoOp::Discard => self
                .shared
                .lock()
                .zero_range(req.offset, req.len, true, true),
            IoOp::WriteZeroes { may_unmap } => self
                .shared
                .lock()
                .zero_range(req.offset, req.len, may_unmap, false),
            IoOp::SecureErase => Err(Error::Unsupported {
                op: "secure-erase",
                what: "qcow2 images".into(),
            }),
        };
        Ok(Submitted::Done(r))
    }

    fn kick(&mut self) -> Result<()> {
        self.inner.kick()
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        // The inner completions' buffer is kept between calls: no allocation per reap.
        let mut parts = std::mem::take(&mut self.parts);
        self.inner.reap(&mut parts);
        for c in parts.drain(..) {
            self.finish_part(c.tag as usize, c.result);
        }
        self.parts = parts;
        let n = self.reaped.len();
        out.append(&mut self.reaped);
        n
    }

    fn completion_fd(&self) -> Option<RawFd> {
        self.inner.completion_fd()
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn depth(&self) -> usize {
        self.depth
    }
}
