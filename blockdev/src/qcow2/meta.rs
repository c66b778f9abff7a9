//! The in-memory metadata of an open image (header, L1, cached L2 tables and refcount blocks)
//! and its ordered write-back: data, then refcount blocks, refcount table, L2 tables, L1 table
//! and header, with a flush between each class, so a crash at any point leaves at most leaked
//! clusters.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::cache::TableCache;
use super::entries::{self, ClusterKind, L1Entry, L2Entry, OFFSET_MASK};
use super::header::{Header, INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use crate::error::{Error, Result};
use crate::image::ImageFile;
use crate::types::BlockDev;

/// Everything that changes while an image is open, behind the device's mutex.
pub(crate) struct Meta {
    pub name: String,
    pub hdr: Header,
    pub file: Arc<dyn ImageFile>,
    pub read_only: bool,
    pub l1: Vec<u64>,
    pub l1_dirty: bool,
    pub l2: TableCache,
    pub reftable: Vec<u64>,
    pub reftable_dirty: bool,
    pub rb: TableCache,
    /// First cluster index worth scanning for a free cluster.
    pub free_hint: u64,
    /// The image file is known to be at least this long (it only grows while open).
    pub file_len: u64,
    /// End of everything allocated so far (the file may be shorter: data not yet written).
    pub alloc_end: u64,
    /// Host clusters holding metadata (header, tables, refcount blocks, L2 tables).
    pub meta_clusters: BTreeSet<u64>,
    /// Sorted, disjoint [start, end) byte ranges of the snapshot table and snapshot L1 tables.
    pub snap_ranges: Vec<(u64, u64)>,
    /// Clusters whose refcount drops once the L2/L1 changes that stopped using them are on disk.
    pub deferred_frees: Vec<u64>,
    /// Data was written since the last flush.
    pub data_dirty: bool,
    /// Refcounts are not kept on disk while open (lazy refcounts): the dirty bit says so.
    pub lazy: bool,
    /// The cache mode writes through (writethrough, directsync): metadata is written back
    /// after every change instead of at flushes.
    pub write_through: bool,
    /// Where guest data lives (the image itself, or the external data file).
    pub data: Arc<dyn ImageFile>,
    /// The backing device, if any.
    pub backing: Option<Arc<dyn BlockDev>>,
    /// Where the next compressed cluster may start (inside a partly used host cluster).
    pub zfree: Option<u64>,
    /// The last decompressed cluster (host descriptor offset, bytes).
    pub zcache: Option<(u64, Vec<u8>)>,
}

impl Meta {
    pub fn cluster_size(&self) -> u64 {
        self.hdr.cluster_size()
    }

    pub fn corrupt(&self, field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::corrupt(&self.name, field, reason)
    }

    /// Reads the L1 table and refcount table and indexes the metadata clusters.
    pub fn load(
        file: Arc<dyn ImageFile>,
        hdr: Header,
        read_only: bool,
        l2_cap: usize,
        rb_cap: usize,
    ) -> Result<Meta> {
        let name = file.name().to_string();
        let cs = hdr.cluster_size();
        let file_len = file.len()?;
        let l1 = read_u64_table(&*file, hdr.l1_table_offset, hdr.l1_size as usize)?;
        let rt_len = (u64::from(hdr.refcount_table_clusters) * cs / 8) as usize;
        let reftable = read_u64_table(&*file, hdr.refcount_table_offset, rt_len)?;
        let mut meta_clusters = BTreeSet::new();
        meta_clusters.insert(0);
        let add_range = |set: &mut BTreeSet<u64>, off: u64, len: u64| {
            let mut c = off / cs * cs;
            while c < off + len {
                set.insert(c);
                c += cs;
            }
        };
        add_range(
            &mut meta_clusters,
            hdr.l1_table_offset,
            u64::from(hdr.l1_size) * 8,
        );
        add_range(
            &mut meta_clusters,
            hdr.refcount_table_offset,
            rt_len as u64 * 8,
        );
        let end = file_len.div_ceil(cs) * cs;
        let inside = |off: u64| off.checked_add(cs).is_some_and(|e| e <= end);
        for (i, &e) in reftable.iter().enumerate() {
            let off = entries::refcount_table_entry_offset(e);
            let field = || format!("refcount table entry {i}");
            if e & 0x1ff != 0 || off % cs != 0 {
                let why = format!("{e:#x} is not a cluster-aligned offset");
                return Err(Error::corrupt(&name, field(), why));
            }
            if off == 0 {
                continue;
            }
            if !inside(off) {
                let why = format!("refcount block {off:#x} is past the end of the file");
                return Err(Error::corrupt(&name, field(), why));
            }
            if !meta_clusters.insert(off) {
                let why = format!("refcount block {off:#x} overlaps other metadata");
                return Err(Error::corrupt(&name, field(), why));
            }
        }
        // The snapshot table and the snapshots' L1 tables must never be overwritten. They are
        // kept as merged ranges: 65536 snapshots of 32 MiB L1 tables are legal, and a set of
        // their clusters would take billions of inserts.
        let mut snap_ranges = Vec::new();
        if hdr.nb_snapshots > 0 {
            let (table_len, l1s) = snapshot_extents(&*file, &hdr)?;
            snap_ranges.push((
                hdr.snapshots_offset / cs * cs,
                hdr.snapshots_offset + table_len,
            ));
            for (off, n) in l1s {
                snap_ranges.push((off / cs * cs, off + u64::from(n) * 8));
            }
            snap_ranges = merge_ranges(snap_ranges);
        }
        let in_snap = |off: u64| in_ranges(&snap_ranges, off);
        if let Some(&b) = meta_clusters.iter().find(|&&c| c != 0 && in_snap(c)) {
            let why =
                format!("cluster {b:#x} is used by a refcount structure and a snapshot table");
            return Err(Error::corrupt(&name, "snapshot table", why));
        }
        let fixed = meta_clusters.clone();
        for (i, &e) in l1.iter().enumerate() {
            L1Entry(e).check(&name, || format!("L1 entry {i}"), cs)?;
            let off = L1Entry(e).l2_offset();
            if off == 0 {
                continue;
            }
            let why = if !inside(off) {
                "is past the end of the file"
            } else if fixed.contains(&off) || in_snap(off) {
                "overlaps the header, a refcount structure or a snapshot table"
            } else {
                meta_clusters.insert(off);
                continue;
            };
            let why = format!("L2 table {off:#x} {why}");
            return Err(Error::corrupt(&name, format!("L1 entry {i}"), why));
        }
        Ok(Meta {
            name,
            lazy: hdr.lazy_refcounts() && !read_only,
            hdr,
            read_only,
            l1,
            l1_dirty: false,
            l2: TableCache::new(l2_cap),
            reftable,
            reftable_dirty: false,
            rb: TableCache::new(rb_cap),
            free_hint: 1,
            alloc_end: end,
            file_len,
            meta_clusters,
            snap_ranges,
            deferred_frees: Vec::new(),
            data_dirty: false,
            write_through: false,
            data: file.clone(),
            file,
            backing: None,
            zcache: None,
            zfree: None,
        })
    }

    /// What an L2 entry maps to in this image. With an external data file, host offset 0 is
    /// a real cluster: an entry with only the COPIED flag is data there, not unallocated (every
    /// data-file cluster has refcount one, so COPIED tells the two apart, as in QEMU).
    pub fn kind_of(&self, e: L2Entry) -> ClusterKind {
        let k = e.kind(self.hdr.cluster_bits, self.hdr.extended_l2());
        if k == ClusterKind::Unallocated
            && self.hdr.has_data_file()
            && e.word & entries::COPIED != 0
        {
            return ClusterKind::Normal {
                host: 0,
                copied: true,
            };
        }
        k
    }

    /// Whether the cluster at `c` holds metadata.
    pub fn is_meta(&self, c: u64) -> bool {
        self.meta_clusters.contains(&c) || in_ranges(&self.snap_ranges, c)
    }

    /// Index of the L1 entry and the L2 entry for a guest offset.
    pub fn l2_index(&self, guest: u64) -> (usize, usize) {
        let cb = self.hdr.cluster_bits;
        let cluster = guest >> cb;
        let per = self.hdr.l2_entries();
        ((cluster / per) as usize, (cluster % per) as usize)
    }

    /// Makes room in a cache, writing everything back when every table is dirty.
    fn make_room(&mut self, l2: bool) -> Result<()> {
        let full = if l2 { self.l2.full() } else { self.rb.full() };
        if !full {
            return Ok(());
        }
        let evicted = if l2 {
            self.l2.evict_clean()
        } else {
            self.rb.evict_clean()
        };
        if !evicted {
            self.write_back()?;
            if l2 {
                self.l2.evict_clean();
            } else {
                self.rb.evict_clean();
            }
        }
        Ok(())
    }

    /// Makes sure the L2 table at `off` is cached.
    pub fn load_l2(&mut self, off: u64) -> Result<()> {
        if self.l2.contains(off) {
            return Ok(());
        }
        self.make_room(true)?;
        let mut data = vec![0u8; self.cluster_size() as usize];
        self.file.read_at(&mut data, off)?;
        self.l2.insert(off, data, false);
        Ok(())
    }

    /// The L2 entry for a guest offset (unallocated when the L2 table is not).
    pub fn l2_entry(&mut self, guest: u64) -> Result<L2Entry> {
        let (i1, i2) = self.l2_index(guest);
        let Some(&l1e) = self.l1.get(i1) else {
            return Err(self.corrupt("L1 table", format!("no entry for guest offset {guest:#x}")));
        };
        let l2off = l1e & OFFSET_MASK;
        if l2off == 0 {
            return Ok(L2Entry::default());
        }
        self.load_l2(l2off)?;
        let es = self.hdr.l2_entry_size() as usize;
        let t = self.l2.get(l2off).expect("loaded");
        let at = i2 * es;
        let word = u64::from_be_bytes(t.data[at..at + 8].try_into().expect("8"));
        let bitmap = if es == 16 {
            u64::from_be_bytes(t.data[at + 8..at + 16].try_into().expect("8"))
        } else {
            0
        };
        let e = L2Entry { word, bitmap };
        let (cb, ext) = (self.hdr.cluster_bits, self.hdr.extended_l2());
        e.check(
            &self.name,
            || format!("L2 entry for guest offset {guest:#x}"),
            cb,
            ext,
        )?;
        Ok(e)
    }

    /// Stores an L2 entry into a cached (copied) L2 table at `l2off`.
    pub fn set_l2_entry(&mut self, l2off: u64, i2: usize, e: L2Entry) -> Result<()> {
        // The table was cached by `l2_for_write`; load it again if it was evicted since.
        self.load_l2(l2off)?;
        let es = self.hdr.l2_entry_size() as usize;
        let Some(t) = self.l2.get(l2off) else {
            return Err(self.corrupt("L2 cache", format!("table {l2off:#x} vanished")));
        };
        let at = i2 * es;
        t.data[at..at + 8].copy_from_slice(&e.word.to_be_bytes());
        if es == 16 {
            t.data[at + 8..at + 16].copy_from_slice(&e.bitmap.to_be_bytes());
        }
        t.dirty = true;
        Ok(())
    }

    /// Refcount of the host cluster at `off` (0 where no refcount block exists).
    pub fn refcount(&mut self, off: u64) -> Result<u64> {
        let (ri, bi) = self.rc_index(off);
        let Some(&e) = self.reftable.get(ri) else {
            return Ok(0);
        };
        let boff = entries::refcount_table_entry_offset(e);
        if boff == 0 {
            return Ok(0);
        }
        self.load_rb(boff)?;
        let bits = self.hdr.refcount_bits();
        Ok(entries::get_refcount(
            &self.rb.get(boff).expect("loaded").data,
            bi,
            bits,
        ))
    }

    /// (refcount table index, index inside the block) of a host offset.
    pub fn rc_index(&self, off: u64) -> (usize, usize) {
        let c = off >> self.hdr.cluster_bits;
        let per = self.hdr.refblock_entries();
        ((c / per) as usize, (c % per) as usize)
    }

    pub fn load_rb(&mut self, off: u64) -> Result<()> {
        if self.rb.contains(off) {
            return Ok(());
        }
        self.make_room(false)?;
        let mut data = vec![0u8; self.cluster_size() as usize];
        self.file.read_at(&mut data, off)?;
        self.rb.insert(off, data, false);
        Ok(())
    }

    /// Writes every dirty table in crash-safe order. Refcount blocks go first (so nothing on
    /// disk ever points at a cluster whose refcount is not yet on disk), then L2 tables, then
    /// the L1 table; deferred frees are applied once the tables that dropped them are on disk.
    pub fn write_back(&mut self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let metadata_dirty = self.l1_dirty || self.l2.any_dirty();
        if self.data_dirty || metadata_dirty {
            // Data (and copy-on-write) before the tables that point at it.
            if self.hdr.has_data_file() {
                self.data.flush()?;
            }
            self.file.flush()?;
            self.data_dirty = false;
        }
        if !self.lazy {
            self.write_refcounts()?;
        } else if metadata_dirty {
            // Lazy refcounts: tables reach the disk ahead of their refcounts only under the
            // dirty bit, which makes the next read-write open repair the refcounts.
            self.mark_dirty()?;
        }
        write_dirty_tables(&*self.file, &mut self.l2)?;
        if self.l1_dirty {
            let bytes = u64_table_bytes(&self.l1);
            self.file.write_at(&bytes, self.hdr.l1_table_offset)?;
            self.file.flush()?;
            self.l1_dirty = false;
        }
        if !self.deferred_frees.is_empty() {
            let frees = std::mem::take(&mut self.deferred_frees);
            // A freed cluster may be reused for anything: stop packing compressed data there.
            self.zfree = None;
            for off in frees {
                self.change_refcount(off, -1)?;
            }
        }
        Ok(())
    }

    /// Writes dirty refcount blocks, then the refcount table, with flushes after each.
    pub fn write_refcounts(&mut self) -> Result<()> {
        write_dirty_tables(&*self.file, &mut self.rb)?;
        if self.reftable_dirty {
            let bytes = u64_table_bytes(&self.reftable);
            self.file.write_at(&bytes, self.hdr.refcount_table_offset)?;
            self.file.flush()?;
            self.reftable_dirty = false;
        }
        Ok(())
    }

    /// In write-through mode (the guest sees no volatile cache and sends no flushes), makes
    /// the metadata of a completed change durable before the change completes.
    pub fn commit_if_write_through(&mut self) -> Result<()> {
        if self.write_through && (self.l1_dirty || self.l2.any_dirty() || self.rb.any_dirty()) {
            self.write_back()?;
        }
        Ok(())
    }

    /// Writes the header (after everything it points at is on disk).
    pub fn write_header(&mut self) -> Result<()> {
        let bytes = self.hdr.to_bytes()?;
        self.file.write_at(&bytes, 0)?;
        self.file.flush()
    }

    /// Sets the dirty bit on disk (lazy refcounts: before the first metadata write).
    pub fn mark_dirty(&mut self) -> Result<()> {
        if self.hdr.incompatible_features & INCOMPAT_DIRTY == 0 {
            self.hdr.incompatible_features |= INCOMPAT_DIRTY;
            self.write_header()?;
        }
        Ok(())
    }

    /// Writes everything back and, with lazy refcounts, the refcounts too, then clears the
    /// dirty bit (a clean close).
    pub fn close(&mut self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.write_back()?;
        if self.lazy {
            self.write_refcounts()?;
        }
        // Deferred frees applied by write_back are only in the cache so far.
        self.write_back()?;
        self.write_refcounts()?;
        if self.hdr.dirty() {
            self.hdr.incompatible_features &= !INCOMPAT_DIRTY;
            self.write_header()?;
        }
        // Give back what `cover` grew beyond the last allocated cluster.
        if self.file_len > self.alloc_end && !self.hdr.has_data_file() {
            let real = self.file.len()?;
            if real > self.alloc_end {
                self.file.set_len(self.alloc_end)?;
            }
            self.file_len = self.alloc_end;
        }
        Ok(())
    }

    /// Marks the image corrupt on disk (best effort) and returns the error to report: called
    /// when a write would land on metadata.
    pub fn mark_corrupt(&mut self, field: String, reason: String) -> Error {
        log::error!("{}: marking image corrupt: {field}: {reason}", self.name);
        if !self.read_only {
            self.hdr.incompatible_features |= INCOMPAT_CORRUPT;
            if let Err(e) = self.write_header() {
                log::error!("{}: could not set the corrupt bit: {e}", self.name);
            }
            self.read_only = true;
        }
        self.corrupt(field, reason)
    }

    /// Refuses a data write to `host` (a cluster offset) when it would overwrite metadata or
    /// lies beyond anything allocated.
    pub fn check_data_target(&mut self, host: u64, guest: u64) -> Result<()> {
        if self.hdr.has_data_file() {
            // Data lives in another file: it cannot overlap this one's metadata.
            return Ok(());
        }
        let cs = self.cluster_size();
        let c = host / cs * cs;
        if self.is_meta(c) {
            return Err(self.mark_corrupt(
                format!("L2 entry for guest offset {guest:#x}"),
                format!("data cluster {c:#x} overlaps metadata"),
            ));
        }
        if c >= self.alloc_end {
            return Err(self.mark_corrupt(
                format!("L2 entry for guest offset {guest:#x}"),
                format!(
                    "data cluster {c:#x} is past the end of the image ({:#x})",
                    self.alloc_end
                ),
            ));
        }
        Ok(())
    }
}

/// Writes every dirty table of a cache in offset order, then flushes.
fn write_dirty_tables(file: &dyn ImageFile, cache: &mut TableCache) -> Result<()> {
    let dirty = cache.dirty_offsets();
    if dirty.is_empty() {
        return Ok(());
    }
    for off in dirty {
        if let Some(t) = cache.get(off) {
            file.write_at(&t.data, off)?;
            t.dirty = false;
        }
    }
    file.flush()
}

/// Reads a table of `n` big-endian u64 at `off`.
pub(crate) fn read_u64_table(file: &dyn ImageFile, off: u64, n: usize) -> Result<Vec<u64>> {
    let mut bytes = vec![0u8; n * 8];
    file.read_at(&mut bytes, off)?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("8")))
        .collect())
}

