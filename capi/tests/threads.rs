//! Handles used from several threads while they are freed: every call either works or fails
//! with -EBADF, never touches freed memory (run under the test harness; valgrind/ASan runs of
//! the C programs cover the single-threaded paths).

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use vstor::*;

fn new_device(flags: u32) -> *mut vstor_device {
    let mut bdev = std::ptr::null_mut();
    let path = CString::new("memory:1M").unwrap();
    // SAFETY: valid string, NULL options, valid out pointer.
    assert_eq!(
        unsafe { vstor_blockdev_open(path.as_ptr(), std::ptr::null(), &mut bdev) },
        0
    );
    let cfg = vstor_blk_config {
        flags,
        num_queues: 2,
        ..Default::default()
    };
    let mut dev = std::ptr::null_mut();
    // SAFETY: valid config and out pointer.
    assert_eq!(unsafe { vstor_blk_new(bdev, &cfg, &mut dev) }, 0);
    assert_eq!(vstor_blockdev_close(bdev), 0);
    dev
}

#[test]
fn calls_racing_free_get_ebadf_not_a_crash() {
    for flags in [0, VSTOR_DEVICE_WORKER_THREADS] {
        for _ in 0..20 {
            let dev = new_device(flags);
            let key = dev as usize;
            let stop = Arc::new(AtomicBool::new(false));
            let (ok, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let (stop, ok, bad) = (stop.clone(), ok.clone(), bad.clone());
                    std::thread::spawn(move || {
                        let dev = key as *mut vstor_device;
                        while !stop.load(Ordering::Relaxed) {
                            let mut status = 0u8;
                            // SAFETY: valid out pointer; the handle may be stale, which the
                            // library must detect.
                            let rc = unsafe { vstor_device_status(dev, &mut status) };
                            let rc2 = vstor_device_set_status(dev, 1);
                            for r in [rc, rc2] {
                                match r {
                                    0 => ok.fetch_add(1, Ordering::Relaxed),
                                    r if r == -libc::EBADF => bad.fetch_add(1, Ordering::Relaxed),
                                    // Status writes may legitimately be refused mid-sequence.
                                    r if r == -libc::EBUSY => ok.fetch_add(1, Ordering::Relaxed),
                                    r => panic!("unexpected {r}"),
                                };
                            }
                            if bad.load(Ordering::Relaxed) > 0 {
                                break;
                            }
                        }
                    })
                })
                .collect();
            std::thread::sleep(std::time::Duration::from_micros(200));
            assert_eq!(vstor_device_free(dev), 0);
            std::thread::sleep(std::time::Duration::from_micros(200));
            stop.store(true, Ordering::Relaxed);
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(vstor_device_free(dev), -libc::EBADF);
            assert!(ok.load(Ordering::Relaxed) + bad.load(Ordering::Relaxed) > 0);
        }
    }
}

#[test]
fn struct_versions_grow_without_breaking() {
    let path = CString::new("null:1M").unwrap();
    let mut bdev = std::ptr::null_mut();
    // An "older" caller: a struct cut short before `logical_block_size`.
    #[repr(C)]
    struct Older {
        size: u32,
        flags: u32,
        format: *const std::ffi::c_char,
        cache_mode: u32,
        aio: u32,
    }
    let older = Older {
        size: std::mem::size_of::<Older>() as u32,
        flags: 0,
        format: std::ptr::null(),
        cache_mode: 0,
        aio: 0,
    };
    // SAFETY: `older` is readable for its `size`.
    let rc =
        unsafe { vstor_blockdev_open(path.as_ptr(), (&older as *const Older).cast(), &mut bdev) };
    // The first published version is the whole struct: a shorter one is refused clearly.
    assert_eq!(rc, -libc::EINVAL);
    // SAFETY: vstor_last_error returns a valid C string.
    let msg = unsafe { std::ffi::CStr::from_ptr(vstor_last_error()) };
    assert!(
        msg.to_str().unwrap().contains("vstor_blockdev_opts"),
        "{msg:?}"
    );

    // A "newer" caller: our struct plus a zero tail is accepted, a non-zero tail refused.
    #[repr(C)]
    struct Newer {
        base: vstor_blockdev_opts,
        extra: u64,
    }
    let mut newer = Newer {
        base: vstor_blockdev_opts::default(),
        extra: 0,
    };
    newer.base.size = std::mem::size_of::<Newer>() as u32;
    // SAFETY: `newer` is readable for its `size`.
    let rc =
        unsafe { vstor_blockdev_open(path.as_ptr(), (&newer as *const Newer).cast(), &mut bdev) };
    assert_eq!(rc, 0);
    assert_eq!(vstor_blockdev_close(bdev), 0);
    newer.extra = 1;
    // SAFETY: as above.
    let rc =
        unsafe { vstor_blockdev_open(path.as_ptr(), (&newer as *const Newer).cast(), &mut bdev) };
    assert_eq!(rc, -libc::E2BIG);
}
