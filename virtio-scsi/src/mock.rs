//! A driver-side test harness: lays out the control, event and one request queue in guest
//! memory, builds requests the way Linux's virtio_scsi does (or in any descriptor layout),
//! runs the device's queue handlers and reads the responses back. Shared by unit tests,
//! integration tests, benches and fuzz targets.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vstor_virtio_core::chain::{F_NEXT, F_WRITE};
use vstor_virtio_core::features::{COMMON_FEATURES, RING_EVENT_IDX};
use vstor_virtio_core::memory::anonymous;
use vstor_virtio_core::GuestMemory;

use crate::device::QueueHandler;
use crate::lun_addr::LunAddr;
use crate::protocol::{ctrl, event, queue, CMD_REQ_HEADER, CMD_RESP_HEADER};
use crate::{ScsiOptions, ScsiShared};

/// Queue size used by the harness.
pub const QUEUE_SIZE: u16 = 256;
/// Guest memory size.
pub const MEM_SIZE: usize = 64 << 20;
/// Bytes reserved per queue for its rings.
const RING_AREA: u64 = 0x4000;
/// Where data buffers start (after the rings of up to 8 queues).
const DATA_START: u64 = 0x10_0000;

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

/// The driver's side of one split queue.
#[derive(Debug)]
pub struct MockRing {
    desc_table: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl MockRing {
    fn new(mem: &GuestMemory, base: u64) -> MockRing {
        let r = MockRing {
            desc_table: base,
            avail: base + 16 * u64::from(QUEUE_SIZE),
            used: base + 0x2000,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        };
        mem.write_slice(&[0u8; RING_AREA as usize], GuestAddress(base))
            .expect("ring area");
        r
    }

    /// A device-side `Queue` over this ring.
    pub fn device_queue(&self, event_idx: bool) -> Queue {
        let mut q = Queue::new(QUEUE_SIZE).expect("queue size");
        q.set_size(QUEUE_SIZE);
        q.set_desc_table_address(Some(self.desc_table as u32), Some(0));
        q.set_avail_ring_address(Some(self.avail as u32), Some(0));
        q.set_used_ring_address(Some(self.used as u32), Some(0));
        q.set_event_idx(event_idx);
        q.set_ready(true);
        q
    }

    fn write_desc(&self, mem: &GuestMemory, index: u16, d: &Desc, flags: u16, next: u16) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&d.addr.to_le_bytes());
        b[8..12].copy_from_slice(&d.len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&b, GuestAddress(self.desc_table + u64::from(index) * 16))
            .expect("descriptor");
    }

    /// Puts a direct chain in the table and publishes it; returns its head.
    pub fn push_chain(&mut self, mem: &GuestMemory, descs: &[Desc]) -> u16 {
        let head = self.next_desc;
        for (i, d) in descs.iter().enumerate() {
            let idx = (head + i as u16) % QUEUE_SIZE;
            let last = i + 1 == descs.len();
            let flags = (if d.write { F_WRITE } else { 0 }) | (if last { 0 } else { F_NEXT });
            self.write_desc(mem, idx, d, flags, (idx + 1) % QUEUE_SIZE);
        }
        self.next_desc = (head + (descs.len() as u16).max(1)) % QUEUE_SIZE;
        let slot = self.avail + 4 + u64::from(self.avail_idx % QUEUE_SIZE) * 2;
        mem.write_obj(head, GuestAddress(slot)).expect("avail ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .expect("avail idx");
        head
    }

    /// Used-ring entries added since the last call: (id, len).
    pub fn take_used(&mut self, mem: &GuestMemory) -> Vec<(u32, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).expect("used idx");
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = self.used + 4 + u64::from(self.used_seen % QUEUE_SIZE) * 8;
            let id: u32 = mem.read_obj(GuestAddress(slot)).expect("used id");
            let len: u32 = mem.read_obj(GuestAddress(slot + 4)).expect("used len");
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// What came back for a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdResult {
    /// virtio-scsi response code.
    pub response: u8,
    /// SCSI status.
    pub status: u8,
    /// Sense data (`sense_len` bytes).
    pub sense: Vec<u8>,
    /// Residual.
    pub resid: u32,
    /// Data-in bytes (the whole buffer; the device filled `len - resid`).
    pub data: Vec<u8>,
    /// The used-ring length.
    pub used_len: u32,
}

impl CmdResult {
    /// Sense key, ASC, ASCQ of fixed-format sense.
    pub fn key_asc_ascq(&self) -> Option<(u8, u8, u8)> {
        (self.sense.len() >= 14).then(|| (self.sense[2] & 0xf, self.sense[12], self.sense[13]))
    }
}

