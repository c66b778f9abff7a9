//! The virtio-blk fuzz driver: device setup, driver operations and the checks of each run.

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use vm_memory::{Bytes, GuestAddress};
use vstor_blockdev::memory::{MemoryDev, MemoryOptions};
use vstor_blockdev::BlockDev;
use vstor_virtio_core::features::{RING_EVENT_IDX, RING_INDIRECT_DESC};
use vstor_virtio_core::virtio_queue::QueueT;
use vstor_virtio_core::GuestMemory;

use super::expect::Model;
use super::{overlaps, ref_walk, Input, RefChain, RefMem, F_INDIRECT, F_NEXT, F_WRITE};
use crate::config::{BlkOptions, ID_BYTES};
use crate::error::Error;
use crate::handler::BlkQueueHandler;
use crate::mock::{Harness, MEM_SIZE, QUEUE_SIZE};

/// Size of the memory device behind the queue.
pub(super) const DEV_SIZE: u64 = 1 << 20;
/// Guest window that most fuzzer addresses point into.
const WIN: u64 = 0x10_0000;
/// Bytes of the window compared before and after each run.
const WIN_CHECKED: u64 = 0x4_0000;
/// Where the request builder allocates buffers (inside the window).
const BUMP: std::ops::Range<u64> = WIN + 0x1_0000..WIN + 0x3_8000;
/// Where the used ring goes (see [`BlkFuzzer::new`]).
const USED_RING: u64 = 0x2000;
/// Indirect tables the fuzzer can fill.
const IND: u64 = 0x8_0000;
const TABLES: u64 = 8;
const TABLE_ENTRIES: u64 = 64;
/// The last bytes of guest memory (buffers straddling its end), also compared.
const TAIL: u64 = 0x1_0000;
/// Operations taken from one input at most.
const MAX_OPS: usize = 512;

/// Guest memory of the harness: one region from 0 to [`MEM_SIZE`].
pub(super) struct FlatMem<'a>(&'a GuestMemory);

impl RefMem for FlatMem<'_> {
    fn valid(&self, addr: u64, len: u64) -> bool {
        addr.checked_add(len)
            .is_some_and(|end| end <= MEM_SIZE as u64)
    }
    fn desc(&self, addr: u64) -> Option<[u8; 16]> {
        let mut b = [0u8; 16];
        self.valid(addr, 16).then_some(())?;
        self.0.read_slice(&mut b, GuestAddress(addr)).ok()?;
        Some(b)
    }
}

/// The initial content of a writable memory device: every sector different.
fn pattern() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        (0..DEV_SIZE)
            .map(|o| ((o >> 9) as u8).wrapping_mul(31) ^ (o as u8) ^ ((o >> 17) as u8))
            .collect()
    })
}

/// (logical block size, read-only).
type DevKey = (u32, bool);

thread_local! {
    /// Memory devices by (logical block size, read-only), reused across inputs: a fresh 1 MiB
    /// device per input costs more in page faults than the whole request path.
    static DEVICES: RefCell<Vec<(DevKey, Arc<MemoryDev>)>> = const { RefCell::new(Vec::new()) };
    /// Snapshot buffers, reused for the same reason.
    static BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A memory device in its initial state: the pattern if writable, zeroes if read-only.
fn memory_device(opts: MemoryOptions) -> Arc<MemoryDev> {
    let key = (opts.logical_block_size, opts.read_only);
    let dev = DEVICES.with(|d| {
        let mut d = d.borrow_mut();
        if let Some((_, dev)) = d.iter().find(|(k, _)| *k == key) {
            return dev.clone();
        }
        let dev = Arc::new(MemoryDev::new(DEV_SIZE, opts).expect("memory device"));
        d.push((key, dev.clone()));
        dev
    });
    if !opts.read_only {
        dev.write_at(pattern(), 0).expect("fill");
    }
    dev
}

/// A buffer of `len` bytes (content unspecified: callers overwrite it), recycled when possible.
fn buffer(len: usize) -> Vec<u8> {
    BUFFERS
        .with(|b| {
            let mut b = b.borrow_mut();
            let i = b.iter().position(|v| v.len() == len)?;
            Some(b.swap_remove(i))
        })
        .unwrap_or_else(|| vec![0; len])
}

fn recycle(v: Vec<u8>) {
    BUFFERS.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < 16 {
            b.push(v);
        }
    });
}

