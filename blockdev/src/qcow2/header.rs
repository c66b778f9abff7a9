//! The qcow2 header and its extensions: parsing with every field validated, and serialising.
//!
//! Layout (QEMU's qcow2 spec, "Header"): all numbers big endian; version 2 headers are 72
//! bytes, version 3 headers `header_length` bytes (104, or 112 with the compression type);
//! extensions follow the header up to the end of the first cluster; the backing file name lives
//! at `backing_file_offset` inside the first cluster.

use crate::error::{Error, Result};
use crate::image::ImageFile;

/// "QFI\xfb".
pub const MAGIC: u32 = 0x5146_49fb;
/// Incompatible bit 0: the image was not closed cleanly; refcounts may be stale.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible bit 1: the image is corrupt; open read-only only.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible bit 2: guest data lives in an external data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible bit 3: the compression type field is valid.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible bit 4: L2 entries are 128 bits with subcluster bitmaps.
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Incompatible bits this implementation understands.
pub const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
/// Compatible bit 0: lazy refcounts.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
/// Autoclear bit 0: the bitmaps extension is consistent.
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;
/// Autoclear bit 1: the external data file is raw (guest offset == host offset).
pub const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

/// Header extension: backing file format name.
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension: feature name table.
pub const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
/// Header extension: bitmaps.
pub const EXT_BITMAPS: u32 = 0x2385_2875;
/// Header extension: full disk encryption header pointer.
pub const EXT_CRYPTO: u32 = 0x0537_be77;
/// Header extension: external data file name.
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Smallest and largest cluster_bits (512 B .. 2 MiB, QEMU's limits).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster_bits.
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Largest L1 table in bytes (QEMU's QCOW_MAX_L1_SIZE).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table in bytes (QEMU's QCOW_MAX_REFTABLE_SIZE).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Most snapshots (QEMU's QCOW_MAX_SNAPSHOTS).
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Largest virtual disk (QEMU's QCOW_MAX_SIZE... 2^61 bytes, well above any host offset).
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 61;
/// Longest backing file name.
pub const MAX_BACKING_NAME: u32 = 1023;
/// Largest host offset an entry can hold (bits 9..55).
pub const MAX_HOST_OFFSET: u64 = (1 << 56) - 1;

/// One entry of the feature name table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureName {
    /// 0 incompatible, 1 compatible, 2 autoclear.
    pub kind: u8,
    /// Bit number.
    pub bit: u8,
    /// Name (up to 46 bytes).
    pub name: String,
}

/// A parsed qcow2 header (field names as in the spec).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Offset of the backing file name, 0 if none.
    pub backing_file_offset: u64,
    /// Length of the backing file name.
    pub backing_file_size: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// 0 none, 1 AES, 2 LUKS.
    pub crypt_method: u32,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// Offset of the active L1 table.
    pub l1_table_offset: u64,
    /// Offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters the refcount table occupies.
    pub refcount_table_clusters: u32,
    /// Number of internal snapshots.
    pub nb_snapshots: u32,
    /// Offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits (v3).
    pub incompatible_features: u64,
    /// Compatible feature bits (v3).
    pub compatible_features: u64,
    /// Autoclear feature bits (v3).
    pub autoclear_features: u64,
    /// log2 of the refcount width in bits (v2: always 4).
    pub refcount_order: u32,
    /// Header length in bytes (v2: 72).
    pub header_length: u32,
    /// 0 zlib, 1 zstd (only with INCOMPAT_COMPRESSION).
    pub compression_type: u8,
    /// The backing file name.
    pub backing_file: Option<String>,
    /// The backing format (extension 0xe2792aca).
    pub backing_format: Option<String>,
    /// The external data file name (extension 0x44415441).
    pub data_file: Option<String>,
    /// The feature name table.
    pub feature_names: Vec<FeatureName>,
    /// Extensions this implementation does not interpret, kept verbatim (type, data).
    pub other_extensions: Vec<(u32, Vec<u8>)>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
    /// Refcount width in bits.
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }
    /// Whether L2 entries carry subcluster bitmaps.
    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTL2 != 0
    }
    /// Bytes per L2 entry (8, or 16 with extended L2).
    pub fn l2_entry_size(&self) -> u64 {
        if self.extended_l2() {
            16
        } else {
            8
        }
    }
    /// Entries per L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_size()
    }
    /// Guest bytes one L2 table maps.
    pub fn l2_span(&self) -> u64 {
        self.l2_entries() << self.cluster_bits
    }
    /// Refcount entries per refcount block.
    pub fn refblock_entries(&self) -> u64 {
        (self.cluster_size() * 8) >> self.refcount_order
    }
    /// Whether the dirty bit is set.
    pub fn dirty(&self) -> bool {
        self.incompatible_features & INCOMPAT_DIRTY != 0
    }
    /// Whether the corrupt bit is set.
    pub fn corrupt(&self) -> bool {
        self.incompatible_features & INCOMPAT_CORRUPT != 0
    }
    /// Whether lazy refcounts are enabled.
    pub fn lazy_refcounts(&self) -> bool {
        self.compatible_features & COMPAT_LAZY_REFCOUNTS != 0
    }
    /// Whether guest data lives in an external data file.
    pub fn has_data_file(&self) -> bool {
        self.incompatible_features & INCOMPAT_DATA_FILE != 0
    }
    /// Whether the external data file is raw.
    pub fn data_file_raw(&self) -> bool {
        self.autoclear_features & AUTOCLEAR_DATA_FILE_RAW != 0
    }
    /// The compression type (0 zlib, 1 zstd).
    pub fn compression(&self) -> u8 {
        if self.incompatible_features & INCOMPAT_COMPRESSION != 0 {
            self.compression_type
        } else {
            0
        }
    }
    /// L1 entries needed for `size` bytes.
    pub fn l1_entries_for(&self, size: u64) -> u64 {
        size.div_ceil(self.l2_span())
    }

    /// Reads and validates the header of `file`.
    pub fn read(file: &dyn ImageFile) -> Result<Header> {
        let name = file.name();
        let file_len = file.len()?;
        if file_len < 72 {
            return Err(Error::corrupt(
                name,
                "header",
                format!("file is {file_len} bytes, shorter than a qcow2 header (72)"),
            ));
        }
        let mut first = vec![0u8; 1 << MIN_CLUSTER_BITS];
        file.read_at(&mut first, 0)?;
        let cluster_bits = be32(&first, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            // Checked again in parse; read no more than 2 MiB either way.
            return Header::parse(name, &first, file_len);
        }
        let mut cluster = vec![0u8; 1 << cluster_bits];
        file.read_at(&mut cluster, 0)?;
        Header::parse(name, &cluster, file_len)
    }

    /// Parses the first cluster of an image (`buf`, at least 512 bytes) of `file_len` bytes.
    pub fn parse(name: &str, buf: &[u8], file_len: u64) -> Result<Header> {
        let bad = |field: &str, reason: String| Err(Error::corrupt(name, field, reason));
        if buf.len() < 72 {
            return bad("header", format!("only {} bytes", buf.len()));
        }
        let magic = be32(buf, 0);
        if magic != MAGIC {
            return bad("header.magic", format!("{magic:#x} is not QFI\\xfb"));
        }
        let mut h = Header {
            version: be32(buf, 4),
            backing_file_offset: be64(buf, 8),
            backing_file_size: be32(buf, 16),
            cluster_bits: be32(buf, 20),
            size: be64(buf, 24),
            crypt_method: be32(buf, 32),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            snapshots_offset: be64(buf, 64),
            refcount_order: 4,
            header_length: 72,
            ..Header::default()
        };
        if h.version != 2 && h.version != 3 {
            return bad(
                "header.version",
                format!("{} (only 2 and 3 exist)", h.version),
            );
        }
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&h.cluster_bits) {
            return bad(
                "header.cluster_bits",
                format!(
                    "{} (must be 9..=21: 512 B to 2 MiB clusters)",
                    h.cluster_bits
                ),
            );
        }
        let cs = h.cluster_size();
        if (buf.len() as u64) < cs.min(file_len) {
            return bad(
                "header",
                format!("first cluster truncated to {}", buf.len()),
            );
        }
        if h.version == 3 {
            if buf.len() < 104 {
                return bad("header", "version 3 header shorter than 104 bytes".into());
            }
            h.incompatible_features = be64(buf, 72);
            h.compatible_features = be64(buf, 80);
            h.autoclear_features = be64(buf, 88);
            h.refcount_order = be32(buf, 96);
            h.header_length = be32(buf, 100);
            if h.header_length < 104 || h.header_length % 8 != 0 {
                return bad(
                    "header.header_length",
                    format!(
                        "{} (must be at least 104 and a multiple of 8)",
                        h.header_length
                    ),
                );
            }
            if u64::from(h.header_length) > cs || h.header_length as usize > buf.len() {
                return bad(
                    "header.header_length",
                    format!("{} is larger than the first cluster", h.header_length),
                );
            }
            if h.header_length >= 105 {
                h.compression_type = buf[104];
            }
        }
        h.check_fields(name, file_len)?;
        h.parse_extensions(name, buf)?;
        h.parse_backing_name(name, buf)?;
        Ok(h)
    }

    fn check_fields(&self, name: &str, file_len: u64) -> Result<()> {
        let bad = |field: &str, reason: String| Err(Error::corrupt(name, field, reason));
        let cs = self.cluster_size();
        if self.refcount_order > 6 {
            return bad(
                "header.refcount_order",
                format!(
                    "{} (refcounts are 1 to 64 bits: order 0..=6)",
                    self.refcount_order
                ),
            );
        }
        let unknown = self.incompatible_features & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(Error::Unsupported {
                op: "open",
                what: format!("{name}: unknown incompatible feature bits {unknown:#x}"),
            });
        }
        if self.crypt_method != 0 {
            return Err(Error::Unsupported {
                op: "open",
                what: format!(
                    "{name}: encrypted images (crypt_method {})",
                    self.crypt_method
                ),
            });
        }
        if self.extended_l2() && self.cluster_bits < 14 {
            return bad(
                "header.cluster_bits",
                format!(
                    "{} with extended L2 entries (needs at least 14)",
                    self.cluster_bits
                ),
            );
        }
        if self.compression_type > 1 {
            return bad(
                "header.compression_type",
                format!("{} (0 zlib, 1 zstd)", self.compression_type),
            );
        }
        if self.compression_type != 0 && self.incompatible_features & INCOMPAT_COMPRESSION == 0 {
            return bad(
                "header.compression_type",
                "non-zero without the compression-type incompatible bit".into(),
            );
        }
        if self.size > MAX_VIRTUAL_SIZE {
            return bad("header.size", format!("{} exceeds 2^61 bytes", self.size));
        }
        let l1_needed = self.l1_entries_for(self.size);
        if u64::from(self.l1_size) < l1_needed {
            return bad(
                "header.l1_size",
                format!(
                    "{} entries cannot map {} bytes ({l1_needed} needed)",
                    self.l1_size, self.size
                ),
            );
        }
        if u64::from(self.l1_size) * 8 > MAX_L1_BYTES {
            return bad(
                "header.l1_size",
                format!("{} entries exceed the 32 MiB limit", self.l1_size),
            );
        }
        check_table(
            name,
            "header.l1_table_offset",
            self.l1_table_offset,
            u64::from(self.l1_size) * 8,
            cs,
            file_len,
        )?;
        let rt_bytes = u64::from(self.refcount_table_clusters) * cs;
        if self.refcount_table_clusters == 0 || rt_bytes > MAX_REFTABLE_BYTES {
            return bad(
                "header.refcount_table_clusters",
                format!(
                    "{} (1 to {} clusters)",
                    self.refcount_table_clusters,
                    MAX_REFTABLE_BYTES / cs
                ),
            );
        }
        check_table(
            name,
            "header.refcount_table_offset",
            self.refcount_table_offset,
            rt_bytes,
            cs,
            file_len,
        )?;
        if self.nb_snapshots > MAX_SNAPSHOTS {
            return bad(
                "header.nb_snapshots",
                format!("{} exceeds {MAX_SNAPSHOTS}", self.nb_snapshots),
            );
        }
        if self.nb_snapshots > 0 {
            check_table(
                name,
                "header.snapshots_offset",
                self.snapshots_offset,
                40,
                cs,
                file_len,
            )?;
        }
        if self.has_data_file() && self.backing_file_offset != 0 && self.data_file_raw() {
            return bad(
                "header.backing_file_offset",
                "a backing file cannot be used with a raw external data file".into(),
            );
        }
        Ok(())
    }

    fn parse_extensions(&mut self, name: &str, buf: &[u8]) -> Result<()> {
        let end = buf.len().min(self.cluster_size() as usize);
        let limit = if self.backing_file_offset != 0 {
            end.min(self.backing_file_offset as usize)
        } else {
            end
        };
        let mut at = self.header_length as usize;
        loop {
            if at + 8 > limit {
                // v2 images without extensions may end here.
                return Ok(());
            }
            let kind = be32(buf, at);
            let len = be32(buf, at + 4) as usize;
            at += 8;
            if kind == 0 {
                return Ok(());
            }
            let field = || format!("header extension {kind:#x}");
            if len > limit - at {
                return Err(Error::corrupt(
                    name,
                    field(),
                    format!("length {len} runs past the first cluster"),
                ));
            }
            let data = &buf[at..at + len];
            let text = || {
                String::from_utf8(data.to_vec())
                    .map_err(|_| Error::corrupt(name, field(), "name is not UTF-8"))
            };
            match kind {
                EXT_BACKING_FORMAT => self.backing_format = Some(text()?),
                EXT_DATA_FILE => self.data_file = Some(text()?),
                EXT_FEATURE_NAMES => {
                    for e in data.chunks_exact(48) {
                        let n = e[2..].iter().position(|&c| c == 0).unwrap_or(46);
                        self.feature_names.push(FeatureName {
                            kind: e[0],
                            bit: e[1],
                            name: String::from_utf8_lossy(&e[2..2 + n]).into_owned(),
                        });
                    }
                }
                EXT_CRYPTO => {
                    return Err(Error::Unsupported {
                        op: "open",
                        what: format!("{name}: encrypted images (crypto header extension)"),
                    })
                }
                _ => self.other_extensions.push((kind, data.to_vec())),
            }
            at += len.div_ceil(8) * 8;
        }
    }

    fn parse_backing_name(&mut self, name: &str, buf: &[u8]) -> Result<()> {
        if self.backing_file_offset == 0 {
            return Ok(());
        }
        let off = self.backing_file_offset;
        let len = u64::from(self.backing_file_size);
        if len > u64::from(MAX_BACKING_NAME) {
            return Err(Error::corrupt(
                name,
                "header.backing_file_size",
                format!("{len} exceeds {MAX_BACKING_NAME} bytes"),
            ));
        }
        match off.checked_add(len) {
            Some(end) if end <= buf.len() as u64 && end <= self.cluster_size() => {}
            _ => {
                return Err(Error::corrupt(
                    name,
                    "header.backing_file_offset",
                    format!("{off}+{len} is outside the first cluster"),
                ))
            }
        }
        let raw = &buf[off as usize..(off + len) as usize];
        let s = String::from_utf8(raw.to_vec())
            .map_err(|_| Error::corrupt(name, "header.backing_file", "name is not UTF-8"))?;
        self.backing_file = Some(s);
        Ok(())
    }

    /// Serialises the header, its extensions and the backing file name (setting
    /// `header_length`, `backing_file_offset` and `backing_file_size` to match). Fails if it
    /// does not fit in the first cluster.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut b = Vec::with_capacity(512);
        let hlen: u32 = if self.version >= 3 { 112 } else { 72 };
        let push32 = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_be_bytes());
        let push64 = |b: &mut Vec<u8>, v: u64| b.extend_from_slice(&v.to_be_bytes());
        push32(&mut b, MAGIC);
        push32(&mut b, self.version);
        push64(&mut b, 0); // backing_file_offset, patched below
        push32(&mut b, 0); // backing_file_size, patched below
        push32(&mut b, self.cluster_bits);
        push64(&mut b, self.size);
        push32(&mut b, self.crypt_method);
        push32(&mut b, self.l1_size);
        push64(&mut b, self.l1_table_offset);
        push64(&mut b, self.refcount_table_offset);
        push32(&mut b, self.refcount_table_clusters);
        push32(&mut b, self.nb_snapshots);
        push64(&mut b, self.snapshots_offset);
        if self.version >= 3 {
            push64(&mut b, self.incompatible_features);
            push64(&mut b, self.compatible_features);
            push64(&mut b, self.autoclear_features);
            push32(&mut b, self.refcount_order);
            push32(&mut b, hlen);
            b.push(self.compression_type);
            b.extend_from_slice(&[0; 7]);
        }
        let ext = |b: &mut Vec<u8>, kind: u32, data: &[u8]| {
            push32(b, kind);
            push32(b, data.len() as u32);
            b.extend_from_slice(data);
            b.resize(b.len().div_ceil(8) * 8, 0);
        };
        if let Some(f) = &self.backing_format {
            ext(&mut b, EXT_BACKING_FORMAT, f.as_bytes());
        }
        if let Some(f) = &self.data_file {
            ext(&mut b, EXT_DATA_FILE, f.as_bytes());
        }
        if self.version >= 3 {
            let mut t = Vec::new();
            for f in &self.feature_names {
                let mut e = [0u8; 48];
                e[0] = f.kind;
                e[1] = f.bit;
                let n = f.name.len().min(46);
                e[2..2 + n].copy_from_slice(&f.name.as_bytes()[..n]);
                t.extend_from_slice(&e);
            }
            if !t.is_empty() {
                ext(&mut b, EXT_FEATURE_NAMES, &t);
            }
        }
        for (kind, data) in &self.other_extensions {
            ext(&mut b, *kind, data);
        }
        push64(&mut b, 0); // end of extensions
        if let Some(bf) = &self.backing_file {
            let off = b.len() as u64;
            b[8..16].copy_from_slice(&off.to_be_bytes());
            b[16..20].copy_from_slice(&(bf.len() as u32).to_be_bytes());
            b.extend_from_slice(bf.as_bytes());
        }
        if b.len() as u64 > self.cluster_size() {
            return Err(Error::InvalidOption {
                name: "header",
                value: format!("{} bytes", b.len()),
                reason: format!("does not fit in one {}-byte cluster", self.cluster_size()),
            });
        }
        Ok(b)
    }

    /// The feature name table QEMU writes (so `qemu-img info` can name our bits).
    pub fn standard_feature_names() -> Vec<FeatureName> {
        let f = |kind, bit, name: &str| FeatureName {
            kind,
            bit,
            name: name.to_string(),
        };
        vec![
            f(0, 0, "dirty bit"),
            f(0, 1, "corrupt bit"),
            f(0, 2, "external data file"),
            f(0, 3, "compression type"),
            f(0, 4, "extended L2 entries"),
            f(1, 0, "lazy refcounts"),
            f(2, 0, "bitmaps"),
            f(2, 1, "raw external data"),
        ]
    }
}

