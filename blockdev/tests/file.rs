//! The file protocol through both engines: every cache mode, deep queues, vectored requests,
//! discard / write-zeroes / secure erase, flush, refusals, short files and O_DIRECT bouncing.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use vstor_blockdev::engine::{self, DISABLE_IO_URING_ENV};
use vstor_blockdev::{
    open, AlignedBuf, BlockDev, CacheMode, Completion, EngineKind, Error, FileDev, IoOp, IoQueue,
    IoRequest, IoVec, OpenOptions, QueueOptions, Submitted,
};

const MIB: u64 = 1 << 20;

/// The engines this host can run (io_uring only where the kernel allows it).
fn engines() -> Vec<EngineKind> {
    let mut v = vec![EngineKind::Threads];
    if engine::io_uring_available() {
        v.push(EngineKind::IoUring);
    } else {
        eprintln!("io_uring unavailable here: only the threads engine is tested");
    }
    v
}

fn temp_file(len: u64) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new_in(std::env::temp_dir()).unwrap();
    f.as_file().set_len(len).unwrap();
    f
}

fn opts(cache: CacheMode, engine: EngineKind) -> OpenOptions {
    OpenOptions {
        cache,
        engine,
        ..Default::default()
    }
}

fn open_file(path: &Path, cache: CacheMode, engine: EngineKind) -> FileDev {
    FileDev::open(path, &opts(cache, engine)).unwrap()
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8)
        .collect()
}

fn iov(buf: &mut [u8]) -> IoVec {
    // SAFETY: every buffer passed here outlives the requests using it (the tests wait for all
    // completions, or drop the queue, before the buffers).
    unsafe { IoVec::from_slice(buf) }
}

fn req(op: IoOp, offset: u64, len: u64, iovecs: Vec<IoVec>, tag: u64) -> IoRequest {
    IoRequest {
        op,
        offset,
        len,
        iovecs,
        tag,
    }
}

/// Waits on the completion fd with poll(2) until `n` completions arrived (10 s limit).
fn wait_for(q: &mut dyn IoQueue, n: usize) -> Vec<Completion> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    let fd = q.completion_fd().expect("file queues have a completion fd");
    loop {
        q.reap(&mut out);
        if out.len() >= n {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "timed out: {} of {n} completions",
            out.len()
        );
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, 1000) };
        assert!(r >= 0, "poll: {}", std::io::Error::last_os_error());
    }
}

/// Submits one request, kicks, waits for it and returns its result.
fn run_one(q: &mut dyn IoQueue, r: IoRequest) -> vstor_blockdev::Result<()> {
    match q.submit(r)? {
        Submitted::Done(res) => res,
        Submitted::Queued => {
            q.kick()?;
            let mut c = wait_for(q, 1);
            assert_eq!(c.len(), 1);
            c.pop().unwrap().result
        }
    }
}

fn queue_read(q: &mut dyn IoQueue, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = AlignedBuf::new(len, 4096).unwrap();
    let v = vec![iov(&mut buf.as_mut_slice()[..len])];
    run_one(q, req(IoOp::Read, offset, len as u64, v, 0)).unwrap();
    buf.as_slice()[..len].to_vec()
}

fn queue_write(q: &mut dyn IoQueue, offset: u64, data: &[u8]) {
    let mut buf = AlignedBuf::new(data.len(), 4096).unwrap();
    buf.as_mut_slice()[..data.len()].copy_from_slice(data);
    let v = vec![iov(&mut buf.as_mut_slice()[..data.len()])];
    run_one(q, req(IoOp::Write, offset, data.len() as u64, v, 0)).unwrap();
}

#[test]
fn engine_kind_parse_and_display() {
    for (kind, name) in EngineKind::ALL {
        assert_eq!(name.parse::<EngineKind>().unwrap(), kind);
        assert_eq!(kind.to_string(), name);
    }
    assert_eq!(
        "io-uring".parse::<EngineKind>().unwrap(),
        EngineKind::IoUring
    );
    assert!(matches!(
        "aio".parse::<EngineKind>(),
        Err(Error::InvalidOption { name: "aio", .. })
    ));
    assert_eq!(EngineKind::default(), EngineKind::Auto);
}

