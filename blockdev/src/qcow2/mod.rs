//! qcow2 images (versions 2 and 3): reads and writes through every cluster kind (normal, zero,
//! compressed, extended L2 subclusters, backing chains), crash-safe allocation, metadata caches,
//! internal snapshots, image creation and checking.
//!
//! One type spread over files by concern: [`header`] and [`entries`] (on-disk formats), `meta`
//! (open-image state and ordered write-back), `cache` (table caches), `alloc` (clusters and
//! refcounts), `read` and `write` (the synchronous paths), `queue` (the asynchronous fast path),
//! [`mod@create`], [`check`], [`snapshot`] and [`compress`].
//!
//! ```
//! use std::sync::Arc;
//! use vstor_blockdev::image::{ImageFile, MemImage};
//! use vstor_blockdev::qcow2::{create, CreateOptions, Qcow2Dev, Qcow2Options};
//! use vstor_blockdev::BlockDev;
//!
//! let file: Arc<dyn ImageFile> = Arc::new(MemImage::new(Vec::new(), 64 << 20));
//! create(&*file, &CreateOptions { size: 16 << 20, ..Default::default() }).unwrap();
//! let dev = Qcow2Dev::open_file(file.clone(), &Qcow2Options::default(), None).unwrap();
//! dev.write_at(b"hello", 70_000).unwrap();
//! let mut buf = [0u8; 5];
//! dev.read_at(&mut buf, 70_000).unwrap();
//! assert_eq!(&buf, b"hello");
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::image::{FileImage, ImageFile};
use crate::open::OpenOptions;
use crate::request::IoQueue;
use crate::types::{
    check_range, BlockDev, BlockInfo, BlockStatus, CacheMode, EngineKind, MapExtent, QueueOptions,
};

mod alloc;
mod cache;
pub mod check;
pub mod compress;
pub mod create;
pub mod entries;
pub mod fuzzing;
pub mod header;
mod meta;
mod queue;
mod read;
pub mod resize;
pub mod snapshot;
mod write;
mod zwrite;

pub use create::{create, create_path, Compat, CreateOptions, Preallocation};
pub use header::Header;
pub use resize::{resize, resize_file};

use self::meta::Meta;
use self::read::Src;

/// Deepest backing chain opened (QEMU has no fixed limit; each layer holds open files and a
/// read recurses through the layers, so a hostile chain must end somewhere).
pub const MAX_CHAIN_DEPTH: usize = 256;

/// How to open a qcow2 image.
#[derive(Debug, Clone, Default)]
pub struct Qcow2Options {
    /// Refuse writes.
    pub read_only: bool,
    /// Host cache mode of the image file (and data file).
    pub cache: CacheMode,
    /// I/O engine for data.
    pub engine: EngineKind,
    /// Bytes of L2 tables to cache (QEMU's l2-cache-size); default: enough to map the whole
    /// disk, at most 32 MiB.
    pub l2_cache_bytes: Option<u64>,
    /// Bytes of refcount blocks to cache (QEMU's refcount-cache-size); default 1 MiB.
    pub refcount_cache_bytes: Option<u64>,
    /// Images already open above this one (backing-loop detection).
    pub chain: Vec<PathBuf>,
}

/// Device state shared by the device and its queues.
pub(crate) struct Shared {
    meta: Mutex<Meta>,
    info: BlockInfo,
    engine_opts: (CacheMode, EngineKind),
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let mut m = self.lock();
        if let Err(e) = m.close() {
            log::error!("{}: closing: {e}", m.name);
        }
    }
}

/// An open qcow2 image.
pub struct Qcow2Dev {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Qcow2Dev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Dev")
            .field("info", &self.shared.info)
            .finish()
    }
}

fn resolve(image: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    image.parent().unwrap_or(Path::new(".")).join(p)
}

