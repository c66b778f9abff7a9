//! Internal snapshots, offline: list, create, apply (revert to) and delete snapshots of an image
//! file that nothing else has open.
//!
//! A snapshot is a copy of the active L1 table plus one more reference on every L2 table and
//! data cluster reachable from it; the active layer then copies clusters on write because their
//! refcount is above one (their COPIED flags are cleared). Every operation orders its writes so
//! that a crash leaves at worst leaked clusters: refcounts go up (and are flushed) before
//! anything points at the new clusters, the header switches to the new snapshot table in one
//! write, and references are dropped only after nothing points at them any more.

use std::collections::{BTreeSet, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::image::ImageFile;

use super::entries::{self, COMPRESSED, COPIED, OFFSET_MASK};
use super::header::{Header, MAX_L1_BYTES, MAX_SNAPSHOTS};

/// Largest snapshot table accepted (QEMU's limit).
pub const MAX_TABLE_BYTES: u64 = 64 << 20;
/// Largest extra data of one snapshot table entry (QEMU's limit).
pub const MAX_EXTRA_DATA: u32 = 1024;
/// Extra data bytes this implementation knows (vm_state_size_large, disk_size, icount).
const KNOWN_EXTRA: usize = 24;

/// One entry of the snapshot table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Unique ID (a decimal number in images QEMU writes).
    pub id: String,
    /// Name given by the user.
    pub name: String,
    /// Size of the saved VM state (0 for disk-only snapshots).
    pub vm_state_size: u64,
    /// Creation time, seconds since the epoch.
    pub date_sec: u32,
    /// Creation time, nanoseconds part.
    pub date_nsec: u32,
    /// Guest clock at creation, in nanoseconds.
    pub vm_clock_nsec: u64,
    /// Instruction count at creation (record/replay), when recorded.
    pub icount: Option<u64>,
    /// Virtual disk size when the snapshot was taken, when recorded.
    pub disk_size: Option<u64>,
    /// Host offset of the snapshot's L1 table.
    pub l1_table_offset: u64,
    /// Entries in the snapshot's L1 table.
    pub l1_size: u32,
    /// Extra data bytes after the 24 known ones, kept as they are.
    pub unknown_extra: Vec<u8>,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads the snapshot table the header points at.
pub fn read_table(file: &dyn ImageFile, h: &Header) -> Result<Vec<SnapshotInfo>> {
    read_table_sized(file, h).map(|(s, _)| s)
}

/// Reads the snapshot table and returns it with its size in bytes.
pub(crate) fn read_table_sized(
    file: &dyn ImageFile,
    h: &Header,
) -> Result<(Vec<SnapshotInfo>, u64)> {
    let name = file.name();
    let n = h.nb_snapshots;
    if n == 0 {
        return Ok((Vec::new(), 0));
    }
    if n > MAX_SNAPSHOTS {
        return Err(Error::corrupt(
            name,
            "header.nb_snapshots",
            format!("{n} exceeds {MAX_SNAPSHOTS}"),
        ));
    }
    let base = h.snapshots_offset;
    if base % h.cluster_size() != 0 || base == 0 {
        return Err(Error::corrupt(
            name,
            "header.snapshots_offset",
            format!("{base:#x} is not a cluster-aligned table offset"),
        ));
    }
    let file_len = file.len()?;
    let mut out = Vec::with_capacity(n.min(1024) as usize);
    let mut size = 0u64;
    for i in 0..n {
        let field = || format!("snapshot table entry {i}");
        let at = base + size.div_ceil(8) * 8;
        let mut fixed = [0u8; 40];
        let need = |len: u64| -> Result<()> {
            let end = at + len;
            if end - base > MAX_TABLE_BYTES {
                return Err(Error::corrupt(
                    name,
                    field(),
                    format!("table exceeds {MAX_TABLE_BYTES} bytes"),
                ));
            }
            if end > file_len {
                return Err(Error::corrupt(
                    name,
                    field(),
                    "runs past the end of the file",
                ));
            }
            Ok(())
        };
        need(40)?;
        file.read_at(&mut fixed, at)?;
        let id_len = u64::from(be16(&fixed, 12));
        let name_len = u64::from(be16(&fixed, 14));
        let extra_len = be32(&fixed, 36);
        if extra_len > MAX_EXTRA_DATA {
            return Err(Error::corrupt(
                name,
                field(),
                format!("extra data size {extra_len} exceeds {MAX_EXTRA_DATA}"),
            ));
        }
        let var = u64::from(extra_len) + id_len + name_len;
        need(40 + var)?;
        let mut rest = vec![0u8; var as usize];
        file.read_at(&mut rest, at + 40)?;
        let (extra, strs) = rest.split_at(extra_len as usize);
        let (id, sname) = strs.split_at(id_len as usize);
        let mut sn = SnapshotInfo {
            id: String::from_utf8_lossy(id).into_owned(),
            name: String::from_utf8_lossy(sname).into_owned(),
            vm_state_size: u64::from(be32(&fixed, 32)),
            date_sec: be32(&fixed, 16),
            date_nsec: be32(&fixed, 20),
            vm_clock_nsec: be64(&fixed, 24),
            l1_table_offset: be64(&fixed, 0),
            l1_size: be32(&fixed, 8),
            ..Default::default()
        };
        if extra.len() >= 8 {
            sn.vm_state_size = be64(extra, 0);
        }
        if extra.len() >= 16 {
            sn.disk_size = Some(be64(extra, 8));
        }
        if extra.len() >= KNOWN_EXTRA {
            sn.icount = Some(be64(extra, 16)).filter(|&v| v != u64::MAX);
            sn.unknown_extra = extra[KNOWN_EXTRA..].to_vec();
        }
        size = at + 40 + var - base;
        out.push(sn);
    }
    Ok((out, size))
}

/// Serialises a snapshot table (entries 8-byte aligned); `disk_size` fills entries that do not
/// record theirs.
fn table_bytes(snaps: &[SnapshotInfo], disk_size: u64) -> Vec<u8> {
    let mut b = Vec::new();
    for sn in snaps {
        b.resize(b.len().div_ceil(8) * 8, 0);
        let extra_len = KNOWN_EXTRA + sn.unknown_extra.len();
        b.extend_from_slice(&sn.l1_table_offset.to_be_bytes());
        b.extend_from_slice(&sn.l1_size.to_be_bytes());
        b.extend_from_slice(&(sn.id.len() as u16).to_be_bytes());
        b.extend_from_slice(&(sn.name.len() as u16).to_be_bytes());
        b.extend_from_slice(&sn.date_sec.to_be_bytes());
        b.extend_from_slice(&sn.date_nsec.to_be_bytes());
        b.extend_from_slice(&sn.vm_clock_nsec.to_be_bytes());
        // A state too large for the old field reads as disk-only to older readers.
        let small = u32::try_from(sn.vm_state_size).unwrap_or(0);
        b.extend_from_slice(&small.to_be_bytes());
        b.extend_from_slice(&(extra_len as u32).to_be_bytes());
        b.extend_from_slice(&sn.vm_state_size.to_be_bytes());
        b.extend_from_slice(&sn.disk_size.unwrap_or(disk_size).to_be_bytes());
        b.extend_from_slice(&sn.icount.unwrap_or(u64::MAX).to_be_bytes());
        b.extend_from_slice(&sn.unknown_extra);
        b.extend_from_slice(sn.id.as_bytes());
        b.extend_from_slice(sn.name.as_bytes());
    }
    b.resize(b.len().div_ceil(8) * 8, 0);
    b
}

/// Lists the snapshots of the image in `file`.
pub fn list(file: &dyn ImageFile) -> Result<Vec<SnapshotInfo>> {
    let h = Header::read(file)?;
    read_table(file, &h)
}

/// Finds a snapshot by ID, then by name (QEMU's order).
fn find(file: &dyn ImageFile, snaps: &[SnapshotInfo], name_or_id: &str) -> Result<usize> {
    snaps
        .iter()
        .position(|s| s.id == name_or_id)
        .or_else(|| snaps.iter().position(|s| s.name == name_or_id))
        .ok_or_else(|| Error::InvalidOption {
            name: "snapshot",
            value: name_or_id.to_string(),
            reason: format!("{}: no snapshot with this ID or name", file.name()),
        })
}

/// Reads the header of an image about to be changed, refusing what snapshots cannot handle.
fn open_rw(file: &dyn ImageFile, op: &'static str) -> Result<Header> {
    if file.read_only() {
        return Err(Error::ReadOnly { op });
    }
    let h = Header::read(file)?;
    let what = if h.dirty() {
        "a dirty image (its refcounts may be stale: repair it with check first)"
    } else if h.corrupt() {
        "an image marked corrupt (repair it with check first)"
    } else if h.has_data_file() {
        "an image with an external data file"
    } else {
        return Ok(h);
    };
    Err(Error::Unsupported {
        op,
        what: format!("{}: {what}", file.name()),
    })
}

fn read_l1(file: &dyn ImageFile, off: u64, entries: u32) -> Result<Vec<u64>> {
    let bytes = u64::from(entries) * 8;
    if bytes > MAX_L1_BYTES {
        return Err(Error::corrupt(
            file.name(),
            "snapshot L1 table",
            format!("{entries} entries exceed 32 MiB"),
        ));
    }
    let mut b = vec![0u8; bytes as usize];
    file.read_at(&mut b, off)?;
    Ok(b.chunks_exact(8).map(|e| be64(e, 0)).collect())
}

fn l1_bytes(l1: &[u64]) -> Vec<u8> {
    l1.iter().flat_map(|e| e.to_be_bytes()).collect()
}

/// Writes `nb_snapshots` and `snapshots_offset` in one 12-byte header write, then flushes.
fn write_header_snapshots(file: &dyn ImageFile, nb: usize, off: u64) -> Result<()> {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&(nb as u32).to_be_bytes());
    b[4..].copy_from_slice(&off.to_be_bytes());
    file.write_at(&b, 60)?;
    file.flush()
}

