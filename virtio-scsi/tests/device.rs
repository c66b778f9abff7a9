//! virtio-scsi through its queues, driven the way Linux's virtio_scsi driver drives it:
//! addressing (targets, LUNs, missing units, the REPORT LUNS well-known LUN), responses,
//! sense and residuals, bidirectional and oversized requests, task management functions,
//! asynchronous notification and events (hotplug, unplug, capacity change, EVENTS_MISSED).

use std::sync::Arc;

use vstor_blockdev::memory::MemoryDev;
use vstor_blockdev::BlockDev;
use vstor_scsi_disk::{status, LogicalUnit, LunOptions};
use vstor_virtio_scsi::mock::Harness;
use vstor_virtio_scsi::protocol::{an, event, feature, response, tmf};
use vstor_virtio_scsi::{LunAddr, ScsiOptions, ScsiShared};

fn unit(size: u64, serial: &str) -> Arc<LogicalUnit> {
    let dev: Arc<dyn BlockDev> = Arc::new(MemoryDev::new(size, Default::default()).unwrap());
    Arc::new(LogicalUnit::new(
        dev,
        LunOptions {
            serial: serial.into(),
            ..Default::default()
        },
    ))
}

fn addr(target: u8, lun: u16) -> LunAddr {
    LunAddr { target, lun }
}

/// A harness with units at 0/0, 0/5, 0/300 and 7/0.
/// The units are there before the driver starts (no hotplug events for them).
fn harness() -> Harness {
    let shared = ScsiShared::new(ScsiOptions::default()).unwrap();
    for (t, l) in [(0, 0), (0, 5), (0, 300), (7, 0)] {
        shared
            .attach(t, l, unit(16 << 20, &format!("s{t}-{l}")))
            .unwrap();
    }
    Harness::over(shared, None)
}

