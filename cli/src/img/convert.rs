//! `vstor img convert`: copies the guest-visible content of an image (its whole backing chain)
//! into a new raw or qcow2 image. Ranges the source reports as zero or unallocated, and 4 KiB
//! blocks that read as zeroes, are not written, so the output stays sparse; `-c` writes
//! compressed qcow2 clusters.

use std::path::Path;

use clap::Args;
use vstor_blockdev::qcow2::{Qcow2Dev, Qcow2Options};
use vstor_blockdev::BlockDev;

use super::create::{create_raw, parse_opts, qcow2_options};
use super::progress::Progress;
use super::{check_format, fail, open_dev, CmdResult, Failure, OpenHow, PathArg};

/// Granularity of zero detection (qemu-img convert's default `-S 4k`).
const SPARSE: u64 = 4096;
/// Chunk copied at once when not compressing.
const CHUNK: u64 = 1 << 20;

/// Arguments of `vstor img convert`.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Source format (probed when absent).
    #[arg(short = 'f')]
    fmt: Option<String>,
    /// Output format.
    #[arg(short = 'O', default_value = "raw")]
    out_fmt: String,
    /// Compress the output (qcow2).
    #[arg(short = 'c')]
    compress: bool,
    /// Output format options (as for create).
    #[arg(short = 'o')]
    options: Vec<String>,
    /// Show progress.
    #[arg(short = 'p')]
    progress: bool,
    /// Quiet.
    #[arg(short = 'q')]
    quiet: bool,
    /// Do not create the output: it exists and is written over.
    #[arg(short = 'n')]
    no_create: bool,
    /// Ignored (vstor never locks images).
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    /// Source image.
    src: PathArg,
    /// Output image.
    dst: PathArg,
}

/// Creates the output image and opens it for writing.
fn create_target(a: &ConvertArgs, fmt: &str, size: u64) -> Result<Box<dyn Target>, Failure> {
    let pairs = parse_opts(&a.options)?;
    let name = a.dst.to_string_lossy().to_string();
    if fmt == "raw" {
        if a.compress {
            return Err(fail("Compression not supported for this file format"));
        }
        if !a.no_create {
            let mut prealloc = "off";
            for (k, v) in &pairs {
                match (k.as_str(), v.as_str()) {
                    ("preallocation", "off" | "falloc" | "full") => {
                        prealloc = if v == "off" { "off" } else { "full" }
                    }
                    _ => return Err(fail(format!("{name}: Invalid parameter '{k}'"))),
                }
            }
            create_raw(&a.dst, size, prealloc)?;
        }
        let (dev, _) = open_dev(&a.dst, Some("raw"), OpenHow::default())?;
        return Ok(Box::new(RawTarget(dev)));
    }
    if !a.no_create {
        let (mut o, _) = qcow2_options(&pairs, &name)?;
        o.size = size.div_ceil(512) * 512;
        vstor_blockdev::qcow2::create_path(&a.dst, &o).map_err(|e| fail(format!("{name}: {e}")))?;
    }
    let dev = Qcow2Dev::open(&a.dst, &Qcow2Options::default())
        .map_err(|e| fail(format!("Could not open '{name}': {e}")))?;
    Ok(Box::new(QcowTarget(dev)))
}

/// Where converted data goes.
trait Target {
    fn dev(&self) -> &dyn BlockDev;
    fn cluster_size(&self) -> u64;
    fn write_compressed(&self, off: u64, buf: &[u8]) -> vstor_blockdev::Result<()>;
    fn close(self: Box<Self>) -> vstor_blockdev::Result<()>;
}

struct RawTarget(std::sync::Arc<dyn BlockDev>);

impl Target for RawTarget {
    fn dev(&self) -> &dyn BlockDev {
        self.0.as_ref()
    }
    fn cluster_size(&self) -> u64 {
        CHUNK
    }
    fn write_compressed(&self, off: u64, buf: &[u8]) -> vstor_blockdev::Result<()> {
        self.0.write_at(buf, off)
    }
    fn close(self: Box<Self>) -> vstor_blockdev::Result<()> {
        self.0.flush()
    }
}

struct QcowTarget(Qcow2Dev);

