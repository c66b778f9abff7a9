//! Guest memory: regions vstor allocates itself, or regions the embedder already mapped.
//!
//! The C ABI hands vstor the hypervisor's own mappings (guest physical address, length, host
//! pointer); vstor never unmaps them. vhost-user maps the frontend's memfds itself. Both end up
//! as a [`GuestMemory`] inside a [`GuestMemoryAtomic`], which can be swapped on hotplug while
//! requests in flight keep the old map alive through its `Arc`.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap, MmapRegion};

use crate::error::{Error, Result};

/// The guest memory type all vstor devices use.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;
/// Guest memory that can be replaced at run time (memory hotplug, vhost-user SET_MEM_TABLE).
pub type GuestMemoryAtomic = vm_memory::GuestMemoryAtomic<GuestMemory>;

/// One region the embedder mapped: `len` bytes of guest physical memory at `gpa`, visible in
/// this process at `hva`.
#[derive(Debug, Clone, Copy)]
pub struct HostRegion {
    /// Guest physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Host virtual address of the first byte.
    pub hva: *mut u8,
}

/// Allocates anonymous guest memory for the given `(start, len)` ranges (tests, tools).
pub fn anonymous(ranges: &[(GuestAddress, usize)]) -> Result<GuestMemory> {
    GuestMemory::from_ranges(ranges).map_err(|e| Error::MemoryRegion {
        gpa: ranges.first().map(|r| r.0 .0).unwrap_or(0),
        len: ranges.iter().map(|r| r.1 as u64).sum(),
        reason: e.to_string(),
    })
}

/// Builds guest memory over mappings the caller owns. Regions must not overlap.
///
/// # Safety
/// Each `hva` must point to `len` bytes mapped readable and writable in this process, and they
/// must stay mapped until the returned memory and every clone of it (including those held by
/// requests in flight) are dropped.
pub unsafe fn from_host_regions(regions: &[HostRegion]) -> Result<GuestMemory> {
    if regions.is_empty() {
        // No memory at all (every region removed): every guest access fails cleanly.
        return Ok(GuestMemory::default());
    }
    let mut built = Vec::with_capacity(regions.len());
    for r in regions {
        let bad = |reason: &str| Error::MemoryRegion {
            gpa: r.gpa,
            len: r.len,
            reason: reason.to_string(),
        };
        if r.hva.is_null() {
            return Err(bad("host address is NULL"));
        }
        if r.len == 0 {
            return Err(bad("length is zero"));
        }
        let len = usize::try_from(r.len).map_err(|_| bad("length too large"))?;
        if r.gpa.checked_add(r.len - 1).is_none() {
            return Err(bad("region wraps the guest address space"));
        }
        // SAFETY: the caller promises `hva` maps `len` read-write bytes for as long as the
        // returned memory lives; build_raw records the pointer without taking ownership, so
        // dropping the region never unmaps it.
        let mmap = unsafe {
            MmapRegion::build_raw(
                r.hva,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
            )
        }
        .map_err(|e| bad(&e.to_string()))?;
        let region = GuestRegionMmap::new(mmap, GuestAddress(r.gpa))
            .ok_or_else(|| bad("region overflows"))?;
        built.push(region);
    }
    GuestMemory::from_regions(built).map_err(|e| Error::MemoryRegion {
        gpa: regions.first().map(|r| r.gpa).unwrap_or(0),
        len: 0,
        reason: e.to_string(),
    })
}

/// The host address of `[addr, addr+len)` when the whole range lies inside one region (the
/// common case), else `None` (outside guest memory, or straddling two regions: callers then
/// take vm-memory's slice path). One region lookup and a bounds check, instead of the ~100-200
/// instructions of vm-memory's `read_slice` / `get_slices` iterator machinery.
///
/// The pointer stays valid while `mem` (or a clone) lives. `GuestMemory` has no dirty bitmap
/// (`GuestMemoryMmap<()>`), so writes through it need no dirty tracking.
#[inline]
pub fn host_ptr(mem: &GuestMemory, addr: GuestAddress, len: u64) -> Option<*mut u8> {
    let r = mem.find_region(addr)?;
    // find_region guarantees start <= addr <= last, so `off < r.len()`.
    let off = addr.0 - r.start_addr().0;
    if len > r.len() - off {
        return None;
    }
    Some(r.as_ptr().wrapping_add(off as usize))
}

/// Reads 16 bytes (a descriptor, a virtio-blk header) at `addr` with two aligned volatile
/// loads; `None` when the range is not inside one region or not 8-byte aligned (callers fall
/// back to `read_slice`).
#[inline]
pub fn read_16(mem: &GuestMemory, addr: GuestAddress) -> Option<[u8; 16]> {
    let p = host_ptr(mem, addr, 16)?;
    if p as usize % 8 != 0 {
        return None;
    }
    // SAFETY: `p` points to 16 bytes of guest memory inside one mapped region (host_ptr) and is
    // 8-byte aligned; volatile loads because the guest may change them concurrently.
    let (lo, hi) = unsafe {
        (
            std::ptr::read_volatile(p as *const u64),
            std::ptr::read_volatile(p.add(8) as *const u64),
        )
    };
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&lo.to_ne_bytes());
    b[8..].copy_from_slice(&hi.to_ne_bytes());
    Some(b)
}

