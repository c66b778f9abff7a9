//! `vstor img map`: the allocation map of an image (and its backing chain), merged like qemu-img.
//!
//! JSON entries carry exactly the fields qemu-img 7.2 prints: start, length, depth, present,
//! zero, data and offset. qemu-img 8.0 and later also print "compressed"; we leave it out to
//! match the installed 7.2 byte for byte (tests compare only the common fields).

use std::path::Path;
use std::sync::Arc;

use clap::Args;
use vstor_blockdev::image::{FileImage, ImageFile};
use vstor_blockdev::qcow2::header::Header;
use vstor_blockdev::qcow2::snapshot::RefEditor;
use vstor_blockdev::{BlockDev, OpenOptions};

use super::{
    fail, image_format, open_dev, path_combine, CmdResult, OpenHow, OutputFormat, PathArg,
};

/// Arguments of `vstor img map`.
#[derive(Args, Debug)]
pub struct MapArgs {
    /// Image format (probed when absent).
    #[arg(short = 'f')]
    fmt: Option<String>,
    /// Output format.
    #[arg(long = "output", value_enum, default_value_t)]
    output: OutputFormat,
    /// First guest offset to map.
    #[arg(long = "start-offset", default_value = "0")]
    start_offset: String,
    /// Bytes to map (default: to the end).
    #[arg(long = "max-length")]
    max_length: Option<String>,
    /// Ignored (vstor never locks images).
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    /// The image.
    filename: PathArg,
}

/// One merged map entry (qemu's `MapEntry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Guest offset.
    pub start: u64,
    /// Bytes.
    pub length: u64,
    /// Chain depth the data comes from (0 = this image).
    pub depth: u32,
    /// Allocated somewhere in the chain (or a zero cluster).
    pub present: bool,
    /// Reads as zeroes.
    pub zero: bool,
    /// Holds data.
    pub data: bool,
    /// Host offset in the file at `depth`.
    pub offset: Option<u64>,
}

impl Entry {
    /// qemu-img's `entry_mergeable` (7.2).
    fn mergeable(&self, next: &Entry) -> bool {
        self.length != 0
            && self.zero == next.zero
            && self.data == next.data
            && self.depth == next.depth
            && self.present == next.present
            && match (self.offset, next.offset) {
                (None, None) => true,
                (Some(a), Some(b)) => a.checked_add(self.length) == Some(b),
                _ => false,
            }
    }

    /// The JSON line qemu-img prints (`{ "start": ... }`).
    pub fn json(&self) -> String {
        let mut s = format!(
            "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}",
            self.start, self.length, self.depth, self.present, self.zero, self.data
        );
        if let Some(o) = self.offset {
            s += &format!(", \"offset\": {o}");
        }
        s.push('}');
        s
    }
}

/// One layer of a backing chain, as map needs it.
pub struct Layer {
    /// The file holding the layer's data (the image, or its external data file).
    pub host: String,
    /// QEMU's `metadata_preallocation`: the image references many more clusters than its
    /// file has blocks, so data clusters may sit in holes of the file; block status then asks
    /// the file whether a data run reads as zeroes (`BDRV_BLOCK_RECURSE`).
    pub recurse: bool,
    /// Virtual size of the layer.
    pub size: u64,
    dev: Option<Arc<dyn BlockDev>>,
}

impl Layer {
    /// Refines a data run at host offset `off`: (reads as zeroes, bytes that share that).
    fn host_zero(&mut self, off: u64, len: u64) -> Option<(bool, u64)> {
        if self.dev.is_none() {
            let opts = OpenOptions {
                read_only: true,
                format: Some("raw".into()),
                ..Default::default()
            };
            self.dev = Some(vstor_blockdev::open(&self.host, &opts).ok()?);
        }
        let dev = self.dev.as_ref()?;
        let size = dev.info().size;
        if off >= size {
            return Some((true, len));
        }
        let st = dev.block_status(off, len.min(size - off)).ok()?;
        if st.zero && off + st.len >= size {
            // A hole up to the end of the file: the rest of the run reads as zeroes too.
            return Some((true, len));
        }
        Some((st.zero, st.len.clamp(1, len)))
    }
}

