//! qcow2 interoperability with QEMU (qemu-img / qemu-io 7.2 or later).
//!
//! QEMU → vstor: images of every layout qemu-img makes (cluster sizes, compat levels, refcount
//! widths, lazy refcounts, extended L2, compression, preallocation, backing chains, zero
//! clusters, discards, internal snapshots), written by qemu-io at unaligned offsets, must read
//! byte-for-byte like `qemu-img convert -O raw` through both the synchronous path and a queue,
//! and `map` must agree with `qemu-img map`.
//!
//! vstor → QEMU: vstor writes (sync and queued, aligned and not, allocating and overwriting,
//! write-zeroes, discard) on such images; `qemu-img check` must be clean and `qemu-img
//! compare` must match a model of the content.

mod common;

use std::sync::Arc;

use common::qcow2::{
    assert_reads, check_variant, make_chain, open_rw, qemu_writes, size_for, tmpdir, variant,
    write_and_check, write_and_check_opts, Variant, KIB, MIB,
};
use common::qemu::{
    assert_check_clean, assert_compare, convert_to_raw, create_qcow2, first_diff, qemu_img,
    qemu_io, require_qemu,
};
use common::queue::{run_queue, Req};
use vstor_blockdev::qcow2::{Qcow2Dev, Qcow2Options};
use vstor_blockdev::{BlockDev, IoOp, QueueOptions};

#[test]
fn read_cluster_sizes() {
    if !require_qemu() {
        return;
    }
    let d = tmpdir();
    for cs in [512, 4 * KIB, 64 * KIB, 2 * MIB] {
        for compat in ["0.10", "1.1"] {
            let name = format!("cs{cs}-compat{compat}");
            let opts = format!("cluster_size={cs},compat={compat}");
            check_variant(
                &variant(d.path(), &name, &opts, cs, size_for(cs), cs),
                d.path(),
            );
        }
    }
}

#[test]
fn read_refcount_widths_and_lazy_refcounts() {
    if !require_qemu() {
        return;
    }
    let d = tmpdir();
    for bits in [1, 2, 4, 8, 16, 32, 64] {
        let name = format!("refcount{bits}");
        let opts = format!("cluster_size=4096,refcount_bits={bits}");
        check_variant(
            &variant(d.path(), &name, &opts, 4096, 4 * MIB, bits),
            d.path(),
        );
    }
    let opts = "cluster_size=65536,lazy_refcounts=on";
    check_variant(
        &variant(d.path(), "lazy", opts, 65536, 4 * MIB, 99),
        d.path(),
    );
    // Left dirty: qemu-io aborts after writing with lazy refcounts (the dirty bit stays set).
    let path = d.path().join("lazy-dirty.qcow2");
    create_qcow2(&path, opts, 4 * MIB);
    let v = Variant {
        name: "lazy-dirty".into(),
        path,
        cs: 65536,
        map: false,
    };
    let mut cmds = vec!["-f".to_string(), "qcow2".to_string()];
    for c in qemu_writes(65536, 4 * MIB, 98, 24) {
        cmds.push("-c".into());
        cmds.push(c);
    }
    cmds.extend(["-c".into(), "abort".into(), v.path.display().to_string()]);
    let args: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let out = common::qemu::run_raw("qemu-io", &args);
    assert!(!out.status.success(), "qemu-io abort should fail");
    let bytes = std::fs::read(&v.path).unwrap();
    assert_eq!(bytes[79] & 1, 1, "qemu-io abort left the image clean");
    // Read-only: no repair, the data must still read right (qemu-img convert repairs in
    // memory only).
    check_variant(&v, d.path());
    // Read-write: vstor repairs the refcounts (as QEMU does on a read-write open), after
    // which qemu-img check is clean and the content unchanged.
    let expected = convert_to_raw(&v.path, d.path());
    open_rw(&v.path).close().unwrap();
    let c = common::qemu::check(&v.path);
    assert!(
        c.clean(),
        "dirty lazy-refcount image after vstor open/close: {}",
        c.text
    );
    let raw = d.path().join("lazy-dirty.raw");
    std::fs::write(&raw, &expected).unwrap();
    assert_compare(&v.path, &raw);
}