#[test]
fn engine_choice_and_fallback() {
    use engine::choose;
    assert_eq!(choose(EngineKind::Auto, true).unwrap(), EngineKind::IoUring);
    assert_eq!(
        choose(EngineKind::Auto, false).unwrap(),
        EngineKind::Threads
    );
    assert_eq!(
        choose(EngineKind::Threads, true).unwrap(),
        EngineKind::Threads
    );
    assert_eq!(
        choose(EngineKind::Threads, false).unwrap(),
        EngineKind::Threads
    );
    assert_eq!(
        choose(EngineKind::IoUring, true).unwrap(),
        EngineKind::IoUring
    );
    let e = choose(EngineKind::IoUring, false).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Engine {
                engine: "io_uring",
                ..
            }
        ),
        "{e}"
    );

    assert!(!engine::disabled_by_env_value(None));
    assert!(!engine::disabled_by_env_value(Some("")));
    assert!(!engine::disabled_by_env_value(Some("0")));
    assert!(engine::disabled_by_env_value(Some("1")));
    assert!(engine::disabled_by_env_value(Some("yes")));
    assert_eq!(DISABLE_IO_URING_ENV, "VSTOR_DISABLE_IO_URING");

    // What Auto resolves to on this host.
    let f = temp_file(MIB);
    let dev = open_file(f.path(), CacheMode::Writeback, EngineKind::Auto);
    let want = if engine::io_uring_available() {
        EngineKind::IoUring
    } else {
        EngineKind::Threads
    };
    assert_eq!(dev.engine(), want);
    eprintln!("io_uring available: {}", engine::io_uring_available());
}

/// 32 writes in flight, then 32 reads in flight, in every cache mode through every engine.
#[test]
fn deep_queue_round_trip_every_cache_mode() {
    const N: usize = 32;
    const LEN: usize = 8192;
    for engine in engines() {
        for (cache, name) in CacheMode::ALL {
            let f = temp_file(4 * MIB);
            let dev = open_file(f.path(), cache, engine);
            assert_eq!(dev.engine(), engine);
            assert_eq!(dev.info().cache, cache);
            assert_eq!(dev.info().size, 4 * MIB);
            assert_eq!(dev.info().write_cache, !cache.write_through());
            let mut q = dev.open_queue(&QueueOptions { depth: 32 }).unwrap();
            assert_eq!(q.depth(), 32);

            let mut bufs: Vec<AlignedBuf> = (0..N)
                .map(|i| {
                    let mut b = AlignedBuf::new(LEN, 4096).unwrap();
                    b.as_mut_slice().copy_from_slice(&pattern(i as u64, LEN));
                    b
                })
                .collect();
            for (i, b) in bufs.iter_mut().enumerate() {
                let off = (i * 3 * LEN) as u64;
                let r = req(
                    IoOp::Write,
                    off,
                    LEN as u64,
                    vec![iov(b.as_mut_slice())],
                    i as u64,
                );
                assert!(matches!(q.submit(r).unwrap(), Submitted::Queued));
            }
            assert_eq!(q.in_flight(), N);
            q.kick().unwrap();
            let done = wait_for(q.as_mut(), N);
            assert_eq!(done.len(), N, "{engine} {name}");
            let mut tags: Vec<u64> = done.iter().map(|c| c.tag).collect();
            tags.sort_unstable();
            assert_eq!(tags, (0..N as u64).collect::<Vec<_>>());
            for c in &done {
                assert!(c.result.is_ok(), "{engine} {name}: {:?}", c.result);
            }
            assert_eq!(q.in_flight(), 0);

            let mut rbufs: Vec<AlignedBuf> = (0..N)
                .map(|_| AlignedBuf::new(LEN, 4096).unwrap())
                .collect();
            for (i, b) in rbufs.iter_mut().enumerate() {
                let off = (i * 3 * LEN) as u64;
                let r = req(
                    IoOp::Read,
                    off,
                    LEN as u64,
                    vec![iov(b.as_mut_slice())],
                    100 + i as u64,
                );
                q.submit(r).unwrap();
            }
            q.kick().unwrap();
            let done = wait_for(q.as_mut(), N);
            assert!(done.iter().all(|c| c.result.is_ok()));
            for (i, b) in rbufs.iter().enumerate() {
                assert_eq!(
                    b.as_slice(),
                    &pattern(i as u64, LEN)[..],
                    "{engine} {name} #{i}"
                );
            }
            let flush = req(IoOp::Flush, 0, 0, vec![], 7);
            run_one(q.as_mut(), flush).unwrap();
            dev.flush().unwrap();
            drop(q);

            // The host file holds the data, and the synchronous path agrees.
            let mut host = vec![0u8; LEN];
            f.as_file()
                .read_exact_at(&mut host, (5 * 3 * LEN) as u64)
                .unwrap();
            assert_eq!(host, pattern(5, LEN));
            let mut sync = vec![0u8; LEN];
            dev.read_at(&mut sync, (7 * 3 * LEN) as u64).unwrap();
            assert_eq!(sync, pattern(7, LEN));
        }
    }
}

