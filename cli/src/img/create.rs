//! `vstor img create`: qcow2 through `vstor_blockdev::qcow2::create_path`, raw by hand.

use std::io::Write;
use std::path::Path;

use clap::Args;
use vstor_blockdev::qcow2::compress::CompressionType;
use vstor_blockdev::qcow2::create::{Compat, CreateOptions, Preallocation};

use super::{check_format, fail, parse_size, path_combine, CmdResult, Failure, PathArg};

/// Arguments of `vstor img create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Image format: qcow2 or raw.
    #[arg(short = 'f', default_value = "raw")]
    fmt: String,
    /// Format options, comma separated (cluster_size, compat, lazy_refcounts, refcount_bits,
    /// extended_l2, compression_type, preallocation, backing_file, backing_fmt, data_file,
    /// data_file_raw); "-o help" lists them.
    #[arg(short = 'o')]
    options: Vec<String>,
    /// Backing file (qcow2).
    #[arg(short = 'b')]
    backing: Option<String>,
    /// Format of the backing file.
    #[arg(short = 'F')]
    backing_fmt: Option<String>,
    /// Do not open the backing file (its size then must be given).
    #[arg(short = 'u')]
    unsafe_backing: bool,
    /// Quiet: no "Formatting ..." line.
    #[arg(short = 'q')]
    quiet: bool,
    /// The new image.
    filename: PathArg,
    /// Virtual size (suffixes k, M, G, T); defaults to the backing file's size.
    size: Option<String>,
}

/// Help text for `-o help`.
const QCOW2_HELP: &str = "Supported options:
  backing_file=<str>     - File name of a base image
  backing_fmt=<str>      - Image format of the base image
  cluster_size=<size>    - qcow2 cluster size
  compat=<str>           - Compatibility level (v2 [0.10] or v3 [1.1])
  compression_type=<str> - Compression method used for image cluster compression (zlib, zstd)
  data_file=<str>        - File name of an external data file
  data_file_raw=<bool (on/off)> - The external data file must stay valid as a raw image
  extended_l2=<bool (on/off)> - Extended L2 tables
  lazy_refcounts=<bool (on/off)> - Postpone refcount updates
  preallocation=<str>    - Preallocation mode (allowed values: off, metadata, falloc, full)
  refcount_bits=<num>    - Width of a reference count entry in bits
  size=<size>            - Virtual disk size
";

/// Help text for `-o help` with raw.
const RAW_HELP: &str = "Supported options:
  preallocation=<str>    - Preallocation mode (allowed values: off, falloc, full)
  size=<size>            - Virtual disk size
";

/// Splits qemu option strings ("a=b,c=d", ",," escapes a comma) into pairs.
pub fn parse_opts(list: &[String]) -> Result<Vec<(String, String)>, Failure> {
    let mut out = Vec::new();
    for s in list {
        let mut items = Vec::new();
        let mut cur = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c == ',' {
                if chars.peek() == Some(&',') {
                    chars.next();
                    cur.push(',');
                } else {
                    items.push(std::mem::take(&mut cur));
                }
            } else {
                cur.push(c);
            }
        }
        items.push(cur);
        for item in items.into_iter().filter(|i| !i.is_empty()) {
            match item.split_once('=') {
                Some((k, v)) => out.push((k.to_string(), v.to_string())),
                None if item == "help" || item == "?" => out.push((item, String::new())),
                None => return Err(fail(format!("Invalid option list: {item}"))),
            }
        }
    }
    Ok(out)
}

