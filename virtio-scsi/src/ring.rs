//! The virtqueue loop every virtio-scsi queue shares: take the available chains one by one,
//! hand each to the queue's handler, put it on the used ring, and decide whether the driver
//! must be notified. A ring that cannot be read stops the queue (DEVICE_NEEDS_RESET).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vstor_virtio_core::chain::{Chain, ChainLimits};
use vstor_virtio_core::features::RING_INDIRECT_DESC;
use vstor_virtio_core::ring::RingPtrs;
use vstor_virtio_core::{virtio_queue, GuestMemory};

use crate::error::{Error, Result};

/// What a queue needs to walk its chains.
#[derive(Debug)]
pub struct RingCtx {
    /// The queue index (for errors).
    pub index: u16,
    /// Chain walking policy.
    pub limits: ChainLimits,
    /// Scratch chain, reused by every request.
    pub chain: Chain,
    /// Set after a fatal protocol error; the queue is left alone until reset.
    pub broken: bool,
    /// Host pointers to the rings, for the guest memory map they were computed in.
    ptrs: Option<(Arc<GuestMemory>, RingPtrs)>,
}

impl RingCtx {
    /// The context of queue `index` with the driver's features.
    pub fn new(index: u16, acked_features: u64) -> RingCtx {
        RingCtx {
            index,
            limits: ChainLimits {
                indirect: acked_features & RING_INDIRECT_DESC != 0,
            },
            chain: Chain::default(),
            broken: false,
            ptrs: None,
        }
    }

    /// The ring fast path for `queue` in `mem` (cached per memory map and queue addresses).
    fn ring_ptrs(&mut self, queue: &Queue, mem: &Arc<GuestMemory>) -> Option<RingPtrs> {
        if let Some((m, r)) = &self.ptrs {
            if Arc::ptr_eq(m, mem) && r.matches(queue) {
                return Some(*r);
            }
        }
        let r = RingPtrs::new(mem, queue)?;
        self.ptrs = Some((mem.clone(), r));
        Some(r)
    }

    /// A fatal protocol error on the request whose head is `head`.
    pub fn fatal(&self, head: u16, reason: impl Into<String>) -> Error {
        let reason = reason.into();
        log::error!(
            "virtio-scsi queue {}: request {head}: {reason}; queue stopped until reset",
            self.index
        );
        Error::NeedsReset {
            queue: self.index,
            head,
            reason,
        }
    }

    fn queue_err(&self, source: virtio_queue::Error) -> Error {
        Error::Queue {
            queue: self.index,
            source,
        }
    }

    /// Walks the chain at `head` into `self.chain`.
    pub fn walk(&mut self, queue: &Queue, mem: &GuestMemory, head: u16) -> Result<()> {
        let table = GuestAddress(queue.desc_table());
        let mut chain = std::mem::take(&mut self.chain);
        let r = chain.walk_into(mem, table, queue.size(), head, &self.limits);
        self.chain = chain;
        r.map_err(|e| self.fatal(head, e.to_string()))
    }

    /// Runs `handle` on every available chain while `want()` says so; `handle` returns the
    /// used length. Returns whether the driver must be notified.
    pub fn run(
        &mut self,
        queue: &mut Queue,
        mem: &Arc<GuestMemory>,
        mut want: impl FnMut() -> bool,
        mut handle: impl FnMut(&mut RingCtx, &Queue, u16) -> Result<u32>,
    ) -> Result<bool> {
        if self.broken {
            return Ok(false);
        }
        let ring = self.ring_ptrs(queue, mem);
        let mut added: u16 = 0;
        let r = (|| loop {
            match ring {
                Some(p) => p.disable_notification(queue),
                None => queue
                    .disable_notification(mem.as_ref())
                    .map_err(|e| self.queue_err(e))?,
            }
            let mut stalled = false;
            while want() {
                let popped = match ring {
                    Some(p) => p.pop(queue),
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
                let used = handle(self, queue, head)?;
                match ring {
                    Some(p) if head < queue.size() => p.add_used(queue, head, used),
                    _ => queue
                        .add_used(mem.as_ref(), head, used)
                        .map_err(|e| self.queue_err(e))?,
                }
                added = added.wrapping_add(1);
            }
            let more = want()
                && match ring {
                    Some(p) => p.enable_notification(queue),
                    None => queue
                        .enable_notification(mem.as_ref())
                        .map_err(|e| self.queue_err(e))?,
                };
            if !more {
                return Ok::<(), Error>(());
            }
        })();
        if let Err(e) = r {
            self.broken = true;
            return Err(e);
        }
        if added == 0 {
            return Ok(false);
        }
        if let Some(p) = ring {
            return Ok(p.needs_notification(queue, added));
        }
        // virtio-queue's own check: call it (it resets its count) but notify regardless, as
        // the count may be off after a wrap; a spurious interrupt is harmless.
        queue
            .needs_notification(mem.as_ref())
            .map_err(|e| self.queue_err(e))?;
        Ok(true)
    }

    /// After a pop found nothing: whether chains are pending after all (the driver published
    /// meanwhile: pop again). An index more than a ring ahead, or a second failed pop with
    /// chains pending, is fatal.
    fn check_avail(&self, queue: &Queue, mem: &GuestMemory, stalled: bool) -> Result<bool> {
        let avail = queue
            .avail_idx(mem, Ordering::Acquire)
            .map_err(|e| self.queue_err(e))?;
        let next = queue.next_avail();
        if avail.0 == next {
            return Ok(false);
        }
        let ahead = avail.0.wrapping_sub(next);
        if ahead <= queue.size() && !stalled {
            return Ok(true);
        }
        Err(self.fatal(
            next,
            if ahead > queue.size() {
                format!(
                    "available index {} is more than the queue size {} ahead of {next}",
                    avail.0,
                    queue.size()
                )
            } else {
                format!(
                    "available ring entry {next} (of {}) cannot be read",
                    avail.0
                )
            },
        ))
    }
}