impl Target for QcowTarget {
    fn dev(&self) -> &dyn BlockDev {
        &self.0
    }
    fn cluster_size(&self) -> u64 {
        self.0.header().cluster_size()
    }
    fn write_compressed(&self, off: u64, buf: &[u8]) -> vstor_blockdev::Result<()> {
        self.0.write_compressed(off, buf)
    }
    fn close(self: Box<Self>) -> vstor_blockdev::Result<()> {
        self.0.close()
    }
}

/// Whether `[off, off+len)` of `dev` holds any data (else it reads as zeroes).
fn has_data(dev: &dyn BlockDev, off: u64, len: u64) -> vstor_blockdev::Result<bool> {
    let mut pos = off;
    while pos < off + len {
        let m = dev.map(pos, off + len - pos)?;
        if m.data || (m.present && !m.zero) {
            return Ok(true);
        }
        pos += m.len.clamp(1, off + len - pos);
    }
    Ok(false)
}

/// Runs `vstor img convert`.
pub fn run(a: ConvertArgs) -> CmdResult {
    let _ = a.force_share;
    let out_fmt = check_format(&a.out_fmt)?;
    let (src, _) = open_dev(
        &a.src,
        a.fmt.as_deref(),
        OpenHow {
            read_only: true,
            ..Default::default()
        },
    )?;
    let size = src.info().size;
    let target = create_target(&a, out_fmt, size)?;
    let dname = a.dst.to_string_lossy().to_string();
    let sname = a.src.to_string_lossy().to_string();
    let werr = |e: vstor_blockdev::Error| {
        fail(format!(
            "error while writing at byte offset of {dname}: {e}"
        ))
    };
    let rerr = |e: vstor_blockdev::Error| fail(format!("error while reading {sname}: {e}"));
    let step = if a.compress {
        target.cluster_size()
    } else {
        CHUNK.max(target.cluster_size())
    };
    let mut progress = Progress::new(a.progress && !a.quiet, size);
    let mut buf = vec![0u8; step as usize];
    let mut off = 0u64;
    while off < size {
        let len = (size - off).min(step);
        let chunk = &mut buf[..len as usize];
        if !has_data(src.as_ref(), off, len).map_err(rerr)? {
            if a.no_create {
                chunk.fill(0);
                target.dev().write_at(chunk, off).map_err(werr)?;
            }
        } else {
            src.read_at(chunk, off).map_err(rerr)?;
            if a.compress {
                if chunk.iter().any(|&b| b != 0) {
                    write_compressed(target.as_ref(), &buf, off, len).map_err(werr)?;
                } else if a.no_create {
                    target
                        .dev()
                        .write_at(&buf[..len as usize], off)
                        .map_err(werr)?;
                }
            } else {
                write_sparse(target.dev(), chunk, off, a.no_create).map_err(werr)?;
            }
        }
        progress.advance(len);
        off += len;
    }
    target.close().map_err(werr)?;
    progress.finish();
    let _ = Path::new(&dname);
    Ok(0)
}

/// Writes one cluster compressed (the last cluster of the disk may be shorter).
fn write_compressed(t: &dyn Target, buf: &[u8], off: u64, len: u64) -> vstor_blockdev::Result<()> {
    t.write_compressed(off, &buf[..len as usize])
}

/// Writes the runs of `chunk` that are not all-zero 4 KiB blocks (all of it when `dense`).
fn write_sparse(
    dev: &dyn BlockDev,
    chunk: &[u8],
    off: u64,
    dense: bool,
) -> vstor_blockdev::Result<()> {
    if dense {
        return dev.write_at(chunk, off);
    }
    let mut i = 0usize;
    let n = chunk.len();
    while i < n {
        let blk = |j: usize| &chunk[j..(j + SPARSE as usize).min(n)];
        if blk(i).iter().all(|&b| b == 0) {
            i += SPARSE as usize;
            continue;
        }
        let start = i;
        while i < n && blk(i).iter().any(|&b| b != 0) {
            i += SPARSE as usize;
        }
        let end = i.min(n);
        dev.write_at(&chunk[start..end], off + start as u64)?;
    }
    Ok(())
}
