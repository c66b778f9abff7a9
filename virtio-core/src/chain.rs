//! A strict walk of a split-virtqueue descriptor chain (VIRTIO 1.2 §2.7.5) into device-readable
//! and device-writable buffers, and cursors over them.
//!
//! Unlike an iterator that silently stops, [`Chain::walk`] fails with an error naming the fault:
//! index outside the table, a loop (more descriptors than the table holds), an address outside
//! guest memory, a nested or malformed indirect table, a readable descriptor after a writable
//! one, or a total length past 4 GiB. The [`Reader`] and [`Writer`] then see the buffers as one
//! byte stream each, so a request header may span descriptors and data may share a descriptor
//! with a status byte.

use vm_memory::{Address, ByteValued, Bytes, GuestAddress};

use crate::error::{Error, Result};
use crate::memory::{host_ptr, range_valid, read_16, GuestMemory, RegionHint};

const DESC_SIZE: u64 = 16;

/// The segment as one volatile slice of the region holding it (one region lookup, no
/// iteration), or `None` when it crosses regions (callers fall back to vm-memory's copies).
fn region_slice(mem: &GuestMemory, s: Segment) -> Option<vm_memory::VolatileSlice<'_, ()>> {
    use vm_memory::{GuestMemoryBackend as _, GuestMemoryRegion as _, MemoryRegionAddress};
    let r = mem.find_region(s.addr)?;
    let off = s.addr.0 - r.start_addr().0;
    r.get_slice(MemoryRegionAddress(off), s.len as usize).ok()
}
/// Descriptor flag (§2.7.5): the chain continues at `next`.
pub const F_NEXT: u16 = 1;
/// Descriptor flag (§2.7.5): the buffer is device-writable.
pub const F_WRITE: u16 = 2;
/// Descriptor flag (§2.7.5.3): the buffer is an indirect descriptor table.
pub const F_INDIRECT: u16 = 4;

/// Policy for a chain walk.
#[derive(Debug, Clone, Copy)]
pub struct ChainLimits {
    /// Whether VIRTIO_F_RING_INDIRECT_DESC was negotiated.
    pub indirect: bool,
}

impl Default for ChainLimits {
    fn default() -> Self {
        ChainLimits { indirect: true }
    }
}

/// A contiguous guest buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes (never zero).
    pub len: u32,
}

/// A validated descriptor chain: its head index and its buffers, readable first.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    head: u16,
    readable: Vec<Segment>,
    writable: Vec<Segment>,
    readable_len: u64,
    writable_len: u64,
}

#[derive(Clone, Copy)]
struct RawDesc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// Host address of a whole descriptor table of `entries` entries, when it is inside one region
/// and 8-byte aligned (descriptor reads are then two loads, no lookup).
fn table_ptr(mem: &GuestMemory, table: GuestAddress, entries: u64) -> Option<*const u8> {
    let p = host_ptr(mem, table, entries * DESC_SIZE)?;
    (p as usize % 8 == 0).then_some(p as *const u8)
}

fn read_desc(
    mem: &GuestMemory,
    table: GuestAddress,
    tptr: Option<*const u8>,
    index: u16,
) -> Result<RawDesc> {
    if let Some(t) = tptr {
        // SAFETY: `t` maps the whole table (table_ptr; the caller checked index < entries) and
        // is 8-aligned; volatile because the guest may write it concurrently.
        let (lo, hi) = unsafe {
            let p = t.add(usize::from(index) * DESC_SIZE as usize);
            (
                std::ptr::read_volatile(p as *const u64),
                std::ptr::read_volatile(p.add(8) as *const u64),
            )
        };
        let hi = u64::from_le(hi);
        return Ok(RawDesc {
            addr: u64::from_le(lo),
            len: hi as u32,
            flags: (hi >> 32) as u16,
            next: (hi >> 48) as u16,
        });
    }
    let addr = table
        .checked_add(u64::from(index) * DESC_SIZE)
        .ok_or(Error::BadAddress {
            addr: table.0,
            len: DESC_SIZE,
        })?;
    let b = match read_16(mem, addr) {
        Some(b) => b,
        None => {
            let mut b = [0u8; 16];
            mem.read_slice(&mut b, addr)
                .map_err(|_| Error::BadAddress {
                    addr: addr.0,
                    len: DESC_SIZE,
                })?;
            b
        }
    };
    let le16 = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    Ok(RawDesc {
        addr: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
        len: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
        flags: le16(12),
        next: le16(14),
    })
}