/// The bounds of the region the last checked range was found in, so a run of checks on
/// nearby buffers (one chain's descriptors) costs two compares each instead of a region
/// lookup. Start a new hint for every walk: it describes one memory map.
#[derive(Debug, Default, Clone, Copy)]
pub struct RegionHint {
    start: u64,
    /// Exclusive end; `start == end` means no region yet.
    end: u64,
}

impl RegionHint {
    /// [`range_valid`], answered from the hint when the range lies inside its region.
    #[inline]
    pub fn range_valid(&mut self, mem: &GuestMemory, addr: GuestAddress, len: u64) -> bool {
        let a = addr.0;
        if a >= self.start && a < self.end && len <= self.end - a {
            return true;
        }
        if let Some(r) = mem.find_region(addr) {
            let start = r.start_addr().0;
            // A region ending at the top of the address space keeps its last byte out of the
            // hint (conservative: such ranges take the slow path below).
            let end = start.saturating_add(r.len());
            self.start = start;
            self.end = end;
            if a < end && len <= end - a {
                return true;
            }
        }
        range_valid(mem, addr, len)
    }
}

/// Whether `[addr, addr+len)` is entirely inside guest memory.
pub fn range_valid(mem: &GuestMemory, addr: GuestAddress, len: u64) -> bool {
    if host_ptr(mem, addr, len).is_some() {
        return true;
    }
    if len == 0 {
        return false;
    }
    match usize::try_from(len) {
        Ok(len) => GuestMemoryBackend::check_range(mem, addr, len),
        Err(_) => false,
    }
}

/// Host (pointer, length) pieces covering `[addr, addr+len)` of guest memory, split where the
/// range crosses region boundaries. The pointers stay valid while `mem` (or a clone) lives.
pub fn host_slices(
    mem: &GuestMemory,
    addr: GuestAddress,
    len: u32,
    out: &mut Vec<(*mut u8, usize)>,
) -> Result<()> {
    for slice in mem.get_slices(addr, len as usize) {
        let slice = slice.map_err(|source| Error::Memory { addr, source })?;
        out.push((slice.ptr_guard_mut().as_ptr(), slice.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn host_regions_are_not_owned() {
        // Guest RAM as a hypervisor maps it: page-aligned anonymous memory.
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let hva = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(hva, libc::MAP_FAILED);
        let region = HostRegion {
            gpa: 0x10000,
            len: 8192,
            hva: hva.cast(),
        };
        // SAFETY: the mapping outlives `mem`, which is dropped before munmap below.
        let mem = unsafe { from_host_regions(&[region]) }.unwrap();
        mem.write_slice(b"abc", GuestAddress(0x10010)).unwrap();
        assert!(range_valid(&mem, GuestAddress(0x10000), 8192));
        assert!(!range_valid(&mem, GuestAddress(0x10000), 8193));
        drop(mem);
        // SAFETY: the mapping is 8192 bytes long and still mapped (vstor did not unmap it).
        let seen = unsafe { std::slice::from_raw_parts(hva.cast::<u8>().add(0x10), 3) };
        assert_eq!(seen, b"abc");
        // SAFETY: unmapping the mapping made above; nothing refers to it any more.
        unsafe { libc::munmap(hva, 8192) };
    }

    #[test]
    fn bad_regions_are_refused() {
        let bad = HostRegion {
            gpa: 0,
            len: 0,
            hva: std::ptr::null_mut(),
        };
        // SAFETY: the region is invalid and must be refused before any use.
        assert!(unsafe { from_host_regions(&[bad]) }.is_err());
        // SAFETY: no regions, nothing to map: every access must fail.
        let empty = unsafe { from_host_regions(&[]) }.unwrap();
        assert!(!range_valid(&empty, GuestAddress(0), 1));
    }

    #[test]
    fn region_hint_agrees_with_range_valid() {
        let mem = anonymous(&[
            (GuestAddress(0), 4096),
            (GuestAddress(4096), 4096),
            (GuestAddress(0x10000), 4096),
        ])
        .unwrap();
        let mut hint = RegionHint::default();
        // Every (addr, len) pair around the region edges, in an order that exercises hits and
        // misses of the hint.
        for addr in [
            0u64, 1, 4000, 4095, 4096, 8191, 8192, 0xffff, 0x10000, 0x10fff, 0x11000,
        ] {
            for len in [0u64, 1, 96, 97, 4096, 4097, 8192, 8193, u64::MAX] {
                let a = GuestAddress(addr);
                assert_eq!(
                    hint.range_valid(&mem, a, len),
                    range_valid(&mem, a, len),
                    "addr {addr:#x} len {len}"
                );
            }
        }
    }

    #[test]
    fn slices_split_at_region_boundaries() {
        let mem = anonymous(&[(GuestAddress(0), 4096), (GuestAddress(4096), 4096)]).unwrap();
        let mut out = Vec::new();
        host_slices(&mem, GuestAddress(4000), 200, &mut out).unwrap();
        assert_eq!(out.iter().map(|s| s.1).collect::<Vec<_>>(), vec![96, 104]);
        out.clear();
        assert!(host_slices(&mem, GuestAddress(8000), 200, &mut out).is_err());
    }
}