/// Adds `delta` to the refcount of every L2 table and host cluster reachable from `l1`.
fn update_tree(
    file: &dyn ImageFile,
    h: &Header,
    ed: &mut RefEditor<'_>,
    l1: &[u64],
    delta: i64,
) -> Result<()> {
    let cs = h.cluster_size();
    let esize = h.l2_entry_size() as usize;
    let x = 62 - (h.cluster_bits - 8);
    let mut l2 = vec![0u8; cs as usize];
    for (i, &e) in l1.iter().enumerate() {
        let l2_off = e & OFFSET_MASK;
        if l2_off == 0 {
            continue;
        }
        if l2_off % cs != 0 {
            return Err(Error::corrupt(
                file.name(),
                format!("L1 entry {i}"),
                format!("L2 offset {l2_off:#x} is not cluster aligned"),
            ));
        }
        file.read_at(&mut l2, l2_off)?;
        for j in 0..l2.len() / esize {
            let w = be64(&l2, j * esize);
            if w & COMPRESSED != 0 {
                let coff = w & ((1 << x) - 1);
                let sectors = ((w & !COMPRESSED & !COPIED) >> x) + 1;
                ed.add(coff, sectors * 512 - (coff & 511), delta)?;
                continue;
            }
            let off = w & OFFSET_MASK;
            if off == 0 {
                continue;
            }
            if off % cs != 0 {
                return Err(Error::corrupt(
                    file.name(),
                    format!("L2 entry {j} of table {l2_off:#x}"),
                    format!("data offset {off:#x} is not cluster aligned"),
                ));
            }
            ed.add(off, cs, delta)?;
        }
        ed.add(l2_off, cs, delta)?;
    }
    Ok(())
}