#[test]
fn vectored_requests() {
    for engine in engines() {
        for cache in [CacheMode::Writeback, CacheMode::None] {
            let f = temp_file(MIB);
            let dev = open_file(f.path(), cache, engine);
            let mut q = dev.open_queue(&QueueOptions { depth: 8 }).unwrap();
            let data = pattern(9, 5 * 4096);
            let mut w = AlignedBuf::new(data.len(), 4096).unwrap();
            w.as_mut_slice().copy_from_slice(&data);
            let (a, rest) = w.as_mut_slice().split_at_mut(4096);
            let (b, c) = rest.split_at_mut(3 * 4096);
            let r = req(
                IoOp::Write,
                65536,
                data.len() as u64,
                vec![iov(a), iov(b), iov(c)],
                1,
            );
            run_one(q.as_mut(), r).unwrap();

            let mut r1 = AlignedBuf::new(2 * 4096, 4096).unwrap();
            let mut r2 = AlignedBuf::new(4096, 4096).unwrap();
            let mut r3 = AlignedBuf::new(2 * 4096, 4096).unwrap();
            let v = vec![
                iov(r1.as_mut_slice()),
                iov(r2.as_mut_slice()),
                iov(r3.as_mut_slice()),
            ];
            run_one(q.as_mut(), req(IoOp::Read, 65536, data.len() as u64, v, 2)).unwrap();
            let got = [r1.as_slice(), r2.as_slice(), r3.as_slice()].concat();
            assert_eq!(got, data, "{engine} {cache}");
        }
    }
}

#[test]
fn discard_write_zeroes_and_secure_erase_read_back_zeroes() {
    let ops = [
        IoOp::Discard,
        IoOp::WriteZeroes { may_unmap: true },
        IoOp::WriteZeroes { may_unmap: false },
        IoOp::SecureErase,
    ];
    for engine in engines() {
        for cache in [CacheMode::Writeback, CacheMode::None, CacheMode::Directsync] {
            let f = temp_file(2 * MIB);
            let dev = open_file(f.path(), cache, engine);
            let info = dev.info().clone();
            assert!(
                info.discard && info.discard_zeroes,
                "ext4/tmpfs punch holes: {info:?}"
            );
            assert!(info.write_zeroes && info.secure_erase);
            let mut q = dev.open_queue(&QueueOptions { depth: 16 }).unwrap();
            for (k, op) in ops.into_iter().enumerate() {
                let base = k as u64 * 256 * 1024;
                let data = pattern(k as u64, 3 * 65536);
                queue_write(q.as_mut(), base, &data);
                // Zero the middle 64 KiB.
                run_one(q.as_mut(), req(op, base + 65536, 65536, vec![], 3)).unwrap();
                let got = queue_read(q.as_mut(), base, data.len());
                assert_eq!(&got[..65536], &data[..65536], "{engine} {cache} {op:?}");
                assert!(
                    got[65536..131072].iter().all(|&b| b == 0),
                    "{engine} {cache} {op:?}"
                );
                assert_eq!(&got[131072..], &data[131072..], "{engine} {cache} {op:?}");
            }
            // Many at once, mixed with reads.
            let mut n = 0;
            for i in 0..16u64 {
                let op = ops[(i % 4) as usize];
                if let Submitted::Queued = q.submit(req(op, i * 65536, 4096, vec![], i)).unwrap() {
                    n += 1;
                }
            }
            q.kick().unwrap();
            let done = wait_for(q.as_mut(), n);
            assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
        }
    }
}

