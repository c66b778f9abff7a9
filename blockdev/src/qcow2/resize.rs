//! Changing the virtual size: growing (with a larger L1 table when needed) and shrinking
//! (freeing every cluster past the new end), as `qemu-img resize` does.

use std::path::Path;
use std::sync::Arc;

use super::meta::{u64_table_bytes, Meta};
use super::{Qcow2Dev, Qcow2Options};
use crate::error::{Error, Result};
use crate::image::ImageFile;
use crate::types::BlockDev;

impl Meta {
    /// Allocates `n` contiguous clusters at the end of the image.
    pub(crate) fn alloc_contiguous(&mut self, n: u64) -> Result<u64> {
        let cs = self.cluster_size();
        loop {
            let start = self.alloc_end;
            self.free_hint = start >> self.hdr.cluster_bits;
            let mut got = Vec::new();
            for _ in 0..n {
                got.push(self.alloc_cluster()?.0);
            }
            if got
                .iter()
                .enumerate()
                .all(|(i, &c)| c == got[0] + i as u64 * cs)
            {
                return Ok(got[0]);
            }
            // A refcount block landed in the middle: give these back and try past it.
            for c in got {
                self.change_refcount(c, -1)?;
            }
        }
    }

    /// Sets the virtual size to `new_size` (a multiple of 512).
    pub(crate) fn resize(&mut self, new_size: u64, allow_shrink: bool) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly { op: "resize" });
        }
        if new_size % 512 != 0 || new_size > super::header::MAX_VIRTUAL_SIZE {
            return Err(Error::InvalidOption {
                name: "size",
                value: new_size.to_string(),
                reason: "must be a multiple of 512 below 2^61".into(),
            });
        }
        let old = self.hdr.size;
        if new_size < old {
            if !allow_shrink {
                return Err(Error::InvalidOption {
                    name: "size",
                    value: new_size.to_string(),
                    reason: format!("is smaller than the current {old} bytes (use --shrink)"),
                });
            }
            if self.hdr.nb_snapshots > 0 {
                return Err(Error::Unsupported {
                    op: "shrink",
                    what: format!("{}: images with internal snapshots", self.name),
                });
            }
            let cs = self.cluster_size();
            let first = new_size.div_ceil(cs) * cs;
            if first < old {
                // Whole clusters past the new end are freed.
                let saved = self.backing.take();
                let r = self.zero_range(first, old.div_ceil(cs) * cs - first, true, true);
                self.backing = saved;
                r?;
            }
        }
        let need = self.hdr.l1_entries_for(new_size);
        if need > self.l1.len() as u64 {
            self.grow_l1(need)?;
        }
        self.write_back()?;
        self.write_back()?;
        self.hdr.size = new_size;
        self.write_header()
    }

    fn grow_l1(&mut self, need: u64) -> Result<()> {
        if need * 8 > super::header::MAX_L1_BYTES {
            return Err(Error::InvalidOption {
                name: "size",
                value: need.to_string(),
                reason: "needs an L1 table over 32 MiB".into(),
            });
        }
        let cs = self.cluster_size();
        let clusters = (need * 8).div_ceil(cs);
        self.write_back()?;
        let off = self.alloc_contiguous(clusters)?;
        let mut table = self.l1.clone();
        table.resize((clusters * cs / 8) as usize, 0);
        self.write_refcounts()?;
        self.file.write_at(&u64_table_bytes(&table), off)?;
        self.file.flush()?;
        let (old_off, old_len) = (self.hdr.l1_table_offset, self.l1.len() as u64);
        self.hdr.l1_table_offset = off;
        self.hdr.l1_size = need as u32;
        self.write_header()?;
        table.truncate(need as usize);
        self.l1 = table;
        for i in 0..clusters {
            self.meta_clusters.insert(off + i * cs);
        }
        let old_clusters = (old_len * 8).div_ceil(cs);
        for i in 0..old_clusters {
            self.meta_clusters.remove(&(old_off + i * cs));
            self.change_refcount(old_off + i * cs, -1)?;
        }
        Ok(())
    }
}

/// Resizes the qcow2 image at `path` to `new_size` bytes (rounded up to 512); shrinking frees
/// the clusters past the new end and needs `allow_shrink`.
pub fn resize(path: &Path, new_size: u64, allow_shrink: bool) -> Result<()> {
    let dev = Qcow2Dev::open(path, &Qcow2Options::default())?;
    let r = dev
        .shared
        .lock()
        .resize(new_size.div_ceil(512) * 512, allow_shrink);
    r.and(dev.close())
}

/// Like [`resize`], for an image in any [`ImageFile`] (no backing file is opened).
pub fn resize_file(file: Arc<dyn ImageFile>, new_size: u64, allow_shrink: bool) -> Result<()> {
    let dev = Qcow2Dev::open_file(file, &Qcow2Options::default(), None)?;
    let r = dev
        .shared
        .lock()
        .resize(new_size.div_ceil(512) * 512, allow_shrink);
    r.and(dev.close())
}
