//! One virtqueue of a virtio-blk device: descriptor chains in, block requests out, used-ring
//! entries back.
//!
//! Each chain is walked strictly ([`Chain::walk`]); the header is read through a byte cursor,
//! so it may span descriptors; the status byte is carved from the end of the writable bytes, so
//! it may share a descriptor with data. Data never passes through a bounce buffer: guest
//! buffers go to the I/O engine as `IoVec`s while the request keeps the guest memory mapped.

use std::os::unix::io::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend as _};
use vstor_blockdev::{Completion, IoOp, IoQueue, IoRequest, IoVec, QueueOptions, Submitted};
use vstor_virtio_core::chain::{Chain, ChainLimits, Segment, Writer};
use vstor_virtio_core::features::RING_INDIRECT_DESC;
use vstor_virtio_core::memory::host_ptr;
use vstor_virtio_core::ring::RingPtrs;
use vstor_virtio_core::{virtio_queue, GuestMemory};

use crate::config::{BlkShared, ID_BYTES, MAX_SEGMENTS};
use crate::error::{Error, Result};
use crate::inflight::{Inflight, Slab};
use crate::request::{
    lookup, DiscardSegment, Kind, RangeOp, RequestHeader, LIFETIME, SECTOR_SHIFT, S_IOERR, S_OK,
    S_UNSUPP,
};

/// How long [`BlkQueueHandler::drain`] waits for the I/O engine before giving up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// A block-layer request a virtio request turns into.
struct Part {
    op: IoOp,
    offset: u64,
    len: u64,
    iovecs: Vec<IoVec>,
}

/// The block-layer requests of one virtio request: data requests and flushes have exactly
/// one, so they need no list (no allocation).
enum Parts {
    One(Part),
    Many(Vec<Part>),
}

impl Parts {
    fn len(&self) -> usize {
        match self {
            Parts::One(_) => 1,
            Parts::Many(v) => v.len(),
        }
    }
}

/// What [`BlkQueueHandler::run_queue`] does with the driver's kicks once the ring is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kicks {
    /// Re-enable them (and take what raced in): the worker is about to sleep.
    Enable,
    /// Leave them suppressed: the worker keeps polling the ring.
    LeaveSuppressed(Notify),
}

/// When [`BlkQueueHandler::process_queue_polled`] asks to notify the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notify {
    /// As soon as the driver waits for a completion (EVENT_IDX): stop the pass early.
    Early,
    /// Once the pass has emptied the ring.
    AfterPass,
}

/// What one [`BlkQueueHandler::process_queue_polled`] pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Polled {
    /// The driver must be notified now.
    pub notify: bool,
    /// The pass stopped early so that the driver could be notified: call again.
    pub more: bool,
}

/// What to do with a parsed request.
enum Action {
    /// Finish now with this status; `used_len` counts bytes written before the status byte.
    Complete { status: u8, data_len: u32 },
    /// Hand these to the block layer.
    Submit {
        parts: Parts,
        data_len: u32,
        then_flush: bool,
    },
}

fn fail(status: u8) -> Action {
    Action::Complete {
        status,
        data_len: 0,
    }
}

/// The per-queue request processor. One per virtqueue, driven by one thread.
pub struct BlkQueueHandler {
    shared: Arc<BlkShared>,
    queue_index: u16,
    limits: ChainLimits,
    io: Box<dyn IoQueue>,
    /// `io.depth()`, fixed for the queue's life (read on every pop).
    io_depth: usize,
    slab: Slab,
    completions: Vec<Completion>,
    /// Used-ring entries added since the last notification check.
    added: u32,
    /// Stopped popping because the slab or the engine was full.
    throttled: bool,
    /// Set after a fatal protocol error; the queue is then left alone until reset.
    broken: bool,
    max_parts: usize,
    /// Features the driver accepted (offered ∩ acknowledged).
    features: u64,
    /// Scratch chain, reused by every request (its segment lists keep their capacity).
    chain: Chain,
    /// Scratch list of guest segments, reused by every request.
    segs: Vec<Segment>,
    /// Host pointers to the rings, for the guest memory map they were computed in.
    ring: Option<(Arc<GuestMemory>, RingPtrs)>,
    /// An I/O vector list the engine handed back (synchronous completion), reused.
    spare_iovecs: Vec<IoVec>,
}

