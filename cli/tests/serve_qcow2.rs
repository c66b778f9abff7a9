//! End-to-end tests of `vstor serve blk` on qcow2 images: the real binary serves images made
//! by `qemu-img create`, libblkio (a real vhost-user-blk frontend) writes patterned data at
//! cluster-aligned and unaligned offsets from several queues, discards and writes zeroes; after
//! the server stopped, `qemu-img check` must be clean and `qemu-img compare` / `qemu-img
//! convert -O raw` must show exactly what the test's model of the disk holds.
//!
//! Also: a raw image whose format was *probed* refuses a guest write that would put an image
//! signature into sector 0, and accepts it with `--format raw`.
//!
//! `VSTOR_TEST_SERVER=qsd cargo test -p vstor-cli --test serve_qcow2` runs the qcow2 tests
//! against qemu-storage-daemon, which checks the tests themselves.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use blkio::ReqFlags;
use common::*;

const CLUSTER: u64 = 64 * KIB;
const DISK: u64 = 32 * MIB;
const SEED: u64 = 0x9c02_0001;

// ------------------------------------------------------------------------------------------
// Host-side tools

/// Runs a command, panicking with its output unless it exits 0; returns its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} exited with {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn qemu_img(args: &[&str], paths: &[&Path]) -> String {
    run(Command::new("qemu-img").args(args).args(paths))
}

/// The guest-visible contents of `img` through `qemu-img convert -O raw`.
fn qemu_flat(img: &Path, dir: &Path) -> Vec<u8> {
    let flat = dir.join("flat.raw");
    let _ = fs::remove_file(&flat);
    qemu_img(&["convert", "-f", "qcow2", "-O", "raw"], &[img, &flat]);
    let data = fs::read(&flat).expect("read the converted image");
    fs::remove_file(&flat).expect("remove the converted image");
    data
}

/// After the server stopped: the image is clean for `qemu-img check`, its dirty bit is clear,
/// and its contents equal `model` for `qemu-img compare` and `qemu-img convert -O raw`.
fn check_image(img: &Path, dir: &Path, model: &[u8]) {
    let out = qemu_img(&["check", "-f", "qcow2"], &[img]);
    assert!(
        out.contains("No errors were found"),
        "qemu-img check:\n{out}"
    );
    let mut header = [0u8; 80];
    fs::File::open(img)
        .unwrap()
        .read_exact_at(&mut header, 0)
        .unwrap();
    let incompat = u64::from_be_bytes(header[72..80].try_into().unwrap());
    assert_eq!(
        incompat & 1,
        0,
        "dirty bit still set after the server exited"
    );

    let want = dir.join("expected.raw");
    fs::write(&want, model).unwrap();
    qemu_img(
        &["compare", "-q", "-f", "raw", "-F", "qcow2"],
        &[&want, img],
    );
    fs::remove_file(&want).unwrap();
    let got = qemu_flat(img, dir);
    assert_eq!(got.len(), model.len(), "converted image size");
    if let Some(i) = got.iter().zip(model).position(|(a, b)| a != b) {
        panic!(
            "qemu-img convert: byte {i:#x} is {:#04x}, model says {:#04x}",
            got[i], model[i]
        );
    }
}

// ------------------------------------------------------------------------------------------
// The server

/// `vstor serve blk` (or qemu-storage-daemon) on an image with an optional `--format`;
/// killed on drop.
struct Served {
    child: Option<Child>,
    socket: PathBuf,
    stderr_path: PathBuf,
}

