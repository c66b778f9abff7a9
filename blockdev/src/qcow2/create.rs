//! Creating qcow2 images with QEMU's options and layout: header, refcount table, refcount
//! blocks, L1 table, then (with preallocation) L2 tables and data clusters.

use std::path::Path;
use std::sync::Arc;

use super::compress::CompressionType;
use super::entries::{self, COPIED};
use super::header::{self, Header};
use crate::error::{Error, Result};
use crate::image::{FileImage, ImageFile};
use crate::open::OpenOptions;

/// Image format version, with QEMU's `compat` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compat {
    /// Version 2 (`compat=0.10`).
    V2,
    /// Version 3 (`compat=1.1`, the default).
    #[default]
    V3,
}

/// What `create` allocates up front (QEMU's `preallocation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preallocation {
    /// Nothing.
    #[default]
    Off,
    /// Every L2 table and data cluster is allocated (the file is sparse).
    Metadata,
    /// As metadata, with the file's blocks reserved.
    Falloc,
    /// As metadata, with zeroes written to every data cluster.
    Full,
}

impl std::str::FromStr for Preallocation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "off" => Ok(Preallocation::Off),
            "metadata" => Ok(Preallocation::Metadata),
            "falloc" => Ok(Preallocation::Falloc),
            "full" => Ok(Preallocation::Full),
            _ => Err(Error::InvalidOption {
                name: "preallocation",
                value: s.into(),
                reason: "expected off, metadata, falloc or full".into(),
            }),
        }
    }
}

/// Options of a new image, named as `qemu-img create -o` names them.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Virtual size in bytes (rounded up to 512).
    pub size: u64,
    /// Cluster size: a power of two from 512 B to 2 MiB.
    pub cluster_size: u32,
    /// Format version.
    pub compat: Compat,
    /// Lazy refcounts (v3 only).
    pub lazy_refcounts: bool,
    /// Refcount width: 1, 2, 4, 8, 16, 32 or 64 (v2: 16 only).
    pub refcount_bits: u32,
    /// Extended L2 entries with subclusters (v3, clusters of at least 16 KiB).
    pub extended_l2: bool,
    /// Compression type of compressed clusters.
    pub compression_type: CompressionType,
    /// Preallocation mode.
    pub preallocation: Preallocation,
    /// Backing file name (stored as given).
    pub backing_file: Option<String>,
    /// Backing file format (required with a backing file).
    pub backing_format: Option<String>,
    /// External data file name (stored as given).
    pub data_file: Option<String>,
    /// The external data file is raw (guest offset = host offset).
    pub data_file_raw: bool,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            size: 0,
            cluster_size: 65536,
            compat: Compat::V3,
            lazy_refcounts: false,
            refcount_bits: 16,
            extended_l2: false,
            compression_type: CompressionType::Zlib,
            preallocation: Preallocation::Off,
            backing_file: None,
            backing_format: None,
            data_file: None,
            data_file_raw: false,
        }
    }
}