#[test]
fn read_extended_l2() {
    if !require_qemu() {
        return;
    }
    let d = tmpdir();
    for cs in [64 * KIB, 2 * MIB] {
        let name = format!("extl2-cs{cs}");
        let opts = format!("cluster_size={cs},extended_l2=on");
        let v = variant(d.path(), &name, &opts, cs, size_for(cs), cs + 1);
        // Subcluster zeroes, and a zero cluster without allocation.
        let sc = cs / 32;
        qemu_io(
            &v.path,
            &[
                format!("write -z {} {}", sc * 3, sc * 2),
                format!("write -z -u {} {}", cs * 4, cs),
                format!("write -P 0x77 {} {}", cs * 4 + sc + 3, sc - 5),
                format!("discard {} {}", cs * 5, cs),
            ],
        );
        check_variant(&v, d.path());
    }
}

#[test]
fn read_compressed() {
    if !require_qemu() {
        return;
    }
    let d = tmpdir();
    for ctype in ["zlib", "zstd"] {
        for cs in [4 * KIB, 64 * KIB] {
            let src = variant(d.path(), &format!("src-{ctype}-{cs}"), "", cs, 4 * MIB, 7);
            let path = d.path().join(format!("compressed-{ctype}-{cs}.qcow2"));
            let opts = format!("cluster_size={cs},compression_type={ctype}");
            qemu_img(&[
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                &opts,
                src.path.to_str().unwrap(),
                path.to_str().unwrap(),
            ]);
            // Some uncompressed clusters on top of the compressed ones.
            qemu_io(&path, &[format!("write -P 0x66 {} {}", cs * 2 + 100, cs)]);
            let name = format!("compressed-{ctype}-cs{cs}");
            check_variant(
                &Variant {
                    name,
                    path,
                    cs,
                    map: true,
                },
                d.path(),
            );
        }
    }
}

#[test]
fn read_preallocated() {
    if !require_qemu() {
        return;
    }
    let d = tmpdir();
    for p in ["metadata", "falloc", "full"] {
        let opts = format!("cluster_size=65536,preallocation={p}");
        let mut v = variant(d.path(), &format!("prealloc-{p}"), &opts, 65536, 4 * MIB, 3);
        v.map = p != "metadata";
        check_variant(&v, d.path());
    }
}

#[test]
fn read_backing_chain() {
    if !require_qemu() {
        return;
    }
    let d = tmpdir();
    for (tag, extra, cs) in [
        ("plain", "", 65536),
        ("small", "", 4096),
        ("extl2", "extended_l2=on", 65536),
        ("v2", "compat=0.10", 65536),
    ] {
        let top = make_chain(d.path(), tag, extra, cs, 4 * MIB);
        check_variant(
            &Variant {
                name: format!("chain-{tag}"),
                path: top,
                cs,
                map: true,
            },
            d.path(),
        );
    }
}

#[test]
fn read_zero_discard_snapshots() {
    if !require_qemu() {
        return;
    }
    let d = tmpdir();
    for cs in [4096, 65536] {
        let v = variant(
            d.path(),
            &format!("zeroes-{cs}"),
            &format!("cluster_size={cs}"),
            cs,
            4 * MIB,
            5,
        );
        qemu_io(
            &v.path,
            &[
                format!("write -z {} {}", cs * 3, cs * 2),
                format!("write -z -u {} {}", cs * 6, cs * 3),
                format!("write -z {} {}", cs * 10 + 100, 1000),
                format!("discard {} {}", 0, cs * 2),
                format!("discard {} {}", cs * 20 + 512, cs),
            ],
        );
        check_variant(&v, d.path());

        let s = variant(
            d.path(),
            &format!("snap-{cs}"),
            &format!("cluster_size={cs}"),
            cs,
            4 * MIB,
            6,
        );
        qemu_img(&["snapshot", "-c", "s1", s.path.to_str().unwrap()]);
        qemu_io(&s.path, &qemu_writes(cs, 4 * MIB, 60, 10));
        qemu_img(&["snapshot", "-c", "s2", s.path.to_str().unwrap()]);
        qemu_io(&s.path, &qemu_writes(cs, 4 * MIB, 61, 10));
        check_variant(&s, d.path());
    }
}

