//! Offline qcow2 check, snapshots and compressed clusters against QEMU's own tools
//! (`qemu-img`, `qemu-io`): images made by QEMU are checked and changed by us and the result
//! is checked by QEMU, and the other way round. Tests fail when the QEMU
//! tools are not installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use vstor_blockdev::image::{FileImage, ImageFile};
use vstor_blockdev::qcow2::check::{check, CheckReport, RepairMode};
use vstor_blockdev::qcow2::compress::{decompress, CompressionType};
use vstor_blockdev::qcow2::header::Header;
use vstor_blockdev::qcow2::snapshot;
use vstor_blockdev::OpenOptions;

fn have_qemu() -> bool {
    let ok = Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        && Command::new("qemu-io")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    // The peers are part of the test: missing tools fail it (scripts/install-deps.sh installs
    // qemu-utils) rather than letting it pass without checking anything.
    assert!(
        ok,
        "qemu-img and qemu-io are needed (apt-get install qemu-utils)"
    );
    ok
}

fn run(prog: &str, args: &[&str]) -> (i32, String) {
    let o = Command::new(prog)
        .args(args)
        .output()
        .expect("run qemu tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code().unwrap_or(-1), text)
}

fn qemu_img(args: &[&str]) -> String {
    let (rc, out) = run("qemu-img", args);
    assert_eq!(rc, 0, "qemu-img {args:?}: {out}");
    out
}

fn qemu_io(img: &Path, cmds: &[&str]) -> String {
    let mut args = vec!["-f", "qcow2"];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(img.to_str().unwrap());
    let (rc, out) = run("qemu-io", &args);
    assert_eq!(rc, 0, "qemu-io {cmds:?}: {out}");
    assert!(
        !out.contains("Pattern verification failed"),
        "qemu-io {cmds:?}: {out}"
    );
    out
}

/// `qemu-img check --output=json`: (exit code, numbers by key; absent keys are 0).
fn qemu_check(img: &Path, repair: Option<&str>) -> (i32, Vec<(String, u64)>) {
    let mut args = vec!["check", "--output=json", "-f", "qcow2"];
    if let Some(r) = repair {
        args.push("-r");
        args.push(r);
    }
    args.push(img.to_str().unwrap());
    let o = Command::new("qemu-img").args(&args).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut v = Vec::new();
    for line in text.lines() {
        let line = line.trim().trim_end_matches(',');
        if let Some((k, val)) = line.split_once(':') {
            if let Ok(n) = val.trim().parse::<u64>() {
                v.push((k.trim().trim_matches('"').to_string(), n));
            }
        }
    }
    (o.status.code().unwrap_or(-1), v)
}

fn get(v: &[(String, u64)], k: &str) -> u64 {
    v.iter().find(|(key, _)| key == k).map_or(0, |(_, n)| *n)
}

fn open(p: &Path, ro: bool) -> FileImage {
    let opts = OpenOptions {
        read_only: ro,
        ..Default::default()
    };
    FileImage::open(p, &opts).unwrap()
}

fn ours(p: &Path, mode: RepairMode) -> CheckReport {
    let f = open(p, mode == RepairMode::None);
    check(&f, mode).unwrap()
}

/// Our numbers equal qemu-img's (for a check without repair).
fn assert_same(p: &Path) -> CheckReport {
    let r = ours(p, RepairMode::None);
    let (rc, q) = qemu_check(p, None);
    let pairs = [
        ("image-end-offset", r.image_end_offset),
        ("total-clusters", r.total_clusters),
        ("allocated-clusters", r.allocated_clusters),
        ("fragmented-clusters", r.fragmented_clusters),
        ("compressed-clusters", r.compressed_clusters),
        ("check-errors", r.check_errors),
        ("leaks", r.leaks),
        ("corruptions", r.corruptions),
    ];
    for (k, ours) in pairs {
        assert_eq!(
            ours,
            get(&q, k),
            "{k} of {}: ours {r:#?} qemu {q:?}",
            p.display()
        );
    }
    let want_rc = if r.check_errors > 0 {
        1
    } else if r.corruptions > 0 {
        2
    } else if r.leaks > 0 {
        3
    } else {
        0
    };
    assert_eq!(rc, want_rc, "qemu-img check exit code");
    r
}

fn assert_clean(p: &Path) -> CheckReport {
    let r = assert_same(p);
    assert!(r.is_clean(), "{r:#?}");
    r
}

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().unwrap())
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