/// Clears the power-on unit attention of a unit.
fn clear_ua(h: &mut Harness, a: LunAddr) {
    let r = h.command(a, &[0, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(r.status, status::CHECK_CONDITION);
    assert_eq!(r.key_asc_ascq(), Some((6, 0x29, 0)));
}

const INQUIRY: [u8; 6] = [0x12, 0, 0, 0, 96, 0];

#[test]
fn inquiry_reaches_the_addressed_unit() {
    let mut h = harness();
    let r = h.command(addr(0, 300), &[0x12, 1, 0x80, 0, 64, 0], &[], 64);
    assert_eq!((r.response, r.status), (response::OK, status::GOOD));
    assert_eq!(&r.data[4..10], b"s0-300");
    assert_eq!(r.resid, 64 - 10);
    let r = h.command(addr(7, 0), &INQUIRY, &[], 96);
    assert_eq!(r.response, response::OK);
    assert_eq!(r.data[0], 0x00, "connected disk");
}

#[test]
fn missing_targets_and_units() {
    let mut h = harness();
    // No unit on target 3 at all: BAD_TARGET, as Linux's scan expects.
    let r = h.command(addr(3, 0), &INQUIRY, &[], 96);
    assert_eq!(r.response, response::BAD_TARGET);
    // Target 0 exists, LUN 1 does not: peripheral qualifier 011b, then LUN NOT SUPPORTED.
    let r = h.command(addr(0, 1), &INQUIRY, &[], 96);
    assert_eq!((r.response, r.status), (response::OK, status::GOOD));
    assert_eq!(r.data[0], 0x7f);
    let r = h.command(addr(0, 1), &[0, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(r.status, status::CHECK_CONDITION);
    assert_eq!(r.key_asc_ascq(), Some((5, 0x25, 0)));
    // A malformed address (second level) is BAD_TARGET.
    let r = h.command_lun([1, 0, 0x40, 0, 0, 0, 1, 0], 0, &INQUIRY, &[], 96);
    assert_eq!(r.response, response::BAD_TARGET);
}

fn report_luns(h: &mut Harness, a: LunAddr, select: u8) -> Vec<[u8; 8]> {
    let r = h.command(a, &[0xa0, 0, select, 0, 0, 0, 0, 0, 16, 0, 0, 0], &[], 4096);
    assert_eq!(
        (r.response, r.status),
        (response::OK, status::GOOD),
        "{r:?}"
    );
    let n = u32::from_be_bytes(r.data[..4].try_into().unwrap()) as usize / 8;
    (0..n)
        .map(|i| r.data[8 + 8 * i..16 + 8 * i].try_into().unwrap())
        .collect()
}

#[test]
fn report_luns_lists_the_target_and_the_well_known_lun_answers() {
    let mut h = harness();
    clear_ua(&mut h, addr(0, 0));
    let luns = report_luns(&mut h, addr(0, 0), 0);
    assert_eq!(
        luns,
        vec![
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 5, 0, 0, 0, 0, 0, 0],
            [0x41, 0x2c, 0, 0, 0, 0, 0, 0]
        ]
    );
    // Through a LUN that is not there, and through the W-LUN (select 2 adds it).
    assert_eq!(report_luns(&mut h, addr(0, 1), 0).len(), 3);
    let wlun = LunAddr {
        target: 0,
        lun: 0xc101,
    };
    let all = report_luns(&mut h, wlun, 2);
    assert_eq!(all.len(), 4);
    assert_eq!(all[3], [0xc1, 0x01, 0, 0, 0, 0, 0, 0]);
    assert_eq!(report_luns(&mut h, addr(7, 0), 0).len(), 1);
}

#[test]
fn read_write_with_residuals_and_sense() {
    let mut h = harness();
    let a = addr(0, 5);
    clear_ua(&mut h, a);
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    // WRITE(10) LBA 8, 16 blocks.
    let r = h.command(a, &[0x2a, 0, 0, 0, 0, 8, 0, 0, 16, 0], &data, 0);
    assert_eq!(
        (r.response, r.status, r.resid),
        (response::OK, status::GOOD, 0)
    );
    // READ(10) into a larger buffer: residual is the unused tail.
    let r = h.command(a, &[0x28, 0, 0, 0, 0, 8, 0, 0, 16, 0], &[], 10000);
    assert_eq!((r.status, r.resid), (status::GOOD, 10000 - 8192));
    assert_eq!(&r.data[..8192], &data[..]);
    // Past the end: CHECK CONDITION, LBA OUT OF RANGE, nothing transferred.
    let r = h.command(a, &[0x28, 0, 0, 0, 0x80, 0, 0, 0, 1, 0], &[], 512);
    assert_eq!(r.status, status::CHECK_CONDITION);
    assert_eq!(r.key_asc_ascq(), Some((5, 0x21, 0)));
    assert_eq!(r.resid, 512);
    assert_eq!(r.sense.len(), 18);
}

#[test]
fn bidirectional_needs_inout_and_oversized_data_out_overruns() {
    let opts = ScsiOptions {
        max_sectors: 8,
        ..Default::default()
    };
    let mut h = Harness::new(opts.clone(), Some(feature::HOTPLUG));
    h.shared.attach(0, 0, unit(1 << 20, "x")).unwrap();
    let r = h.command(addr(0, 0), &INQUIRY, &[0; 8], 96);
    assert_eq!(r.response, response::FAILURE, "INOUT not negotiated");
    let mut h = Harness::new(opts, None);
    h.shared.attach(0, 0, unit(1 << 20, "x")).unwrap();
    let r = h.command(
        addr(0, 0),
        &[0x2a, 0, 0, 0, 0, 0, 0, 0, 9, 0],
        &[0; 9 * 512],
        0,
    );
    assert_eq!(r.response, response::OVERRUN);
}

#[test]
fn task_management_functions() {
    let mut h = harness();
    let a = addr(0, 5);
    clear_ua(&mut h, a);
    // Nothing in flight: queries complete, aborts complete.
    assert_eq!(
        h.tmf(tmf::QUERY_TASK, a.encode(), 9),
        response::FUNCTION_COMPLETE
    );
    assert_eq!(
        h.tmf(tmf::QUERY_TASK_SET, a.encode(), 0),
        response::FUNCTION_COMPLETE
    );
    assert_eq!(
        h.tmf(tmf::ABORT_TASK, a.encode(), 9),
        response::FUNCTION_COMPLETE
    );
    assert_eq!(
        h.tmf(tmf::ABORT_TASK_SET, a.encode(), 0),
        response::FUNCTION_COMPLETE
    );
    assert_eq!(
        h.tmf(tmf::CLEAR_ACA, a.encode(), 0),
        response::FUNCTION_REJECTED
    );
    assert_eq!(h.tmf(99, a.encode(), 0), response::FUNCTION_REJECTED);
    assert_eq!(
        h.tmf(tmf::ABORT_TASK, addr(3, 0).encode(), 0),
        response::BAD_TARGET
    );
    assert_eq!(
        h.tmf(tmf::ABORT_TASK, addr(0, 9).encode(), 0),
        response::INCORRECT_LUN
    );
    // LOGICAL UNIT RESET: that unit reports BUS DEVICE RESET FUNCTION OCCURRED, others not.
    clear_ua(&mut h, addr(0, 0));
    assert_eq!(
        h.tmf(tmf::LOGICAL_UNIT_RESET, a.encode(), 0),
        response::FUNCTION_COMPLETE
    );
    let r = h.command(a, &[0, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(r.key_asc_ascq(), Some((6, 0x29, 0x03)));
    let r = h.command(addr(0, 0), &[0, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(r.status, status::GOOD);
    // I_T NEXUS RESET: every unit of the target reports I_T NEXUS LOSS OCCURRED.
    assert_eq!(
        h.tmf(tmf::I_T_NEXUS_RESET, a.encode(), 0),
        response::FUNCTION_COMPLETE
    );
    for l in [0, 5] {
        let r = h.command(addr(0, l), &[0, 0, 0, 0, 0, 0], &[], 0);
        assert_eq!(r.key_asc_ascq(), Some((6, 0x29, 0x07)), "LUN {l}");
    }
}

#[test]
fn abort_task_from_another_thread_aborts_the_running_command() {
    let h = harness();
    let shared = h.shared.clone();
    let a = addr(0, 5);
    // A command registered in the task set, as a request queue does while it runs.
    let id = shared.tasks().start(a, 42);
    let s2 = shared.clone();
    let t = std::thread::spawn(move || {
        let mut h2 = Harness::over(s2, None);
        h2.tmf(tmf::QUERY_TASK, a.encode(), 42)
    });
    // QUERY TASK sees it (the control queue of another harness over the same device).
    assert_eq!(t.join().unwrap(), response::FUNCTION_SUCCEEDED);
    let s3 = shared.clone();
    let t = std::thread::spawn(move || {
        let mut h3 = Harness::over(s3, None);
        h3.tmf(tmf::ABORT_TASK, a.encode(), 42)
    });
    while !shared.tasks().is_aborted(&id) {
        std::thread::yield_now();
    }
    assert!(!t.is_finished(), "the TMF waits for the aborted command");
    assert!(shared.tasks().finish(id), "the command sees it was aborted");
    assert_eq!(t.join().unwrap(), response::FUNCTION_COMPLETE);
}

#[test]
fn hotplug_unplug_and_capacity_events() {
    let mut h = harness();
    let mut bufs = h.post_event_buffers(4);
    assert!(h.take_events(&mut bufs).is_empty());
    h.shared.attach(2, 17, unit(1 << 20, "hot")).unwrap();
    let ev = h.take_events(&mut bufs);
    assert_eq!(
        ev,
        vec![(
            event::TRANSPORT_RESET,
            addr(2, 17).encode(),
            event::RESET_RESCAN
        )]
    );
    // The new unit answers; the old units of target 0 learn nothing (other target).
    let r = h.command(addr(2, 17), &INQUIRY, &[], 96);
    assert_eq!(r.status, status::GOOD);
    // Another unit on target 0: the others get REPORTED LUNS DATA HAS CHANGED.
    clear_ua(&mut h, addr(0, 0));
    h.shared.attach(0, 6, unit(1 << 20, "hot2")).unwrap();
    let r = h.command(addr(0, 0), &[0, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(r.key_asc_ascq(), Some((6, 0x3f, 0x0e)));
    h.shared.detach(2, 17).unwrap();
    let ev = h.take_events(&mut bufs);
    assert_eq!(
        ev,
        vec![
            (
                event::TRANSPORT_RESET,
                addr(0, 6).encode(),
                event::RESET_RESCAN
            ),
            (
                event::TRANSPORT_RESET,
                addr(2, 17).encode(),
                event::RESET_REMOVED
            )
        ]
    );
    assert_eq!(
        h.command(addr(2, 17), &INQUIRY, &[], 96).response,
        response::BAD_TARGET
    );
    // Capacity change: unit attention and PARAM_CHANGE 2Ah/09h.
    let u = h.shared.unit(addr(0, 5)).unwrap();
    clear_ua(&mut h, addr(0, 5));
    let bigger: Arc<dyn BlockDev> = Arc::new(MemoryDev::new(32 << 20, Default::default()).unwrap());
    u.replace_medium(Some(bigger));
    h.shared.capacity_changed(addr(0, 5));
    let ev = h.take_events(&mut bufs);
    assert_eq!(ev, vec![(event::PARAM_CHANGE, addr(0, 5).encode(), 0x092a)]);
    let r = h.command(addr(0, 5), &[0, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(r.key_asc_ascq(), Some((6, 0x2a, 0x09)));
    let r = h.command(addr(0, 5), &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    assert_eq!(
        u32::from_be_bytes(r.data[..4].try_into().unwrap()),
        (32 << 20) / 512 - 1
    );
    // Detaching something that is not there is an error naming it.
    let e = h.shared.detach(0, 99).unwrap_err().to_string();
    assert!(e.contains("target 0 LUN 99"), "{e}");
    assert!(h.shared.attach(0, 16384, unit(1 << 20, "x")).is_err());
    assert!(h.shared.attach(256, 0, unit(1 << 20, "x")).is_err());
    assert!(
        h.shared.attach(0, 5, unit(1 << 20, "x")).is_err(),
        "LUN taken"
    );
}

#[test]
fn events_wait_for_buffers_and_overflow_reports_events_missed() {
    let mut h = harness();
    for l in 10..10 + 70u32 {
        h.shared.attach(1, l, unit(1 << 20, "m")).unwrap();
    }
    let mut bufs = h.post_event_buffers(70);
    let ev = h.take_events(&mut bufs);
    assert_eq!(ev.len(), 64, "64 kept, 6 dropped");
    assert_eq!(ev[0].0, event::TRANSPORT_RESET | event::EVENTS_MISSED);
    assert!(ev[1..].iter().all(|e| e.0 == event::TRANSPORT_RESET));
    // The driver rescans on EVENTS_MISSED; later events are plain again.
    h.shared.detach(1, 10).unwrap();
    let ev = h.take_events(&mut bufs);
    assert_eq!(
        ev,
        vec![(
            event::TRANSPORT_RESET,
            addr(1, 10).encode(),
            event::RESET_REMOVED
        )]
    );
}

#[test]
fn no_events_without_hotplug_feature() {
    let mut h = Harness::new(ScsiOptions::default(), Some(0));
    let mut bufs = h.post_event_buffers(2);
    h.shared.attach(0, 0, unit(1 << 20, "x")).unwrap();
    assert!(h.take_events(&mut bufs).is_empty());
}

#[test]
fn asynchronous_notification_query_and_subscribe() {
    let mut h = harness();
    // A disk has no removable media: no class is supported.
    let (actual, resp) = h.an(
        false,
        addr(0, 0).encode(),
        an::MEDIA_CHANGE | an::OPERATIONAL_CHANGE,
    );
    assert_eq!((actual, resp), (0, response::OK));
    let (_, resp) = h.an(true, addr(3, 0).encode(), an::MEDIA_CHANGE);
    assert_eq!(resp, response::BAD_TARGET);
}

#[test]
fn config_space_and_driver_sizes() {
    let h = harness();
    let mut cfg = [0u8; 36];
    h.shared.read_config(0, &mut cfg).unwrap();
    let le32 = |o: usize| u32::from_le_bytes(cfg[o..o + 4].try_into().unwrap());
    assert_eq!(le32(0), 1, "num_queues");
    assert_eq!(le32(16), 16, "event_info_size");
    assert_eq!(le32(20), 96, "sense_size");
    assert_eq!(le32(24), 32, "cdb_size");
    assert_eq!(u16::from_le_bytes([cfg[30], cfg[31]]), 255, "max_target");
    assert_eq!(le32(32), 16383, "max_lun");
    assert!(h.shared.read_config(30, &mut [0; 8]).is_err());
    // The driver shrinks the sense buffer and grows the CDB; both are honoured.
    h.shared.write_config(20, &64u32.to_le_bytes()).unwrap();
    h.shared.write_config(24, &16u32.to_le_bytes()).unwrap();
    assert_eq!((h.shared.sense_size(), h.shared.cdb_size()), (64, 16));
    h.shared.write_config(0, &7u32.to_le_bytes()).unwrap();
    let mut nq = [0u8; 4];
    h.shared.read_config(0, &mut nq).unwrap();
    assert_eq!(u32::from_le_bytes(nq), 1, "num_queues is read-only");
}

#[test]
fn driver_chosen_sizes_shape_requests() {
    let mut h = harness();
    h.shared.write_config(20, &20u32.to_le_bytes()).unwrap();
    h.shared.write_config(24, &16u32.to_le_bytes()).unwrap();
    let r = h.command(addr(0, 0), &[0, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(r.status, status::CHECK_CONDITION);
    assert_eq!(r.sense.len(), 18, "fits the 20-byte buffer");
    assert_eq!(r.used_len, 12 + 20);
}

#[test]
fn data_split_across_descriptors_goes_through_the_bounce_buffers() {
    use vstor_virtio_scsi::mock::Desc;
    use vstor_virtio_scsi::protocol::queue;
    let mut h = harness();
    let a = addr(0, 0);
    clear_ua(&mut h, a);
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    // WRITE(10) LBA 3, 8 blocks, data-out in two descriptors (bounce), then READ(10) with the
    // response and data-in in three descriptors (bounce), then in Linux's layout (direct).
    let hdr = h.header(a.encode(), 1, &[0x2a, 0, 0, 0, 0, 3, 0, 0, 8, 0]);
    let (hp, d1, d2) = (h.put(&hdr), h.put(&data[..1000]), h.put(&data[1000..]));
    let resp = h.alloc(108);
    h.push(
        queue::FIRST_REQUEST,
        &[
            Desc {
                addr: hp,
                len: hdr.len() as u32,
                write: false,
            },
            Desc {
                addr: d1,
                len: 1000,
                write: false,
            },
            Desc {
                addr: d2,
                len: 3096,
                write: false,
            },
            Desc {
                addr: resp,
                len: 108,
                write: true,
            },
        ],
    );
    h.run(queue::FIRST_REQUEST).unwrap();
    assert_eq!(h.take_used(queue::FIRST_REQUEST).len(), 1);
    assert_eq!(h.get(resp, 12)[10..12], [0, 0], "GOOD, OK");
    let hdr = h.header(a.encode(), 2, &[0x28, 0, 0, 0, 0, 3, 0, 0, 8, 0]);
    let hp = h.put(&hdr);
    let (r1, r2) = (h.alloc(100), h.alloc(4096));
    h.push(
        queue::FIRST_REQUEST,
        &[
            Desc {
                addr: hp,
                len: hdr.len() as u32,
                write: false,
            },
            Desc {
                addr: r1,
                len: 100,
                write: true,
            },
            Desc {
                addr: r2,
                len: 8 + 4096,
                write: true,
            },
        ],
    );
    h.run(queue::FIRST_REQUEST).unwrap();
    let used = h.take_used(queue::FIRST_REQUEST);
    assert_eq!(used[0].1, 108 + 4096);
    let mut got = h.get(r1, 100);
    got.extend(h.get(r2, 8 + 4096));
    assert_eq!(got[10..12], [0, 0]);
    assert_eq!(&got[108..], &data[..]);
    let r = h.command(a, &[0x28, 0, 0, 0, 0, 3, 0, 0, 8, 0], &[], 4096);
    assert_eq!((r.status, r.resid), (status::GOOD, 0));
    assert_eq!(r.data, data);
}
