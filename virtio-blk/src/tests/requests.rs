//! Every request type, in the four descriptor layouts.

use std::sync::Arc;

use vstor_blockdev::memory::{MemoryDev, MemoryOptions};
use vstor_blockdev::null::{NullDev, NullOptions};
use vstor_blockdev::BlockDev;

use crate::config::{feature, BlkOptions};
use crate::mock::{Harness, Layout, LAYOUTS};
use crate::request::{LIFETIME, S_IOERR, S_OK, S_UNSUPP};

const IN: u32 = 0;
const OUT: u32 = 1;
const FLUSH: u32 = 4;
const GET_ID: u32 = 8;
const GET_LIFETIME: u32 = 10;
const DISCARD: u32 = 11;
const WRITE_ZEROES: u32 = 13;
const SECURE_ERASE: u32 = 14;

fn memdev(size: u64) -> Arc<MemoryDev> {
    Arc::new(MemoryDev::new(size, MemoryOptions::default()).unwrap())
}

fn harness(dev: Arc<dyn BlockDev>) -> Harness {
    Harness::new(
        dev,
        BlkOptions {
            serial: "vstor-test-serial".into(),
            ..Default::default()
        },
    )
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn segment(sector: u64, sectors: u32, flags: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&sector.to_le_bytes());
    b.extend_from_slice(&sectors.to_le_bytes());
    b.extend_from_slice(&flags.to_le_bytes());
    b
}

#[test]
fn write_then_read_every_layout() {
    let dev = memdev(1 << 20);
    let mut h = harness(dev.clone());
    for (i, layout) in LAYOUTS.iter().enumerate() {
        let data = pattern(4096 + 512 * i, i as u8);
        let sector = 8 * i as u64;
        let w = h.request(*layout, OUT, sector, &data, 0);
        assert_eq!((w.status, w.used_len), (S_OK, 1), "{layout:?}");
        // The data really reached the block device.
        let mut back = vec![0u8; data.len()];
        dev.read_at(&mut back, sector * 512).unwrap();
        assert_eq!(back, data, "{layout:?}");
        for read_layout in LAYOUTS {
            let r = h.request(read_layout, IN, sector, &[], data.len());
            assert_eq!(r.status, S_OK, "{layout:?}/{read_layout:?}");
            assert_eq!(r.data, data, "{layout:?}/{read_layout:?}");
            assert_eq!(r.used_len as usize, data.len() + 1);
        }
    }
}

#[test]
fn many_requests_in_flight_complete() {
    let mut h = harness(memdev(4 << 20));
    let writes: Vec<_> = (0..64u64)
        .map(|i| {
            (
                LAYOUTS[i as usize % 4],
                OUT,
                i * 8,
                pattern(4096, i as u8),
                0,
            )
        })
        .collect();
    for r in h.batch(&writes) {
        assert_eq!(r.status, S_OK);
    }
    let reads: Vec<_> = (0..64u64)
        .map(|i| (LAYOUTS[(i as usize + 1) % 4], IN, i * 8, Vec::new(), 4096))
        .collect();
    for (i, r) in h.batch(&reads).into_iter().enumerate() {
        assert_eq!(r.data, pattern(4096, i as u8));
    }
}

#[test]
fn flush_get_id_lifetime() {
    let mut h = harness(memdev(1 << 20));
    for layout in LAYOUTS {
        assert_eq!(h.request(layout, FLUSH, 0, &[], 0).status, S_OK);
        let id = h.request(layout, GET_ID, 0, &[], 20);
        assert_eq!(id.status, S_OK, "{layout:?}");
        assert_eq!(&id.data[..17], b"vstor-test-serial");
        assert_eq!(&id.data[17..], &[0, 0, 0]);
        assert_eq!(id.used_len, 21);
        let lt = h.request(layout, GET_LIFETIME, 0, &[], 6);
        assert_eq!((lt.status, lt.data.as_slice()), (S_OK, &LIFETIME[..]));
    }
    // A short GET_ID buffer gets a truncated serial; a short GET_LIFETIME buffer an error.
    let id = h.request(Layout::Linux, GET_ID, 0, &[], 5);
    assert_eq!((id.status, id.data.as_slice()), (S_OK, &b"vstor"[..]));
    assert_eq!(
        h.request(Layout::Linux, GET_LIFETIME, 0, &[], 3).status,
        S_IOERR
    );
}

