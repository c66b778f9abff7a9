//! `vstor img compare`: exit 0 when the guest-visible contents are identical, 1 when they
//! differ ("Content mismatch at offset N!", N rounded down to 512 bytes as qemu-img does), 2 on
//! errors. Without `-s` the excess of the larger image must read as zeroes.

use clap::Args;
use vstor_blockdev::BlockDev;

use super::progress::Progress;
use super::{open_dev, CmdResult, Failure, OpenHow, PathArg};

/// Largest chunk compared at once.
const CHUNK: u64 = 2 << 20;
/// Mismatch offsets are reported at this granularity (qemu's sector size).
const SECTOR: u64 = 512;

/// Arguments of `vstor img compare`.
#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Format of the first image (probed when absent).
    #[arg(short = 'f')]
    fmt1: Option<String>,
    /// Format of the second image (probed when absent).
    #[arg(short = 'F')]
    fmt2: Option<String>,
    /// Strict: sizes and allocation must match too.
    #[arg(short = 's')]
    strict: bool,
    /// Show progress.
    #[arg(short = 'p')]
    progress: bool,
    /// Quiet.
    #[arg(short = 'q')]
    quiet: bool,
    /// Ignored (vstor never locks images).
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    /// First image.
    filename1: PathArg,
    /// Second image.
    filename2: PathArg,
}

/// Block status flags: allocated, data, zero, offset valid, end of file (QEMU's
/// `BDRV_BLOCK_*` bits that strict mode compares).
type Flags = (bool, bool, bool, bool, bool);

/// Errors are exit status 2 for compare.
fn err2(f: Failure) -> Failure {
    Failure { code: 2, ..f }
}

fn io_err(name: &str, e: vstor_blockdev::Error) -> Failure {
    Failure {
        code: 2,
        msg: format!("{name}: {e}"),
    }
}

/// Walks the block status of one image in runs like QEMU's: consecutive extents with the same
/// flags and contiguous host offsets form one run, and the run that reaches the end of the
/// image carries the end-of-file flag (strict mode compares it).
struct Walker<'a> {
    dev: &'a dyn BlockDev,
    name: &'a str,
    size: u64,
    /// Current run: start, end, flags.
    run: Option<(u64, u64, Flags)>,
}

impl<'a> Walker<'a> {
    fn new(dev: &'a dyn BlockDev, name: &'a str) -> Walker<'a> {
        Walker {
            dev,
            name,
            size: dev.info().size,
            run: None,
        }
    }

    fn extent(&self, off: u64) -> Result<(Flags, Option<u64>, u64), Failure> {
        let m = self
            .dev
            .map(off, self.size - off)
            .map_err(|e| io_err(self.name, e))?;
        let zero = m.zero || !m.present;
        let len = m.len.clamp(1, self.size - off);
        Ok((
            (m.present, m.data, zero, m.offset.is_some(), false),
            m.offset,
            len,
        ))
    }

    /// Flags of the run at `off`, whether it reads as zeroes, and bytes left in it (at most
    /// `max`).
    fn at(&mut self, off: u64, max: u64) -> Result<(Flags, bool, u64), Failure> {
        if let Some((start, end, flags)) = self.run {
            if start <= off && off < end {
                return Ok((flags, flags.2, (end - off).min(max)));
            }
        }
        let (mut flags, host, len) = self.extent(off)?;
        let mut end = off + len;
        while end < self.size {
            let (f, h, l) = self.extent(end)?;
            let contiguous = match (host, h) {
                (Some(a), Some(b)) => a.checked_add(end - off) == Some(b),
                (None, None) => true,
                _ => false,
            };
            if f != flags || !contiguous {
                break;
            }
            end += l;
        }
        flags.4 = end >= self.size;
        self.run = Some((off, end, flags));
        Ok((flags, flags.2, (end - off).min(max)))
    }
}

/// First non-zero sector of `buf`, as a byte offset.
fn first_nonzero(buf: &[u8]) -> Option<u64> {
    buf.iter()
        .position(|&b| b != 0)
        .map(|i| i as u64 / SECTOR * SECTOR)
}

/// First differing sector of two buffers.
fn first_diff(a: &[u8], b: &[u8]) -> Option<u64> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .map(|i| i as u64 / SECTOR * SECTOR)
}

/// Runs `vstor img compare`.
pub fn run(a: CompareArgs) -> CmdResult {
    let _ = a.force_share;
    let how = OpenHow {
        read_only: true,
        ..Default::default()
    };
    let (d1, _) = open_dev(&a.filename1, a.fmt1.as_deref(), how).map_err(err2)?;
    let (d2, _) = open_dev(&a.filename2, a.fmt2.as_deref(), how).map_err(err2)?;
    let n1 = a.filename1.to_string_lossy().to_string();
    let n2 = a.filename2.to_string_lossy().to_string();
    let say = |s: &str| {
        if !a.quiet {
            println!("{s}");
        }
    };
    let (s1, s2) = (d1.info().size, d2.info().size);
    if s1 != s2 && a.strict {
        say("Strict mode: Image size mismatch!");
        return Ok(1);
    }
    let common = s1.min(s2);
    let total = s1.max(s2);
    let mut progress = Progress::new(a.progress, total);
    let mut b1 = Vec::new();
    let mut b2 = Vec::new();
    let mut w1 = Walker::new(d1.as_ref(), &n1);
    let mut w2 = Walker::new(d2.as_ref(), &n2);
    let mut off = 0;
    while off < common {
        let want = (common - off).min(CHUNK);
        let (st1, z1, l1) = w1.at(off, want)?;
        let (st2, z2, l2) = w2.at(off, want)?;
        let len = l1.min(l2).min(want);
        if a.strict && st1 != st2 {
            say(&format!("Strict mode: Offset {off} block status mismatch!"));
            return Ok(1);
        }
        if !(z1 && z2) {
            b1.resize(len as usize, 0);
            b2.resize(len as usize, 0);
            let mismatch = if z1 {
                d2.read_at(&mut b2, off).map_err(|e| io_err(&n2, e))?;
                first_nonzero(&b2)
            } else if z2 {
                d1.read_at(&mut b1, off).map_err(|e| io_err(&n1, e))?;
                first_nonzero(&b1)
            } else {
                d1.read_at(&mut b1, off).map_err(|e| io_err(&n1, e))?;
                d2.read_at(&mut b2, off).map_err(|e| io_err(&n2, e))?;
                first_diff(&b1, &b2)
            };
            if let Some(i) = mismatch {
                progress.finish();
                say(&format!("Content mismatch at offset {}!", off + i));
                return Ok(1);
            }
        }
        off += len;
        progress.advance(len);
    }
    // The excess of the larger image must read as zeroes.
    if s1 != s2 {
        say("Warning: Image size mismatch!");
    }
    let (big, name) = if s1 > s2 { (&d1, &n1) } else { (&d2, &n2) };
    let mut wb = Walker::new(big.as_ref(), name);
    while off < total {
        let want = (total - off).min(CHUNK);
        let (_, zero, len) = wb.at(off, want)?;
        let len = len.min(want);
        if !zero {
            b1.resize(len as usize, 0);
            big.read_at(&mut b1, off).map_err(|e| io_err(name, e))?;
            if let Some(i) = first_nonzero(&b1) {
                progress.finish();
                say(&format!("Content mismatch at offset {}!", off + i));
                return Ok(1);
            }
        }
        off += len;
        progress.advance(len);
    }
    progress.finish();
    say("Images are identical.");
    Ok(0)
}
