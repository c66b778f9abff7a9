//! The io_uring engine: one ring per queue, reads/writes as READV/WRITEV, flushes as
//! FSYNC(DATASYNC); discard, write-zeroes and secure erase run on a helper thread (they need
//! ioctls and fallbacks a ring cannot express). An eventfd registered with the ring makes
//! `completion_fd()` readable when CQEs arrive; the helper writes the same eventfd.

use std::collections::VecDeque;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::prep::{prepare, Prep, Prepared};
use super::threads::Pool;
use crate::error::{Error, Result};
use crate::file::core::{advance, zero_fill, FileCore};
use crate::request::{Completion, IoOp, IoQueue, IoRequest, Submitted};

/// Resubmissions of a request answered with EAGAIN/EINTR before it fails.
const MAX_RETRIES: u32 = 16;

fn engine_err(source: io::Error) -> Error {
    Error::Engine {
        engine: "io_uring",
        source,
    }
}

/// Creates a ring of `entries` entries (used by the availability probe too).
pub(crate) fn new_ring(entries: u32) -> io::Result<IoUring> {
    IoUring::new(entries)
}

/// What happens to a request after a CQE.
enum Next {
    /// Send the rest again.
    Resubmit,
    /// Finished with this result.
    Done(Result<()>),
}

/// A read, write or flush on the ring.
struct Slot {
    p: Prepared,
    /// Bytes transferred so far (short reads/writes are resubmitted for the rest).
    done: u64,
    /// Index of the first buffer not yet completely transferred.
    iov_start: usize,
    retries: u32,
}

/// An [`IoQueue`] on one io_uring.
pub(crate) struct UringQueue {
    ring: IoUring,
    /// Runs discard, write-zeroes and secure erase; started on first use.
    helper: Option<Pool>,
    core: Arc<FileCore>,
    eventfd: EventFd,
    /// Requests on the ring, indexed by `user_data`.
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Slots whose SQE did not fit in the submission queue yet.
    backlog: VecDeque<usize>,
    /// Requests for the helper, handed over at the next kick.
    helper_pending: Vec<Prepared>,
    /// Completions produced without the kernel (helper start-up failures).
    ready: Vec<Completion>,
    /// Scratch space for CQEs (user_data, result).
    cqes: Vec<(u64, i32)>,
    in_flight: usize,
    depth: usize,
}