/// A qemu boolean option value.
pub fn parse_bool(key: &str, v: &str) -> Result<bool, Failure> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(fail(format!(
            "Parameter '{key}' expects 'on' or 'off' (got '{v}')"
        ))),
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// qcow2 creation options from `-o` pairs (size still unset), plus the "Formatting" fields the
/// user set explicitly.
pub fn qcow2_options(
    pairs: &[(String, String)],
    file: &str,
) -> Result<(CreateOptions, Vec<(String, String)>), Failure> {
    let mut o = CreateOptions::default();
    let mut shown = Vec::new();
    let err = |m: String| fail(format!("{file}: {m}"));
    for (k, v) in pairs {
        match k.as_str() {
            "size" => {}
            "cluster_size" => {
                let cs = parse_size(v)?;
                if !(512..=2 << 20).contains(&cs) || !cs.is_power_of_two() {
                    return Err(err(
                        "Cluster size must be a power of two between 512 and 2048k".into(),
                    ));
                }
                o.cluster_size = cs as u32;
            }
            "compat" => {
                o.compat = match v.as_str() {
                    "0.10" | "v2" => Compat::V2,
                    "1.1" | "v3" => Compat::V3,
                    _ => return Err(err(format!("Invalid compatibility level: '{v}'"))),
                };
                shown.push(("compat".into(), v.clone()));
            }
            "lazy_refcounts" => o.lazy_refcounts = parse_bool(k, v)?,
            "refcount_bits" => {
                let bits: u32 = v
                    .parse()
                    .map_err(|_| err(format!("Invalid refcount_bits '{v}'")))?;
                if bits == 0 || bits > 64 || !bits.is_power_of_two() {
                    return Err(err(
                        "Refcount width must be a power of two and may not exceed 64 bits".into(),
                    ));
                }
                o.refcount_bits = bits;
            }
            "extended_l2" => o.extended_l2 = parse_bool(k, v)?,
            "compression_type" => {
                o.compression_type = match v.as_str() {
                    "zlib" => CompressionType::Zlib,
                    "zstd" => CompressionType::Zstd,
                    _ => return Err(err(format!("Invalid parameter '{v}' for compression_type"))),
                }
            }
            "preallocation" => {
                o.preallocation = match v.as_str() {
                    "off" => Preallocation::Off,
                    "metadata" => Preallocation::Metadata,
                    "falloc" => Preallocation::Falloc,
                    "full" => Preallocation::Full,
                    _ => return Err(err(format!("Invalid parameter '{v}'"))),
                };
                shown.push(("preallocation".into(), v.clone()));
            }
            "backing_file" => o.backing_file = Some(v.clone()),
            "backing_fmt" => o.backing_format = Some(v.clone()),
            "data_file" => o.data_file = Some(v.clone()),
            "data_file_raw" => o.data_file_raw = parse_bool(k, v)?,
            "encryption" | "encrypt.format" => {
                return Err(err("encryption is not supported by vstor".into()))
            }
            _ => return Err(err(format!("Invalid parameter '{k}'"))),
        }
    }
    if o.compat == Compat::V2 {
        if o.lazy_refcounts {
            return Err(err(
                "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)".into(),
            ));
        }
        if o.refcount_bits != 16 {
            return Err(err(
                "Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)".into(),
            ));
        }
        if o.data_file.is_some() {
            return Err(err(
                "data-file can only be used with compatibility level 1.1 and above".into(),
            ));
        }
        if o.extended_l2 {
            return Err(err(
                "Extended L2 entries are only supported with compatibility level 1.1 and above"
                    .into(),
            ));
        }
        if o.compression_type != CompressionType::Zlib {
            return Err(err(
                "Compression type other than zlib requires compatibility level 1.1 or above".into(),
            ));
        }
    }
    if o.extended_l2 && o.cluster_size < 16384 {
        return Err(err(
            "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes"
                .into(),
        ));
    }
    if o.data_file_raw && o.data_file.is_none() {
        return Err(err("data-file-raw requires data-file".into()));
    }
    if o.backing_format.is_some() && o.backing_file.is_none() {
        return Err(err(
            "Backing format cannot be used without backing file".into()
        ));
    }
    Ok((o, shown))
}

