//! `vstor img rebase` (change an image's backing file; safe mode first copies into the image
//! every range where the old and the new backing differ) and `vstor img commit` (write an
//! image's data into its backing file, then empty it).

use std::path::Path;
use std::sync::Arc;

use clap::Args;
use vstor_blockdev::image::{FileImage, ImageFile};
use vstor_blockdev::qcow2::header::Header;
use vstor_blockdev::qcow2::{Qcow2Dev, Qcow2Options};
use vstor_blockdev::{BlockDev, IoOp, IoRequest, OpenOptions, QueueOptions, Submitted};

use super::progress::Progress;
use super::{
    fail, image_format, open_dev, open_failure, path_combine, CmdResult, Failure, OpenHow, PathArg,
};

/// Sector granularity of rebase comparisons (as qemu-img).
const SECTOR: usize = 512;

/// Arguments of `vstor img rebase`.
#[derive(Args, Debug)]
pub struct RebaseArgs {
    /// Image format (must be qcow2).
    #[arg(short = 'f')]
    fmt: Option<String>,
    /// New backing file ("" for none), relative names resolve against the image's directory.
    #[arg(short = 'b')]
    backing: String,
    /// Format of the new backing file.
    #[arg(short = 'F')]
    backing_fmt: Option<String>,
    /// Unsafe: only change the name in the header, copy nothing.
    #[arg(short = 'u')]
    unsafe_mode: bool,
    /// Show progress.
    #[arg(short = 'p')]
    progress: bool,
    /// Quiet.
    #[arg(short = 'q')]
    quiet: bool,
    /// The image.
    filename: PathArg,
}

/// Arguments of `vstor img commit`.
#[derive(Args, Debug)]
pub struct CommitArgs {
    /// Image format (must be qcow2).
    #[arg(short = 'f')]
    fmt: Option<String>,
    /// Keep the image's data after committing it (do not empty it).
    #[arg(short = 'd')]
    keep: bool,
    /// Show progress.
    #[arg(short = 'p')]
    progress: bool,
    /// Quiet.
    #[arg(short = 'q')]
    quiet: bool,
    /// The image.
    filename: PathArg,
}

fn need_qcow2(path: &Path, fmt: Option<&str>, op: &str) -> Result<(), Failure> {
    let f = image_format(path, fmt)?;
    if f != "qcow2" {
        return Err(fail(format!(
            "{}: {op} needs a qcow2 image (this one is {f})",
            path.display()
        )));
    }
    Ok(())
}

fn io(path: &Path) -> impl Fn(vstor_blockdev::Error) -> Failure + '_ {
    move |e| fail(format!("{}: {e}", path.display()))
}

/// Rewrites the header of the (closed) image at `path` with a new backing name and format.
fn set_backing(path: &Path, name: Option<&str>, fmt: Option<&str>) -> Result<(), Failure> {
    let file = FileImage::open(path, &OpenOptions::default())
        .map_err(|e| open_failure(path, &e.to_string()))?;
    let mut h = Header::read(&file).map_err(|e| open_failure(path, &e.to_string()))?;
    h.backing_file = name.map(str::to_string);
    h.backing_format = name.and(fmt).map(str::to_string);
    let bytes = h.to_bytes().map_err(|e| {
        fail(format!(
            "Could not change the backing file to '{}': {e}",
            name.unwrap_or("")
        ))
    })?;
    file.write_at(&bytes, 0).map_err(io(path))?;
    file.flush().map_err(io(path))
}

/// Runs `vstor img rebase`.
pub fn run_rebase(a: RebaseArgs) -> CmdResult {
    let path = &a.filename;
    need_qcow2(path, a.fmt.as_deref(), "rebase")?;
    let new_name = (!a.backing.is_empty()).then_some(a.backing.as_str());
    if new_name.is_some() && a.backing_fmt.is_none() {
        return Err(fail(format!(
            "Could not change the backing file to '{}': backing format must be specified",
            a.backing
        )));
    }
    if let Some(f) = &a.backing_fmt {
        super::check_format(f)?;
    }
    if !a.unsafe_mode {
        let top = Qcow2Dev::open(path, &Qcow2Options::default())
            .map_err(|e| open_failure(path, &e.to_string()))?;
        let new: Option<Arc<dyn BlockDev>> = match new_name {
            None => None,
            Some(n) => {
                let p = path_combine(path, n);
                let how = OpenHow {
                    read_only: true,
                    ..Default::default()
                };
                Some(
                    open_dev(Path::new(&p), a.backing_fmt.as_deref(), how)
                        .map_err(|e| {
                            fail(format!("Could not open new backing file '{p}': {}", e.msg))
                        })?
                        .0,
                )
            }
        };
        copy_differences(&top, new.as_deref(), a.progress && !a.quiet).map_err(io(path))?;
        top.close().map_err(io(path))?;
    }
    set_backing(path, new_name, a.backing_fmt.as_deref())?;
    Ok(0)
}