impl UringQueue {
    /// A queue of `depth` requests on `core` with its own ring.
    pub fn new(core: Arc<FileCore>, depth: usize) -> Result<Self> {
        let entries = u32::try_from(depth.next_power_of_two())
            .map_err(|_| engine_err(io::Error::from_raw_os_error(libc::EINVAL)))?;
        let ring = new_ring(entries).map_err(engine_err)?;
        let eventfd = EventFd::new(EFD_NONBLOCK).map_err(engine_err)?;
        ring.submitter()
            .register_eventfd(eventfd.as_raw_fd())
            .map_err(engine_err)?;
        Ok(UringQueue {
            ring,
            helper: None,
            core,
            eventfd,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..depth).rev().collect(),
            backlog: VecDeque::new(),
            helper_pending: Vec::new(),
            ready: Vec::new(),
            cqes: Vec::with_capacity(depth),
            in_flight: 0,
            depth,
        })
    }

    /// The SQE for the (remaining part of the) request in slot `i`.
    fn sqe(&self, i: usize, s: &Slot) -> squeue::Entry {
        let fd = types::Fd(self.core.file.as_raw_fd());
        let iovs = &s.p.iovecs[s.iov_start.min(s.p.iovecs.len())..];
        // At most IOV_MAX (1024) buffers: prepare() bounces requests with more.
        let cnt = iovs.len() as u32;
        let ptr = iovs.as_ptr().cast::<libc::iovec>();
        let offset = s.p.offset + s.done;
        let entry = match s.p.op {
            IoOp::Read => opcode::Readv::new(fd, ptr, cnt).offset(offset).build(),
            IoOp::Write => opcode::Writev::new(fd, ptr, cnt).offset(offset).build(),
            IoOp::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            // Never placed in a slot (they go to the helper); a NOP keeps this total.
            IoOp::Discard | IoOp::WriteZeroes { .. } | IoOp::SecureErase => {
                opcode::Nop::new().build()
            }
        };
        entry.user_data(i as u64)
    }

    /// Puts slot `i` on the submission queue (or the backlog when it is full).
    fn push(&mut self, i: usize) {
        let Some(Some(s)) = self.slots.get(i) else {
            return;
        };
        let entry = self.sqe(i, s);
        // SAFETY: the SQE references the slot's iovec array and the buffers it describes. The
        // array lives in `self.slots[i]`, which is neither dropped nor modified until the CQE
        // for this SQE has been reaped (Drop waits for outstanding CQEs); the buffers are valid
        // until completion by the IoVec contract, and bounce buffers live in the slot too.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            self.backlog.push_back(i);
        }
    }

    /// Moves backlogged SQEs into the submission queue while there is room.
    fn drain_backlog(&mut self) {
        while let Some(i) = self.backlog.pop_front() {
            if self.ring.submission().is_full() {
                self.backlog.push_front(i);
                break;
            }
            self.push(i);
        }
    }

    /// Tells the kernel about queued SQEs (one io_uring_enter for the batch).
    fn submit_ring(&mut self) -> io::Result<()> {
        self.drain_backlog();
        while !self.ring.submission().is_empty() {
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
            self.drain_backlog();
            if self.backlog.is_empty() {
                break;
            }
        }
        Ok(())
    }

    fn finish(&mut self, i: usize, result: Result<()>, out: &mut Vec<Completion>) {
        if let Some(s) = self.slots.get_mut(i).and_then(Option::take) {
            out.push(s.p.complete(result));
            self.free.push(i);
        }
    }

    /// Handles one CQE; returns whether the request was resubmitted.
    fn on_cqe(&mut self, i: usize, res: i32, out: &mut Vec<Completion>) -> bool {
        match self.progress(i, res) {
            Some(Next::Resubmit) => {
                self.push(i);
                true
            }
            Some(Next::Done(result)) => {
                self.finish(i, result, out);
                false
            }
            None => {
                log::warn!("io_uring completion for unknown request {i}");
                false
            }
        }
    }

    /// Accounts the result `res` of slot `i`'s SQE and says what happens next.
    fn progress(&mut self, i: usize, res: i32) -> Option<Next> {
        let align = u64::from(self.core.info.logical_block_size.max(1));
        let direct = self.core.direct;
        let s = self.slots.get_mut(i)?.as_mut()?;
        if res < 0 {
            let errno = -res;
            if matches!(errno, libc::EAGAIN | libc::EINTR) && s.retries < MAX_RETRIES {
                s.retries += 1;
                return Some(Next::Resubmit);
            }
            return Some(Next::Done(Err(s
                .p
                .io_error(io::Error::from_raw_os_error(errno)))));
        }
        if s.p.op == IoOp::Flush {
            return Some(Next::Done(Ok(())));
        }
        let n = res as u64;
        if n >= s.p.len - s.done {
            return Some(Next::Done(Ok(())));
        }
        if n == 0 {
            if s.p.op != IoOp::Read {
                return Some(Next::Done(Err(s
                    .p
                    .io_error(io::Error::from_raw_os_error(libc::EIO)))));
            }
            // End of file: the rest reads as zeroes.
            zero_fill(&s.p.iovecs[s.iov_start..]);
            return Some(Next::Done(Ok(())));
        }
        s.done += n;
        let start = s.iov_start;
        let rest_len = advance(&mut s.p.iovecs[start..], n as usize).len();
        s.iov_start = s.p.iovecs.len() - rest_len;
        if s.p.op == IoOp::Read && direct && (s.p.offset + s.done) % align != 0 {
            // An O_DIRECT read only stops mid-block at the end of the file.
            zero_fill(&s.p.iovecs[s.iov_start..]);
            return Some(Next::Done(Ok(())));
        }
        Some(Next::Resubmit)
    }

    fn start_helper(&mut self) -> Result<&mut Pool> {
        if self.helper.is_none() {
            self.helper = Some(Pool::new(self.core.clone(), 1, &self.eventfd)?);
        }
        self.helper
            .as_mut()
            .ok_or_else(|| engine_err(io::Error::from_raw_os_error(libc::EIO)))
    }
}

