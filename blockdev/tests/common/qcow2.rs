//! qcow2 interop helpers: qemu-made image variants, whole-disk read and map comparisons
//! against QEMU, and the seeded read-write workload whose result QEMU checks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::qemu::{
    assert_check_clean, assert_compare, convert_to_raw, create_qcow2, first_diff, merge_map,
    qemu_io, qemu_io_fmt, qemu_map, MapEntry, Rng,
};
use super::queue::{run_queue, Req};
use vstor_blockdev::qcow2::{Qcow2Dev, Qcow2Options};
use vstor_blockdev::{open, BlockDev, IoOp, OpenOptions, QueueOptions};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1 << 20;

/// qemu-io commands writing constant-byte patterns at aligned, sub-cluster and cross-cluster
/// ranges of a disk of `size` bytes with clusters of `cs` bytes (seeded, so every variant
/// gets its own layout).
pub fn qemu_writes(cs: u64, size: u64, seed: u64, n: usize) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let mut cmds = vec![
        format!("write -P 0x11 0 {}", cs.min(4096)),
        format!("write -P 0x22 {} {}", cs + 7, (cs / 3).max(1)),
        format!(
            "write -P 0x33 {} {}",
            3 * cs - 1000.min(cs / 2),
            2 * cs + 1000
        ),
    ];
    for i in 0..n {
        let len = match rng.below(3) {
            0 => 1 + rng.below(cs),
            1 => 1 + rng.below(3 * cs),
            _ => 512 * (1 + rng.below(8)),
        }
        .min(size / 4);
        let off = rng.below(size - len);
        cmds.push(format!(
            "write -P {:#x} {off} {len}",
            0x40 + i as u64 % 0xb0
        ));
    }
    cmds
}

