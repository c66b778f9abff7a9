//! Compressed clusters: the two codecs qcow2 knows (header field `compression_type`).
//!
//! - zlib (type 0): a *raw* deflate stream (no zlib header or checksum) whose back-references
//!   stay inside a 4 KiB window (QEMU inflates with window bits -12, so longer distances would
//!   be refused by it).
//! - zstd (type 1): one zstd frame. Readers decode until the cluster is full and ignore what
//!   follows (a compressed cluster's last sector carries unrelated bytes).
//!
//! Both directions work on one cluster at a time and never allocate more than a cluster (plus
//! the codec's fixed state) whatever the input says.

use std::fmt;
use std::str::FromStr;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::error::{Error, Result};

/// Largest zstd window accepted from an image (4 MiB: twice QEMU's largest cluster).
const ZSTD_WINDOW_LOG_MAX: u32 = 22;

/// The deflate window qcow2 readers use (2^12 bytes).
const DEFLATE_WINDOW: usize = 1 << 12;

/// Compression algorithm of an image's compressed clusters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CompressionType {
    /// Raw deflate with a 4 KiB window (header byte 0; the only choice before the
    /// compression_type field existed).
    #[default]
    Zlib,
    /// A zstd frame (header byte 1; needs incompatible feature bit 3).
    Zstd,
}

impl CompressionType {
    /// Decodes the header's `compression_type` byte.
    pub fn from_byte(b: u8) -> Option<CompressionType> {
        match b {
            0 => Some(CompressionType::Zlib),
            1 => Some(CompressionType::Zstd),
            _ => None,
        }
    }

    /// The header's `compression_type` byte.
    pub fn to_byte(self) -> u8 {
        match self {
            CompressionType::Zlib => 0,
            CompressionType::Zstd => 1,
        }
    }

    /// The name QEMU uses ("zlib" or "zstd").
    pub fn name(self) -> &'static str {
        match self {
            CompressionType::Zlib => "zlib",
            CompressionType::Zstd => "zstd",
        }
    }
}

impl fmt::Display for CompressionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CompressionType {
    type Err = Error;

    fn from_str(s: &str) -> Result<CompressionType> {
        match s {
            "zlib" => Ok(CompressionType::Zlib),
            "zstd" => Ok(CompressionType::Zstd),
            _ => Err(Error::InvalidOption {
                name: "compression_type",
                value: s.to_string(),
                reason: "expected zlib or zstd".to_string(),
            }),
        }
    }
}

fn corrupt(kind: CompressionType, reason: impl Into<String>) -> Error {
    Error::corrupt(
        "compressed cluster",
        format!("{kind} stream"),
        reason.into(),
    )
}

/// Decompresses one cluster: `out` (the cluster) must be filled exactly; input bytes after the
/// end of the stream, or after `out` is full, are ignored (the last sector of a compressed
/// cluster holds unrelated bytes). A stream that ends early, or is malformed, is an
/// [`Error::Corrupt`].
pub fn decompress(kind: CompressionType, input: &[u8], out: &mut [u8]) -> Result<()> {
    match kind {
        CompressionType::Zlib => inflate(input, out),
        CompressionType::Zstd => zstd_decompress(input, out),
    }
}

fn inflate(input: &[u8], out: &mut [u8]) -> Result<()> {
    let kind = CompressionType::Zlib;
    let mut d = Decompress::new(false);
    loop {
        let (inp, outp) = (d.total_in() as usize, d.total_out() as usize);
        if outp == out.len() {
            return Ok(());
        }
        let status = d
            .decompress(&input[inp..], &mut out[outp..], FlushDecompress::Finish)
            .map_err(|e| corrupt(kind, format!("invalid deflate data: {e}")))?;
        let progressed = d.total_in() as usize != inp || d.total_out() as usize != outp;
        if d.total_out() as usize == out.len() {
            return Ok(());
        }
        match status {
            Status::StreamEnd => {
                return Err(corrupt(
                    kind,
                    format!(
                        "stream ends after {} bytes, the cluster has {}",
                        d.total_out(),
                        out.len()
                    ),
                ))
            }
            Status::Ok | Status::BufError if progressed => {}
            Status::Ok | Status::BufError => {
                return Err(corrupt(
                    kind,
                    format!(
                        "truncated: {} input bytes give {} of {} bytes",
                        input.len(),
                        d.total_out(),
                        out.len()
                    ),
                ))
            }
        }
    }
}

