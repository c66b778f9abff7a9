//! Cluster allocation and refcount updates: finding free clusters, creating refcount blocks
//! (each new block covers itself), growing the refcount table, and L2 tables for writes
//! (allocating missing ones, copying ones shared with a snapshot).

use super::entries::{self, L1Entry, COPIED, OFFSET_MASK};
use super::meta::Meta;
use crate::error::Result;
use crate::image::MAX_IMAGE_FILE_SIZE;

impl Meta {
    /// Adds `delta` to the refcount of the cluster at `off`.
    pub fn change_refcount(&mut self, off: u64, delta: i64) -> Result<()> {
        let (ri, bi) = self.rc_index(off);
        let boff = self
            .reftable
            .get(ri)
            .map(|&e| entries::refcount_table_entry_offset(e))
            .unwrap_or(0);
        if boff == 0 {
            if delta < 0 {
                return Err(self.corrupt(
                    format!("refcount of cluster {off:#x}"),
                    "freeing a cluster that has no refcount block",
                ));
            }
            // Only allocation increments clusters without a block, and it creates the block.
            return Err(self.corrupt(
                format!("refcount of cluster {off:#x}"),
                "no refcount block covers it",
            ));
        }
        self.load_rb(boff)?;
        let bits = self.hdr.refcount_bits();
        let t = self.rb.get(boff).expect("loaded");
        let old = entries::get_refcount(&t.data, bi, bits);
        let new = if delta < 0 {
            old.checked_sub(delta.unsigned_abs())
        } else {
            old.checked_add(delta as u64)
                .filter(|&v| v <= entries::max_refcount(bits))
        };
        let Some(new) = new else {
            return Err(self.corrupt(
                format!("refcount of cluster {off:#x}"),
                format!("{old} {delta:+} does not fit in {bits} bits"),
            ));
        };
        entries::set_refcount(&mut t.data, bi, bits, new);
        t.dirty = true;
        if new == 0 {
            let c = off >> self.hdr.cluster_bits;
            self.free_hint = self.free_hint.min(c);
            self.meta_clusters
                .remove(&(off & !(self.cluster_size() - 1)));
        }
        Ok(())
    }

    /// Allocates one cluster with refcount 1. Returns its offset and whether it is fresh
    /// (never written, so it reads as zeroes).
    pub fn alloc_cluster(&mut self) -> Result<(u64, bool)> {
        if self.read_only {
            return Err(crate::Error::ReadOnly { op: "allocate" });
        }
        let cs = self.cluster_size();
        loop {
            let off = self.find_free()?;
            let (ri, bi) = self.rc_index(off);
            if ri >= self.reftable.len() {
                self.grow_reftable(ri)?;
                continue;
            }
            if self.reftable[ri] == 0 {
                // A new refcount block, placed in the first free cluster of the range it covers
                // (which is this one) and counting itself.
                let mut data = vec![0u8; cs as usize];
                entries::set_refcount(&mut data, bi, self.hdr.refcount_bits(), 1);
                self.insert_rb(off, data)?;
                self.reftable[ri] = off;
                self.reftable_dirty = true;
                self.meta_clusters.insert(off);
                self.alloc_end = self.alloc_end.max(off + cs);
                continue;
            }
            let fresh = off >= self.alloc_end;
            self.change_refcount(off, 1)?;
            self.alloc_end = self.alloc_end.max(off + cs);
            self.free_hint = (off >> self.hdr.cluster_bits) + 1;
            return Ok((off, fresh));
        }
    }

    fn insert_rb(&mut self, off: u64, data: Vec<u8>) -> Result<()> {
        if self.rb.full() && !self.rb.evict_clean() {
            self.write_refcounts()?;
            self.rb.evict_clean();
        }
        self.rb.insert(off, data, true);
        Ok(())
    }

    /// The first cluster with refcount 0 at or after the free hint.
    pub(crate) fn find_free(&mut self) -> Result<u64> {
        let cb = self.hdr.cluster_bits;
        let mut c = self.free_hint.max(1);
        loop {
            let off = c << cb;
            if off >= MAX_IMAGE_FILE_SIZE {
                return Err(self.corrupt("image", "no free cluster below the largest file size"));
            }
            if off >= self.alloc_end {
                return Ok(off);
            }
            if !self.is_meta(off) && self.refcount(off)? == 0 {
                self.free_hint = c;
                return Ok(off);
            }
            c += 1;
        }
    }