/// What one [`blk_request`] call exercised (for tests that check the checks are reached).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Queue runs.
    pub runs: u32,
    /// Runs predicted completely (no writable buffer overlapping what the device reads).
    pub strict_runs: u32,
    /// Requests whose status and effect were checked against the model.
    pub requests_checked: u32,
    /// Of those, requests that succeeded.
    pub requests_ok: u32,
    /// Runs that ended with the queue needing a reset.
    pub needs_reset: u32,
}

pub(super) struct BlkFuzzer {
    pub(super) h: Harness,
    pub(super) dev: Arc<MemoryDev>,
    pub(super) indirect: bool,
    pub(super) event_idx: bool,
    pub(super) bump: u64,
    /// Used-ring entries already read.
    pub(super) used_seen: u16,
    pub(super) stats: Stats,
}

/// Runs one fuzz input against a virtio-blk queue and checks the invariants listed in the
/// module documentation; panics when one fails. The first three bytes choose the device
/// (read-only, 4 KiB blocks, negotiated ring features, cache mode, offered commands, serial,
/// segment limit); the rest is a list of driver operations.
pub fn blk_request(data: &[u8]) -> Stats {
    let mut input = Input::new(data);
    let mut f = BlkFuzzer::new(&mut input);
    let mut ops = 0;
    while !input.is_empty() && ops < MAX_OPS {
        f.op(&mut input);
        ops += 1;
    }
    f.run();
    f.stats
}

impl BlkFuzzer {
    fn new(input: &mut Input<'_>) -> Self {
        let (b0, b1, b2) = (input.u8(), input.u8(), input.u8());
        let dev_ro = b0 & 1 != 0;
        let mopts = MemoryOptions {
            logical_block_size: if b0 & 4 != 0 { 4096 } else { 512 },
            read_only: dev_ro,
        };
        let dev = memory_device(mopts);
        let opts = BlkOptions {
            serial: "fuzz-serial-01234567"[..usize::from(b1 & 0x1f) % (ID_BYTES + 1)].into(),
            read_only: b0 & 2 != 0,
            writeback: (b0 & 32 != 0).then_some(false),
            discard: b0 & 64 == 0,
            write_zeroes: b1 & 0x20 == 0,
            secure_erase: b0 & 128 == 0,
            max_discard_seg: [32, 1, 2, 4, 256][usize::from(b2 % 5)],
            ..BlkOptions::default()
        };
        let mut h = Harness::new(dev.clone(), opts);
        let (indirect, event_idx) = (b0 & 8 == 0, b0 & 16 == 0);
        let mut acked = h.shared.features();
        if !indirect {
            acked &= !RING_INDIRECT_DESC;
        }
        if !event_idx {
            acked &= !RING_EVENT_IDX;
        }
        h.handler = BlkQueueHandler::new(h.shared.clone(), 0, acked).expect("handler");
        h.queue.set_event_idx(event_idx);
        // virtio-queue 0.18's `MockSplitQueue::create` ends the available ring after `size`
        // bytes instead of `4 + 2 * size + 2` (rust-vmm/vm-virtio#400), so the harness's used
        // ring overlaps available-ring slots 128..=255 and `used_event`. Move it past both.
        h.queue
            .try_set_used_ring_address(GuestAddress(USED_RING))
            .expect("aligned used ring");
        BlkFuzzer {
            h,
            dev,
            indirect,
            event_idx,
            bump: BUMP.start,
            used_seen: 0,
            stats: Stats::default(),
        }
    }

    fn table(t: u8) -> u64 {
        IND + u64::from(t) % TABLES * TABLE_ENTRIES * 16
    }

