//! `VirtioBlk` through the `VirtioDevice` trait, as an in-process transport drives it.

use std::sync::{Arc, Mutex};

use vstor_blockdev::file::FileDev;
use vstor_blockdev::memory::{MemoryDev, MemoryOptions};
use vstor_blockdev::open::OpenOptions;
use vstor_blockdev::BlockDev;
use vstor_virtio_core::device::{ActivateContext, DeviceType, VirtioDevice};
use vstor_virtio_core::interrupt::{CallbackInterrupt, InterruptKind};
use vstor_virtio_core::virtio_queue::QueueT;
use vstor_virtio_core::GuestMemoryAtomic;

use crate::config::{BlkOptions, BlkShared};
use crate::mock::{Harness, Layout};
use crate::request::{S_IOERR, S_OK};
use crate::VirtioBlk;

const IN: u32 = 0;
const OUT: u32 = 1;

type Log = Arc<Mutex<Vec<InterruptKind>>>;

/// A device activated on the harness's queue, with its interrupts recorded.
fn activate(h: &Harness, dev: Arc<dyn BlockDev>, opts: BlkOptions) -> (VirtioBlk, Log) {
    let mut blk = VirtioBlk::new(BlkShared::new(dev, opts).unwrap());
    let log: Log = Arc::default();
    let sink = log.clone();
    blk.activate(ActivateContext {
        mem: GuestMemoryAtomic::new((*h.mem).clone()),
        interrupt: Arc::new(CallbackInterrupt(move |k| sink.lock().unwrap().push(k))),
        queues: vec![Some(h.device_queue(true))],
        features: blk.device_features() | vstor_virtio_core::features::COMMON_FEATURES,
    })
    .unwrap();
    (blk, log)
}

/// Runs the device until `pending` requests are answered, as an event loop would.
fn drive(blk: &mut VirtioBlk) {
    blk.queue_notify(0).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while let Some(fd) = blk.completion_fd(0) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: a valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, 50) };
        blk.process_completions(0).unwrap();
        if blk.queue(0).unwrap().next_used() == blk.queue(0).unwrap().next_avail()
            || std::time::Instant::now() > deadline
        {
            break;
        }
    }
}

fn memdev() -> Arc<dyn BlockDev> {
    Arc::new(MemoryDev::new(1 << 20, MemoryOptions::default()).unwrap())
}

#[test]
fn requests_complete_and_interrupt_the_queue() {
    let mut h = Harness::new(memdev(), BlkOptions::default());
    let (mut blk, log) = activate(&h, memdev(), BlkOptions::default());
    assert_eq!(blk.device_type(), DeviceType::Block);
    let data = vec![0x5au8; 4096];
    let w = h.submit(Layout::Linux, OUT, 8, &data, 0);
    drive(&mut blk);
    assert_eq!(h.response(w).status, S_OK);
    let r = h.submit(Layout::Indirect, IN, 8, &[], 4096);
    drive(&mut blk);
    let r = h.response(r);
    assert_eq!((r.status, r.data), (S_OK, data));
    assert!(log.lock().unwrap().contains(&InterruptKind::Queue(0)));
    assert!(!blk.needs_reset());
}

#[test]
fn asynchronous_file_device_completes_through_the_completion_fd() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.raw");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let file: Arc<dyn BlockDev> = Arc::new(FileDev::open(&path, &OpenOptions::default()).unwrap());
    let mut h = Harness::new(memdev(), BlkOptions::default());
    let (mut blk, log) = activate(&h, file.clone(), BlkOptions::default());
    assert!(
        blk.completion_fd(0).is_some(),
        "file queues complete asynchronously"
    );
    let pending: Vec<_> = (0..16u64)
        .map(|i| h.submit(Layout::Linux, OUT, i * 8, &[i as u8 + 1; 4096], 0))
        .collect();
    drive(&mut blk);
    for p in pending {
        assert_eq!(h.response(p).status, S_OK);
    }
    let mut back = [0u8; 4096];
    file.read_at(&mut back, 15 * 4096).unwrap();
    assert_eq!(back, [16u8; 4096]);
    assert!(log.lock().unwrap().contains(&InterruptKind::Queue(0)));
}

#[test]
fn hostile_chain_sets_needs_reset_and_raises_a_config_interrupt() {
    let mut h = Harness::new(memdev(), BlkOptions::default());
    let (mut blk, log) = activate(&h, memdev(), BlkOptions::default());
    // A two-descriptor loop: 0 -> 1 -> 0.
    let a = h.alloc(16);
    h.write_desc(0, a, 16, 1, 1);
    h.write_desc(1, a, 16, 1, 0);
    h.publish(0);
    blk.queue_notify(0).unwrap();
    assert!(blk.needs_reset());
    assert_eq!(log.lock().unwrap().as_slice(), &[InterruptKind::Config]);
    assert!(
        h.take_used().is_empty(),
        "nothing is answered on a broken queue"
    );
    // A reset clears the condition; the device can be activated again.
    blk.reset();
    assert!(!blk.needs_reset());
    assert!(blk.queue_notify(0).is_err(), "no queues after reset");
}

#[test]
fn config_space_and_writeback_toggle() {
    let h = Harness::new(memdev(), BlkOptions::default());
    let (mut blk, _) = activate(
        &h,
        memdev(),
        BlkOptions {
            writeback: Some(true),
            ..Default::default()
        },
    );
    assert_eq!(blk.config_len(), 72);
    let mut cap = [0u8; 8];
    blk.read_config(0, &mut cap).unwrap();
    assert_eq!(u64::from_le_bytes(cap), (1 << 20) / 512);
    let gen = blk.config_generation();
    // The driver turns the write cache off (CONFIG_WCE, offset 32).
    blk.write_config(32, &[0]).unwrap();
    let mut wce = [9u8];
    blk.read_config(32, &mut wce).unwrap();
    assert_eq!(wce, [0]);
    assert!(!blk.shared().writeback());
    assert_eq!(
        blk.config_generation(),
        gen,
        "driver writes do not bump the generation"
    );
    // Out-of-bounds accesses are errors naming the range, not panics.
    let err = blk.read_config(70, &mut [0u8; 4]).unwrap_err();
    assert!(err.to_string().contains("70"), "{err}");
    assert!(blk.write_config(u64::MAX, &[1]).is_err());
}

#[test]
fn state_round_trips_and_rejects_garbage() {
    let h = Harness::new(memdev(), BlkOptions::default());
    let (mut blk, _) = activate(&h, memdev(), BlkOptions::default());
    blk.write_config(32, &[0]).unwrap();
    let state = blk.save_state().unwrap();
    let (mut other, _) = activate(&h, memdev(), BlkOptions::default());
    assert!(other.shared().writeback());
    other.restore_state(&state).unwrap();
    assert!(!other.shared().writeback());
    for bad in [&[][..], &[2][..], &[1, 0][..]] {
        let err = other.restore_state(bad).unwrap_err();
        assert!(err.to_string().contains("virtio-blk state"), "{err}");
    }
}

#[test]
fn read_only_device_through_the_trait() {
    let mut h = Harness::new(memdev(), BlkOptions::default());
    let (mut blk, _) = activate(
        &h,
        memdev(),
        BlkOptions {
            read_only: true,
            ..Default::default()
        },
    );
    assert_ne!(blk.device_features() & crate::config::feature::RO, 0);
    let w = h.submit(Layout::SharedStatus, OUT, 0, &[1u8; 512], 0);
    blk.queue_notify(0).unwrap();
    assert_eq!(h.response(w).status, S_IOERR);
}
