//! Running `qemu-img` / `qemu-io` from tests, parsing their JSON output, and small
//! deterministic helpers (patterns, a seeded PRNG) the qcow2 suites share.
//!
//! The tests need qemu-utils (7.2 or later). Where it is missing they fail with a message that
//! says so, unless `VSTOR_SKIP_QEMU_TESTS=1` is set, in which case they pass without running.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

/// Whether the qemu tools are usable; panics with instructions when they are missing and
/// skipping was not asked for.
pub fn require_qemu() -> bool {
    let ok = ["qemu-img", "qemu-io"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    });
    if ok {
        return true;
    }
    if std::env::var_os("VSTOR_SKIP_QEMU_TESTS").is_some_and(|v| v == "1") {
        eprintln!("qemu-img/qemu-io not found: test skipped (VSTOR_SKIP_QEMU_TESTS=1)");
        return false;
    }
    panic!("qemu-img/qemu-io not found: install qemu-utils, or set VSTOR_SKIP_QEMU_TESTS=1");
}

/// `qemu-img --version` as (major, minor).
pub fn qemu_version() -> (u32, u32) {
    let out = Command::new("qemu-img").arg("--version").output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    let v = s
        .split_whitespace()
        .nth(2)
        .unwrap_or("0.0")
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0))
        .collect::<Vec<_>>();
    (v[0], v.get(1).copied().unwrap_or(0))
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&format!("'{}'", a.to_string_lossy()));
    }
    s
}

/// Runs a command, returning its output (whatever the exit status).
pub fn run_raw(prog: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(prog);
    cmd.args(args);
    cmd.output()
        .unwrap_or_else(|e| panic!("{}: {e}", describe(&cmd)))
}

/// Runs a command and panics (with its stderr) unless it succeeds; returns stdout.
pub fn run(prog: &str, args: &[&str]) -> String {
    let out = run_raw(prog, args);
    if !out.status.success() {
        panic!(
            "{prog} {:?} failed ({}):\n{}\n{}",
            args,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // qemu-io reports many failures on stdout with exit status 0.
    if prog == "qemu-io" && stdout.lines().any(|l| l.contains("failed:")) {
        panic!("qemu-io {args:?} reported a failure:\n{stdout}");
    }
    stdout
}

/// `qemu-img ARGS`, must succeed.
pub fn qemu_img(args: &[&str]) -> String {
    run("qemu-img", args)
}

/// Creates a qcow2 image with `qemu-img create -f qcow2 -o OPTS PATH SIZE`.
pub fn create_qcow2(path: &Path, opts: &str, size: u64) {
    let p = path.to_str().unwrap();
    let s = size.to_string();
    if opts.is_empty() {
        qemu_img(&["create", "-q", "-f", "qcow2", p, &s]);
    } else {
        qemu_img(&["create", "-q", "-f", "qcow2", "-o", opts, p, &s]);
    }
}

/// Runs qemu-io commands (`-c` each) on a qcow2 image opened read-write.
pub fn qemu_io(path: &Path, cmds: &[String]) {
    qemu_io_fmt(path, "qcow2", cmds);
}

/// Runs qemu-io commands on an image of format `fmt`.
pub fn qemu_io_fmt(path: &Path, fmt: &str, cmds: &[String]) {
    if cmds.is_empty() {
        return;
    }
    let mut args: Vec<&str> = vec!["-f", fmt];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(path.to_str().unwrap());
    run("qemu-io", &args);
}

/// The guest-visible content of an image, through `qemu-img convert -O raw`.
pub fn convert_to_raw(path: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!(
        "{}.converted.raw",
        path.file_name().unwrap().to_string_lossy()
    ));
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        path.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let data = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).ok();
    data
}

/// The result of `qemu-img check --output=json`.
#[derive(Debug, Clone)]
pub struct Check {
    /// Exit status of qemu-img (0 clean, 2 corruptions, 3 leaks only, 1 check failed).
    pub status: i32,
    /// Corruptions found.
    pub corruptions: u64,
    /// Leaked clusters found.
    pub leaks: u64,
    /// Errors while checking.
    pub check_errors: u64,
    /// Everything qemu-img printed, for messages.
    pub text: String,
}

impl Check {
    /// No corruption, no leak, exit 0.
    pub fn clean(&self) -> bool {
        self.status == 0 && self.corruptions == 0 && self.leaks == 0 && self.check_errors == 0
    }
}

