//! Requests in flight on one queue: a fixed-capacity slab indexed by the block-layer tag.

use std::sync::Arc;

use vm_memory::GuestAddress;
use vstor_virtio_core::GuestMemory;

use crate::request::S_OK;

/// One virtio request between submission and its used-ring entry.
pub(crate) struct Inflight {
    /// Head descriptor index (the used-ring id).
    pub head: u16,
    /// Where the status byte goes.
    pub status_addr: GuestAddress,
    /// Bytes written into device-writable buffers on success, status byte included.
    pub used_len: u32,
    /// Block-layer requests still outstanding.
    pub remaining: u32,
    /// Worst status so far.
    pub status: u8,
    /// Flush once the writes finish (write-through cache mode).
    pub then_flush: bool,
    /// Keeps the guest memory mapped while the engine touches it.
    pub mem: Arc<GuestMemory>,
}

/// A slab of in-flight requests with a free list; capacity fixed at creation.
pub(crate) struct Slab {
    slots: Vec<Option<Inflight>>,
    free: Vec<u32>,
}

impl Slab {
    pub fn new(capacity: usize) -> Self {
        Slab {
            slots: (0..capacity).map(|_| None).collect(),
            free: (0..capacity as u32).rev().collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    /// The tag the next [`Slab::insert`] will return, if there is room.
    pub fn peek_free(&self) -> Option<u64> {
        self.free.last().map(|&t| u64::from(t))
    }

    pub fn insert(&mut self, r: Inflight) -> Option<u64> {
        let tag = self.free.pop()?;
        self.slots[tag as usize] = Some(r);
        Some(u64::from(tag))
    }

    pub fn get_mut(&mut self, tag: u64) -> Option<&mut Inflight> {
        self.slots.get_mut(usize::try_from(tag).ok()?)?.as_mut()
    }

    pub fn remove(&mut self, tag: u64) -> Option<Inflight> {
        let idx = usize::try_from(tag).ok()?;
        let r = self.slots.get_mut(idx)?.take()?;
        self.free.push(idx as u32);
        Some(r)
    }
}

impl Inflight {
    /// Records one block-layer result; returns true when the request is finished.
    pub fn record(&mut self, status: u8) -> bool {
        if self.status == S_OK {
            self.status = status;
        }
        self.remaining = self.remaining.saturating_sub(1);
        self.remaining == 0
    }
}