impl Qcow2Dev {
    /// Opens the image at `path`, its backing chain (each layer with the format its parent
    /// records — never probed) and its external data file.
    pub fn open(path: &Path, opts: &Qcow2Options) -> Result<Qcow2Dev> {
        let canon = std::fs::canonicalize(path).map_err(|source| Error::Open {
            path: path.to_path_buf(),
            source,
        })?;
        if opts.chain.contains(&canon) {
            return Err(Error::corrupt(
                &path.display().to_string(),
                "header.backing_file",
                "backing chain loops back to this image",
            ));
        }
        if opts.chain.len() >= MAX_CHAIN_DEPTH {
            return Err(Error::corrupt(
                &path.display().to_string(),
                "header.backing_file",
                format!("backing chain deeper than {MAX_CHAIN_DEPTH}"),
            ));
        }
        let fopts = OpenOptions {
            read_only: opts.read_only,
            cache: opts.cache,
            engine: opts.engine,
            ..Default::default()
        };
        let file: Arc<dyn ImageFile> = Arc::new(FileImage::open(path, &fopts)?);
        let hdr = Header::read(&*file)?;
        let backing = match &hdr.backing_file {
            None => None,
            Some(name) => {
                let Some(fmt) = hdr.backing_format.clone() else {
                    return Err(Error::corrupt(
                        file.name(),
                        "header extension backing format",
                        format!("backing file {name:?} has no recorded format (it is never probed; rebase with -F)"),
                    ));
                };
                let mut chain = opts.chain.clone();
                chain.push(canon.clone());
                let bopts = OpenOptions {
                    read_only: true,
                    cache: opts.cache,
                    engine: opts.engine,
                    format: Some(fmt),
                    ..Default::default()
                };
                Some(crate::probe::open_layer(
                    &resolve(path, name),
                    &bopts,
                    chain,
                )?)
            }
        };
        let data = match (&hdr.data_file, hdr.has_data_file()) {
            (_, false) => None,
            (None, true) => {
                return Err(Error::corrupt(
                    file.name(),
                    "header extension data file",
                    "the image needs an external data file but names none",
                ))
            }
            (Some(name), true) => {
                let d: Arc<dyn ImageFile> = Arc::new(FileImage::open(resolve(path, name), &fopts)?);
                Some(d)
            }
        };
        Self::open_parts(file, opts, backing, data)
    }

    /// Opens an image in `file` with `backing` as its backing device (no file names are
    /// resolved: for tests, fuzzing and embedders with their own protocols).
    pub fn open_file(
        file: Arc<dyn ImageFile>,
        opts: &Qcow2Options,
        backing: Option<Arc<dyn BlockDev>>,
    ) -> Result<Qcow2Dev> {
        Self::open_parts(file, opts, backing, None)
    }

    fn open_parts(
        file: Arc<dyn ImageFile>,
        opts: &Qcow2Options,
        backing: Option<Arc<dyn BlockDev>>,
        data: Option<Arc<dyn ImageFile>>,
    ) -> Result<Qcow2Dev> {
        let read_only = opts.read_only || file.read_only();
        let mut hdr = Header::read(&*file)?;
        if hdr.corrupt() && !read_only {
            return Err(Error::corrupt(
                file.name(),
                "header.incompatible_features",
                "the image is marked corrupt; open it read-only (or repair it with check -r all)",
            ));
        }
        if hdr.dirty() && !read_only {
            log::warn!(
                "{}: image not closed cleanly, repairing refcounts",
                file.name()
            );
            check::check(&*file, check::RepairMode::All)?;
            hdr = Header::read(&*file)?;
        }
        if hdr.has_data_file() && data.is_none() {
            return Err(Error::Unsupported {
                op: "open",
                what: format!(
                    "{}: external data file not given (open the image by path)",
                    file.name()
                ),
            });
        }
        let cs = hdr.cluster_size();
        let l2_tables = hdr.l1_entries_for(hdr.size).max(1);
        let l2_cap = match opts.l2_cache_bytes {
            Some(b) => b / cs,
            None => l2_tables.min((32 << 20) / cs),
        };
        let rb_cap = opts.refcount_cache_bytes.unwrap_or(1 << 20) / cs;
        let name = file.name().to_string();
        let mut meta = Meta::load(
            file.clone(),
            hdr.clone(),
            read_only,
            l2_cap as usize,
            rb_cap.max(4) as usize,
        )?;
        if let Some(d) = data {
            meta.data = d;
        }
        meta.backing = backing;
        meta.write_through = opts.cache.write_through();
        if !read_only && meta.hdr.autoclear_features & !header::AUTOCLEAR_DATA_FILE_RAW != 0 {
            // Autoclear features we do not maintain (bitmaps) must be cleared by a writer, so
            // that QEMU does not trust bitmaps that missed our writes.
            meta.hdr.autoclear_features &= header::AUTOCLEAR_DATA_FILE_RAW;
            meta.write_header()?;
        }
        let info = BlockInfo {
            size: hdr.size / 512 * 512,
            logical_block_size: 512,
            physical_block_size: 512,
            mem_align: 1,
            read_only,
            discard: !read_only,
            discard_zeroes: false,
            write_zeroes: !read_only,
            secure_erase: false,
            write_cache: !opts.cache.write_through(),
            max_discard_bytes: 1 << 30,
            cache: opts.cache,
            description: format!("qcow2 {name}"),
        };
        Ok(Qcow2Dev {
            shared: Arc::new(Shared {
                meta: Mutex::new(meta),
                info,
                engine_opts: (opts.cache, opts.engine),
            }),
        })
    }