#[test]
fn write_fresh_images() {
    if !require_qemu() {
        return;
    }
    let d = tmpdir();
    for (tag, opts, cs) in [
        ("cs512", "cluster_size=512", 512),
        ("cs4k", "cluster_size=4096", 4096),
        ("cs64k", "cluster_size=65536", 65536),
        ("cs2m", "cluster_size=2097152", 2 * MIB),
        ("v2", "cluster_size=65536,compat=0.10", 65536),
        ("rc1", "cluster_size=4096,refcount_bits=1", 4096),
        ("rc4", "cluster_size=4096,refcount_bits=4", 4096),
        ("rc64", "cluster_size=4096,refcount_bits=64", 4096),
        ("lazy", "cluster_size=65536,lazy_refcounts=on", 65536),
        ("extl2", "cluster_size=65536,extended_l2=on", 65536),
        (
            "prealloc-meta",
            "cluster_size=65536,preallocation=metadata",
            65536,
        ),
        (
            "prealloc-full",
            "cluster_size=65536,preallocation=full",
            65536,
        ),
    ] {
        let path = d.path().join(format!("w-{tag}.qcow2"));
        let size = size_for(cs).min(16 * MIB);
        create_qcow2(&path, opts, size);
        write_and_check(&path, d.path(), cs, cs ^ 0x5eed, tag);
        // A second session over the now-populated image (overwrites).
        write_and_check(&path, d.path(), cs, cs ^ 0xbeef, &format!("{tag}-again"));
    }
}

#[test]
fn write_over_backing_chain() {
    if !require_qemu() {
        return;
    }
    let d = tmpdir();
    for (tag, extra, cs) in [
        ("wplain", "", 65536),
        ("wsmall", "", 4096),
        ("wextl2", "extended_l2=on", 65536),
        ("wv2", "compat=0.10", 65536),
    ] {
        let top = make_chain(d.path(), tag, extra, cs, 4 * MIB);
        write_and_check(&top, d.path(), cs, 42, tag);
    }
}

#[test]
fn write_with_snapshots_and_compressed() {
    if !require_qemu() {
        return;
    }
    let d = tmpdir();
    for cs in [4096u64, 65536] {
        let v = variant(
            d.path(),
            &format!("ws-{cs}"),
            &format!("cluster_size={cs}"),
            cs,
            4 * MIB,
            8,
        );
        qemu_img(&["snapshot", "-c", "s1", v.path.to_str().unwrap()]);
        let s1 = convert_to_raw(&v.path, d.path());
        write_and_check(&v.path, d.path(), cs, 77, &format!("snap-{cs}"));
        // The snapshot still holds its old content (shared clusters were copied, not
        // overwritten).
        let snap_raw = d.path().join("s1.raw");
        qemu_img(&[
            "convert",
            "-l",
            "snapshot.name=s1",
            "-O",
            "raw",
            v.path.to_str().unwrap(),
            snap_raw.to_str().unwrap(),
        ]);
        let got = std::fs::read(&snap_raw).unwrap();
        if let Some(diff) = first_diff(&got, &s1) {
            panic!("snapshot s1 changed by vstor writes (cs {cs}): {diff}");
        }
    }
    for ctype in ["zlib", "zstd"] {
        let src = variant(d.path(), &format!("wc-src-{ctype}"), "", 65536, 4 * MIB, 9);
        let path = d.path().join(format!("wc-{ctype}.qcow2"));
        qemu_img(&[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            &format!("cluster_size=65536,compression_type={ctype}"),
            src.path.to_str().unwrap(),
            path.to_str().unwrap(),
        ]);
        write_and_check(&path, d.path(), 65536, 31, &format!("compressed-{ctype}"));
    }
}