impl IoQueue for UringQueue {
    fn submit(&mut self, req: IoRequest) -> Result<Submitted> {
        if self.in_flight >= self.depth {
            return Err(Error::QueueFull { depth: self.depth });
        }
        let p = match prepare(&self.core, req) {
            Prep::Done(r) => return Ok(Submitted::Done(r)),
            Prep::Ready(p) => p,
        };
        if matches!(p.op, IoOp::Read | IoOp::Write | IoOp::Flush) {
            let Some(i) = self.free.pop() else {
                return Err(Error::QueueFull { depth: self.depth });
            };
            self.slots[i] = Some(Slot {
                p,
                done: 0,
                iov_start: 0,
                retries: 0,
            });
            self.push(i);
        } else {
            self.helper_pending.push(p);
        }
        self.in_flight += 1;
        Ok(Submitted::Queued)
    }

    fn kick(&mut self) -> Result<()> {
        if !self.helper_pending.is_empty() {
            let pending = std::mem::take(&mut self.helper_pending);
            match self.start_helper() {
                Ok(pool) => pending.into_iter().for_each(|p| pool.send(p)),
                Err(e) => {
                    log::error!("cannot start the io_uring helper thread: {e}");
                    for p in pending {
                        let err = p.io_error(io::Error::from_raw_os_error(e.errno()));
                        self.ready.push(p.complete(Err(err)));
                    }
                    let _ = self.eventfd.write(1);
                }
            }
        }
        self.submit_ring().map_err(|e| Error::io("submit", 0, 0, e))
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        // Clear the eventfd before draining so a CQE racing with us re-arms it.
        let _ = self.eventfd.read();
        let before = out.len();
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        let mut resubmit = false;
        for &(ud, res) in &cqes {
            let i = usize::try_from(ud).unwrap_or(usize::MAX);
            resubmit |= self.on_cqe(i, res, out);
        }
        self.cqes = cqes;
        if let Some(h) = &mut self.helper {
            h.drain(out);
        }
        out.append(&mut self.ready);
        if resubmit {
            if let Err(e) = self.submit_ring() {
                log::error!("io_uring resubmission failed (retried at the next kick): {e}");
            }
        }
        let n = out.len() - before;
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

impl Drop for UringQueue {
    /// Waits until the kernel is done with every buffer it was given, then frees the slots.
    fn drop(&mut self) {
        for i in std::mem::take(&mut self.backlog) {
            // Never reached the kernel.
            self.slots[i] = None;
        }
        let mut outstanding = self.slots.iter().filter(|s| s.is_some()).count();
        while outstanding > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    log::error!("io_uring teardown failed ({e}); leaking {outstanding} buffers");
                    std::mem::forget(std::mem::take(&mut self.slots));
                    return;
                }
            }
            let done: Vec<u64> = self.ring.completion().map(|c| c.user_data()).collect();
            for ud in done {
                if let Some(slot) = usize::try_from(ud).ok().and_then(|i| self.slots.get_mut(i)) {
                    if slot.take().is_some() {
                        outstanding -= 1;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::file::FileDev;
    use crate::iovec::IoVec;
    use crate::open::OpenOptions;
    use crate::types::EngineKind;

    fn setup() -> Option<(tempfile::NamedTempFile, FileDev, UringQueue)> {
        if !super::super::io_uring_available() {
            eprintln!("skipping: io_uring unavailable");
            return None;
        }
        let t = tempfile::NamedTempFile::new().unwrap();
        t.as_file().set_len(1 << 20).unwrap();
        let o = OpenOptions {
            engine: EngineKind::IoUring,
            ..Default::default()
        };
        let dev = FileDev::open(t.path(), &o).unwrap();
        let q = UringQueue::new(dev.core().clone(), 4).unwrap();
        Some((t, dev, q))
    }

    /// Places a request in a slot without an SQE, as if the kernel had it.
    fn fake_in_flight(q: &mut UringQueue, r: IoRequest) -> usize {
        let Prep::Ready(p) = prepare(&q.core, r) else {
            panic!("request refused")
        };
        let i = q.free.pop().unwrap();
        q.slots[i] = Some(Slot {
            p,
            done: 0,
            iov_start: 0,
            retries: 0,
        });
        q.in_flight += 1;
        i
    }

    fn wait(q: &mut UringQueue, out: &mut Vec<Completion>) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while out.is_empty() {
            q.reap(out);
            assert!(std::time::Instant::now() < deadline, "no completion");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn errno_becomes_io_error_with_request_context() {
        let Some((_t, _dev, mut q)) = setup() else {
            return;
        };
        let mut buf = vec![0u8; 4096];
        // SAFETY: `buf` outlives the (fake) request, which completes inside this test.
        let v = vec![unsafe { IoVec::from_slice(&mut buf) }];
        let r = IoRequest {
            op: IoOp::Read,
            offset: 8192,
            len: 4096,
            iovecs: v,
            tag: 5,
        };
        let i = fake_in_flight(&mut q, r);
        let mut out = Vec::new();
        assert!(!q.on_cqe(i, -libc::EIO, &mut out));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].tag, 5);
        match &out[0].result {
            Err(Error::Io {
                op: "read",
                offset: 8192,
                len: 4096,
                source,
            }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EIO))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(q.free.len(), 4);
        // Unknown user_data is ignored.
        assert!(!q.on_cqe(99, 0, &mut out));
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn short_write_resubmits_exactly_the_rest() {
        let Some((t, _dev, mut q)) = setup() else {
            return;
        };
        let data: Vec<u8> = (0..3 * 4096).map(|i| (i % 251) as u8 + 1).collect();
        let mut a = data[..4096].to_vec();
        let mut b = data[4096..].to_vec();
        // SAFETY: both buffers outlive the request, which completes inside this test.
        let v = unsafe { vec![IoVec::from_slice(&mut a), IoVec::from_slice(&mut b)] };
        let r = IoRequest {
            op: IoOp::Write,
            offset: 65536,
            len: 3 * 4096,
            iovecs: v,
            tag: 1,
        };
        let i = fake_in_flight(&mut q, r);
        let mut out = Vec::new();
        // The "kernel" wrote 5000 bytes (all of `a`, part of `b`): the rest goes out again.
        assert!(q.on_cqe(i, 5000, &mut out));
        q.kick().unwrap();
        wait(&mut q, &mut out);
        assert!(out[0].result.is_ok(), "{:?}", out[0].result);
        let mut back = vec![0u8; 3 * 4096];
        t.as_file().read_exact_at(&mut back, 65536).unwrap();
        assert!(
            back[..5000].iter().all(|&x| x == 0),
            "first 5000 bytes untouched"
        );
        assert_eq!(&back[5000..], &data[5000..]);
        assert_eq!(q.in_flight(), 0);
    }

    #[test]
    fn eagain_is_retried_and_short_read_at_eof_zero_fills() {
        let Some((t, _dev, mut q)) = setup() else {
            return;
        };
        t.as_file().write_all_at(&[9u8; 4096], 0).unwrap();
        // The file shrinks behind the device's back: reads past its end return zeroes.
        t.as_file().set_len(4096).unwrap();
        let mut buf = vec![0xffu8; 8192];
        // SAFETY: `buf` outlives the request, which completes inside this test.
        let v = vec![unsafe { IoVec::from_slice(&mut buf) }];
        let r = IoRequest {
            op: IoOp::Read,
            offset: 0,
            len: 8192,
            iovecs: v,
            tag: 2,
        };
        let i = fake_in_flight(&mut q, r);
        let mut out = Vec::new();
        assert!(q.on_cqe(i, -libc::EAGAIN, &mut out));
        q.kick().unwrap();
        wait(&mut q, &mut out);
        assert!(out[0].result.is_ok());
        assert!(buf[..4096].iter().all(|&x| x == 9));
        assert!(buf[4096..].iter().all(|&x| x == 0));

        // A zero-byte write cannot make progress: EIO, not a loop.
        let mut w = vec![1u8; 512];
        // SAFETY: `w` outlives the fake request.
        let v = vec![unsafe { IoVec::from_slice(&mut w) }];
        let r = IoRequest {
            op: IoOp::Write,
            offset: 0,
            len: 512,
            iovecs: v,
            tag: 3,
        };
        let i = fake_in_flight(&mut q, r);
        out.clear();
        assert!(!q.on_cqe(i, 0, &mut out));
        assert_eq!(out[0].result.as_ref().unwrap_err().errno(), libc::EIO);
    }
}