/// Serialises a table of u64 big endian.
pub(crate) fn u64_table_bytes(t: &[u64]) -> Vec<u8> {
    t.iter().flat_map(|v| v.to_be_bytes()).collect()
}

/// Largest snapshot table read (QEMU's QCOW_MAX_SNAPSHOTS_SIZE).
const MAX_SNAPSHOT_TABLE: u64 = 64 << 20;

/// Walks the snapshot table: its length in bytes and each snapshot's (L1 offset, L1 size).
pub(crate) fn snapshot_extents(
    file: &dyn ImageFile,
    hdr: &Header,
) -> Result<(u64, Vec<(u64, u32)>)> {
    let name = file.name();
    let mut at = hdr.snapshots_offset;
    let mut l1s = Vec::new();
    let mut raw_end = at;
    for i in 0..hdr.nb_snapshots {
        let field = || format!("snapshot table entry {i}");
        if at - hdr.snapshots_offset > MAX_SNAPSHOT_TABLE {
            return Err(Error::corrupt(
                name,
                field(),
                "snapshot table larger than 64 MiB",
            ));
        }
        let mut e = [0u8; 40];
        file.read_at(&mut e, at)?;
        let l1_off = u64::from_be_bytes(e[0..8].try_into().expect("8"));
        let l1_size = u32::from_be_bytes(e[8..12].try_into().expect("4"));
        let id_len = u64::from(u16::from_be_bytes([e[12], e[13]]));
        let name_len = u64::from(u16::from_be_bytes([e[14], e[15]]));
        let extra = u64::from(u32::from_be_bytes(e[36..40].try_into().expect("4")));
        if extra > 1024 {
            return Err(Error::corrupt(
                name,
                field(),
                format!("extra data size {extra} exceeds 1024"),
            ));
        }
        if u64::from(l1_size) * 8 > super::header::MAX_L1_BYTES {
            return Err(Error::corrupt(
                name,
                field(),
                format!("L1 size {l1_size} exceeds 32 MiB"),
            ));
        }
        let cs = hdr.cluster_size();
        super::header::check_table(
            name,
            &field(),
            l1_off,
            u64::from(l1_size) * 8,
            cs,
            file.len()?,
        )?;
        l1s.push((l1_off, l1_size));
        let entry = 40 + extra + id_len + name_len;
        // The last entry's padding need not exist in the file.
        raw_end = at + entry;
        at += entry.div_ceil(8) * 8;
    }
    let len = at - hdr.snapshots_offset;
    if raw_end > file.len()? {
        return Err(Error::corrupt(
            name,
            "header.snapshots_offset",
            "snapshot table runs past the end of the file",
        ));
    }
    Ok((len, l1s))
}

/// Sorts and merges [start, end) ranges.
fn merge_ranges(mut r: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (a, b) in r {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// Whether `off` lies in one of the sorted, disjoint ranges.
fn in_ranges(r: &[(u64, u64)], off: u64) -> bool {
    let i = r.partition_point(|&(a, _)| a <= off);
    i > 0 && off < r[i - 1].1
}
