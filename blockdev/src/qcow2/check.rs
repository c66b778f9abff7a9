//! Offline consistency check and repair (`qemu-img check`), on an image file that nothing else
//! has open.
//!
//! The check recomputes the reference count of every host cluster from the metadata that
//! points at it (header, active and snapshot L1/L2 tables and their data, refcount table and
//! blocks, snapshot table, bitmaps) and compares it with the stored refcounts: a stored
//! refcount below the computed one is a corruption (a cluster could be handed out twice), one
//! above is a leak (wasted space). It also checks the COPIED flags of the active tables,
//! alignment and reserved bits. The counters and messages follow QEMU's so that the numbers
//! match `qemu-img check --output=json`.
//!
//! Memory: one 16-bit counter per host cluster (an image whose file implies more than 2^28
//! clusters is refused) plus the refcount blocks read.
//!
//! `qemu-img check` exits with 1 when `check_errors` is non-zero, else 2 for corruptions, else
//! 3 for leaks, else 0 (after a repair: of the second check).

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::image::ImageFile;

use super::entries::{self, COMPRESSED, COPIED, L1_RESERVED, L2_RESERVED, OFFSET_MASK, ZERO};
use super::header::{self, Header, MAX_L1_BYTES};
use super::snapshot::{self, RefEditor};

/// Largest number of host clusters the check keeps counters for.
pub const MAX_CHECK_CLUSTERS: u64 = 1 << 28;

/// Messages kept in a report (the counters go on counting past it).
const MAX_MESSAGES: usize = 10_000;

/// Reserved bits of a refcount table entry.
const REFT_RESERVED: u64 = 0x1ff;

/// What [`check`] may change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RepairMode {
    /// Report only; the image is opened for reading.
    #[default]
    None,
    /// Lower refcounts that are too high (leaks).
    Leaks,
    /// Fix leaks and corruptions: refcounts, COPIED flags, and a rebuilt refcount structure
    /// when the old one cannot be trusted.
    All,
}

/// The result of [`check`], field for field what `qemu-img check --output=json` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Metadata errors that may lose data (refcount too low, bad flags, bad offsets).
    pub corruptions: u64,
    /// Clusters whose refcount is higher than their references.
    pub leaks: u64,
    /// Errors that stopped parts of the check (unreadable metadata).
    pub check_errors: u64,
    /// Corruptions repaired.
    pub corruptions_fixed: u64,
    /// Leaks repaired.
    pub leaks_fixed: u64,
    /// End of the last cluster in use (`image-end-offset`).
    pub image_end_offset: u64,
    /// Guest clusters (virtual size / cluster size, rounded up).
    pub total_clusters: u64,
    /// Guest clusters of the active layer with data (or preallocated zero clusters).
    pub allocated_clusters: u64,
    /// Allocated guest clusters not contiguous with their predecessor in the same L2 table.
    pub fragmented_clusters: u64,
    /// Compressed guest clusters.
    pub compressed_clusters: u64,
    /// What was found, one line each, in QEMU's words.
    pub messages: Vec<String>,
}

impl CheckReport {
    /// Whether the image has neither corruptions nor leaks nor check errors.
    pub fn is_clean(&self) -> bool {
        self.corruptions == 0 && self.leaks == 0 && self.check_errors == 0
    }

    fn msg(&mut self, m: String) {
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(m);
        } else if self.messages.len() == MAX_MESSAGES {
            self.messages
                .push("(further messages suppressed)".to_string());
        }
    }
}