impl BlkQueueHandler {
    /// A handler for queue `queue_index` with the driver's negotiated features.
    pub fn new(shared: Arc<BlkShared>, queue_index: u16, acked_features: u64) -> Result<Self> {
        let shared_features = shared.features();
        let size = usize::from(shared.options().queue_size);
        let max_parts = shared.options().max_discard_seg as usize;
        let io = shared.dev().open_queue(&QueueOptions {
            depth: size + max_parts,
        })?;
        Ok(BlkQueueHandler {
            io_depth: io.depth(),
            shared,
            queue_index,
            limits: ChainLimits {
                indirect: acked_features & RING_INDIRECT_DESC != 0,
            },
            io,
            slab: Slab::new(size),
            completions: Vec::with_capacity(size),
            added: 0,
            throttled: false,
            broken: false,
            max_parts,
            segs: Vec::with_capacity(MAX_SEGMENTS),
            chain: Chain::default(),
            ring: None,
            spare_iovecs: Vec::new(),
            features: acked_features & shared_features,
        })
    }

    /// The I/O engine's completion eventfd, if requests complete asynchronously.
    pub fn completion_fd(&self) -> Option<RawFd> {
        self.io.completion_fd()
    }

    /// Requests between submission and completion.
    pub fn in_flight(&self) -> usize {
        self.slab.len()
    }