/// Safe rebase: where `top` has no data of its own and its current backing chain reads
/// differently from `new`, write the old content into `top`.
fn copy_differences(
    top: &Qcow2Dev,
    new: Option<&dyn BlockDev>,
    progress: bool,
) -> vstor_blockdev::Result<()> {
    let size = top.info().size;
    let cs = top.header().cluster_size().max(64 << 10);
    let new_size = new.map_or(0, |n| n.info().size);
    let mut old_buf = vec![0u8; cs as usize];
    let mut new_buf = vec![0u8; cs as usize];
    let mut prog = Progress::new(progress, size);
    let mut off = 0;
    while off < size {
        let m = top.map(off, (size - off).min(cs))?;
        let len = m.len.clamp(1, (size - off).min(cs));
        if !(m.present && m.depth == 0) {
            let n = len as usize;
            top.read_at(&mut old_buf[..n], off)?;
            new_buf[..n].fill(0);
            if let Some(nb) = new {
                if off < new_size {
                    let k = (new_size - off).min(len) as usize;
                    nb.read_at(&mut new_buf[..k], off)?;
                }
            }
            // Write the differing sector runs.
            let mut i = 0;
            while i < n {
                let end = (i + SECTOR).min(n);
                if old_buf[i..end] == new_buf[i..end] {
                    i = end;
                    continue;
                }
                let start = i;
                while i < n && old_buf[i..(i + SECTOR).min(n)] != new_buf[i..(i + SECTOR).min(n)] {
                    i = (i + SECTOR).min(n);
                }
                top.write_at(&old_buf[start..i], off + start as u64)?;
            }
        }
        off += len;
        prog.advance(len);
    }
    prog.finish();
    top.flush()
}

/// Runs `vstor img commit`.
pub fn run_commit(a: CommitArgs) -> CmdResult {
    let path = &a.filename;
    need_qcow2(path, a.fmt.as_deref(), "commit")?;
    let ro = OpenOptions {
        read_only: true,
        ..Default::default()
    };
    let h = FileImage::open(path, &ro)
        .and_then(|f| Header::read(&f))
        .map_err(|e| open_failure(path, &e.to_string()))?;
    let (Some(bname), Some(bfmt)) = (&h.backing_file, &h.backing_format) else {
        return Err(fail(format!(
            "{}: Image does not have a backing file (or its format is not recorded)",
            path.display()
        )));
    };
    let bpath = path_combine(path, bname);
    let bpath = Path::new(&bpath);
    // Grow the backing file first if the image is larger.
    let base_size = open_dev(
        bpath,
        Some(bfmt),
        OpenHow {
            read_only: true,
            ..Default::default()
        },
    )?
    .0
    .info()
    .size;
    if h.size > base_size {
        if bfmt == "qcow2" {
            vstor_blockdev::qcow2::resize(bpath, h.size, false).map_err(io(bpath))?;
        } else {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(bpath)
                .map_err(|e| open_failure(bpath, &e.to_string()))?;
            f.set_len(h.size)
                .map_err(|e| fail(format!("{}: {e}", bpath.display())))?;
        }
    }
    let (base, _) = open_dev(bpath, Some(bfmt), OpenHow::default())?;
    // The image alone (no backing): what it maps at depth 0 is exactly its own data.
    let top_ro = Qcow2Dev::open_file(
        Arc::new(FileImage::open(path, &ro).map_err(|e| open_failure(path, &e.to_string()))?),
        &Qcow2Options {
            read_only: true,
            ..Default::default()
        },
        None,
    )
    .map_err(|e| open_failure(path, &e.to_string()))?;
    let size = top_ro.info().size;
    let mut buf = Vec::new();
    let mut prog = Progress::new(a.progress && !a.quiet, size);
    let mut off = 0;
    while off < size {
        let m = top_ro
            .map(off, (size - off).min(1 << 20))
            .map_err(io(path))?;
        let len = m.len.clamp(1, (size - off).min(1 << 20));
        if m.present {
            buf.resize(len as usize, 0);
            if m.zero {
                buf.fill(0);
            } else {
                top_ro.read_at(&mut buf, off).map_err(io(path))?;
            }
            base.write_at(&buf, off).map_err(io(bpath))?;
        }
        off += len;
        prog.advance(len);
    }
    base.flush().map_err(io(bpath))?;
    drop(base);
    drop(top_ro);
    prog.finish();
    if !a.keep {
        make_empty(path)?;
    }
    if !a.quiet {
        println!("Image committed.");
    }
    Ok(0)
}

/// Discards every whole cluster of the image, opened without its backing file so discarded
/// clusters become unallocated (and read from the backing file again).
fn make_empty(path: &Path) -> Result<(), Failure> {
    let file = FileImage::open(path, &OpenOptions::default())
        .map_err(|e| open_failure(path, &e.to_string()))?;
    let top = Qcow2Dev::open_file(Arc::new(file), &Qcow2Options::default(), None)
        .map_err(|e| open_failure(path, &e.to_string()))?;
    let size = top.info().size;
    let chunk = top.info().max_discard_bytes.clamp(1 << 20, 1 << 30);
    let mut q = top
        .open_queue(&QueueOptions { depth: 1 })
        .map_err(io(path))?;
    let mut off = 0;
    while off < size {
        let len = (size - off).min(chunk);
        let req = IoRequest {
            op: IoOp::Discard,
            offset: off,
            len,
            iovecs: Vec::new(),
            tag: 0,
        };
        match q.submit(req).map_err(io(path))? {
            Submitted::Done(r) => r.map_err(io(path))?,
            Submitted::Queued => {
                return Err(fail(format!(
                    "{}: discard did not complete synchronously",
                    path.display()
                )))
            }
        }
        off += len;
    }
    drop(q);
    top.close().map_err(io(path))
}