/// Sets the COPIED flags of the active L1 table `l1` and its L2 tables from the refcounts,
/// writing what changed.
fn fix_copied(
    file: &dyn ImageFile,
    h: &Header,
    ed: &mut RefEditor<'_>,
    l1: &mut [u64],
) -> Result<()> {
    let cs = h.cluster_size();
    let esize = h.l2_entry_size() as usize;
    let mut l2 = vec![0u8; cs as usize];
    let mut l1_dirty = false;
    for e in l1.iter_mut() {
        let l2_off = *e & OFFSET_MASK;
        if l2_off == 0 {
            continue;
        }
        file.read_at(&mut l2, l2_off)?;
        let mut dirty = false;
        for j in 0..l2.len() / esize {
            let w = be64(&l2, j * esize);
            let off = w & OFFSET_MASK;
            if w & COMPRESSED != 0 || off == 0 {
                continue;
            }
            let r = ed.get(off / cs)?;
            let nw = if r == 1 { w | COPIED } else { w & !COPIED };
            if nw != w {
                l2[j * esize..j * esize + 8].copy_from_slice(&nw.to_be_bytes());
                dirty = true;
            }
        }
        if dirty {
            file.write_at(&l2, l2_off)?;
        }
        let r = ed.get(l2_off / cs)?;
        let ne = if r == 1 { *e | COPIED } else { *e & !COPIED };
        if ne != *e {
            *e = ne;
            l1_dirty = true;
        }
    }
    if l1_dirty {
        file.flush()?;
        file.write_at(&l1_bytes(l1), h.l1_table_offset)?;
    }
    file.flush()
}

