//! End-to-end tests of `vstor serve blk`: the real binary on a temporary socket, driven by
//! libblkio (a real vhost-user-blk frontend), with data checked through the device and from the
//! host side.
//!
//! `VSTOR_TEST_SERVER=qsd cargo test -p vstor-cli --test serve_blk` runs the same tests against
//! qemu-storage-daemon, which checks the tests themselves.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::thread;

use blkio::ReqFlags;
use common::*;

const SEED: u64 = 0x5eed_0001;

fn file_server(dir: &tempfile::TempDir, len: u64) -> (Server, PathBuf) {
    let img = raw_image(dir.path(), "disk.raw", len);
    let server = Server::start(dir.path(), &ServerOpts::new(Image::File(img.clone())));
    (server, img)
}

#[test]
fn capacity_matches_the_image() {
    let file_dir = temp_dir();
    let file = raw_image(file_dir.path(), "disk.raw", 48 * MIB);
    for (image, want) in [
        (Image::Null(GIB), GIB),
        (Image::Memory(32 * MIB), 32 * MIB),
        (Image::File(file), 48 * MIB),
    ] {
        let dir = temp_dir();
        let server = Server::start(dir.path(), &ServerOpts::new(image.clone()));
        let client = Client::connect(&server, ClientOpts::default());
        assert_eq!(client.capacity(), want, "{image:?}");
    }
}

/// Writes then reads back `(offset, len)` ranges, including unaligned-to-4k sector ranges, a
/// range crossing 1 MiB, the last block of the disk and a 1 MiB request.
fn patterned_round_trips(dir: &tempfile::TempDir, opts: ServerOpts, capacity: u64) {
    let server = Server::start(dir.path(), &opts);
    let mut c = Client::connect(&server, ClientOpts::default());
    assert_eq!(c.capacity(), capacity);
    let max_transfer = u64::try_from(c.get_i32("max-transfer")).unwrap_or(0);
    let cases = [
        (0, 512),
        (512, 512),
        (4096, 4096),
        (3 * 4096 + 1024, 7 * 512),
        (MIB - 512, 8 * KIB),
        (2 * MIB, MIB),
        (capacity - 4096, 4096),
        (capacity - 512, 512),
    ];
    let mut wbuf = c.alloc(MIB as usize);
    let rbuf = c.alloc(MIB as usize);
    let q = &mut c.queues[0];
    for (seed, &(off, len)) in cases.iter().enumerate() {
        let seed = SEED + seed as u64;
        if max_transfer != 0 && len > max_transfer {
            continue;
        }
        let len = len as usize;
        let mut w = wbuf.split(&[len])[0];
        fill_pattern(w.as_mut_slice(), off, seed);
        assert_eq!(write(q, off, w), 0, "write {off:#x}+{len}");
        let mut r = rbuf.split(&[len])[0];
        r.as_mut_slice().fill(0xaa);
        assert_eq!(read(q, off, r), 0, "read {off:#x}+{len}");
        assert_pattern(
            r.as_slice(),
            off,
            seed,
            &format!("read back {off:#x}+{len}"),
        );
    }
    wbuf.as_mut_slice().fill(0);

    // Overlapping writes: the later one wins exactly on its range.
    let base = 8 * MIB;
    let mut big = wbuf.split(&[64 * KIB as usize])[0];
    fill_pattern(big.as_mut_slice(), base, 1);
    assert_eq!(write(q, base, big), 0);
    let small_off = base + 4096 + 512;
    let mut small = rbuf.split(&[8192 + 1024])[0];
    fill_pattern(small.as_mut_slice(), small_off, 2);
    assert_eq!(write(q, small_off, small), 0);
    let r = rbuf.split(&[64 * KIB as usize])[0];
    assert_eq!(read(q, base, r), 0);
    let split = (small_off - base) as usize;
    let end = split + small.len;
    assert_pattern(&r.as_slice()[..split], base, 1, "before the overwrite");
    assert_pattern(&r.as_slice()[split..end], small_off, 2, "the overwrite");
    assert_pattern(
        &r.as_slice()[end..],
        base + end as u64,
        1,
        "after the overwrite",
    );
    drop(c);
    server.terminate_ok();
}