/// Runs `qemu-img check --output=json` on a qcow2 image.
pub fn check(path: &Path) -> Check {
    let out = run_raw(
        "qemu-img",
        &[
            "check",
            "-f",
            "qcow2",
            "--output=json",
            path.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let status = out.status.code().unwrap_or(-1);
    let json = Json::parse(&stdout).ok();
    let num = |k: &str| {
        json.as_ref()
            .and_then(|j| j.get(k))
            .and_then(Json::as_u64)
            .unwrap_or(0)
    };
    Check {
        status,
        corruptions: num("corruptions"),
        leaks: num("leaks"),
        check_errors: if json.is_none() {
            1
        } else {
            num("check-errors")
        },
        text,
    }
}

/// Asserts `qemu-img check` finds the image clean.
pub fn assert_check_clean(path: &Path) {
    let c = check(path);
    assert!(c.clean(), "qemu-img check {}: {}", path.display(), c.text);
}

/// Asserts `qemu-img compare` finds the image's content equal to a raw file.
pub fn assert_compare(img: &Path, raw: &Path) {
    let out = run_raw(
        "qemu-img",
        &[
            "compare",
            "-f",
            "qcow2",
            "-F",
            "raw",
            img.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "qemu-img compare {} {}: {}{}",
        img.display(),
        raw.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One extent of `qemu-img map --output=json` (or the same built from vstor's map).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    /// Guest offset.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// Layer of the chain the status comes from (0 = top).
    pub depth: u32,
    /// Allocated in that layer.
    pub present: bool,
    /// Reads as zeroes.
    pub zero: bool,
    /// Holds data.
    pub data: bool,
    /// Host offset, when there is one.
    pub offset: Option<u64>,
}

/// `qemu-img map --output=json` of a qcow2 image.
pub fn qemu_map(path: &Path) -> Vec<MapEntry> {
    let out = qemu_img(&[
        "map",
        "-f",
        "qcow2",
        "--output=json",
        path.to_str().unwrap(),
    ]);
    let json = Json::parse(&out).unwrap_or_else(|e| panic!("qemu-img map output: {e}\n{out}"));
    let Json::Arr(items) = json else {
        panic!("qemu-img map output is not a list: {out}")
    };
    items
        .iter()
        .map(|e| MapEntry {
            start: e.get("start").and_then(Json::as_u64).unwrap(),
            length: e.get("length").and_then(Json::as_u64).unwrap(),
            depth: e.get("depth").and_then(Json::as_u64).unwrap() as u32,
            present: e.get("present").and_then(Json::as_bool).unwrap_or(true),
            zero: e.get("zero").and_then(Json::as_bool).unwrap(),
            data: e.get("data").and_then(Json::as_bool).unwrap(),
            offset: e.get("offset").and_then(Json::as_u64),
        })
        .collect()
}

/// Merges adjacent extents the way qemu-img map does (same flags and depth, contiguous host
/// offsets or none on both sides).
pub fn merge_map(entries: impl IntoIterator<Item = MapEntry>) -> Vec<MapEntry> {
    let mut out: Vec<MapEntry> = Vec::new();
    for e in entries {
        if e.length == 0 {
            continue;
        }
        if let Some(c) = out.last_mut() {
            let offsets_ok = match (c.offset, e.offset) {
                (None, None) => true,
                (Some(a), Some(b)) => a + c.length == b,
                _ => false,
            };
            if c.start + c.length == e.start
                && c.depth == e.depth
                && c.present == e.present
                && c.zero == e.zero
                && c.data == e.data
                && offsets_ok
            {
                c.length += e.length;
                continue;
            }
        }
        out.push(e);
    }
    out
}

/// A minimal JSON value (enough for qemu-img's output).
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// null
    Null,
    /// true / false
    Bool(bool),
    /// A number (kept as text so u64 values stay exact).
    Num(String),
    /// A string.
    Str(String),
    /// A list.
    Arr(Vec<Json>),
    /// An object.
    Obj(BTreeMap<String, Json>),
}

impl Json {
    /// Parses a whole document.
    pub fn parse(s: &str) -> Result<Json, String> {
        let b = s.as_bytes();
        let mut pos = 0;
        let v = parse_value(b, &mut pos)?;
        skip_ws(b, &mut pos);
        if pos != b.len() {
            return Err(format!("trailing bytes at {pos}"));
        }
        Ok(v)
    }

    /// Member `k` of an object.
    pub fn get(&self, k: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.get(k),
            _ => None,
        }
    }

    /// As an unsigned integer.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Num(n) => n.parse().ok(),
            _ => None,
        }
    }

    /// As a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

fn skip_ws(b: &[u8], pos: &mut usize) {
    while *pos < b.len() && b[*pos].is_ascii_whitespace() {
        *pos += 1;
    }
}

fn parse_value(b: &[u8], pos: &mut usize) -> Result<Json, String> {
    skip_ws(b, pos);
    let c = *b.get(*pos).ok_or("unexpected end")?;
    match c {
        b'{' => {
            *pos += 1;
            let mut m = BTreeMap::new();
            loop {
                skip_ws(b, pos);
                if b.get(*pos) == Some(&b'}') {
                    *pos += 1;
                    return Ok(Json::Obj(m));
                }
                let Json::Str(k) = parse_value(b, pos)? else {
                    return Err(format!("object key expected at {pos}"));
                };
                skip_ws(b, pos);
                if b.get(*pos) != Some(&b':') {
                    return Err(format!("':' expected at {pos}"));
                }
                *pos += 1;
                let v = parse_value(b, pos)?;
                m.insert(k, v);
                skip_ws(b, pos);
                match b.get(*pos) {
                    Some(b',') => *pos += 1,
                    Some(b'}') => {}
                    _ => return Err(format!("',' or '}}' expected at {pos}")),
                }
            }
        }
        b'[' => {
            *pos += 1;
            let mut v = Vec::new();
            loop {
                skip_ws(b, pos);
                if b.get(*pos) == Some(&b']') {
                    *pos += 1;
                    return Ok(Json::Arr(v));
                }
                v.push(parse_value(b, pos)?);
                skip_ws(b, pos);
                match b.get(*pos) {
                    Some(b',') => *pos += 1,
                    Some(b']') => {}
                    _ => return Err(format!("',' or ']' expected at {pos}")),
                }
            }
        }
        b'"' => {
            *pos += 1;
            let mut s = String::new();
            while let Some(&c) = b.get(*pos) {
                *pos += 1;
                match c {
                    b'"' => return Ok(Json::Str(s)),
                    b'\\' => {
                        let e = *b.get(*pos).ok_or("bad escape")?;
                        *pos += 1;
                        match e {
                            b'u' => {
                                let h =
                                    std::str::from_utf8(b.get(*pos..*pos + 4).ok_or("bad \\u")?)
                                        .map_err(|e| e.to_string())?;
                                let cp = u32::from_str_radix(h, 16).map_err(|e| e.to_string())?;
                                s.push(char::from_u32(cp).unwrap_or('?'));
                                *pos += 4;
                            }
                            b'n' => s.push('\n'),
                            b't' => s.push('\t'),
                            b'r' => s.push('\r'),
                            b'b' => s.push('\u{8}'),
                            b'f' => s.push('\u{c}'),
                            other => s.push(other as char),
                        }
                    }
                    _ => {
                        // Re-decode multi-byte UTF-8 sequences as they come.
                        let start = *pos - 1;
                        let len = match c {
                            0..=0x7f => 1,
                            0xc0..=0xdf => 2,
                            0xe0..=0xef => 3,
                            _ => 4,
                        };
                        let end = (start + len).min(b.len());
                        s.push_str(&String::from_utf8_lossy(&b[start..end]));
                        *pos = end;
                    }
                }
            }
            Err("unterminated string".into())
        }
        b't' if b[*pos..].starts_with(b"true") => {
            *pos += 4;
            Ok(Json::Bool(true))
        }
        b'f' if b[*pos..].starts_with(b"false") => {
            *pos += 5;
            Ok(Json::Bool(false))
        }
        b'n' if b[*pos..].starts_with(b"null") => {
            *pos += 4;
            Ok(Json::Null)
        }
        b'-' | b'0'..=b'9' => {
            let start = *pos;
            while *pos < b.len()
                && matches!(b[*pos], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
            {
                *pos += 1;
            }
            Ok(Json::Num(
                String::from_utf8_lossy(&b[start..*pos]).into_owned(),
            ))
        }
        _ => Err(format!("unexpected byte {c:#x} at {pos}")),
    }
}

/// A small seeded PRNG (xorshift64*), so failures reproduce from the seed alone.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability 1/2.
    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }
}

/// Deterministic, position-dependent bytes: the same (seed, absolute offset) always gives the
/// same byte, so a misplaced read shows up.
pub fn pattern(seed: u8, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let p = offset + i;
            (p.wrapping_mul(0x9e37)
                .wrapping_add((p >> 9).wrapping_mul(131))
                .wrapping_add(u64::from(seed) * 0x5bd1) as u8)
                | 1
        })
        .collect()
}

/// Index and values of the first difference between two buffers, for messages.
pub fn first_diff(a: &[u8], b: &[u8]) -> Option<String> {
    if a.len() != b.len() {
        return Some(format!("length {} vs {}", a.len(), b.len()));
    }
    let i = a.iter().zip(b).position(|(x, y)| x != y)?;
    let mut end = i;
    while end < a.len() && a[end] != b[end] {
        end += 1;
    }
    Some(format!(
        "first difference at byte {i:#x} (got {:#04x}, expected {:#04x}); differing run {:#x}..{:#x}",
        a[i], b[i], i, end
    ))
}