#[test]
fn write_zeroes_without_fast_path_writes_buffers_of_zeroes() {
    // More than the 1 MiB zero buffer, not on hole-friendly boundaries.
    for engine in engines() {
        let f = temp_file(4 * MIB);
        f.as_file()
            .write_all_at(&vec![0xaa; 4 * MIB as usize], 0)
            .unwrap();
        let dev = open_file(f.path(), CacheMode::Writeback, engine);
        let mut q = dev.open_queue(&QueueOptions { depth: 4 }).unwrap();
        let (off, len) = (512u64, 3 * MIB + 1024);
        for may_unmap in [false, true] {
            run_one(
                q.as_mut(),
                req(IoOp::WriteZeroes { may_unmap }, off, len, vec![], 0),
            )
            .unwrap();
            let mut all = vec![0u8; 4 * MIB as usize];
            dev.read_at(&mut all, 0).unwrap();
            assert!(all[..512].iter().all(|&b| b == 0xaa));
            assert!(all[512..(off + len) as usize].iter().all(|&b| b == 0));
            assert!(all[(off + len) as usize..].iter().all(|&b| b == 0xaa));
        }
    }
}

#[test]
fn flush_in_every_mode() {
    for engine in engines() {
        for (cache, _) in CacheMode::ALL {
            let f = temp_file(MIB);
            let dev = open_file(f.path(), cache, engine);
            let mut q = dev.open_queue(&QueueOptions::default()).unwrap();
            queue_write(q.as_mut(), 0, &pattern(1, 4096));
            let s = q.submit(req(IoOp::Flush, 0, 0, vec![], 1)).unwrap();
            if cache == CacheMode::Unsafe {
                assert!(matches!(s, Submitted::Done(Ok(()))), "unsafe drops flushes");
            } else {
                assert!(matches!(s, Submitted::Queued));
                q.kick().unwrap();
                let c = wait_for(q.as_mut(), 1);
                assert!(c[0].result.is_ok());
            }
            dev.flush().unwrap();
        }
    }
}

#[test]
fn read_only_refuses_writes() {
    for engine in engines() {
        let f = temp_file(MIB);
        f.as_file().write_all_at(b"keep", 0).unwrap();
        let o = OpenOptions {
            read_only: true,
            ..opts(CacheMode::Writeback, engine)
        };
        let dev = FileDev::open(f.path(), &o).unwrap();
        let info = dev.info();
        assert!(info.read_only && !info.discard && !info.write_zeroes && !info.secure_erase);
        assert!(matches!(
            dev.write_at(b"x", 0),
            Err(Error::ReadOnly { op: "write" })
        ));
        let mut q = dev.open_queue(&QueueOptions { depth: 4 }).unwrap();
        let mut buf = vec![0u8; 512];
        let ops = [
            (IoOp::Write, vec![iov(&mut buf)]),
            (IoOp::Discard, vec![]),
            (IoOp::WriteZeroes { may_unmap: false }, vec![]),
            (IoOp::SecureErase, vec![]),
        ];
        for (op, v) in ops {
            let s = q.submit(req(op, 0, 512, v, 0)).unwrap();
            assert!(
                matches!(s, Submitted::Done(Err(Error::ReadOnly { .. }))),
                "{op:?}: {s:?}"
            );
        }
        assert_eq!(&queue_read(q.as_mut(), 0, 512)[..4], b"keep");
        run_one(q.as_mut(), req(IoOp::Flush, 0, 0, vec![], 0)).unwrap();
        dev.flush().unwrap();
    }
}