impl Chain {
    /// Walks the chain whose head is `head` in the descriptor table at `table` of a queue with
    /// `queue_size` entries.
    pub fn walk(
        mem: &GuestMemory,
        table: GuestAddress,
        queue_size: u16,
        head: u16,
        limits: &ChainLimits,
    ) -> Result<Chain> {
        let mut chain = Chain::default();
        chain.walk_into(mem, table, queue_size, head, limits)?;
        Ok(chain)
    }

    /// Like [`Chain::walk`], but into `self`, reusing its segment lists: a device that walks a
    /// chain per request keeps one `Chain` and allocates nothing once the lists have grown.
    /// On error `self` holds a partial walk and must not be used as a chain.
    pub fn walk_into(
        &mut self,
        mem: &GuestMemory,
        table: GuestAddress,
        queue_size: u16,
        head: u16,
        limits: &ChainLimits,
    ) -> Result<()> {
        self.head = head;
        self.readable.clear();
        self.writable.clear();
        self.readable_len = 0;
        self.writable_len = 0;
        let chain = self;
        let mut table = table;
        let mut tptr = table_ptr(mem, table, u64::from(queue_size));
        let mut hint = RegionHint::default();
        let mut size = queue_size;
        let mut index = head;
        // §2.7.5.2: a chain has at most as many descriptors as its table; more means a loop.
        let mut ttl = u32::from(queue_size);
        let mut indirect = false;
        let mut position = 0u32;
        loop {
            if index >= size {
                return Err(Error::DescriptorIndex { index, size });
            }
            if ttl == 0 {
                return Err(Error::ChainTooLong {
                    head,
                    max: u32::from(size),
                });
            }
            ttl -= 1;
            let d = read_desc(mem, table, tptr, index)?;
            if d.flags & F_INDIRECT != 0 {
                let bad = |reason| Error::BadIndirect {
                    addr: d.addr,
                    len: d.len,
                    reason,
                };
                if !limits.indirect {
                    return Err(bad("VIRTIO_F_RING_INDIRECT_DESC not negotiated"));
                }
                // §2.7.5.3.1: no nested tables, and INDIRECT together with NEXT is forbidden.
                if indirect {
                    return Err(bad("indirect descriptor inside an indirect table"));
                }
                if d.flags & F_NEXT != 0 {
                    return Err(bad("INDIRECT and NEXT both set"));
                }
                if d.len == 0 || u64::from(d.len) % DESC_SIZE != 0 {
                    return Err(bad("length is not a non-zero multiple of 16"));
                }
                let entries = u64::from(d.len) / DESC_SIZE;
                // §2.7.5.3.1: "A driver MUST NOT create a descriptor chain longer than the
                // Queue Size of the device." Holding indirect tables to that bound keeps the
                // work of one kick at most queue size² descriptors.
                if entries > u64::from(queue_size) {
                    return Err(bad("more entries than the queue size"));
                }
                if !range_valid(mem, GuestAddress(d.addr), u64::from(d.len)) {
                    return Err(bad("table outside guest memory"));
                }
                table = GuestAddress(d.addr);
                tptr = table_ptr(mem, table, entries);
                size = entries as u16;
                ttl = u32::from(size);
                index = 0;
                indirect = true;
                continue;
            }
            if d.len > 0 {
                if !hint.range_valid(mem, GuestAddress(d.addr), u64::from(d.len)) {
                    return Err(Error::BadAddress {
                        addr: d.addr,
                        len: u64::from(d.len),
                    });
                }
                let seg = Segment {
                    addr: GuestAddress(d.addr),
                    len: d.len,
                };
                if d.flags & F_WRITE != 0 {
                    chain.writable.push(seg);
                    chain.writable_len += u64::from(d.len);
                } else {
                    // §2.7.4.2: device-writable descriptors come after device-readable ones.
                    if !chain.writable.is_empty() {
                        return Err(Error::ReadableAfterWritable {
                            head,
                            index: position,
                        });
                    }
                    chain.readable.push(seg);
                    chain.readable_len += u64::from(d.len);
                }
                // §2.7.5.2: "Drivers MUST NOT add a descriptor chain longer than 2^32 bytes".
                if chain.readable_len + chain.writable_len > u64::from(u32::MAX) {
                    return Err(Error::ChainOverflow { head });
                }
            }
            position += 1;
            if d.flags & F_NEXT == 0 {
                return Ok(());
            }
            index = d.next;
        }
    }