fn clusters(bytes: u64, cs: u64) -> u64 {
    bytes.div_ceil(cs)
}

/// Creates a disk-only snapshot named `name` of the active layer.
pub fn create(file: &dyn ImageFile, name: &str) -> Result<()> {
    let h = open_rw(file, "snapshot create")?;
    let (mut snaps, old_size) = read_table_sized(file, &h)?;
    let bad = |reason: &str| Error::InvalidOption {
        name: "snapshot",
        value: name.to_string(),
        reason: format!("{}: {reason}", file.name()),
    };
    if name.is_empty() || name.len() > usize::from(u16::MAX) {
        return Err(bad("a snapshot name has 1 to 65535 bytes"));
    }
    if snaps.iter().any(|s| s.name == name) {
        return Err(bad("a snapshot with this name exists"));
    }
    if snaps.len() as u32 >= MAX_SNAPSHOTS {
        return Err(bad("the image has the most snapshots allowed"));
    }
    let id = snaps
        .iter()
        .filter_map(|s| s.id.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
        + 1;
    let cs = h.cluster_size();
    let l1 = read_l1(file, h.l1_table_offset, h.l1_size)?;
    let mut ed = RefEditor::open(file, &h)?;
    let sn_l1_off = if l1.is_empty() {
        0
    } else {
        ed.alloc(clusters(l1.len() as u64 * 8, cs))?
    };
    update_tree(file, &h, &mut ed, &l1, 1)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    snaps.push(SnapshotInfo {
        id: id.to_string(),
        name: name.to_string(),
        date_sec: now.as_secs() as u32,
        // As qemu-img: microsecond resolution, icount 0.
        date_nsec: now.subsec_micros() * 1000,
        icount: Some(0),
        disk_size: Some(h.size),
        l1_table_offset: sn_l1_off,
        l1_size: h.l1_size,
        ..Default::default()
    });
    let table = table_bytes(&snaps, h.size);
    if table.len() as u64 > MAX_TABLE_BYTES {
        return Err(bad("the snapshot table would exceed 64 MiB"));
    }
    let table_off = ed.alloc(clusters(table.len() as u64, cs))?;
    // Refcounts first: until the header points at the new table, these are leaks at worst.
    ed.commit()?;
    if !l1.is_empty() {
        file.write_at(&l1_bytes(&l1), sn_l1_off)?;
    }
    let mut active = l1;
    fix_copied(file, &h, &mut ed, &mut active)?;
    file.write_at(&table, table_off)?;
    file.flush()?;
    write_header_snapshots(file, snaps.len(), table_off)?;
    if old_size > 0 {
        ed.add(h.snapshots_offset, old_size, -1)?;
        ed.commit()?;
    }
    Ok(())
}

fn snapshot_l1(file: &dyn ImageFile, h: &Header, sn: &SnapshotInfo) -> Result<Vec<u64>> {
    if sn.l1_table_offset % h.cluster_size() != 0 {
        return Err(Error::corrupt(
            file.name(),
            format!("snapshot {} L1 table offset", sn.id),
            format!("{:#x} is not cluster aligned", sn.l1_table_offset),
        ));
    }
    read_l1(file, sn.l1_table_offset, sn.l1_size)
}

/// Reverts the active layer to snapshot `name_or_id` (an ID, or else a name).
pub fn apply(file: &dyn ImageFile, name_or_id: &str) -> Result<()> {
    let h = open_rw(file, "snapshot apply")?;
    let snaps = read_table(file, &h)?;
    let sn = &snaps[find(file, &snaps, name_or_id)?];
    if sn.disk_size.is_some_and(|d| d != h.size) || sn.l1_size > h.l1_size {
        return Err(Error::Unsupported {
            op: "snapshot apply",
            what: format!(
                "{}: snapshot {} has another disk size ({:?}, image {})",
                file.name(),
                sn.id,
                sn.disk_size,
                h.size
            ),
        });
    }
    let old = read_l1(file, h.l1_table_offset, h.l1_size)?;
    let mut new = snapshot_l1(file, &h, sn)?;
    new.resize(old.len(), 0);
    let mut ed = RefEditor::open(file, &h)?;
    update_tree(file, &h, &mut ed, &new, 1)?;
    ed.commit()?;
    file.write_at(&l1_bytes(&new), h.l1_table_offset)?;
    file.flush()?;
    update_tree(file, &h, &mut ed, &old, -1)?;
    ed.commit()?;
    fix_copied(file, &h, &mut ed, &mut new)
}

/// Deletes snapshot `name_or_id` (an ID, or else a name) and frees what only it referenced.
pub fn delete(file: &dyn ImageFile, name_or_id: &str) -> Result<()> {
    let h = open_rw(file, "snapshot delete")?;
    let (mut snaps, old_size) = read_table_sized(file, &h)?;
    let sn = snaps.remove(find(file, &snaps, name_or_id)?);
    let sn_l1 = snapshot_l1(file, &h, &sn)?;
    let cs = h.cluster_size();
    let mut ed = RefEditor::open(file, &h)?;
    let table = table_bytes(&snaps, h.size);
    let table_off = if snaps.is_empty() {
        0
    } else {
        ed.alloc(clusters(table.len() as u64, cs))?
    };
    ed.commit()?;
    if !snaps.is_empty() {
        file.write_at(&table, table_off)?;
        file.flush()?;
    }
    write_header_snapshots(file, snaps.len(), table_off)?;
    // Nothing points at the old table or the snapshot's tree any more.
    if old_size > 0 {
        ed.add(h.snapshots_offset, old_size, -1)?;
    }
    update_tree(file, &h, &mut ed, &sn_l1, -1)?;
    if sn.l1_size > 0 {
        ed.add(sn.l1_table_offset, u64::from(sn.l1_size) * 8, -1)?;
    }
    ed.commit()?;
    let mut active = read_l1(file, h.l1_table_offset, h.l1_size)?;
    fix_copied(file, &h, &mut ed, &mut active)
}

/// A cached refcount block.
struct Block {
    off: u64,
    data: Vec<u8>,
    dirty: bool,
}

/// Offline refcount editing: reads and changes refcounts, allocates clusters (first fit,
/// never handing out a cluster twice in one session) and new refcount blocks or a larger
/// refcount table when needed. Changes stay in memory until [`RefEditor::commit`].
pub struct RefEditor<'a> {
    file: &'a dyn ImageFile,
    cs: u64,
    cbits: u32,
    bits: u32,
    epb: u64,
    rmax: u64,
    table_off: u64,
    table_clusters: u64,
    table: Vec<u64>,
    table_dirty: BTreeSet<usize>,
    new_table: Option<(u64, u64)>,
    blocks: HashMap<u64, Block>,
    hint: u64,
}