#[test]
fn out_of_range_and_bad_requests_are_refused() {
    for engine in engines() {
        let f = temp_file(MIB);
        let dev = open_file(f.path(), CacheMode::Writeback, engine);
        let mut buf = vec![0u8; 1024];
        assert!(matches!(
            dev.read_at(&mut buf, MIB - 512),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            dev.write_at(&buf, u64::MAX - 10),
            Err(Error::OutOfRange { .. })
        ));
        let mut q = dev.open_queue(&QueueOptions { depth: 4 }).unwrap();
        let cases = [
            req(IoOp::Read, MIB, 1024, vec![iov(&mut buf)], 0),
            req(IoOp::Discard, MIB - 512, 1024, vec![], 0),
            req(
                IoOp::WriteZeroes { may_unmap: true },
                u64::MAX,
                1,
                vec![],
                0,
            ),
        ];
        for r in cases {
            let s = q.submit(r).unwrap();
            assert!(
                matches!(s, Submitted::Done(Err(Error::OutOfRange { .. }))),
                "{s:?}"
            );
        }
        // Buffers that do not add up to the length.
        let s = q
            .submit(req(IoOp::Read, 0, 4096, vec![iov(&mut buf)], 0))
            .unwrap();
        assert!(
            matches!(s, Submitted::Done(Err(Error::InvalidOption { .. }))),
            "{s:?}"
        );
        // Zero-length requests finish at once.
        let s = q.submit(req(IoOp::Read, 0, 0, vec![], 0)).unwrap();
        assert!(matches!(s, Submitted::Done(Ok(()))));
        assert_eq!(q.in_flight(), 0);
        assert!(matches!(
            dev.open_queue(&QueueOptions { depth: 0 }),
            Err(Error::InvalidOption { name: "depth", .. })
        ));
    }
}

#[test]
fn queue_full_is_reported_not_blocking() {
    for engine in engines() {
        let f = temp_file(MIB);
        let dev = open_file(f.path(), CacheMode::Writeback, engine);
        let mut q = dev.open_queue(&QueueOptions { depth: 4 }).unwrap();
        let mut bufs: Vec<Vec<u8>> = (0..5).map(|_| vec![0u8; 4096]).collect();
        for (i, b) in bufs.iter_mut().enumerate() {
            let r = req(IoOp::Read, i as u64 * 4096, 4096, vec![iov(b)], i as u64);
            let res = q.submit(r);
            if i < 4 {
                assert!(matches!(res, Ok(Submitted::Queued)));
            } else {
                assert!(matches!(res, Err(Error::QueueFull { depth: 4 })));
            }
        }
        q.kick().unwrap();
        assert_eq!(wait_for(q.as_mut(), 4).len(), 4);
        assert_eq!(q.in_flight(), 0);
        let mut out = Vec::new();
        assert_eq!(q.reap(&mut out), 0, "reap never blocks");
    }
}

