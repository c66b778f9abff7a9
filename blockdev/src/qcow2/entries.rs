//! On-disk table entries: L1, L2 (standard and extended), refcount table and refcount blocks.

use crate::error::{Error, Result};

/// Bits 9..55: a cluster-aligned host offset.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 63: refcount is exactly one (the cluster may be written in place).
pub const COPIED: u64 = 1 << 63;
/// Bit 62 of an L2 entry: compressed cluster.
pub const COMPRESSED: u64 = 1 << 62;
/// Bit 0 of a standard L2 entry: reads as zeroes (v3).
pub const ZERO: u64 = 1;
/// Reserved bits of an L1 entry (must be zero).
pub const L1_RESERVED: u64 = 0x7f00_0000_0000_01ff;
/// Reserved bits of a standard L2 entry (bit 0 is the zero flag, allowed separately).
pub const L2_RESERVED: u64 = 0x3f00_0000_0000_01fe;
/// Subclusters per cluster with extended L2 entries.
pub const SUBCLUSTERS: u32 = 32;

/// An L1 table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L1Entry(pub u64);

impl L1Entry {
    /// Host offset of the L2 table (0: not allocated).
    pub fn l2_offset(self) -> u64 {
        self.0 & OFFSET_MASK
    }
    /// Whether the L2 table's refcount is exactly one.
    pub fn copied(self) -> bool {
        self.0 & COPIED != 0
    }
    /// Checks reserved bits and alignment; `field` names the entry in errors.
    pub fn check(self, image: &str, field: impl Fn() -> String, cluster_size: u64) -> Result<()> {
        if self.0 & L1_RESERVED != 0 {
            return Err(Error::corrupt(
                image,
                field(),
                format!("{:#x} has reserved bits set", self.0),
            ));
        }
        if self.l2_offset() % cluster_size != 0 {
            return Err(Error::corrupt(
                image,
                field(),
                format!(
                    "L2 table offset {:#x} is not cluster aligned",
                    self.l2_offset()
                ),
            ));
        }
        Ok(())
    }
}

/// What a guest cluster maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterKind {
    /// Not allocated here: read from the backing file (or zeroes).
    Unallocated,
    /// Reads as zeroes; `host` keeps a preallocated cluster if there is one.
    Zero {
        /// Preallocated host cluster.
        host: Option<u64>,
    },
    /// Data at `host`.
    Normal {
        /// Host cluster offset.
        host: u64,
        /// Refcount exactly one: may be written in place.
        copied: bool,
    },
    /// Compressed data starting at `host`, at most `len` bytes long.
    Compressed {
        /// Host byte offset of the compressed data.
        host: u64,
        /// Bytes to read (whole 512-byte sectors, so it may include the next cluster's bytes).
        len: u64,
    },
}

/// An L2 entry, with its subcluster bitmap when the image has extended L2 entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct L2Entry {
    /// The 64-bit descriptor.
    pub word: u64,
    /// Extended L2: bits 0..31 allocated subclusters, 32..63 zero subclusters.
    pub bitmap: u64,
}

impl L2Entry {
    /// A standard entry for data at `host`, owned by this table alone (COPIED).
    pub fn data(host: u64) -> L2Entry {
        L2Entry {
            word: host | COPIED,
            bitmap: 0,
        }
    }

    /// Decodes the descriptor.
    pub fn kind(self, cluster_bits: u32, extended: bool) -> ClusterKind {
        let w = self.word;
        if w & COMPRESSED != 0 {
            let x = 62 - (cluster_bits - 8);
            let host = w & ((1u64 << x) - 1);
            let sectors = ((w & !COMPRESSED & !COPIED) >> x) + 1;
            // The data may start anywhere in its first sector.
            let len = sectors * 512 - (host & 511);
            return ClusterKind::Compressed { host, len };
        }
        let host = w & OFFSET_MASK;
        if !extended && w & ZERO != 0 {
            return ClusterKind::Zero {
                host: (host != 0).then_some(host),
            };
        }
        if host == 0 {
            return ClusterKind::Unallocated;
        }
        ClusterKind::Normal {
            host,
            copied: w & COPIED != 0,
        }
    }

    /// Subclusters holding data (extended L2).
    pub fn alloc_mask(self) -> u32 {
        self.bitmap as u32
    }

    /// Subclusters reading as zeroes (extended L2).
    pub fn zero_mask(self) -> u32 {
        (self.bitmap >> 32) as u32
    }