fn create(d: &Dir, name: &str, opts: &str, size: &str) -> PathBuf {
    let p = d.path(name);
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !opts.is_empty() {
        args.push("-o");
        args.push(opts);
    }
    args.push(p.to_str().unwrap());
    args.push(size);
    qemu_img(&args);
    p
}

#[test]
fn numbers_match_qemu_on_assorted_images() {
    if !have_qemu() {
        return;
    }
    let d = Dir::new();
    for (i, opts) in [
        "",
        "cluster_size=512",
        "cluster_size=4096,refcount_bits=1",
        "cluster_size=65536,refcount_bits=64",
        "compat=0.10",
        "extended_l2=on,cluster_size=16384",
        "lazy_refcounts=on",
        "preallocation=metadata,cluster_size=4096",
    ]
    .iter()
    .enumerate()
    {
        let p = create(&d, &format!("img{i}.qcow2"), opts, "16M");
        assert_clean(&p);
        // Out-of-order writes across several L2 tables: fragmentation counts.
        qemu_io(
            &p,
            &[
                "write -P 1 8M 64k",
                "write -P 2 0 64k",
                "write -P 3 4M 8k",
                "write -P 4 64k 4k",
                "write -P 5 15M 1M",
                "write -z 12M 64k",
                "discard 8M 4k",
            ],
        );
        let r = assert_clean(&p);
        assert!(r.allocated_clusters > 0);
    }
}

/// Host offset and bytes of every compressed cluster (parsing the L2 tables by hand).
fn compressed_clusters(f: &dyn ImageFile, h: &Header) -> Vec<(u64, u64, u64)> {
    let mut l1 = vec![0u8; h.l1_size as usize * 8];
    f.read_at(&mut l1, h.l1_table_offset).unwrap();
    let cs = h.cluster_size();
    let x = 62 - (h.cluster_bits - 8);
    let mut out = Vec::new();
    for (i, e) in l1.chunks_exact(8).enumerate() {
        let l2_off = u64::from_be_bytes(e.try_into().unwrap()) & 0x00ff_ffff_ffff_fe00;
        if l2_off == 0 {
            continue;
        }
        let mut l2 = vec![0u8; cs as usize];
        f.read_at(&mut l2, l2_off).unwrap();
        for (j, w) in l2.chunks_exact(8).enumerate() {
            let w = u64::from_be_bytes(w.try_into().unwrap());
            if w & (1 << 62) == 0 {
                continue;
            }
            let host = w & ((1 << x) - 1);
            let sectors = ((w & !(3 << 62)) >> x) + 1;
            let guest = (i as u64 * (cs / 8) + j as u64) * cs;
            out.push((guest, host, sectors * 512 - (host & 511)));
        }
    }
    out
}

#[test]
fn compressed_images_from_qemu() {
    if !have_qemu() {
        return;
    }
    let d = Dir::new();
    let raw = d.path("src.raw");
    let mut data = vec![0u8; 4 << 20];
    for (i, b) in data.iter_mut().enumerate() {
        let c = i / 65536;
        *b = match c % 4 {
            0 => 0,
            1 => (i % 251) as u8,
            2 => format!("{c}").as_bytes()[0] ^ (i / 7) as u8,
            _ => ((i * 2654435761) >> 13) as u8,
        };
    }
    std::fs::write(&raw, &data).unwrap();
    for (kind, cs) in [
        (CompressionType::Zlib, 65536u64),
        (CompressionType::Zstd, 65536),
        (CompressionType::Zlib, 4096),
        (CompressionType::Zstd, 2 << 20),
    ] {
        let p = d.path(&format!("c-{kind}-{cs}.qcow2"));
        let o = format!("compression_type={kind},cluster_size={cs}");
        qemu_img(&[
            "convert",
            "-q",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            &o,
            raw.to_str().unwrap(),
            p.to_str().unwrap(),
        ]);
        let r = assert_clean(&p);
        assert!(r.compressed_clusters > 0, "{kind} {cs}: {r:#?}");
        let f = open(&p, true);
        let h = Header::read(&f).unwrap();
        assert_eq!(CompressionType::from_byte(h.compression()), Some(kind));
        let list = compressed_clusters(&f, &h);
        assert_eq!(list.len() as u64, r.compressed_clusters);
        for (guest, host, len) in list {
            let mut inp = vec![0u8; len as usize];
            f.read_at(&mut inp, host).unwrap();
            let mut out = vec![0u8; cs as usize];
            decompress(kind, &inp, &mut out).unwrap();
            let end = (guest + cs).min(data.len() as u64);
            assert!(
                out[..(end - guest) as usize] == data[guest as usize..end as usize],
                "{kind} cluster at {guest}"
            );
        }
        drop(f);
        // Snapshots share compressed clusters (several per host cluster) like any other.
        snapshot::create(&snap_file(&p), "c1").unwrap();
        assert_clean(&p);
        qemu_img(&["snapshot", "-c", "c2", p.to_str().unwrap()]);
        snapshot::delete(&snap_file(&p), "c1").unwrap();
        assert_clean(&p);
    }
}