    fn addr(input: &mut Input<'_>) -> u64 {
        match input.u8() % 8 {
            0..=3 => WIN + u64::from(input.u16()),
            4 => MEM_SIZE as u64 - u64::from(input.u16()),
            5 => Self::table(input.u8()) + u64::from(input.u8()) % TABLE_ENTRIES * 16,
            6 => u64::from(input.u16() & 0x1fff),
            _ => input.u64(),
        }
    }

    fn len(input: &mut Input<'_>) -> u32 {
        match input.u8() % 5 {
            0 => u32::from(input.u8()),
            1 => u32::from(input.u16()),
            2 => 512 * u32::from(input.u8()),
            3 => 16 * (u32::from(input.u8()) % TABLE_ENTRIES as u32 + 1),
            _ => input.u32(),
        }
    }

    fn flags(input: &mut Input<'_>) -> u16 {
        let b = input.u8();
        if b & 0x80 != 0 {
            input.u16()
        } else {
            u16::from(b & 7)
        }
    }

    fn next(input: &mut Input<'_>) -> u16 {
        match input.u8() {
            b @ 0..=0xef => u16::from(b),
            _ => input.u16(),
        }
    }

    fn request_type(input: &mut Input<'_>) -> u32 {
        match input.u8() % 10 {
            k @ 0..=7 => [0, 1, 4, 8, 10, 11, 13, 14][usize::from(k)],
            8 => u32::from(input.u8()),
            _ => input.u32(),
        }
    }

    fn sector(input: &mut Input<'_>) -> u64 {
        let sectors = DEV_SIZE >> 9;
        match input.u8() % 4 {
            0 => u64::from(input.u8()),
            1 => sectors.wrapping_sub(u64::from(input.u8())),
            2 => u64::from(input.u16()),
            _ => input.u64(),
        }
    }

