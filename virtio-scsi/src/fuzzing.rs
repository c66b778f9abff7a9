//! The fuzz entry point of the virtio-scsi request path, shared by the cargo-fuzz target
//! `virtio_scsi_request` (in `fuzz/`) and `cargo test` (`tests/fuzz_corpus.rs`).
//!
//! [`scsi_request`] lets arbitrary bytes play a hostile driver against a device with a few
//! logical units on small memory devices (a writable disk, a read-only disk, a disk with 4 KiB
//! blocks, a CD-ROM): descriptor tables and chains of the control, event and request queues in
//! any layout (split headers, zero-length and wrongly directed buffers, indirect tables, loops,
//! addresses outside guest memory), raw available-ring writes, LUN fields, CDBs (biased towards
//! READ / WRITE / INQUIRY / REPORT LUNS / UNMAP / WRITE SAME / COMPARE AND WRITE / PERSISTENT
//! RESERVE IN and OUT and the rest of the disk's opcode table), task management functions and
//! asynchronous notification requests, `sense_size` / `cdb_size` configuration writes, and
//! hotplug (attach, detach, medium replacement) between queue runs.
//!
//! Checks, after each run of a queue (panicking with the invariant's name):
//! - no panic; the handler returns `Ok`, or `Err(NeedsReset)` / `Err(Queue)`, and a queue that
//!   returned an error stays quiet until reset: later runs take no chain, add no used entry and
//!   ask for no notification;
//! - the used index moves by the number of entries read; no more entries than chains taken;
//! - when no device-writable buffer of the pending chains overlaps another one, anything the
//!   device reads (rings, descriptor and indirect tables, readable buffers), the run is predicted
//!   by an independent chain walk: the used ids are the published heads in order, the queue
//!   stops exactly at the first chain it cannot answer, every used length lies within the
//!   chain's writable bytes and matches the response written: a command response has a known
//!   response code (the one the request's shape calls for: FAILURE for short buffers or a
//!   bidirectional request without VIRTIO_SCSI_F_INOUT, OVERRUN above `max_sectors`,
//!   BAD_TARGET for an unknown address, else OK), `sense_len <= sense_size`, sense only with
//!   CHECK CONDITION and in a SCSI format, a known status, a residual consistent with the used
//!   length; a GOOD READ(10)/READ(16) returns the medium's bytes; TMF, AN and event responses
//!   carry codes and events the spec defines;
//! - a medium changes only through a command addressed to its unit that the device answered
//!   with OK / GOOD and whose opcode writes (checked in predictable runs), and the media of the
//!   read-only disk and of the CD-ROM never change (checked always);
//! - `sense_size` and `cdb_size` stay within what the device can hold after any configuration
//!   write, and read back as stored.
//!
//! Everything is deterministic and bounded: commands execute synchronously on memory devices,
//! and the task set is empty between runs, so task management functions never wait.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};
use vstor_blockdev::memory::{MemoryDev, MemoryOptions};
use vstor_blockdev::BlockDev;
use vstor_scsi_disk::{status, table, LogicalUnit, LunKind, LunOptions};
use vstor_virtio_core::features::{COMMON_FEATURES, RING_EVENT_IDX, RING_INDIRECT_DESC};
use vstor_virtio_core::virtio_queue::QueueT;
use vstor_virtio_core::GuestMemory;

use crate::device::QueueHandler;
use crate::error::Error;
use crate::lun_addr::LunAddr;
use crate::mock::{Harness, MEM_SIZE, QUEUE_SIZE};
use crate::protocol::{
    an, ctrl, event, feature, queue, response, CMD_REQ_HEADER, CMD_RESP_HEADER, MAX_CDB_SIZE,
    MAX_SENSE_SIZE,
};
use crate::{ScsiOptions, ScsiShared};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// Bytes of every medium (small: media are snapshotted around every run).
const DEV_SIZE: u64 = 64 << 10;
/// `max_sectors` of the device: 32 KiB transfers, so OVERRUN is reachable.
const MAX_SECTORS: u32 = 64;
/// Everything below this address is rings (3 queues × 16 KiB) or indirect tables.
const LOW: u64 = 0x10_0000;
/// Indirect tables the fuzzer fills.
const IND: u64 = 0x8_0000;
const TABLES: u64 = 8;
const TABLE_ENTRIES: u64 = 64;
/// Guest window most fuzzer addresses point into.
const WIN: u64 = 0x10_0000;
/// Where request buffers are allocated (inside the window).
const BUMP: std::ops::Range<u64> = WIN + 0x1_0000..WIN + 0x8_0000;
/// Operations taken from one input at most.
const MAX_OPS: usize = 256;
/// Data-in / data-out lengths the builder uses at most.
const MAX_DATA: u32 = 40 << 10;

/// A cursor over fuzz input that yields zeroes once exhausted.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }
}

/// A chain as the reference walker sees it.
#[derive(Debug, Default, Clone)]
struct RefChain {
    head: u16,
    readable: Vec<(u64, u32)>,
    writable: Vec<(u64, u32)>,
    tables: Vec<(u64, u64)>,
    rlen: u64,
    wlen: u64,
}

fn valid(addr: u64, len: u64) -> bool {
    addr.checked_add(len).is_some_and(|e| e <= MEM_SIZE as u64)
}

/// An independent reading of VIRTIO 1.2 §2.7.5 with vstor's policy (the one virtio-blk's fuzz
/// oracle uses): at most as many descriptors per table as it has entries, indirect tables not
/// nested, not with NEXT, a non-zero multiple of 16 bytes of at most queue-size entries,
/// zero-length buffers skipped, readable before writable, below 4 GiB in total. `Err` carries
/// what was walked before the fault.
fn ref_walk(
    mem: &GuestMemory,
    table: u64,
    head: u16,
    indirect: bool,
) -> Result<RefChain, RefChain> {
    let mut c = RefChain {
        head,
        ..RefChain::default()
    };
    let (mut base, mut entries, mut nested) = (table, u64::from(QUEUE_SIZE), false);
    let (mut i, mut seen) = (u64::from(head), 0u64);
    loop {
        if i >= entries || seen == entries {
            return Err(c);
        }
        seen += 1;
        let at = base + i * 16;
        if !valid(at, 16) {
            return Err(c);
        }
        let mut raw = [0u8; 16];
        mem.read_slice(&mut raw, GuestAddress(at)).expect("valid");
        let addr = u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes"));
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        let next = u16::from_le_bytes([raw[14], raw[15]]);
        let len64 = u64::from(len);
        if flags & F_INDIRECT != 0 {
            if !indirect || nested || flags & F_NEXT != 0 || len == 0 || len % 16 != 0 {
                return Err(c);
            }
            if len64 / 16 > u64::from(QUEUE_SIZE) || !valid(addr, len64) {
                return Err(c);
            }
            c.tables.push((addr, len64));
            (base, entries, nested, i, seen) = (addr, len64 / 16, true, 0, 0);
            continue;
        }
        if len > 0 {
            if !valid(addr, len64) {
                return Err(c);
            }
            if flags & F_WRITE != 0 {
                c.writable.push((addr, len));
                c.wlen += len64;
            } else if c.writable.is_empty() {
                c.readable.push((addr, len));
                c.rlen += len64;
            } else {
                return Err(c);
            }
            if c.rlen + c.wlen > u64::from(u32::MAX) {
                return Err(c);
            }
        }
        if flags & F_NEXT == 0 {
            return Ok(c);
        }
        i = u64::from(next);
    }
}

