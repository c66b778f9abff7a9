//! Fuzz entry points: arbitrary bytes play a hostile driver, the device runs, invariants are
//! checked. Shared by the cargo-fuzz targets in `fuzz/` and by this crate's regression tests.
//!
//! - [`blk_request`]: descriptor tables, available-ring entries and guest memory (request
//!   headers, data, discard segments, indirect tables) for one queue over a 1 MiB
//!   [`MemoryDev`](vstor_blockdev::memory::MemoryDev), run through
//!   [`Harness::run`](crate::mock::Harness::run);
//! - [`chain::walk`]: virtio-core's `Chain::walk` and its `Reader` / `Writer` over arbitrary
//!   memory, against an independent model;
//! - [`transport()`]: virtio-core's `Transport` (status, features, queues, memory swaps,
//!   save/restore with corrupted blobs) around a `VirtioBlk`.
//!
//! Both are deterministic and bounded (no sleeps; the memory device completes synchronously)
//! and panic, naming the invariant, when one fails.
//!
//! Checks of [`blk_request`] after each run of the queue:
//! - the handler returns `Ok`, or `Err(NeedsReset)` with the queue marked broken, and a broken
//!   queue consumes nothing more; a bogus available index stops the queue;
//! - the used ring grows by exactly one entry per chain taken (the memory device completes
//!   synchronously), minus the one chain that made the queue stop;
//! - when no device-writable buffer overlaps anything the device reads (rings, descriptor and
//!   indirect tables, readable buffers) or another writable buffer, the run is fully predicted
//!   by an independent chain walk: the used ids are exactly the published heads, in order, each
//!   used length lies in `1..=writable bytes`, statuses are valid, successful requests had the
//!   effect the spec gives them (data read equals the device content, writes and discards land
//!   where the header says, nothing else on the device changes), guest memory outside the
//!   writable buffers is unchanged, notifications and `avail_event` follow the ring protocol;
//! - a read-only device is never modified.

use vm_memory::{Bytes, GuestAddress};
use vstor_virtio_core::GuestMemory;

pub mod chain;
mod expect;
mod request;
mod transport;

pub use request::{blk_request, Stats};
pub use transport::{transport, TransportStats};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// A cursor over fuzz input that yields zeroes once exhausted.
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Input { data }
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub(crate) fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub(crate) fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }
    pub(crate) fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
    /// Up to `n` bytes (fewer at the end of the input).
    pub(crate) fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }
}

/// What guest memory the reference walker needs.
pub(crate) trait RefMem {
    /// Whether every byte of `[addr, addr + len)` is guest memory.
    fn valid(&self, addr: u64, len: u64) -> bool;
    /// The 16 bytes of a descriptor at `addr`.
    fn desc(&self, addr: u64) -> Option<[u8; 16]>;
}

/// A chain as the reference walker sees it.
#[derive(Debug, Default, Clone)]
pub(crate) struct RefChain {
    pub head: u16,
    pub readable: Vec<(u64, u32)>,
    pub writable: Vec<(u64, u32)>,
    /// Indirect tables read, `(addr, len)`.
    pub tables: Vec<(u64, u64)>,
    pub rlen: u64,
    pub wlen: u64,
}

/// An independent reading of VIRTIO 1.2 §2.7.5 with vstor's policy: a table holds at most as
/// many descriptors of a chain as it has entries (more is a loop), indirect tables are not
/// nested, not combined with NEXT, a non-zero multiple of 16 bytes of at most queue-size entries,
/// zero-length buffers are skipped, readable buffers come first, the total is below 4 GiB.
/// `Err` carries what was walked before the fault.
pub(crate) fn ref_walk(
    m: &impl RefMem,
    table: u64,
    queue_size: u16,
    head: u16,
    indirect: bool,
) -> Result<RefChain, RefChain> {
    let mut c = RefChain {
        head,
        ..RefChain::default()
    };
    let (mut base, mut entries, mut nested) = (table, u64::from(queue_size), false);
    let (mut i, mut seen) = (u64::from(head), 0u64);
    loop {
        if i >= entries || seen == entries {
            return Err(c);
        }
        seen += 1;
        let Some(raw) = base.checked_add(i * 16).and_then(|a| m.desc(a)) else {
            return Err(c);
        };
        let addr = u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes"));
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        let next = u16::from_le_bytes([raw[14], raw[15]]);
        let len64 = u64::from(len);
        if flags & F_INDIRECT != 0 {
            if !indirect || nested || flags & F_NEXT != 0 || len == 0 || len % 16 != 0 {
                return Err(c);
            }
            if len64 / 16 > u64::from(queue_size) || !m.valid(addr, len64) {
                return Err(c);
            }
            c.tables.push((addr, len64));
            (base, entries, nested, i, seen) = (addr, len64 / 16, true, 0, 0);
            continue;
        }
        if len > 0 {
            if !m.valid(addr, len64) {
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

/// Reads `len` bytes at stream offset `start` of a list of buffers.
fn read_stream(mem: &GuestMemory, segs: &[(u64, u32)], start: u64, len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len as usize);
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
    assert_eq!(out.len() as u64, len, "stream shorter than its length");
    out
}

/// Whether two sets of half-open intervals intersect; `a` must be sorted by start.
fn overlaps(sorted: &[(u64, u64)], b: &[(u64, u64)]) -> bool {
    b.iter().any(|&(s, e)| {
        let i = sorted.partition_point(|&(_, ae)| ae <= s);
        sorted.get(i).is_some_and(|&(as_, _)| as_ < e)
    })
}

#[cfg(test)]
mod tests;