impl Served {
    /// `extra`: more `vstor serve blk` arguments (qemu-storage-daemon ignores them).
    fn start(
        dir: &Path,
        image: &Path,
        format: Option<&str>,
        queues: u16,
        extra: &[&str],
    ) -> Served {
        let socket = dir.join("blk.sock");
        let _ = fs::remove_file(&socket);
        let stderr_path = dir.join("server.stderr");
        let stderr = fs::File::create(&stderr_path).unwrap();
        let peer = Peer::from_env();
        let mut cmd = match peer {
            Peer::Vstor => {
                let mut c = Command::new(vstor_bin());
                c.args(["serve", "blk", "--image"])
                    .arg(image)
                    .arg("--socket")
                    .arg(&socket)
                    .args(["--queues", &queues.to_string()]);
                if let Some(f) = format {
                    c.args(["--format", f]);
                }
                c.args(extra);
                c.env("RUST_LOG", "info");
                c
            }
            Peer::Qsd => {
                let fmt = format.unwrap_or("qcow2");
                let blockdev = format!(
                    "driver={fmt},node-name=img,discard=unmap,file.driver=file,file.filename={}",
                    image.display()
                );
                let export = format!(
                    "type=vhost-user-blk,id=exp,node-name=img,addr.type=unix,addr.path={},writable=on,num-queues={queues}",
                    socket.display()
                );
                let mut c = Command::new("qemu-storage-daemon");
                c.args(["--blockdev", &blockdev, "--export", &export]);
                c
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn server");
        let mut s = Served {
            child: Some(child),
            socket,
            stderr_path,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(st) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("server exited during startup with {st}:\n{}", s.stderr());
            }
            let announced = peer == Peer::Qsd || s.stderr().contains("listening on");
            if announced && s.socket.exists() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "server did not listen within {STARTUP_TIMEOUT:?}:\n{}",
                s.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn client(&self, queues: i32) -> Client {
        let opts = ClientOpts {
            queues,
            mem: 32 * MIB as usize,
            ..ClientOpts::default()
        };
        Client::try_connect(&self.socket, opts)
            .unwrap_or_else(|e| panic!("connect: {e}; server stderr:\n{}", self.stderr()))
    }

    /// SIGTERM; the server must exit 0 within the bound (it closes the image on the way out).
    fn stop_ok(mut self) {
        let mut child = self.child.take().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not exit after SIGTERM:\n{}", self.stderr());
            }
            thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "server exited with {status}:\n{}",
            self.stderr()
        );
        let log = self.stderr();
        assert!(!log.contains("panicked"), "server panicked:\n{log}");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ------------------------------------------------------------------------------------------
// I/O helpers

/// The largest request the device takes (libblkio's `max-transfer`, 0 = no limit), capped at
/// 1 MiB (the test's buffers).
fn max_io(c: &Client) -> usize {
    match c.get_i32("max-transfer") {
        n if n > 0 => (n as usize).min(MIB as usize),
        _ => MIB as usize,
    }
}

/// Writes `model[off..off + len]` through the device in pieces of at most `max`.
fn write_from_model(q: &mut blkio::Blkioq, buf: Buf, model: &[u8], off: u64, len: u64, max: usize) {
    let mut pos = off;
    while pos < off + len {
        let n = ((off + len - pos) as usize).min(max);
        let mut b = buf.split(&[n])[0];
        b.as_mut_slice()
            .copy_from_slice(&model[pos as usize..pos as usize + n]);
        assert_eq!(write(q, pos, b), 0, "write {pos:#x}+{n:#x}");
        pos += n as u64;
    }
}

/// Reads `off..off + len` through the device in pieces of at most `max`.
fn read_range(q: &mut blkio::Blkioq, buf: Buf, off: u64, len: u64, max: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len as usize);
    let mut pos = off;
    while pos < off + len {
        let n = ((off + len - pos) as usize).min(max);
        let mut b = buf.split(&[n])[0];
        b.as_mut_slice().fill(0xa5);
        assert_eq!(read(q, pos, b), 0, "read {pos:#x}+{n:#x}");
        out.extend_from_slice(b.as_slice());
        pos += n as u64;
    }
    out
}

fn assert_model(got: &[u8], model: &[u8], off: u64, what: &str) {
    let want = &model[off as usize..off as usize + got.len()];
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: disk offset {:#x} reads {:#04x}, model says {:#04x}",
            off + i as u64,
            got[i],
            want[i]
        );
    }
}

// ------------------------------------------------------------------------------------------
// The workload

/// Serves `img` and runs the whole workload, keeping `model` (the expected guest view) up to
/// date; stops the server, checks the image with qemu-img, then serves it again and reads it
/// all back.
fn exercise(dir: &Path, img: &Path, format: Option<&str>, model: &mut [u8], extra: &[&str]) {
    let server = Served::start(dir, img, format, 4, extra);
    let mut c = server.client(4);
    assert_eq!(c.capacity(), DISK);
    let max = max_io(&c);
    let wbuf = c.alloc(MIB as usize);
    let rbuf = c.alloc(MIB as usize);
    let mq_bufs: Vec<Buf> = (0..4).map(|_| c.alloc(8 * 12 * KIB as usize)).collect();
    let mut queues = std::mem::take(&mut c.queues);

    // 1. One queue: cluster-aligned and unaligned writes, each read back at once.
    let cases: [(u64, u64); 10] = [
        (0, CLUSTER),                            // one whole cluster
        (3 * CLUSTER, 4 * KIB),                  // start of a cluster
        (5 * CLUSTER - 512, 1024),               // straddles a cluster boundary
        (7 * CLUSTER + 1536, 3 * CLUSTER + 512), // unaligned, four clusters
        (20 * CLUSTER + 512, MIB),               // large, unaligned
        (3 * CLUSTER + 1024, 2048),              // rewrite inside an allocated cluster
        (9 * CLUSTER - 4096, 8192),              // over the end of an earlier write
        (8 * MIB + 3 * 512, 5 * 512),            // into a backing-file hole (if any)
        (DISK - CLUSTER - 4096, CLUSTER + 4096), // up to the last byte
        (DISK - 512, 512),                       // the last sector again
    ];
    {
        let q = &mut queues[0];
        for (i, &(off, len)) in cases.iter().enumerate() {
            let r = off as usize..(off + len) as usize;
            fill_pattern(&mut model[r], off, SEED + i as u64);
            write_from_model(q, wbuf, model, off, len, max);
            let got = read_range(q, rbuf, off, len, max);
            assert_model(&got, model, off, &format!("read back write {i}"));
            // The clusters around it keep what they had (backing data or zeroes).
            let lo = off / CLUSTER * CLUSTER;
            let hi = ((off + len).div_ceil(CLUSTER) * CLUSTER).min(DISK);
            let got = read_range(q, rbuf, lo, hi - lo, max);
            assert_model(&got, model, lo, &format!("clusters around write {i}"));
        }
        assert_eq!(flush(q), 0);
    }

    // 2. Four queues at once. In 12..14 MiB they interleave 4 KiB writes inside the same
    //    (unallocated) clusters; each also writes 12 KiB pieces at odd offsets in its own
    //    MiB from 16 MiB.
    let shared = (12 * MIB, 2 * MIB);
    let mut mq_model = model.to_vec();
    fill_pattern(
        &mut mq_model[shared.0 as usize..(shared.0 + shared.1) as usize],
        shared.0,
        SEED + 100,
    );
    for i in 0..4u64 {
        let base = 16 * MIB + i * MIB + 512 * (i + 1);
        for k in 0..16u64 {
            let off = base + k * (12 * KIB + 4 * KIB);
            let r = off as usize..(off + 12 * KIB) as usize;
            fill_pattern(&mut mq_model[r], off, SEED + 200 + i);
        }
    }
    let mq_model_ref = &mq_model;
    thread::scope(|s| {
        for (i, (q, buf)) in queues.iter_mut().zip(mq_bufs.iter()).enumerate() {
            let buf = *buf;
            s.spawn(move || {
                let i = i as u64;
                // interleaved: block j goes to queue j % 4; batches of 8
                let blocks: Vec<u64> = (0..shared.1 / (4 * KIB))
                    .filter(|j| j % 4 == i)
                    .map(|j| shared.0 + j * 4 * KIB)
                    .collect();
                let own: Vec<u64> = (0..16u64)
                    .map(|k| 16 * MIB + i * MIB + 512 * (i + 1) + k * 16 * KIB)
                    .collect();
                for (list, len) in [(&blocks, 4 * KIB as usize), (&own, 12 * KIB as usize)] {
                    for batch in list.chunks(8) {
                        let mut slots = buf.split(&vec![len; batch.len()]);
                        for (b, &off) in slots.iter_mut().zip(batch) {
                            b.as_mut_slice()
                                .copy_from_slice(&mq_model_ref[off as usize..off as usize + len]);
                        }
                        let rets = batch_io(q, batch.len(), |q| {
                            for (k, (b, &off)) in slots.iter().zip(batch).enumerate() {
                                q.write(off, b.ptr, b.len, k, ReqFlags::empty());
                            }
                        });
                        assert!(rets.iter().all(|&r| r == 0), "queue {i}: {rets:?}");
                    }
                }
                assert_eq!(flush(q), 0);
            });
        }
    });
    model.copy_from_slice(&mq_model);
    let q = &mut queues[0];
    for off in [shared.0, 16 * MIB, 17 * MIB, 18 * MIB, 19 * MIB] {
        let len = if off == shared.0 { shared.1 } else { MIB };
        let got = read_range(q, rbuf, off, len, max);
        assert_model(&got, model, off, "after the multi-queue writes");
    }

    // 3. Write-zeroes (with and without NO_UNMAP; aligned and not; over written data, backing
    //    data and nothing) must read as zeroes; discards read as the old data or zeroes.
    let zeroes: [(u64, u64, ReqFlags); 4] = [
        (8 * CLUSTER, 2 * CLUSTER, ReqFlags::empty()),
        (20 * CLUSTER + 4096 + 512, 3 * CLUSTER, ReqFlags::NO_UNMAP),
        (24 * MIB + 1024, 3 * CLUSTER + 1024, ReqFlags::empty()),
        (12 * MIB + CLUSTER, CLUSTER, ReqFlags::NO_UNMAP),
    ];
    for &(off, len, flags) in &zeroes {
        let ret = sync_io(q, |q| q.write_zeroes(off, len, 0, flags));
        assert_eq!(ret, 0, "write-zeroes {off:#x}+{len:#x} {flags:?}");
        model[off as usize..(off + len) as usize].fill(0);
        let got = read_range(q, rbuf, off, len, max);
        assert_zeros(&got, off, "after write-zeroes");
    }
    let discards: [(u64, u64); 4] = [
        (0, CLUSTER),
        (3 * CLUSTER, 8192),
        (26 * MIB, 4 * CLUSTER),
        (14 * MIB - CLUSTER, 2 * CLUSTER),
    ];
    for &(off, len) in &discards {
        let ret = sync_io(q, |q| q.discard(off, len, 0, ReqFlags::empty()));
        assert_eq!(ret, 0, "discard {off:#x}+{len:#x}");
        let got = read_range(q, rbuf, off, len, max);
        for (s, sector) in got.chunks(512).enumerate() {
            let at = off as usize + s * 512;
            let old = &model[at..at + 512];
            assert!(
                sector == old || sector.iter().all(|&b| b == 0),
                "discarded sector {at:#x} reads neither its old data nor zeroes"
            );
        }
        // What the device now says is what qemu-img must see too.
        model[off as usize..(off + len) as usize].copy_from_slice(&got);
    }
    assert_eq!(flush(q), 0);

    // 4. Everything, through the device.
    let got = read_range(q, rbuf, 0, DISK, max);
    assert_model(&got, model, 0, "whole disk before stopping");
    drop(queues);
    drop(c);
    server.stop_ok();

    // 5. qemu-img's view, then vstor's own after a restart.
    check_image(img, dir, model);
    let server = Served::start(dir, img, format, 1, extra);
    let mut c = server.client(1);
    let rbuf = c.alloc(MIB as usize);
    let max = max_io(&c);
    let got = read_range(&mut c.queues[0], rbuf, 0, DISK, max);
    assert_model(&got, model, 0, "whole disk after a restart");
    drop(c);
    server.stop_ok();
    let out = qemu_img(&["check", "-f", "qcow2"], &[img]);
    assert!(
        out.contains("No errors were found"),
        "after the restart:\n{out}"
    );
}

fn create_qcow2(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let img = dir.join(name);
    let mut args = vec!["create", "-q", "-f", "qcow2", "-o", "cluster_size=65536"];
    args.extend_from_slice(extra);
    run(Command::new("qemu-img")
        .args(&args)
        .arg(&img)
        .arg(DISK.to_string()));
    img
}

#[test]
fn fresh_qcow2_probed() {
    let dir = temp_dir();
    let img = create_qcow2(dir.path(), "disk.qcow2", &[]);
    let mut model = vec![0u8; DISK as usize];
    exercise(dir.path(), &img, None, &mut model, &[]);
}

#[test]
fn extended_l2_qcow2() {
    let dir = temp_dir();
    let img = create_qcow2(dir.path(), "disk.qcow2", &["-o", "extended_l2=on"]);
    let info = qemu_img(&["info", "-f", "qcow2"], &[&img]);
    assert!(info.contains("extended l2: true"), "{info}");
    let mut model = vec![0u8; DISK as usize];
    exercise(dir.path(), &img, Some("qcow2"), &mut model, &[]);
}

/// A qcow2 over a raw backing file that holds a pattern everywhere except 8..10 MiB: every
/// partial-cluster write must copy the backing data around it, and write-zeroes must hide it.
#[test]
fn qcow2_over_raw_backing_file() {
    let dir = temp_dir();
    let base = dir.path().join("base.raw");
    let mut model = vec![0u8; DISK as usize];
    fill_pattern(&mut model, 0, SEED + 999);
    model[8 * MIB as usize..10 * MIB as usize].fill(0);
    fs::write(&base, &model).unwrap();
    let img = create_qcow2(
        dir.path(),
        "overlay.qcow2",
        &["-b", base.to_str().unwrap(), "-F", "raw"],
    );
    exercise(dir.path(), &img, Some("qcow2"), &mut model, &[]);
    // The backing file is never written.
    let mut want = vec![0u8; DISK as usize];
    fill_pattern(&mut want, 0, SEED + 999);
    want[8 * MIB as usize..10 * MIB as usize].fill(0);
    assert!(fs::read(&base).unwrap() == want, "the backing file changed");
}

/// A qcow2 whose data is all compressed clusters (`qemu-img convert -c`): reads decompress,
/// partial writes must merge into the decompressed cluster.
#[test]
fn compressed_qcow2() {
    let dir = temp_dir();
    let raw = dir.path().join("src.raw");
    let mut model = vec![0u8; DISK as usize];
    // compressible: a pattern repeated in 4 KiB blocks, with a hole
    for (i, b) in model.iter_mut().enumerate() {
        *b = pattern_byte(
            (i % 4096) as u64,
            SEED + 7 + (i / CLUSTER as usize) as u64 % 3,
        );
    }
    model[4 * MIB as usize..6 * MIB as usize].fill(0);
    fs::write(&raw, &model).unwrap();
    let img = dir.path().join("disk.qcow2");
    qemu_img(
        &[
            "convert",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=65536",
        ],
        &[&raw, &img],
    );
    let out = qemu_img(&["check", "-f", "qcow2"], &[&img]);
    assert!(
        !out.contains(" 0.00% compressed"),
        "no compressed cluster:\n{out}"
    );
    exercise(dir.path(), &img, Some("qcow2"), &mut model, &[]);
}

/// A qcow2 over a qcow2 backing file with compressed clusters, served by probing.
#[test]
fn qcow2_over_compressed_qcow2_backing_file() {
    let dir = temp_dir();
    let raw = dir.path().join("src.raw");
    let mut model = vec![0u8; DISK as usize];
    for (i, b) in model.iter_mut().enumerate() {
        *b = pattern_byte((i % 512) as u64, SEED + 11);
    }
    model[20 * MIB as usize..22 * MIB as usize].fill(0);
    fs::write(&raw, &model).unwrap();
    let base = dir.path().join("base.qcow2");
    qemu_img(
        &["convert", "-c", "-f", "raw", "-O", "qcow2"],
        &[&raw, &base],
    );
    let img = create_qcow2(
        dir.path(),
        "overlay.qcow2",
        &["-b", base.to_str().unwrap(), "-F", "qcow2"],
    );
    exercise(dir.path(), &img, None, &mut model, &[]);
    qemu_img(&["check", "-f", "qcow2"], &[&base]);
    qemu_img(
        &["compare", "-q", "-f", "raw", "-F", "qcow2"],
        &[&raw, &base],
    );
}

/// Small clusters (lots of L2 tables and refcount blocks allocated while serving) with
/// narrow and wide refcounts.
#[test]
fn small_clusters_narrow_and_wide_refcounts() {
    for opts in [
        "cluster_size=512,refcount_bits=1",
        "cluster_size=4096,refcount_bits=64",
    ] {
        let dir = temp_dir();
        let img = create_qcow2(dir.path(), "disk.qcow2", &["-o", opts]);
        let mut model = vec![0u8; DISK as usize];
        exercise(dir.path(), &img, Some("qcow2"), &mut model, &[]);
    }
}

/// Lazy refcounts: the image is dirty while served; a SIGTERM stop must leave it clean
/// (refcounts written, dirty bit cleared). Several short sessions, since the failure this
/// guards against depends on thread timing at exit.
#[test]
fn lazy_refcounts_image_is_clean_after_sigterm() {
    for round in 0..12 {
        let dir = temp_dir();
        let img = create_qcow2(dir.path(), "disk.qcow2", &["-o", "lazy_refcounts=on"]);
        let server = Served::start(dir.path(), &img, Some("qcow2"), 1, &[]);
        let mut c = server.client(1);
        let mut b = c.alloc(CLUSTER as usize);
        fill_pattern(b.as_mut_slice(), MIB, SEED + round);
        let q = &mut c.queues[0];
        assert_eq!(write(q, MIB, b), 0);
        assert_eq!(write(q, 3 * MIB + 512, b), 0);
        drop(c);
        server.stop_ok();
        let mut model = vec![0u8; DISK as usize];
        fill_pattern(
            &mut model[MIB as usize..(MIB + CLUSTER) as usize],
            MIB,
            SEED + round,
        );
        let at = (3 * MIB + 512) as usize;
        model[at..at + CLUSTER as usize].copy_from_slice(&fs_pattern(MIB, SEED + round));
        check_image(&img, dir.path(), &model);
    }
}

fn fs_pattern(off: u64, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; CLUSTER as usize];
    fill_pattern(&mut v, off, seed);
    v
}

