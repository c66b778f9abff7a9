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
use vm_memory::{Bytes, GuestAddress};
use vstor_blockdev::{Completion, IoOp, IoQueue, IoRequest, IoVec, QueueOptions, Submitted};
use vstor_virtio_core::chain::{Chain, ChainLimits, Segment, Writer};
use vstor_virtio_core::features::RING_INDIRECT_DESC;
use vstor_virtio_core::memory::host_slices;
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

/// What to do with a parsed request.
enum Action {
    /// Finish now with this status; `used_len` counts bytes written before the status byte.
    Complete { status: u8, data_len: u32 },
    /// Hand these to the block layer.
    Submit {
        parts: Vec<Part>,
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
    slab: Slab,
    completions: Vec<Completion>,
    /// Used-ring entries added since the last notification check.
    added: u32,
    /// Stopped popping because the slab or the engine was full.
    throttled: bool,
    /// Set after a fatal protocol error; the queue is then left alone until reset.
    broken: bool,
    max_parts: usize,
}

impl BlkQueueHandler {
    /// A handler for queue `queue_index` with the driver's negotiated features.
    pub fn new(shared: Arc<BlkShared>, queue_index: u16, acked_features: u64) -> Result<Self> {
        let size = usize::from(shared.options().queue_size);
        let max_parts = shared.options().max_discard_seg as usize;
        let io = shared.dev().open_queue(&QueueOptions {
            depth: size + max_parts,
        })?;
        Ok(BlkQueueHandler {
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

    fn full(&self) -> bool {
        self.slab.is_full() || self.io.in_flight() + self.max_parts > self.io.depth()
    }

    /// Takes every available request, submits it, and returns whether the driver must be
    /// notified. An `Err` means the queue is unusable until the device is reset.
    pub fn process_queue(&mut self, queue: &mut Queue, mem: &Arc<GuestMemory>) -> Result<bool> {
        if self.broken {
            return Ok(false);
        }
        loop {
            queue
                .disable_notification(mem.as_ref())
                .map_err(|e| self.queue_err(e))?;
            while !self.full() {
                let Some(chain) = queue.pop_descriptor_chain(mem.as_ref()) else {
                    self.check_avail(queue, mem)?;
                    break;
                };
                let head = chain.head_index();
                if let Err(e) = self.handle(queue, mem, head) {
                    self.broken = true;
                    let _ = self.io.kick();
                    return Err(e);
                }
            }
            self.io.kick()?;
            if self.full() {
                // Resumed from process_completions once something finishes.
                self.throttled = true;
                break;
            }
            if !queue
                .enable_notification(mem.as_ref())
                .map_err(|e| self.queue_err(e))?
            {
                break;
            }
        }
        self.notify_needed(queue, mem)
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

    /// Called when no chain could be popped: if the driver nonetheless published entries, its
    /// available index is bogus (more than a ring ahead) or the ring is unreadable. Without this
    /// check `enable_notification` would report "more work" forever and spin the worker.
    fn check_avail(&mut self, queue: &Queue, mem: &Arc<GuestMemory>) -> Result<()> {
        let avail = queue
            .avail_idx(mem.as_ref(), std::sync::atomic::Ordering::Acquire)
            .map_err(|e| self.queue_err(e))?;
        if avail.0 == queue.next_avail() {
            return Ok(());
        }
        self.broken = true;
        let _ = self.io.kick();
        Err(self.fatal(
            queue.next_avail(),
            format!(
                "available index {} is more than the queue size {} ahead of {}",
                avail.0,
                queue.size(),
                queue.next_avail()
            ),
        ))
    }

    fn notify_needed(&mut self, queue: &mut Queue, mem: &Arc<GuestMemory>) -> Result<bool> {
        if self.added == 0 {
            return Ok(false);
        }
        self.added = 0;
        queue
            .needs_notification(mem.as_ref())
            .map_err(|e| self.queue_err(e))
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
        let chain = Chain::walk(mem, table, queue.size(), head, &self.limits)
            .map_err(|e| self.fatal(head, e.to_string()))?;
        let mut writer = chain.writer();
        let mut status_writer = writer
            .split_tail("status byte", 1)
            .map_err(|e| self.fatal(head, e.to_string()))?;
        let mut segs = Vec::with_capacity(1);
        status_writer
            .take_segments(1, &mut segs)
            .map_err(|e| self.fatal(head, e.to_string()))?;
        let status_addr = segs[0].addr;

        let action = self.parse(mem, &chain, &mut writer);
        match action {
            Action::Complete { status, data_len } => {
                self.finish(queue, mem, head, status_addr, status, data_len + 1)
            }
            Action::Submit {
                parts,
                data_len,
                then_flush,
            } => {
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
                for p in parts {
                    let req = IoRequest {
                        op: p.op,
                        offset: p.offset,
                        len: p.len,
                        iovecs: p.iovecs,
                        tag,
                    };
                    match self.io.submit(req) {
                        Ok(Submitted::Queued) => {}
                        Ok(Submitted::Done(r)) => self.on_result(queue, tag, r)?,
                        Err(e) => self.on_result(queue, tag, Err(e))?,
                    }
                }
                Ok(())
            }
        }
    }

    /// Turns a request into an action. Never fails: problems become a status.
    fn parse(&self, mem: &Arc<GuestMemory>, chain: &Chain, writer: &mut Writer<'_>) -> Action {
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
            if self.shared.features() & f == 0 {
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
                self.data_request(mem, IoOp::Read, sector, len, |segs| {
                    writer.take_segments(len, segs)
                })
            }
            Kind::Out => {
                let len = reader.remaining();
                self.data_request(mem, IoOp::Write, sector, len, |segs| {
                    reader.take_segments(len, segs)
                })
            }
            Kind::Flush => Action::Submit {
                parts: vec![Part {
                    op: IoOp::Flush,
                    offset: 0,
                    len: 0,
                    iovecs: Vec::new(),
                }],
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

    fn data_request(
        &self,
        mem: &Arc<GuestMemory>,
        op: IoOp,
        sector: u64,
        len: u64,
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
        let mut segs = Vec::new();
        if take(&mut segs).is_err() || segs.len() > MAX_SEGMENTS {
            return fail(S_IOERR);
        }
        let mut pieces = Vec::with_capacity(segs.len());
        for s in &segs {
            if host_slices(mem, s.addr, s.len, &mut pieces).is_err() {
                return fail(S_IOERR);
            }
        }
        let iovecs = pieces
            .into_iter()
            // SAFETY: each piece lies inside guest memory (validated by the chain walk and
            // `host_slices`), and the request's `Inflight` record holds an `Arc` of that guest
            // memory until the engine completes it, so the mapping outlives the I/O.
            .map(|(ptr, n)| unsafe { IoVec::new(ptr, n) })
            .collect();
        let is_read = op == IoOp::Read;
        Action::Submit {
            parts: vec![Part {
                op,
                offset,
                len,
                iovecs,
            }],
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
            parts,
            data_len: 0,
            then_flush: !self.shared.writeback(),
        }
    }

    fn on_result(
        &mut self,
        queue: &mut Queue,
        tag: u64,
        result: vstor_blockdev::Result<()>,
    ) -> Result<()> {
        let status = match &result {
            Ok(()) => S_OK,
            Err(vstor_blockdev::Error::Unsupported { .. }) => S_UNSUPP,
            Err(e) => {
                log::warn!("virtio-blk queue {}: {e}", self.queue_index);
                S_IOERR
            }
        };
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
        mem: &GuestMemory,
        head: u16,
        status_addr: GuestAddress,
        status: u8,
        used_len: u32,
    ) -> Result<()> {
        if let Err(e) = mem.write_obj(status, status_addr) {
            return Err(self.fatal(head, format!("cannot write status byte: {e}")));
        }
        queue
            .add_used(mem, head, used_len)
            .map_err(|e| self.queue_err(e))?;
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
