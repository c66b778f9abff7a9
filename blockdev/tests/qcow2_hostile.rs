//! Hostile qcow2 images: valid qemu-img images with patched bytes. Each must give an `Err`
//! naming the field at fault, never a panic, a hang or a huge allocation. Every case runs in
//! a child process (this test binary again, test `hostile_child`) with an address-space limit
//! and a timeout. Also replays the fuzz corpus (`fuzz/corpus/qcow2_image`) through the fuzz
//! target's logic.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::qemu::{create_qcow2, qemu_img, qemu_io, require_qemu};
use vstor_blockdev::image::{FileImage, ImageFile, MemImage};
use vstor_blockdev::qcow2::header::{Header, INCOMPAT_CORRUPT};
use vstor_blockdev::qcow2::{Qcow2Dev, Qcow2Options};
use vstor_blockdev::{BlockDev, OpenOptions};

const CS: u64 = 65536;
const CHILD_MEM_LIMIT: u64 = 1 << 30;
const CHILD_TIMEOUT: Duration = Duration::from_secs(30);

/// What a hostile image must do.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Opening fails with a message naming one of these.
    OpenErr(&'static [&'static str]),
    /// Opening, or else reading guest offset 0, fails naming one of these.
    ReadErr(&'static [&'static str]),
    /// Opening succeeds; writing guest offset 0 fails, and the image is then marked corrupt.
    WriteRefusedCorrupt,
    /// Either opening read-write fails naming one of these, or it succeeds and writing guest
    /// offset 0 fails with the image then marked corrupt (and otherwise unchanged).
    OpenErrOrWriteRefused(&'static [&'static str]),
    /// Opening read-only may succeed or fail; it must just finish (in time, in memory).
    Finishes,
}

struct Case {
    name: &'static str,
    expect: Expect,
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}
fn get64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// A valid 4 MiB image with data in the first clusters.
fn base_image(dir: &Path) -> Vec<u8> {
    let p = dir.join("base.qcow2");
    create_qcow2(&p, &format!("cluster_size={CS}"), 4 << 20);
    qemu_io(
        &p,
        &[
            "write -P 0x61 0 200000".to_string(),
            "write -P 0x62 1000000 5000".to_string(),
        ],
    );
    std::fs::read(&p).unwrap()
}

/// Offset in the file of the first L2 entry (guest cluster 0).
fn l2_entry0(img: &[u8]) -> usize {
    let l1 = get64(img, 40) as usize;
    (get64(img, l1) & 0x00ff_ffff_ffff_fe00) as usize
}