/// A virtio-scsi device with a test driver on the other side: control queue, event queue
/// and one request queue.
pub struct Harness {
    /// Guest memory.
    pub mem: Arc<GuestMemory>,
    /// The device's shared state.
    pub shared: Arc<ScsiShared>,
    /// (driver ring, device queue, handler) for control, event, request.
    pub queues: Vec<(MockRing, Queue, QueueHandler)>,
    data_next: u64,
    /// Notifications the handlers asked for.
    pub notifications: u32,
}

impl Harness {
    /// A live device with `opts` and every offered feature (or `features`).
    pub fn new(opts: ScsiOptions, features: Option<u64>) -> Harness {
        let shared = ScsiShared::new(opts).expect("valid options");
        Self::over(shared, features)
    }

    /// A live device over existing shared state.
    pub fn over(shared: Arc<ScsiShared>, features: Option<u64>) -> Harness {
        let features = features.unwrap_or_else(|| shared.features()) | COMMON_FEATURES;
        let mem = Arc::new(anonymous(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory"));
        let queues = (0..3u16)
            .map(|i| {
                let ring = MockRing::new(&mem, u64::from(i) * RING_AREA);
                let q = ring.device_queue(features & RING_EVENT_IDX != 0);
                let h = QueueHandler::new(shared.clone(), i, features);
                (ring, q, h)
            })
            .collect();
        shared.set_live(Some(features));
        Harness {
            mem,
            shared,
            queues,
            data_next: DATA_START,
            notifications: 0,
        }
    }

    /// Allocates `len` bytes of guest memory (wraps around when exhausted).
    pub fn alloc(&mut self, len: u64) -> u64 {
        let len = len.max(1);
        if self.data_next + len > MEM_SIZE as u64 {
            self.data_next = DATA_START;
        }
        let a = self.data_next;
        self.data_next = (self.data_next + len + 63) & !63;
        a
    }

    /// Copies `data` into fresh guest memory; returns its address.
    pub fn put(&mut self, data: &[u8]) -> u64 {
        let a = self.alloc(data.len() as u64);
        self.mem
            .write_slice(data, GuestAddress(a))
            .expect("guest write");
        a
    }

    /// Reads guest memory.
    pub fn get(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.mem
            .read_slice(&mut b, GuestAddress(addr))
            .expect("guest read");
        b
    }

    /// Publishes a chain on queue `q` without running the device; returns the head.
    pub fn push(&mut self, q: u16, descs: &[Desc]) -> u16 {
        let mem = self.mem.clone();
        self.queues[usize::from(q)].0.push_chain(&mem, descs)
    }

    /// Runs queue `q`'s handler once.
    pub fn run(&mut self, q: u16) -> crate::Result<()> {
        let (_, queue, h) = &mut self.queues[usize::from(q)];
        if h.process_queue(queue, &self.mem)? {
            self.notifications += 1;
        }
        Ok(())
    }

    /// Used entries of queue `q` since the last call.
    pub fn take_used(&mut self, q: u16) -> Vec<(u32, u32)> {
        let mem = self.mem.clone();
        self.queues[usize::from(q)].0.take_used(&mem)
    }

    /// The request header + CDB bytes for `addr`.
    pub fn header(&self, lun: [u8; 8], tag: u64, cdb: &[u8]) -> Vec<u8> {
        let cdb_size = self.shared.cdb_size() as usize;
        let mut b = vec![0u8; CMD_REQ_HEADER + cdb_size];
        b[..8].copy_from_slice(&lun);
        b[8..16].copy_from_slice(&tag.to_le_bytes());
        let n = cdb.len().min(cdb_size);
        b[CMD_REQ_HEADER..CMD_REQ_HEADER + n].copy_from_slice(&cdb[..n]);
        b
    }

    /// Sends one command the way Linux lays it out (request, data-out, response, data-in
    /// descriptors) and runs the request queue.
    pub fn command(
        &mut self,
        addr: LunAddr,
        cdb: &[u8],
        data_out: &[u8],
        data_in_len: usize,
    ) -> CmdResult {
        self.command_lun(addr.encode(), 0, cdb, data_out, data_in_len)
    }

    /// Like [`Harness::command`] with a raw LUN field and tag.
    pub fn command_lun(
        &mut self,
        lun: [u8; 8],
        tag: u64,
        cdb: &[u8],
        data_out: &[u8],
        data_in_len: usize,
    ) -> CmdResult {
        let hdr = self.header(lun, tag, cdb);
        let h = self.put(&hdr);
        let resp_len = CMD_RESP_HEADER + self.shared.sense_size() as usize;
        let resp = self.alloc(resp_len as u64);
        self.mem
            .write_slice(&vec![0xa5; resp_len], GuestAddress(resp))
            .expect("response poison");
        let mut descs = vec![Desc {
            addr: h,
            len: hdr.len() as u32,
            write: false,
        }];
        if !data_out.is_empty() {
            let a = self.put(data_out);
            descs.push(Desc {
                addr: a,
                len: data_out.len() as u32,
                write: false,
            });
        }
        descs.push(Desc {
            addr: resp,
            len: resp_len as u32,
            write: true,
        });
        let din = self.alloc(data_in_len as u64);
        if data_in_len > 0 {
            descs.push(Desc {
                addr: din,
                len: data_in_len as u32,
                write: true,
            });
        }
        let head = self.push(queue::FIRST_REQUEST, &descs);
        self.run(queue::FIRST_REQUEST).expect("request queue");
        let used = self.take_used(queue::FIRST_REQUEST);
        let used_len = used
            .iter()
            .find(|(id, _)| *id == u32::from(head))
            .map(|u| u.1)
            .expect("the command completed");
        let r = self.get(resp, resp_len);
        let le = |i: usize| u32::from_le_bytes([r[i], r[i + 1], r[i + 2], r[i + 3]]);
        let sense_len = (le(0) as usize).min(resp_len - CMD_RESP_HEADER);
        CmdResult {
            response: r[11],
            status: r[10],
            sense: r[CMD_RESP_HEADER..CMD_RESP_HEADER + sense_len].to_vec(),
            resid: le(4),
            data: self.get(din, data_in_len),
            used_len,
        }
    }

    /// Sends a task management function; returns its response code.
    pub fn tmf(&mut self, subtype: u32, lun: [u8; 8], tag: u64) -> u8 {
        let mut req = Vec::with_capacity(24);
        req.extend_from_slice(&ctrl::TMF.to_le_bytes());
        req.extend_from_slice(&subtype.to_le_bytes());
        req.extend_from_slice(&lun);
        req.extend_from_slice(&tag.to_le_bytes());
        let a = self.put(&req);
        let resp = self.put(&[0xff]);
        self.push(
            queue::CONTROL,
            &[
                Desc {
                    addr: a,
                    len: 24,
                    write: false,
                },
                Desc {
                    addr: resp,
                    len: 1,
                    write: true,
                },
            ],
        );
        self.run(queue::CONTROL).expect("control queue");
        self.take_used(queue::CONTROL);
        self.get(resp, 1)[0]
    }

    /// Sends AN_QUERY (`subscribe` false) or AN_SUBSCRIBE; returns (event_actual, response).
    pub fn an(&mut self, subscribe: bool, lun: [u8; 8], requested: u32) -> (u32, u8) {
        let kind = if subscribe {
            ctrl::AN_SUBSCRIBE
        } else {
            ctrl::AN_QUERY
        };
        let mut req = Vec::with_capacity(16);
        req.extend_from_slice(&kind.to_le_bytes());
        req.extend_from_slice(&lun);
        req.extend_from_slice(&requested.to_le_bytes());
        let a = self.put(&req);
        let resp = self.put(&[0xff; 5]);
        self.push(
            queue::CONTROL,
            &[
                Desc {
                    addr: a,
                    len: 16,
                    write: false,
                },
                Desc {
                    addr: resp,
                    len: 5,
                    write: true,
                },
            ],
        );
        self.run(queue::CONTROL).expect("control queue");
        self.take_used(queue::CONTROL);
        let r = self.get(resp, 5);
        (u32::from_le_bytes([r[0], r[1], r[2], r[3]]), r[4])
    }

    /// Posts `n` event buffers; returns their addresses.
    pub fn post_event_buffers(&mut self, n: usize) -> Vec<u64> {
        (0..n)
            .map(|_| {
                let a = self.alloc(event::SIZE as u64);
                self.push(
                    queue::EVENT,
                    &[Desc {
                        addr: a,
                        len: event::SIZE as u32,
                        write: true,
                    }],
                );
                a
            })
            .collect()
    }

    /// Runs the event queue and returns the events written since the last call, as
    /// (event, lun, reason), given the buffer addresses in posting order.
    pub fn take_events(&mut self, buffers: &mut Vec<u64>) -> Vec<(u32, [u8; 8], u32)> {
        self.run(queue::EVENT).expect("event queue");
        let used = self.take_used(queue::EVENT);
        used.iter()
            .map(|_| {
                let a = buffers.remove(0);
                let b = self.get(a, event::SIZE);
                (
                    u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                    b[4..12].try_into().expect("8 bytes"),
                    u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
                )
            })
            .collect()
    }
}