#[test]
fn discard_write_zeroes_secure_erase_zero_the_range() {
    let dev = memdev(1 << 20);
    let mut h = harness(dev.clone());
    for (i, (op, flags)) in [
        (DISCARD, 0),
        (WRITE_ZEROES, 0),
        (WRITE_ZEROES, 1),
        (SECURE_ERASE, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let layout = LAYOUTS[i];
        let sector = 64 * i as u64;
        let data = pattern(8192, 7);
        assert_eq!(h.request(layout, OUT, sector, &data, 0).status, S_OK);
        // Two segments: the first 4 sectors and sectors 8..12; 4..8 must survive.
        let mut segs = segment(sector, 4, flags);
        segs.extend(segment(sector + 8, 4, flags));
        let r = h.request(layout, op, 0, &segs, 0);
        assert_eq!((r.status, r.used_len), (S_OK, 1), "op {op} flags {flags}");
        let back = h.request(layout, IN, sector, &[], 8192).data;
        assert!(back[..2048].iter().all(|&b| b == 0), "op {op}");
        assert_eq!(&back[2048..4096], &data[2048..4096], "op {op}");
        assert!(back[4096..6144].iter().all(|&b| b == 0), "op {op}");
        assert_eq!(&back[6144..], &data[6144..], "op {op}");
    }
}

#[test]
fn discard_flag_rules() {
    let mut h = harness(memdev(1 << 20));
    // §5.2.6.2: the unmap flag is only for WRITE_ZEROES; unknown flags are unsupported.
    assert_eq!(
        h.request(Layout::Linux, DISCARD, 0, &segment(0, 8, 1), 0)
            .status,
        S_UNSUPP
    );
    assert_eq!(
        h.request(Layout::Linux, WRITE_ZEROES, 0, &segment(0, 8, 2), 0)
            .status,
        S_UNSUPP
    );
    // Past capacity, unaligned segment payloads, no segments, too many segments.
    assert_eq!(
        h.request(Layout::Linux, DISCARD, 0, &segment(2040, 16, 0), 0)
            .status,
        S_IOERR
    );
    assert_eq!(
        h.request(Layout::Linux, DISCARD, 0, &segment(0, 8, 0)[..12], 0)
            .status,
        S_IOERR
    );
    assert_eq!(h.request(Layout::Linux, DISCARD, 0, &[], 0).status, S_IOERR);
    let many: Vec<u8> = (0..33).flat_map(|i| segment(i * 8, 8, 0)).collect();
    assert_eq!(
        h.request(Layout::Linux, DISCARD, 0, &many, 0).status,
        S_UNSUPP
    );
    // num_sectors above max_discard_sectors.
    let max = h.shared.max_discard_sectors();
    assert_eq!(
        h.request(Layout::Linux, DISCARD, 0, &segment(0, max + 1, 0), 0)
            .status,
        S_IOERR
    );
}

#[test]
fn out_of_range_and_unaligned_io_fail() {
    let mut h = harness(memdev(1 << 20));
    let last = (1 << 20) / 512 - 8;
    assert_eq!(h.request(Layout::Linux, IN, last, &[], 4096).status, S_OK);
    assert_eq!(
        h.request(Layout::Linux, IN, last + 1, &[], 4096).status,
        S_IOERR
    );
    assert_eq!(
        h.request(Layout::Linux, OUT, last + 8, &[0; 512], 0).status,
        S_IOERR
    );
    assert_eq!(
        h.request(Layout::Linux, IN, u64::MAX, &[], 512).status,
        S_IOERR
    );
    assert_eq!(
        h.request(Layout::Linux, IN, u64::MAX / 512, &[], 512)
            .status,
        S_IOERR
    );
    // Not a multiple of the 512-byte block.
    assert_eq!(
        h.request(Layout::Linux, OUT, 0, &[1; 100], 0).status,
        S_IOERR
    );
    // A failed read reports only the status byte as used.
    assert_eq!(
        h.request(Layout::Linux, IN, last + 1, &[], 4096).used_len,
        1
    );
}

#[test]
fn logical_block_size_4k_alignment() {
    let dev = Arc::new(
        MemoryDev::new(
            1 << 20,
            MemoryOptions {
                logical_block_size: 4096,
                read_only: false,
            },
        )
        .unwrap(),
    );
    let mut h = harness(dev);
    let mut blk = [0u8; 4];
    h.shared.read_config(20, &mut blk).unwrap();
    assert_eq!(u32::from_le_bytes(blk), 4096);
    assert_eq!(h.request(Layout::Linux, OUT, 8, &[1; 4096], 0).status, S_OK);
    assert_eq!(
        h.request(Layout::Linux, OUT, 1, &[1; 4096], 0).status,
        S_IOERR
    );
    assert_eq!(
        h.request(Layout::Linux, OUT, 8, &[1; 512], 0).status,
        S_IOERR
    );
}

#[test]
fn unknown_types_are_unsupported() {
    let mut h = harness(memdev(1 << 20));
    for t in [2u32, 3, 5, 9, 12, 15, 16, 0x80, u32::MAX] {
        let r = h.request(Layout::Linux, t, 0, &[], 0);
        assert_eq!((r.status, r.used_len), (S_UNSUPP, 1), "type {t}");
    }
}

#[test]
fn read_only_device_refuses_writes() {
    let dev = memdev(1 << 20);
    dev.write_at(&pattern(4096, 3), 0).unwrap();
    let mut h = Harness::new(
        dev.clone(),
        BlkOptions {
            read_only: true,
            ..Default::default()
        },
    );
    assert_ne!(h.shared.features() & feature::RO, 0);
    assert_eq!(h.shared.features() & feature::DISCARD, 0);
    for layout in LAYOUTS {
        assert_eq!(h.request(layout, OUT, 0, &[9; 4096], 0).status, S_IOERR);
        assert_eq!(
            h.request(layout, WRITE_ZEROES, 0, &segment(0, 8, 0), 0)
                .status,
            S_UNSUPP
        );
        assert_eq!(h.request(layout, IN, 0, &[], 4096).data, pattern(4096, 3));
    }
    let mut back = vec![0u8; 4096];
    dev.read_at(&mut back, 0).unwrap();
    assert_eq!(back, pattern(4096, 3), "nothing was written");
}

#[test]
fn write_through_mode_flushes_each_write() {
    let dev = memdev(1 << 20);
    let mut h = harness(dev);
    // The driver turns the write cache off through the config space (CONFIG_WCE).
    h.shared.write_config(32, &[0]).unwrap();
    assert!(!h.shared.writeback());
    assert_eq!(h.request(Layout::Linux, OUT, 0, &[5; 512], 0).status, S_OK);
    assert_eq!(h.request(Layout::Linux, IN, 0, &[], 512).data, vec![5; 512]);
    let mut wb = [9u8];
    h.shared.read_config(32, &mut wb).unwrap();
    assert_eq!(wb[0], 0);
}

#[test]
fn null_device_reads_zeroes_when_asked() {
    let dev = Arc::new(
        NullDev::new(
            1 << 30,
            NullOptions {
                read_zeroes: true,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let mut h = harness(dev);
    assert_eq!(h.request(Layout::Linux, OUT, 0, &[1; 4096], 0).status, S_OK);
    let r = h.request(Layout::SharedStatus, IN, 0, &[], 4096);
    assert_eq!((r.status, r.data), (S_OK, vec![0; 4096]));
}

#[test]
fn config_space_fields() {
    let h = Harness::new(
        memdev(64 << 20),
        BlkOptions {
            num_queues: 4,
            ..Default::default()
        },
    );
    let mut cfg = [0u8; 72];
    h.shared.read_config(0, &mut cfg).unwrap();
    let le32 = |o: usize| u32::from_le_bytes(cfg[o..o + 4].try_into().unwrap());
    assert_eq!(
        u64::from_le_bytes(cfg[0..8].try_into().unwrap()),
        (64 << 20) / 512
    );
    assert_eq!(le32(12), 254, "seg_max = queue size - 2");
    assert_eq!(le32(20), 512, "blk_size");
    assert_eq!(cfg[32], 1, "writeback by default");
    assert_eq!(u16::from_le_bytes([cfg[34], cfg[35]]), 4, "num_queues");
    assert!(le32(36) > 0 && le32(40) == 32, "discard limits");
    assert_eq!(cfg[56], 1, "write_zeroes_may_unmap");
    let f = h.shared.features();
    for bit in [
        feature::MQ,
        feature::FLUSH,
        feature::DISCARD,
        feature::WRITE_ZEROES,
        feature::CONFIG_WCE,
    ] {
        assert_ne!(f & bit, 0, "feature {bit:#x}");
    }
    // Reads past the end are refused, not truncated.
    assert!(h.shared.read_config(70, &mut [0u8; 4]).is_err());
    assert!(h.shared.read_config(u64::MAX, &mut [0u8; 1]).is_err());
}

#[test]
fn event_idx_suppresses_notifications() {
    let mut h = harness(memdev(1 << 20));
    // With EVENT_IDX and used_event = 0 (never written by this driver), only the completion
    // that moves the used index past 0 needs a notification.
    for _ in 0..4 {
        h.request(Layout::Linux, FLUSH, 0, &[], 0);
    }
    assert_eq!(h.notifications, 1);
}

#[test]
fn a_full_ring_of_requests_in_one_kick() {
    // 250 chains published before one kick: the available ring's second half and the used
    // ring past `used_event` are exercised (a harness that overlapped them failed here).
    let mut h = harness(memdev(4 << 20));
    let writes: Vec<_> = (0..250u64)
        .map(|i| (Layout::Indirect, OUT, i * 8, pattern(4096, i as u8), 0))
        .collect();
    for r in h.batch(&writes) {
        assert_eq!((r.status, r.used_len), (S_OK, 1));
    }
    let reads: Vec<_> = (0..250u64)
        .map(|i| (Layout::Indirect, IN, i * 8, Vec::new(), 4096))
        .collect();
    for (i, r) in h.batch(&reads).into_iter().enumerate() {
        assert_eq!(r.status, S_OK);
        assert_eq!(r.data, pattern(4096, i as u8), "request {i}");
    }
}

#[test]
fn types_whose_feature_the_driver_refused_are_unsupported() {
    // The device offers DISCARD and WRITE_ZEROES, the driver accepts neither.
    let dev = memdev(1 << 20);
    let opts = BlkOptions::default();
    let offered = crate::config::BlkShared::new(dev.clone(), opts.clone())
        .unwrap()
        .features();
    assert_ne!(offered & feature::DISCARD, 0);
    let acked = offered & !(feature::DISCARD | feature::WRITE_ZEROES);
    let mut h = Harness::with_features(dev, opts, Some(acked));
    for t in [DISCARD, WRITE_ZEROES] {
        let r = h.request(Layout::Linux, t, 0, &segment(0, 8, 0), 0);
        assert_eq!(r.status, S_UNSUPP, "type {t}");
    }
    let r = h.request(Layout::Linux, OUT, 0, &[1u8; 512], 0);
    assert_eq!(r.status, S_OK);
}