    /// Whether a fatal protocol error stopped this queue.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    fn queue_err(&self, source: virtio_queue::Error) -> Error {
        Error::Queue {
            queue: self.queue_index,
            source,
        }
    }

    /// The ring fast path for `queue` in `mem` (cached per memory map and queue addresses).
    fn ring(&mut self, queue: &Queue, mem: &Arc<GuestMemory>) -> Option<RingPtrs> {
        if let Some((m, r)) = &self.ring {
            if Arc::ptr_eq(m, mem) && r.matches(queue) {
                return Some(*r);
            }
        }
        let r = RingPtrs::new(mem, queue)?;
        self.ring = Some((mem.clone(), r));
        Some(r)
    }

    fn full(&self) -> bool {
        self.slab.is_full() || self.io.in_flight() + self.max_parts > self.io_depth
    }

    /// Takes every available request, submits it, and returns whether the driver must be
    /// notified. An `Err` means the queue is unusable until the device is reset.
    pub fn process_queue(&mut self, queue: &mut Queue, mem: &Arc<GuestMemory>) -> Result<bool> {
        self.run_queue(queue, mem, Kicks::Enable)
            .map(|step| step.notify)
    }

    /// Like [`BlkQueueHandler::process_queue`], but leaves the driver's available-buffer
    /// notifications (kicks) suppressed: for a caller that polls the ring with
    /// [`BlkQueueHandler::avail_pending`] for a while after processing it. The caller must end
    /// with [`BlkQueueHandler::process_queue`], which re-enables kicks and picks up whatever
    /// arrived meanwhile, before it stops polling.
    ///
    /// With [`Notify::Early`] and VIRTIO_F_RING_EVENT_IDX it returns as soon as a used-buffer
    /// notification is due ([`Polled::more`]): the caller signals the driver at once and calls
    /// again, so a driver waiting for its first completion wakes up (on another CPU) and
    /// refills the ring while the rest of the batch is processed, instead of the two taking
    /// turns. The driver's `used_event` asks for at most one notification per wait.
    pub fn process_queue_polled(
        &mut self,
        queue: &mut Queue,
        mem: &Arc<GuestMemory>,
        notify: Notify,
    ) -> Result<Polled> {
        self.run_queue(queue, mem, Kicks::LeaveSuppressed(notify))
    }

    /// Whether the driver has published chains that [`BlkQueueHandler::process_queue`] would
    /// take now (false while the queue is broken or full, or when the ring cannot be read).
    pub fn avail_pending(&self, queue: &Queue, mem: &GuestMemory) -> bool {
        !self.broken
            && !self.full()
            && queue
                .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
                .is_ok_and(|idx| idx.0 != queue.next_avail())
    }

    fn run_queue(
        &mut self,
        queue: &mut Queue,
        mem: &Arc<GuestMemory>,
        kicks: Kicks,
    ) -> Result<Polled> {
        if self.broken {
            return Ok(Polled::default());
        }
        let early = kicks == Kicks::LeaveSuppressed(Notify::Early) && queue.event_idx_enabled();
        let ring = self.ring(queue, mem);
        loop {
            match ring {
                Some(r) => r.disable_notification(queue),
                None => queue
                    .disable_notification(mem.as_ref())
                    .map_err(|e| self.queue_err(e))?,
            }
            let mut stalled = false;
            while !self.full() {
                let popped = match ring {
                    Some(r) => r.pop(queue),
                    None => queue
                        .pop_descriptor_chain(mem.as_ref())
                        .map(|c| c.head_index()),
                };
                let Some(head) = popped else {
                    if self.check_avail(queue, mem, stalled)? {
                        stalled = true;
                        continue;
                    }
                    break;
                };
                stalled = false;
                if let Err(e) = self.handle(queue, mem, head) {
                    self.broken = true;
                    let _ = self.io.kick();
                    return Err(e);
                }
                if early && self.added > 0 && self.notify_needed(queue, mem)? {
                    self.io.kick()?;
                    return Ok(Polled {
                        notify: true,
                        more: true,
                    });
                }
            }
            self.io.kick()?;
            if self.full() {
                // Resumed from process_completions once something finishes.
                self.throttled = true;
                break;
            }
            if matches!(kicks, Kicks::LeaveSuppressed(_))
                || !match ring {
                    Some(r) => r.enable_notification(queue),
                    None => queue
                        .enable_notification(mem.as_ref())
                        .map_err(|e| self.queue_err(e))?,
                }
            {
                break;
            }
        }
        Ok(Polled {
            notify: self.notify_needed(queue, mem)?,
            more: false,
        })
    }

    /// Collects finished requests into the used ring; returns whether to notify the driver.
    pub fn process_completions(
        &mut self,
        queue: &mut Queue,
        mem: &Arc<GuestMemory>,
    ) -> Result<bool> {
        let mut done = std::mem::take(&mut self.completions);
        self.io.reap(&mut done);
        for c in done.drain(..) {
            self.on_result(queue, c.tag, c.result)?;
        }
        self.completions = done;
        self.io.kick()?;
        if self.throttled && !self.full() {
            self.throttled = false;
            let more = self.process_queue(queue, mem)?;
            return Ok(more || self.notify_needed(queue, mem)?);
        }
        self.notify_needed(queue, mem)
    }

    /// Waits until no request is in flight (device reset, disconnect, shutdown). Returns
    /// whether to notify the driver.
    pub fn drain(&mut self, queue: &mut Queue, mem: &Arc<GuestMemory>) -> Result<bool> {
        let start = Instant::now();
        let mut notify = false;
        while self.slab.len() > 0 {
            if start.elapsed() > DRAIN_TIMEOUT {
                return Err(Error::NeedsReset {
                    queue: self.queue_index,
                    head: 0,
                    reason: format!(
                        "{} requests still in flight after {:?}",
                        self.slab.len(),
                        DRAIN_TIMEOUT
                    ),
                });
            }
            if let Some(fd) = self.io.completion_fd() {
                wait_readable(fd, 100);
            }
            notify |= self.process_completions(queue, mem)?;
        }
        Ok(notify)
    }

    /// Called when no chain could be popped. Returns whether chains are pending after all:
    /// the driver may publish more between the pop and this check, which is no error (pop
    /// again). It is an error if the available index is more than a ring ahead (bogus) or if
    /// a pop already failed with chains pending (`stalled`: the ring is unreadable); without
    /// this check `enable_notification` would report "more work" forever and spin the worker.
    fn check_avail(
        &mut self,
        queue: &Queue,
        mem: &Arc<GuestMemory>,
        stalled: bool,
    ) -> Result<bool> {
        let avail = match self.ring(queue, mem) {
            Some(r) => std::num::Wrapping(r.avail_idx()),
            None => queue
                .avail_idx(mem.as_ref(), std::sync::atomic::Ordering::Acquire)
                .map_err(|e| self.queue_err(e))?,
        };
        let next = queue.next_avail();
        if avail.0 == next {
            return Ok(false);
        }
        let ahead = avail.0.wrapping_sub(next);
        if ahead <= queue.size() && !stalled {
            return Ok(true);
        }
        self.broken = true;
        let _ = self.io.kick();
        let reason = if ahead > queue.size() {
            format!(
                "available index {} is more than the queue size {} ahead of {next}",
                avail.0,
                queue.size(),
            )
        } else {
            format!(
                "available ring entry {next} (of {}) cannot be read",
                avail.0
            )
        };
        Err(self.fatal(next, reason))
    }

    fn notify_needed(&mut self, queue: &mut Queue, mem: &Arc<GuestMemory>) -> Result<bool> {
        if self.added == 0 {
            return Ok(false);
        }
        let added = self.added as u16;
        self.added = 0;
        if let Some(r) = self.ring(queue, mem) {
            return Ok(r.needs_notification(queue, added));
        }
        // virtio-queue's own check counts only the used elements it added itself, and the
        // fast path may have added some: call it (it resets its count) but notify regardless.
        // A spurious interrupt is harmless; a missed one hangs the driver.
        queue
            .needs_notification(mem.as_ref())
            .map_err(|e| self.queue_err(e))?;
        Ok(true)
    }

    fn fatal(&self, head: u16, reason: String) -> Error {
        log::error!(
            "virtio-blk queue {}: request {head}: {reason}; queue stopped until reset",
            self.queue_index
        );
        Error::NeedsReset {
            queue: self.queue_index,
            head,
            reason,
        }
    }

    /// Handles one chain. Errors are fatal (no status byte can be returned).
    fn handle(&mut self, queue: &mut Queue, mem: &Arc<GuestMemory>, head: u16) -> Result<()> {
        let table = GuestAddress(queue.desc_table());
        let mut chain = std::mem::take(&mut self.chain);
        let result = self.handle_walked(queue, mem, table, head, &mut chain);
        self.chain = chain;
        result
    }

    fn handle_walked(
        &mut self,
        queue: &mut Queue,
        mem: &Arc<GuestMemory>,
        table: GuestAddress,
        head: u16,
        chain: &mut Chain,
    ) -> Result<()> {
        chain
            .walk_into(mem, table, queue.size(), head, &self.limits)
            .map_err(|e| self.fatal(head, e.to_string()))?;
        let chain = &*chain;
        let Some((mut writer, status_addr)) = chain.writer_and_last_byte() else {
            return Err(self.fatal(
                head,
                "status byte: no device-writable buffer in the chain".into(),
            ));
        };
        let mut segs = std::mem::take(&mut self.segs);
        segs.clear();
        let mut spare = std::mem::take(&mut self.spare_iovecs);
        spare.clear();
        let action = self.parse(mem, chain, &mut writer, &mut segs, &mut spare);
        if spare.capacity() > 0 {
            self.spare_iovecs = spare;
        }
        self.segs = segs;
        match action {
            Action::Complete { status, data_len } => {
                self.finish(queue, mem, head, status_addr, status, data_len + 1)
            }
            Action::Submit {
                parts,
                data_len,
                then_flush,
            } => {
                let parts = match parts {
                    Parts::One(p) if !then_flush => {
                        let Some(tag) = self.slab.peek_free() else {
                            // Unreachable while `full()` gates popping.
                            return self.finish(queue, mem, head, status_addr, S_IOERR, 1);
                        };
                        return self.submit_direct(
                            queue,
                            mem,
                            tag,
                            p,
                            head,
                            status_addr,
                            data_len + 1,
                        );
                    }
                    other => other,
                };
                let rec = Inflight {
                    head,
                    status_addr,
                    used_len: data_len + 1,
                    remaining: parts.len() as u32,
                    status: S_OK,
                    then_flush,
                    mem: mem.clone(),
                };
                let Some(tag) = self.slab.insert(rec) else {
                    // Unreachable while `full()` gates popping; fail the request, not the queue.
                    return self.finish(queue, mem, head, status_addr, S_IOERR, 1);
                };
                match parts {
                    Parts::One(p) => self.submit_part(queue, tag, p),
                    Parts::Many(list) => list
                        .into_iter()
                        .try_for_each(|p| self.submit_part(queue, tag, p)),
                }
            }
        }
    }

    /// Hands one part to the engine: `None` when it is queued (its completion comes from
    /// `reap`), else the result of a request the engine finished (or refused) at once.
    #[inline(always)] // on every request's path; two callers
    fn issue(&mut self, tag: u64, p: Part) -> Option<vstor_blockdev::Result<()>> {
        let mut req = IoRequest {
            op: p.op,
            offset: p.offset,
            len: p.len,
            iovecs: p.iovecs,
            tag,
        };
        let submitted = self.io.submit_ref(&mut req);
        if req.iovecs.capacity() > 0 {
            // The engine finished with the list: keep its allocation for the next request.
            self.spare_iovecs = req.iovecs;
        }
        match submitted {
            Ok(Submitted::Queued) => None,
            Ok(Submitted::Done(r)) => Some(r),
            Err(e) => Some(Err(e)),
        }
    }

    fn submit_part(&mut self, queue: &mut Queue, tag: u64, p: Part) -> Result<()> {
        match self.issue(tag, p) {
            None => Ok(()),
            Some(r) => self.on_result(queue, tag, r),
        }
    }

    /// Turns a request into an action. Never fails: problems become a status.
    fn parse(
        &self,
        mem: &Arc<GuestMemory>,
        chain: &Chain,
        writer: &mut Writer<'_>,
        segs: &mut Vec<Segment>,
        spare: &mut Vec<IoVec>,
    ) -> Action {
        let mut reader = chain.reader();
        let Ok(hdr) = reader.read_obj::<RequestHeader>(mem) else {
            log::debug!(
                "virtio-blk: request {}: header shorter than 16 bytes",
                chain.head()
            );
            return fail(S_IOERR);
        };
        let code = hdr.type_.to_native();
        let sector = hdr.sector.to_native();
        let Some(rt) = lookup(code) else {
            log::debug!("virtio-blk: request {}: unknown type {code}", chain.head());
            return fail(S_UNSUPP);
        };
        if let Some(f) = rt.feature {
            // A request type whose feature the driver did not accept is unsupported, even if
            // the device offered it (§5.2.6.1 ties each type to its feature bit).
            if self.features & f == 0 {
                return fail(S_UNSUPP);
            }
        }
        if rt.writes && self.shared.read_only() {
            // §5.2.6.1: IOERR for writes to a read-only device, and no data written.
            return fail(S_IOERR);
        }
        match rt.kind {
            Kind::In => {
                let len = writer.remaining();
                self.data_request(mem, IoOp::Read, sector, len, segs, spare, |segs| {
                    writer.take_segments(len, segs)
                })
            }
            Kind::Out => {
                let len = reader.remaining();
                self.data_request(mem, IoOp::Write, sector, len, segs, spare, |segs| {
                    reader.take_segments(len, segs)
                })
            }
            Kind::Flush => Action::Submit {
                parts: Parts::One(Part {
                    op: IoOp::Flush,
                    offset: 0,
                    len: 0,
                    iovecs: Vec::new(),
                }),
                data_len: 0,
                then_flush: false,
            },
            Kind::GetId => {
                let mut id = [0u8; ID_BYTES];
                let serial = self.shared.options().serial.as_bytes();
                id[..serial.len()].copy_from_slice(serial);
                let n = (writer.remaining() as usize).min(ID_BYTES);
                match writer.write_all(mem, &id[..n]) {
                    Ok(()) => Action::Complete {
                        status: S_OK,
                        data_len: n as u32,
                    },
                    Err(_) => fail(S_IOERR),
                }
            }
            Kind::GetLifetime => match writer.write_all(mem, &LIFETIME) {
                Ok(()) => Action::Complete {
                    status: S_OK,
                    data_len: LIFETIME.len() as u32,
                },
                Err(_) => fail(S_IOERR),
            },
            Kind::Ranges(op) => self.range_request(mem, op, &mut reader),
        }
    }

    /// Checks `[sector*512, +len)` against capacity and block alignment.
    fn byte_range(&self, sector: u64, len: u64) -> Option<u64> {
        let info = self.shared.dev().info();
        let lbs = u64::from(info.logical_block_size.max(512));
        let offset = sector.checked_mul(1 << SECTOR_SHIFT)?;
        let end = offset.checked_add(len)?;
        (end <= info.size && offset % lbs == 0 && len % lbs == 0).then_some(offset)
    }

    #[allow(clippy::too_many_arguments)] // scratch lists passed down; a struct would do too
    fn data_request(
        &self,
        mem: &Arc<GuestMemory>,
        op: IoOp,
        sector: u64,
        len: u64,
        segs: &mut Vec<Segment>,
        spare: &mut Vec<IoVec>,
        take: impl FnOnce(&mut Vec<Segment>) -> vstor_virtio_core::Result<()>,
    ) -> Action {
        let Some(offset) = self.byte_range(sector, len) else {
            log::debug!(
                "virtio-blk: {} sector {sector} len {len} out of range or unaligned",
                op.name()
            );
            return fail(S_IOERR);
        };
        if len == 0 {
            return Action::Complete {
                status: S_OK,
                data_len: 0,
            };
        }
        segs.clear();
        if take(segs).is_err() || segs.len() > MAX_SEGMENTS {
            return fail(S_IOERR);
        }
        // One host piece per segment unless a segment straddles two memory regions.
        let mut iovecs = std::mem::take(spare);
        iovecs.reserve(segs.len());
        for s in segs.iter() {
            if let Some(p) = host_ptr(mem, s.addr, u64::from(s.len)) {
                // SAFETY: as below; host_ptr checked the whole segment lies in one region.
                iovecs.push(unsafe { IoVec::new(p, s.len as usize) });
                continue;
            }
            for slice in mem.get_slices(s.addr, s.len as usize) {
                let Ok(slice) = slice else {
                    return fail(S_IOERR);
                };
                // SAFETY: the slice lies inside guest memory (validated by the chain walk and
                // `get_slices`), and the request's `Inflight` record holds an `Arc` of that
                // guest memory until the engine completes it, so the mapping outlives the I/O.
                iovecs.push(unsafe { IoVec::new(slice.ptr_guard_mut().as_ptr(), slice.len()) });
            }
        }
        let is_read = op == IoOp::Read;
        Action::Submit {
            parts: Parts::One(Part {
                op,
                offset,
                len,
                iovecs,
            }),
            data_len: if is_read { len as u32 } else { 0 },
            then_flush: !is_read && !self.shared.writeback(),
        }
    }

    fn range_request(
        &self,
        mem: &Arc<GuestMemory>,
        op: RangeOp,
        reader: &mut vstor_virtio_core::chain::Reader<'_>,
    ) -> Action {
        const SEG: u64 = std::mem::size_of::<DiscardSegment>() as u64;
        let bytes = reader.remaining();
        if bytes == 0 || bytes % SEG != 0 {
            return fail(S_IOERR);
        }
        let count = bytes / SEG;
        if count > u64::from(self.shared.options().max_discard_seg) {
            return fail(S_UNSUPP);
        }
        let max_sectors = self.shared.max_discard_sectors();
        let mut parts = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let Ok(seg) = reader.read_obj::<DiscardSegment>(mem) else {
                return fail(S_IOERR);
            };
            let flags = seg.flags.to_native();
            if flags & !op.allowed_flags() != 0 {
                return fail(S_UNSUPP);
            }
            let sectors = seg.num_sectors.to_native();
            if sectors > max_sectors {
                return fail(S_IOERR);
            }
            let len = u64::from(sectors) << SECTOR_SHIFT;
            let Some(offset) = self.byte_range(seg.sector.to_native(), len) else {
                return fail(S_IOERR);
            };
            parts.push(Part {
                op: op.io_op(flags),
                offset,
                len,
                iovecs: Vec::new(),
            });
        }
        Action::Submit {
            parts: Parts::Many(parts),
            data_len: 0,
            then_flush: !self.shared.writeback(),
        }
    }

    /// The virtio status for a block-layer result.
    fn status_of(&self, result: &vstor_blockdev::Result<()>) -> u8 {
        match result {
            Ok(()) => S_OK,
            Err(vstor_blockdev::Error::Unsupported { .. }) => S_UNSUPP,
            Err(e) => {
                log::warn!("virtio-blk queue {}: {e}", self.queue_index);
                S_IOERR
            }
        }
    }

    /// A single-part request without a follow-up flush: submitted before it gets an in-flight
    /// record, so one that the engine completes at once (null, memory, validation errors)
    /// costs no slab entry and no guest-memory `Arc` clone. One that is queued gets its record
    /// under the tag it was submitted with (the slab hands out the tag it showed), holding the
    /// memory map; until then the caller's `mem` keeps the map alive.
    #[allow(clippy::too_many_arguments)] // the in-flight record's fields, before it exists
    fn submit_direct(
        &mut self,
        queue: &mut Queue,
        mem: &Arc<GuestMemory>,
        tag: u64,
        p: Part,
        head: u16,
        status_addr: GuestAddress,
        used_len: u32,
    ) -> Result<()> {
        let Some(result) = self.issue(tag, p) else {
            let rec = Inflight {
                head,
                status_addr,
                used_len,
                remaining: 1,
                status: S_OK,
                then_flush: false,
                mem: mem.clone(),
            };
            let got = self.slab.insert(rec);
            debug_assert_eq!(got, Some(tag), "slab handed out another tag");
            return Ok(());
        };
        let status = self.status_of(&result);
        let used = if status == S_OK { used_len } else { 1 };
        self.finish(queue, mem, head, status_addr, status, used)
    }

    fn on_result(
        &mut self,
        queue: &mut Queue,
        tag: u64,
        result: vstor_blockdev::Result<()>,
    ) -> Result<()> {
        let status = self.status_of(&result);
        let Some(rec) = self.slab.get_mut(tag) else {
            log::error!("virtio-blk: completion for unknown tag {tag}");
            return Ok(());
        };
        if !rec.record(status) {
            return Ok(());
        }
        if rec.then_flush && rec.status == S_OK {
            // Write-through mode: the write is acknowledged only once it is durable.
            rec.then_flush = false;
            rec.remaining = 1;
            let req = IoRequest {
                op: IoOp::Flush,
                offset: 0,
                len: 0,
                iovecs: Vec::new(),
                tag,
            };
            return match self.io.submit(req) {
                Ok(Submitted::Queued) => Ok(()),
                Ok(Submitted::Done(r)) => self.on_result(queue, tag, r),
                Err(e) => self.on_result(queue, tag, Err(e)),
            };
        }
        let rec = self.slab.remove(tag).expect("present above");
        let used = if rec.status == S_OK { rec.used_len } else { 1 };
        self.finish(queue, &rec.mem, rec.head, rec.status_addr, rec.status, used)
    }

    fn finish(
        &mut self,
        queue: &mut Queue,
        mem: &Arc<GuestMemory>,
        head: u16,
        status_addr: GuestAddress,
        status: u8,
        used_len: u32,
    ) -> Result<()> {
        if let Some(p) = host_ptr(mem, status_addr, 1) {
            // SAFETY: one byte of mapped guest memory (host_ptr), kept mapped by `mem`.
            unsafe { p.write_volatile(status) };
        } else if let Err(e) = mem.write_obj(status, status_addr) {
            return Err(self.fatal(head, format!("cannot write status byte: {e}")));
        }
        match self.ring(queue, mem) {
            Some(r) if head < queue.size() => r.add_used(queue, head, used_len),
            _ => queue
                .add_used(mem.as_ref(), head, used_len)
                .map_err(|e| self.queue_err(e))?,
        }
        self.added += 1;
        Ok(())
    }
}