#[test]
fn patterned_writes_read_back_file() {
    let dir = temp_dir();
    let img = raw_image(dir.path(), "disk.raw", 64 * MIB);
    patterned_round_trips(&dir, ServerOpts::new(Image::File(img)), 64 * MIB);
}

/// O_DIRECT with each engine: 512-byte requests must work whatever the host's block size.
#[test]
fn patterned_writes_read_back_file_cache_none() {
    // With io_uring refused (VSTOR_DISABLE_IO_URING=1, the CI fallback pass) an explicit
    // `--aio io_uring` must fail at startup, which `explicit_io_uring_refused_...` checks.
    let io_uring_refused = std::env::var_os("VSTOR_DISABLE_IO_URING").is_some();
    for engine in ["io_uring", "threads"] {
        if engine == "io_uring" && io_uring_refused {
            continue;
        }
        let dir = temp_dir();
        let img = raw_image(dir.path(), "disk.raw", 64 * MIB);
        let opts = ServerOpts::new(Image::File(img)).cache_none().aio(engine);
        patterned_round_trips(&dir, opts, 64 * MIB);
    }
}

/// Where io_uring is refused, asking for it explicitly is a clear startup error, not a
/// silent fallback.
#[test]
fn explicit_io_uring_refused_is_a_startup_error() {
    if std::env::var_os("VSTOR_DISABLE_IO_URING").is_none() {
        return;
    }
    let dir = temp_dir();
    let img = raw_image(dir.path(), "disk.raw", MIB);
    let out = std::process::Command::new(common::vstor_bin())
        .args(["serve", "blk", "--aio", "io_uring", "--image"])
        .arg(&img)
        .arg("--socket")
        .arg(dir.path().join("blk.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("disk.raw") && stderr.contains("io_uring"),
        "{stderr}"
    );
}

/// Kick-driven (polling off) and long-polling workers serve the same requests correctly.
#[test]
fn patterned_writes_read_back_with_and_without_polling() {
    for us in [0, 1000] {
        let dir = temp_dir();
        let img = raw_image(dir.path(), "disk.raw", 64 * MIB);
        let opts = ServerOpts::new(Image::File(img)).poll_us(us);
        patterned_round_trips(&dir, opts, 64 * MIB);
    }
}

#[test]
fn patterned_writes_read_back_memory() {
    let dir = temp_dir();
    patterned_round_trips(&dir, ServerOpts::new(Image::Memory(64 * MIB)), 64 * MIB);
}

#[test]
fn multi_segment_readv_writev() {
    let dir = temp_dir();
    let (server, img) = file_server(&dir, 16 * MIB);
    let mut c = Client::connect(&server, ClientOpts::default());
    let max_segments = c.get_i32("max-segments");
    assert!(
        max_segments >= 4,
        "device allows only {max_segments} segments"
    );
    let wbuf = c.alloc(256 * KIB as usize);
    let rbuf = c.alloc(256 * KIB as usize);
    let q = &mut c.queues[0];

    // Written in one segmentation, read back in another (segments need not be sector sized,
    // only the total).
    let cases: [(u64, &[usize], &[usize]); 4] = [
        (0, &[512, 3584, 4096, 8192], &[4096, 4096, 8192]),
        (MIB + 512, &[100, 412, 1024], &[1536]),
        (2 * MIB, &[4096; 16], &[65536]),
        (3 * MIB, &[65536], &[1, 511, 4096, 60928]),
    ];
    for (i, (off, wsegs, rsegs)) in cases.iter().enumerate() {
        let seed = SEED + 100 + i as u64;
        let total: usize = wsegs.iter().sum();
        assert_eq!(total, rsegs.iter().sum::<usize>());
        let mut w = wbuf.split(&[total])[0];
        fill_pattern(w.as_mut_slice(), *off, seed);
        assert_eq!(writev(q, *off, &wbuf.split(wsegs)), 0, "writev at {off:#x}");
        let mut r = rbuf.split(&[total])[0];
        r.as_mut_slice().fill(0x55);
        assert_eq!(readv(q, *off, &rbuf.split(rsegs)), 0, "readv at {off:#x}");
        assert_pattern(r.as_slice(), *off, seed, &format!("readv at {off:#x}"));
    }
    assert_eq!(flush(q), 0);
    drop(c);
    server.terminate_ok();

    // The host sees the same bytes.
    let f = fs::File::open(&img).unwrap();
    for (i, (off, wsegs, _)) in cases.iter().enumerate() {
        let mut buf = vec![0u8; wsegs.iter().sum()];
        f.read_exact_at(&mut buf, *off).unwrap();
        assert_pattern(&buf, *off, SEED + 100 + i as u64, "host view");
    }
}

#[test]
fn discard_and_write_zeroes_read_back_zeros() {
    let dir = temp_dir();
    let (server, img) = file_server(&dir, 16 * MIB);
    let mut c = Client::connect(&server, ClientOpts::default());
    let len = 4 * MIB as usize;
    let mut w = c.alloc(len);
    let r = c.alloc(len);
    fill_pattern(w.as_mut_slice(), 0, SEED);
    let q = &mut c.queues[0];
    // Written in 1 MiB pieces in case the device limits the transfer size.
    for (i, piece) in w.split(&[MIB as usize; 4]).into_iter().enumerate() {
        assert_eq!(write(q, i as u64 * MIB, piece), 0);
    }

    // (name, offset, len, op)
    let discard = (MIB, 256 * KIB);
    let zeroes_unmap = (2 * MIB + 64 * KIB, 64 * KIB);
    let zeroes_no_unmap = (3 * MIB + 512, 12 * KIB + 512);
    assert_eq!(
        sync_io(q, |q| q.discard(discard.0, discard.1, 0, ReqFlags::empty())),
        0,
        "discard {discard:?}"
    );
    assert_eq!(
        sync_io(q, |q| q.write_zeroes(
            zeroes_unmap.0,
            zeroes_unmap.1,
            0,
            ReqFlags::empty()
        )),
        0,
        "write-zeroes (unmap allowed) {zeroes_unmap:?}"
    );
    assert_eq!(
        sync_io(q, |q| q.write_zeroes(
            zeroes_no_unmap.0,
            zeroes_no_unmap.1,
            0,
            ReqFlags::NO_UNMAP
        )),
        0,
        "write-zeroes NO_UNMAP {zeroes_no_unmap:?}"
    );
    assert_eq!(flush(q), 0);

    let check = |data: &[u8], what: &str| {
        let zeroed = [discard, zeroes_unmap, zeroes_no_unmap];
        let mut pos = 0u64;
        for (off, l) in zeroed {
            assert_pattern(&data[pos as usize..off as usize], pos, SEED, what);
            assert_zeros(&data[off as usize..(off + l) as usize], off, what);
            pos = off + l;
        }
        assert_pattern(&data[pos as usize..], pos, SEED, what);
    };
    for (i, piece) in r.split(&[MIB as usize; 4]).into_iter().enumerate() {
        assert_eq!(read(q, i as u64 * MIB, piece), 0);
    }
    check(r.as_slice(), "device view");
    drop(c);
    server.terminate_ok();

    let mut host = vec![0u8; len];
    fs::File::open(&img)
        .unwrap()
        .read_exact_at(&mut host, 0)
        .unwrap();
    check(&host, "host view");
}

#[test]
fn flush_and_fua_writes_succeed() {
    let dir = temp_dir();
    let (server, img) = file_server(&dir, 8 * MIB);
    let mut c = Client::connect(&server, ClientOpts::default());
    let mut b = c.alloc(64 * KIB as usize);
    fill_pattern(b.as_mut_slice(), MIB, SEED);
    let q = &mut c.queues[0];
    assert_eq!(flush(q), 0, "flush with nothing written");
    assert_eq!(write(q, MIB, b), 0);
    assert_eq!(flush(q), 0, "flush after a write");
    // libblkio turns FUA into write + flush when the device lacks native FUA.
    assert_eq!(
        sync_io(q, |q| q.write(2 * MIB, b.ptr, b.len, 0, ReqFlags::FUA)),
        0,
        "FUA write"
    );
    // The data is visible from the host while the server still runs.
    let mut host = vec![0u8; b.len];
    fs::File::open(&img)
        .unwrap()
        .read_exact_at(&mut host, MIB)
        .unwrap();
    assert_pattern(&host, MIB, SEED, "host view after flush");
    drop(c);
    server.terminate_ok();
}

#[test]
fn read_only_server_refuses_writes() {
    let dir = temp_dir();
    let img = raw_image(dir.path(), "disk.raw", 8 * MIB);
    let mut data = vec![0u8; 64 * KIB as usize];
    fill_pattern(&mut data, 0, SEED);
    fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .write_all_at(&data, 0)
        .unwrap();
    let server = Server::start(
        dir.path(),
        &ServerOpts::new(Image::File(img.clone())).read_only(),
    );

    // The device advertises VIRTIO_BLK_F_RO: libblkio refuses to start a read-write session.
    let err = Client::try_connect(&server.socket, ClientOpts::default())
        .err()
        .expect("a read-write client must not start on a read-only device");
    assert_eq!(err.errno().raw_os_error(), libc::EROFS, "{err}");

    // A read-only session reads; its writes fail (libblkio refuses them before the device).
    let mut c = Client::connect(
        &server,
        ClientOpts {
            read_only: true,
            ..ClientOpts::default()
        },
    );
    let b = c.alloc(data.len());
    let q = &mut c.queues[0];
    assert_eq!(read(q, 0, b), 0);
    assert_pattern(b.as_slice(), 0, SEED, "read-only read");
    assert_ne!(write(q, 0, b), 0, "write on a read-only session");
    drop(c);

    // A frontend that ignores the RO bit gets its writes, write-zeroes and discards failed by
    // the server itself (VIRTIO 1.2 §5.2.6.2: IOERR, no data written).
    let rets = raw_frontend::write_ignoring_ro(&server.socket, 0, 4096);
    for (op, ret) in rets {
        match op {
            "write" => assert_eq!(ret, -libc::EIO, "write on a read-only device: want IOERR"),
            // IOERR, or UNSUPP if the device does not offer the command at all.
            _ => assert!(
                ret == -libc::EIO || ret == -libc::ENOTSUP,
                "{op} on a read-only device: got {ret}"
            ),
        }
    }
    server.terminate_ok();
    let mut host = vec![0u8; data.len()];
    fs::File::open(&img)
        .unwrap()
        .read_exact_at(&mut host, 0)
        .unwrap();
    assert_eq!(host, data, "read-only image changed");
}

#[test]
fn four_queues_in_parallel() {
    const QUEUES: usize = 4;
    const REGION: u64 = 4 * MIB;
    const CHUNK: usize = 16 * KIB as usize;
    const DEPTH: usize = 8;
    let dir = temp_dir();
    let img = raw_image(dir.path(), "disk.raw", QUEUES as u64 * REGION);
    let server = Server::start(
        dir.path(),
        &ServerOpts::new(Image::File(img)).queues(QUEUES as u16),
    );
    let mut c = Client::connect(
        &server,
        ClientOpts {
            queues: QUEUES as i32,
            ..ClientOpts::default()
        },
    );
    assert_eq!(c.get_i32("max-queues"), QUEUES as i32);
    let bufs: Vec<_> = (0..QUEUES).map(|_| c.alloc(DEPTH * CHUNK)).collect();
    let queues = std::mem::take(&mut c.queues);
    thread::scope(|s| {
        for (i, (mut q, buf)) in queues.into_iter().zip(bufs).enumerate() {
            s.spawn(move || {
                let seed = SEED + 1000 + i as u64;
                let base = i as u64 * REGION;
                let slots = buf.split(&[CHUNK; DEPTH]);
                let batches = REGION / (DEPTH * CHUNK) as u64;
                for pass in ["write", "read"] {
                    for batch in 0..batches {
                        let off =
                            |k: usize| base + (batch * DEPTH as u64 + k as u64) * CHUNK as u64;
                        let mut slots = slots.clone();
                        if pass == "write" {
                            for (k, b) in slots.iter_mut().enumerate() {
                                fill_pattern(b.as_mut_slice(), off(k), seed);
                            }
                        }
                        let rets = batch_io(&mut q, DEPTH, |q| {
                            for (k, b) in slots.iter().enumerate() {
                                if pass == "write" {
                                    q.write(off(k), b.ptr, b.len, k, ReqFlags::empty());
                                } else {
                                    q.read(off(k), b.ptr, b.len, k, ReqFlags::empty());
                                }
                            }
                        });
                        assert!(rets.iter().all(|&r| r == 0), "queue {i} {pass}: {rets:?}");
                        if pass == "read" {
                            for (k, b) in slots.iter().enumerate() {
                                assert_pattern(b.as_slice(), off(k), seed, &format!("queue {i}"));
                            }
                        }
                    }
                }
            });
        }
    });
    drop(c);
    server.terminate_ok();
}

#[test]
fn reconnect_keeps_data() {
    let dir = temp_dir();
    let img = raw_image(dir.path(), "disk.raw", 16 * MIB);
    let server = Server::start(dir.path(), &ServerOpts::new(Image::File(img)).queues(2));
    let len = 128 * KIB as usize;
    {
        let mut c = Client::connect(&server, ClientOpts::default());
        let mut b = c.alloc(len);
        fill_pattern(b.as_mut_slice(), 5 * MIB, SEED);
        assert_eq!(write(&mut c.queues[0], 5 * MIB, b), 0);
    }
    // Second session, different queue count and buffer layout.
    {
        let mut c = Client::connect(
            &server,
            ClientOpts {
                queues: 2,
                mem: 4 * MIB as usize,
                ..ClientOpts::default()
            },
        );
        let _skip = c.alloc(12 * KIB as usize);
        let b = c.alloc(len);
        assert_eq!(read(&mut c.queues[1], 5 * MIB, b), 0);
        assert_pattern(b.as_slice(), 5 * MIB, SEED, "second session");
        let mut w = c.alloc(4096);
        fill_pattern(w.as_mut_slice(), 0, SEED + 1);
        assert_eq!(write(&mut c.queues[0], 0, w), 0);
    }
    // Third session sees both writes.
    let mut c = Client::connect(&server, ClientOpts::default());
    let b = c.alloc(len);
    assert_eq!(read(&mut c.queues[0], 5 * MIB, b), 0);
    assert_pattern(b.as_slice(), 5 * MIB, SEED, "third session");
    let r = c.alloc(4096);
    assert_eq!(read(&mut c.queues[0], 0, r), 0);
    assert_pattern(r.as_slice(), 0, SEED + 1, "third session, block 0");
    drop(c);
    server.terminate_ok();
}

#[test]
fn sigterm_with_a_client_connected_exits_zero_and_keeps_data() {
    let dir = temp_dir();
    let (server, img) = file_server(&dir, 16 * MIB);
    let mut c = Client::connect(&server, ClientOpts::default());
    let mut b = c.alloc(MIB as usize);
    fill_pattern(b.as_mut_slice(), 7 * MIB, SEED);
    // No flush from the client: the server flushes on the way out.
    assert_eq!(write(&mut c.queues[0], 7 * MIB, b), 0);
    server.terminate_ok();
    drop(c);
    let mut host = vec![0u8; b.len];
    fs::File::open(&img)
        .unwrap()
        .read_exact_at(&mut host, 7 * MIB)
        .unwrap();
    assert_pattern(&host, 7 * MIB, SEED, "image after SIGTERM");
}

#[test]
fn sigint_when_idle_exits_zero() {
    let dir = temp_dir();
    let (server, _img) = file_server(&dir, MIB);
    {
        let c = Client::connect(&server, ClientOpts::default());
        assert_eq!(c.capacity(), MIB);
    }
    server.stop_ok(libc::SIGINT);
}

#[test]
fn out_of_range_requests_fail_and_the_device_keeps_working() {
    let dir = temp_dir();
    let (server, _img) = file_server(&dir, 4 * MIB);
    let mut c = Client::connect(&server, ClientOpts::default());
    let cap = c.capacity();
    let b = c.alloc(8192);
    let q = &mut c.queues[0];
    let one = b.split(&[4096])[0];
    assert_ne!(read(q, cap, one), 0, "read at capacity");
    assert_ne!(read(q, cap - 4096, b), 0, "read straddling the end");
    assert_ne!(write(q, cap, one), 0, "write at capacity");
    assert_ne!(
        sync_io(q, |q| q.write_zeroes(cap - 512, 1024, 0, ReqFlags::empty())),
        0,
        "write-zeroes straddling the end"
    );
    assert_ne!(
        sync_io(q, |q| q.discard(cap, 4096, 0, ReqFlags::empty())),
        0,
        "discard past the end"
    );
    assert_eq!(read(q, cap - 4096, one), 0, "last block is readable");
    drop(c);
    server.terminate_ok();
}

/// A minimal vhost-user-blk frontend on virtio-driver that, unlike libblkio, does not honour
/// VIRTIO_BLK_F_RO, so the server's own enforcement can be tested.
mod raw_frontend {
    use std::os::fd::AsRawFd;
    use std::path::Path;
    use std::thread;
    use std::time::{Duration, Instant};

    use virtio_driver::{
        VhostUser, VirtioBlkConfig, VirtioBlkQueue, VirtioBlkReqBuf, VirtioBlkTransport,
        VirtioFeatureFlags,
    };

    use super::common::IO_TIMEOUT;

    /// Sends a write, a write-zeroes and a discard (without negotiating RO) and returns each
    /// request's result (0 or a negative errno).
    pub fn write_ignoring_ro(socket: &Path, offset: u64, len: usize) -> Vec<(&'static str, i32)> {
        let features = VirtioFeatureFlags::VERSION_1.bits()
            | (1 << 13) // VIRTIO_BLK_F_DISCARD
            | (1 << 14); // VIRTIO_BLK_F_WRITE_ZEROES
        let transport: VhostUser<VirtioBlkConfig, VirtioBlkReqBuf> =
            VhostUser::new(socket.to_str().unwrap(), features).expect("raw vhost-user connect");
        let mut transport: Box<VirtioBlkTransport> = Box::new(transport);

        let mem = memfd::new(len);
        transport
            .map_mem_region(mem.addr(), len, mem.file.as_raw_fd(), 0)
            .expect("map buffer");
        let mut queues =
            VirtioBlkQueue::<&'static str>::setup_queues(&mut *transport, 1, 16).expect("queues");
        let q = &mut queues[0];
        let notifier = transport.get_submission_notifier(0);
        let buf = mem.slice();
        buf.fill(0xee);

        q.write(offset, buf, "write").expect("queue write");
        q.write_zeroes(offset, len as u64, false, "write-zeroes")
            .expect("queue write-zeroes");
        q.discard(offset, len as u64, "discard")
            .expect("queue discard");
        notifier.notify().expect("kick");

        let mut results = Vec::new();
        let deadline = Instant::now() + IO_TIMEOUT;
        while results.len() < 3 {
            for c in q.completions() {
                results.push((c.context, c.ret));
            }
            assert!(
                Instant::now() < deadline,
                "raw frontend: no completion within {IO_TIMEOUT:?} (got {results:?})"
            );
            thread::sleep(Duration::from_millis(1));
        }
        drop(queues);
        results
    }

    /// A shared-memory buffer the backend can map.
    mod memfd {
        use std::fs::File;
        use std::os::fd::FromRawFd;

        pub struct Mem {
            pub file: File,
            ptr: *mut u8,
            len: usize,
        }

        pub fn new(len: usize) -> Mem {
            // SAFETY: memfd_create with a valid C string; the fd is checked and then owned.
            let fd = unsafe { libc::memfd_create(c"vstor-test-raw".as_ptr(), 0) };
            assert!(fd >= 0, "memfd_create");
            // SAFETY: `fd` is a fresh descriptor we own.
            let file = unsafe { File::from_raw_fd(fd) };
            file.set_len(len as u64).expect("size memfd");
            // SAFETY: a shared mapping of the whole memfd; checked for MAP_FAILED.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd,
                    0,
                )
            };
            assert_ne!(ptr, libc::MAP_FAILED, "mmap memfd");
            Mem {
                file,
                ptr: ptr.cast(),
                len,
            }
        }

        impl Mem {
            pub fn addr(&self) -> usize {
                self.ptr as usize
            }

            #[allow(clippy::mut_from_ref)]
            pub fn slice(&self) -> &mut [u8] {
                // SAFETY: the mapping is `len` bytes and lives as long as `self`; the test uses
                // one view at a time.
                unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
            }
        }

        impl Drop for Mem {
            fn drop(&mut self) {
                // SAFETY: unmapping the mapping created in `new`.
                unsafe { libc::munmap(self.ptr.cast(), self.len) };
            }
        }
    }
}
