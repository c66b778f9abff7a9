//! `VSTOR_DISABLE_IO_URING=1` makes vstor behave as if the kernel refused io_uring: `Auto`
//! falls back to threads and `IoUring` fails to open. (Its own test binary: it sets the
//! environment before anything else runs.)

use vstor_blockdev::engine::{self, DISABLE_IO_URING_ENV};
use vstor_blockdev::{
    BlockDev, EngineKind, Error, FileDev, IoOp, IoRequest, IoVec, OpenOptions, QueueOptions,
    Submitted,
};

#[test]
fn env_override_forces_the_thread_fallback() {
    // The only test in this binary, so no other thread reads the environment concurrently.
    std::env::set_var(DISABLE_IO_URING_ENV, "1");
    assert!(!engine::io_uring_available());

    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(1 << 20).unwrap();
    let auto = OpenOptions::default();
    let dev = FileDev::open(f.path(), &auto).unwrap();
    assert_eq!(dev.engine(), EngineKind::Threads);
    assert!(dev.info().description.contains("aio=threads"));

    let forced = OpenOptions {
        engine: EngineKind::IoUring,
        ..Default::default()
    };
    let e = FileDev::open(f.path(), &forced).unwrap_err();
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
    assert!(e.to_string().contains(DISABLE_IO_URING_ENV), "{e}");

    // The fallback queue works.
    let mut q = dev.open_queue(&QueueOptions { depth: 4 }).unwrap();
    let mut buf = vec![0xabu8; 4096];
    // SAFETY: `buf` outlives the request, which completes before the end of the test.
    let v = vec![unsafe { IoVec::from_slice(&mut buf) }];
    let r = IoRequest {
        op: IoOp::Write,
        offset: 0,
        len: 4096,
        iovecs: v,
        tag: 1,
    };
    assert!(matches!(q.submit(r).unwrap(), Submitted::Queued));
    q.kick().unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while out.is_empty() {
        q.reap(&mut out);
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(out[0].result.is_ok());
    let mut back = vec![0u8; 4096];
    dev.read_at(&mut back, 0).unwrap();
    assert_eq!(back, buf);

    std::env::set_var(DISABLE_IO_URING_ENV, "0");
    let dev = FileDev::open(f.path(), &auto).unwrap();
    assert_eq!(
        dev.engine() == EngineKind::IoUring,
        engine::io_uring_available()
    );
}