    fn segments(input: &mut Input<'_>, count: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(count * 16);
        for _ in 0..count {
            out.extend_from_slice(&Self::sector(input).to_le_bytes());
            let n = match input.u8() % 3 {
                0 => u32::from(input.u8()),
                1 => 8 * u32::from(input.u8()),
                _ => input.u32(),
            };
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&u32::from(input.u8() % 4).to_le_bytes());
        }
        out
    }

    fn alloc(&mut self, len: u64) -> u64 {
        if self.bump + len > BUMP.end {
            self.bump = BUMP.start;
        }
        let a = self.bump;
        self.bump = (self.bump + len + 7) & !7;
        a
    }

    fn write(&self, addr: u64, bytes: &[u8]) {
        self.h
            .mem
            .write_slice(bytes, GuestAddress(addr))
            .expect("fuzzer write inside memory");
    }

    fn op(&mut self, input: &mut Input<'_>) {
        match input.u8() % 10 {
            0 => {
                let i = u16::from(input.u8());
                let (a, l, fl, n) = (
                    Self::addr(input),
                    Self::len(input),
                    Self::flags(input),
                    Self::next(input),
                );
                self.h.write_desc(i, a, l, fl, n);
            }
            1 => {
                let (t, i) = (Self::table(input.u8()), input.u8());
                let (a, l, fl, n) = (
                    Self::addr(input),
                    Self::len(input),
                    Self::flags(input),
                    Self::next(input),
                );
                let i = u16::from(i) % TABLE_ENTRIES as u16;
                self.h.write_desc_at(t, i, a, l, fl, n);
            }
            2 => {
                let at = match input.u8() % 3 {
                    0 => WIN + u64::from(input.u16()),
                    1 => IND + u64::from(input.u16()) % (TABLES * TABLE_ENTRIES * 16),
                    _ => MEM_SIZE as u64 - TAIL + u64::from(input.u16()) % (TAIL - 256),
                };
                let n = usize::from(input.u8());
                let bytes = input.bytes(n).to_vec();
                self.write(at, &bytes);
            }
            3 => {
                let at = WIN + u64::from(input.u16());
                let ty = Self::request_type(input);
                let sector = Self::sector(input);
                let mut hdr = [0u8; 16];
                hdr[0..4].copy_from_slice(&ty.to_le_bytes());
                hdr[8..16].copy_from_slice(&sector.to_le_bytes());
                self.write(at, &hdr);
            }
            4 => {
                let at = WIN + u64::from(input.u16());
                let count = usize::from(input.u8() % 8) + 1;
                let segs = Self::segments(input, count);
                self.write(at, &segs);
            }
            5 => self.h.publish(u16::from(input.u8())),
            6 => self.run(),
            7 => {
                let avail = self.h.queue.avail_ring();
                let v = input.u16();
                match input.u8() % 3 {
                    0 => self.write(avail + 2, &v.to_le_bytes()),
                    1 => self.write(avail, &v.to_le_bytes()),
                    _ => self.write(avail + 4 + 2 * u64::from(QUEUE_SIZE), &v.to_le_bytes()),
                }
            }
            8 => self.build(input),
            _ => self.h.publish(input.u16()),
        }
    }

    /// Builds a well-formed request in one of several layouts and publishes it.
    fn build(&mut self, input: &mut Input<'_>) {
        let start = u16::from(input.u8());
        let layout = input.u8();
        let ty = Self::request_type(input);
        let sector = Self::sector(input);
        let n = input.u8();
        let data_len = match n % 4 {
            0 => 0,
            1 => 512 * (u64::from(n / 4) % 8 + 1),
            2 => u64::from(n / 4),
            _ => 4096 * (u64::from(n / 4) % 4 + 1),
        };
        let mut readable = vec![0u8; 16];
        readable[0..4].copy_from_slice(&ty.to_le_bytes());
        readable[8..16].copy_from_slice(&sector.to_le_bytes());
        let mut in_len = 0;
        match ty {
            1 => readable.extend((0..data_len).map(|i| (i as u8).wrapping_mul(7) ^ n)),
            11 | 13 | 14 => {
                let count = usize::from(n % 4) + 1;
                readable.extend(Self::segments(input, count));
            }
            _ => in_len = data_len,
        }
        let r = self.alloc(readable.len() as u64);
        self.write(r, &readable);
        let w = self.alloc(in_len + 1);
        let mut descs: Vec<(u64, u32, u16)> = Vec::new();
        let rlen = readable.len() as u32;
        if layout & 1 != 0 {
            let k = 1 + u32::from(input.u8()) % (rlen - 1);
            descs.extend([(r, k, 0), (r + u64::from(k), rlen - k, 0)]);
        } else if layout & 8 != 0 && rlen > 16 {
            descs.extend([(r, 16, 0), (r + 16, rlen - 16, 0)]);
        } else {
            descs.push((r, rlen, 0));
        }
        if layout & 2 != 0 {
            descs.push((w, in_len as u32 + 1, F_WRITE));
        } else {
            if in_len > 0 {
                descs.push((w, in_len as u32, F_WRITE));
            }
            descs.push((w + in_len, 1, F_WRITE));
        }
        let last = descs.len() - 1;
        let flags = |i: usize, f: u16| if i == last { f } else { f | F_NEXT };
        if layout & 4 != 0 {
            let t = Self::table(input.u8());
            for (i, &(a, l, f)) in descs.iter().enumerate() {
                self.h
                    .write_desc_at(t, i as u16, a, l, flags(i, f), i as u16 + 1);
            }
            self.h
                .write_desc(start, t, 16 * descs.len() as u32, F_INDIRECT, 0);
        } else {
            for (i, &(a, l, f)) in descs.iter().enumerate() {
                let idx = start.wrapping_add(i as u16) % QUEUE_SIZE;
                self.h
                    .write_desc(idx, a, l, flags(i, f), (idx + 1) % QUEUE_SIZE);
            }
        }
        self.h.publish(start);
    }

    /// Used-ring entries added since the last call: (id, len).
    fn take_used(&mut self) -> Vec<(u32, u32)> {
        let mem = &self.h.mem;
        let idx: u16 = mem.read_obj(GuestAddress(USED_RING + 2)).expect("used idx");
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = USED_RING + 4 + u64::from(self.used_seen % QUEUE_SIZE) * 8;
            let id: u32 = mem.read_obj(GuestAddress(slot)).expect("used id");
            let len: u32 = mem.read_obj(GuestAddress(slot + 4)).expect("used len");
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    fn device(&self) -> Vec<u8> {
        let mut v = buffer(DEV_SIZE as usize);
        self.dev.read_at(&mut v, 0).expect("device snapshot");
        v
    }

    /// Runs the queue and checks what it did.
    fn run(&mut self) {
        self.stats.runs += 1;
        let mem = self.h.mem.clone();
        let q = &self.h.queue;
        let (desc, avail, used) = (q.desc_table(), q.avail_ring(), q.used_ring());
        debug_assert_eq!(used, USED_RING);
        let qs = u64::from(QUEUE_SIZE);
        let used_area = (used, used + 4 + 8 * qs + 2);
        let (n0, u0) = (q.next_avail(), q.next_used());
        let broken = self.h.handler.is_broken();
        let notes0 = self.h.notifications;
        let avail_idx: u16 = mem.read_obj(GuestAddress(avail + 2)).expect("avail idx");
        let pending = avail_idx.wrapping_sub(n0);
        let bogus = pending > QUEUE_SIZE;

        // The oracle: walk every published chain up to the first one that must stop the queue.
        let mut plan = Vec::new();
        let mut failed: Option<RefChain> = None;
        if !broken && !bogus {
            for k in 0..pending {
                let slot = avail + 4 + u64::from(n0.wrapping_add(k) % QUEUE_SIZE) * 2;
                let head: u16 = mem.read_obj(GuestAddress(slot)).expect("avail ring");
                match ref_walk(&FlatMem(&mem), desc, QUEUE_SIZE, head, self.indirect) {
                    Ok(c) if c.wlen > 0 => plan.push(c),
                    Ok(c) | Err(c) => {
                        failed = Some(c);
                        break;
                    }
                }
            }
        }
        let strict = !broken && !bogus && Self::predictable(&plan, &failed, used_area);
        let checked: Vec<(u64, Vec<u8>)> = if strict {
            [
                (0, used_area.1),
                (IND, TABLES * TABLE_ENTRIES * 16),
                (WIN, WIN_CHECKED),
                (MEM_SIZE as u64 - TAIL, TAIL),
            ]
            .into_iter()
            .map(|(a, l)| {
                let mut b = buffer(l as usize);
                mem.read_slice(&mut b, GuestAddress(a)).expect("snapshot");
                (a, b)
            })
            .collect()
        } else {
            Vec::new()
        };
        let dev_before = strict.then(|| self.device());

        let res = self.h.run();
        let completed = self.take_used();
        let (n1, u1) = (self.h.queue.next_avail(), self.h.queue.next_used());
        let consumed = usize::from(n1.wrapping_sub(n0));

        assert_eq!(
            usize::from(u1.wrapping_sub(u0)),
            completed.len(),
            "used index moved by a different count than entries read"
        );
        match &res {
            Ok(()) => assert_eq!(self.h.handler.is_broken(), broken, "broken without Err"),
            Err(Error::NeedsReset { .. }) => {
                assert!(
                    self.h.handler.is_broken(),
                    "NeedsReset but queue not broken"
                );
                self.stats.needs_reset += 1;
            }
            Err(e) => panic!("handler failed with something other than NeedsReset: {e:?}"),
        }
        if self.h.shared.read_only() {
            let now = self.device();
            let initial = self.dev.info().read_only;
            let same = if initial {
                static ZEROES: OnceLock<Vec<u8>> = OnceLock::new();
                now == *ZEROES.get_or_init(|| vec![0; DEV_SIZE as usize])
            } else {
                now == pattern()
            };
            assert!(same, "read-only device modified");
            recycle(now);
        }
        if broken || bogus {
            assert_eq!(
                res.is_ok(),
                broken,
                "bogus avail index {avail_idx} not fatal"
            );
            assert_eq!(consumed, 0, "chains taken from a stopped queue");
            assert!(completed.is_empty(), "completions from a stopped queue");
            return;
        }
        if !strict {
            // Guest buffers overlap what the device reads: only bookkeeping is predictable.
            let stopped = usize::from(res.is_err());
            assert!(
                completed.len() + stopped == consumed || completed.len() == consumed,
                "{consumed} chains taken but {} completed ({res:?})",
                completed.len()
            );
            return;
        }
        self.stats.strict_runs += 1;
        match &failed {
            Some(c) => {
                assert!(
                    res.is_err(),
                    "chain {} is malformed or has no status byte but the queue went on",
                    c.head
                );
                assert_eq!(consumed, plan.len() + 1, "chains taken");
            }
            None => {
                assert!(res.is_ok(), "well-formed chains stopped the queue: {res:?}");
                assert_eq!(consumed, usize::from(pending), "published chains left");
            }
        }
        let heads: Vec<u32> = plan.iter().map(|c| u32::from(c.head)).collect();
        let ids: Vec<u32> = completed.iter().map(|u| u.0).collect();
        assert_eq!(ids, heads, "used ids differ from the published heads");

        let mut model = Model {
            data: dev_before.expect("strict runs take a snapshot"),
            unknown: vec![false; (DEV_SIZE >> 9) as usize],
        };
        for (c, &(_, len)) in plan.iter().zip(&completed) {
            self.check_request(&mem, c, len, &mut model);
        }
        let dev_after = self.device();
        model.compare(&dev_after);
        recycle(dev_after);
        recycle(model.data);

        let mut allowed: Vec<(u64, u64)> = plan
            .iter()
            .flat_map(|c| c.writable.iter().map(|&(a, l)| (a, a + u64::from(l))))
            .chain([used_area])
            .collect();
        allowed.sort_unstable();
        for (start, before) in checked {
            let mut after = buffer(before.len());
            mem.read_slice(&mut after, GuestAddress(start))
                .expect("snapshot");
            for (k, (b, a)) in before.chunks(64).zip(after.chunks(64)).enumerate() {
                if b == a {
                    continue;
                }
                for i in (0..b.len()).filter(|&i| b[i] != a[i]) {
                    let addr = start + (k * 64 + i) as u64;
                    if !overlaps(&allowed, &[(addr, addr + 1)]) {
                        panic!("guest byte {addr:#x} outside the writable buffers changed");
                    }
                }
            }
            recycle(before);
            recycle(after);
        }
        if res.is_ok() {
            let notified = self.h.notifications - notes0;
            let expected = if completed.is_empty() {
                false
            } else if self.event_idx {
                let at = avail + 4 + 2 * qs;
                let used_event: u16 = mem.read_obj(GuestAddress(at)).expect("used_event");
                u1.wrapping_sub(used_event).wrapping_sub(1) < u1.wrapping_sub(u0)
            } else {
                true
            };
            assert_eq!(notified, u32::from(expected), "notification");
            if self.event_idx {
                let at = used + 4 + 8 * qs;
                let avail_event: u16 = mem.read_obj(GuestAddress(at)).expect("avail_event");
                assert_eq!(avail_event, n1, "avail_event after the run");
            }
        }
    }

    /// Whether the oracle's prediction holds for the whole run: no device-writable buffer
    /// overlaps another one or anything the device reads, and nothing the device reads lies in
    /// the used ring (which the device itself changes).
    fn predictable(plan: &[RefChain], failed: &Option<RefChain>, used: (u64, u64)) -> bool {
        let span = |&(a, l): &(u64, u32)| (a, a + u64::from(l));
        let mut writable: Vec<(u64, u64)> = plan
            .iter()
            .flat_map(|c| c.writable.iter().map(span))
            .collect();
        writable.sort_unstable();
        if writable.windows(2).any(|w| w[0].1 > w[1].0) {
            return false;
        }
        let read: Vec<(u64, u64)> = plan
            .iter()
            .chain(failed)
            .flat_map(|c| {
                let tables = c.tables.iter().map(|&(a, l)| (a, a + l));
                tables.chain(c.readable.iter().map(span))
            })
            .collect();
        if overlaps(&[used], &read) {
            return false;
        }
        !overlaps(&writable, &read) && !overlaps(&writable, &[(0, used.1)])
    }
}