fn zstd_decompress(input: &[u8], out: &mut [u8]) -> Result<()> {
    use zstd::stream::raw::{DParameter, Decoder, Operation};
    let kind = CompressionType::Zstd;
    let mut dec = Decoder::new().map_err(|e| corrupt(kind, format!("decoder: {e}")))?;
    dec.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
        .map_err(|e| corrupt(kind, format!("decoder: {e}")))?;
    let (mut inp, mut outp) = (0usize, 0usize);
    while outp < out.len() {
        let st = dec
            .run_on_buffers(&input[inp..], &mut out[outp..])
            .map_err(|e| corrupt(kind, format!("invalid zstd data at byte {inp}: {e}")))?;
        inp += st.bytes_read;
        outp += st.bytes_written;
        if st.bytes_read == 0 && st.bytes_written == 0 {
            return Err(corrupt(
                kind,
                format!(
                    "truncated: {} input bytes give {outp} of {} bytes",
                    input.len(),
                    out.len()
                ),
            ));
        }
    }
    Ok(())
}

/// Compresses one cluster the way QEMU does; `None` when the result would not be smaller than
/// `input` (the cluster is then written uncompressed).
pub fn compress(kind: CompressionType, input: &[u8]) -> Result<Option<Vec<u8>>> {
    let out = match kind {
        CompressionType::Zlib => deflate(input)?,
        CompressionType::Zstd => zstd::bulk::compress(input, zstd::DEFAULT_COMPRESSION_LEVEL)
            .map_err(|e| compress_error(input.len(), e))?,
    };
    Ok((out.len() < input.len()).then_some(out))
}

/// Raw deflate whose matches never reach back more than 4 KiB: the input is fed in 4 KiB
/// chunks, each ended by a full flush (which restarts the dictionary).
fn deflate(input: &[u8]) -> Result<Vec<u8>> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(input.len() + input.len() / 64 + 256);
    let n = input.len().div_ceil(DEFLATE_WINDOW).max(1);
    for i in 0..n {
        let chunk = &input
            [(i * DEFLATE_WINDOW).min(input.len())..((i + 1) * DEFLATE_WINDOW).min(input.len())];
        let last = i + 1 == n;
        let flush = if last {
            FlushCompress::Finish
        } else {
            FlushCompress::Full
        };
        let start = c.total_in();
        loop {
            // Keep spare room so that a call returning with room left has flushed everything.
            out.reserve(DEFLATE_WINDOW + 64);
            let done = (c.total_in() - start) as usize;
            let st = c
                .compress_vec(&chunk[done..], &mut out, flush)
                .map_err(|e| compress_error(input.len(), e))?;
            let consumed = (c.total_in() - start) as usize == chunk.len();
            let room = out.len() < out.capacity();
            if last && st == Status::StreamEnd || !last && consumed && room {
                break;
            }
        }
    }
    Ok(out)
}