    /// The header as it is now.
    pub fn header(&self) -> Header {
        self.shared.lock().hdr.clone()
    }

    /// The backing device, if any.
    pub fn backing(&self) -> Option<Arc<dyn BlockDev>> {
        self.shared.lock().backing.clone()
    }

    /// Writes the whole guest cluster at `offset` compressed (see `qemu-img convert -c`);
    /// `data` is at most one cluster (the disk's last cluster may be shorter).
    pub fn write_compressed(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.shared.lock().write_compressed(offset, data)
    }
}

impl BlockDev for Qcow2Dev {
    fn info(&self) -> &BlockInfo {
        &self.shared.info
    }

    fn open_queue(&self, opts: &QueueOptions) -> Result<Box<dyn IoQueue>> {
        Ok(Box::new(queue::Qcow2Queue::new(self.shared.clone(), opts)?))
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range("read", offset, buf.len() as u64, self.shared.info.size)?;
        self.shared.lock().read_sync(offset, buf)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        check_range("write", offset, buf.len() as u64, self.shared.info.size)?;
        self.shared.lock().write_sync(offset, buf)
    }

    fn flush(&self) -> Result<()> {
        self.shared.lock().write_back()
    }

    fn format_name(&self) -> &'static str {
        "qcow2"
    }

    fn close(&self) -> Result<()> {
        self.shared.lock().close()
    }

    fn map(&self, offset: u64, len: u64) -> Result<MapExtent> {
        check_range("map", offset, len, self.shared.info.size)?;
        let mut m = self.shared.lock();
        let (n, src, e) = m.lookup(offset, len)?;
        // The host offset QEMU reports for zero and (extended L2) unallocated runs that have
        // a host cluster.
        let coff = offset & (m.cluster_size() - 1);
        let host = match m.kind_of(e) {
            entries::ClusterKind::Zero { host } => host.map(|h| h + coff),
            entries::ClusterKind::Normal { host, .. } => Some(host + coff),
            _ => None,
        };
        let ext = MapExtent {
            len: n,
            data: false,
            zero: false,
            present: true,
            offset: None,
            depth: 0,
            compressed: false,
        };
        Ok(match src {
            Src::Data(h) => MapExtent {
                data: true,
                offset: Some(h),
                ..ext
            },
            Src::Zero => MapExtent {
                zero: true,
                offset: host,
                ..ext
            },
            Src::Compressed { .. } => MapExtent {
                data: true,
                compressed: true,
                ..ext
            },
            Src::Backing => match m.backing.clone() {
                None => MapExtent {
                    zero: true,
                    present: false,
                    offset: host,
                    ..ext
                },
                Some(b) => {
                    drop(m);
                    let bsize = b.info().size;
                    if offset >= bsize {
                        // Past the end of a shorter backing file: zeroes from this layer, as
                        // qemu-img map reports them (depth 0).
                        MapExtent {
                            zero: true,
                            present: false,
                            ..ext
                        }
                    } else {
                        let below = b.map(offset, n.min(bsize - offset))?;
                        MapExtent {
                            depth: below.depth + 1,
                            ..below
                        }
                    }
                }
            },
        })
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<BlockStatus> {
        let m = self.map(offset, len)?;
        Ok(BlockStatus {
            len: m.len,
            allocated: m.present && m.depth == 0,
            zero: m.zero,
        })
    }
}