/// Reads the refcount of host cluster `c` and overwrites it (16-bit refcounts).
fn poke_refcount(p: &Path, c: u64, value: u16) -> u16 {
    let f = open(p, false);
    let h = Header::read(&f).unwrap();
    assert_eq!(h.refcount_bits(), 16);
    let epb = h.refblock_entries();
    let mut e = [0u8; 8];
    f.read_at(&mut e, h.refcount_table_offset + (c / epb) * 8)
        .unwrap();
    let block = u64::from_be_bytes(e);
    let at = block + (c % epb) * 2;
    let mut old = [0u8; 2];
    f.read_at(&mut old, at).unwrap();
    f.write_at(&value.to_be_bytes(), at).unwrap();
    f.flush().unwrap();
    u16::from_be_bytes(old)
}

/// The raw L2 entry mapping guest offset `g` (first L2 table only).
fn l2_entry_at(p: &Path, g: u64) -> (u64, u64) {
    let f = open(p, true);
    let h = Header::read(&f).unwrap();
    let mut e = [0u8; 8];
    f.read_at(&mut e, h.l1_table_offset).unwrap();
    let l2 = u64::from_be_bytes(e) & 0x00ff_ffff_ffff_fe00;
    let at = l2 + (g / h.cluster_size()) * 8;
    f.read_at(&mut e, at).unwrap();
    (at, u64::from_be_bytes(e))
}

fn copy(d: &Dir, p: &Path, name: &str) -> PathBuf {
    let q = d.path(name);
    std::fs::copy(p, &q).unwrap();
    q
}

fn data_image(d: &Dir, name: &str) -> PathBuf {
    let p = create(d, name, "", "64M");
    qemu_io(
        &p,
        &[
            "write -P 1 0 64k",
            "write -P 2 1M 128k",
            "write -P 3 40M 64k",
        ],
    );
    p
}

#[test]
fn leaks_match_qemu_and_are_repaired() {
    if !have_qemu() {
        return;
    }
    let d = Dir::new();
    let p = data_image(&d, "leak.qcow2");
    // A data cluster with one reference too many, and an unused cluster marked in use.
    let (_, e) = l2_entry_at(&p, 0);
    let data_cluster = (e & 0x00ff_ffff_ffff_fe00) >> 16;
    assert_eq!(poke_refcount(&p, data_cluster, 2), 1);
    // A cluster at the end of the file that nothing references.
    let len = std::fs::metadata(&p).unwrap().len();
    assert_eq!(len % 65536, 0);
    open(&p, false).set_len(len + 65536).unwrap();
    let spare = len / 65536;
    poke_refcount(&p, spare, 1);
    let r = assert_same(&p);
    // The data cluster's refcount of 2 also contradicts its COPIED flag.
    assert_eq!((r.leaks, r.corruptions), (2, 1), "{r:#?}");
    assert!(r
        .messages
        .iter()
        .any(|m| m.starts_with(&format!("Leaked cluster {spare} refcount=1 reference=0"))));

    let q = copy(&d, &p, "leak-qemu.qcow2");
    let (_, qr) = qemu_check(&q, Some("leaks"));
    let fixed = ours(&p, RepairMode::Leaks);
    // qemu-img reports the re-check with the fixed counts of the repair.
    assert_eq!(fixed.leaks_fixed, get(&qr, "leaks-fixed"));
    assert_eq!(fixed.leaks, get(&qr, "leaks"));
    assert_eq!(fixed.image_end_offset, get(&qr, "image-end-offset"));
    assert_clean(&p);
    qemu_io(
        &p,
        &["read -P 1 0 64k", "read -P 2 1M 128k", "read -P 3 40M 64k"],
    );
}