#[test]
fn write_compressed_clusters() {
    if !require_qemu() {
        return;
    }
    let d = tmpdir();
    for ctype in ["zlib", "zstd"] {
        let path = d.path().join(format!("wcc-{ctype}.qcow2"));
        create_qcow2(
            &path,
            &format!("cluster_size=65536,compression_type={ctype}"),
            4 * MIB,
        );
        let dev = open_rw(&path);
        let mut model = vec![0u8; 4 * MIB as usize];
        for i in [0u64, 1, 5, 17, 63] {
            let off = i * 65536;
            let mut c = common::qemu::pattern(i as u8, off, 65536);
            c[..30000].fill(i as u8); // compressible
            dev.write_compressed(off, &c)
                .unwrap_or_else(|e| panic!("write_compressed({off}): {e}"));
            model[off as usize..off as usize + 65536].copy_from_slice(&c);
        }
        // Overwrite part of a compressed cluster (decompress + copy on write).
        let b = common::qemu::pattern(200, 65536 + 1000, 5000);
        dev.write_at(&b, 65536 + 1000).unwrap();
        model[65536 + 1000..65536 + 6000].copy_from_slice(&b);
        dev.close().unwrap();
        let raw = d.path().join(format!("wcc-{ctype}.raw"));
        std::fs::write(&raw, &model).unwrap();
        assert_check_clean(&path);
        assert_compare(&path, &raw);
    }
}

#[test]
fn odd_sizes_and_short_backing() {
    if !require_qemu() {
        return;
    }
    let d = tmpdir();
    // A virtual size that ends inside a cluster (and inside an L2 table's range).
    let size = 3 * MIB + 65536 + 1536;
    let mut v = variant(d.path(), "odd-size", "cluster_size=65536", 65536, size, 21);
    qemu_io(&v.path, &[format!("write -P 0x3c {} 1536", size - 1536)]);
    check_variant(&v, d.path());
    write_and_check(&v.path, d.path(), 65536, 22, "odd-size-w");
    // A backing file shorter than the image: past its end, unallocated clusters read zeroes
    // (and QEMU's map reports them as zero at depth 0).
    let base = d.path().join("short-base.raw");
    std::fs::write(&base, common::qemu::pattern(0x99, 0, (MIB + 4096) as usize)).unwrap();
    let top = d.path().join("short-top.qcow2");
    create_qcow2(
        &top,
        &format!(
            "cluster_size=65536,backing_file={},backing_fmt=raw",
            base.display()
        ),
        4 * MIB,
    );
    qemu_io(&top, &qemu_writes(65536, 4 * MIB, 23, 8));
    v = Variant {
        name: "short-backing".into(),
        path: top.clone(),
        cs: 65536,
        map: true,
    };
    check_variant(&v, d.path());
    write_and_check(&top, d.path(), 65536, 24, "short-backing-w");
}

/// Many queued writes into the same few unallocated clusters at once (distinct sectors), from
/// one queue and from two queues on two threads: the allocations must not race (one host
/// cluster per guest cluster, no lost sector, backing data kept around the writes).
#[test]
fn queued_writes_racing_on_one_cluster() {
    if !require_qemu() {
        return;
    }
    let d = tmpdir();
    for (tag, extra) in [("plain", ""), ("extl2", "extended_l2=on")] {
        let top = make_chain(d.path(), &format!("race-{tag}"), extra, 65536, 4 * MIB);
        let fresh = d.path().join(format!("race-fresh-{tag}.qcow2"));
        let o = if extra.is_empty() {
            "cluster_size=65536".to_string()
        } else {
            format!("cluster_size=65536,{extra}")
        };
        create_qcow2(&fresh, &o, 4 * MIB);
        for path in [&top, &fresh] {
            let mut model = convert_to_raw(path, d.path());
            let dev = open_rw(path);
            // Clusters 40..44 of the guest: every 3rd sector of each, then the rest.
            let mut reqs = Vec::new();
            for c in 40..44u64 {
                for s in (0..128u64).step_by(3) {
                    let off = c * 65536 + s * 512;
                    reqs.push(Req {
                        op: IoOp::Write,
                        offset: off,
                        len: 512,
                        buf: common::qemu::pattern((c + s) as u8, off, 512),
                    });
                }
            }
            let mut q = dev.open_queue(&QueueOptions { depth: 64 }).unwrap();
            for r in run_queue(q.as_mut(), reqs) {
                model[r.offset as usize..(r.offset + r.len) as usize].copy_from_slice(&r.buf);
            }
            drop(q);
            // Two queues on two threads, interleaved sectors of clusters 50..52.
            std::thread::scope(|sc| {
                for t in 0..2u64 {
                    let dev = &dev;
                    sc.spawn(move || {
                        let mut q = dev.open_queue(&QueueOptions { depth: 32 }).unwrap();
                        let reqs = (50..52u64)
                            .flat_map(|c| (t..128).step_by(2).map(move |s| (c, s)))
                            .map(|(c, s)| {
                                let off = c * 65536 + s * 512;
                                Req {
                                    op: IoOp::Write,
                                    offset: off,
                                    len: 512,
                                    buf: common::qemu::pattern((c * 3 + s) as u8, off, 512),
                                }
                            })
                            .collect();
                        run_queue(q.as_mut(), reqs);
                    });
                }
            });
            for c in 50..52u64 {
                for s in 0..128u64 {
                    let off = (c * 65536 + s * 512) as usize;
                    model[off..off + 512].copy_from_slice(&common::qemu::pattern(
                        (c * 3 + s) as u8,
                        off as u64,
                        512,
                    ));
                }
            }
            dev.close().unwrap();
            let raw = d.path().join("race.expected.raw");
            std::fs::write(&raw, &model).unwrap();
            assert_check_clean(path);
            assert_compare(path, &raw);
            eprintln!("race {tag} {}: ok", path.display());
        }
    }
}