#[test]
fn short_file_reads_as_zeroes() {
    for engine in engines() {
        // A file whose length is not a block multiple: the partial block reads as zeroes.
        let f = temp_file(0);
        f.as_file().write_all_at(&[0x55; 1000], 0).unwrap();
        let dev = open_file(f.path(), CacheMode::Writeback, engine);
        assert_eq!(dev.info().size, 1024);
        let mut q = dev.open_queue(&QueueOptions { depth: 4 }).unwrap();
        let got = queue_read(q.as_mut(), 0, 1024);
        assert!(got[..1000].iter().all(|&b| b == 0x55));
        assert!(got[1000..].iter().all(|&b| b == 0));
        let mut sync = vec![0xffu8; 1024];
        dev.read_at(&mut sync, 0).unwrap();
        assert_eq!(sync, got);

        // A file truncated behind our back, in buffered and O_DIRECT mode.
        for cache in [CacheMode::Writeback, CacheMode::None] {
            let f = temp_file(0);
            f.as_file().write_all_at(&pattern(3, 65536), 0).unwrap();
            let dev = open_file(f.path(), cache, engine);
            let mut q = dev.open_queue(&QueueOptions { depth: 4 }).unwrap();
            f.as_file().set_len(10_000).unwrap();
            let got = queue_read(q.as_mut(), 0, 65536);
            assert_eq!(
                &got[..10_000],
                &pattern(3, 65536)[..10_000],
                "{engine} {cache}"
            );
            assert!(got[10_000..].iter().all(|&b| b == 0), "{engine} {cache}");
            let mut sync = vec![0xffu8; 65536];
            dev.read_at(&mut sync, 0).unwrap();
            assert_eq!(sync, got);
        }
    }
}

#[test]
fn direct_io_bounces_unaligned_buffers() {
    for engine in engines() {
        for cache in [CacheMode::None, CacheMode::Directsync] {
            let f = temp_file(MIB);
            let dev = open_file(f.path(), cache, engine);
            let info = dev.info().clone();
            let lbs = info.logical_block_size as usize;
            assert!(lbs == 512 || lbs == 4096, "{info:?}");
            assert!(info.mem_align >= 1);
            let mut q = dev.open_queue(&QueueOptions { depth: 8 }).unwrap();

            // Buffers at an odd address, and lengths that are not block multiples.
            let data = pattern(11, 2 * lbs);
            let mut raw = vec![0u8; 2 * lbs + 3];
            raw[1..1 + 2 * lbs].copy_from_slice(&data);
            let (a, b) = raw[1..1 + 2 * lbs].split_at_mut(100);
            let r = req(
                IoOp::Write,
                lbs as u64,
                2 * lbs as u64,
                vec![iov(a), iov(b)],
                1,
            );
            run_one(q.as_mut(), r).unwrap();
            let mut back = vec![0u8; 2 * lbs + 1];
            let r = req(
                IoOp::Read,
                lbs as u64,
                2 * lbs as u64,
                vec![iov(&mut back[1..])],
                2,
            );
            run_one(q.as_mut(), r).unwrap();
            assert_eq!(&back[1..], &data[..], "{engine} {cache}");

            // Reads at unaligned offsets/lengths are widened; writes are refused.
            let mut part = vec![0u8; 300];
            let r = req(IoOp::Read, lbs as u64 + 100, 300, vec![iov(&mut part)], 3);
            run_one(q.as_mut(), r).unwrap();
            assert_eq!(&part[..], &data[100..400]);
            let r = req(IoOp::Write, 100, 300, vec![iov(&mut part)], 4);
            assert!(matches!(
                run_one(q.as_mut(), r),
                Err(Error::Unaligned { .. })
            ));

            // The synchronous path does read-modify-write for unaligned ranges.
            dev.write_at(b"hello", 7).unwrap();
            let mut five = [0u8; 5];
            dev.read_at(&mut five, 7).unwrap();
            assert_eq!(&five, b"hello");
            let mut around = vec![0xffu8; 20];
            dev.read_at(&mut around, 0).unwrap();
            assert_eq!(&around[..7], &[0u8; 7]);
            assert_eq!(&around[12..], &[0u8; 8]);
        }
    }
}

#[test]
fn more_buffers_than_iov_max_are_bounced() {
    for engine in engines() {
        let f = temp_file(4 * MIB);
        let dev = open_file(f.path(), CacheMode::Writeback, engine);
        let mut q = dev.open_queue(&QueueOptions { depth: 2 }).unwrap();
        let data = pattern(5, 1500 * 512);
        let mut w = data.clone();
        let v: Vec<IoVec> = w.chunks_mut(512).map(iov).collect();
        run_one(q.as_mut(), req(IoOp::Write, 4096, data.len() as u64, v, 0)).unwrap();
        let mut r = vec![0u8; data.len()];
        let v: Vec<IoVec> = r.chunks_mut(512).map(iov).collect();
        run_one(q.as_mut(), req(IoOp::Read, 4096, data.len() as u64, v, 0)).unwrap();
        assert_eq!(r, data);
    }
}