#[test]
fn corruptions_match_qemu_and_are_repaired() {
    if !have_qemu() {
        return;
    }
    let d = Dir::new();
    // 1: COPIED flag missing on an active data cluster (refcount 1).
    let p = data_image(&d, "copied.qcow2");
    let (at, e) = l2_entry_at(&p, 1 << 20);
    {
        let f = open(&p, false);
        f.write_at(&(e & !(1u64 << 63)).to_be_bytes(), at).unwrap();
        f.flush().unwrap();
    }
    let r = assert_same(&p);
    assert_eq!(r.corruptions, 1, "{r:#?}");
    assert!(
        r.messages
            .iter()
            .any(|m| m.contains("OFLAG_COPIED data cluster")),
        "{r:#?}"
    );
    let q = copy(&d, &p, "copied-qemu.qcow2");
    let (_, qr) = qemu_check(&q, Some("all"));
    let fixed = ours(&p, RepairMode::All);
    assert_eq!(
        fixed.corruptions_fixed,
        get(&qr, "corruptions-fixed"),
        "{fixed:#?} {qr:?}"
    );
    assert_clean(&p);

    // 2: refcount too low (1 for a cluster referenced twice after a snapshot).
    let p = data_image(&d, "low.qcow2");
    qemu_img(&["snapshot", "-c", "s1", p.to_str().unwrap()]);
    let (_, e) = l2_entry_at(&p, 0);
    let c = (e & 0x00ff_ffff_ffff_fe00) >> 16;
    assert_eq!(poke_refcount(&p, c, 1), 2);
    let r = assert_same(&p);
    assert!(r.corruptions >= 1, "{r:#?}");
    assert!(r
        .messages
        .iter()
        .any(|m| m.starts_with(&format!("ERROR cluster {c} refcount=1 reference=2"))));
    let q = copy(&d, &p, "low-qemu.qcow2");
    let (_, qr) = qemu_check(&q, Some("all"));
    let fixed = ours(&p, RepairMode::All);
    assert_eq!(
        fixed.corruptions_fixed,
        get(&qr, "corruptions-fixed"),
        "{fixed:#?} {qr:?}"
    );
    assert_clean(&p);
    qemu_io(&p, &["read -P 1 0 64k", "read -P 2 1M 128k"]);

    // 3: refcount zero for a used cluster: the refcount structure is rebuilt.
    let p = data_image(&d, "zero.qcow2");
    let (_, e) = l2_entry_at(&p, 0);
    let c = (e & 0x00ff_ffff_ffff_fe00) >> 16;
    poke_refcount(&p, c, 0);
    let r = assert_same(&p);
    // The refcount, and the COPIED flag that no longer matches it.
    assert_eq!(r.corruptions, 2, "{r:#?}");
    let leaks_only = ours(&copy(&d, &p, "zero-leaks.qcow2"), RepairMode::Leaks);
    assert!(leaks_only.check_errors > 0, "{leaks_only:#?}");
    let q = copy(&d, &p, "zero-qemu.qcow2");
    let (_, qr) = qemu_check(&q, Some("all"));
    let fixed = ours(&p, RepairMode::All);
    assert!(fixed.is_clean(), "{fixed:#?}");
    assert_eq!(
        fixed.corruptions_fixed,
        get(&qr, "corruptions-fixed"),
        "{fixed:#?} {qr:?}"
    );
    assert_eq!(
        fixed.image_end_offset,
        get(&qr, "image-end-offset"),
        "{fixed:#?} {qr:?}"
    );
    assert_clean(&p);
    qemu_io(
        &p,
        &[
            "read -P 1 0 64k",
            "read -P 2 1M 128k",
            "read -P 3 40M 64k",
            "write -P 9 8M 64k",
        ],
    );
    assert_clean(&p);
}

#[test]
fn dirty_bit_cleared_by_repair() {
    if !have_qemu() {
        return;
    }
    let d = Dir::new();
    let p = create(&d, "dirty.qcow2", "lazy_refcounts=on", "16M");
    qemu_io(&p, &["write -P 7 0 64k"]);
    {
        let f = open(&p, false);
        f.write_at(&1u64.to_be_bytes(), 72).unwrap();
    }
    assert!(Header::read(&open(&p, true)).unwrap().dirty());
    let r = ours(&p, RepairMode::Leaks);
    assert!(r.is_clean(), "{r:#?}");
    assert!(!Header::read(&open(&p, true)).unwrap().dirty());
    assert_clean(&p);
}

