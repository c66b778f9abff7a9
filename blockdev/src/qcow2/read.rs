//! Guest-to-host mapping and the synchronous read path: each guest range resolves to runs of
//! host data, zeroes, backing-file data or compressed clusters.

use super::compress::{self, CompressionType};
use super::entries::{ClusterKind, L2Entry};
use super::meta::Meta;
use crate::error::Result;

/// Where a run of guest bytes comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Src {
    /// Host data at this offset of the data file.
    Data(u64),
    /// Zeroes (zero cluster or subcluster).
    Zero,
    /// Not allocated in this image: the backing file (or zeroes without one).
    Backing,
    /// Inside a compressed cluster.
    Compressed {
        /// Host offset of the compressed data.
        host: u64,
        /// Bytes of compressed data to read.
        len: u64,
        /// Offset of the run inside the decompressed cluster.
        at: u64,
    },
}

impl Meta {
    /// The run starting at `guest` (at most `max` bytes, never past its cluster) that shares one
    /// source, with the L2 entry it came from.
    pub fn lookup(&mut self, guest: u64, max: u64) -> Result<(u64, Src, L2Entry)> {
        let r = self.lookup_entry(guest, max)?;
        if let (_, Src::Data(host), _) = r {
            if host >= self.alloc_end && !self.hdr.has_data_file() {
                return Err(self.corrupt(
                    format!("L2 entry for guest offset {guest:#x}"),
                    format!(
                        "data at host offset {host:#x} is past the end of the image file ({:#x})",
                        self.alloc_end
                    ),
                ));
            }
        }
        Ok(r)
    }

    fn lookup_entry(&mut self, guest: u64, max: u64) -> Result<(u64, Src, L2Entry)> {
        let cs = self.cluster_size();
        let coff = guest & (cs - 1);
        let room = (cs - coff).min(max);
        let e = self.l2_entry(guest)?;
        let ext = self.hdr.extended_l2();
        let kind = self.kind_of(e);
        let src = match kind {
            ClusterKind::Compressed { host, len } => {
                return Ok((
                    room,
                    Src::Compressed {
                        host,
                        len,
                        at: coff,
                    },
                    e,
                ));
            }
            ClusterKind::Zero { .. } => return Ok((room, Src::Zero, e)),
            ClusterKind::Unallocated if !ext => return Ok((room, Src::Backing, e)),
            ClusterKind::Normal { host, .. } if !ext => {
                return Ok((room, Src::Data(host + coff), e))
            }
            ClusterKind::Unallocated => None,
            ClusterKind::Normal { host, .. } => Some(host),
        };
        // Extended L2: the run ends where the subcluster status changes.
        let sc = cs / 32;
        let status = |i: u64| -> u8 {
            if e.alloc_mask() >> i & 1 != 0 {
                0
            } else if e.zero_mask() >> i & 1 != 0 {
                1
            } else {
                2
            }
        };
        let first = coff / sc;
        let st = status(first);
        let mut end = (first + 1) * sc;
        while end < coff + room && status(end / sc) == st {
            end += sc;
        }
        let len = (end - coff).min(room);
        let s = match (st, src) {
            (0, Some(host)) => Src::Data(host + coff),
            (1, _) => Src::Zero,
            _ => Src::Backing,
        };
        Ok((len, s, e))
    }

    /// Reads guest bytes at `guest` into `buf` (synchronously, through every kind of run).
    pub fn read_sync(&mut self, mut guest: u64, mut buf: &mut [u8]) -> Result<()> {
        while !buf.is_empty() {
            let (len, src, _) = self.lookup(guest, buf.len() as u64)?;
            let (now, rest) = buf.split_at_mut(len as usize);
            self.read_run(guest, src, now)?;
            buf = rest;
            guest += len;
        }
        Ok(())
    }

    /// Reads one run (from [`Meta::lookup`]) into `buf`.
    pub fn read_run(&mut self, guest: u64, src: Src, buf: &mut [u8]) -> Result<()> {
        match src {
            Src::Data(host) => self.data.read_at(buf, host),
            Src::Zero => {
                buf.fill(0);
                Ok(())
            }
            Src::Backing => self.read_backing(guest, buf),
            Src::Compressed { host, len, at } => {
                let cluster = self.decompressed(host, len)?;
                buf.copy_from_slice(&cluster[at as usize..at as usize + buf.len()]);
                Ok(())
            }
        }
    }

    /// Reads from the backing device; what lies past its end reads as zeroes.
    pub fn read_backing(&self, guest: u64, buf: &mut [u8]) -> Result<()> {
        buf.fill(0);
        let Some(b) = &self.backing else {
            return Ok(());
        };
        let bsize = b.info().size;
        if guest >= bsize {
            return Ok(());
        }
        let n = (bsize - guest).min(buf.len() as u64) as usize;
        b.read_at(&mut buf[..n], guest)
    }

    /// The decompressed cluster whose compressed data is `len` bytes at `host`.
    pub fn decompressed(&mut self, host: u64, len: u64) -> Result<&[u8]> {
        let hit = matches!(&self.zcache, Some((h, _)) if *h == host);
        if !hit {
            let cs = self.cluster_size() as usize;
            // The descriptor's length is whole sectors; never read more than two clusters.
            let len = len.min(2 * cs as u64) as usize;
            let mut input = vec![0u8; len];
            self.data.read_at(&mut input, host)?;
            let mut out = vec![0u8; cs];
            let kind = if self.hdr.compression() == 1 {
                CompressionType::Zstd
            } else {
                CompressionType::Zlib
            };
            compress::decompress(kind, &input, &mut out).map_err(|e| {
                self.corrupt(
                    format!("compressed cluster at host offset {host:#x}"),
                    e.to_string(),
                )
            })?;
            self.zcache = Some((host, out));
        }
        Ok(&self.zcache.as_ref().expect("filled").1)
    }
}