/// Writes every case's image(s) into `dir` and returns the cases.
fn make_cases(dir: &Path) -> Vec<Case> {
    let base = base_image(dir);
    let mut cases = Vec::new();
    let mut add = |name: &'static str, expect: Expect, patch: &dyn Fn(&mut Vec<u8>)| {
        let mut img = base.clone();
        patch(&mut img);
        std::fs::write(dir.join(format!("{name}.qcow2")), &img).unwrap();
        cases.push(Case { name, expect });
    };
    use Expect::*;
    add("truncated_header", OpenErr(&["header"]), &|b| {
        b.truncate(50)
    });
    add("truncated_v3_header", OpenErr(&["header"]), &|b| {
        b.truncate(90)
    });
    add("bad_magic", OpenErr(&["magic"]), &|b| {
        put32(b, 0, 0x5146_49fa)
    });
    add("version_1", OpenErr(&["version"]), &|b| put32(b, 4, 1));
    add("version_4", OpenErr(&["version"]), &|b| put32(b, 4, 4));
    add("cluster_bits_8", OpenErr(&["cluster_bits"]), &|b| {
        put32(b, 20, 8)
    });
    add("cluster_bits_22", OpenErr(&["cluster_bits"]), &|b| {
        put32(b, 20, 22)
    });
    add("cluster_bits_63", OpenErr(&["cluster_bits"]), &|b| {
        put32(b, 20, 63)
    });
    add("huge_l1_size", OpenErr(&["l1_size"]), &|b| {
        put32(b, 36, 0xffff_ffff)
    });
    add("huge_virtual_size", OpenErr(&["size", "l1_size"]), &|b| {
        put64(b, 24, u64::MAX - 511)
    });
    add("l1_offset_unaligned", OpenErr(&["l1_table_offset"]), &|b| {
        let v = get64(b, 40) + 8;
        put64(b, 40, v)
    });
    add("l1_offset_past_eof", OpenErr(&["l1_table_offset"]), &|b| {
        put64(b, 40, 1 << 40)
    });
    add(
        "refcount_table_clusters_huge",
        OpenErr(&["refcount_table_clusters"]),
        &|b| put32(b, 56, 0x00ff_ffff),
    );
    add(
        "refcount_table_clusters_zero",
        OpenErr(&["refcount_table_clusters"]),
        &|b| put32(b, 56, 0),
    );
    add(
        "refcount_table_past_eof",
        OpenErr(&["refcount_table_offset"]),
        &|b| put64(b, 48, 1 << 44),
    );
    add("refcount_order_7", OpenErr(&["refcount_order"]), &|b| {
        put32(b, 96, 7)
    });
    add(
        "nb_snapshots_1e6",
        OpenErr(&["nb_snapshots", "snapshot"]),
        &|b| put32(b, 60, 1_000_000),
    );
    add(
        "snapshot_table_past_eof",
        OpenErr(&["snapshots_offset", "snapshot"]),
        &|b| {
            put32(b, 60, 1);
            put64(b, 64, 1 << 42)
        },
    );
    add(
        "backing_file_size_5000",
        OpenErr(&["backing_file_size"]),
        &|b| {
            put64(b, 8, 512);
            put32(b, 16, 5000);
        },
    );
    add(
        "backing_file_offset_past_cluster",
        OpenErr(&["backing_file_offset"]),
        &|b| {
            put64(b, 8, CS - 4);
            put32(b, 16, 100);
        },
    );
    add(
        "unknown_incompatible_bit",
        OpenErr(&["incompatible"]),
        &|b| put64(b, 72, 1 << 40),
    );
    add("header_length_huge", OpenErr(&["header_length"]), &|b| {
        put32(b, 100, 0x7fff_fff8)
    });
    add("compression_type_9", OpenErr(&["compression_type"]), &|b| {
        put64(b, 72, 8);
        b[104] = 9;
    });
    add(
        "l2_entry_past_eof",
        ReadErr(&["L2", "l2", "offset"]),
        &|b| {
            let at = l2_entry0(b);
            put64(b, at, (1 << 63) | (1 << 45));
        },
    );
    add("l2_entry_unaligned", ReadErr(&["L2", "l2"]), &|b| {
        let at = l2_entry0(b);
        let v = get64(b, at) | 0x200;
        put64(b, at, v);
    });
    add(
        "l1_entry_past_eof",
        ReadErr(&["L1", "l1", "L2", "l2"]),
        &|b| {
            let l1 = get64(b, 40) as usize;
            put64(b, l1, (1 << 63) | (1 << 44));
        },
    );
    add(
        "compressed_past_eof",
        ReadErr(&["compressed", "L2", "l2"]),
        &|b| {
            let at = l2_entry0(b);
            // Compressed, host offset 2^40, a few sectors long.
            put64(b, at, (1 << 62) | (3 << 54) | (1 << 40));
        },
    );
    // An L2 entry with a host offset of 0 means "unallocated", so the header itself cannot
    // be targeted; the refcount table, the L1 table and the L2 table itself can. The copied
    // flag says "overwrite in place", which must not happen to metadata.
    add(
        "l2_entry_points_at_refcount_table",
        WriteRefusedCorrupt,
        &|b| {
            let at = l2_entry0(b);
            let rt = get64(b, 48);
            put64(b, at, (1 << 63) | rt);
        },
    );
    add("l2_entry_points_at_own_l2", WriteRefusedCorrupt, &|b| {
        let at = l2_entry0(b);
        put64(b, at, (1 << 63) | at as u64);
    });
    add("l2_entry_points_at_l1", WriteRefusedCorrupt, &|b| {
        let at = l2_entry0(b);
        let l1 = get64(b, 40) & !(CS - 1);
        put64(b, at, (1 << 63) | l1);
    });
    add("l2_reserved_bits", ReadErr(&["L2", "l2"]), &|b| {
        let at = l2_entry0(b);
        let v = get64(b, at) | 0x2;
        put64(b, at, v);
    });
    add(
        "l1_entry_points_at_refcount_table",
        OpenErrOrWriteRefused(&["L1", "l1", "overlap", "refcount"]),
        &|b| {
            let l1 = get64(b, 40) as usize;
            let rt = get64(b, 48);
            put64(b, l1, (1 << 63) | rt);
        },
    );
    add(
        "refcount_block_is_l1_table",
        OpenErrOrWriteRefused(&["refcount", "overlap", "L1"]),
        &|b| {
            let rt = get64(b, 48) as usize;
            let l1 = get64(b, 40);
            put64(b, rt, l1);
        },
    );
    add(
        "refcount_block_unaligned",
        OpenErrOrWriteRefused(&["refcount"]),
        &|b| {
            let rt = get64(b, 48) as usize;
            let v = get64(b, rt) + 512;
            put64(b, rt, v);
        },
    );
    add("backing_file_missing", OpenErr(&["backing"]), &|b| {
        // Name "nonexistent.raw" in the unused part of the first cluster, no format
        // extension (a missing format must be refused too, or the name not found).
        b[0x8000..0x800f].copy_from_slice(b"nonexistent.raw");
        put64(b, 8, 0x8000);
        put32(b, 16, 15);
    });
    // 65536 snapshots, each with a 32 MiB L1 table (the largest allowed) over the same
    // clusters of a 512-byte-cluster image: every limit respected, but naive bookkeeping of
    // the snapshots' L1 clusters is 65536 x 65536 steps.
    let p = dir.join("many-snapshots-base.qcow2");
    create_qcow2(&p, "cluster_size=512", 1 << 20);
    let mut img = std::fs::read(&p).unwrap();
    let table_at = 36usize << 20;
    let n = 65536usize;
    img.resize(table_at + n * 64, 0);
    for i in 0..n {
        let e = table_at + i * 64;
        put64(&mut img, e, 1 << 20); // L1 table offset
        put32(&mut img, e + 8, 4 << 20); // L1 entries: 32 MiB
        img[e + 12..e + 14].copy_from_slice(&1u16.to_be_bytes()); // id length
        put32(&mut img, e + 36, 16); // extra data size
        img[e + 56] = b'1';
    }
    put32(&mut img, 60, n as u32);
    put64(&mut img, 64, table_at as u64);
    std::fs::write(dir.join("many_snapshots_big_l1.qcow2"), &img).unwrap();
    cases.push(Case {
        name: "many_snapshots_big_l1",
        expect: Finishes,
    });
    // Extended L2: a subcluster both allocated and zero is invalid.
    let p = dir.join("extl2-base.qcow2");
    create_qcow2(&p, &format!("cluster_size={CS},extended_l2=on"), 4 << 20);
    qemu_io(&p, &["write -P 0x63 0 100000".to_string()]);
    let ext = std::fs::read(&p).unwrap();
    let mut img = ext.clone();
    let at = l2_entry0(&img);
    put64(&mut img, at + 8, 0xffff_ffff | (1 << 32));
    std::fs::write(dir.join("extl2_alloc_and_zero.qcow2"), &img).unwrap();
    cases.push(Case {
        name: "extl2_alloc_and_zero",
        expect: ReadErr(&["L2", "l2", "subcluster"]),
    });
    let mut img = ext;
    let at = l2_entry0(&img);
    // Compressed descriptor with a non-zero subcluster bitmap.
    let w = get64(&img, at);
    put64(&mut img, at, (1 << 62) | (w & 0x00ff_ffff_ffff_fe00));
    put64(&mut img, at + 8, 1);
    std::fs::write(dir.join("extl2_compressed_bitmap.qcow2"), &img).unwrap();
    cases.push(Case {
        name: "extl2_compressed_bitmap",
        expect: ReadErr(&["L2", "l2", "compressed"]),
    });
    cases
}