fn compress_error(len: usize, e: impl std::fmt::Display) -> Error {
    Error::Io {
        op: "compress cluster",
        offset: 0,
        len: len as u64,
        source: std::io::Error::other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(len: usize) -> Vec<Vec<u8>> {
        let mut v = vec![vec![0u8; len], vec![0xa5u8; len]];
        // Text-like, compressible, with long-distance repeats.
        let mut t = Vec::with_capacity(len);
        let mut i = 0u32;
        while t.len() < len {
            t.extend_from_slice(format!("line {} of the test pattern; ", i % 97).as_bytes());
            i += 1;
        }
        t.truncate(len);
        v.push(t);
        // Repeats at distances > 4 KiB only.
        let mut r = vec![0u8; len];
        let mut x = 0x1234_5678u32;
        for b in r.iter_mut().take(8192.min(len)) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        for i in 8192..len {
            r[i] = r[i - 8192];
        }
        v.push(r);
        v
    }

    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9u32;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 7) as u8
            })
            .collect()
    }

    #[test]
    fn names_and_bytes() {
        for k in [CompressionType::Zlib, CompressionType::Zstd] {
            assert_eq!(CompressionType::from_byte(k.to_byte()), Some(k));
            assert_eq!(k.name().parse::<CompressionType>().unwrap(), k);
            assert_eq!(k.to_string(), k.name());
        }
        assert_eq!(CompressionType::default(), CompressionType::Zlib);
        assert!(CompressionType::from_byte(2).is_none());
        assert!("gzip".parse::<CompressionType>().is_err());
    }

    #[test]
    fn round_trips() {
        for kind in [CompressionType::Zlib, CompressionType::Zstd] {
            for len in [512usize, 4096, 65536, 2 << 20] {
                for (i, p) in patterns(len).into_iter().enumerate() {
                    // Pattern 3 repeats only at distances beyond the deflate window.
                    let Some(c) = compress(kind, &p).unwrap() else {
                        assert!(
                            i == 3 && (kind == CompressionType::Zlib || len <= 8192),
                            "{kind} {len} {i}"
                        );
                        continue;
                    };
                    assert!(c.len() < p.len());
                    let mut out = vec![0u8; len];
                    decompress(kind, &c, &mut out).unwrap();
                    assert!(out == p, "{kind} {len}");
                    // Trailing garbage up to a sector end is ignored.
                    let mut g = c.clone();
                    g.extend_from_slice(&[0x5a; 511]);
                    let mut out2 = vec![0u8; len];
                    decompress(kind, &g, &mut out2).unwrap();
                    assert!(out2 == p);
                }
                assert!(compress(kind, &noise(len)).unwrap().is_none());
            }
        }
    }

    #[test]
    fn bad_input_is_corrupt() {
        for kind in [CompressionType::Zlib, CompressionType::Zstd] {
            let p = patterns(65536).remove(2);
            let c = compress(kind, &p).unwrap().unwrap();
            let mut out = vec![0u8; 65536];
            // Truncated stream.
            let e = decompress(kind, &c[..c.len() / 2], &mut out).unwrap_err();
            assert!(matches!(e, Error::Corrupt { .. }), "{e}");
            // Stream too short for the cluster.
            let mut big = vec![0u8; 65536 * 2];
            let e = decompress(kind, &c, &mut big).unwrap_err();
            assert!(matches!(e, Error::Corrupt { .. }), "{e}");
            // Garbage.
            let e = decompress(kind, &noise(1000), &mut out).unwrap_err();
            assert!(matches!(e, Error::Corrupt { .. }), "{e}");
            // Empty.
            assert!(decompress(kind, &[], &mut out).is_err());
        }
    }

    /// QEMU inflates with a 4 KiB window: Python's zlib with wbits=-12 (the same zlib call)
    /// must accept our streams.
    #[test]
    fn deflate_fits_qemu_window() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        if Command::new("python3")
            .arg("-c")
            .arg("import zlib")
            .status()
            .is_err()
        {
            eprintln!("python3 missing: skipped");
            return;
        }
        for p in patterns(65536) {
            let Some(c) = compress(CompressionType::Zlib, &p).unwrap() else {
                continue;
            };
            let mut child = Command::new("python3")
                .arg("-c")
                .arg(
                    "import sys, zlib; d = zlib.decompressobj(-12); \
                     sys.stdout.buffer.write(d.decompress(sys.stdin.buffer.read()))",
                )
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&c).unwrap();
            let o = child.wait_with_output().unwrap();
            assert!(o.status.success(), "python zlib refused our stream");
            assert!(o.stdout == p);
        }
    }
}
