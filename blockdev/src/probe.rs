//! Format probing and the raw block-0 guard.
//!
//! An explicit format is always honoured. Probing looks at the first sector: the qcow2 magic
//! means qcow2, anything else raw. A device that was *probed* as raw refuses writes that would
//! make its first sector probe as an image format (QEMU's guard against CVE-2008-2004: a guest
//! writing a qcow2 header into its raw disk must not make the host open a file it names on the
//! next start). Backing and data files named inside an image are opened only with the format
//! the image records, never probed.

use std::os::unix::io::RawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::file::FileDev;
use crate::iovec;
use crate::open::OpenOptions;
use crate::qcow2::{Qcow2Dev, Qcow2Options};
use crate::request::{Completion, IoOp, IoQueue, IoRequest, Submitted};
use crate::types::{BlockDev, BlockInfo, BlockStatus, MapExtent, QueueOptions};

/// Magic numbers of image formats, with their offset in the first sector.
const SIGNATURES: &[(usize, &[u8], &str)] = &[
    (0, b"QFI\xfb", "qcow/qcow2"),
    (0, b"KDMV", "vmdk"),
    (0, b"# Disk DescriptorFile", "vmdk"),
    (0, b"COWD", "vmdk"),
    (0, b"vhdxfile", "vhdx"),
    (0, b"conectix", "vpc"),
    (64, &[0x7f, 0x10, 0xda, 0xbe], "vdi"),
    (0, b"QED\0", "qed"),
    (0, b"LUKS\xba\xbe", "luks"),
    (0, b"WithoutFreeSpace", "parallels"),
    (0, b"WithouFreSpacExt", "parallels"),
    (0, b"Bochs Virtual HD Image", "bochs"),
];

/// The image format whose signature `sector` (the first bytes of a device) carries, if any.
pub fn signature(sector: &[u8]) -> Option<&'static str> {
    SIGNATURES
        .iter()
        .find(|(at, magic, _)| sector.get(*at..*at + magic.len()) == Some(*magic))
        .map(|(_, _, name)| *name)
}

/// The format of the image at `path`: "qcow2" or "raw".
pub fn probe(path: &Path) -> Result<&'static str> {
    let dev = FileDev::open(
        path,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )?;
    let mut first = vec![0u8; 512.min(dev.info().size as usize)];
    dev.read_at(&mut first, 0)?;
    Ok(probe_bytes(&first))
}

/// The format the first sector `first` says: "qcow2" or "raw".
pub fn probe_bytes(first: &[u8]) -> &'static str {
    if first.len() >= 8
        && first[..4] == *b"QFI\xfb"
        && u32::from_be_bytes(first[4..8].try_into().expect("4")) >= 2
    {
        "qcow2"
    } else {
        "raw"
    }
}

/// Opens one layer of a chain with an explicit format (`opts.format` must be set).
pub(crate) fn open_layer(
    path: &Path,
    opts: &OpenOptions,
    chain: Vec<PathBuf>,
) -> Result<Arc<dyn BlockDev>> {
    match opts.format.as_deref() {
        Some("raw") => Ok(Arc::new(FileDev::open(path, opts)?)),
        Some("qcow2") => {
            let q = Qcow2Options {
                read_only: opts.read_only,
                cache: opts.cache,
                engine: opts.engine,
                l2_cache_bytes: opts.l2_cache_bytes,
                refcount_cache_bytes: opts.refcount_cache_bytes,
                chain,
            };
            Ok(Arc::new(Qcow2Dev::open(path, &q)?))
        }
        Some(f) => Err(Error::Unsupported {
            op: "open",
            what: format!(
                "{}: image format {f:?} (raw and qcow2 exist)",
                path.display()
            ),
        }),
        None => Err(Error::InvalidOption {
            name: "format",
            value: String::new(),
            reason: format!("{}: a format is required here", path.display()),
        }),
    }
}

/// Opens a path with `opts.format`, or probes it (a probed raw device gets the block-0 guard).
pub(crate) fn open_path(path: &Path, opts: &OpenOptions) -> Result<Arc<dyn BlockDev>> {
    if opts.format.is_some() {
        return open_layer(path, opts, Vec::new());
    }
    let fmt = probe(path)?;
    let o = OpenOptions {
        format: Some(fmt.into()),
        ..opts.clone()
    };
    let dev = open_layer(path, &o, Vec::new())?;
    if fmt == "raw" && !opts.read_only {
        log::warn!(
            "{}: format probed as raw; writes that would make block 0 look like an image format are refused (give the format explicitly to lift this)",
            path.display()
        );
        return Ok(Arc::new(GuardedRaw { inner: dev }));
    }
    Ok(dev)
}

/// A probed raw device: refuses writes that would make block 0 probe as an image format.
pub struct GuardedRaw {
    inner: Arc<dyn BlockDev>,
}

/// The first sector as it would be after writing `data` at `offset` (`current` is what it
/// holds now).
fn sector_after(current: &[u8], data: &[u8], offset: u64) -> Vec<u8> {
    let mut s = current.to_vec();
    let start = offset as usize;
    let n = s.len().saturating_sub(start).min(data.len());
    s[start..start + n].copy_from_slice(&data[..n]);
    s
}

fn check_sector(inner: &dyn BlockDev, data: &[u8], offset: u64) -> Result<()> {
    if offset >= 512 {
        return Ok(());
    }
    let mut cur = vec![0u8; 512.min(inner.info().size as usize)];
    inner.read_at(&mut cur, 0)?;
    if let Some(f) = signature(&sector_after(&cur, data, offset)) {
        return Err(Error::InvalidOption {
            name: "write",
            value: format!("offset {offset}"),
            reason: format!(
                "refused: it would make the probed raw image's first sector look like {f} (open it with format=raw to allow this)"
            ),
        });
    }
    Ok(())
}

impl BlockDev for GuardedRaw {
    fn info(&self) -> &BlockInfo {
        self.inner.info()
    }
    fn open_queue(&self, opts: &QueueOptions) -> Result<Box<dyn IoQueue>> {
        Ok(Box::new(GuardQueue {
            dev: self.inner.clone(),
            inner: self.inner.open_queue(opts)?,
        }))
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        check_sector(&*self.inner, buf, offset)?;
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn block_status(&self, offset: u64, len: u64) -> Result<BlockStatus> {
        self.inner.block_status(offset, len)
    }
    fn map(&self, offset: u64, len: u64) -> Result<MapExtent> {
        self.inner.map(offset, len)
    }
}

struct GuardQueue {
    dev: Arc<dyn BlockDev>,
    inner: Box<dyn IoQueue>,
}

impl IoQueue for GuardQueue {
    fn submit(&mut self, req: IoRequest) -> Result<Submitted> {
        if req.op == IoOp::Write && req.offset < 512 {
            let n = (512 - req.offset).min(req.len) as usize;
            let mut head = vec![0u8; n];
            iovec::gather(&req.iovecs, &mut head);
            if let Err(e) = check_sector(&*self.dev, &head, req.offset) {
                return Ok(Submitted::Done(Err(e)));
            }
        }
        self.inner.submit(req)
    }
    fn kick(&mut self) -> Result<()> {
        self.inner.kick()
    }
    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        self.inner.reap(out)
    }
    fn completion_fd(&self) -> Option<RawFd> {
        self.inner.completion_fd()
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
    fn depth(&self) -> usize {
        self.inner.depth()
    }
}