    /// Checks reserved bits, alignment and the subcluster bitmap; `field` names the entry.
    pub fn check(
        self,
        image: &str,
        field: impl Fn() -> String,
        cluster_bits: u32,
        extended: bool,
    ) -> Result<()> {
        let bad = |why: String| Err(Error::corrupt(image, field(), why));
        let w = self.word;
        if w & COMPRESSED != 0 {
            if extended && self.bitmap != 0 {
                return bad("compressed cluster with a non-zero subcluster bitmap".into());
            }
            return Ok(());
        }
        let reserved = if extended {
            L2_RESERVED | ZERO
        } else {
            L2_RESERVED
        };
        if w & reserved != 0 {
            return bad(format!("{w:#x} has reserved bits set"));
        }
        let host = w & OFFSET_MASK;
        if host & ((1 << cluster_bits) - 1) != 0 {
            return bad(format!("host offset {host:#x} is not cluster aligned"));
        }
        if extended {
            if self.alloc_mask() & self.zero_mask() != 0 {
                return bad(format!(
                    "subclusters {:#x} are both allocated and zero",
                    self.alloc_mask() & self.zero_mask()
                ));
            }
            // (With an external data file, host offset 0 is a real cluster marked COPIED.)
            if host == 0 && self.alloc_mask() != 0 && w & COPIED == 0 {
                return bad("subclusters allocated in an unallocated cluster".into());
            }
        }
        Ok(())
    }
}

/// Encodes a compressed cluster descriptor for data of `len` bytes at `host`.
pub fn compressed_descriptor(host: u64, len: u64, cluster_bits: u32) -> u64 {
    let x = 62 - (cluster_bits - 8);
    let last = (host + len - 1) / 512;
    let sectors = last - host / 512; // additional sectors beyond the first
    COMPRESSED | (sectors << x) | host
}

/// Refcount table entry: host offset of a refcount block (0: none).
pub fn refcount_table_entry_offset(e: u64) -> u64 {
    e & !0x1ff
}

/// Reads refcount `index` of a refcount block with `bits`-wide entries.
pub fn get_refcount(block: &[u8], index: usize, bits: u32) -> u64 {
    match bits {
        1 | 2 | 4 => {
            let per = 8 / bits as usize;
            let shift = (index % per) as u32 * bits;
            u64::from((block[index / per] >> shift) & ((1u8 << bits) - 1))
        }
        8 => u64::from(block[index]),
        16 => u64::from(u16::from_be_bytes([block[2 * index], block[2 * index + 1]])),
        32 => u64::from(u32::from_be_bytes(
            block[4 * index..4 * index + 4].try_into().expect("4"),
        )),
        _ => u64::from_be_bytes(block[8 * index..8 * index + 8].try_into().expect("8")),
    }
}

/// Writes refcount `index` (the caller checked `value` fits in `bits`).
pub fn set_refcount(block: &mut [u8], index: usize, bits: u32, value: u64) {
    match bits {
        1 | 2 | 4 => {
            let per = 8 / bits as usize;
            let shift = (index % per) as u32 * bits;
            let mask = ((1u8 << bits) - 1) << shift;
            let b = &mut block[index / per];
            *b = (*b & !mask) | (((value as u8) << shift) & mask);
        }
        8 => block[index] = value as u8,
        16 => block[2 * index..2 * index + 2].copy_from_slice(&(value as u16).to_be_bytes()),
        32 => block[4 * index..4 * index + 4].copy_from_slice(&(value as u32).to_be_bytes()),
        _ => block[8 * index..8 * index + 8].copy_from_slice(&value.to_be_bytes()),
    }
}

/// Largest refcount a `bits`-wide entry holds.
pub fn max_refcount(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcounts_every_width() {
        for order in 0..=6 {
            let bits = 1u32 << order;
            let mut block = vec![0u8; 512];
            let n = 512 * 8 / bits as usize;
            for i in 0..n {
                set_refcount(&mut block, i, bits, (i as u64 * 7) & max_refcount(bits));
            }
            for i in 0..n {
                assert_eq!(
                    get_refcount(&block, i, bits),
                    (i as u64 * 7) & max_refcount(bits)
                );
            }
        }
        // QEMU's order for sub-byte widths: entry 0 in the low bits.
        let mut b = [0u8; 1];
        set_refcount(&mut b, 0, 1, 1);
        assert_eq!(b[0], 1);
    }

    #[test]
    fn compressed_round_trip() {
        for bits in [9u32, 16, 21] {
            // Compressed data is smaller than a cluster (512-byte clusters leave one bit for
            // the extra sector count).
            let n = (1u64 << bits) / 2;
            let d = compressed_descriptor(0x12_3456, n, bits);
            match (L2Entry { word: d, bitmap: 0 }).kind(bits, false) {
                ClusterKind::Compressed { host, len } => {
                    assert_eq!(host, 0x12_3456);
                    assert!((n..n + 512).contains(&len), "{bits}: {len}");
                }
                k => panic!("{k:?}"),
            }
        }
    }
}