    /// The head descriptor index (the id written to the used ring).
    pub fn head(&self) -> u16 {
        self.head
    }

    /// Total device-readable bytes.
    pub fn readable_len(&self) -> u64 {
        self.readable_len
    }

    /// Total device-writable bytes.
    pub fn writable_len(&self) -> u64 {
        self.writable_len
    }

    /// A cursor over the device-readable bytes.
    pub fn reader(&self) -> Reader<'_> {
        Reader {
            cursor: Cursor::new(&self.readable, self.readable_len),
        }
    }

    /// A cursor over the device-writable bytes but the last one, and the guest address of that
    /// last byte (where virtio-blk puts its status): what `writer()` + `split_tail(.., 1)` +
    /// `take_segments(1, ..)` give, without walking the segments. `None` when nothing is
    /// writable.
    pub fn writer_and_last_byte(&self) -> Option<(Writer<'_>, GuestAddress)> {
        let last = self.writable.last()?;
        let addr = GuestAddress(last.addr.0 + u64::from(last.len) - 1);
        Some((
            Writer {
                cursor: Cursor::new(&self.writable, self.writable_len - 1),
            },
            addr,
        ))
    }

    /// A cursor over the device-writable bytes.
    pub fn writer(&self) -> Writer<'_> {
        Writer {
            cursor: Cursor::new(&self.writable, self.writable_len),
        }
    }
}

/// Position inside a list of segments, with an end that can be moved back to reserve a tail.
#[derive(Debug, Clone)]
struct Cursor<'a> {
    segs: &'a [Segment],
    index: usize,
    offset: u32,
    remaining: u64,
}

impl<'a> Cursor<'a> {
    fn new(segs: &'a [Segment], len: u64) -> Self {
        Cursor {
            segs,
            index: 0,
            offset: 0,
            remaining: len,
        }
    }

    /// Takes the next `len` bytes as segments, calling `f` for each piece.
    fn take(
        &mut self,
        what: &'static str,
        len: u64,
        mut f: impl FnMut(Segment) -> Result<()>,
    ) -> Result<()> {
        if len > self.remaining {
            return Err(Error::ShortBuffer {
                what,
                needed: len,
                available: self.remaining,
            });
        }
        let mut left = len;
        while left > 0 {
            let seg = self.segs[self.index];
            let avail = seg.len - self.offset;
            let n = u64::from(avail).min(left) as u32;
            f(Segment {
                addr: GuestAddress(seg.addr.0 + u64::from(self.offset)),
                len: n,
            })?;
            left -= u64::from(n);
            self.offset += n;
            if self.offset == seg.len {
                self.index += 1;
                self.offset = 0;
            }
        }
        self.remaining -= len;
        Ok(())
    }

    /// Splits off the last `len` bytes into their own cursor.
    fn split_tail(&mut self, what: &'static str, len: u64) -> Result<Cursor<'a>> {
        if len > self.remaining {
            return Err(Error::ShortBuffer {
                what,
                needed: len,
                available: self.remaining,
            });
        }
        let mut tail = self.clone();
        let mut skip = self.clone();
        skip.take(what, self.remaining - len, |_| Ok(()))?;
        tail.index = skip.index;
        tail.offset = skip.offset;
        tail.remaining = len;
        self.remaining -= len;
        Ok(tail)
    }
}

/// Reads the device-readable part of a chain as one byte stream.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    cursor: Cursor<'a>,
}