/// Runs `vstor img create`.
pub fn run(a: CreateArgs) -> CmdResult {
    let fmt = check_format(&a.fmt)?;
    let mut pairs = parse_opts(&a.options)?;
    let file = a.filename.to_string_lossy().to_string();
    if pairs.iter().any(|(k, _)| k == "help" || k == "?") {
        print!("{}", if fmt == "qcow2" { QCOW2_HELP } else { RAW_HELP });
        return Ok(0);
    }
    if let Some(b) = &a.backing {
        pairs.push(("backing_file".into(), b.clone()));
    }
    if let Some(f) = &a.backing_fmt {
        pairs.push(("backing_fmt".into(), f.clone()));
    }
    let size_opt = pairs
        .iter()
        .rev()
        .find(|(k, _)| k == "size")
        .map(|(_, v)| v.clone());
    let mut size = match a.size.as_deref().or(size_opt.as_deref()) {
        Some(s) => Some(parse_size(s).map_err(|_| {
            fail(
                "Invalid image size specified. You may use k, M, G, T, P or E suffixes for\n\
                 vstor img: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.",
            )
        })?),
        None => None,
    };
    match fmt {
        "raw" => {
            let prealloc = raw_prealloc(&pairs, &file)?;
            let size =
                size.ok_or_else(|| fail(format!("{file}: Image creation needs a size parameter")))?;
            if !a.quiet {
                let p = prealloc
                    .map(|p| format!(" preallocation={p}"))
                    .unwrap_or_default();
                println!("Formatting '{file}', fmt=raw size={size}{p}");
            }
            create_raw(&a.filename, size, prealloc.unwrap_or("off"))?;
            Ok(0)
        }
        _ => {
            let (mut o, shown) = qcow2_options(&pairs, &file)?;
            if let Some(b) = o.backing_file.clone() {
                let Some(bfmt) = o.backing_format.clone() else {
                    return Err(fail(format!(
                        "{file}: Backing file specified without backing format"
                    )));
                };
                if !a.unsafe_backing {
                    let bpath = path_combine(&a.filename, &b);
                    let opened = super::open_dev(
                        Path::new(&bpath),
                        Some(&bfmt),
                        super::OpenHow {
                            read_only: true,
                            ..Default::default()
                        },
                    );
                    match opened {
                        Ok((dev, _)) => {
                            if size.is_none() {
                                size = Some(dev.info().size);
                            }
                        }
                        Err(e) => {
                            return Err(fail(format!(
                                "{file}: {}\nCould not open backing image.",
                                e.msg
                            )))
                        }
                    }
                }
            }
            let size =
                size.ok_or_else(|| fail(format!("{file}: Image creation needs a size parameter")))?;
            o.size = size.div_ceil(512) * 512;
            if !a.quiet {
                println!("{}", formatting_line(&file, &o, &shown));
            }
            vstor_blockdev::qcow2::create_path(&a.filename, &o)
                .map_err(|e| fail(format!("{file}: {e}")))?;
            Ok(0)
        }
    }
}

/// qemu-img's "Formatting ..." line for qcow2 (7.2's option order).
fn formatting_line(file: &str, o: &CreateOptions, shown: &[(String, String)]) -> String {
    let get = |k: &str| {
        shown
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    let mut s = format!(
        "Formatting '{file}', fmt=qcow2 cluster_size={} extended_l2={}",
        o.cluster_size,
        on_off(o.extended_l2)
    );
    if let Some(p) = get("preallocation") {
        s += &format!(" preallocation={p}");
    }
    let ct = match o.compression_type {
        CompressionType::Zlib => "zlib",
        _ => "zstd",
    };
    s += &format!(" compression_type={ct} size={}", o.size);
    if let Some(c) = get("compat") {
        s += &format!(" compat={c}");
    }
    if let Some(b) = &o.backing_file {
        s += &format!(" backing_file={b}");
    }
    if let Some(b) = &o.backing_format {
        s += &format!(" backing_fmt={b}");
    }
    if let Some(d) = &o.data_file {
        s += &format!(" data_file={d}");
        if o.data_file_raw {
            s += " data_file_raw=on";
        }
    }
    s += &format!(
        " lazy_refcounts={} refcount_bits={}",
        on_off(o.lazy_refcounts),
        o.refcount_bits
    );
    s
}

fn raw_prealloc(pairs: &[(String, String)], file: &str) -> Result<Option<&'static str>, Failure> {
    let mut p = None;
    for (k, v) in pairs {
        match k.as_str() {
            "size" => {}
            "preallocation" => {
                p = Some(match v.as_str() {
                    "off" => "off",
                    "falloc" => "falloc",
                    "full" => "full",
                    _ => return Err(fail(format!("{file}: Invalid parameter '{v}'"))),
                })
            }
            _ => return Err(fail(format!("{file}: Invalid parameter '{k}'"))),
        }
    }
    Ok(p)
}

/// Creates (or truncates) a raw image of `size` bytes; `falloc` and `full` write zeroes so
/// every block is allocated (vstor has no safe fallocate; the result is the same on disk).
pub fn create_raw(path: &Path, size: u64, prealloc: &str) -> Result<(), Failure> {
    let name = path.display();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| fail(format!("{name}: Could not create image: {e}")))?;
    f.set_len(size)
        .map_err(|e| fail(format!("{name}: Could not resize file: {e}")))?;
    if prealloc != "off" {
        let zeroes = vec![0u8; 1 << 20];
        let mut w = std::io::BufWriter::with_capacity(1 << 20, &f);
        let mut left = size;
        while left > 0 {
            let n = left.min(zeroes.len() as u64) as usize;
            w.write_all(&zeroes[..n])
                .map_err(|e| fail(format!("{name}: Could not preallocate data: {e}")))?;
            left -= n as u64;
        }
        w.flush()
            .map_err(|e| fail(format!("{name}: Could not preallocate data: {e}")))?;
    }
    f.sync_all()
        .map_err(|e| fail(format!("{name}: Could not flush: {e}")))?;
    Ok(())
}