#[test]
fn dropping_a_busy_queue_waits_for_its_requests() {
    for engine in engines() {
        let f = temp_file(8 * MIB);
        let dev = open_file(f.path(), CacheMode::Writeback, engine);
        let mut bufs: Vec<Vec<u8>> = (0..32).map(|_| vec![0u8; 65536]).collect();
        let mut q = dev.open_queue(&QueueOptions { depth: 33 }).unwrap();
        for (i, b) in bufs.iter_mut().enumerate() {
            let r = req(IoOp::Write, i as u64 * 65536, 65536, vec![iov(b)], i as u64);
            q.submit(r).unwrap();
        }
        q.submit(req(IoOp::Discard, 0, 4096, vec![], 99)).unwrap();
        q.kick().unwrap();
        drop(q);
        drop(bufs);
    }
}

#[test]
fn open_errors_name_the_path_and_format() {
    let e = FileDev::open("/nonexistent/vstor.img", &OpenOptions::default()).unwrap_err();
    assert!(matches!(&e, Error::Open { path, .. } if path == Path::new("/nonexistent/vstor.img")));
    assert!(e.to_string().contains("/nonexistent/vstor.img"));
    assert_eq!(e.errno(), libc::ENOENT);

    let dir = tempfile::tempdir().unwrap();
    let e = FileDev::open(dir.path(), &OpenOptions::default()).unwrap_err();
    assert!(matches!(e, Error::Open { .. }), "{e}");

    let f = temp_file(MIB);
    let name = f.path().to_str().unwrap();
    // A raw file opened as qcow2: the error names the file and the header field.
    let o = OpenOptions {
        format: Some("qcow2".into()),
        ..Default::default()
    };
    let e = open(name, &o).err().unwrap();
    assert!(
        matches!(&e, Error::Corrupt { .. })
            && e.to_string().contains(name)
            && e.to_string().contains("header.magic"),
        "{e}"
    );
    let o = OpenOptions {
        format: Some("vmdk".into()),
        ..Default::default()
    };
    let e = open(name, &o).err().unwrap();
    assert!(
        matches!(&e, Error::Unsupported { .. }) && e.to_string().contains("vmdk"),
        "{e}"
    );
    let o = OpenOptions {
        format: Some("raw".into()),
        ..Default::default()
    };
    assert_eq!(open(name, &o).unwrap().info().size, MIB);
    assert_eq!(
        open(name, &OpenOptions::default()).unwrap().info().size,
        MIB
    );
    assert_eq!(
        open("null:1M", &OpenOptions::default())
            .unwrap()
            .info()
            .size,
        MIB
    );
    assert_eq!(
        open("memory:64K", &OpenOptions::default())
            .unwrap()
            .info()
            .size,
        65536
    );

    let o = OpenOptions {
        logical_block_size: Some(1000),
        ..Default::default()
    };
    assert!(matches!(
        FileDev::open(f.path(), &o),
        Err(Error::InvalidOption { .. })
    ));
    let o = OpenOptions {
        logical_block_size: Some(4096),
        ..Default::default()
    };
    assert_eq!(
        FileDev::open(f.path(), &o)
            .unwrap()
            .info()
            .logical_block_size,
        4096
    );
}