/// `len` bytes at offset `start` of a list of buffers (fewer if the list is shorter).
fn read_stream(mem: &GuestMemory, segs: &[(u64, u32)], start: u64, len: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut skip = start;
    for &(addr, l) in segs {
        if out.len() as u64 == len {
            break;
        }
        let l = u64::from(l);
        if skip >= l {
            skip -= l;
            continue;
        }
        let n = (l - skip).min(len - out.len() as u64);
        let mut buf = vec![0u8; n as usize];
        mem.read_slice(&mut buf, GuestAddress(addr + skip))
            .expect("validated buffer");
        out.extend_from_slice(&buf);
        skip = 0;
    }
    out
}

/// Whether any interval of `a` intersects any of `b` (half-open).
fn overlaps(a: &[(u64, u64)], b: &[(u64, u64)]) -> bool {
    a.iter()
        .any(|&(s, e)| b.iter().any(|&(bs, be)| s < be && bs < e))
}

/// What one [`scsi_request`] call exercised (tests check that the checks are reached).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Queue runs.
    pub runs: u32,
    /// Runs predicted completely.
    pub strict_runs: u32,
    /// Command responses checked against the model.
    pub commands_checked: u32,
    /// Of those, commands answered OK / GOOD.
    pub commands_good: u32,
    /// GOOD reads whose data was compared with the medium.
    pub reads_compared: u32,
    /// Media changes attributed to a successful write command.
    pub media_written: u32,
    /// Control responses checked.
    pub ctrl_checked: u32,
    /// Events checked.
    pub events_checked: u32,
    /// Runs that stopped a queue.
    pub needs_reset: u32,
}

/// A logical unit and its medium, as the fuzzer tracks them.
struct Unit {
    addr: LunAddr,
    unit: Arc<LogicalUnit>,
    dev: Arc<MemoryDev>,
    /// The medium must never change (read-only unit, CD-ROM).
    frozen: bool,
    /// The medium's content when the unit was created (for frozen media).
    initial: Vec<u8>,
}

fn snapshot(dev: &MemoryDev) -> Vec<u8> {
    let mut v = vec![0u8; dev.info().size as usize];
    dev.read_at(&mut v, 0).expect("medium snapshot");
    v
}

fn medium(block_size: u32, seed: u8) -> Arc<MemoryDev> {
    let dev = MemoryDev::new(
        DEV_SIZE,
        MemoryOptions {
            logical_block_size: block_size,
            read_only: false,
        },
    )
    .expect("memory device");
    let fill: Vec<u8> = (0..DEV_SIZE)
        .map(|o| ((o >> 9) as u8).wrapping_mul(31) ^ (o as u8) ^ seed)
        .collect();
    dev.write_at(&fill, 0).expect("fill the medium");
    Arc::new(dev)
}

/// Driver state of one queue (the harness's `MockRing` is bypassed: the fuzzer writes
/// descriptors and ring entries itself).
#[derive(Default)]
struct QState {
    used_seen: u16,
    /// Set when a run returned an error: the queue must stay quiet.
    stopped: bool,
}

struct Fuzzer {
    h: Harness,
    units: Vec<Unit>,
    features: u64,
    indirect: bool,
    q: [QState; 3],
    bump: u64,
    serial: u8,
    stats: Stats,
}

/// Runs one fuzz input and checks the invariants listed in the module documentation; panics
/// when one fails. The first byte chooses the negotiated features (indirect descriptors,
/// event index, INOUT, HOTPLUG, CHANGE); the rest is a list of driver and host operations.
pub fn scsi_request(data: &[u8]) -> Stats {
    let mut input = Input { data };
    let mut f = Fuzzer::new(input.u8());
    let mut ops = 0;
    while !input.is_empty() && ops < MAX_OPS {
        f.op(&mut input);
        ops += 1;
    }
    for q in [queue::CONTROL, queue::EVENT, queue::FIRST_REQUEST] {
        f.run(q);
    }
    f.stats
}

impl Fuzzer {
    fn new(b0: u8) -> Fuzzer {
        let opts = ScsiOptions {
            max_sectors: MAX_SECTORS,
            ..ScsiOptions::default()
        };
        let shared = ScsiShared::new(opts).expect("options");
        let mut units = Vec::new();
        let specs: [(u8, u16, u32, bool, bool); 4] = [
            (0, 0, 512, false, false),
            (0, 1, 512, true, false),
            (0, 2, 4096, false, false),
            (2, 0, 2048, false, true),
        ];
        for (i, &(target, lun, bs, ro, cdrom)) in specs.iter().enumerate() {
            let dev = medium(if bs == 2048 { 512 } else { bs }, i as u8);
            let opts = LunOptions {
                read_only: ro,
                serial: format!("fz{target}-{lun}"),
                ..LunOptions::default()
            };
            let unit = if cdrom {
                LogicalUnit::new_cdrom(Some(dev.clone()), opts)
            } else {
                LogicalUnit::new(dev.clone(), opts)
            };
            let unit = Arc::new(unit);
            shared
                .attach(u32::from(target), u32::from(lun), unit.clone())
                .expect("attach");
            units.push(Unit {
                addr: LunAddr { target, lun },
                initial: snapshot(&dev),
                unit,
                dev,
                frozen: ro || cdrom,
            });
        }
        let mut features = shared.features() | COMMON_FEATURES;
        let drop_bits = [
            RING_INDIRECT_DESC,
            RING_EVENT_IDX,
            feature::INOUT,
            feature::HOTPLUG,
            feature::CHANGE,
        ];
        for (i, bit) in drop_bits.iter().enumerate() {
            if b0 & (1 << i) != 0 {
                features &= !bit;
            }
        }
        let mut h = Harness::over(shared.clone(), Some(features));
        // The harness always adds the ring features; take them away again where asked.
        for i in 0..3u16 {
            let (ring, q, handler) = &mut h.queues[usize::from(i)];
            *q = ring.device_queue(features & RING_EVENT_IDX != 0);
            *handler = QueueHandler::new(shared.clone(), i, features);
        }
        shared.set_live(Some(features));
        Fuzzer {
            h,
            units,
            features,
            indirect: features & RING_INDIRECT_DESC != 0,
            q: Default::default(),
            bump: BUMP.start,
            serial: 0,
            stats: Stats::default(),
        }
    }