#[test]
fn bitmaps_are_counted() {
    if !have_qemu() {
        return;
    }
    let d = Dir::new();
    let p = data_image(&d, "bm.qcow2");
    qemu_img(&["bitmap", "--add", p.to_str().unwrap(), "b0"]);
    qemu_io(&p, &["write -P 4 2M 64k"]);
    qemu_img(&["bitmap", "--add", p.to_str().unwrap(), "b1"]);
    assert_clean(&p);
}

fn qemu_snapshots(p: &Path) -> Vec<(String, String)> {
    let out = qemu_img(&["snapshot", "-l", p.to_str().unwrap()]);
    out.lines()
        .skip(2)
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}

fn snap_file(p: &Path) -> FileImage {
    open(p, false)
}

#[test]
fn snapshots_interoperate_with_qemu() {
    if !have_qemu() {
        return;
    }
    let d = Dir::new();
    for (i, opts) in [
        "",
        "cluster_size=512",
        "compat=0.10",
        "extended_l2=on",
        "refcount_bits=4,cluster_size=4096",
    ]
    .iter()
    .enumerate()
    {
        let p = create(&d, &format!("snap{i}.qcow2"), opts, "64M");
        let ps = p.to_str().unwrap();
        qemu_io(&p, &["write -P 1 0 64k", "write -P 2 1M 128k"]);
        // QEMU's snapshot, read by us.
        qemu_img(&["snapshot", "-c", "qemu1", ps]);
        let l = snapshot::list(&snap_file(&p)).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!((l[0].id.as_str(), l[0].name.as_str()), ("1", "qemu1"));
        assert_eq!(l[0].disk_size, Some(64 << 20));
        assert_clean(&p);

        // Ours, read by QEMU.
        qemu_io(&p, &["write -P 3 0 64k", "write -P 4 2M 64k"]);
        snapshot::create(&snap_file(&p), "ours2").unwrap();
        assert_clean(&p);
        assert_eq!(
            qemu_snapshots(&p),
            vec![("1".into(), "qemu1".into()), ("2".into(), "ours2".into())]
        );
        assert!(snapshot::create(&snap_file(&p), "ours2").is_err());
        qemu_io(
            &p,
            &["write -P 5 0 64k", "write -P 6 2M 64k", "write -P 6 3M 64k"],
        );
        assert_clean(&p);

        // We revert to QEMU's snapshot, QEMU reads the data.
        snapshot::apply(&snap_file(&p), "qemu1").unwrap();
        assert_clean(&p);
        qemu_io(
            &p,
            &[
                "read -P 1 0 64k",
                "read -P 2 1M 128k",
                "read -P 0 2M 64k",
                "read -P 0 3M 64k",
            ],
        );
        qemu_io(&p, &["write -P 7 1M 64k"]);
        assert_clean(&p);

        // QEMU reverts to ours.
        qemu_img(&["snapshot", "-a", "ours2", ps]);
        qemu_io(
            &p,
            &["read -P 3 0 64k", "read -P 2 1M 128k", "read -P 4 2M 64k"],
        );
        assert_clean(&p);

        // We delete QEMU's snapshot (by ID), QEMU deletes ours.
        snapshot::delete(&snap_file(&p), "1").unwrap();
        assert_clean(&p);
        assert_eq!(qemu_snapshots(&p), vec![("2".into(), "ours2".into())]);
        qemu_img(&["snapshot", "-d", "ours2", ps]);
        assert_clean(&p);
        assert!(snapshot::list(&snap_file(&p)).unwrap().is_empty());

        // Several of ours, deleted by us, last one first.
        for n in ["a", "b", "c"] {
            snapshot::create(&snap_file(&p), n).unwrap();
            qemu_io(&p, &["write -P 8 4M 64k"]);
        }
        assert_clean(&p);
        for n in ["c", "a", "b"] {
            snapshot::delete(&snap_file(&p), n).unwrap();
            assert_clean(&p);
        }
        qemu_io(&p, &["read -P 3 0 64k", "read -P 8 4M 64k"]);
        assert!(snapshot::delete(&snap_file(&p), "a").is_err());
    }
}

