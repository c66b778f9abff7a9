//! A driver-side test harness over `virtio_queue::mock::MockSplitQueue`: lays out a split
//! queue in guest memory, builds requests in any descriptor layout, runs the queue handler and
//! reads the used ring back. Shared by unit tests, integration tests, benches and fuzz targets.

use std::sync::Arc;

use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vstor_blockdev::BlockDev;
use vstor_virtio_core::features::{COMMON_FEATURES, RING_EVENT_IDX};
use vstor_virtio_core::memory::anonymous;
use vstor_virtio_core::{virtio_queue, GuestMemory};

use crate::config::{BlkOptions, BlkShared};
use crate::handler::BlkQueueHandler;

/// Queue size used by the harness.
pub const QUEUE_SIZE: u16 = 256;
/// Guest memory size.
pub const MEM_SIZE: usize = 64 << 20;
/// Where data buffers start (after the rings).
const DATA_START: u64 = 0x10_0000;
/// Where the used ring goes (after the available ring, which ends at 0x1206 for 256 entries).
const USED_RING: u64 = 0x2000;
/// Where indirect tables go.
const INDIRECT_START: u64 = 0x8_0000;

use vstor_virtio_core::chain::{F_INDIRECT, F_NEXT, F_WRITE};

/// One descriptor as a test describes it.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    /// Guest address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

/// How a request's bytes are cut into descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Linux's driver: header, data, status in separate descriptors.
    Linux,
    /// Header cut across two descriptors, data across two.
    SplitHeader,
    /// Data and status share one descriptor (OUT: header and data share one).
    SharedStatus,
    /// Linux's layout inside an indirect table.
    Indirect,
}

/// Every layout, for tests that loop over them.
pub const LAYOUTS: [Layout; 4] = [
    Layout::Linux,
    Layout::SplitHeader,
    Layout::SharedStatus,
    Layout::Indirect,
];

/// What came back for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status byte.
    pub status: u8,
    /// The device-writable data before the status byte.
    pub data: Vec<u8>,
    /// The used-ring length.
    pub used_len: u32,
}

/// A published request awaiting its response.
#[derive(Debug, Clone, Copy)]
pub struct Pending {
    /// The chain's head index (the used-ring id).
    pub head: u16,
    w_addr: u64,
    w_len: u64,
}

/// A virtio-blk queue with a test driver on the other side.
pub struct Harness {
    /// Guest memory.
    pub mem: Arc<GuestMemory>,
    /// The device's view of the queue.
    pub queue: Queue,
    /// The device's queue handler.
    pub handler: BlkQueueHandler,
    /// The device's shared state.
    pub shared: Arc<BlkShared>,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
    data_next: u64,
    indirect_next: u64,
    /// Notifications the handler asked for.
    pub notifications: u32,
    desc_table: u64,
    avail: u64,
    used: u64,
    /// Used entries read from the ring but not yet claimed by [`Harness::response`].
    completed: Vec<(u32, u32)>,
}

impl Harness {
    /// A harness over `dev` with the default transport features (indirect, event idx).
    pub fn new(dev: Arc<dyn BlockDev>, opts: BlkOptions) -> Self {
        Self::with_features(dev, opts, None)
    }

