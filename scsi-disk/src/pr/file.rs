//! The APTPL file: registrations and the reservation of a logical unit, kept across power loss
//! (SPC-4 §5.14.5). A small line-oriented text format:
//!
//! ```text
//! vstor-pr 1
//! generation 12
//! registration <nexus, hex> <reservation key, hex> <ALL_TG_PT, 0 or 1>
//! reservation <type code, decimal> <holder nexus, hex>
//! ```
//!
//! Written atomically (a temporary file next to it, fsync, rename, fsync of the directory) on
//! every change while APTPL is set; removed when APTPL is cleared. Loading checks every field
//! and bound and reports the line and field at fault.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::{PrState, PrType, Registration, Reservation, MAX_REGISTRATIONS};

/// Largest PR file accepted (a full set of registrations takes about 50 KiB).
pub const MAX_FILE_BYTES: u64 = 256 << 10;

/// First line of a PR file.
const MAGIC: &str = "vstor-pr 1";

/// A PR file that cannot be loaded.
#[derive(Debug)]
pub struct PrFileError {
    /// The file.
    pub path: PathBuf,
    /// Line at fault (1-based), 0 when the file as a whole is.
    pub line: usize,
    /// The field at fault (e.g. `registration.key`).
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for PrFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "persistent reservation file {}", self.path.display())?;
        if self.line != 0 {
            write!(f, ", line {}", self.line)?;
        }
        write!(f, ": {}: {}", self.field, self.reason)
    }
}

impl std::error::Error for PrFileError {}

/// Loads the state kept in `path` (no file, or no path: no registrations). A loaded state has
/// APTPL set.
pub(crate) fn load(path: Option<&Path>) -> Result<PrState, PrFileError> {
    let Some(path) = path else {
        return Ok(PrState::default());
    };
    let err = |line: usize, field: &'static str, reason: String| PrFileError {
        path: path.to_path_buf(),
        line,
        field,
        reason,
    };
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(PrState::default()),
        Err(e) => return Err(err(0, "file", e.to_string())),
    };
    let mut raw = Vec::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|e| err(0, "file", e.to_string()))?;
    if raw.len() as u64 > MAX_FILE_BYTES {
        return Err(err(
            0,
            "file",
            format!("larger than {MAX_FILE_BYTES} bytes"),
        ));
    }
    let text = String::from_utf8(raw).map_err(|_| err(0, "file", "not UTF-8 text".into()))?;
    parse(&text).map_err(|(line, field, reason)| err(line, field, reason))
}