#[test]
fn snapshot_table_fields_round_trip() {
    if !have_qemu() {
        return;
    }
    let d = Dir::new();
    let p = data_image(&d, "fields.qcow2");
    qemu_img(&["snapshot", "-c", "first", p.to_str().unwrap()]);
    let before = snapshot::list(&snap_file(&p)).unwrap();
    snapshot::create(&snap_file(&p), "second").unwrap();
    let after = snapshot::list(&snap_file(&p)).unwrap();
    // Rewriting the table keeps QEMU's entry as it was.
    assert_eq!(after[0], before[0]);
    assert_eq!(after[1].name, "second");
    assert!(after[1].date_sec > 0);
    assert_eq!(after[1].vm_state_size, 0);
}

#[test]
fn hostile_snapshot_tables_are_errors() {
    if !have_qemu() {
        return;
    }
    let d = Dir::new();
    let p = data_image(&d, "hostile.qcow2");
    qemu_img(&["snapshot", "-c", "s", p.to_str().unwrap()]);
    let h = Header::read(&open(&p, true)).unwrap();
    let cases: [(u64, &[u8]); 3] = [
        (60, &100_000u32.to_be_bytes()), // too many snapshots
        (60, &1000u32.to_be_bytes()),    // entries past the end of the file
        (h.snapshots_offset + 36, &5000u32.to_be_bytes()), // extra data too large
    ];
    for (i, (at, bytes)) in cases.iter().enumerate() {
        let q = copy(&d, &p, &format!("h{i}.qcow2"));
        let f = open(&q, false);
        f.write_at(bytes, *at).unwrap();
        assert!(snapshot::list(&f).is_err(), "case {i}");
        assert!(snapshot::create(&f, "x").is_err(), "case {i}");
        // The check reports instead of failing.
        if i > 0 {
            let r = check(&f, RepairMode::None).unwrap();
            assert!(r.corruptions > 0, "case {i}: {r:#?}");
        }
    }
}

#[test]
fn garbage_never_panics() {
    let mut x = 0x1234_5678_9abc_def0u64;
    let d = Dir::new();
    if !have_qemu() {
        return;
    }
    let p = data_image(&d, "fuzz.qcow2");
    qemu_img(&["snapshot", "-c", "s", p.to_str().unwrap()]);
    let base = std::fs::read(&p).unwrap();
    for round in 0..200 {
        let mut b = base.clone();
        for _ in 0..8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly metadata: the first 6 clusters.
            let at = (x % (6 * 65536).min(b.len() as u64)) as usize;
            b[at] = (x >> 32) as u8;
        }
        let f = vstor_blockdev::image::MemImage::new(b, 1 << 30);
        let _ = check(&f, RepairMode::None);
        if round % 4 == 0 {
            let _ = check(&f, RepairMode::All);
            let _ = snapshot::create(&f, "fz");
            let _ = snapshot::delete(&f, "s");
        }
    }
}

fn table_gap(p: &Path) -> (u64, u64) {
    let f = open(p, true);
    let h = Header::read(&f).unwrap();
    let cover =
        u64::from(h.refcount_table_clusters) * (h.cluster_size() / 8) * h.refblock_entries();
    let used = f.len().unwrap().div_ceil(h.cluster_size());
    (cover.saturating_sub(used), h.refcount_table_offset)
}

#[test]
fn snapshot_grows_the_refcount_table() {
    if !have_qemu() {
        return;
    }
    let d = Dir::new();
    let p = create(&d, "grow.qcow2", "cluster_size=512", "64M");
    // Fill the file up to just below what the refcount table covers.
    let mut guest = 0u64;
    for _ in 0..60 {
        let (gap, _) = table_gap(&p);
        if gap > 0 && gap < 33 {
            break;
        }
        let n = (gap.saturating_sub(16) * 60 / 64).max(1);
        qemu_io(&p, &[&format!("write -P 5 {guest} {}", n * 512)]);
        guest += n * 512;
    }
    let (gap, rt) = table_gap(&p);
    assert!(gap > 0 && gap < 33, "gap {gap}");
    assert_clean(&p);
    // The snapshot's L1 copy (32 clusters) does not fit under the table any more.
    snapshot::create(&snap_file(&p), "big").unwrap();
    assert_ne!(table_gap(&p).1, rt, "the refcount table moved");
    assert_clean(&p);
    qemu_io(&p, &["write -P 6 0 4k"]);
    snapshot::apply(&snap_file(&p), "big").unwrap();
    assert_clean(&p);
    qemu_io(&p, &[&format!("read -P 5 0 {guest}")]);
    snapshot::delete(&snap_file(&p), "big").unwrap();
    assert_clean(&p);
}