impl Reader<'_> {
    /// Bytes left.
    pub fn remaining(&self) -> u64 {
        self.cursor.remaining
    }

    /// Copies the next `buf.len()` bytes out of guest memory.
    pub fn read_exact(&mut self, mem: &GuestMemory, buf: &mut [u8]) -> Result<()> {
        let mut done = 0usize;
        self.cursor.take("read", buf.len() as u64, |s| {
            let end = done + s.len as usize;
            if s.len == 16 {
                // The common case: a whole 16-byte request header in one descriptor.
                if let Some(b) = read_16(mem, s.addr) {
                    buf[done..end].copy_from_slice(&b);
                    done = end;
                    return Ok(());
                }
            }
            match region_slice(mem, s) {
                Some(v) => {
                    v.copy_to(&mut buf[done..end]);
                }
                None => mem
                    .read_slice(&mut buf[done..end], s.addr)
                    .map_err(|source| Error::Memory {
                        addr: s.addr,
                        source,
                    })?,
            }
            done = end;
            Ok(())
        })
    }

    /// Reads a plain-data object (a request header, for instance).
    pub fn read_obj<T: ByteValued + Default>(&mut self, mem: &GuestMemory) -> Result<T> {
        let mut v = T::default();
        self.read_exact(mem, v.as_mut_slice())?;
        Ok(v)
    }

    /// Takes the next `len` bytes as guest segments (for zero-copy I/O).
    pub fn take_segments(&mut self, len: u64, out: &mut Vec<Segment>) -> Result<()> {
        self.cursor.take("data-out", len, |s| {
            out.push(s);
            Ok(())
        })
    }

    /// Skips `len` bytes.
    pub fn skip(&mut self, len: u64) -> Result<()> {
        self.cursor.take("skip", len, |_| Ok(()))
    }
}

/// Writes the device-writable part of a chain as one byte stream.
#[derive(Debug, Clone)]
pub struct Writer<'a> {
    cursor: Cursor<'a>,
}

impl<'a> Writer<'a> {
    /// Bytes left.
    pub fn remaining(&self) -> u64 {
        self.cursor.remaining
    }

    /// Copies `buf` into guest memory at the cursor.
    pub fn write_all(&mut self, mem: &GuestMemory, buf: &[u8]) -> Result<()> {
        let mut done = 0usize;
        self.cursor.take("write", buf.len() as u64, |s| {
            let end = done + s.len as usize;
            match region_slice(mem, s) {
                Some(v) => v.copy_from(&buf[done..end]),
                None => {
                    mem.write_slice(&buf[done..end], s.addr)
                        .map_err(|source| Error::Memory {
                            addr: s.addr,
                            source,
                        })?
                }
            }
            done = end;
            Ok(())
        })
    }

    /// Writes a plain-data object.
    pub fn write_obj<T: ByteValued>(&mut self, mem: &GuestMemory, v: T) -> Result<()> {
        self.write_all(mem, v.as_slice())
    }

    /// Takes the next `len` bytes as guest segments (for zero-copy I/O).
    pub fn take_segments(&mut self, len: u64, out: &mut Vec<Segment>) -> Result<()> {
        self.cursor.take("data-in", len, |s| {
            out.push(s);
            Ok(())
        })
    }

    /// Skips `len` bytes, leaving them as they are.
    pub fn skip(&mut self, len: u64) -> Result<()> {
        self.cursor.take("skip", len, |_| Ok(()))
    }

    /// Reserves the last `len` bytes (a status byte, a response trailer) as a separate writer,
    /// leaving this one to end before them.
    pub fn split_tail(&mut self, what: &'static str, len: u64) -> Result<Writer<'a>> {
        Ok(Writer {
            cursor: self.cursor.split_tail(what, len)?,
        })
    }

    /// Fills the next `len` bytes with zeroes.
    pub fn write_zeroes(&mut self, mem: &GuestMemory, len: u64) -> Result<()> {
        const ZEROES: [u8; 4096] = [0; 4096];
        self.cursor.take("zero-fill", len, |s| {
            let mut addr = s.addr;
            let mut left = s.len as usize;
            while left > 0 {
                let n = left.min(ZEROES.len());
                mem.write_slice(&ZEROES[..n], addr)
                    .map_err(|source| Error::Memory { addr, source })?;
                addr = GuestAddress(addr.0 + n as u64);
                left -= n;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
#[path = "chain_tests.rs"]
mod tests;