type ParseError = (usize, &'static str, String);

fn hex(line: usize, field: &'static str, s: Option<&str>) -> Result<u64, ParseError> {
    let s = s.ok_or((line, field, "missing".to_string()))?;
    u64::from_str_radix(s, 16)
        .map_err(|_| (line, field, format!("{s:?} is not a 64-bit hex number")))
}

fn parse(text: &str) -> Result<PrState, ParseError> {
    let mut st = PrState {
        aptpl: true,
        ..Default::default()
    };
    let mut magic = false;
    let mut generation = false;
    let mut reservation_line = 0;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !magic {
            if line != MAGIC {
                return Err((n, "header", format!("expected {MAGIC:?}")));
            }
            magic = true;
            continue;
        }
        let mut t = line.split_whitespace();
        let keyword = t.next().unwrap_or_default();
        match keyword {
            "generation" => {
                if generation {
                    return Err((n, "generation", "given twice".into()));
                }
                generation = true;
                let v = t.next().ok_or((n, "generation", "missing".to_string()))?;
                st.generation = v
                    .parse()
                    .map_err(|_| (n, "generation", format!("{v:?} is not a 32-bit number")))?;
            }
            "registration" => {
                let nexus = hex(n, "registration.nexus", t.next())?;
                let key = hex(n, "registration.key", t.next())?;
                let all_tg_pt = match t.next() {
                    Some("0") => false,
                    Some("1") => true,
                    _ => return Err((n, "registration.all_tg_pt", "expected 0 or 1".into())),
                };
                if key == 0 {
                    return Err((n, "registration.key", "zero".into()));
                }
                if st.reg(nexus).is_some() {
                    return Err((n, "registration.nexus", "registered twice".into()));
                }
                if st.regs.len() >= MAX_REGISTRATIONS {
                    return Err((
                        n,
                        "registration",
                        format!("more than {MAX_REGISTRATIONS} registrations"),
                    ));
                }
                st.regs.push(Registration {
                    nexus,
                    key,
                    all_tg_pt,
                });
            }
            "reservation" => {
                if reservation_line != 0 {
                    return Err((n, "reservation", "given twice".into()));
                }
                reservation_line = n;
                let code = t.next().unwrap_or_default();
                let kind = code.parse().ok().and_then(PrType::from_code).ok_or((
                    n,
                    "reservation.type",
                    format!("{code:?} is not a supported type"),
                ))?;
                let holder = hex(n, "reservation.holder", t.next())?;
                st.reservation = Some(Reservation { kind, holder });
            }
            _ => return Err((n, "keyword", format!("unknown keyword {keyword:?}"))),
        }
        if let Some(extra) = t.next() {
            return Err((n, "line", format!("unexpected {extra:?}")));
        }
    }
    if !magic {
        return Err((0, "header", format!("missing {MAGIC:?}")));
    }
    if let Some(r) = st.reservation {
        if st.reg(r.holder).is_none() {
            return Err((
                reservation_line,
                "reservation.holder",
                "not registered".into(),
            ));
        }
    }
    Ok(st)
}

fn encode(st: &PrState) -> String {
    let mut s = format!("{MAGIC}\ngeneration {}\n", st.generation);
    for r in &st.regs {
        s.push_str(&format!(
            "registration {:016x} {:016x} {}\n",
            r.nexus,
            r.key,
            u8::from(r.all_tg_pt)
        ));
    }
    if let Some(r) = st.reservation {
        s.push_str(&format!(
            "reservation {} {:016x}\n",
            r.kind.code(),
            r.holder
        ));
    }
    s
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Writes `st` to `path` atomically.
pub(crate) fn store(path: &Path, st: &PrState) -> io::Result<()> {
    let tmp = sibling(path, ".tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(encode(st).as_bytes())?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    sync_dir(path)
}

/// Removes the persisted state.
pub(crate) fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let st = PrState {
            generation: 7,
            regs: vec![
                Registration {
                    nexus: 1,
                    key: 0xab,
                    all_tg_pt: false,
                },
                Registration {
                    nexus: u64::MAX,
                    key: 2,
                    all_tg_pt: true,
                },
            ],
            reservation: Some(Reservation {
                kind: PrType::ExclusiveAccessRegistrantsOnly,
                holder: u64::MAX,
            }),
            aptpl: true,
        };
        assert_eq!(parse(&encode(&st)), Ok(st));
        let e = |t: &str| parse(t).unwrap_err();
        assert_eq!(e("").1, "header");
        assert_eq!(e("vstor-pr 2").1, "header");
        assert_eq!(e("vstor-pr 1\nregistration 1 0 0").1, "registration.key");
        assert_eq!(e("vstor-pr 1\nregistration 1 zz 0").1, "registration.key");
        assert_eq!(
            e("vstor-pr 1\nregistration 1 1 2").1,
            "registration.all_tg_pt"
        );
        assert_eq!(
            e("vstor-pr 1\nregistration 1 1 0\nregistration 1 2 0").1,
            "registration.nexus"
        );
        assert_eq!(e("vstor-pr 1\nreservation 2 1").1, "reservation.type");
        let x = e("vstor-pr 1\n\nreservation 1 1");
        assert_eq!((x.0, x.1), (3, "reservation.holder"));
        assert_eq!(e("vstor-pr 1\ngeneration -1").1, "generation");
        assert_eq!(e("vstor-pr 1\nfoo").1, "keyword");
        assert_eq!(e("vstor-pr 1\ngeneration 1 2").1, "line");
    }
}
