//! `vstor img`: work on disk images, with qemu-img's commands, options, output and exit codes.
//!
//! ```text
//! vstor img create [-f qcow2|raw] [-o opt=val,...] [-b backing [-F fmt]] FILE [SIZE]
//! vstor img info [--output=json|human] [--backing-chain] [-f fmt] FILE
//! vstor img map [--output=json|human] [-f fmt] FILE
//! vstor img check [-r leaks|all] [--output=json|human] [-f fmt] FILE
//! vstor img compare [-f fmt] [-F fmt] [-s] FILE1 FILE2
//! vstor img convert [-f fmt] [-O fmt] [-c] [-o opts] [-p] SRC DST
//! vstor img snapshot (-l | -c NAME | -a NAME | -d NAME) FILE
//! vstor img resize [-f fmt] [--shrink] FILE [+|-]SIZE
//! vstor img rebase [-u] -b BACKING [-F fmt] FILE
//! vstor img commit [-d] FILE
//! vstor img bench [-c count] [-d depth] [-s size] [-w] ... FILE
//! ```
//!
//! Every JSON document is byte-identical to qemu-img 7.2's (see [`json`]); newer qemu-img
//! versions print extra fields, which tests ignore.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Subcommand, ValueEnum};
use vstor_blockdev::{BlockDev, CacheMode, EngineKind, OpenOptions};

mod bench;
mod check;
mod compare;
mod convert;
mod create;
mod info;
pub mod json;
mod map;
mod progress;
mod rebase;
mod resize;
mod snapshot;

/// The `vstor img` subcommands.
#[derive(Subcommand, Debug)]
pub enum ImgCommand {
    /// Create a new image (qcow2 or raw).
    Create(create::CreateArgs),
    /// Show information about an image.
    Info(info::InfoArgs),
    /// Show which guest ranges are allocated, zero, or backed by a backing file.
    Map(map::MapArgs),
    /// Check a qcow2 image's metadata and optionally repair it.
    Check(check::CheckArgs),
    /// Compare the guest-visible content of two images.
    Compare(compare::CompareArgs),
    /// Copy an image into a new image, possibly of another format (sparse, optionally compressed).
    Convert(convert::ConvertArgs),
    /// List, create, apply or delete internal qcow2 snapshots.
    Snapshot(snapshot::SnapshotArgs),
    /// Grow or shrink an image.
    Resize(resize::ResizeArgs),
    /// Change the backing file of a qcow2 image (safe: copy what differs; -u: header only).
    Rebase(rebase::RebaseArgs),
    /// Write a qcow2 image's data into its backing file and empty it.
    Commit(rebase::CommitArgs),
    /// Measure the I/O rate of an image through vstor's block layer.
    Bench(bench::BenchArgs),
}

/// Output format of info, map and check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    /// Text for people.
    #[default]
    Human,
    /// JSON (as qemu-img prints it).
    Json,
}

/// A failed command: the message for stderr and the exit status.
#[derive(Debug)]
pub struct Failure {
    /// Exit status.
    pub code: u8,
    /// What went wrong (already naming the file).
    pub msg: String,
}

/// A command's result: the exit status on success.
pub type CmdResult = Result<u8, Failure>;

/// A failure with exit status 1.
pub fn fail(msg: impl Into<String>) -> Failure {
    Failure {
        code: 1,
        msg: msg.into(),
    }
}

/// Runs one `vstor img` command and returns its exit status.
pub fn run(cmd: ImgCommand) -> ExitCode {
    // The block layer logs its engine choice at info level; image tools stay quiet unless
    // RUST_LOG asks for more.
    if std::env::var_os("RUST_LOG").is_none() {
        log::set_max_level(log::LevelFilter::Warn);
    }
    let result = match cmd {
        ImgCommand::Create(a) => create::run(a),
        ImgCommand::Info(a) => info::run(a),
        ImgCommand::Map(a) => map::run(a),
        ImgCommand::Check(a) => check::run(a),
        ImgCommand::Compare(a) => compare::run(a),
        ImgCommand::Convert(a) => convert::run(a),
        ImgCommand::Snapshot(a) => snapshot::run(a),
        ImgCommand::Resize(a) => resize::run(a),
        ImgCommand::Rebase(a) => rebase::run_rebase(a),
        ImgCommand::Commit(a) => rebase::run_commit(a),
        ImgCommand::Bench(a) => bench::run(a),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            if !f.msg.is_empty() {
                eprintln!("vstor img: {}", f.msg);
            }
            ExitCode::from(f.code)
        }
    }
}

/// Parses a size like qemu-img: a number (decimals allowed with a suffix) with an optional
/// suffix b/B (bytes), k/K, M, G, T, P, E (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, Failure> {
    let bad = || {
        fail(format!(
            "Invalid size '{s}': expected a number with an optional k, M, G, T, P or E suffix"
        ))
    };
    let t = s.trim();
    let (num, shift) = match t.chars().last() {
        Some('b' | 'B') => (&t[..t.len() - 1], 0),
        Some('k' | 'K') => (&t[..t.len() - 1], 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 30),
        Some('t' | 'T') => (&t[..t.len() - 1], 40),
        Some('p' | 'P') => (&t[..t.len() - 1], 50),
        Some('e' | 'E') => (&t[..t.len() - 1], 60),
        _ => (t, 0),
    };
    if num.is_empty() || num.starts_with('-') || num.starts_with('+') {
        return Err(bad());
    }
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_shl(shift)
            .filter(|v| v >> shift == n)
            .ok_or_else(bad);
    }
    let f: f64 = num.parse().map_err(|_| bad())?;
    let v = f * (1u64 << shift) as f64;
    if !v.is_finite() || v < 0.0 || v >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(v as u64)
}