    /// Grows the refcount table so that it has an entry `needed`: the new table and the
    /// refcount blocks it needs for itself go at the end of the image, are written, then the
    /// header switches to them, then the old table is freed.
    fn grow_reftable(&mut self, needed: usize) -> Result<()> {
        let cs = self.cluster_size();
        let per_cluster = (cs / 8) as usize;
        let entries_wanted = (needed + 1).max(self.reftable.len() * 2);
        let clusters = entries_wanted.div_ceil(per_cluster) as u64;
        if clusters * cs > super::header::MAX_REFTABLE_BYTES {
            return Err(self.corrupt(
                "refcount table",
                format!(
                    "would grow past {} bytes",
                    super::header::MAX_REFTABLE_BYTES
                ),
            ));
        }
        let table_off = self.alloc_end;
        let mut table = self.reftable.clone();
        table.resize((clusters * cs / 8) as usize, 0);
        let mut next = table_off + clusters * cs;
        let mut pending: Vec<u64> = (0..clusters).map(|i| table_off + i * cs).collect();
        let bits = self.hdr.refcount_bits();
        let mut new_blocks: Vec<(u64, Vec<u8>)> = Vec::new();
        while let Some(c) = pending.pop() {
            let (ri, bi) = self.rc_index(c);
            if ri >= table.len() {
                return Err(self.corrupt("refcount table", "growth does not cover its own blocks"));
            }
            if table[ri] == 0 {
                table[ri] = next;
                new_blocks.push((next, vec![0u8; cs as usize]));
                pending.push(next);
                next += cs;
            }
            let boff = table[ri];
            if let Some((_, b)) = new_blocks.iter_mut().find(|(o, _)| *o == boff) {
                let v = entries::get_refcount(b, bi, bits);
                entries::set_refcount(b, bi, bits, v + 1);
            } else {
                self.change_refcount(c, 1)?;
            }
        }
        // New blocks, then dirty old blocks, then the new table, then the header.
        self.file.flush()?;
        for (off, b) in &new_blocks {
            self.file.write_at(b, *off)?;
        }
        let old_off = self.hdr.refcount_table_offset;
        let old_clusters = u64::from(self.hdr.refcount_table_clusters);
        self.reftable = table;
        self.hdr.refcount_table_offset = table_off;
        self.hdr.refcount_table_clusters = clusters as u32;
        self.reftable_dirty = true;
        self.write_refcounts()?;
        self.write_header()?;
        for (off, _) in &new_blocks {
            self.meta_clusters.insert(*off);
        }
        for i in 0..clusters {
            self.meta_clusters.insert(table_off + i * cs);
        }
        self.alloc_end = self.alloc_end.max(next);
        for i in 0..old_clusters {
            let off = old_off + i * cs;
            self.meta_clusters.remove(&off);
            self.change_refcount(off, -1)?;
        }
        Ok(())
    }

    /// The L2 table a write to `guest` must update, allocated or copied (when shared with a
    /// snapshot) as needed. Returns (L2 table offset, index in it).
    pub fn l2_for_write(&mut self, guest: u64) -> Result<(u64, usize)> {
        let (i1, i2) = self.l2_index(guest);
        let e = L1Entry(self.l1[i1]);
        let old = e.l2_offset();
        if old != 0 && e.copied() {
            self.load_l2(old)?;
            return Ok((old, i2));
        }
        let data = if old == 0 {
            vec![0u8; self.cluster_size() as usize]
        } else {
            self.load_l2(old)?;
            self.l2.get(old).expect("loaded").data.clone()
        };
        let (new, _) = self.alloc_cluster()?;
        self.meta_clusters.insert(new);
        if self.l2.full() && !self.l2.evict_clean() {
            self.write_back()?;
            self.l2.evict_clean();
        }
        self.l2.insert(new, data, true);
        self.l1[i1] = new | COPIED;
        self.l1_dirty = true;
        if old != 0 {
            self.deferred_frees.push(old & OFFSET_MASK);
        }
        Ok((new, i2))
    }
}