impl<'a> RefEditor<'a> {
    /// Reads the refcount table of the image whose header is `h`.
    pub fn open(file: &'a dyn ImageFile, h: &Header) -> Result<RefEditor<'a>> {
        let cs = h.cluster_size();
        let table_clusters = u64::from(h.refcount_table_clusters);
        let mut b = vec![0u8; (table_clusters * cs) as usize];
        file.read_at(&mut b, h.refcount_table_offset)?;
        Ok(RefEditor {
            file,
            cs,
            cbits: h.cluster_bits,
            bits: h.refcount_bits(),
            epb: h.refblock_entries(),
            rmax: entries::max_refcount(h.refcount_bits()),
            table_off: h.refcount_table_offset,
            table_clusters,
            table: b.chunks_exact(8).map(|e| be64(e, 0)).collect(),
            table_dirty: BTreeSet::new(),
            new_table: None,
            blocks: HashMap::new(),
            hint: 0,
        })
    }

    /// Loads refcount block `idx`; false when the table has no block there.
    fn load(&mut self, idx: u64) -> Result<bool> {
        if self.blocks.contains_key(&idx) {
            return Ok(true);
        }
        let e = self.table.get(idx as usize).copied().unwrap_or(0);
        let off = entries::refcount_table_entry_offset(e);
        if off == 0 {
            return Ok(false);
        }
        if off % self.cs != 0 {
            return Err(Error::corrupt(
                self.file.name(),
                format!("refcount table entry {idx}"),
                format!("block offset {off:#x} is not cluster aligned"),
            ));
        }
        let mut data = vec![0u8; self.cs as usize];
        self.file.read_at(&mut data, off)?;
        self.blocks.insert(
            idx,
            Block {
                off,
                data,
                dirty: false,
            },
        );
        Ok(true)
    }

    /// The refcount of host cluster `cluster`.
    pub fn get(&mut self, cluster: u64) -> Result<u64> {
        let idx = cluster / self.epb;
        if !self.load(idx)? {
            return Ok(0);
        }
        let b = &self.blocks[&idx];
        Ok(entries::get_refcount(
            &b.data,
            (cluster % self.epb) as usize,
            self.bits,
        ))
    }

    /// Sets the refcount of host cluster `cluster`, creating its refcount block if needed.
    pub fn set(&mut self, cluster: u64, value: u64) -> Result<()> {
        if value > self.rmax {
            return Err(Error::Unsupported {
                op: "refcount update",
                what: format!(
                    "{}: cluster {cluster} needs refcount {value}, more than {}-bit refcounts hold",
                    self.file.name(),
                    self.bits
                ),
            });
        }
        let idx = cluster / self.epb;
        if idx as usize >= self.table.len() {
            self.grow_table(idx)?;
        }
        if !self.load(idx)? {
            let c = self.find_free(1)?;
            self.hint = c + 1;
            let off = c << self.cbits;
            let data = vec![0u8; self.cs as usize];
            self.blocks.insert(
                idx,
                Block {
                    off,
                    data,
                    dirty: true,
                },
            );
            self.table[idx as usize] = off;
            self.table_dirty.insert(idx as usize);
            self.set(c, 1)?;
        }
        let b = self.blocks.get_mut(&idx).expect("loaded");
        entries::set_refcount(&mut b.data, (cluster % self.epb) as usize, self.bits, value);
        b.dirty = true;
        Ok(())
    }

    /// Adds `delta` to the refcount of every cluster `[off, off + len)` touches.
    pub fn add(&mut self, off: u64, len: u64, delta: i64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        for c in (off >> self.cbits)..=((off + len - 1) >> self.cbits) {
            let r = self.get(c)?;
            let v = i128::from(r) + i128::from(delta);
            if v < 0 {
                return Err(Error::corrupt(
                    self.file.name(),
                    format!("refcount of cluster {c}"),
                    format!("is {r}, cannot drop a reference (run check -r all)"),
                ));
            }
            self.set(c, v as u64)?;
        }
        Ok(())
    }

    /// First run of `n` free clusters at or after the allocation hint.
    fn find_free(&mut self, n: u64) -> Result<u64> {
        let mut c = self.hint.max(1);
        let mut run = 0;
        loop {
            if self.get(c + run)? == 0 {
                run += 1;
                if run == n {
                    return Ok(c);
                }
            } else {
                c += run + 1;
                run = 0;
            }
        }
    }

    /// Allocates `n` contiguous clusters (refcount 1) and returns the offset of the first.
    pub fn alloc(&mut self, n: u64) -> Result<u64> {
        let c = self.find_free(n)?;
        self.hint = c + n;
        for i in c..c + n {
            self.set(i, 1)?;
        }
        Ok(c << self.cbits)
    }

    /// Makes room in the (in-memory) refcount table for block `idx`; the new table is
    /// written to newly allocated clusters on commit.
    fn grow_table(&mut self, idx: u64) -> Result<()> {
        let per_cluster = self.cs / 8;
        let want = (idx + 1).max(self.table.len() as u64) * 2;
        let new_len = want.div_ceil(per_cluster) * per_cluster;
        if new_len * 8 > super::header::MAX_REFTABLE_BYTES {
            return Err(Error::Unsupported {
                op: "refcount update",
                what: format!(
                    "{}: the refcount table would exceed 8 MiB",
                    self.file.name()
                ),
            });
        }
        self.table.resize(new_len as usize, 0);
        let prev = self.new_table.take();
        let t = new_len / per_cluster;
        let off = self.alloc(t)?;
        self.new_table = Some((off, t));
        if let Some((o, n)) = prev {
            self.add(o, n * self.cs, -1)?;
        }
        Ok(())
    }

    fn write_blocks(&mut self) -> Result<()> {
        let mut dirty: Vec<&mut Block> = self.blocks.values_mut().filter(|b| b.dirty).collect();
        dirty.sort_by_key(|b| b.off);
        for b in dirty {
            self.file.write_at(&b.data, b.off)?;
            b.dirty = false;
        }
        self.file.flush()
    }

    /// Writes every change: refcount blocks first, then the table entries pointing at new
    /// blocks (or a new table, switched to by one header write), flushing in between.
    pub fn commit(&mut self) -> Result<()> {
        self.write_blocks()?;
        if let Some((off, t)) = self.new_table.take() {
            let mut b = l1_bytes(&self.table);
            b.resize((t * self.cs) as usize, 0);
            self.file.write_at(&b, off)?;
            self.file.flush()?;
            let mut hdr = [0u8; 12];
            hdr[..8].copy_from_slice(&off.to_be_bytes());
            hdr[8..].copy_from_slice(&(t as u32).to_be_bytes());
            self.file.write_at(&hdr, 48)?;
            self.file.flush()?;
            let (old, old_t) = (self.table_off, self.table_clusters);
            self.table_off = off;
            self.table_clusters = t;
            self.table_dirty.clear();
            self.add(old, old_t * self.cs, -1)?;
            return self.commit();
        }
        if self.table_dirty.is_empty() {
            return Ok(());
        }
        for &i in &self.table_dirty {
            self.file
                .write_at(&self.table[i].to_be_bytes(), self.table_off + i as u64 * 8)?;
        }
        self.table_dirty.clear();
        self.file.flush()
    }
}
