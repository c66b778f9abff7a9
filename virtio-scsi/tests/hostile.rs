//! Hostile request chains on each virtio-scsi queue: every malformed request that leaves room
//! for a response is answered (VIRTIO_SCSI_S_FAILURE and friends); one that leaves none stops
//! the queue (DEVICE_NEEDS_RESET) and the queue then stays quiet. Nothing panics.

use std::sync::Arc;

use vstor_blockdev::memory::MemoryDev;
use vstor_scsi_disk::{LogicalUnit, LunOptions};
use vstor_virtio_scsi::mock::{Desc, Harness};
use vstor_virtio_scsi::protocol::{queue, response};
use vstor_virtio_scsi::{Error, LunAddr, ScsiOptions, ScsiShared};

fn harness() -> Harness {
    let shared = ScsiShared::new(ScsiOptions::default()).unwrap();
    let dev = Arc::new(MemoryDev::new(4 << 20, Default::default()).unwrap());
    shared
        .attach(0, 0, Arc::new(LogicalUnit::new(dev, LunOptions::default())))
        .unwrap();
    Harness::over(shared, None)
}

fn rd(addr: u64, len: u32) -> Desc {
    Desc {
        addr,
        len,
        write: false,
    }
}

fn wr(addr: u64, len: u32) -> Desc {
    Desc {
        addr,
        len,
        write: true,
    }
}

/// Publishes `descs` on the request queue, runs it, and returns the response byte (offset 11
/// of the response at `resp`).
fn answer(h: &mut Harness, descs: &[Desc], resp: u64) -> u8 {
    h.push(queue::FIRST_REQUEST, descs);
    h.run(queue::FIRST_REQUEST).unwrap();
    assert_eq!(h.take_used(queue::FIRST_REQUEST).len(), 1);
    h.get(resp, 12)[11]
}

#[test]
fn malformed_commands_are_answered() {
    let mut h = harness();
    let lun = LunAddr { target: 0, lun: 0 }.encode();
    let hdr = h.header(lun, 1, &[0x12, 0, 0, 0, 36, 0]);
    let full = h.put(&hdr);
    let resp = h.alloc(108);
    // Header shorter than 19 + cdb_size.
    assert_eq!(
        answer(&mut h, &[rd(full, 10), wr(resp, 108)], resp),
        response::FAILURE
    );
    // Header split across three descriptors: fine.
    let din = h.alloc(36);
    let r = answer(
        &mut h,
        &[
            rd(full, 5),
            rd(full + 5, 20),
            rd(full + 25, hdr.len() as u32 - 25),
            wr(resp, 108),
            wr(din, 36),
        ],
        resp,
    );
    assert_eq!(r, response::OK);
    // Room for the response header but not the sense buffer.
    assert_eq!(
        answer(&mut h, &[rd(full, hdr.len() as u32), wr(resp, 20)], resp),
        response::FAILURE
    );
    // A LUN address with a second level.
    let bad = h.header([1, 0, 0x40, 0, 0, 0, 0, 1], 2, &[0, 0, 0, 0, 0, 0]);
    let b = h.put(&bad);
    assert_eq!(
        answer(&mut h, &[rd(b, bad.len() as u32), wr(resp, 108)], resp),
        response::BAD_TARGET
    );
}

#[test]
fn chains_without_room_for_a_response_stop_the_queue() {
    for case in 0..3 {
        let mut h = harness();
        let lun = LunAddr { target: 0, lun: 0 }.encode();
        let hdr = h.header(lun, 1, &[0, 0, 0, 0, 0, 0]);
        let a = h.put(&hdr);
        let resp = h.alloc(108);
        let descs = match case {
            // Nothing device-writable.
            0 => vec![rd(a, hdr.len() as u32)],
            // Fewer writable bytes than a response header.
            1 => vec![rd(a, hdr.len() as u32), wr(resp, 11)],
            // A buffer outside guest memory.
            _ => vec![rd(a, hdr.len() as u32), rd(1 << 40, 512), wr(resp, 108)],
        };
        h.push(queue::FIRST_REQUEST, &descs);
        let e = h.run(queue::FIRST_REQUEST).unwrap_err();
        assert!(
            matches!(e, Error::NeedsReset { queue: 2, .. }),
            "case {case}: {e}"
        );
        // The queue stays stopped: a good request now gets no answer.
        h.push(
            queue::FIRST_REQUEST,
            &[rd(a, hdr.len() as u32), wr(resp, 108)],
        );
        h.run(queue::FIRST_REQUEST).unwrap();
        assert!(h.take_used(queue::FIRST_REQUEST).is_empty(), "case {case}");
    }
}

#[test]
fn malformed_control_and_event_requests() {
    let mut h = harness();
    // A TMF request cut short: FAILURE in its one-byte response.
    let short = h.put(&[0u8; 8]);
    let resp = h.put(&[0xff]);
    h.push(queue::CONTROL, &[rd(short, 8), wr(resp, 1)]);
    h.run(queue::CONTROL).unwrap();
    assert_eq!(h.get(resp, 1)[0], response::FAILURE);
    // An unknown control type.
    let unknown = h.put(&[9, 0, 0, 0]);
    h.push(queue::CONTROL, &[rd(unknown, 4), wr(resp, 1)]);
    h.run(queue::CONTROL).unwrap();
    assert_eq!(h.get(resp, 1)[0], response::FAILURE);
    // An event buffer too small for an event stops the event queue once an event comes.
    let small = h.alloc(8);
    h.push(queue::EVENT, &[wr(small, 8)]);
    let dev = Arc::new(MemoryDev::new(1 << 20, Default::default()).unwrap());
    h.shared
        .attach(0, 1, Arc::new(LogicalUnit::new(dev, LunOptions::default())))
        .unwrap();
    assert!(h.run(queue::EVENT).is_err());
    // The event itself is kept for after the reset.
    assert!(h.shared.has_events());
}
