//! The thread-pool engine: a few worker threads per queue doing preadv/pwritev/fdatasync/
//! fallocate, completions pushed to a channel and signalled through an eventfd.

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::prep::{prepare, Prep, Prepared};
use crate::error::{Error, Result};
use crate::file::core::FileCore;
use crate::request::{Completion, IoOp, IoQueue, IoRequest, Submitted};

/// Worker threads per queue (fewer when the queue is shallower).
pub const THREADS_PER_QUEUE: usize = 4;

/// Runs a prepared request synchronously on the calling thread.
pub(crate) fn execute(core: &FileCore, p: &mut Prepared) -> Result<()> {
    match p.op {
        IoOp::Read => core
            .preadv_full(&mut p.iovecs, p.offset)
            .map_err(|e| p.io_error(e)),
        IoOp::Write => core
            .pwritev_full(&mut p.iovecs, p.offset)
            .map_err(|e| p.io_error(e)),
        IoOp::Flush => core.flush(),
        IoOp::Discard => core.discard(p.offset, p.len),
        IoOp::WriteZeroes { may_unmap } => core.write_zeroes(p.offset, p.len, may_unmap),
        IoOp::SecureErase => core.secure_erase(p.offset, p.len),
    }
}

/// Worker threads that execute [`Prepared`] requests and report to an eventfd.
pub(crate) struct Pool {
    jobs: Option<Sender<Prepared>>,
    done: Receiver<Completion>,
    workers: Vec<JoinHandle<()>>,
    /// Completions of requests the workers could not take (every worker gone).
    orphans: Vec<Completion>,
    notify: EventFd,
}

impl Pool {
    /// Starts `threads` workers on `core`, each writing `notify` after every completion.
    pub fn new(core: Arc<FileCore>, threads: usize, notify: &EventFd) -> Result<Self> {
        let engine_err = |source| Error::Engine {
            engine: "threads",
            source,
        };
        let (job_tx, job_rx) = mpsc::channel::<Prepared>();
        let (done_tx, done_rx) = mpsc::channel();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut pool = Pool {
            jobs: Some(job_tx),
            done: done_rx,
            workers: Vec::new(),
            orphans: Vec::new(),
            notify: notify.try_clone().map_err(engine_err)?,
        };
        for i in 0..threads.max(1) {
            let core = core.clone();
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            let notify = notify.try_clone().map_err(engine_err)?;
            let handle = std::thread::Builder::new()
                .name(format!("vstor-io-{i}"))
                .spawn(move || worker(&core, &job_rx, &done_tx, &notify))
                .map_err(engine_err)?;
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    /// Hands a request to the workers.
    pub fn send(&mut self, p: Prepared) {
        let Some(jobs) = &self.jobs else { return };
        if let Err(mpsc::SendError(p)) = jobs.send(p) {
            let err = p.io_error(std::io::Error::from_raw_os_error(libc::EIO));
            self.orphans.push(p.complete(Err(err)));
            let _ = self.notify.write(1);
        }
    }

    /// Moves finished requests into `out`; returns how many.
    pub fn drain(&mut self, out: &mut Vec<Completion>) -> usize {
        let mut n = self.orphans.len();
        out.append(&mut self.orphans);
        while let Ok(c) = self.done.try_recv() {
            out.push(c);
            n += 1;
        }
        n
    }
}

impl Drop for Pool {
    /// Closes the job channel; workers finish what they hold, then exit and are joined.
    fn drop(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            if w.join().is_err() {
                log::error!("an I/O worker thread panicked");
            }
        }
    }
}

fn worker(
    core: &FileCore,
    jobs: &Mutex<Receiver<Prepared>>,
    done: &Sender<Completion>,
    notify: &EventFd,
) {
    loop {
        let job = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(mut p) = job else { return };
        let result = execute(core, &mut p);
        // The receiver may be gone when the queue is being dropped; the result then has no
        // reader, but the buffers were still released only after the I/O finished.
        let _ = done.send(p.complete(result));
        if let Err(e) = notify.write(1) {
            log::warn!("cannot signal I/O completion: {e}");
        }
    }
}

/// An [`IoQueue`] on a small pool of worker threads.
pub(crate) struct ThreadQueue {
    // Declared first so it drops (joining the workers) before anything else.
    pool: Pool,
    core: Arc<FileCore>,
    eventfd: EventFd,
    pending: Vec<Prepared>,
    in_flight: usize,
    depth: usize,
}

impl ThreadQueue {
    /// A queue of `depth` requests on `core`.
    pub fn new(core: Arc<FileCore>, depth: usize) -> Result<Self> {
        let eventfd = EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Engine {
            engine: "threads",
            source,
        })?;
        let pool = Pool::new(core.clone(), depth.min(THREADS_PER_QUEUE), &eventfd)?;
        Ok(ThreadQueue {
            pool,
            core,
            eventfd,
            pending: Vec::new(),
            in_flight: 0,
            depth,
        })
    }
}

impl IoQueue for ThreadQueue {
    fn submit(&mut self, req: IoRequest) -> Result<Submitted> {
        if self.in_flight >= self.depth {
            return Err(Error::QueueFull { depth: self.depth });
        }
        match prepare(&self.core, req) {
            Prep::Done(r) => Ok(Submitted::Done(r)),
            Prep::Ready(p) => {
                self.pending.push(p);
                self.in_flight += 1;
                Ok(Submitted::Queued)
            }
        }
    }

    fn kick(&mut self) -> Result<()> {
        for p in std::mem::take(&mut self.pending) {
            self.pool.send(p);
        }
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        // Clear the eventfd before draining so a completion racing with us re-arms it.
        let _ = self.eventfd.read();
        let n = self.pool.drain(out);
        self.in_flight = self.in_flight.saturating_sub(n);
        n
    }

    fn completion_fd(&self) -> Option<RawFd> {
        Some(self.eventfd.as_raw_fd())
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn depth(&self) -> usize {
        self.depth
    }
}