pub fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn open_ro(path: &Path) -> Arc<dyn BlockDev> {
    open(
        path.to_str().unwrap(),
        &OpenOptions {
            format: Some("qcow2".into()),
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("vstor open {}: {e}", path.display()))
}

pub fn open_rw(path: &Path) -> Qcow2Dev {
    Qcow2Dev::open(path, &Qcow2Options::default())
        .unwrap_or_else(|e| panic!("vstor open rw {}: {e}", path.display()))
}

/// Reads a whole device through `read_at` (in odd-sized chunks) and through a queue (many
/// reads in flight) and compares both with `expected`; also a few unaligned small reads.
pub fn assert_reads(dev: &dyn BlockDev, expected: &[u8], what: &str) {
    let size = dev.info().size;
    assert_eq!(size, expected.len() as u64, "{what}: virtual size");
    let mut got = vec![0u8; expected.len()];
    let chunk = (1 << 20) + 4096 + 512;
    let mut off = 0usize;
    while off < got.len() {
        let end = (off + chunk).min(got.len());
        dev.read_at(&mut got[off..end], off as u64)
            .unwrap_or_else(|e| panic!("{what}: read_at {off}: {e}"));
        off = end;
    }
    if let Some(d) = first_diff(&got, expected) {
        panic!("{what}: read_at differs from qemu-img convert: {d}");
    }
    let mut rng = Rng::new(size);
    for _ in 0..64 {
        let len = 1 + rng.below(70_000.min(size)) as usize;
        let off = rng.below(size - len as u64) as usize;
        let mut b = vec![0u8; len];
        dev.read_at(&mut b, off as u64).unwrap();
        if let Some(d) = first_diff(&b, &expected[off..off + len]) {
            panic!("{what}: read_at({off}, {len}): {d}");
        }
    }
    let mut q = dev
        .open_queue(&QueueOptions { depth: 32 })
        .unwrap_or_else(|e| panic!("{what}: open_queue: {e}"));
    let piece = 192 * KIB + 512;
    let reqs = (0..size.div_ceil(piece))
        .map(|i| {
            let len = piece.min(size - i * piece);
            Req {
                op: IoOp::Read,
                offset: i * piece,
                len,
                buf: vec![0xee; len as usize],
            }
        })
        .collect();
    let mut got = Vec::with_capacity(expected.len());
    for r in run_queue(q.as_mut(), reqs) {
        got.extend_from_slice(&r.buf);
    }
    if let Some(d) = first_diff(&got, expected) {
        panic!("{what}: queued reads differ from qemu-img convert: {d}");
    }
}

/// vstor's map of the whole disk as qemu-img map entries (offsets only kept for data, see
/// `normalize`), merged like qemu-img does.
pub fn vstor_map(dev: &dyn BlockDev) -> Vec<MapEntry> {
    let size = dev.info().size;
    let mut v = Vec::new();
    let mut off = 0;
    while off < size {
        let e = dev
            .map(off, size - off)
            .unwrap_or_else(|e| panic!("map({off}): {e}"));
        assert!(e.len > 0 && e.len <= size - off, "map({off}) len {}", e.len);
        v.push(MapEntry {
            start: off,
            length: e.len,
            depth: e.depth,
            present: e.present,
            zero: e.zero,
            data: e.data,
            offset: if e.compressed { None } else { e.offset },
        });
        off += e.len;
    }
    normalize(v)
}

/// QEMU reports the host offset of allocated clusters even where they read as zeroes or come
/// from the backing file (extended L2 unallocated subclusters, preallocated zero clusters);
/// vstor need not: offsets are compared for data extents only.
pub fn normalize(v: Vec<MapEntry>) -> Vec<MapEntry> {
    merge_map(v.into_iter().map(|mut e| {
        if !e.data {
            e.offset = None;
        }
        e
    }))
}

pub fn assert_map(path: &Path, dev: &dyn BlockDev, what: &str) {
    let q = normalize(qemu_map(path));
    let v = vstor_map(dev);
    if q != v {
        let i = q
            .iter()
            .zip(&v)
            .position(|(a, b)| a != b)
            .unwrap_or(q.len().min(v.len()));
        let lo = i.saturating_sub(2);
        let fmt = |l: &[MapEntry]| {
            l.iter()
                .skip(lo)
                .take(6)
                .map(|e| format!("  {e:?}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "{what}: map differs from qemu-img map at extent {i} ({} vs {} extents)\n\
             qemu (from extent {lo}):\n{}\nvstor:\n{}",
            q.len(),
            v.len(),
            fmt(&q),
            fmt(&v)
        );
    }
}

/// A qemu-made image and how it was made.
pub struct Variant {
    /// Name for messages.
    pub name: String,
    /// The image.
    pub path: PathBuf,
    /// Cluster size.
    pub cs: u64,
    /// Compare `map` with qemu-img map (not for metadata preallocation, where QEMU looks at
    /// the host file's holes).
    pub map: bool,
}

pub fn variant(dir: &Path, name: &str, opts: &str, cs: u64, size: u64, seed: u64) -> Variant {
    let path = dir.join(format!("{name}.qcow2"));
    create_qcow2(&path, opts, size);
    qemu_io(&path, &qemu_writes(cs, size, seed, 24));
    Variant {
        name: name.into(),
        path,
        cs,
        map: true,
    }
}

pub fn size_for(cs: u64) -> u64 {
    (cs * 12).max(4 * MIB)
}

pub fn check_variant(v: &Variant, dir: &Path) {
    let expected = convert_to_raw(&v.path, dir);
    let before = std::fs::read(&v.path).unwrap();
    let dev = open_ro(&v.path);
    assert_reads(dev.as_ref(), &expected, &v.name);
    if v.map {
        assert_map(&v.path, dev.as_ref(), &v.name);
    }
    drop(dev);
    assert!(
        std::fs::read(&v.path).unwrap() == before,
        "{}: a read-only open changed the image file",
        v.name
    );
    // Probing finds qcow2 (an explicit format is not needed).
    let probed = open(
        v.path.to_str().unwrap(),
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{}: open with probing: {e}", v.name));
    assert_eq!(probed.format_name(), "qcow2", "{}: probed format", v.name);
    eprintln!("{}: ok (cluster {} bytes)", v.name, v.cs);
}

/// raw base ← qcow2 mid (-F raw) ← qcow2 top (-F qcow2), each written, some zeroes and
/// discards on top; `extra` adds creation options to mid and top.
pub fn make_chain(dir: &Path, tag: &str, extra: &str, cs: u64, size: u64) -> PathBuf {
    let base = dir.join(format!("{tag}-base.raw"));
    std::fs::write(&base, vec![0u8; size as usize]).unwrap();
    // Fill it all (no holes, so QEMU reports data everywhere in the base).
    let fills: Vec<String> = (0..size / MIB)
        .map(|i| format!("write -P {:#x} {} {}", 0x80 + i % 64, i * MIB, MIB))
        .collect();
    qemu_io_fmt(&base, "raw", &fills);
    let mid = dir.join(format!("{tag}-mid.qcow2"));
    let top = dir.join(format!("{tag}-top.qcow2"));
    let o = |b: &Path, f: &str| {
        let mut s = format!(
            "cluster_size={cs},backing_file={},backing_fmt={f}",
            b.display()
        );
        if !extra.is_empty() {
            s.push(',');
            s.push_str(extra);
        }
        s
    };
    create_qcow2(&mid, &o(&base, "raw"), size);
    qemu_io(&mid, &qemu_writes(cs, size, 11, 12));
    create_qcow2(&top, &o(&mid, "qcow2"), size);
    let mut w = qemu_writes(cs, size, 12, 12);
    w.push(format!("write -z {} {}", cs * 5, cs * 2));
    w.push(format!("write -z {} {}", cs * 8 + 512, 1024));
    w.push(format!("discard {} {}", cs * 2, cs));
    qemu_io(&top, &w);
    top
}

// vstor writes, QEMU checks.

/// Applies a seeded workload to `dev` and to `model`: sync writes (aligned and not), then
/// batches of queued writes, write-zeroes and discards (non-overlapping within a batch), with
/// flushes between. Discarded ranges take whatever the device reads back there (a discard
/// may leave data), which `qemu-img compare` then checks QEMU agrees with.
pub fn workload(dev: &Qcow2Dev, model: &mut [u8], cs: u64, seed: u64) {
    let size = model.len() as u64;
    let mut rng = Rng::new(seed);
    let rand_range = |rng: &mut Rng| {
        let len = match rng.below(4) {
            0 => 1 + rng.below(cs),
            1 => cs,
            2 => 1 + rng.below(3 * cs),
            _ => 512 * (1 + rng.below(16)),
        }
        .min(size / 8);
        let off = match rng.below(3) {
            0 => rng.below(size / cs - len.div_ceil(cs)) * cs,
            _ => rng.below(size - len),
        };
        (off, len)
    };
    for i in 0..24u64 {
        let (off, len) = rand_range(&mut rng);
        let buf = super::qemu::pattern((seed + i) as u8, off, len as usize);
        dev.write_at(&buf, off)
            .unwrap_or_else(|e| panic!("write_at({off}, {len}): {e}"));
        model[off as usize..(off + len) as usize].copy_from_slice(&buf);
        if i % 7 == 6 {
            dev.flush().unwrap();
        }
    }
    let mut q = dev.open_queue(&QueueOptions { depth: 32 }).unwrap();
    for round in 0..4u64 {
        let mut reqs: Vec<Req> = Vec::new();
        let mut taken: Vec<(u64, u64)> = Vec::new();
        for i in 0..20u64 {
            let (off, len) = rand_range(&mut rng);
            if taken.iter().any(|&(o, l)| off < o + l && o < off + len) {
                continue;
            }
            taken.push((off, len));
            let (op, buf) = match rng.below(6) {
                0 => (
                    IoOp::WriteZeroes {
                        may_unmap: rng.coin(),
                    },
                    Vec::new(),
                ),
                1 => (IoOp::Discard, Vec::new()),
                _ => {
                    let b = super::qemu::pattern((round * 40 + i + 100) as u8, off, len as usize);
                    (IoOp::Write, b)
                }
            };
            reqs.push(Req {
                op,
                offset: off,
                len,
                buf,
            });
        }
        for r in run_queue(q.as_mut(), reqs) {
            let range = r.offset as usize..(r.offset + r.len) as usize;
            match r.op {
                IoOp::Write => model[range].copy_from_slice(&r.buf),
                IoOp::WriteZeroes { .. } => model[range].fill(0),
                IoOp::Discard => {
                    let mut b = vec![0u8; r.len as usize];
                    dev.read_at(&mut b, r.offset).unwrap();
                    for (j, (&got, &old)) in b.iter().zip(&model[range.clone()]).enumerate() {
                        assert!(
                            got == old || got == 0,
                            "discard({}, {}) left byte {} neither old nor zero",
                            r.offset,
                            r.len,
                            r.offset as usize + j
                        );
                    }
                    model[range].copy_from_slice(&b);
                }
                _ => unreachable!(),
            }
        }
        run_queue(
            q.as_mut(),
            vec![Req {
                op: IoOp::Flush,
                offset: 0,
                len: 0,
                buf: Vec::new(),
            }],
        );
    }
    drop(q);
    let mut got = vec![0u8; model.len()];
    dev.read_at(&mut got, 0).unwrap();
    if let Some(d) = first_diff(&got, model) {
        panic!("read-back after the workload: {d}");
    }
}

/// Opens `path` read-write in vstor, runs the workload from `start` content, closes, then
/// checks with qemu-img check and compare.
pub fn write_and_check(path: &Path, dir: &Path, cs: u64, seed: u64, what: &str) {
    write_and_check_opts(path, dir, cs, seed, what, &Qcow2Options::default());
}

pub fn write_and_check_opts(
    path: &Path,
    dir: &Path,
    cs: u64,
    seed: u64,
    what: &str,
    opts: &Qcow2Options,
) {
    let mut model = convert_to_raw(path, dir);
    let dev = Qcow2Dev::open(path, opts)
        .unwrap_or_else(|e| panic!("vstor open rw {}: {e}", path.display()));
    workload(&dev, &mut model, cs, seed);
    dev.close().unwrap_or_else(|e| panic!("{what}: close: {e}"));
    let raw = dir.join(format!("{what}.expected.raw"));
    std::fs::write(&raw, &model).unwrap();
    assert_check_clean(path);
    assert_compare(path, &raw);
    // And vstor reads back what QEMU sees.
    let dev = open_ro(path);
    assert_reads(dev.as_ref(), &model, what);
    eprintln!("{what}: ok");
}