/// Checks (and with `mode` other than `None`, repairs) the qcow2 image in `file`. Like
/// `qemu-img check -r`, a repair is followed by a second check whose counters are returned,
/// with the `*_fixed` counts of the repair. After a repair that leaves no corruption the
/// dirty and corrupt header bits are cleared.
pub fn check(file: &dyn ImageFile, mode: RepairMode) -> Result<CheckReport> {
    if mode != RepairMode::None && file.read_only() {
        return Err(Error::ReadOnly { op: "check repair" });
    }
    let h = Header::read(file)?;
    let mut first = Checker::new(file, h, mode)?.run()?;
    if mode == RepairMode::None {
        return Ok(first);
    }
    let mut report = first.clone();
    if first.corruptions_fixed > 0 || first.leaks_fixed > 0 {
        let h = Header::read(file)?;
        report = Checker::new(file, h, RepairMode::None)?.run()?;
        report.corruptions_fixed = first.corruptions_fixed;
        report.leaks_fixed = first.leaks_fixed;
        first
            .messages
            .push("Double checking the fixed image now...".to_string());
        first.messages.append(&mut report.messages);
        report.messages = first.messages;
    }
    if report.corruptions == 0 && report.check_errors == 0 {
        let h = Header::read(file)?;
        let bits = header::INCOMPAT_DIRTY | header::INCOMPAT_CORRUPT;
        if h.version >= 3 && h.incompatible_features & bits != 0 {
            let v = h.incompatible_features & !bits;
            file.write_at(&v.to_be_bytes(), 72)?;
            file.flush()?;
        }
    }
    Ok(report)
}

/// Computed references, one counter per host cluster (saturating into a side table).
struct Refs {
    v: Vec<u16>,
    big: HashMap<u64, u64>,
}

impl Refs {
    fn get(&self, i: u64) -> u64 {
        match self.v.get(i as usize) {
            None => 0,
            Some(&u16::MAX) => self.big[&i],
            Some(&x) => u64::from(x),
        }
    }
    fn set(&mut self, i: u64, val: u64) {
        if i as usize >= self.v.len() {
            self.v.resize(i as usize + 1, 0);
        }
        if val >= u64::from(u16::MAX) {
            self.v[i as usize] = u16::MAX;
            self.big.insert(i, val);
        } else {
            self.v[i as usize] = val as u16;
            self.big.remove(&i);
        }
    }
    fn len(&self) -> u64 {
        self.v.len() as u64
    }
    fn highest_used(&self) -> Option<u64> {
        self.v.iter().rposition(|&x| x != 0).map(|i| i as u64)
    }
}

struct Checker<'a> {
    file: &'a dyn ImageFile,
    h: Header,
    mode: RepairMode,
    cs: u64,
    cbits: u32,
    file_len: u64,
    nb_clusters: u64,
    rmax: u64,
    refs: Refs,
    rep: CheckReport,
    rebuild: bool,
    /// Refcount table entries found broken (fixed by a rebuild).
    refblock_errors: u64,
    snapshots: Vec<snapshot::SnapshotInfo>,
    snapshots_size: u64,
}