/// QEMU's `qcow2_detect_metadata_preallocation`: more clusters in use than 10/9 of the
/// clusters the file really occupies.
fn detect_prealloc(image: &str) -> bool {
    let opts = OpenOptions {
        read_only: true,
        ..Default::default()
    };
    let Ok(file) = FileImage::open(image, &opts) else {
        return false;
    };
    let Ok(h) = Header::read(&file) else {
        return false;
    };
    let cs = h.cluster_size();
    let Ok(file_len) = file.len() else {
        return false;
    };
    let real = super::actual_size(Path::new(image)).unwrap_or(file_len) / cs;
    let threshold = (real * 10 / 9).max(real + 2);
    let nb = file_len.div_ceil(cs);
    if nb <= threshold {
        return false;
    }
    let Ok(mut ed) = RefEditor::open(&file, &h) else {
        return false;
    };
    let mut counted = 0u64;
    for i in 0..nb {
        match ed.get(i) {
            Ok(r) if r > 0 => {
                counted += 1;
                if counted > threshold {
                    return true;
                }
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

/// The map of `[start, end)` of `dev`, merged; `layers` (by depth) refine data runs of
/// preallocated qcow2 layers with the host file's holes, as qemu-img does.
pub fn collect(
    dev: &dyn BlockDev,
    start: u64,
    end: u64,
    layers: &mut [Layer],
) -> Result<Vec<Entry>, String> {
    let mut out: Vec<Entry> = Vec::new();
    let mut off = start;
    while off < end {
        let e = dev.map(off, end - off).map_err(|e| e.to_string())?;
        let mut len = e.len.min(end - off);
        if len == 0 {
            return Err(format!("block status returned no progress at offset {off}"));
        }
        let present = e.present;
        let mut zero = e.zero || !present;
        let mut depth = e.depth;
        if !present {
            // QEMU stops walking down the chain at the first layer whose backing file ends
            // before `off` (the rest reads as zeroes there): split at every backing end and
            // report that layer.
            for l in layers.iter().skip(1) {
                if l.size > off && l.size < off + len {
                    len = l.size - off;
                }
            }
            if let Some(i) =
                (0..layers.len()).find(|&i| layers.get(i + 1).is_none_or(|next| off >= next.size))
            {
                depth = depth.min(i as u32);
            }
        }
        if let (true, false, Some(host), Some(layer)) =
            (e.data, zero, e.offset, layers.get_mut(e.depth as usize))
        {
            if layer.recurse {
                if let Some((z, n)) = layer.host_zero(host, len) {
                    zero = z;
                    len = n;
                }
            }
        }
        let entry = Entry {
            start: off,
            length: len,
            depth,
            present,
            zero,
            data: e.data,
            offset: e.offset,
        };
        match out.last_mut() {
            Some(last) if last.mergeable(&entry) => last.length += entry.length,
            _ => out.push(entry),
        }
        off += len;
    }
    Ok(out)
}

/// The backing chain of `path` by depth.
pub fn chain(path: &Path, fmt: &str) -> Vec<Layer> {
    let mut layers = Vec::new();
    let mut cur = path.to_string_lossy().to_string();
    let mut cur_fmt = fmt.to_string();
    let layer = |host: String, recurse: bool, size: u64| Layer {
        host,
        recurse,
        size,
        dev: None,
    };
    for _ in 0..64 {
        if cur_fmt != "qcow2" {
            let size = std::fs::metadata(&cur).map_or(0, |m| m.len());
            layers.push(layer(cur, false, size));
            break;
        }
        let opts = OpenOptions {
            read_only: true,
            ..Default::default()
        };
        let Ok(h) = FileImage::open(&cur, &opts).and_then(|f| Header::read(&f)) else {
            layers.push(layer(cur, false, u64::MAX));
            break;
        };
        let recurse = detect_prealloc(&cur);
        match &h.data_file {
            // QEMU opens external data files relative to the working directory.
            Some(d) => layers.push(layer(d.clone(), recurse, h.size)),
            None => layers.push(layer(cur.clone(), recurse, h.size)),
        }
        match (&h.backing_file, &h.backing_format) {
            (Some(b), f) => {
                cur = path_combine(Path::new(&cur), b);
                cur_fmt = f.clone().unwrap_or_else(|| {
                    image_format(Path::new(&cur), None)
                        .unwrap_or("raw")
                        .to_string()
                });
            }
            _ => break,
        }
    }
    layers
}

/// Runs `vstor img map`.
pub fn run(a: MapArgs) -> CmdResult {
    let _ = a.force_share;
    let (dev, fmt) = open_dev(
        &a.filename,
        a.fmt.as_deref(),
        OpenHow {
            read_only: true,
            ..Default::default()
        },
    )?;
    let size = dev.info().size;
    let start = super::parse_size(&a.start_offset)?.min(size);
    let end = match &a.max_length {
        Some(l) => start.saturating_add(super::parse_size(l)?).min(size),
        None => size,
    };
    let mut layers = chain(&a.filename, fmt);
    let entries = collect(dev.as_ref(), start, end, &mut layers)
        .map_err(|e| fail(format!("{}: {e}", a.filename.display())))?;
    match a.output {
        OutputFormat::Json => {
            let lines: Vec<String> = entries.iter().map(Entry::json).collect();
            println!("[{}]", lines.join(",\n"));
        }
        OutputFormat::Human => {
            let mut s = format!(
                "{:<16}{:<16}{:<16}{}\n",
                "Offset", "Length", "Mapped to", "File"
            );
            // qemu-img 7.2 lists only runs with data that do not read as zeroes.
            for e in entries.iter().filter(|e| e.data && !e.zero) {
                let Some(off) = e.offset else {
                    print!("{s}");
                    return Err(fail(
                        "File contains external, encrypted or compressed clusters.",
                    ));
                };
                let name = layers
                    .get(e.depth as usize)
                    .map(|l| l.host.as_str())
                    .unwrap_or("");
                s += &format!(
                    "{:<16}{:<16}{:<16}{}\n",
                    hex(e.start),
                    hex(e.length),
                    hex(off),
                    name
                );
            }
            print!("{s}");
        }
    }
    Ok(0)
}

/// C's `%#x`: "0" for zero, else "0x..." in lower case.
fn hex(v: u64) -> String {
    if v == 0 {
        "0".into()
    } else {
        format!("{v:#x}")
    }
}