fn invalid(name: &'static str, value: impl ToString, reason: &str) -> Error {
    Error::InvalidOption {
        name,
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl CreateOptions {
    /// Checks the options against each other, as qemu-img does.
    pub fn validate(&self) -> Result<()> {
        let cs = self.cluster_size;
        if !cs.is_power_of_two() || !(512..=(2 << 20)).contains(&cs) {
            return Err(invalid(
                "cluster_size",
                cs,
                "must be a power of two from 512 to 2097152",
            ));
        }
        let rb = self.refcount_bits;
        if !rb.is_power_of_two() || rb > 64 {
            return Err(invalid(
                "refcount_bits",
                rb,
                "must be a power of two up to 64",
            ));
        }
        if self.size > header::MAX_VIRTUAL_SIZE {
            return Err(invalid("size", self.size, "exceeds 2^61 bytes"));
        }
        if self.compat == Compat::V2 {
            let v3_only = [
                (self.lazy_refcounts, "lazy_refcounts"),
                (rb != 16, "refcount_bits"),
                (self.extended_l2, "extended_l2"),
                (
                    self.compression_type != CompressionType::Zlib,
                    "compression_type",
                ),
                (self.data_file.is_some(), "data_file"),
            ];
            if let Some((_, name)) = v3_only.iter().find(|(bad, _)| *bad) {
                return Err(invalid(name, "set", "needs compat=1.1 (qcow2 version 3)"));
            }
        }
        if self.extended_l2 && cs < 16384 {
            return Err(invalid(
                "cluster_size",
                cs,
                "extended L2 entries need clusters of at least 16 KiB",
            ));
        }
        if self.backing_file.is_some() && self.backing_format.is_none() {
            return Err(invalid(
                "backing_fmt",
                "",
                "a backing file needs its format (-F); it is never probed",
            ));
        }
        if self.backing_file.is_none() && self.backing_format.is_some() {
            return Err(invalid(
                "backing_fmt",
                "set",
                "given without a backing file",
            ));
        }
        if self.data_file_raw && self.data_file.is_none() {
            return Err(invalid("data_file_raw", "on", "needs data_file"));
        }
        if self.data_file_raw && self.backing_file.is_some() {
            return Err(invalid(
                "data_file_raw",
                "on",
                "cannot be combined with a backing file",
            ));
        }
        if self.preallocation != Preallocation::Off && self.backing_file.is_some() {
            return Err(invalid(
                "preallocation",
                "set",
                "cannot be combined with a backing file",
            ));
        }
        Ok(())
    }
}

/// Writes a new image into `file` (which should be empty; it is truncated first).
pub fn create(file: &dyn ImageFile, opts: &CreateOptions) -> Result<()> {
    opts.validate()?;
    let cs = u64::from(opts.cluster_size);
    let size = opts.size.div_ceil(512) * 512;
    let mut hdr = Header {
        version: if opts.compat == Compat::V2 { 2 } else { 3 },
        cluster_bits: cs.trailing_zeros(),
        size,
        refcount_order: opts.refcount_bits.trailing_zeros(),
        header_length: if opts.compat == Compat::V2 { 72 } else { 112 },
        backing_file: opts.backing_file.clone(),
        backing_format: opts.backing_format.clone(),
        data_file: opts.data_file.clone(),
        ..Default::default()
    };
    if hdr.version == 3 {
        hdr.feature_names = Header::standard_feature_names();
        if opts.lazy_refcounts {
            hdr.compatible_features |= header::COMPAT_LAZY_REFCOUNTS;
        }
        if opts.extended_l2 {
            hdr.incompatible_features |= header::INCOMPAT_EXTL2;
        }
        if opts.compression_type != CompressionType::Zlib {
            hdr.incompatible_features |= header::INCOMPAT_COMPRESSION;
            hdr.compression_type = opts.compression_type.to_byte();
        }
        if opts.data_file.is_some() {
            hdr.incompatible_features |= header::INCOMPAT_DATA_FILE;
        }
        if opts.data_file_raw {
            hdr.autoclear_features |= header::AUTOCLEAR_DATA_FILE_RAW;
        }
    }
    let l1_size = hdr.l1_entries_for(size);
    if l1_size * 8 > header::MAX_L1_BYTES {
        return Err(invalid(
            "size",
            size,
            "needs an L1 table over 32 MiB: use larger clusters",
        ));
    }
    hdr.l1_size = l1_size as u32;
    let l1_clusters = (l1_size * 8).div_ceil(cs);
    // A raw data file maps every cluster from the start (guest offset = host offset).
    let prealloc = opts.preallocation != Preallocation::Off || opts.data_file_raw;
    let (l2_clusters, data_clusters) = if prealloc {
        let data = if opts.data_file.is_some() {
            0
        } else {
            size.div_ceil(cs)
        };
        (l1_size, data)
    } else {
        (0, 0)
    };
    // Fixed point: the refcount blocks and table must cover every cluster, themselves included.
    let per_block = hdr.refblock_entries();
    let (mut rt, mut rb) = (1u64, 1u64);
    let total = loop {
        let total = 1 + rt + rb + l1_clusters + l2_clusters + data_clusters;
        let need_rb = total.div_ceil(per_block);
        let need_rt = (need_rb * 8).div_ceil(cs);
        if need_rb == rb && need_rt == rt {
            break total;
        }
        rb = need_rb.max(rb);
        rt = need_rt.max(rt);
    };
    if rt * cs > header::MAX_REFTABLE_BYTES {
        return Err(invalid(
            "size",
            size,
            "needs a refcount table over 8 MiB: use larger clusters",
        ));
    }
    let reftable_off = cs;
    let rb_off = reftable_off + rt * cs;
    let l1_off = rb_off + rb * cs;
    let l2_off = l1_off + l1_clusters * cs;
    let data_off = l2_off + l2_clusters * cs;
    hdr.refcount_table_offset = reftable_off;
    hdr.refcount_table_clusters = rt as u32;
    hdr.l1_table_offset = l1_off;

    file.set_len(0)?;
    let header_bytes = hdr.to_bytes()?;
    // Refcount table and blocks: every cluster up to `total` is used once.
    let mut table = vec![0u8; (rt * cs) as usize];
    for i in 0..rb {
        table[(i * 8) as usize..(i * 8 + 8) as usize]
            .copy_from_slice(&(rb_off + i * cs).to_be_bytes());
    }
    file.write_at(&table, reftable_off)?;
    let bits = opts.refcount_bits;
    for i in 0..rb {
        let mut block = vec![0u8; cs as usize];
        let first = i * per_block;
        for j in 0..per_block.min(total.saturating_sub(first)) {
            entries::set_refcount(&mut block, j as usize, bits, 1);
        }
        file.write_at(&block, rb_off + i * cs)?;
    }
    let mut l1 = vec![0u8; (l1_clusters * cs) as usize];
    if prealloc {
        for i in 0..l1_size {
            let e = (l2_off + i * cs) | COPIED;
            l1[(i * 8) as usize..(i * 8 + 8) as usize].copy_from_slice(&e.to_be_bytes());
        }
        write_l2_tables(file, &hdr, l2_off, data_off)?;
    }
    file.write_at(&l1, l1_off)?;
    let end = data_off + data_clusters * cs;
    if opts.preallocation == Preallocation::Full {
        let zeroes = vec![0u8; (1 << 20).min(data_clusters * cs) as usize];
        let mut pos = data_off;
        while pos < end {
            let n = (end - pos).min(zeroes.len() as u64);
            file.write_at(&zeroes[..n as usize], pos)?;
            pos += n;
        }
    }
    let len = file.len()?;
    if len < end {
        file.set_len(end)?;
    }
    file.flush()?;
    file.write_at(&header_bytes, 0)?;
    file.flush()
}

/// Writes preallocated L2 tables mapping every guest cluster to its data cluster.
fn write_l2_tables(file: &dyn ImageFile, hdr: &Header, l2_off: u64, data_off: u64) -> Result<()> {
    let external = hdr.has_data_file();
    let cs = hdr.cluster_size();
    let per = hdr.l2_entries();
    let es = hdr.l2_entry_size();
    let guest_clusters = hdr.size.div_ceil(cs);
    for t in 0..u64::from(hdr.l1_size) {
        let mut table = vec![0u8; cs as usize];
        for i in 0..per {
            let g = t * per + i;
            if g >= guest_clusters {
                break;
            }
            // With an external data file the host offset is the guest offset (QEMU's layout).
            let host = if external { g * cs } else { data_off + g * cs };
            let at = (i * es) as usize;
            table[at..at + 8].copy_from_slice(&(host | COPIED).to_be_bytes());
            if es == 16 {
                table[at + 8..at + 16].copy_from_slice(&u64::from(u32::MAX).to_be_bytes());
            }
        }
        file.write_at(&table, l2_off + t * cs)?;
    }
    Ok(())
}

/// Creates the image file at `path` (and the external data file, if named) and writes a new
/// image into it. With a backing file and `size` 0, the backing file's size is used.
pub fn create_path(path: &Path, opts: &CreateOptions) -> Result<()> {
    let mut opts = opts.clone();
    if opts.size == 0 {
        if let (Some(b), Some(f)) = (&opts.backing_file, &opts.backing_format) {
            let bpath = super::resolve(path, b);
            let o = OpenOptions {
                read_only: true,
                format: Some(f.clone()),
                ..Default::default()
            };
            opts.size = crate::probe::open_layer(&bpath, &o, Vec::new())?
                .info()
                .size;
        }
    }
    opts.validate()?;
    let create_file = |p: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(p)
            .map_err(|source| Error::Open {
                path: p.to_path_buf(),
                source,
            })
    };
    create_file(path)?;
    if let Some(d) = &opts.data_file {
        let dp = super::resolve(path, d);
        create_file(&dp)?
            .set_len(opts.size)
            .map_err(|e| Error::io("truncate", opts.size, 0, e))?;
    }
    let file: Arc<dyn ImageFile> = Arc::new(FileImage::open(path, &OpenOptions::default())?);
    create(&*file, &opts)
}
