//! The qcow2 engine against a byte model and qemu-img: random writes (sync and queued),
//! write-zeroes, discard, compressed writes, backing files, snapshots, resize; every image
//! must pass `qemu-img check` and read back identically through `qemu-img convert`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use vstor_blockdev::image::{FileImage, ImageFile};
use vstor_blockdev::qcow2::{self, create_path, CreateOptions, Qcow2Dev, Qcow2Options};
use vstor_blockdev::{BlockDev, IoOp, IoQueue, OpenOptions, QueueOptions};

const SIZE: u64 = 8 << 20;

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs")
}

fn check_clean(p: &Path) {
    let o = qemu_img(&["check", p.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "qemu-img check {}: {}{}",
        p.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn qemu_content(p: &Path) -> Vec<u8> {
    let raw = p.with_extension("raw-out");
    let o = qemu_img(&[
        "convert",
        "-O",
        "raw",
        p.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = std::fs::read(&raw).unwrap();
    std::fs::remove_file(raw).unwrap();
    v
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 11
    }
}

/// Runs one request through a queue and waits for it.
fn run(q: &mut dyn IoQueue, op: IoOp, off: u64, buf: &mut [u8], len: u64) {
    vstor_blockdev::request::run_blocking(q, op, off, len, buf).unwrap();
}

fn workload(dev: &Qcow2Dev, model: &mut [u8], seed: u64, ops: usize) {
    let mut q = dev.open_queue(&QueueOptions { depth: 8 }).unwrap();
    let mut r = Rng(seed);
    let cs = dev.header().cluster_size();
    for i in 0..ops {
        let off = r.next() % (SIZE - 1) / 512 * 512;
        let len = ((1 + r.next() % (3 * cs)) / 512 * 512).clamp(512, SIZE - off);
        let (o, l) = (off as usize, len as usize);
        match r.next() % 10 {
            0 => {
                run(
                    &mut *q,
                    IoOp::WriteZeroes {
                        may_unmap: r.next() % 2 == 0,
                    },
                    off,
                    &mut [],
                    len,
                );
                model[o..o + l].fill(0);
            }
            1 => {
                let mut b = vec![0u8; l];
                run(&mut *q, IoOp::Read, off, &mut b, len);
                assert!(b == model[o..o + l], "op {i}: read at {off:#x}+{len:#x}");
            }
            2..=5 => {
                let mut b: Vec<u8> = (0..l).map(|j| (i * 31 + j) as u8 | 1).collect();
                run(&mut *q, IoOp::Write, off, &mut b, len);
                model[o..o + l].copy_from_slice(&b);
            }
            _ => {
                let b: Vec<u8> = (0..l).map(|j| (i * 17 + j) as u8 | 2).collect();
                dev.write_at(&b, off).unwrap();
                model[o..o + l].copy_from_slice(&b);
            }
        }
    }
    let mut all = vec![0u8; SIZE as usize];
    dev.read_at(&mut all, 0).unwrap();
    if let Some(i) = (0..all.len()).find(|&i| all[i] != model[i]) {
        panic!(
            "final read-back differs at {i:#x}: {} != {}",
            all[i], model[i]
        );
    }
    dev.flush().unwrap();
}

fn new_image(dir: &Path, name: &str, opts: CreateOptions) -> PathBuf {
    let p = dir.join(name);
    create_path(&p, &opts).unwrap();
    check_clean(&p);
    p
}

fn open(p: &Path) -> Qcow2Dev {
    Qcow2Dev::open(p, &Qcow2Options::default()).unwrap()
}

#[test]
fn random_io_matches_model_and_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let variants = [
        (
            "default",
            CreateOptions {
                size: SIZE,
                ..Default::default()
            },
        ),
        (
            "c512_rb1",
            CreateOptions {
                size: SIZE,
                cluster_size: 512,
                refcount_bits: 1,
                ..Default::default()
            },
        ),
        (
            "c4k_rb64",
            CreateOptions {
                size: SIZE,
                cluster_size: 4096,
                refcount_bits: 64,
                ..Default::default()
            },
        ),
        (
            "v2",
            CreateOptions {
                size: SIZE,
                compat: qcow2::Compat::V2,
                ..Default::default()
            },
        ),
        (
            "extl2",
            CreateOptions {
                size: SIZE,
                extended_l2: true,
                ..Default::default()
            },
        ),
        (
            "extl2_32k",
            CreateOptions {
                size: SIZE,
                extended_l2: true,
                cluster_size: 32768,
                ..Default::default()
            },
        ),
        (
            "lazy",
            CreateOptions {
                size: SIZE,
                lazy_refcounts: true,
                ..Default::default()
            },
        ),
        (
            "prealloc",
            CreateOptions {
                size: SIZE,
                preallocation: qcow2::Preallocation::Metadata,
                ..Default::default()
            },
        ),
    ];
    for (i, (name, opts)) in variants.into_iter().enumerate() {
        let p = new_image(dir.path(), &format!("{name}.qcow2"), opts);
        let mut model = vec![0u8; SIZE as usize];
        {
            let dev = open(&p);
            workload(&dev, &mut model, i as u64 + 1, 150);
            dev.close().unwrap();
        }
        check_clean(&p);
        assert!(
            qemu_content(&p) == model,
            "{name}: qemu-img reads what vstor wrote"
        );
        // Reopen and go on (dirty bit, caches cold).
        {
            let dev = open(&p);
            workload(&dev, &mut model, 100 + i as u64, 60);
        }
        check_clean(&p);
        assert!(qemu_content(&p) == model, "{name}: after reopen");
    }
}

#[test]
fn backing_chain_copy_on_write() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    let mut model: Vec<u8> = (0..SIZE).map(|i| (i / 512) as u8 ^ 0x5a).collect();
    std::fs::write(&base, &model).unwrap();
    let mid = new_image(
        dir.path(),
        "mid.qcow2",
        CreateOptions {
            size: SIZE,
            backing_file: Some("base.raw".into()),
            backing_format: Some("raw".into()),
            ..Default::default()
        },
    );
    let o = Command::new("qemu-io")
        .args(["-c", "write -P 0x77 100k 300k", mid.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success());
    model[100 << 10..400 << 10].fill(0x77);
    for ext in [false, true] {
        let top = new_image(
            dir.path(),
            &format!("top{ext}.qcow2"),
            CreateOptions {
                size: SIZE,
                extended_l2: ext,
                backing_file: Some("mid.qcow2".into()),
                backing_format: Some("qcow2".into()),
                ..Default::default()
            },
        );
        let mut m = model.clone();
        {
            let dev = open(&top);
            workload(&dev, &mut m, 9 + ext as u64, 120);
            let e = dev.map(0, 4096).unwrap();
            assert!(e.present);
        }
        check_clean(&top);
        assert!(
            qemu_content(&top) == m,
            "top over mid over raw (extended_l2={ext})"
        );
    }
}

#[test]
fn shared_clusters_after_qemu_snapshot_are_copied() {
    let dir = tempfile::tempdir().unwrap();
    let p = new_image(
        dir.path(),
        "s.qcow2",
        CreateOptions {
            size: SIZE,
            ..Default::default()
        },
    );
    let o = Command::new("qemu-io")
        .args(["-c", "write -P 0x11 0 2M", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(qemu_img(&["snapshot", "-c", "snap1", p.to_str().unwrap()])
        .status
        .success());
    let mut model = vec![0u8; SIZE as usize];
    model[..2 << 20].fill(0x11);
    {
        let dev = open(&p);
        workload(&dev, &mut model, 77, 120);
    }
    check_clean(&p);
    assert!(qemu_content(&p) == model);
    // The snapshot still holds the old content.
    assert!(qemu_img(&["snapshot", "-a", "snap1", p.to_str().unwrap()])
        .status
        .success());
    let mut old = vec![0u8; SIZE as usize];
    old[..2 << 20].fill(0x11);
    assert!(qemu_content(&p) == old, "snapshot content intact");
    check_clean(&p);
}

#[test]
fn compressed_writes_resize_and_qemu_compressed_reads() {
    let dir = tempfile::tempdir().unwrap();
    for zstd in [false, true] {
        let p = new_image(
            dir.path(),
            &format!("z{zstd}.qcow2"),
            CreateOptions {
                size: SIZE,
                compression_type: if zstd {
                    qcow2::compress::CompressionType::Zstd
                } else {
                    Default::default()
                },
                ..Default::default()
            },
        );
        let mut model = vec![0u8; SIZE as usize];
        {
            let dev = open(&p);
            let cs = 65536usize;
            for c in 0..(SIZE as usize / cs) {
                if c % 3 == 2 {
                    continue;
                }
                let d: Vec<u8> = (0..cs)
                    .map(|j| {
                        if c % 2 == 0 {
                            (j / 100) as u8
                        } else {
                            (j * 7 + c) as u8
                        }
                    })
                    .collect();
                dev.write_compressed((c * cs) as u64, &d).unwrap();
                model[c * cs..(c + 1) * cs].copy_from_slice(&d);
            }
            // Overwrite parts of compressed clusters (copy-on-write out of compression).
            workload(&dev, &mut model, 5, 80);
        }
        check_clean(&p);
        assert!(qemu_content(&p) == model, "compressed (zstd={zstd})");
        // qemu-img convert -c output reads back through vstor.
        let qc = dir.path().join(format!("qc{zstd}.qcow2"));
        let mut args = vec!["convert", "-c", "-O", "qcow2"];
        if zstd {
            args.extend(["-o", "compression_type=zstd"]);
        }
        args.extend([p.to_str().unwrap(), qc.to_str().unwrap()]);
        assert!(qemu_img(&args).status.success());
        let dev = Qcow2Dev::open(
            &qc,
            &Qcow2Options {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        let mut all = vec![0u8; SIZE as usize];
        dev.read_at(&mut all, 0).unwrap();
        assert!(
            all == model,
            "qemu-compressed image reads back (zstd={zstd})"
        );
    }
    // Resize: grow past the L1 table's first cluster, then shrink.
    let p = new_image(
        dir.path(),
        "r.qcow2",
        CreateOptions {
            size: 1 << 20,
            cluster_size: 512,
            ..Default::default()
        },
    );
    {
        let dev = open(&p);
        dev.write_at(&[9u8; 4096], 512 * 1000).unwrap();
        dev.close().unwrap();
    }
    qcow2::resize(&p, 64 << 20, false).unwrap();
    check_clean(&p);
    let f: Arc<dyn ImageFile> = Arc::new(FileImage::open(&p, &OpenOptions::default()).unwrap());
    let dev = Qcow2Dev::open_file(f, &Qcow2Options::default(), None).unwrap();
    assert_eq!(dev.info().size, 64 << 20);
    dev.write_at(&[3u8; 4096], (64 << 20) - 4096).unwrap();
    dev.close().unwrap();
    check_clean(&p);
    assert!(
        qcow2::resize(&p, 1 << 20, false).is_err(),
        "shrink needs allow_shrink"
    );
    qcow2::resize(&p, 1 << 20, true).unwrap();
    check_clean(&p);
    let c = qemu_content(&p);
    assert_eq!(c.len(), 1 << 20);
    assert!(c[512 * 1000..512 * 1000 + 4096].iter().all(|&b| b == 9));
}

#[test]
fn probing_and_the_block_zero_guard() {
    let dir = tempfile::tempdir().unwrap();
    let p = new_image(
        dir.path(),
        "p.qcow2",
        CreateOptions {
            size: SIZE,
            ..Default::default()
        },
    );
    let d = vstor_blockdev::open(p.to_str().unwrap(), &OpenOptions::default()).unwrap();
    assert_eq!(d.format_name(), "qcow2");
    drop(d);
    let raw = dir.path().join("disk.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let d = vstor_blockdev::open(raw.to_str().unwrap(), &OpenOptions::default()).unwrap();
    let hdr = std::fs::read(&p).unwrap();
    let e = d.write_at(&hdr[..512], 0).unwrap_err().to_string();
    assert!(e.contains("qcow"), "{e}");
    // Through a queue too, and a partial write that completes a signature.
    let mut q = d.open_queue(&QueueOptions::default()).unwrap();
    let mut b = b"QFI".to_vec();
    d.write_at(&[0, 0, 0, 0xfb], 0).unwrap();
    let r = vstor_blockdev::request::run_blocking(&mut *q, IoOp::Write, 0, 3, &mut b);
    assert!(r.is_err(), "{r:?}");
    d.write_at(&[1u8; 512], 512).unwrap();
    // An explicit raw format lifts the guard.
    let d = vstor_blockdev::open(
        raw.to_str().unwrap(),
        &OpenOptions {
            format: Some("raw".into()),
            ..Default::default()
        },
    )
    .unwrap();
    d.write_at(&hdr[..512], 0).unwrap();
    // Which is what the guard prevents: the probe now takes the file for a qcow2 image.
    drop(d);
    let d = vstor_blockdev::open(raw.to_str().unwrap(), &OpenOptions::default()).unwrap();
    assert_eq!(d.format_name(), "qcow2");
}

#[test]
fn external_data_files_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    for raw in [false, true] {
        let p = dir.path().join(format!("e{raw}.qcow2"));
        let opts = CreateOptions {
            size: SIZE,
            // Absolute: qemu-img resolves a relative data-file name against its working directory.
            data_file: Some(
                dir.path()
                    .join(format!("e{raw}.data"))
                    .to_str()
                    .unwrap()
                    .into(),
            ),
            data_file_raw: raw,
            ..Default::default()
        };
        create_path(&p, &opts).unwrap();
        check_clean(&p);
        let o = Command::new("qemu-io")
            .args(["-c", "write -P 0x42 1M 100k", p.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let mut model = vec![0u8; SIZE as usize];
        model[1 << 20..(1 << 20) + 100 * 1024].fill(0x42);
        {
            let dev = open(&p);
            workload(&dev, &mut model, 40 + raw as u64, 120);
        }
        check_clean(&p);
        assert!(qemu_content(&p) == model, "data file (raw={raw})");
        if raw {
            let data = std::fs::read(dir.path().join("etrue.data")).unwrap();
            assert!(data == model, "a raw data file holds the disk as it is");
        }
    }
}

#[test]
fn tiny_caches_evict_and_write_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    for cs in [512u32, 4096] {
        let p = new_image(
            dir.path(),
            &format!("tiny{cs}.qcow2"),
            CreateOptions {
                size: SIZE,
                cluster_size: cs,
                ..Default::default()
            },
        );
        let opts = Qcow2Options {
            l2_cache_bytes: Some(2 * u64::from(cs)),
            refcount_cache_bytes: Some(2 * u64::from(cs)),
            ..Default::default()
        };
        let mut model = vec![0u8; SIZE as usize];
        {
            let dev = Qcow2Dev::open(&p, &opts).unwrap();
            workload(&dev, &mut model, 300 + u64::from(cs), 150);
        }
        check_clean(&p);
        assert!(qemu_content(&p) == model, "tiny caches, {cs}-byte clusters");
    }
}

#[test]
fn write_through_makes_every_completed_write_durable_without_flush() {
    use vstor_blockdev::image::MemImage;
    use vstor_blockdev::CacheMode;
    let file = Arc::new(MemImage::new(Vec::new(), 64 << 20));
    qcow2::create(
        &*file,
        &CreateOptions {
            size: SIZE,
            ..Default::default()
        },
    )
    .unwrap();
    let wt = Qcow2Options {
        cache: CacheMode::Writethrough,
        ..Default::default()
    };
    let as_file: Arc<dyn ImageFile> = file.clone();
    let dev = Qcow2Dev::open_file(as_file, &wt, None).unwrap();
    assert!(
        !dev.info().write_cache,
        "write-through: no volatile cache to flush"
    );
    let mut q = dev.open_queue(&QueueOptions { depth: 4 }).unwrap();
    let mut a = vec![0xa1u8; 4096];
    run(&mut *q, IoOp::Write, 3 << 20, &mut a, 4096);
    dev.write_at(&[0xb2; 512], 5 << 20).unwrap();
    run(
        &mut *q,
        IoOp::WriteZeroes { may_unmap: false },
        1 << 20,
        &mut [],
        65536,
    );
    // "Crash": take the bytes as they are, with no flush and no close.
    let crashed: Arc<dyn ImageFile> = Arc::new(MemImage::new(file.bytes(), 64 << 20));
    let ro = Qcow2Options {
        read_only: true,
        ..Default::default()
    };
    let after = Qcow2Dev::open_file(crashed, &ro, None).unwrap();
    let mut b = vec![0u8; 4096];
    after.read_at(&mut b, 3 << 20).unwrap();
    assert!(b.iter().all(|&x| x == 0xa1), "queued write durable");
    after.read_at(&mut b[..512], 5 << 20).unwrap();
    assert!(b[..512].iter().all(|&x| x == 0xb2), "sync write durable");
    assert!(
        after.map(1 << 20, 65536).unwrap().zero,
        "write-zeroes durable"
    );
    drop(q);
}

#[test]
fn writers_clear_the_bitmaps_autoclear_bit() {
    let dir = tempfile::tempdir().unwrap();
    let p = new_image(
        dir.path(),
        "bm.qcow2",
        CreateOptions {
            size: SIZE,
            ..Default::default()
        },
    );
    let o = qemu_img(&["bitmap", "--add", p.to_str().unwrap(), "b0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let autoclear = |p: &Path| {
        vstor_blockdev::qcow2::Header::read(
            &FileImage::open(
                p,
                &OpenOptions {
                    read_only: true,
                    ..Default::default()
                },
            )
            .unwrap(),
        )
        .unwrap()
        .autoclear_features
    };
    assert_eq!(autoclear(&p) & 1, 1, "qemu-img set the bitmaps bit");
    // Read-only: untouched.
    drop(
        Qcow2Dev::open(
            &p,
            &Qcow2Options {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    assert_eq!(autoclear(&p) & 1, 1);
    // Read-write: cleared, since vstor does not update the bitmap on writes.
    let dev = open(&p);
    dev.write_at(&[1u8; 4096], 0).unwrap();
    dev.close().unwrap();
    drop(dev);
    assert_eq!(autoclear(&p) & 1, 0);
    // The bitmap's clusters are now unreferenced: leaks (exit 3), never corruption (exit 2).
    let o = qemu_img(&["check", p.to_str().unwrap()]);
    assert!(
        matches!(o.status.code(), Some(0) | Some(3)),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}