/// Metadata caches far smaller than the working set (every L2 table and refcount block is
/// evicted and reloaded over and over, dirty ones written back on eviction).
#[test]
fn write_with_tiny_caches() {
    if !require_qemu() {
        return;
    }
    let d = tmpdir();
    let opts = Qcow2Options {
        l2_cache_bytes: Some(1024),
        refcount_cache_bytes: Some(1024),
        ..Default::default()
    };
    for (tag, o, cs) in [
        ("tiny-512", "cluster_size=512", 512u64),
        ("tiny-4k-rc2", "cluster_size=4096,refcount_bits=2", 4096),
        ("tiny-extl2", "cluster_size=16384,extended_l2=on", 16384),
    ] {
        let path = d.path().join(format!("{tag}.qcow2"));
        create_qcow2(&path, o, 8 * MIB);
        write_and_check_opts(&path, d.path(), cs, 5, tag, &opts);
        write_and_check_opts(&path, d.path(), cs, 6, &format!("{tag}-again"), &opts);
        // And reading it back with tiny caches.
        let dev = Qcow2Dev::open(
            &path,
            &Qcow2Options {
                read_only: true,
                ..opts.clone()
            },
        )
        .unwrap();
        let expected = convert_to_raw(&path, d.path());
        assert_reads(&dev, &expected, tag);
    }
}

/// Reads of bytes next to an allocating (copy-on-write) write in flight on the same cluster
/// must see the backing data, before, during and after the allocation.
#[test]
fn reads_beside_inflight_cow_writes() {
    if !require_qemu() {
        return;
    }
    let d = tmpdir();
    for (tag, extra) in [("plain", ""), ("extl2", "extended_l2=on")] {
        let top = make_chain(d.path(), &format!("cowread-{tag}"), extra, 65536, 4 * MIB);
        let before = convert_to_raw(&top, d.path());
        let dev = open_rw(&top);
        let mut q = dev.open_queue(&QueueOptions { depth: 64 }).unwrap();
        let mut reqs = Vec::new();
        for c in 32..48u64 {
            let base = c * 65536;
            reqs.push(Req {
                op: IoOp::Write,
                offset: base + 512,
                len: 1024,
                buf: common::qemu::pattern(c as u8, base + 512, 1024),
            });
            for (o, l) in [(0u64, 512u64), (4096, 4096), (60000, 5536)] {
                reqs.push(Req {
                    op: IoOp::Read,
                    offset: base + o,
                    len: l,
                    buf: vec![0xee; l as usize],
                });
            }
        }
        let mut model = before.clone();
        for r in run_queue(q.as_mut(), reqs) {
            let range = r.offset as usize..(r.offset + r.len) as usize;
            match r.op {
                IoOp::Read => {
                    if let Some(diff) = common::qemu::first_diff(&r.buf, &before[range]) {
                        panic!(
                            "{tag}: read at {} beside an in-flight COW write: {diff}",
                            r.offset
                        );
                    }
                }
                _ => model[range].copy_from_slice(&r.buf),
            }
        }
        drop(q);
        dev.close().unwrap();
        let raw = d.path().join("cowread.raw");
        std::fs::write(&raw, &model).unwrap();
        assert_check_clean(&top);
        assert_compare(&top, &raw);
    }
}