#[test]
fn broken_refcount_table_is_rebuilt() {
    if !have_qemu() {
        return;
    }
    let d = Dir::new();
    let p = data_image(&d, "rt.qcow2");
    {
        let f = open(&p, false);
        let h = Header::read(&f).unwrap();
        // Refcount block 0 misaligned.
        let mut e = [0u8; 8];
        f.read_at(&mut e, h.refcount_table_offset).unwrap();
        let v = u64::from_be_bytes(e) + 4096;
        f.write_at(&v.to_be_bytes(), h.refcount_table_offset)
            .unwrap();
        f.flush().unwrap();
    }
    let r = assert_same(&p);
    assert!(r.corruptions > 0, "{r:#?}");
    let q = copy(&d, &p, "rt-qemu.qcow2");
    let (_, qr) = qemu_check(&q, Some("all"));
    let fixed = ours(&p, RepairMode::All);
    assert!(fixed.is_clean(), "{fixed:#?}");
    assert_eq!(get(&qr, "corruptions"), 0, "{qr:?}");
    assert_clean(&p);
    qemu_io(
        &p,
        &["read -P 1 0 64k", "read -P 2 1M 128k", "read -P 3 40M 64k"],
    );
}

/// Snapshots taken by us on images written by our engine: the engine must copy on write
/// (the COPIED flags are cleared) and the check stays clean throughout. No QEMU needed.
#[test]
fn snapshots_with_our_engine() {
    use std::sync::Arc;
    use vstor_blockdev::image::MemImage;
    use vstor_blockdev::qcow2::{create, CreateOptions, Qcow2Dev, Qcow2Options};
    use vstor_blockdev::BlockDev;

    for (cluster_size, extended_l2, refcount_bits) in [
        (65536u32, false, 16u32),
        (4096, false, 8),
        (32768, true, 64),
        (512, false, 4),
    ] {
        let file: Arc<dyn ImageFile> = Arc::new(MemImage::new(Vec::new(), 256 << 20));
        let opts = CreateOptions {
            size: 16 << 20,
            cluster_size,
            extended_l2,
            refcount_bits,
            ..Default::default()
        };
        create(&*file, &opts).unwrap();
        let write = |pat: u8, off: u64, len: usize| {
            let dev = Qcow2Dev::open_file(file.clone(), &Qcow2Options::default(), None).unwrap();
            dev.write_at(&vec![pat; len], off).unwrap();
            dev.close().unwrap();
        };
        let read = |pat: u8, off: u64, len: usize| {
            let dev = Qcow2Dev::open_file(file.clone(), &Qcow2Options::default(), None).unwrap();
            let mut b = vec![0xeeu8; len];
            dev.read_at(&mut b, off).unwrap();
            assert!(b.iter().all(|&x| x == pat), "pattern {pat} at {off}");
            dev.close().unwrap();
        };
        let clean = |what: &str| {
            let r = check(&*file, RepairMode::None).unwrap();
            assert!(r.is_clean(), "{what} ({cluster_size}): {r:#?}");
        };
        write(1, 0, 100_000);
        write(2, 8 << 20, 70_000);
        clean("written");
        snapshot::create(&*file, "one").unwrap();
        clean("snapshot one");
        write(3, 0, 50_000);
        write(4, 12 << 20, 4096);
        clean("written after snapshot");
        read(3, 0, 50_000);
        read(1, 50_000, 50_000);
        snapshot::create(&*file, "two").unwrap();
        write(5, 8 << 20, 1000);
        snapshot::apply(&*file, "one").unwrap();
        clean("applied one");
        read(1, 0, 100_000);
        read(2, 8 << 20, 70_000);
        read(0, 12 << 20, 4096);
        snapshot::apply(&*file, "2").unwrap();
        read(3, 0, 50_000);
        read(2, 8 << 20, 70_000);
        read(4, 12 << 20, 4096);
        snapshot::delete(&*file, "one").unwrap();
        clean("deleted one");
        write(6, 0, 4096);
        snapshot::delete(&*file, "two").unwrap();
        clean("deleted two");
        read(6, 0, 4096);
        read(3, 4096, 40_000);
        let names: Vec<String> = snapshot::list(&*file)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert!(names.is_empty());
    }
}
