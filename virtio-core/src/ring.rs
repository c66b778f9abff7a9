//! A fast path for the hot split-virtqueue operations (VIRTIO 1.2 §2.7): host pointers to a
//! queue's three rings, computed once per guest memory map, so that popping a head, adding a
//! used element and the notification checks are a few loads and stores instead of a trip
//! through vm-memory's generic slice API per field. `virtio_queue::Queue` keeps the state
//! (`next_avail`, `next_used`, addresses, EVENT_IDX); this only reads and writes the rings.

use std::sync::atomic::{fence, AtomicU16, AtomicU64, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use crate::memory::{host_ptr, GuestMemory};

/// Host pointers to one queue's rings. Valid while the guest memory they were computed from
/// (and every clone of it) lives; callers keep that memory's `Arc` next to them.
#[derive(Debug, Clone, Copy)]
pub struct RingPtrs {
    avail: *mut u8,
    used: *mut u8,
    size: u16,
    /// The queue addresses these pointers were computed for.
    key: (u64, u64, u16),
}

// SAFETY: plain addresses into guest memory; the owner keeps the mapping alive.
unsafe impl Send for RingPtrs {}

impl RingPtrs {
    /// Pointers for `queue` in `mem`, or `None` when a ring is not inside one region or is
    /// misaligned (callers then use `virtio_queue`'s own accessors).
    pub fn new(mem: &GuestMemory, queue: &Queue) -> Option<Self> {
        let size = queue.size();
        let avail = host_ptr(
            mem,
            GuestAddress(queue.avail_ring()),
            6 + 2 * u64::from(size),
        )?;
        let used = host_ptr(
            mem,
            GuestAddress(queue.used_ring()),
            6 + 8 * u64::from(size),
        )?;
        if avail as usize % 2 != 0 || used as usize % 4 != 0 {
            return None;
        }
        Some(RingPtrs {
            avail,
            used,
            size,
            key: (queue.avail_ring(), queue.used_ring(), size),
        })
    }

    /// Whether these pointers were computed for `queue`'s current addresses.
    pub fn matches(&self, queue: &Queue) -> bool {
        self.key == (queue.avail_ring(), queue.used_ring(), queue.size())
    }

    /// Loads the little-endian u16 at `p` (2-byte aligned, inside a ring).
    fn load16(p: *mut u8, order: Ordering) -> u16 {
        // SAFETY: callers pass 2-byte aligned addresses inside the rings, which stay mapped
        // while the owner keeps the guest memory; AtomicU16 has u16's layout. The reference
        // does not outlive this call.
        u16::from_le(unsafe { &*(p as *const AtomicU16) }.load(order))
    }

    /// Stores `v` little-endian at `p` (2-byte aligned, inside a ring).
    fn store16(p: *mut u8, v: u16, order: Ordering) {
        // SAFETY: as in `load16`.
        unsafe { &*(p as *const AtomicU16) }.store(v.to_le(), order)
    }

    /// `avail->idx` (acquire: the ring entries before it are visible).
    pub fn avail_idx(&self) -> u16 {
        Self::load16(self.avail.wrapping_add(2), Ordering::Acquire)
    }

    /// Pops the next available head, advancing `queue`'s `next_avail`; `None` when the ring is
    /// empty or its index is bogus (more than a ring ahead), as `Queue::pop_descriptor_chain`.
    pub fn pop(&self, queue: &mut Queue) -> Option<u16> {
        let next = queue.next_avail();
        let idx = self.avail_idx();
        if idx == next || idx.wrapping_sub(next) > self.size {
            return None;
        }
        let slot = usize::from(next % self.size);
        let head = Self::load16(self.avail.wrapping_add(4 + 2 * slot), Ordering::Relaxed);
        queue.set_next_avail(next.wrapping_add(1));
        Some(head)
    }

    /// Writes a used element and publishes it (release store of `used->idx`), advancing
    /// `queue`'s `next_used`.
    pub fn add_used(&self, queue: &mut Queue, head: u16, len: u32) {
        let next = queue.next_used();
        let slot = usize::from(next % self.size);
        let elem = (u64::from(len) << 32 | u64::from(head)).to_le();
        // Entries are 4-byte aligned (used ring 4-aligned, 4-byte header, 8 bytes each): one
        // 8-byte store when the entry happens to be 8-aligned, else two 4-byte stores.
        let p = self.used.wrapping_add(4 + 8 * slot);
        if p as usize % 8 == 0 {
            // SAFETY: aligned, inside the used ring.
            unsafe { &*(p as *const AtomicU64) }.store(elem, Ordering::Relaxed);
        } else {
            // SAFETY: 4-aligned, inside the used ring.
            unsafe {
                std::ptr::write_volatile(p as *mut u32, u32::from(head).to_le());
                std::ptr::write_volatile(p.add(4) as *mut u32, len.to_le());
            }
        }
        let next = next.wrapping_add(1);
        Self::store16(self.used.wrapping_add(2), next, Ordering::Release);
        queue.set_next_used(next);
    }

    /// Stops kicks (without EVENT_IDX: used flags NO_NOTIFY; with it nothing, as
    /// `Queue::disable_notification`).
    pub fn disable_notification(&self, queue: &Queue) {
        if !queue.event_idx_enabled() {
            Self::store16(self.used, 1, Ordering::Relaxed);
        }
    }

    /// Re-enables kicks and returns whether chains arrived meanwhile (as
    /// `Queue::enable_notification`).
    pub fn enable_notification(&self, queue: &Queue) -> bool {
        if queue.event_idx_enabled() {
            let p = self.used.wrapping_add(4 + 8 * usize::from(self.size));
            Self::store16(p, queue.next_avail(), Ordering::Relaxed);
        } else {
            Self::store16(self.used, 0, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
        Self::load16(self.avail.wrapping_add(2), Ordering::Relaxed) != queue.next_avail()
    }

    /// Whether the driver wants an interrupt after `added` used elements since the last check
    /// (as `Queue::needs_notification`, with the count kept by the caller).
    pub fn needs_notification(&self, queue: &Queue, added: u16) -> bool {
        fence(Ordering::SeqCst);
        if !queue.event_idx_enabled() {
            return true;
        }
        let p = self.avail.wrapping_add(4 + 2 * usize::from(self.size));
        let used_event = Self::load16(p, Ordering::Relaxed);
        let new = queue.next_used();
        let old = new.wrapping_sub(added);
        new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::anonymous;
    use vm_memory::Bytes;

    const SIZE: u16 = 8;
    const AVAIL: u64 = 0x1000;
    const USED: u64 = 0x2000;

    fn queue(event_idx: bool) -> Queue {
        let mut q = Queue::new(SIZE).unwrap();
        q.try_set_desc_table_address(GuestAddress(0)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(AVAIL)).unwrap();
        q.try_set_used_ring_address(GuestAddress(USED)).unwrap();
        q.set_event_idx(event_idx);
        q.set_ready(true);
        q
    }

    fn publish(mem: &GuestMemory, idx: u16, head: u16) {
        let slot = u64::from(idx % SIZE);
        mem.write_obj(head, GuestAddress(AVAIL + 4 + 2 * slot))
            .unwrap();
        mem.write_obj(idx.wrapping_add(1), GuestAddress(AVAIL + 2))
            .unwrap();
    }

    /// The fast path and virtio-queue's own accessors, run side by side on two copies of the
    /// same rings, must leave identical bytes and return identical answers.
    #[test]
    fn agrees_with_virtio_queue() {
        for event_idx in [false, true] {
            let fast_mem = anonymous(&[(GuestAddress(0), 0x4000)]).unwrap();
            let ref_mem = anonymous(&[(GuestAddress(0), 0x4000)]).unwrap();
            let (mut fq, mut rq) = (queue(event_idx), queue(event_idx));
            let ring = RingPtrs::new(&fast_mem, &fq).unwrap();
            assert!(ring.matches(&fq));
            let mut idx = 0u16;
            // Enough rounds to wrap the 8-entry rings several times.
            for round in 0..40u16 {
                for m in [&fast_mem, &ref_mem] {
                    publish(m, idx, round % SIZE);
                    // The driver asks for an interrupt after every third completion.
                    m.write_obj(round / 3 * 3, GuestAddress(AVAIL + 4 + 2 * u64::from(SIZE)))
                        .unwrap();
                }
                idx = idx.wrapping_add(1);
                ring.disable_notification(&fq);
                rq.disable_notification(&ref_mem).unwrap();
                let head = ring.pop(&mut fq).unwrap();
                let chain = rq.pop_descriptor_chain(&ref_mem).unwrap();
                assert_eq!(head, chain.head_index());
                assert_eq!(ring.pop(&mut fq), None);
                ring.add_used(&mut fq, head, 512 + u32::from(round));
                rq.add_used(&ref_mem, head, 512 + u32::from(round)).unwrap();
                assert_eq!(
                    ring.needs_notification(&fq, 1),
                    rq.needs_notification(&ref_mem).unwrap(),
                    "round {round} event_idx {event_idx}"
                );
                assert_eq!(
                    ring.enable_notification(&fq),
                    rq.enable_notification(&ref_mem).unwrap()
                );
                let (mut a, mut b) = ([0u8; 0x100], [0u8; 0x100]);
                fast_mem.read_slice(&mut a, GuestAddress(USED)).unwrap();
                ref_mem.read_slice(&mut b, GuestAddress(USED)).unwrap();
                assert_eq!(a, b, "used ring differs after round {round}");
                assert_eq!(fq.next_avail(), rq.next_avail());
                assert_eq!(fq.next_used(), rq.next_used());
            }
        }
    }

    #[test]
    fn bogus_avail_index_pops_nothing() {
        let mem = anonymous(&[(GuestAddress(0), 0x4000)]).unwrap();
        let mut q = queue(false);
        let ring = RingPtrs::new(&mem, &q).unwrap();
        mem.write_obj(SIZE + 1, GuestAddress(AVAIL + 2)).unwrap();
        assert_eq!(ring.pop(&mut q), None);
        assert_eq!(q.next_avail(), 0);
    }

    #[test]
    fn rings_outside_one_region_take_the_slow_path() {
        let mem = anonymous(&[(GuestAddress(0), 0x2000), (GuestAddress(0x2000), 0x2000)]).unwrap();
        let mut q = queue(false);
        assert!(RingPtrs::new(&mem, &q).is_some());
        q.try_set_used_ring_address(GuestAddress(0x1ffc)).unwrap();
        assert!(
            RingPtrs::new(&mem, &q).is_none(),
            "used ring straddles two regions"
        );
    }
}