fn run_child(dir: &Path, name: &str) -> Result<String, String> {
    let exe = std::env::current_exe().unwrap();
    // The address-space limit comes from util-linux's prlimit (no unsafe setrlimit here); a
    // huge allocation then aborts the child, which is reported as a failure.
    let mut cmd = if Command::new("prlimit").arg("--version").output().is_ok() {
        let mut c = Command::new("prlimit");
        c.arg(format!("--as={CHILD_MEM_LIMIT}")).arg("--").arg(exe);
        c
    } else {
        eprintln!("prlimit not found: hostile cases run without a memory limit");
        Command::new(exe)
    };
    let mut child = cmd
        .args([
            "hostile_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HOSTILE_CASE", name)
        .env("HOSTILE_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let verdict = text
                .lines()
                .find_map(|l| l.find("HOSTILE-RESULT ").map(|i| l[i + 15..].to_string()));
            return match verdict {
                Some(v) if v.starts_with("ok") && status.success() => Ok(v),
                Some(v) => Err(v),
                None => Err(format!("child died ({status}) without a verdict:\n{text}")),
            };
        }
        if start.elapsed() > CHILD_TIMEOUT {
            child.kill().ok();
            child.wait().ok();
            return Err(format!("timed out after {CHILD_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn hostile_images() {
    if !require_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cases = make_cases(dir.path());
    make_backing_loops(dir.path());
    cases.push(Case {
        name: "backing_loop_a",
        expect: Expect::OpenErr(&["backing"]),
    });
    cases.push(Case {
        name: "backing_self",
        expect: Expect::OpenErr(&["backing"]),
    });
    let mut failures = Vec::new();
    for c in &cases {
        match run_child(dir.path(), c.name) {
            Ok(v) => eprintln!("{:32} {v}", c.name),
            Err(e) => failures.push(format!("{} ({:?}): {e}", c.name, c.expect)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} hostile case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// a.qcow2 → b.qcow2 → a.qcow2, and self.qcow2 → self.qcow2.
fn make_backing_loops(dir: &Path) {
    let a = dir.join("backing_loop_a.qcow2");
    let b = dir.join("backing_loop_b.qcow2");
    let s = dir.join("backing_self.qcow2");
    create_qcow2(&b, "", 1 << 20);
    create_qcow2(
        &a,
        &format!("backing_file={},backing_fmt=qcow2", b.display()),
        1 << 20,
    );
    qemu_img(&[
        "rebase",
        "-u",
        "-f",
        "qcow2",
        "-b",
        a.to_str().unwrap(),
        "-F",
        "qcow2",
        b.to_str().unwrap(),
    ]);
    create_qcow2(&s, "", 1 << 20);
    qemu_img(&[
        "rebase",
        "-u",
        "-f",
        "qcow2",
        "-b",
        s.to_str().unwrap(),
        "-F",
        "qcow2",
        s.to_str().unwrap(),
    ]);
}

fn names_field(msg: &str, fields: &[&str]) -> bool {
    fields.iter().any(|f| msg.contains(f))
}

fn child_case(dir: &Path, name: &str, expect: Expect) -> Result<String, String> {
    let path = dir.join(format!("{name}.qcow2"));
    let ro = Qcow2Options {
        read_only: true,
        ..Default::default()
    };
    match expect {
        Expect::OpenErr(fields) => {
            let mut msgs = Vec::new();
            for opts in [ro.clone(), Qcow2Options::default()] {
                match Qcow2Dev::open(&path, &opts) {
                    Ok(_) => return Err(format!("opened (read_only={})", opts.read_only)),
                    Err(e) if names_field(&e.to_string(), fields) => msgs.push(e.to_string()),
                    Err(e) => return Err(format!("error does not name {fields:?}: {e}")),
                }
            }
            // The same bytes in memory (no backing opened by name there).
            let bytes = std::fs::read(&path).unwrap();
            let mem: Arc<dyn ImageFile> = Arc::new(MemImage::new(bytes, 64 << 20));
            if let Ok(d) = Qcow2Dev::open_file(mem, &ro, None) {
                if !(name.starts_with("backing_loop")
                    || name == "backing_self"
                    || name == "backing_file_missing")
                {
                    drop(d);
                    return Err("opened from memory".into());
                }
            }
            Ok(format!("ok: {}", msgs[0]))
        }
        Expect::ReadErr(fields) => {
            // Refusing the image at open is as good as refusing the read.
            let dev = match Qcow2Dev::open(&path, &ro) {
                Ok(d) => d,
                Err(e) if names_field(&e.to_string(), fields) => return Ok(format!("ok: {e}")),
                Err(e) => return Err(format!("open error does not name {fields:?}: {e}")),
            };
            let mut buf = vec![0u8; CS as usize];
            match dev.read_at(&mut buf, 0) {
                Ok(()) => Err("read of the bad cluster succeeded".into()),
                Err(e) if names_field(&e.to_string(), fields) => Ok(format!("ok: {e}")),
                Err(e) => Err(format!("read error does not name {fields:?}: {e}")),
            }
        }
        Expect::Finishes => {
            let t = std::time::Instant::now();
            let r = Qcow2Dev::open(&path, &ro).map(|_| ());
            Ok(format!("ok: finished in {:?}: {r:?}", t.elapsed()))
        }
        Expect::WriteRefusedCorrupt | Expect::OpenErrOrWriteRefused(_) => {
            let before = std::fs::read(&path).unwrap();
            let dev = match (Qcow2Dev::open(&path, &Qcow2Options::default()), expect) {
                (Ok(d), _) => d,
                (Err(e), Expect::OpenErrOrWriteRefused(f)) if names_field(&e.to_string(), f) => {
                    return Ok(format!("ok (at open): {e}"));
                }
                (Err(e), _) => return Err(format!("open failed: {e}")),
            };
            let r = dev.write_at(&[0xabu8; 4096], 0);
            drop(dev);
            let after = std::fs::read(&path).unwrap();
            let msg = match r {
                Ok(()) => return Err("write over metadata succeeded".into()),
                Err(e) => e.to_string(),
            };
            // Nothing but the header's incompatible feature bits may have changed.
            if before.len() != after.len()
                || before[..72] != after[..72]
                || before[80..] != after[80..]
            {
                let first = before.iter().zip(&after).skip(80).position(|(a, b)| a != b);
                return Err(format!(
                    "image changed (length {} -> {}, first differing byte past the header: {:?}); \
                     write said: {msg}",
                    before.len(),
                    after.len(),
                    first.map(|i| i + 80)
                ));
            }
            let f = FileImage::open(&path, &OpenOptions::default()).unwrap();
            let h = Header::read(&f).map_err(|e| format!("header after: {e}"))?;
            if h.incompatible_features & INCOMPAT_CORRUPT == 0 {
                return Err(format!("image not marked corrupt (write said: {msg})"));
            }
            Ok(format!("ok: {msg}"))
        }
    }
}

/// The child side of `hostile_images` (does nothing unless HOSTILE_CASE is set).
#[test]
fn hostile_child() {
    let (Some(name), Some(dir)) = (
        std::env::var_os("HOSTILE_CASE"),
        std::env::var_os("HOSTILE_DIR"),
    ) else {
        return;
    };
    let name = name.to_string_lossy().into_owned();
    let dir = PathBuf::from(dir);
    let expect = match name.as_str() {
        "backing_loop_a" | "backing_self" => Expect::OpenErr(&["backing"]),
        _ => {
            // Rebuild the table of expectations without touching the files.
            let tmp = tempfile::tempdir().unwrap();
            make_cases(tmp.path())
                .into_iter()
                .find(|c| c.name == name)
                .map(|c| c.expect)
                .unwrap_or_else(|| panic!("unknown case {name}"))
        }
    };
    let r = std::panic::catch_unwind(|| child_case(&dir, &name, expect));
    match r {
        Ok(Ok(v)) => println!("HOSTILE-RESULT {v}"),
        Ok(Err(e)) => println!("HOSTILE-RESULT FAIL {e}"),
        Err(_) => println!("HOSTILE-RESULT FAIL panicked"),
    }
}

// ---------------------------------------------------------------------------------------
// Fuzz corpus replay: `vstor_blockdev::qcow2::fuzzing::image`, the fuzz target's logic, over
// the checked-in seeds and seeded mutations of them.

#[test]
fn fuzz_corpus_replay() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/qcow2_image");
    let mut seeds: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            let d = std::fs::read(&p).unwrap();
            (p, d)
        })
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 5, "seed corpus missing in {}", dir.display());
    for (p, data) in &seeds {
        let r = std::panic::catch_unwind(|| vstor_blockdev::qcow2::fuzzing::image(data));
        assert!(r.is_ok(), "fuzz input {} panicked", p.display());
    }
    // Mutations: flip bytes in the header and the first clusters of each seed.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..300 {
        let (p, seed) = &seeds[round % seeds.len()];
        let mut data = seed.clone();
        for _ in 0..1 + round % 8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x as usize >> 8) % data.len().min(if round % 2 == 0 { 512 } else { 1 << 18 });
            data[at] ^= (x as u8) | 1;
        }
        let r = std::panic::catch_unwind(|| vstor_blockdev::qcow2::fuzzing::image(&data));
        assert!(r.is_ok(), "mutation {round} of {} panicked", p.display());
    }
}