impl<'a> Checker<'a> {
    fn new(file: &'a dyn ImageFile, h: Header, mode: RepairMode) -> Result<Checker<'a>> {
        let name = file.name().to_string();
        let cs = h.cluster_size();
        let file_len = file.len()?;
        let nb_clusters = file_len.div_ceil(cs);
        if nb_clusters > MAX_CHECK_CLUSTERS {
            return Err(Error::Unsupported {
                op: "check",
                what: format!(
                    "{name}: {nb_clusters} host clusters (the check handles at most {MAX_CHECK_CLUSTERS})"
                ),
            });
        }
        let rmax = entries::max_refcount(h.refcount_bits());
        Ok(Checker {
            file,
            cbits: h.cluster_bits,
            mode,
            cs,
            file_len,
            nb_clusters,
            rmax,
            refs: Refs {
                v: vec![0; nb_clusters as usize],
                big: HashMap::new(),
            },
            rep: CheckReport {
                total_clusters: h.size.div_ceil(cs),
                ..Default::default()
            },
            rebuild: false,
            refblock_errors: 0,
            snapshots: Vec::new(),
            snapshots_size: 0,
            h,
        })
    }

    fn corruption(&mut self, m: String) {
        self.rep.corruptions += 1;
        self.rep.msg(m);
    }

    fn run(mut self) -> Result<CheckReport> {
        match snapshot::read_table_sized(self.file, &self.h) {
            Ok((s, size)) => {
                self.snapshots = s;
                self.snapshots_size = size;
            }
            Err(e) => self.corruption(format!("ERROR cannot read the snapshot table: {e}")),
        }
        self.calculate()?;
        // Compare without fixing first: a broken refcount structure is rebuilt whole (or, when
        // that is not allowed, nothing is fixed), as QEMU does.
        let pre = self.rep.clone();
        let mut highest = self.compare(RepairMode::None)?;
        let found_corruptions = self.rep.corruptions - pre.corruptions;
        let found_leaks = self.rep.leaks - pre.leaks;
        if self.rebuild && self.mode == RepairMode::All {
            self.rep.msg("Rebuilding refcount structure".to_string());
            self.rebuild_refcounts()?;
            let fixed = found_corruptions + self.refblock_errors;
            self.rep.corruptions = self.rep.corruptions.saturating_sub(fixed);
            self.rep.corruptions_fixed += fixed;
            self.rep.leaks -= found_leaks;
            self.rep.leaks_fixed += found_leaks;
            highest = highest.max(self.refs.highest_used().unwrap_or(0));
        } else if self.rebuild && self.mode != RepairMode::None {
            self.rep
                .msg("ERROR need to rebuild refcount structures".to_string());
            self.rep.check_errors += 1;
        } else if self.mode != RepairMode::None && found_corruptions + found_leaks > 0 {
            self.rep = pre;
            highest = self.compare(self.mode)?;
        }
        self.check_copied()?;
        self.rep.image_end_offset = (highest + 1) * self.cs;
        Ok(self.rep)
    }

    /// Counts one reference to every cluster `[off, off + size)` touches.
    fn inc(&mut self, off: u64, size: u64) {
        if size == 0 {
            return;
        }
        let end = off.saturating_add(size);
        if end >= self.file_len.saturating_add(self.cs) {
            self.corruption(format!(
                "ERROR: counting reference for region exceeding the end of the file by one \
                 cluster or more: offset {off:#x} size {size:#x}"
            ));
            return;
        }
        for c in (off >> self.cbits)..=((end - 1) >> self.cbits) {
            let r = self.refs.get(c);
            if r >= self.rmax {
                self.corruption(format!(
                    "ERROR: overflow cluster offset={:#x}",
                    c << self.cbits
                ));
                continue;
            }
            self.refs.set(c, r + 1);
        }
    }

    fn read(&mut self, buf: &mut [u8], off: u64, what: &str) -> bool {
        match self.file.read_at(buf, off) {
            Ok(()) => true,
            Err(e) => {
                self.rep.check_errors += 1;
                self.rep
                    .msg(format!("ERROR: I/O error reading {what} at {off:#x}: {e}"));
                false
            }
        }
    }

    fn calculate(&mut self) -> Result<()> {
        self.inc(0, self.cs);
        let (l1_off, l1_size) = (self.h.l1_table_offset, self.h.l1_size);
        self.check_l1(l1_off, l1_size, true);
        if self.h.has_data_file() && !self.snapshots.is_empty() {
            let n = self.snapshots.len();
            self.corruption(format!("ERROR {n} snapshots in image with data file"));
        }
        for sn in std::mem::take(&mut self.snapshots) {
            if sn.l1_table_offset % self.cs != 0 {
                self.corruption(format!(
                    "ERROR snapshot {} ({}) l1_offset={:#x}: L1 table is not cluster aligned; \
                     snapshot table entry corrupted",
                    sn.id, sn.name, sn.l1_table_offset
                ));
                continue;
            }
            if u64::from(sn.l1_size) * 8 > MAX_L1_BYTES {
                self.corruption(format!(
                    "ERROR snapshot {} ({}) l1_size={:#x}: L1 table is too large; snapshot \
                     table entry corrupted",
                    sn.id, sn.name, sn.l1_size
                ));
                continue;
            }
            self.check_l1(sn.l1_table_offset, sn.l1_size, false);
        }
        if self.h.nb_snapshots > 0 {
            self.inc(self.h.snapshots_offset, self.snapshots_size);
        }
        let rt_bytes = u64::from(self.h.refcount_table_clusters) * self.cs;
        self.inc(self.h.refcount_table_offset, rt_bytes);
        self.check_bitmaps();
        self.check_refblocks()
    }

    fn check_l1(&mut self, l1_off: u64, l1_size: u32, active: bool) {
        if l1_size == 0 {
            return;
        }
        let bytes = u64::from(l1_size) * 8;
        self.inc(l1_off, bytes);
        let mut l1 = vec![0u8; bytes as usize];
        if !self.read(&mut l1, l1_off, "L1 table") {
            return;
        }
        let mut l2 = vec![0u8; self.cs as usize];
        for (i, e) in l1.chunks_exact(8).enumerate() {
            let e = u64::from_be_bytes(e.try_into().expect("8 bytes"));
            let l2_off = e & OFFSET_MASK;
            if e & L1_RESERVED != 0 {
                self.corruption(format!("ERROR L1 entry {i} ({e:#x}) has reserved bits set"));
            }
            if l2_off == 0 {
                continue;
            }
            self.inc(l2_off, self.cs);
            if l2_off % self.cs != 0 {
                self.corruption(format!(
                    "ERROR l2_offset={l2_off:#x}: Table is not cluster aligned; L1 entry corrupted"
                ));
            }
            if self.read(&mut l2, l2_off, "L2 table") {
                self.check_l2(&l2, l2_off, active);
            }
        }
    }

    fn check_l2(&mut self, l2: &[u8], l2_off: u64, active: bool) {
        let ext = self.h.extended_l2();
        let esize = self.h.l2_entry_size() as usize;
        let data_file = self.h.has_data_file();
        let mut next_contiguous = 0u64;
        for (i, e) in l2.chunks_exact(esize).enumerate() {
            let mut word = u64::from_be_bytes(e[..8].try_into().expect("8 bytes"));
            let bitmap = if ext {
                u64::from_be_bytes(e[8..16].try_into().expect("8 bytes"))
            } else {
                0
            };
            if word & COMPRESSED != 0 {
                let x = 62 - (self.cbits - 8);
                if word & COPIED != 0 {
                    self.corruption(format!(
                        "ERROR: coffset={:#x}: copied flag must never be set for compressed clusters",
                        word & ((1 << x) - 1)
                    ));
                    word &= !COPIED;
                }
                if data_file {
                    self.corruption(format!(
                        "ERROR compressed cluster {i} with data file, entry={word:#x}"
                    ));
                    continue;
                }
                if bitmap != 0 {
                    self.corruption(format!(
                        "ERROR compressed cluster {i} with non-zero subcluster allocation bitmap, \
                         entry={word:#x}"
                    ));
                    continue;
                }
                let coff = word & ((1 << x) - 1);
                let sectors = ((word & !COMPRESSED) >> x) + 1;
                self.inc(coff, sectors * 512 - (coff & 511));
                if active {
                    self.rep.allocated_clusters += 1;
                    self.rep.compressed_clusters += 1;
                    self.rep.fragmented_clusters += 1;
                }
                continue;
            }
            let reserved = if ext { L2_RESERVED | ZERO } else { L2_RESERVED };
            if word & reserved != 0 {
                self.corruption(format!(
                    "ERROR L2 entry {i} of table {l2_off:#x} ({word:#x}) has reserved bits set"
                ));
            }
            let off = word & OFFSET_MASK;
            let allocated = if !ext && word & ZERO != 0 {
                off != 0
            } else {
                off != 0 || (data_file && word & COPIED != 0)
            };
            if !allocated {
                if ext && bitmap as u32 != 0 {
                    self.corruption(
                        "ERROR: Unallocated cluster has non-zero subcluster allocation map"
                            .to_string(),
                    );
                }
                continue;
            }
            if ext && (bitmap >> 32) & bitmap != 0 {
                self.corruption(format!(
                    "ERROR offset={off:#x}: Allocated cluster has corrupted subcluster allocation bitmap"
                ));
            }
            if off % self.cs != 0 {
                self.corruption(format!(
                    "ERROR offset={off:#x}: Data cluster is not properly aligned; L2 entry corrupted."
                ));
            }
            if active {
                self.rep.allocated_clusters += 1;
                if next_contiguous != 0 && off != next_contiguous {
                    self.rep.fragmented_clusters += 1;
                }
                next_contiguous = off + self.cs;
            }
            if !data_file {
                self.inc(off, self.cs);
            }
        }
    }

    fn check_bitmaps(&mut self) {
        if self.h.autoclear_features & header::AUTOCLEAR_BITMAPS == 0 {
            return;
        }
        let Some((_, ext)) = self
            .h
            .other_extensions
            .iter()
            .find(|(k, _)| *k == header::EXT_BITMAPS)
        else {
            return;
        };
        if ext.len() < 24 {
            self.corruption("ERROR bitmaps extension is shorter than 24 bytes".to_string());
            return;
        }
        let be32 = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().expect("4"));
        let be64 = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().expect("8"));
        let nb = be32(ext, 0);
        let (dir_size, dir_off) = (be64(ext, 8), be64(ext, 16));
        if nb == 0 {
            return;
        }
        self.inc(dir_off, dir_size);
        if dir_size > 64 << 20 || dir_off % self.cs != 0 {
            self.corruption(format!(
                "ERROR bitmap directory at {dir_off:#x} ({dir_size} bytes) is invalid"
            ));
            return;
        }
        let mut dir = vec![0u8; dir_size as usize];
        if !self.read(&mut dir, dir_off, "bitmap directory") {
            return;
        }
        let mut at = 0usize;
        for _ in 0..nb {
            if at + 24 > dir.len() {
                self.corruption("ERROR bitmap directory is truncated".to_string());
                return;
            }
            let (toff, tsize) = (be64(&dir, at), u64::from(be32(&dir, at + 8)));
            let name_size = u16::from_be_bytes([dir[at + 18], dir[at + 19]]) as usize;
            let extra = be32(&dir, at + 20) as usize;
            at = (at + 24 + extra + name_size).div_ceil(8) * 8;
            self.inc(toff, tsize * 8);
            if toff % self.cs != 0 || tsize * 8 > 64 << 20 {
                self.corruption(format!("ERROR bitmap table at {toff:#x} is invalid"));
                continue;
            }
            let mut t = vec![0u8; (tsize * 8) as usize];
            if !self.read(&mut t, toff, "bitmap table") {
                continue;
            }
            for e in t.chunks_exact(8) {
                let e = u64::from_be_bytes(e.try_into().expect("8 bytes"));
                let off = e & OFFSET_MASK;
                if e & 0xff00_0000_0000_01fe != 0 || off % self.cs != 0 || (off != 0 && e & 1 != 0)
                {
                    self.corruption(format!("ERROR bitmap table entry {e:#x} is invalid"));
                    continue;
                }
                if off != 0 {
                    self.inc(off, self.cs);
                }
            }
        }
    }

    fn reftable(&mut self) -> Result<Vec<u64>> {
        let n = u64::from(self.h.refcount_table_clusters) * self.cs;
        let mut b = vec![0u8; n as usize];
        self.file.read_at(&mut b, self.h.refcount_table_offset)?;
        Ok(b.chunks_exact(8)
            .map(|e| u64::from_be_bytes(e.try_into().expect("8 bytes")))
            .collect())
    }

    fn check_refblocks(&mut self) -> Result<()> {
        let table = self.reftable()?;
        let mut blocks = Vec::new();
        for (i, &e) in table.iter().enumerate() {
            let off = e & !REFT_RESERVED;
            if e & REFT_RESERVED != 0 {
                self.corruption(format!(
                    "ERROR refcount table entry {i} has reserved bits set"
                ));
                self.rebuild = true;
                self.refblock_errors += 1;
                continue;
            }
            if off % self.cs != 0 {
                self.corruption(format!(
                    "ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted"
                ));
                self.rebuild = true;
                self.refblock_errors += 1;
                continue;
            }
            if off >> self.cbits >= self.nb_clusters {
                self.corruption(format!("ERROR refcount block {i} is outside image"));
                self.rebuild = true;
                self.refblock_errors += 1;
                continue;
            }
            if off != 0 {
                self.inc(off, self.cs);
                blocks.push((i, off >> self.cbits));
            }
        }
        for (i, c) in blocks {
            let r = self.refs.get(c);
            if r != 1 {
                self.corruption(format!("ERROR refcount block {i} refcount={r}"));
                self.rebuild = true;
                self.refblock_errors += 1;
            }
        }
        Ok(())
    }

    /// Compares stored and computed refcounts, fixing what `mode` allows; returns the highest
    /// cluster in use.
    fn compare(&mut self, mode: RepairMode) -> Result<u64> {
        let table = self.reftable()?;
        let epb = self.h.refblock_entries();
        let bits = self.h.refcount_bits();
        let n = self.nb_clusters.max(self.refs.len());
        let mut highest = 0u64;
        let mut block = vec![0u8; self.cs as usize];
        let mut start = 0u64;
        while start < n {
            let idx = start / epb;
            let end = ((idx + 1) * epb).min(n);
            let e = table.get(idx as usize).copied().unwrap_or(0);
            let boff = e & !REFT_RESERVED;
            let present = boff != 0 && boff % self.cs == 0;
            if boff % self.cs != 0 {
                for c in start..end {
                    self.rep.check_errors += 1;
                    self.rep.msg(format!(
                        "Can't get refcount for cluster {c}: Input/output error"
                    ));
                }
                start = end;
                continue;
            }
            if present {
                self.file.read_at(&mut block, boff)?;
            }
            let mut dirty = false;
            for c in start..end {
                let j = (c - idx * epb) as usize;
                let stored = if present {
                    entries::get_refcount(&block, j, bits)
                } else {
                    0
                };
                let computed = self.refs.get(c).min(self.rmax);
                if stored > 0 || computed > 0 {
                    highest = c;
                }
                if stored == computed {
                    continue;
                }
                let fixed = if stored == 0 {
                    self.rebuild = true;
                    None
                } else if stored > computed && mode != RepairMode::None {
                    Some(false)
                } else if stored < computed && mode == RepairMode::All {
                    Some(true)
                } else {
                    None
                };
                let what = match fixed {
                    Some(_) => "Repairing",
                    None if stored < computed => "ERROR",
                    None => "Leaked",
                };
                self.rep.msg(format!(
                    "{what} cluster {c} refcount={stored} reference={computed}"
                ));
                match fixed {
                    Some(corruption) => {
                        entries::set_refcount(&mut block, j, bits, computed);
                        dirty = true;
                        if corruption {
                            self.rep.corruptions_fixed += 1;
                        } else {
                            self.rep.leaks_fixed += 1;
                        }
                    }
                    None if stored < computed => self.rep.corruptions += 1,
                    None => self.rep.leaks += 1,
                }
            }
            if dirty {
                self.file.write_at(&block, boff)?;
            }
            start = end;
        }
        if mode != RepairMode::None {
            self.file.flush()?;
        }
        Ok(highest)
    }

    /// Writes a new refcount table and blocks after the last used cluster, from the computed
    /// counts, and points the header at them.
    fn rebuild_refcounts(&mut self) -> Result<()> {
        // The old table and blocks are no longer referenced once the header moves.
        let table = self.reftable()?;
        let rt_clusters = u64::from(self.h.refcount_table_clusters);
        let rt_first = self.h.refcount_table_offset >> self.cbits;
        for c in rt_first..rt_first + rt_clusters {
            let r = self.refs.get(c);
            self.refs.set(c, r.saturating_sub(1));
        }
        for &e in &table {
            let off = e & !REFT_RESERVED;
            if e & REFT_RESERVED == 0
                && off != 0
                && off % self.cs == 0
                && off >> self.cbits < self.nb_clusters
            {
                let c = off >> self.cbits;
                let r = self.refs.get(c);
                self.refs.set(c, r.saturating_sub(1));
            }
        }
        let epb = self.h.refblock_entries();
        let first = self
            .nb_clusters
            .max(self.refs.highest_used().map_or(1, |h| h + 1));
        let (mut t, mut b) = (0u64, 0u64);
        loop {
            let total = first + t + b;
            let nb = total.div_ceil(epb);
            let nt = (nb * 8).div_ceil(self.cs);
            if (nt, nb) == (t, b) {
                break;
            }
            (t, b) = (nt, nb);
        }
        for c in first..first + t + b {
            self.refs.set(c, 1);
        }
        let bits = self.h.refcount_bits();
        let mut new_table = vec![0u8; (t * self.cs) as usize];
        let mut block = vec![0u8; self.cs as usize];
        for i in 0..b {
            block.fill(0);
            for j in 0..epb {
                let v = self.refs.get(i * epb + j).min(self.rmax);
                if v != 0 {
                    entries::set_refcount(&mut block, j as usize, bits, v);
                }
            }
            let off = (first + t + i) << self.cbits;
            self.file.write_at(&block, off)?;
            new_table[(i * 8) as usize..(i * 8 + 8) as usize].copy_from_slice(&off.to_be_bytes());
        }
        let table_off = first << self.cbits;
        self.file.write_at(&new_table, table_off)?;
        self.file.flush()?;
        let mut hdr = [0u8; 12];
        hdr[..8].copy_from_slice(&table_off.to_be_bytes());
        hdr[8..].copy_from_slice(&(t as u32).to_be_bytes());
        self.file.write_at(&hdr, 48)?;
        self.file.flush()?;
        self.h.refcount_table_offset = table_off;
        self.h.refcount_table_clusters = t as u32;
        self.file_len = self.file.len()?;
        self.nb_clusters = self.file_len.div_ceil(self.cs);
        Ok(())
    }

    /// Checks (and repairs, when allowed) the COPIED flags of the active L1 and L2 tables
    /// against the stored refcounts.
    fn check_copied(&mut self) -> Result<()> {
        let repair = match self.mode {
            RepairMode::All => true,
            RepairMode::Leaks => {
                self.rep.check_errors == 0 && self.rep.corruptions == 0 && self.rep.leaks == 0
            }
            RepairMode::None => false,
        };
        let mut ed = RefEditor::open(self.file, &self.h)?;
        let l1_bytes = u64::from(self.h.l1_size) * 8;
        let mut l1 = vec![0u8; l1_bytes as usize];
        self.file.read_at(&mut l1, self.h.l1_table_offset)?;
        let esize = self.h.l2_entry_size() as usize;
        let mut l2 = vec![0u8; self.cs as usize];
        for i in 0..self.h.l1_size as usize {
            let e = u64::from_be_bytes(l1[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            let l2_off = e & OFFSET_MASK;
            if l2_off == 0 {
                continue;
            }
            let Ok(r) = ed.get(l2_off >> self.cbits) else {
                continue;
            };
            if (r == 1) != (e & COPIED != 0) {
                let what = if repair { "Repairing" } else { "ERROR" };
                self.rep.msg(format!(
                    "{what} OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={e:x} refcount={r}"
                ));
                if repair {
                    let ne = if r == 1 { e | COPIED } else { e & !COPIED };
                    self.file
                        .write_at(&ne.to_be_bytes(), self.h.l1_table_offset + i as u64 * 8)?;
                    self.rep.corruptions_fixed += 1;
                } else {
                    self.rep.corruptions += 1;
                }
            }
            if !self.read(&mut l2, l2_off, "L2 table") {
                continue;
            }
            let mut dirty = false;
            for j in 0..l2.len() / esize {
                let at = j * esize;
                let w = u64::from_be_bytes(l2[at..at + 8].try_into().expect("8 bytes"));
                let off = w & OFFSET_MASK;
                if w & COMPRESSED != 0 || off == 0 {
                    continue;
                }
                let r = if self.h.has_data_file() {
                    1
                } else {
                    match ed.get(off >> self.cbits) {
                        Ok(r) => r,
                        Err(_) => continue,
                    }
                };
                if (r == 1) != (w & COPIED != 0) {
                    let what = if repair { "Repairing" } else { "ERROR" };
                    self.rep.msg(format!(
                        "{what} OFLAG_COPIED data cluster: l2_entry={w:x} refcount={r}"
                    ));
                    if repair {
                        let nw = if r == 1 { w | COPIED } else { w & !COPIED };
                        l2[at..at + 8].copy_from_slice(&nw.to_be_bytes());
                        dirty = true;
                        self.rep.corruptions_fixed += 1;
                    } else {
                        self.rep.corruptions += 1;
                    }
                }
            }
            if dirty {
                self.file.write_at(&l2, l2_off)?;
            }
        }
        if repair {
            self.file.flush()?;
        }
        Ok(())
    }
}