    fn mem(&self) -> &GuestMemory {
        &self.h.mem
    }

    fn write(&self, addr: u64, bytes: &[u8]) {
        self.mem()
            .write_slice(bytes, GuestAddress(addr))
            .expect("fuzzer write inside memory");
    }

    fn rings(&self, q: u16) -> (u64, u64, u64) {
        let dq = &self.h.queues[usize::from(q)].1;
        (dq.desc_table(), dq.avail_ring(), dq.used_ring())
    }

    fn write_desc(&self, table: u64, index: u16, d: (u64, u32, u16, u16)) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&d.0.to_le_bytes());
        b[8..12].copy_from_slice(&d.1.to_le_bytes());
        b[12..14].copy_from_slice(&d.2.to_le_bytes());
        b[14..16].copy_from_slice(&d.3.to_le_bytes());
        self.write(table + u64::from(index) * 16, &b);
    }

    /// Publishes `head` on queue `q` at the ring's current available index.
    fn publish(&self, q: u16, head: u16) {
        let (_, avail, _) = self.rings(q);
        let idx: u16 = self.mem().read_obj(GuestAddress(avail + 2)).expect("idx");
        let slot = avail + 4 + u64::from(idx % QUEUE_SIZE) * 2;
        self.write(slot, &head.to_le_bytes());
        self.write(avail + 2, &idx.wrapping_add(1).to_le_bytes());
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let len = len.max(1);
        if self.bump + len > BUMP.end {
            self.bump = BUMP.start;
        }
        let a = self.bump;
        self.bump = (self.bump + len + 7) & !7;
        a
    }

    fn table(t: u8) -> u64 {
        IND + u64::from(t) % TABLES * TABLE_ENTRIES * 16
    }

    fn queue_index(input: &mut Input<'_>) -> u16 {
        match input.u8() % 4 {
            0 => queue::CONTROL,
            1 => queue::EVENT,
            _ => queue::FIRST_REQUEST,
        }
    }

    fn addr(input: &mut Input<'_>) -> u64 {
        match input.u8() % 8 {
            0..=3 => WIN + u64::from(input.u16()),
            4 => (MEM_SIZE as u64).wrapping_sub(u64::from(input.u16())),
            5 => Self::table(input.u8()) + u64::from(input.u8()) % TABLE_ENTRIES * 16,
            6 => u64::from(input.u16() & 0x3fff),
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

    /// An 8-byte LUN field: mostly attached units, else missing LUNs and targets, the REPORT
    /// LUNS well-known LUN, peripheral addressing, malformed fields.
    fn lun(&self, input: &mut Input<'_>) -> [u8; 8] {
        let k = input.u8();
        match k % 10 {
            0..=3 if !self.units.is_empty() => self.units
                [usize::from(input.u8()) % self.units.len()]
            .addr
            .encode(),
            4 => LunAddr {
                target: [0, 1, 2, 255][usize::from(input.u8() % 4)],
                lun: [0, 1, 2, 3, 7, 16383][usize::from(input.u8() % 6)],
            }
            .encode(),
            5 => [1, input.u8() % 4, 0xc1, 0x01, 0, 0, 0, 0],
            6 => [1, input.u8() % 4, 0, input.u8() % 4, 0, 0, 0, 0],
            7 => {
                let mut b = LunAddr {
                    target: 0,
                    lun: u16::from(input.u8() % 3),
                }
                .encode();
                b[usize::from(input.u8() % 8)] ^= input.u8() | 1;
                b
            }
            _ => input.u64().to_le_bytes(),
        }
    }

    /// A CDB (up to 32 bytes) and the data-out and data-in lengths it calls for.
    fn cdb(input: &mut Input<'_>) -> (Vec<u8>, u32, u32) {
        let bs: u32 = if input.u8() & 1 == 0 { 512 } else { 4096 };
        let lba = match input.u8() % 4 {
            0 => u64::from(input.u8() % 16),
            1 => u64::from(input.u8()),
            2 => (DEV_SIZE / 512).wrapping_sub(u64::from(input.u8() % 4)),
            _ => input.u64(),
        };
        let n = match input.u8() % 4 {
            0..=1 => u32::from(input.u8() % 9),
            2 => u32::from(input.u8()),
            _ => u32::from(input.u16()),
        };
        let bytes = (n * bs).min(MAX_DATA);
        let lba32 = (lba as u32).to_be_bytes();
        let lba64 = lba.to_be_bytes();
        let n16 = (n as u16).to_be_bytes();
        let n32 = n.to_be_bytes();
        let alloc = u32::from(input.u16()) % (MAX_DATA + 1);
        let a16 = (alloc as u16).to_be_bytes();
        let a32 = alloc.to_be_bytes();
        let b1 = input.u8();
        let kind = input.u8();
        let cdb10 = |op: u8, flags: u8| {
            let mut c = vec![op, flags];
            c.extend_from_slice(&lba32);
            c.extend_from_slice(&[0, n16[0], n16[1], 0]);
            c
        };
        let cdb16 = |op: u8, flags: u8| {
            let mut c = vec![op, flags];
            c.extend_from_slice(&lba64);
            c.extend_from_slice(&n32);
            c.extend_from_slice(&[0, 0]);
            c
        };
        let mut cdb = match kind % 24 {
            0 => vec![0x00, 0, 0, 0, 0, 0],
            1 => {
                let page = [0, 0x80, 0x83, 0x86, 0xb0, 0xb1, 0xb2, input.u8()];
                let p = page[usize::from(input.u8() % 8)];
                vec![0x12, b1 & 1, p, a16[0], a16[1], 0]
            }
            2 => {
                let mut c = vec![0xa0, 0, b1 % 4, 0, 0, 0];
                c.extend_from_slice(&a32);
                c.extend_from_slice(&[0, 0]);
                c
            }
            3 => cdb10(0x28, b1 & 0x18),
            4 => cdb16(0x88, b1 & 0x18),
            5 => cdb10(0x2a, b1 & 0x18),
            6 => cdb16(0x8a, b1 & 0x18),
            7 => vec![0x08, (lba32[1] & 0x1f), lba32[2], lba32[3], n as u8, 0],
            8 => vec![0x0a, (lba32[1] & 0x1f), lba32[2], lba32[3], n as u8, 0],
            9 => cdb10(0x41, b1 & 0x0a),
            10 => cdb16(0x93, b1 & 0x0b),
            // UNMAP: parameter list length in bytes 7-8.
            11 => vec![0x42, 0, 0, 0, 0, 0, 0, 0, 8 + 16 * (b1 % 4), 0],
            // COMPARE AND WRITE: NUMBER OF LOGICAL BLOCKS in byte 13.
            12 => {
                let mut c = vec![0x89, b1 & 0x18];
                c.extend_from_slice(&lba64);
                c.extend_from_slice(&[0, 0, 0, (n % 4) as u8, 0, 0]);
                c
            }
            // PERSISTENT RESERVE IN: READ KEYS, READ RESERVATION, REPORT CAPABILITIES,
            // READ FULL STATUS.
            13 => vec![0x5e, b1 % 5, 0, 0, 0, 0, 0, a16[0], a16[1], 0],
            // PERSISTENT RESERVE OUT: service action, scope/type, 24-byte parameter list.
            14 => vec![
                0x5f,
                b1 % 9,
                [0x01, 0x03, 0x05, 0x06, 0x07, 0x08][(n % 6) as usize],
                0,
                0,
                0,
                0,
                0,
                24,
                0,
            ],
            15 => vec![0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            16 => {
                let mut c = vec![0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0];
                c.extend_from_slice(&a32);
                c.extend_from_slice(&[0, 0]);
                c
            }
            17 => vec![0x1a, b1 & 8, input.u8(), 0, a16[1], 0],
            18 => vec![0x5a, b1 & 8, input.u8(), 0, 0, 0, 0, a16[0], a16[1], 0],
            19 => vec![0x03, b1 & 1, 0, 0, a16[1], 0],
            20 => cdb10(0x35, 0),
            21 => {
                let mut c = vec![0xa3, 0x0c, b1 & 7, input.u8(), 0, 0];
                c.extend_from_slice(&a32);
                c.extend_from_slice(&[0, 0]);
                c
            }
            22 => {
                // Any opcode of the disk's table, with the bits its usage data allows.
                let ops: Vec<_> = table::for_kind(LunKind::Disk).collect();
                let op = ops[usize::from(input.u8()) % ops.len()];
                let mut c = vec![op.opcode];
                c.extend((1..op.usage.len()).map(|i| input.u8() & op.usage[i]));
                c
            }
            _ => {
                let len = [6usize, 10, 12, 16, 32][usize::from(input.u8() % 5)];
                input.bytes(len).to_vec()
            }
        };
        let (out, din) = match cdb.first().copied().unwrap_or(0) {
            0x28 | 0x88 | 0x08 => (0, bytes),
            0x2a | 0x8a | 0x0a => (bytes, 0),
            0x41 | 0x93 => (bs, 0),
            0x42 => (8 + 16 * u32::from(b1 % 4), 0),
            0x89 => (2 * (n % 4) * bs, 0),
            0x5f => (24, 0),
            _ => (0, alloc),
        };
        if kind >= 24 && !cdb.is_empty() {
            // Sometimes a byte flipped anywhere.
            let i = usize::from(kind) % cdb.len();
            cdb[i] ^= b1;
        }
        (cdb, out, din)
    }

    /// Data-out bytes for a CDB: UNMAP and PERSISTENT RESERVE OUT parameter lists with small
    /// values, else patterned bytes.
    fn data_out(input: &mut Input<'_>, cdb: &[u8], len: u32) -> Vec<u8> {
        let seed = input.u8();
        let mut d: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(13) ^ seed)
            .collect();
        match cdb.first() {
            Some(0x42) if len >= 8 => {
                let descs = (len as usize - 8) / 16;
                d[..8].fill(0);
                d[0..2].copy_from_slice(&((len - 2) as u16).to_be_bytes());
                d[2..4].copy_from_slice(&((descs * 16) as u16).to_be_bytes());
                for k in 0..descs {
                    let at = 8 + 16 * k;
                    d[at..at + 16].fill(0);
                    d[at + 7] = input.u8() % 140;
                    d[at + 11] = input.u8() % 16;
                }
            }
            Some(0x5f) if len >= 24 => {
                d[..24].fill(0);
                d[7] = input.u8() % 4;
                d[15] = input.u8() % 4;
                d[20] = input.u8() & 0x0d;
            }
            _ => {}
        }
        d
    }

    fn op(&mut self, input: &mut Input<'_>) {
        match input.u8() % 16 {
            0 => {
                let q = Self::queue_index(input);
                let (table, _, _) = self.rings(q);
                let i = input.u16() % QUEUE_SIZE;
                let d = (
                    Self::addr(input),
                    Self::len(input),
                    Self::flags(input),
                    Self::next(input),
                );
                self.write_desc(table, i, d);
            }
            1 => {
                let t = Self::table(input.u8());
                let i = u16::from(input.u8()) % TABLE_ENTRIES as u16;
                let d = (
                    Self::addr(input),
                    Self::len(input),
                    Self::flags(input),
                    Self::next(input),
                );
                self.write_desc(t, i, d);
            }
            2 => {
                let at = match input.u8() % 3 {
                    0 => WIN + u64::from(input.u16()),
                    1 => IND + u64::from(input.u16()) % (TABLES * TABLE_ENTRIES * 16),
                    _ => MEM_SIZE as u64 - 0x1_0000 + u64::from(input.u16()) % 0xff00,
                };
                let n = usize::from(input.u8());
                let bytes = input.bytes(n).to_vec();
                self.write(at, &bytes);
            }
            3 => {
                let q = Self::queue_index(input);
                let head = match input.u8() {
                    b @ 0..=0xef => u16::from(b),
                    _ => input.u16(),
                };
                self.publish(q, head);
            }
            4 => {
                let q = Self::queue_index(input);
                let (_, avail, used) = self.rings(q);
                let v = input.u16();
                match input.u8() % 4 {
                    0 => self.write(avail + 2, &v.to_le_bytes()),
                    1 => self.write(avail, &v.to_le_bytes()),
                    2 => self.write(avail + 4 + 2 * u64::from(QUEUE_SIZE), &v.to_le_bytes()),
                    // Only written by the device: the driver tampering with the used index.
                    _ => self.write(used + 4 + 8 * u64::from(QUEUE_SIZE), &v.to_le_bytes()),
                }
            }
            5..=7 => self.command(input),
            8 => {
                let q = Self::queue_index(input);
                self.run(q);
            }
            9 => self.tmf(input),
            10 => self.an(input),
            11 => self.event_buffers(input),
            12 => self.config(input),
            13 => self.hotplug(input),
            14 => {
                // A batch: several well-formed commands, then the request queue runs.
                let n = input.u8() % 8 + 1;
                for _ in 0..n {
                    self.command(input);
                }
                self.run(queue::FIRST_REQUEST);
            }
            _ => self.run(queue::FIRST_REQUEST),
        }
    }

    /// Lays `readable` then `writable_len` device-writable bytes out as a chain (split at
    /// fuzzer-chosen points, zero-length descriptors, a wrong direction, an indirect table) and
    /// publishes it on queue `q`.
    fn build(&mut self, input: &mut Input<'_>, q: u16, readable: &[u8], writable_len: u32) {
        let layout = input.u8();
        let start = input.u16() % QUEUE_SIZE;
        let r = self.alloc(readable.len() as u64);
        self.write(r, readable);
        let w = self.alloc(u64::from(writable_len));
        // Poison the writable area so that unwritten bytes show.
        let poison = vec![0xa5u8; writable_len.min(MAX_DATA + 4096) as usize];
        self.write(w, &poison);
        let mut descs: Vec<(u64, u32, u16)> = Vec::new();
        let mut split = |input: &mut Input<'_>, base: u64, len: u32, f: u16, pieces: u8| {
            let mut off = 0u32;
            for k in 0..pieces {
                if off == len {
                    break;
                }
                let n = if k + 1 == pieces {
                    len - off
                } else {
                    1 + u32::from(input.u16()) % (len - off)
                };
                descs.push((base + u64::from(off), n, f));
                off += n;
                if layout & 0x40 != 0 && input.u8() & 3 == 0 {
                    descs.push((base, 0, f));
                }
            }
        };
        let rp = if layout & 1 != 0 {
            input.u8() % 5 + 1
        } else {
            1
        };
        let wp = if layout & 2 != 0 {
            input.u8() % 5 + 1
        } else {
            1
        };
        split(input, r, readable.len() as u32, 0, rp);
        split(input, w, writable_len, F_WRITE, wp);
        if layout & 8 != 0 && !descs.is_empty() {
            // A descriptor in the wrong direction.
            let i = usize::from(input.u8()) % descs.len();
            descs[i].2 ^= F_WRITE;
        }
        if descs.is_empty() {
            descs.push((w, 0, F_WRITE));
        }
        descs.truncate(TABLE_ENTRIES as usize);
        let last = descs.len() - 1;
        let flags = |i: usize, f: u16| if i == last { f } else { f | F_NEXT };
        let (table, _, _) = self.rings(q);
        if layout & 4 != 0 {
            let t = Self::table(input.u8());
            for (i, &(a, l, f)) in descs.iter().enumerate() {
                self.write_desc(t, i as u16, (a, l, flags(i, f), i as u16 + 1));
            }
            self.write_desc(table, start, (t, 16 * descs.len() as u32, F_INDIRECT, 0));
        } else {
            for (i, &(a, l, f)) in descs.iter().enumerate() {
                let idx = (start + i as u16) % QUEUE_SIZE;
                self.write_desc(table, idx, (a, l, flags(i, f), (idx + 1) % QUEUE_SIZE));
            }
        }
        self.publish(q, start);
    }

    fn command(&mut self, input: &mut Input<'_>) {
        let lun = self.lun(input);
        let tag = u64::from(input.u8());
        let (cdb, out_len, in_len) = Self::cdb(input);
        let shape = input.u8();
        let cdb_size = self.h.shared.cdb_size() as usize;
        // The header + CDB area as the driver sized it (mostly right).
        let area = match shape % 8 {
            0 => usize::from(input.u8()),
            1 => cdb.len(),
            _ => cdb_size,
        };
        let mut readable = vec![0u8; CMD_REQ_HEADER + area];
        readable[..8].copy_from_slice(&lun);
        readable[8..16].copy_from_slice(&tag.to_le_bytes());
        readable[16] = input.u8() % 4;
        let n = cdb.len().min(area);
        readable[CMD_REQ_HEADER..CMD_REQ_HEADER + n].copy_from_slice(&cdb[..n]);
        if shape & 0x10 != 0 {
            readable.truncate(usize::from(input.u8()).min(readable.len()));
        }
        let out_len = if shape & 0x20 != 0 {
            u32::from(input.u16())
        } else {
            out_len
        };
        readable.extend(Self::data_out(input, &cdb, out_len));
        let sense = self.h.shared.sense_size();
        let resp = match shape >> 6 {
            0 | 1 => CMD_RESP_HEADER as u32 + sense,
            2 => u32::from(input.u8()),
            _ => CMD_RESP_HEADER as u32 + sense + u32::from(input.u8() % 8),
        };
        let in_len = if shape & 8 != 0 {
            u32::from(input.u16())
        } else {
            in_len
        };
        self.build(input, queue::FIRST_REQUEST, &readable, resp + in_len);
    }

    fn tmf(&mut self, input: &mut Input<'_>) {
        let kind = input.u8();
        let mut req = Vec::with_capacity(24);
        let t = if kind & 0x80 != 0 {
            input.u32()
        } else {
            ctrl::TMF
        };
        req.extend_from_slice(&t.to_le_bytes());
        req.extend_from_slice(&(u32::from(input.u8()) % 10).to_le_bytes());
        req.extend_from_slice(&self.lun(input));
        req.extend_from_slice(&u64::from(input.u8()).to_le_bytes());
        if kind & 0x40 != 0 {
            req.truncate(usize::from(input.u8() % 24));
        }
        let wlen = if kind & 0x20 != 0 {
            u32::from(input.u8() % 4)
        } else {
            1
        };
        self.build(input, queue::CONTROL, &req, wlen);
        if kind & 1 == 0 {
            self.run(queue::CONTROL);
        }
    }

    fn an(&mut self, input: &mut Input<'_>) {
        let kind = input.u8();
        let t = if kind & 1 != 0 {
            ctrl::AN_SUBSCRIBE
        } else {
            ctrl::AN_QUERY
        };
        let mut req = Vec::with_capacity(16);
        req.extend_from_slice(&t.to_le_bytes());
        req.extend_from_slice(&self.lun(input));
        req.extend_from_slice(&u32::from(input.u8()).to_le_bytes());
        if kind & 0x40 != 0 {
            req.truncate(usize::from(input.u8() % 16));
        }
        let wlen = if kind & 0x20 != 0 {
            u32::from(input.u8() % 8)
        } else {
            5
        };
        self.build(input, queue::CONTROL, &req, wlen);
        if kind & 2 == 0 {
            self.run(queue::CONTROL);
        }
    }

    fn event_buffers(&mut self, input: &mut Input<'_>) {
        let n = input.u8() % 4 + 1;
        let short = input.u8();
        for k in 0..n {
            let len = if short & (1 << k) != 0 {
                u32::from(input.u8() % 24)
            } else {
                event::SIZE as u32
            };
            self.build(input, queue::EVENT, &[], len);
        }
        if short & 0x80 == 0 {
            self.run(queue::EVENT);
        }
    }

    fn config(&mut self, input: &mut Input<'_>) {
        let offset = match input.u8() % 4 {
            0 => 20,
            1 => 24,
            2 => u64::from(input.u8() % 40),
            _ => input.u64(),
        };
        let len = usize::from(input.u8() % 5);
        let value = match input.u8() % 4 {
            0 => u32::from(input.u8()),
            1 => u32::from(input.u16()),
            2 => {
                [0, 1, 6, 10, 12, 16, 18, 32, 96, 252, 253, 260, 261][usize::from(input.u8() % 13)]
            }
            _ => input.u32(),
        };
        let bytes = value.to_le_bytes();
        let shared = &self.h.shared;
        let ok = shared.write_config(offset, &bytes[..len.min(4)]).is_ok();
        assert_eq!(
            ok,
            offset.checked_add(len as u64).is_some_and(|e| e <= 36),
            "config write at {offset} of {len} bytes"
        );
        let (sense, cdb) = (shared.sense_size(), shared.cdb_size());
        assert!(
            sense <= MAX_SENSE_SIZE,
            "sense_size {sense} above the maximum"
        );
        assert!(cdb <= MAX_CDB_SIZE, "cdb_size {cdb} above the maximum");
        let mut b = [0u8; 8];
        shared
            .read_config(20, &mut b[..4])
            .expect("read sense_size");
        shared.read_config(24, &mut b[4..]).expect("read cdb_size");
        assert_eq!(u32::from_le_bytes(b[..4].try_into().expect("4")), sense);
        assert_eq!(u32::from_le_bytes(b[4..].try_into().expect("4")), cdb);
    }

    fn hotplug(&mut self, input: &mut Input<'_>) {
        let k = input.u8();
        let target = [0u8, 1, 2, 255][usize::from(input.u8() % 4)];
        let lun = [0u16, 1, 2, 3, 16383][usize::from(input.u8() % 5)];
        let addr = LunAddr { target, lun };
        let shared = self.h.shared.clone();
        let present = self.units.iter().position(|u| u.addr == addr);
        match k % 4 {
            0 | 1 => {
                self.serial = self.serial.wrapping_add(1);
                let ro = k & 0x10 != 0;
                let dev = medium(if k & 0x20 != 0 { 4096 } else { 512 }, self.serial);
                let unit = Arc::new(LogicalUnit::new(
                    dev.clone(),
                    LunOptions {
                        read_only: ro,
                        serial: format!("hot{}", self.serial),
                        ..LunOptions::default()
                    },
                ));
                let r = shared.attach(u32::from(target), u32::from(lun), unit.clone());
                assert_eq!(r.is_ok(), present.is_none(), "attach at {addr:?}");
                if r.is_ok() {
                    self.units.push(Unit {
                        addr,
                        initial: snapshot(&dev),
                        unit,
                        dev,
                        frozen: ro,
                    });
                }
            }
            2 => {
                let r = shared.detach(u32::from(target), u32::from(lun));
                match present {
                    Some(i) => {
                        let u = self.units.remove(i);
                        let got = r.expect("detach of an attached unit");
                        assert!(Arc::ptr_eq(&got, &u.unit), "detach returned another unit");
                        self.check_frozen(&u);
                    }
                    None => assert!(r.is_err(), "detach of a missing unit at {addr:?}"),
                }
            }
            _ => {
                // A new medium for a writable disk: capacity change.
                let Some(i) = present.filter(|&i| !self.units[i].frozen) else {
                    return;
                };
                let bs = self.units[i].unit.block_size() as u32;
                self.serial = self.serial.wrapping_add(1);
                let dev = medium(bs, self.serial);
                self.units[i].unit.replace_medium(Some(dev.clone()));
                self.units[i].dev = dev;
                shared.capacity_changed(addr);
            }
        }
    }

    fn check_frozen(&self, u: &Unit) {
        if u.frozen {
            assert!(
                snapshot(&u.dev) == u.initial,
                "the medium of read-only unit {:?} changed",
                u.addr
            );
        }
    }

    /// Used-ring entries of queue `q` added since the last call: (id, len).
    fn take_used(&mut self, q: u16) -> Vec<(u32, u32)> {
        let (_, _, used) = self.rings(q);
        let mem = self.h.mem.clone();
        let idx: u16 = mem.read_obj(GuestAddress(used + 2)).expect("used idx");
        let st = &mut self.q[usize::from(q)];
        let mut out = Vec::new();
        while st.used_seen != idx {
            let slot = used + 4 + u64::from(st.used_seen % QUEUE_SIZE) * 8;
            let id: u32 = mem.read_obj(GuestAddress(slot)).expect("used id");
            let len: u32 = mem.read_obj(GuestAddress(slot + 4)).expect("used len");
            out.push((id, len));
            st.used_seen = st.used_seen.wrapping_add(1);
        }
        out
    }

    /// Whether the device must stop the queue at this (walked) chain.
    fn fatal(&self, q: u16, c: &RefChain) -> bool {
        match q {
            queue::FIRST_REQUEST => c.wlen < CMD_RESP_HEADER as u64,
            queue::CONTROL => {
                if c.rlen < 4 {
                    return true;
                }
                let t = read_stream(self.mem(), &c.readable, 0, 4);
                match u32::from_le_bytes(t[..4].try_into().expect("4 bytes")) {
                    ctrl::AN_QUERY | ctrl::AN_SUBSCRIBE => c.wlen < 5,
                    _ => c.wlen < 1,
                }
            }
            _ => c.wlen < event::SIZE as u64,
        }
    }

    /// Runs queue `q` and checks what it did.
    fn run(&mut self, q: u16) {
        self.stats.runs += 1;
        let mem = self.h.mem.clone();
        let (table, avail, _) = self.rings(q);
        let dq = &self.h.queues[usize::from(q)].1;
        let (n0, u0) = (dq.next_avail(), dq.next_used());
        let stopped = self.q[usize::from(q)].stopped;
        let notes0 = self.h.notifications;
        let avail_idx: u16 = mem.read_obj(GuestAddress(avail + 2)).expect("avail idx");
        let pending = avail_idx.wrapping_sub(n0);
        let bogus = pending > QUEUE_SIZE;
        let sense_size = self.h.shared.sense_size();
        let cdb_size = self.h.shared.cdb_size();

        // The oracle: every published chain up to the first one that must stop the queue.
        let mut plan: Vec<RefChain> = Vec::new();
        let mut failed: Option<RefChain> = None;
        if !stopped && !bogus {
            for k in 0..pending {
                let slot = avail + 4 + u64::from(n0.wrapping_add(k) % QUEUE_SIZE) * 2;
                let head: u16 = mem.read_obj(GuestAddress(slot)).expect("avail ring");
                match ref_walk(&mem, table, head, self.indirect) {
                    Ok(c) if !self.fatal(q, &c) => plan.push(c),
                    Ok(c) | Err(c) => {
                        failed = Some(c);
                        break;
                    }
                }
            }
        }
        let strict = !stopped && !bogus && predictable(&plan, &failed);
        let before: Vec<Vec<u8>> = if strict {
            self.units.iter().map(|u| snapshot(&u.dev)).collect()
        } else {
            Vec::new()
        };

        let res = self.h.run(q);
        let completed = self.take_used(q);
        let dq = &self.h.queues[usize::from(q)].1;
        let (n1, u1) = (dq.next_avail(), dq.next_used());
        let consumed = usize::from(n1.wrapping_sub(n0));
        assert_eq!(
            usize::from(u1.wrapping_sub(u0)),
            completed.len(),
            "queue {q}: used index moved by a different count than entries read"
        );
        match &res {
            Ok(()) => {}
            Err(Error::NeedsReset { .. }) | Err(Error::Queue { .. }) => {
                self.q[usize::from(q)].stopped = true;
                self.stats.needs_reset += 1;
            }
            Err(e) => panic!("queue {q}: handler failed with {e:?}"),
        }
        if let QueueHandler::Request(h) = &self.h.queues[usize::from(q)].2 {
            assert_eq!(
                h.is_broken(),
                self.q[usize::from(q)].stopped,
                "request queue broken flag"
            );
        }
        for u in &self.units {
            self.check_frozen(u);
        }
        if stopped {
            assert!(res.is_ok(), "queue {q}: a stopped queue failed again");
            assert_eq!(consumed, 0, "queue {q}: chains taken from a stopped queue");
            assert!(
                completed.is_empty(),
                "queue {q}: completions from a stopped queue"
            );
            assert_eq!(
                self.h.notifications, notes0,
                "queue {q}: a stopped queue notified"
            );
            return;
        }
        if bogus {
            // The event queue looks at its ring only while events wait.
            assert!(
                res.is_err() || q == queue::EVENT,
                "queue {q}: bogus avail index {avail_idx} not fatal"
            );
            assert_eq!(consumed, 0, "queue {q}: chains taken past a bogus index");
            return;
        }
        let stop = usize::from(res.is_err());
        assert!(
            completed.len() + stop == consumed || completed.len() == consumed,
            "queue {q}: {consumed} chains taken but {} completed ({res:?})",
            completed.len()
        );
        if !strict {
            return;
        }
        self.stats.strict_runs += 1;
        if q == queue::EVENT {
            // Chains are taken only while events wait: a prefix of the plan.
            assert!(
                completed.len() <= plan.len(),
                "event queue: more events than buffers"
            );
            if res.is_err() {
                assert!(
                    completed.len() == plan.len() && failed.is_some(),
                    "event queue stopped at a usable buffer"
                );
            }
        } else {
            match &failed {
                Some(c) => {
                    assert!(
                        res.is_err(),
                        "queue {q}: chain {} cannot be answered but the queue went on",
                        c.head
                    );
                    assert_eq!(consumed, plan.len() + 1, "queue {q}: chains taken");
                }
                None => {
                    assert!(
                        res.is_ok(),
                        "queue {q}: well-formed chains stopped it: {res:?}"
                    );
                    assert_eq!(consumed, usize::from(pending), "queue {q}: chains left");
                }
            }
        }
        let ids: Vec<u32> = completed.iter().map(|u| u.0).collect();
        let heads: Vec<u32> = plan.iter().map(|c| u32::from(c.head)).collect();
        assert_eq!(
            ids,
            heads[..ids.len()],
            "queue {q}: used ids differ from the heads"
        );
        let mut writers: Vec<LunAddr> = Vec::new();
        for (c, &(_, len)) in plan.iter().zip(&completed) {
            assert!(
                u64::from(len) <= c.wlen,
                "queue {q}: used length {len} > {} writable bytes",
                c.wlen
            );
            match q {
                queue::FIRST_REQUEST => {
                    if let Some(w) = self.check_command(c, len, sense_size, cdb_size) {
                        writers.push(w);
                    }
                }
                queue::CONTROL => self.check_control(c, len),
                _ => self.check_event(c, len),
            }
        }
        for (u, b) in self.units.iter().zip(before) {
            let now = snapshot(&u.dev);
            if now == b {
                continue;
            }
            assert!(
                writers.contains(&u.addr),
                "the medium of {:?} changed without a successful write command to it",
                u.addr
            );
            self.stats.media_written += 1;
        }
        // Reads of media no command changed return the medium's bytes.
        for (c, &(_, len)) in plan.iter().zip(&completed) {
            if q == queue::FIRST_REQUEST {
                self.check_read(c, len, sense_size, cdb_size, &writers);
            }
        }
    }

    /// Checks a command response; returns the unit a successful medium-writing command
    /// addressed.
    fn check_command(
        &mut self,
        c: &RefChain,
        len: u32,
        sense_size: u32,
        cdb_size: u32,
    ) -> Option<LunAddr> {
        self.stats.commands_checked += 1;
        let mem = self.h.mem.clone();
        let resp_len = u64::from(CMD_RESP_HEADER as u32 + sense_size);
        let hdr_len = (CMD_REQ_HEADER as u32 + cdb_size) as u64;
        let r = read_stream(&mem, &c.writable, 0, CMD_RESP_HEADER as u64);
        let le = |i: usize| u32::from_le_bytes(r[i..i + 4].try_into().expect("4 bytes"));
        let (sense_len, resid, st, code) = (le(0), le(4), r[10], r[11]);
        let out_len = c.rlen.saturating_sub(hdr_len);
        let in_len = c.wlen.saturating_sub(resp_len);
        let max = u64::from(MAX_SECTORS) * 512;
        let req = read_stream(&mem, &c.readable, 0, hdr_len.min(c.rlen));
        let addr = (req.len() >= 8)
            .then(|| LunAddr::decode(req[..8].try_into().expect("8 bytes")))
            .flatten();
        let short = c.wlen < resp_len || c.rlen < hdr_len;
        let bidi = out_len > 0 && in_len > 0 && self.features & feature::INOUT == 0;
        let expected = if short || bidi {
            response::FAILURE
        } else if out_len > max {
            response::OVERRUN
        } else if addr.is_none_or(|a| self.h.shared.target(a.target).is_none()) {
            response::BAD_TARGET
        } else {
            response::OK
        };
        let cdb = req.get(CMD_REQ_HEADER..).unwrap_or(&[]);
        assert_eq!(
            code, expected,
            "command {cdb:02x?} (readable {}, writable {}): response code",
            c.rlen, c.wlen
        );
        if code != response::OK {
            assert_eq!(
                len, CMD_RESP_HEADER as u32,
                "used length of a failed command"
            );
            assert_eq!(
                (sense_len, st),
                (0, 0),
                "sense or status of a failed command"
            );
            return None;
        }
        assert!(
            u64::from(len) >= resp_len,
            "used length {len} shorter than the response ({resp_len})"
        );
        let n = u64::from(len) - resp_len;
        assert!(
            n <= in_len.min(max),
            "data-in {n} beyond the buffer {in_len}"
        );
        assert!(
            sense_len <= sense_size,
            "sense_len {sense_len} > sense_size {sense_size}"
        );
        let known = [
            status::GOOD,
            status::CHECK_CONDITION,
            status::CONDITION_MET,
            status::BUSY,
            status::RESERVATION_CONFLICT,
        ];
        assert!(known.contains(&st), "status {st:#x} for {cdb:02x?}");
        if sense_len > 0 {
            assert_eq!(st, status::CHECK_CONDITION, "sense without CHECK CONDITION");
            let s = read_stream(&mem, &c.writable, CMD_RESP_HEADER as u64, 1);
            assert!(
                matches!(s[0] & 0x7f, 0x70..=0x73),
                "sense format {:#x} for {cdb:02x?}",
                s[0]
            );
        }
        if in_len > 0 {
            assert_eq!(u64::from(resid), in_len - n, "residual of {cdb:02x?}");
        } else {
            assert!(
                u64::from(resid) <= out_len,
                "residual above the data-out length"
            );
        }
        if st == status::GOOD {
            self.stats.commands_good += 1;
        }
        let addr = addr.expect("OK needs an address");
        let writes =
            st == status::GOOD && table::lookup(LunKind::Disk, cdb).is_some_and(|op| op.writes);
        writes.then_some(addr)
    }

    /// A GOOD READ(10) / READ(16) of an unchanged medium returned the medium's bytes.
    fn check_read(
        &mut self,
        c: &RefChain,
        len: u32,
        sense_size: u32,
        cdb_size: u32,
        writers: &[LunAddr],
    ) {
        let mem = self.h.mem.clone();
        let resp_len = u64::from(CMD_RESP_HEADER as u32 + sense_size);
        let hdr_len = (CMD_REQ_HEADER as u32 + cdb_size) as u64;
        if c.rlen != hdr_len || u64::from(len) <= resp_len {
            return;
        }
        let r = read_stream(&mem, &c.writable, 0, CMD_RESP_HEADER as u64);
        if r[11] != response::OK || r[10] != status::GOOD {
            return;
        }
        let req = read_stream(&mem, &c.readable, 0, hdr_len);
        let Some(addr) = LunAddr::decode(req[..8].try_into().expect("8 bytes")) else {
            return;
        };
        let Some(u) = self.units.iter().find(|u| u.addr == addr) else {
            return;
        };
        if writers.contains(&addr) {
            return;
        }
        let cdb = &req[CMD_REQ_HEADER..];
        let lba = match cdb[0] {
            0x28 => u64::from(u32::from_be_bytes(cdb[2..6].try_into().expect("4"))),
            0x88 => u64::from_be_bytes(cdb[2..10].try_into().expect("8")),
            _ => return,
        };
        let n = u64::from(len) - resp_len;
        let bs = u.unit.block_size();
        let data = read_stream(&mem, &c.writable, resp_len, n);
        let mut want = vec![0u8; n as usize];
        u.dev.read_at(&mut want, lba * bs).expect("read the medium");
        assert!(
            data == want,
            "READ at LBA {lba} of {addr:?} returned other bytes"
        );
        self.stats.reads_compared += 1;
    }

    fn check_control(&mut self, c: &RefChain, len: u32) {
        self.stats.ctrl_checked += 1;
        let mem = self.h.mem.clone();
        let req = read_stream(&mem, &c.readable, 0, 24.min(c.rlen));
        let t = u32::from_le_bytes(req[..4].try_into().expect("4 bytes"));
        match t {
            ctrl::AN_QUERY | ctrl::AN_SUBSCRIBE => {
                assert_eq!(len, 5, "used length of an AN response");
                let r = read_stream(&mem, &c.writable, 0, 5);
                let actual = u32::from_le_bytes(r[..4].try_into().expect("4 bytes"));
                assert!(
                    [response::OK, response::BAD_TARGET, response::FAILURE].contains(&r[4]),
                    "AN response {}",
                    r[4]
                );
                assert_eq!(actual & !an::MEDIA_CHANGE, 0, "AN event_actual {actual:#x}");
                if r[4] == response::OK && req.len() >= 16 {
                    let requested = u32::from_le_bytes(req[12..16].try_into().expect("4"));
                    assert_eq!(actual & !requested, 0, "AN class not requested");
                }
            }
            _ => {
                assert_eq!(len, 1, "used length of a TMF response");
                let r = read_stream(&mem, &c.writable, 0, 1);
                let ok = [
                    response::FUNCTION_COMPLETE,
                    response::BAD_TARGET,
                    response::FAILURE,
                    response::FUNCTION_SUCCEEDED,
                    response::FUNCTION_REJECTED,
                    response::INCORRECT_LUN,
                ];
                assert!(ok.contains(&r[0]), "TMF response {}", r[0]);
                if t != ctrl::TMF {
                    assert_eq!(r[0], response::FAILURE, "unknown control type {t}");
                }
            }
        }
    }

    fn check_event(&mut self, c: &RefChain, len: u32) {
        self.stats.events_checked += 1;
        assert_eq!(len, event::SIZE as u32, "used length of an event");
        let e = read_stream(self.mem(), &c.writable, 0, event::SIZE as u64);
        let kind = u32::from_le_bytes(e[..4].try_into().expect("4 bytes"));
        assert!(
            matches!(
                kind & !event::EVENTS_MISSED,
                event::NO_EVENT
                    | event::TRANSPORT_RESET
                    | event::ASYNC_NOTIFY
                    | event::PARAM_CHANGE
            ),
            "event type {kind:#x}"
        );
        let lun: [u8; 8] = e[4..12].try_into().expect("8 bytes");
        if kind & !event::EVENTS_MISSED != event::NO_EVENT {
            assert!(LunAddr::decode(&lun).is_some(), "event LUN {lun:02x?}");
        }
    }
}

/// Whether the oracle's prediction holds for a whole run: no device-writable buffer overlaps
/// another one, anything the device reads, or the rings and tables below [`LOW`].
fn predictable(plan: &[RefChain], failed: &Option<RefChain>) -> bool {
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
        .chain([(0, LOW)])
        .collect();
    !overlaps(&writable, &read)
}
