//! The synchronous write path: in-place writes to clusters this image owns alone, and
//! allocating writes (copy-on-write from the backing file, zero, compressed or shared clusters),
//! plus write-zeroes and discard on whole clusters. Data is written before the L2 entry that
//! points at it changes in the cache; the cache reaches the disk in `Meta::write_back` order.

use super::entries::{ClusterKind, L2Entry, COPIED, ZERO};
use super::meta::Meta;
use crate::error::{Error, Result};

/// Bits of the subclusters `first..=last`.
fn sub_mask(first: u64, last: u64) -> u32 {
    let n = last - first + 1;
    let ones = if n >= 32 { u32::MAX } else { (1u32 << n) - 1 };
    ones << first
}

impl Meta {
    fn writable(&self, op: &'static str) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly { op });
        }
        Ok(())
    }

    /// A host cluster for guest data at `guest`: from the allocator, or with an external data
    /// file the guest offset itself (QEMU's layout: data files are not refcounted). Returns
    /// whether it is fresh (known to read as zeroes).
    fn alloc_data(&mut self, guest: u64) -> Result<(u64, bool)> {
        if self.hdr.has_data_file() {
            return Ok((guest & !(self.cluster_size() - 1), false));
        }
        let (host, fresh) = self.alloc_cluster()?;
        self.cover(host + self.cluster_size())?;
        Ok((host, fresh))
    }

    /// Extends the image file to at least `end`: a data cluster lies wholly inside the file
    /// before anything is written to it, so later in-place writes never extend the file (an
    /// extending O_DIRECT write serialises against every other I/O on ext4).
    fn cover(&mut self, end: u64) -> Result<()> {
        if end <= self.file_len {
            return Ok(());
        }
        let real = self.file.len()?;
        // Grow in steps of at least 1 MiB (close trims what was not used).
        let step = self.cluster_size().max(1 << 20);
        let want = end.div_ceil(step) * step;
        if real < end {
            self.file.set_len(want)?;
        }
        self.file_len = real.max(want);
        Ok(())
    }

    /// Writes `data` at guest offset `guest` (any range inside the disk).
    pub fn write_sync(&mut self, mut guest: u64, mut data: &[u8]) -> Result<()> {
        self.writable("write")?;
        let cs = self.cluster_size();
        while !data.is_empty() {
            let n = ((cs - (guest & (cs - 1))) as usize).min(data.len());
            self.write_cluster(guest, &data[..n])?;
            data = &data[n..];
            guest += n as u64;
        }
        self.commit_if_write_through()
    }

    /// The host offset a write of `len` bytes at `guest` can go to without any metadata change
    /// (the fast path), or `None` when it needs the allocating path.
    pub fn in_place_target(&mut self, guest: u64, len: u64) -> Result<Option<u64>> {
        let e = self.l2_entry(guest)?;
        let ClusterKind::Normal { host, copied: true } = self.kind_of(e) else {
            return Ok(None);
        };
        let cs = self.cluster_size();
        let coff = guest & (cs - 1);
        if self.hdr.extended_l2() {
            let sc = cs / 32;
            let m = sub_mask(coff / sc, (coff + len - 1) / sc);
            if e.alloc_mask() & m != m {
                return Ok(None);
            }
        }
        self.check_data_target(host, guest)?;
        Ok(Some(host + coff))
    }

    /// For a write that must allocate, when the cluster's old content is zeroes (unallocated
    /// without a backing file, or a zero cluster without preallocation) and the next free
    /// cluster is fresh: allocates it, points the L2 entry at it and returns where the data
    /// goes, for the caller to write asynchronously. The L2 entry may reach the disk before the
    /// data does because a fresh cluster reads as zeroes, which is the old content; the file
    /// already covers it (`cover`), and a flush makes that length durable first.
    pub fn fresh_target(&mut self, guest: u64) -> Result<Option<u64>> {
        if self.hdr.extended_l2() || self.hdr.has_data_file() || self.read_only {
            return Ok(None);
        }
        let e = self.l2_entry(guest)?;
        let old_zero = match self.kind_of(e) {
            ClusterKind::Zero { host: None } => true,
            ClusterKind::Unallocated => self.backing.is_none(),
            _ => false,
        };
        if !old_zero || self.find_free()? < self.alloc_end {
            // Copy-on-write needed, or the allocator would reuse a cluster with old data.
            return Ok(None);
        }
        let cs = self.cluster_size();
        let (l2off, i2) = self.l2_for_write(guest)?;
        let (host, fresh) = self.alloc_data(guest)?;
        if !fresh {
            self.data.write_at(&vec![0u8; cs as usize], host)?;
        }
        self.set_l2_entry(l2off, i2, L2Entry::data(host))?;
        self.data_dirty = true;
        // Safe before the data lands, as above.
        self.commit_if_write_through()?;
        Ok(Some(host + (guest & (cs - 1))))
    }

    /// Writes `data` inside the cluster containing `guest`.
    fn write_cluster(&mut self, guest: u64, data: &[u8]) -> Result<()> {
        let len = data.len() as u64;
        if let Some(host) = self.in_place_target(guest, len)? {
            self.data.write_at(data, host)?;
            self.data_dirty = true;
            return Ok(());
        }
        if self.hdr.extended_l2() {
            return self.write_subclusters(guest, data);
        }
        let cs = self.cluster_size();
        let coff = guest & (cs - 1);
        let gbase = guest - coff;
        let e = self.l2_entry(guest)?;
        let kind = self.kind_of(e);
        // Old content for copy-on-write (not needed when the write covers the cluster).
        let whole = coff == 0 && len == cs;
        let old_zero = match kind {
            ClusterKind::Zero { .. } => true,
            ClusterKind::Unallocated => self.backing.is_none(),
            _ => false,
        };
        let (l2off, i2) = self.l2_for_write(guest)?;
        // A preallocated zero cluster we own alone is reused in place.
        let reuse = match kind {
            ClusterKind::Zero { host: Some(h) } if e.word & COPIED != 0 => Some(h),
            _ => None,
        };
        let (host, fresh) = match reuse {
            Some(h) => {
                self.check_data_target(h, guest)?;
                (h, false)
            }
            None => self.alloc_data(guest)?,
        };
        if whole {
            self.data.write_at(data, host)?;
        } else if fresh && old_zero {
            // A never-written cluster already reads as zeroes around the data.
            self.data.write_at(data, host + coff)?;
        } else {
            let mut buf = vec![0u8; cs as usize];
            if !old_zero {
                self.read_sync(gbase, &mut buf)?;
            }
            buf[coff as usize..(coff + len) as usize].copy_from_slice(data);
            self.data.write_at(&buf, host)?;
        }
        self.data_dirty = true;
        self.set_l2_entry(l2off, i2, L2Entry::data(host))?;
        self.release_old(kind, Some(host))?;
        Ok(())
    }

    /// Extended L2: allocates the host cluster if needed and writes only the touched
    /// subclusters (copying the untouched parts of partially written ones).
    fn write_subclusters(&mut self, guest: u64, data: &[u8]) -> Result<()> {
        let cs = self.cluster_size();
        let sc = cs / 32;
        let len = data.len() as u64;
        let coff = guest & (cs - 1);
        let gbase = guest - coff;
        let e = self.l2_entry(guest)?;
        let kind = self.kind_of(e);
        let (first, last) = (coff / sc, (coff + len - 1) / sc);
        let span = first * sc..(last + 1) * sc;
        // Current content of the touched subclusters, with the new data on top.
        let mut buf = vec![0u8; (span.end - span.start) as usize];
        if coff != span.start || coff + len != span.end {
            self.read_sync(gbase + span.start, &mut buf)?;
        }
        let at = (coff - span.start) as usize;
        buf[at..at + data.len()].copy_from_slice(data);
        let (l2off, i2) = self.l2_for_write(guest)?;
        let (host, mut bitmap, released) = match kind {
            ClusterKind::Normal { host, copied: true } => {
                self.check_data_target(host, guest)?;
                (host, e.bitmap, None)
            }
            ClusterKind::Unallocated | ClusterKind::Zero { .. } => {
                let (h, _) = self.alloc_data(guest)?;
                (h, e.bitmap, None)
            }
            _ => {
                // Shared or compressed: copy the whole cluster, then it is fully allocated.
                let mut full = vec![0u8; cs as usize];
                self.read_sync(gbase, &mut full)?;
                let (h, _) = self.alloc_data(guest)?;
                self.data.write_at(&full, h)?;
                (h, u64::from(u32::MAX), Some(kind))
            }
        };
        self.data.write_at(&buf, host + span.start)?;
        self.data_dirty = true;
        let m = u64::from(sub_mask(first, last));
        bitmap = (bitmap | m) & !(m << 32);
        self.set_l2_entry(
            l2off,
            i2,
            L2Entry {
                word: host | COPIED,
                bitmap,
            },
        )?;
        if let Some(k) = released {
            self.release_old(k, Some(host))?;
        }
        Ok(())
    }

    /// Queues the release of the host clusters an L2 entry of `kind` used, once the new entry
    /// is on disk (`keep` is a cluster that stays in use).
    fn release_old(&mut self, kind: ClusterKind, keep: Option<u64>) -> Result<()> {
        self.release_kind(kind, keep);
        Ok(())
    }

    /// See [`Meta::release_old`].
    pub(crate) fn release_kind(&mut self, kind: ClusterKind, keep: Option<u64>) {
        if self.hdr.has_data_file() {
            // Clusters of an external data file are not refcounted.
            return;
        }
        let cs = self.cluster_size();
        match kind {
            ClusterKind::Normal { host, .. } | ClusterKind::Zero { host: Some(host) }
                if Some(host) != keep =>
            {
                self.deferred_frees.push(host);
            }
            ClusterKind::Compressed { host, len } => {
                // Every host cluster the compressed data touches holds one reference for it.
                let data_len = len.min(2 * cs);
                let mut c = host / cs * cs;
                let end = host + data_len;
                while c < end {
                    self.deferred_frees.push(c);
                    c += cs;
                }
            }
            _ => {}
        }
    }

    /// Makes `[guest, guest+len)` read as zeroes: whole clusters by L2 update (freeing their
    /// host clusters when `unmap`), partial ones by writing zeroes. `discard` only frees whole
    /// clusters and ignores partial ones (the content of a discarded range is undefined).
    pub fn zero_range(
        &mut self,
        mut guest: u64,
        len: u64,
        unmap: bool,
        discard: bool,
    ) -> Result<()> {
        self.writable(if discard { "discard" } else { "write-zeroes" })?;
        if self.hdr.data_file_raw() {
            // The data file must keep reading as the disk does: zeroes go into it.
            if discard {
                return self.data.discard(guest, len);
            }
            let zeroes = vec![0u8; len.min(1 << 20) as usize];
            let mut pos = 0;
            while pos < len {
                let n = (len - pos).min(zeroes.len() as u64);
                self.write_sync(guest + pos, &zeroes[..n as usize])?;
                pos += n;
            }
            return Ok(());
        }
        let cs = self.cluster_size();
        let end = guest + len;
        while guest < end {
            let coff = guest & (cs - 1);
            let n = (cs - coff).min(end - guest);
            let e = self.l2_entry(guest)?;
            let kind = self.kind_of(e);
            let empty =
                kind == ClusterKind::Unallocated && e.alloc_mask() == 0 && self.backing.is_none();
            let whole = coff == 0 && n == cs;
            if empty {
                // Already reads as zeroes and holds nothing.
            } else if whole && (self.hdr.version >= 3 || discard) {
                self.zero_cluster(guest, e, unmap || discard, discard)?;
            } else if !discard {
                let zeroes = vec![0u8; n as usize];
                self.write_sync(guest, &zeroes)?;
            }
            guest += n;
        }
        self.zcache = None;
        self.commit_if_write_through()
    }

    fn zero_cluster(&mut self, guest: u64, e: L2Entry, unmap: bool, discard: bool) -> Result<()> {
        let ext = self.hdr.extended_l2();
        let kind = self.kind_of(e);
        // A discard without a backing file leaves the cluster unallocated (reads as zeroes);
        // otherwise v3 images get the zero flag; v2 has none (a discard then unallocates).
        let zero_flag = self.hdr.version >= 3 && (self.backing.is_some() || !discard);
        let keep = match kind {
            ClusterKind::Normal { host, copied: true } if !unmap => Some(host),
            ClusterKind::Zero { host: Some(h) } if !unmap && e.word & COPIED != 0 => Some(h),
            _ => None,
        };
        let (l2off, i2) = self.l2_for_write(guest)?;
        let word = keep.map_or(0, |h| h | COPIED);
        let new = if ext {
            let bitmap = if zero_flag {
                u64::from(u32::MAX) << 32
            } else {
                0
            };
            L2Entry { word, bitmap }
        } else {
            L2Entry {
                word: if zero_flag { word | ZERO } else { word },
                bitmap: 0,
            }
        };
        self.set_l2_entry(l2off, i2, new)?;
        self.release_old(kind, keep)
    }
}
