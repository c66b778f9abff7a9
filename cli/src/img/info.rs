//! `vstor img info`: qemu-img info's fields, in JSON or for people.

use std::path::Path;

use clap::Args;
use vstor_blockdev::image::{FileImage, ImageFile};
use vstor_blockdev::qcow2::header::Header;
use vstor_blockdev::OpenOptions;

use super::json::{Obj, Value};
use super::snapshot::{self, SnapInfo};
use super::{
    actual_size, fail, image_format, open_dev, open_failure, path_combine, size_to_str, CmdResult,
    Failure, OpenHow, OutputFormat, PathArg,
};

/// Arguments of `vstor img info`.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Image format (probed when absent).
    #[arg(short = 'f')]
    fmt: Option<String>,
    /// Output format.
    #[arg(long = "output", value_enum, default_value_t)]
    output: OutputFormat,
    /// Show every image of the backing chain.
    #[arg(long = "backing-chain")]
    backing_chain: bool,
    /// Ignored (vstor never locks images).
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    /// The image.
    filename: PathArg,
}

/// What qemu-img info reports about one image.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// The name as given.
    pub filename: String,
    /// "qcow2" or "raw".
    pub format: &'static str,
    /// Guest-visible size.
    pub virtual_size: u64,
    /// Bytes allocated on the host.
    pub actual_size: Option<u64>,
    /// qcow2 cluster size.
    pub cluster_size: Option<u64>,
    /// The dirty bit (qcow2 v3), false elsewhere.
    pub dirty: bool,
    /// Backing file name as recorded.
    pub backing: Option<String>,
    /// Backing name relative to the image's directory.
    pub full_backing: Option<String>,
    /// Recorded backing format.
    pub backing_format: Option<String>,
    /// Internal snapshots (qcow2).
    pub snapshots: Vec<SnapInfo>,
    /// qcow2 format-specific data (the `data` member of `format-specific`).
    pub specific: Option<Obj>,
}

/// qcow2's format-specific object (QAPI `ImageInfoSpecificQCow2`, schema order).
pub fn qcow2_specific(h: &Header) -> Obj {
    let mut d = Obj::new();
    let compat = if h.version >= 3 { "1.1" } else { "0.10" };
    d.set("compat", compat);
    if h.version >= 3 {
        if let Some(df) = &h.data_file {
            d.set("data-file", df.as_str());
            d.set("data-file-raw", h.data_file_raw());
        }
        d.set("extended-l2", h.extended_l2());
        d.set("lazy-refcounts", h.lazy_refcounts());
        d.set("corrupt", h.corrupt());
    }
    d.set("refcount-bits", h.refcount_bits());
    d.set(
        "compression-type",
        if h.compression() == 1 { "zstd" } else { "zlib" },
    );
    d
}

/// Collects the info of `path`.
pub fn collect(path: &Path, fmt: Option<&str>) -> Result<ImageInfo, Failure> {
    let format = image_format(path, fmt)?;
    let filename = path.to_string_lossy().to_string();
    let mut info = ImageInfo {
        filename: filename.clone(),
        format,
        virtual_size: 0,
        actual_size: actual_size(path),
        cluster_size: None,
        dirty: false,
        backing: None,
        full_backing: None,
        backing_format: None,
        snapshots: Vec::new(),
        specific: None,
    };
    if format == "raw" {
        let (dev, _) = open_dev(
            path,
            Some("raw"),
            OpenHow {
                read_only: true,
                ..Default::default()
            },
        )?;
        info.virtual_size = dev.info().size;
        return Ok(info);
    }
    let opts = OpenOptions {
        read_only: true,
        ..Default::default()
    };
    let file = FileImage::open(path, &opts).map_err(|e| open_failure(path, &e.to_string()))?;
    let h = Header::read(&file).map_err(|e| open_failure(path, &e.to_string()))?;
    info.virtual_size = h.size;
    info.cluster_size = Some(h.cluster_size());
    info.dirty = h.dirty();
    if let Some(b) = &h.backing_file {
        info.backing = Some(b.clone());
        info.full_backing = Some(path_combine(path, b));
        info.backing_format = h.backing_format.clone();
    }
    info.snapshots = snapshot::list(&file as &dyn ImageFile).map_err(|e| open_failure(path, &e))?;
    info.specific = Some(qcow2_specific(&h));
    Ok(info)
}