/// Waits up to `timeout_ms` for `fd` to become readable.
fn wait_readable(fd: RawFd, timeout_ms: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd for the duration of the call and nfds is 1.
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vm_memory::{Bytes, GuestAddress};
    use vstor_blockdev::memory::{MemoryDev, MemoryOptions};
    use vstor_virtio_core::virtio_queue::QueueT;

    use crate::mock::{Harness, Layout, QUEUE_SIZE};
    use crate::{BlkOptions, Error};

    const T_IN: u32 = 0;

    fn harness() -> Harness {
        Harness::new(
            Arc::new(MemoryDev::new(1 << 20, MemoryOptions::default()).unwrap()),
            BlkOptions::default(),
        )
    }

    fn set_avail_idx(h: &Harness, idx: u16) {
        let addr = GuestAddress(h.queue.avail_ring() + 2);
        h.mem.write_obj(idx.to_le(), addr).unwrap();
    }

    /// `avail_event` (VIRTIO 1.2 §2.7.10): after the used ring's `QUEUE_SIZE` elements.
    fn avail_event(h: &Harness) -> u16 {
        let addr = h.queue.used_ring() + 4 + 8 * u64::from(QUEUE_SIZE);
        u16::from_le(h.mem.read_obj(GuestAddress(addr)).unwrap())
    }

    #[test]
    fn chains_published_after_an_empty_pop_are_no_error() {
        // The driver raced a pop: its index moved on by one after the pop saw none.
        let mut h = harness();
        set_avail_idx(&h, 1);
        let pending = h.handler.check_avail(&h.queue, &h.mem, false).unwrap();
        assert!(pending);
        assert!(!h.handler.is_broken());
    }

    #[test]
    fn a_pop_that_fails_twice_with_chains_pending_is_fatal() {
        let mut h = harness();
        set_avail_idx(&h, 1);
        let err = h.handler.check_avail(&h.queue, &h.mem, true).unwrap_err();
        assert!(matches!(err, Error::NeedsReset { .. }), "{err}");
        assert!(h.handler.is_broken());
    }

    #[test]
    fn an_index_more_than_a_ring_ahead_is_fatal_at_once() {
        let mut h = harness();
        set_avail_idx(&h, QUEUE_SIZE + 1);
        let err = h.handler.check_avail(&h.queue, &h.mem, false).unwrap_err();
        assert!(matches!(err, Error::NeedsReset { .. }), "{err}");
        assert!(!h.handler.avail_pending(&h.queue, &h.mem));
    }

    #[test]
    fn polled_processing_leaves_kicks_suppressed_until_the_last_pass() {
        let mut h = harness();
        let first = h.submit(Layout::Linux, T_IN, 0, &[], 512);
        assert!(h.handler.avail_pending(&h.queue, &h.mem));
        let pass = h
            .handler
            .process_queue_polled(&mut h.queue, &h.mem, super::Notify::AfterPass)
            .unwrap();
        assert!(pass.notify);
        assert!(!h.handler.avail_pending(&h.queue, &h.mem));
        // avail_event was not advanced: the driver sees no reason to kick while polled.
        assert_eq!(avail_event(&h), 0);
        assert_eq!(h.response(first).status, 0);

        let second = h.submit(Layout::Linux, T_IN, 8, &[], 512);
        assert!(h.handler.avail_pending(&h.queue, &h.mem));
        h.handler.process_queue(&mut h.queue, &h.mem).unwrap();
        assert_eq!(avail_event(&h), 2, "the last pass re-enables kicks");
        assert_eq!(h.response(second).status, 0);
    }

    #[test]
    fn early_notification_stops_the_pass_at_the_first_due_signal() {
        // used_event stays 0: the driver waits for its first completion only.
        let mut h = harness();
        let first = h.submit(Layout::Linux, T_IN, 0, &[], 512);
        let second = h.submit(Layout::Linux, T_IN, 8, &[], 512);
        let pass = h
            .handler
            .process_queue_polled(&mut h.queue, &h.mem, super::Notify::Early)
            .unwrap();
        assert_eq!((pass.notify, pass.more), (true, true));
        assert!(h.handler.avail_pending(&h.queue, &h.mem));
        let pass = h
            .handler
            .process_queue_polled(&mut h.queue, &h.mem, super::Notify::Early)
            .unwrap();
        assert_eq!((pass.notify, pass.more), (false, false));
        assert_eq!(h.response(first).status, 0);
        assert_eq!(h.response(second).status, 0);
    }
}