/// `qemu-img create -o preallocation=metadata`: every cluster is mapped before the guest
/// writes anything.
#[test]
fn preallocated_metadata_qcow2() {
    let dir = temp_dir();
    let img = create_qcow2(dir.path(), "disk.qcow2", &["-o", "preallocation=metadata"]);
    let mut model = vec![0u8; DISK as usize];
    exercise(dir.path(), &img, None, &mut model, &[]);
}

/// O_DIRECT (`--cache none`) with each engine: metadata and unaligned guest writes still work.
#[test]
fn cache_none_each_engine() {
    let io_uring_refused = std::env::var_os("VSTOR_DISABLE_IO_URING").is_some();
    for aio in ["io_uring", "threads"] {
        if aio == "io_uring" && io_uring_refused {
            continue;
        }
        let dir = temp_dir();
        let img = create_qcow2(dir.path(), "disk.qcow2", &[]);
        let mut model = vec![0u8; DISK as usize];
        let extra = ["--cache", "none", "--aio", aio];
        exercise(dir.path(), &img, Some("qcow2"), &mut model, &extra);
    }
}

// ------------------------------------------------------------------------------------------
// The block-0 guard of a probed raw image

/// A real qcow2 header (the first 4 KiB of a fresh qcow2 image).
fn qcow2_header(dir: &Path) -> Vec<u8> {
    let img = dir.join("header-source.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg("1M"));
    let mut h = vec![0u8; 4096];
    fs::File::open(&img)
        .unwrap()
        .read_exact_at(&mut h, 0)
        .unwrap();
    assert_eq!(&h[..4], b"QFI\xfb");
    h
}

#[test]
fn probed_raw_refuses_a_qcow2_header_in_sector_0() {
    if Peer::from_env() == Peer::Qsd {
        return; // qsd is always given an explicit format
    }
    let dir = temp_dir();
    let header = qcow2_header(dir.path());
    let img = raw_image(dir.path(), "disk.raw", 4 * MIB);

    // Probed: the header write into block 0 fails with an I/O error and changes nothing; the
    // same bytes elsewhere, and ordinary data in block 0, are fine.
    let server = Served::start(dir.path(), &img, None, 2, &[]);
    let mut c = server.client(2);
    let mut hb = c.alloc(header.len());
    hb.as_mut_slice().copy_from_slice(&header);
    let mut big = c.alloc(CLUSTER as usize);
    big.as_mut_slice().fill(0x11);
    big.as_mut_slice()[..header.len()].copy_from_slice(&header);
    let r = c.alloc(CLUSTER as usize);
    let mut data = c.alloc(4096);
    fill_pattern(data.as_mut_slice(), 0, SEED);
    let mut vpc = c.alloc(512);
    vpc.as_mut_slice().fill(0);
    vpc.as_mut_slice()[..8].copy_from_slice(b"conectix");
    for qi in 0..2 {
        let q = &mut c.queues[qi];
        assert_eq!(write(q, 0, hb), -libc::EIO, "queue {qi}: qcow2 header at 0");
        assert_eq!(write(q, 0, big), -libc::EIO, "queue {qi}: 64 KiB from 0");
        let hs = hb.split(&[512])[0];
        assert_eq!(write(q, 0, hs), -libc::EIO, "queue {qi}: one header sector");
        assert_eq!(write(q, 0, vpc), -libc::EIO, "queue {qi}: a vpc signature");
        let iov = hb.split(&[100, 412, 3584]);
        assert_eq!(
            writev(q, 0, &iov),
            -libc::EIO,
            "queue {qi}: header in 3 segments"
        );
    }
    let q = &mut c.queues[0];
    assert_eq!(read(q, 0, r), 0);
    assert_zeros(r.as_slice(), 0, "block 0 after the refused writes");
    assert_eq!(write(q, 512, hb), 0, "the header at 512 is just data");
    assert_eq!(
        write(q, CLUSTER, hb),
        0,
        "the header at 64 KiB is just data"
    );
    assert_eq!(write(q, 0, data), 0, "ordinary data in block 0");
    assert_eq!(flush(q), 0);
    drop(c);
    server.stop_ok();
    let f = fs::File::open(&img).unwrap();
    let mut host = vec![0u8; 4096];
    f.read_exact_at(&mut host, 0).unwrap();
    assert_pattern(&host, 0, SEED, "block 0 on the host");
    f.read_exact_at(&mut host, CLUSTER).unwrap();
    assert_eq!(host, header, "header copy at 64 KiB on the host");
    assert_eq!(fs::metadata(&img).unwrap().len(), 4 * MIB, "raw image size");

    // With --format raw the guest owns every byte: the same write succeeds.
    let server = Served::start(dir.path(), &img, Some("raw"), 1, &[]);
    let mut c = server.client(1);
    let mut hb = c.alloc(header.len());
    hb.as_mut_slice().copy_from_slice(&header);
    let q = &mut c.queues[0];
    assert_eq!(write(q, 0, hb), 0, "qcow2 header at 0 with --format raw");
    assert_eq!(flush(q), 0);
    drop(c);
    server.stop_ok();
    let mut host = vec![0u8; 4096];
    fs::File::open(&img)
        .unwrap()
        .read_exact_at(&mut host, 0)
        .unwrap();
    assert_eq!(host, header, "block 0 after the --format raw write");
}