/// The QAPI `ImageInfo` object (schema order; printing puts it in QDict order).
pub fn to_json(i: &ImageInfo) -> Obj {
    let mut o = Obj::new();
    o.set("filename", i.filename.as_str());
    o.set("format", i.format);
    o.set("dirty-flag", i.dirty);
    if let Some(a) = i.actual_size {
        o.set("actual-size", a);
    }
    o.set("virtual-size", i.virtual_size);
    if let Some(c) = i.cluster_size {
        o.set("cluster-size", c);
    }
    if let Some(b) = &i.backing {
        o.set("backing-filename", b.as_str());
    }
    if let Some(b) = &i.full_backing {
        o.set("full-backing-filename", b.as_str());
    }
    if let Some(b) = &i.backing_format {
        o.set("backing-filename-format", b.as_str());
    }
    if !i.snapshots.is_empty() {
        let list: Vec<Value> = i
            .snapshots
            .iter()
            .map(|s| Value::Obj(s.to_json()))
            .collect();
        o.set("snapshots", list);
    }
    if let Some(d) = &i.specific {
        let mut fs = Obj::new();
        fs.set("type", i.format);
        fs.set("data", d.clone());
        o.set("format-specific", fs);
    }
    o
}

/// qemu-img's human dump of a QDict (format-specific information).
fn dump_obj(out: &mut String, level: usize, o: &Obj) {
    for (k, v) in o.entries() {
        let key = k.replace('-', " ");
        out.push_str(&" ".repeat(level * 4));
        out.push_str(&key);
        out.push(':');
        match v {
            Value::Obj(inner) => {
                out.push('\n');
                dump_obj(out, level + 1, inner);
            }
            Value::List(items) => {
                out.push('\n');
                for (n, item) in items.iter().enumerate() {
                    out.push_str(&format!("{}[{n}]:\n", " ".repeat((level + 1) * 4)));
                    if let Value::Obj(inner) = item {
                        dump_obj(out, level + 2, inner);
                    }
                }
            }
            Value::Bool(b) => out.push_str(&format!(" {b}\n")),
            Value::Int(n) => out.push_str(&format!(" {n}\n")),
            Value::Str(s) => out.push_str(&format!(" {s}\n")),
        }
    }
}

/// The human form, as `bdrv_image_info_dump` prints it.
pub fn to_human(i: &ImageInfo) -> String {
    let mut s = format!(
        "image: {}\nfile format: {}\nvirtual size: {} ({} bytes)\ndisk size: {}\n",
        i.filename,
        i.format,
        size_to_str(i.virtual_size),
        i.virtual_size,
        i.actual_size
            .map(size_to_str)
            .unwrap_or_else(|| "unavailable".into())
    );
    if let Some(c) = i.cluster_size {
        s += &format!("cluster_size: {c}\n");
    }
    if i.dirty {
        s += "cleanly shut down: no\n";
    }
    if let Some(b) = &i.backing {
        s += &format!("backing file: {b}");
        match &i.full_backing {
            None => s += " (cannot determine actual path)",
            Some(f) if f != b => s += &format!(" (actual path: {f})"),
            _ => {}
        }
        s += "\n";
    }
    if let Some(f) = &i.backing_format {
        s += &format!("backing file format: {f}\n");
    }
    if !i.snapshots.is_empty() {
        s += "Snapshot list:\n";
        s += &snapshot::table(&i.snapshots);
    }
    if let Some(d) = &i.specific {
        s += "Format specific information:\n";
        dump_obj(&mut s, 1, d);
    }
    s
}

/// Runs `vstor img info`.
pub fn run(a: InfoArgs) -> CmdResult {
    let _ = a.force_share;
    let info = collect(&a.filename, a.fmt.as_deref()).map_err(|e| fail(e.msg))?;
    if !a.backing_chain {
        match a.output {
            OutputFormat::Json => println!("{}", Value::Obj(to_json(&info)).pretty()),
            OutputFormat::Human => print!("{}", to_human(&info)),
        }
        return Ok(0);
    }
    let mut chain = vec![info];
    while let Some(next) = chain.last().and_then(|i| i.full_backing.clone()) {
        if chain.len() >= 64 {
            return Err(fail(format!(
                "{}: backing chain deeper than 64",
                a.filename.display()
            )));
        }
        let fmt = chain.last().and_then(|i| i.backing_format.clone());
        chain.push(collect(Path::new(&next), fmt.as_deref()).map_err(|e| fail(e.msg))?);
    }
    match a.output {
        OutputFormat::Json => {
            let list: Vec<Value> = chain.iter().map(|i| Value::Obj(to_json(i))).collect();
            println!("{}", Value::List(list).pretty());
        }
        OutputFormat::Human => {
            let texts: Vec<String> = chain.iter().map(to_human).collect();
            print!("{}", texts.join("\n"));
        }
    }
    Ok(0)
}