/// Checks that a table of `len` bytes at `off` is cluster-aligned and inside the file.
pub fn check_table(
    name: &str,
    field: &str,
    off: u64,
    len: u64,
    cs: u64,
    file_len: u64,
) -> Result<()> {
    if off % cs != 0 {
        return Err(Error::corrupt(
            name,
            field,
            format!("{off:#x} is not cluster aligned"),
        ));
    }
    if len == 0 {
        return Ok(());
    }
    match off.checked_add(len) {
        Some(end) if end <= file_len && off != 0 => Ok(()),
        _ => Err(Error::corrupt(
            name,
            field,
            format!("table at {off:#x} ({len} bytes) is outside the file ({file_len} bytes)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            version: 3,
            cluster_bits: 16,
            size: 1 << 30,
            l1_size: 2,
            l1_table_offset: 3 << 16,
            refcount_table_offset: 1 << 16,
            refcount_table_clusters: 1,
            refcount_order: 4,
            header_length: 112,
            backing_file: Some("base.raw".into()),
            backing_format: Some("raw".into()),
            feature_names: Header::standard_feature_names(),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip() {
        let h = sample();
        let mut b = h.to_bytes().unwrap();
        let name_at = (b.len() - 8) as u64;
        b.resize(1 << 16, 0);
        let mut got = Header::parse("t", &b, 4 << 16).unwrap();
        assert_eq!(got.backing_file_offset, name_at);
        got.backing_file_offset = 0;
        got.backing_file_size = 0;
        assert_eq!(got, h);
    }

    #[test]
    fn bad_fields_are_named() {
        let cases: [(usize, &[u8], &str); 5] = [
            (0, &[0, 0, 0, 0], "header.magic"),
            (4, &[0, 0, 0, 4], "header.version"),
            (20, &[0, 0, 0, 8], "header.cluster_bits"),
            (36, &[0xff, 0xff, 0xff, 0xff], "header.l1_size"),
            (96, &[0, 0, 0, 7], "header.refcount_order"),
        ];
        for (at, bytes, field) in cases {
            let mut b = sample().to_bytes().unwrap();
            b.resize(1 << 16, 0);
            b[at..at + bytes.len()].copy_from_slice(bytes);
            let e = Header::parse("img", &b, 4 << 16).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }
}