/// A host cluster freed by a discard (in a file whose discard keeps the old bytes, like
/// MemImage) and then reused by a partial write must not expose its old content: the rest
/// of the new cluster reads as zeroes (or backing data).
#[test]
fn reused_clusters_do_not_leak_old_data() {
    use vstor_blockdev::image::{ImageFile, MemImage};
    for cs in [4096u64, 65536] {
        for ext in [false, true] {
            if ext && cs < 16384 {
                continue;
            }
            let file: Arc<dyn ImageFile> = Arc::new(MemImage::new(Vec::new(), 64 << 20));
            vstor_blockdev::qcow2::create(
                &*file,
                &vstor_blockdev::qcow2::CreateOptions {
                    size: 4 * MIB,
                    cluster_size: cs as u32,
                    extended_l2: ext,
                    ..Default::default()
                },
            )
            .unwrap();
            let dev = Qcow2Dev::open_file(file.clone(), &Qcow2Options::default(), None).unwrap();
            let secret = vec![0xa5u8; (8 * cs) as usize];
            dev.write_at(&secret, 0).unwrap();
            dev.flush().unwrap();
            let old_hosts: Vec<u64> = (0..8)
                .filter_map(|i| dev.map(i * cs, cs).unwrap().offset)
                .collect();
            let mut q = dev.open_queue(&QueueOptions { depth: 8 }).unwrap();
            for op in [IoOp::Discard, IoOp::WriteZeroes { may_unmap: true }] {
                let (off, len) = if op == IoOp::Discard {
                    (0, 4 * cs)
                } else {
                    (4 * cs, 4 * cs)
                };
                run_queue(
                    q.as_mut(),
                    vec![Req {
                        op,
                        offset: off,
                        len,
                        buf: Vec::new(),
                    }],
                );
            }
            drop(q);
            dev.flush().unwrap();
            // Partial writes into fresh guest clusters, which may get the freed host clusters.
            for i in 0..8u64 {
                dev.write_at(&[0x11u8; 512], (20 + i) * cs + 1024).unwrap();
            }
            let reused = (0..8)
                .filter_map(|i| dev.map((20 + i) * cs, cs).unwrap().offset)
                .filter(|h| old_hosts.contains(h))
                .count();
            eprintln!("cs {cs} extl2 {ext}: {reused} of 8 new clusters reuse freed host clusters");
            let mut got = vec![0u8; (8 * cs) as usize];
            dev.read_at(&mut got, 20 * cs).unwrap();
            for i in 0..8u64 {
                let c = &got[(i * cs) as usize..((i + 1) * cs) as usize];
                assert!(
                    c[..1024].iter().all(|&b| b == 0)
                        && c[1024..1536].iter().all(|&b| b == 0x11)
                        && c[1536..].iter().all(|&b| b == 0),
                    "cs {cs} extl2 {ext}: guest cluster {} exposes old data: first bytes {:02x?}",
                    20 + i,
                    &c[..16]
                );
            }
            let mut z = vec![1u8; (8 * cs) as usize];
            dev.read_at(&mut z, 0).unwrap();
            assert!(
                z.iter().all(|&b| b == 0 || b == 0xa5),
                "cs {cs}: discarded range"
            );
            assert!(
                z[(4 * cs) as usize..].iter().all(|&b| b == 0),
                "cs {cs}: write-zeroes range"
            );
            dev.close().unwrap();
        }
    }
}

/// External data files (`data_file=`, with and without `data_file_raw`): read what qemu-io
/// wrote, then write through vstor and let QEMU check and compare.
#[test]
fn external_data_file() {
    if !require_qemu() {
        return;
    }
    let d = tmpdir();
    for raw in ["off", "on"] {
        let data = d.path().join(format!("ext-{raw}.data"));
        let o = format!(
            "cluster_size=65536,data_file={},data_file_raw={raw}",
            data.display()
        );
        let v = variant(
            d.path(),
            &format!("datafile-raw-{raw}"),
            &o,
            65536,
            4 * MIB,
            31,
        );
        qemu_io(&v.path, &[format!("write -z {} {}", 65536 * 3, 65536 * 2)]);
        check_variant(&v, d.path());
        write_and_check(
            &v.path,
            d.path(),
            65536,
            32,
            &format!("datafile-raw-{raw}-w"),
        );
    }
}
