//! Compressed writes (`qemu-img convert -c`): whole clusters are compressed and packed
//! byte-wise into host clusters; every host cluster a compressed cluster touches holds one
//! reference for it.

use super::compress::{self, CompressionType};
use super::entries::{self, L2Entry};
use super::meta::Meta;
use crate::error::{Error, Result};

impl Meta {
    /// Writes one whole guest cluster at `guest` (cluster aligned) compressed, or
    /// uncompressed when compression does not make it smaller. `data` is the cluster's content
    /// (shorter only for the last cluster of the disk; the rest is zeroes).
    pub fn write_compressed(&mut self, guest: u64, data: &[u8]) -> Result<()> {
        let cs = self.cluster_size();
        if guest % cs != 0 || data.len() as u64 > cs || guest + data.len() as u64 > self.hdr.size {
            return Err(Error::InvalidOption {
                name: "offset",
                value: format!("{guest}+{}", data.len()),
                reason: format!(
                    "compressed writes cover one whole {cs}-byte cluster inside the disk"
                ),
            });
        }
        if self.read_only {
            return Err(Error::ReadOnly { op: "write" });
        }
        if self.hdr.has_data_file() {
            return Err(Error::Unsupported {
                op: "compressed write",
                what: format!("{}: images with an external data file", self.name),
            });
        }
        let mut cluster = vec![0u8; cs as usize];
        cluster[..data.len()].copy_from_slice(data);
        let kind = CompressionType::from_byte(self.hdr.compression()).unwrap_or_default();
        let Some(z) = compress::compress(kind, &cluster)? else {
            return self.write_sync(guest, data);
        };
        let e = self.l2_entry(guest)?;
        let old = self.kind_of(e);
        let (l2off, i2) = self.l2_for_write(guest)?;
        let host = self.alloc_bytes(z.len() as u64)?;
        self.data.write_at(&z, host)?;
        self.data_dirty = true;
        let word = entries::compressed_descriptor(host, z.len() as u64, self.hdr.cluster_bits);
        self.set_l2_entry(l2off, i2, L2Entry { word, bitmap: 0 })?;
        self.release_kind(old, None);
        self.zcache = None;
        self.commit_if_write_through()
    }

    /// Allocates `len` bytes (at most a cluster) for compressed data, continuing in the host
    /// cluster the previous compressed write ended in when it fits.
    fn alloc_bytes(&mut self, len: u64) -> Result<u64> {
        let cs = self.cluster_size();
        if let Some(next) = self.zfree {
            let room = cs - (next & (cs - 1));
            if next & (cs - 1) != 0 && len <= room {
                self.change_refcount(next & !(cs - 1), 1)?;
                self.zfree = Some(next + len);
                return Ok(next);
            }
        }
        let (host, _) = self.alloc_cluster()?;
        self.zfree = Some(host + len);
        Ok(host)
    }
}