/// QEMU's `size_to_str`: "%0.3g" of the value in the largest binary unit that keeps it
/// under 1000, e.g. "324 KiB", "10 MiB", "1.5 GiB", "0 B".
pub fn size_to_str(val: u64) -> String {
    const SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    // frexp(val / (1000/1024)) exponent e; unit index (e - 1) / 10.
    let x = val as f64 / (1000.0 / 1024.0);
    let e = if x == 0.0 {
        0
    } else {
        x.log2().floor() as i64 + 1
    };
    let i = ((e - 1).max(0) / 10).min(6) as usize;
    let div = (1u64 << (i * 10)) as f64;
    format!("{} {}B", fmt_g3(val as f64 / div), SUFFIXES[i])
}

/// C's `%0.3g`.
pub fn fmt_g3(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let exp = v.abs().log10().floor() as i32;
    // Round to 3 significant digits first: rounding may bump the exponent.
    let s = format!("{:.2e}", v);
    let (mant, e) = s.split_once('e').unwrap_or((&s, "0"));
    let e: i32 = e.parse().unwrap_or(exp);
    if !(-4..3).contains(&e) {
        let mant = mant.trim_end_matches('0').trim_end_matches('.');
        return format!("{mant}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
    let decimals = (2 - e).max(0) as usize;
    let s = format!("{:.*}", decimals, v);
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Image formats vstor img knows.
pub const FORMATS: [&str; 2] = ["qcow2", "raw"];

/// Checks a `-f`/`-O`/`-F` value.
pub fn check_format(fmt: &str) -> Result<&'static str, Failure> {
    FORMATS.iter().find(|f| **f == fmt).copied().ok_or_else(|| {
        fail(format!(
            "Unknown file format '{fmt}' (vstor img knows qcow2 and raw)"
        ))
    })
}

/// The format of `path`: `fmt` when given, else probed (qcow2 magic, else raw).
pub fn image_format(path: &Path, fmt: Option<&str>) -> Result<&'static str, Failure> {
    if let Some(f) = fmt {
        return check_format(f);
    }
    let mut magic = [0u8; 4];
    let f = std::fs::File::open(path).map_err(|e| open_failure(path, &e.to_string()))?;
    use std::io::Read;
    let n = (&f).take(4).read(&mut magic).unwrap_or(0);
    if n == 4 && u32::from_be_bytes(magic) == vstor_blockdev::qcow2::header::MAGIC {
        Ok("qcow2")
    } else {
        Ok("raw")
    }
}

/// qemu-img's message for an image that cannot be opened.
pub fn open_failure(path: &Path, why: &str) -> Failure {
    fail(format!("Could not open '{}': {why}", path.display()))
}

/// How to open an image.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenHow {
    /// Refuse writes.
    pub read_only: bool,
    /// Host cache mode.
    pub cache: CacheMode,
    /// I/O engine.
    pub engine: EngineKind,
}

/// Opens `path` as a block device of format `fmt` (probed when `None`).
pub fn open_dev(
    path: &Path,
    fmt: Option<&str>,
    how: OpenHow,
) -> Result<(Arc<dyn BlockDev>, &'static str), Failure> {
    let fmt = image_format(path, fmt)?;
    let name = path
        .to_str()
        .ok_or_else(|| open_failure(path, "the path is not UTF-8"))?;
    let opts = OpenOptions {
        read_only: how.read_only,
        cache: how.cache,
        engine: how.engine,
        format: Some(fmt.to_string()),
        ..Default::default()
    };
    let dev = vstor_blockdev::open(name, &opts).map_err(|e| open_failure(path, &e.to_string()))?;
    Ok((dev, fmt))
}

/// QEMU's `path_combine`: `name` relative to the directory of `base` (unless absolute).
pub fn path_combine(base: &Path, name: &str) -> String {
    if name.starts_with('/') || name.contains("://") {
        return name.to_string();
    }
    let b = base.to_string_lossy();
    match b.rfind('/') {
        Some(i) => format!("{}{}", &b[..=i], name),
        None => name.to_string(),
    }
}

/// Bytes the file occupies on disk (`st_blocks * 512`).
pub fn actual_size(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.blocks() * 512)
}

/// A path argument as a `PathBuf` (for clap).
pub type PathArg = PathBuf;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_like_qemu() {
        assert_eq!(size_to_str(0), "0 B");
        assert_eq!(size_to_str(331776), "324 KiB");
        assert_eq!(size_to_str(10 << 20), "10 MiB");
        assert_eq!(size_to_str(1 << 30), "1 GiB");
        assert_eq!(size_to_str(3 << 29), "1.5 GiB");
        assert_eq!(size_to_str(1000), "0.977 KiB");
        assert_eq!(size_to_str(999), "999 B");
        assert_eq!(size_to_str(200704), "196 KiB");
    }

    #[test]
    fn sizes_parse_like_qemu() {
        assert_eq!(parse_size("10M").unwrap(), 10 << 20);
        assert_eq!(parse_size("10m").unwrap(), 10 << 20);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert!(parse_size("x").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999E").is_err());
    }
}