    /// A harness with explicit driver features (`None`: everything the device offers).
    pub fn with_features(dev: Arc<dyn BlockDev>, opts: BlkOptions, features: Option<u64>) -> Self {
        let mut opts = opts;
        opts.queue_size = QUEUE_SIZE;
        let shared = BlkShared::new(dev, opts).expect("valid options");
        let features = features.unwrap_or_else(|| shared.features()) | COMMON_FEATURES;
        let mem = Arc::new(anonymous(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory"));
        let mq = MockSplitQueue::create(mem.as_ref(), GuestAddress(0), QUEUE_SIZE);
        // `MockSplitQueue::create` initialises the rings, so it is built exactly once and only
        // its addresses are kept.
        // virtio-queue 0.18's mock places the used ring by counting avail entries rather than
        // bytes (rust-vmm/vm-virtio#400), overlapping the second half of the available ring;
        // the used ring is moved to its own page.
        let (desc_table, avail, used) = (mq.desc_table_addr().0, mq.avail_addr().0, USED_RING);
        let mut queue: Queue = mq.create_queue().expect("queue");
        queue.set_ready(false);
        queue.set_used_ring_address(Some(used as u32), Some(0));
        queue.set_ready(true);
        assert_eq!(queue.used_ring(), used, "used ring moved");
        queue.set_event_idx(features & RING_EVENT_IDX != 0);
        let handler = BlkQueueHandler::new(shared.clone(), 0, features).expect("handler");
        Harness {
            mem,
            queue,
            handler,
            shared,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
            data_next: DATA_START,
            indirect_next: INDIRECT_START,
            notifications: 0,
            desc_table,
            avail,
            used,
            completed: Vec::new(),
        }
    }

    /// A fresh device-side `Queue` over the harness's rings, for a device other than
    /// [`Harness::handler`] (a [`crate::VirtioBlk`], a transport) to own.
    pub fn device_queue(&self, event_idx: bool) -> Queue {
        let mut q = Queue::new(QUEUE_SIZE).expect("queue size");
        q.set_size(QUEUE_SIZE);
        q.set_desc_table_address(
            Some(self.desc_table as u32),
            Some((self.desc_table >> 32) as u32),
        );
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_event_idx(event_idx);
        q.set_ready(true);
        q
    }

    /// Allocates `len` bytes of guest memory for buffers (wraps around when exhausted).
    pub fn alloc(&mut self, len: u64) -> u64 {
        let len = len.max(1);
        if self.data_next + len > MEM_SIZE as u64 {
            self.data_next = DATA_START;
        }
        let a = self.data_next;
        self.data_next = (self.data_next + len + 7) & !7;
        a
    }

    /// Writes a raw descriptor at `index` of the main table.
    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.write_desc_at(self.desc_table, index % QUEUE_SIZE, addr, len, flags, next);
    }

    /// Writes a raw descriptor into a table at `table`.
    pub fn write_desc_at(
        &self,
        table: u64,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write_slice(&b, GuestAddress(table + u64::from(index) * 16))
            .expect("indirect descriptor store");
    }

    /// Publishes `head` in the available ring.
    pub fn publish(&mut self, head: u16) {
        let avail = self.avail;
        let slot = avail + 4 + u64::from(self.avail_idx % QUEUE_SIZE) * 2;
        self.mem
            .write_obj(head.to_le(), GuestAddress(slot))
            .expect("avail ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx.to_le(), GuestAddress(avail + 2))
            .expect("avail idx");
    }

    fn flags(d: &Desc, last: bool) -> u16 {
        (if d.write { F_WRITE } else { 0 }) | (if last { 0 } else { F_NEXT })
    }

    /// Puts a direct chain in the table and publishes it; returns its head.
    pub fn push_chain(&mut self, descs: &[Desc]) -> u16 {
        let head = self.next_desc;
        let n = descs.len() as u16;
        for (i, d) in descs.iter().enumerate() {
            let idx = (head + i as u16) % QUEUE_SIZE;
            let next = (idx + 1) % QUEUE_SIZE;
            self.write_desc(
                idx,
                d.addr,
                d.len,
                Self::flags(d, i + 1 == descs.len()),
                next,
            );
        }
        self.next_desc = (head + n.max(1)) % QUEUE_SIZE;
        self.publish(head);
        head
    }

    /// Puts a chain in a fresh indirect table and publishes a one-descriptor chain pointing to
    /// it; returns the head.
    pub fn push_indirect(&mut self, descs: &[Desc]) -> u16 {
        let table = self.indirect_next;
        self.indirect_next += 16 * descs.len() as u64;
        if self.indirect_next >= DATA_START {
            self.indirect_next = INDIRECT_START;
        }
        for (i, d) in descs.iter().enumerate() {
            self.write_desc_at(
                table,
                i as u16,
                d.addr,
                d.len,
                Self::flags(d, i + 1 == descs.len()),
                i as u16 + 1,
            );
        }
        let head = self.next_desc;
        self.write_desc(head, table, 16 * descs.len() as u32, F_INDIRECT, 0);
        self.next_desc = (head + 1) % QUEUE_SIZE;
        self.publish(head);
        head
    }

    /// Runs the device until every published request is complete (waiting on the engine's
    /// completion fd for asynchronous devices), at most `timeout`.
    pub fn run(&mut self) -> Result<(), crate::Error> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        if self.handler.process_queue(&mut self.queue, &self.mem)? {
            self.notifications += 1;
        }
        while self.handler.in_flight() > 0 && std::time::Instant::now() < deadline {
            if let Some(fd) = self.handler.completion_fd() {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: a valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut pfd, 1, 100) };
            }
            if self
                .handler
                .process_completions(&mut self.queue, &self.mem)?
            {
                self.notifications += 1;
            }
        }
        Ok(())
    }

    /// Used-ring entries added since the last call: (id, len).
    pub fn take_used(&mut self) -> Vec<(u32, u32)> {
        let used = self.used;
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).expect("used idx");
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = used + 4 + u64::from(self.used_seen % QUEUE_SIZE) * 8;
            let id: u32 = self.mem.read_obj(GuestAddress(slot)).expect("used id");
            let len: u32 = self.mem.read_obj(GuestAddress(slot + 4)).expect("used len");
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// Builds the descriptors of a request in `layout`, publishes it, runs the device and
    /// returns the response. `out` is the driver-to-device data, `in_len` the size of the
    /// device-to-driver buffer (excluding the status byte).
    pub fn request(
        &mut self,
        layout: Layout,
        type_: u32,
        sector: u64,
        out: &[u8],
        in_len: usize,
    ) -> Response {
        let head = self.submit(layout, type_, sector, out, in_len);
        self.run().expect("queue stays usable");
        self.response(head)
    }

    /// Builds and publishes a request like [`Harness::request`] without running the device;
    /// hand the result to [`Harness::response`] once something else (a [`crate::VirtioBlk`],
    /// a transport) has processed the queue.
    pub fn submit(
        &mut self,
        layout: Layout,
        type_: u32,
        sector: u64,
        out: &[u8],
        in_len: usize,
    ) -> Pending {
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&type_.to_le_bytes());
        hdr[8..16].copy_from_slice(&sector.to_le_bytes());
        let mut readable = hdr.to_vec();
        readable.extend_from_slice(out);
        let r_addr = self.alloc(readable.len() as u64);
        self.mem
            .write_slice(&readable, GuestAddress(r_addr))
            .expect("write request");
        let w_len = in_len as u64 + 1;
        let w_addr = self.alloc(w_len);
        // Poison the writable area so a device that does not write is caught.
        self.mem
            .write_slice(&vec![0xa5; w_len as usize], GuestAddress(w_addr))
            .expect("poison");
        let status_addr = w_addr + in_len as u64;
        let r = |addr: u64, len: usize| Desc {
            addr,
            len: len as u32,
            write: false,
        };
        let w = |addr: u64, len: u64| Desc {
            addr,
            len: len as u32,
            write: true,
        };
        let mut descs = Vec::new();
        match layout {
            Layout::Linux | Layout::Indirect => {
                descs.push(r(r_addr, 16));
                if !out.is_empty() {
                    descs.push(r(r_addr + 16, out.len()));
                }
                if in_len > 0 {
                    descs.push(w(w_addr, in_len as u64));
                }
                descs.push(w(status_addr, 1));
            }
            Layout::SplitHeader => {
                descs.push(r(r_addr, 5));
                descs.push(r(r_addr + 5, 11));
                if !out.is_empty() {
                    let h = out.len() / 2;
                    if h > 0 {
                        descs.push(r(r_addr + 16, h));
                    }
                    descs.push(r(r_addr + 16 + h as u64, out.len() - h));
                }
                if in_len > 1 {
                    let h = in_len as u64 / 2;
                    descs.push(w(w_addr, h));
                    descs.push(w(w_addr + h, in_len as u64 - h));
                } else if in_len == 1 {
                    descs.push(w(w_addr, 1));
                }
                descs.push(w(status_addr, 1));
            }
            Layout::SharedStatus => {
                descs.push(r(r_addr, readable.len()));
                descs.push(w(w_addr, w_len));
            }
        }
        let head = if layout == Layout::Indirect {
            self.push_indirect(&descs)
        } else {
            self.push_chain(&descs)
        };
        Pending {
            head,
            w_addr,
            w_len,
        }
    }

    /// The response to a submitted request; panics if the device has not completed it.
    pub fn response(
        &mut self,
        Pending {
            head,
            w_addr,
            w_len,
        }: Pending,
    ) -> Response {
        let fresh = self.take_used();
        self.completed.extend(fresh);
        let pos = self
            .completed
            .iter()
            .position(|(id, _)| *id == u32::from(head))
            .unwrap_or_else(|| {
                panic!(
                    "request {head} not completed; used entries not yet claimed: {:?}",
                    self.completed
                )
            });
        let (_, used_len) = self.completed.remove(pos);
        let mut w = vec![0u8; w_len as usize];
        self.mem
            .read_slice(&mut w, GuestAddress(w_addr))
            .expect("read response");
        let status = w.pop().expect("status byte");
        Response {
            status,
            data: w,
            used_len,
        }
    }

    /// Submits many requests before running the device once (queue depth > 1), returning
    /// their responses in submission order.
    pub fn batch(&mut self, reqs: &[(Layout, u32, u64, Vec<u8>, usize)]) -> Vec<Response> {
        let heads: Vec<_> = reqs
            .iter()
            .map(|(l, t, s, o, i)| self.submit(*l, *t, *s, o, *i))
            .collect();
        self.run().expect("queue stays usable");
        heads.into_iter().map(|p| self.response(p)).collect()
    }
}