#[test]
fn block_status_sees_holes() {
    let f = temp_file(4 * MIB);
    f.as_file().write_all_at(&[1u8; 65536], MIB).unwrap();
    f.as_file().sync_all().unwrap();
    let dev = open_file(f.path(), CacheMode::Writeback, EngineKind::Threads);
    let s = dev.block_status(0, 4 * MIB).unwrap();
    assert!(!s.allocated && s.zero && s.len == MIB, "{s:?}");
    let s = dev.block_status(MIB, 4 * MIB - MIB).unwrap();
    assert!(
        s.allocated && !s.zero && s.len >= 65536 && s.len < 3 * MIB,
        "{s:?}"
    );
    let s = dev.block_status(2 * MIB, 2 * MIB).unwrap();
    assert!(!s.allocated && s.zero && s.len == 2 * MIB, "{s:?}");
    assert!(dev.block_status(4 * MIB, 1).is_err());
}

/// A host block device (a loop device over a temp file); skipped where losetup is refused.
#[test]
fn host_block_device() {
    let f = temp_file(8 * MIB);
    let out = std::process::Command::new("losetup")
        .args(["-f", "--show"])
        .arg(f.path())
        .output();
    let dev_path = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        other => {
            eprintln!("skipping: no loop device ({other:?})");
            return;
        }
    };
    let result = std::panic::catch_unwind(|| {
        for engine in engines() {
            for cache in [CacheMode::Writeback, CacheMode::None] {
                let dev = open_file(Path::new(&dev_path), cache, engine);
                assert!(dev.is_block_device());
                let info = dev.info().clone();
                assert_eq!(info.size, 8 * MIB, "{info:?}");
                assert!(info.logical_block_size >= 512 && !info.secure_erase);
                let mut q = dev.open_queue(&QueueOptions { depth: 8 }).unwrap();
                let data = pattern(2, 65536);
                queue_write(q.as_mut(), 65536, &data);
                assert_eq!(queue_read(q.as_mut(), 65536, 65536), data);
                for op in [
                    IoOp::Discard,
                    IoOp::WriteZeroes { may_unmap: false },
                    IoOp::WriteZeroes { may_unmap: true },
                ] {
                    queue_write(q.as_mut(), 65536, &data);
                    run_one(q.as_mut(), req(op, 65536, 65536, vec![], 0)).unwrap();
                    if op != IoOp::Discard || info.discard_zeroes {
                        assert!(queue_read(q.as_mut(), 65536, 65536).iter().all(|&b| b == 0));
                    }
                }
                // Secure erase: done or cleanly unsupported (loop devices cannot).
                match run_one(q.as_mut(), req(IoOp::SecureErase, 0, 4096, vec![], 0)) {
                    Ok(()) | Err(Error::Unsupported { .. }) => {}
                    Err(e) => panic!("secure erase: {e}"),
                }
                run_one(q.as_mut(), req(IoOp::Flush, 0, 0, vec![], 0)).unwrap();
            }
        }
    });
    let _ = std::process::Command::new("losetup")
        .args(["-d", &dev_path])
        .status();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

#[test]
fn concurrent_queues_on_one_device() {
    for engine in engines() {
        let f = temp_file(8 * MIB);
        let dev = std::sync::Arc::new(open_file(f.path(), CacheMode::None, engine));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let dev = dev.clone();
                std::thread::spawn(move || {
                    let mut q = dev.open_queue(&QueueOptions { depth: 16 }).unwrap();
                    for round in 0..8u64 {
                        let off = t * 2 * MIB + round * 65536;
                        let data = pattern(t * 100 + round, 65536);
                        queue_write(q.as_mut(), off, &data);
                        assert_eq!(queue_read(q.as_mut(), off, 65536), data);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}

#[test]
fn writes_past_the_end_of_a_file_are_refused_but_the_last_block_works() {
    let mut f = temp_file(0);
    f.write_all(&[7u8; 4096 + 100]).unwrap();
    let dev = open_file(f.path(), CacheMode::Writeback, EngineKind::Threads);
    assert_eq!(dev.info().size, 4096 + 512);
    dev.write_at(&[9u8; 512], 4096).unwrap();
    assert!(dev.write_at(&[9u8; 513], 4096).is_err());
    assert_eq!(f.as_file().metadata().unwrap().len(), 4096 + 512);
}
