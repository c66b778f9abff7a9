//! Hostile chains: loops, addresses outside memory, wrong direction, zero and huge lengths,
//! sectors past capacity, missing header or status. The device answers with an error status
//! or stops the queue (NEEDS_RESET); it never panics and never touches memory it should not.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};
use vstor_blockdev::memory::{MemoryDev, MemoryOptions};

use crate::config::BlkOptions;
use crate::error::Error;
use crate::mock::{Desc, Harness, Layout, MEM_SIZE};
use crate::request::{S_IOERR, S_OK};

use vstor_virtio_core::chain::{F_INDIRECT, F_NEXT, F_WRITE};

fn harness() -> Harness {
    Harness::new(
        Arc::new(MemoryDev::new(1 << 20, MemoryOptions::default()).unwrap()),
        BlkOptions::default(),
    )
}

fn header(h: &mut Harness, type_: u32, sector: u64) -> u64 {
    let a = h.alloc(16);
    let mut hdr = [0u8; 16];
    hdr[0..4].copy_from_slice(&type_.to_le_bytes());
    hdr[8..16].copy_from_slice(&sector.to_le_bytes());
    h.mem.write_slice(&hdr, GuestAddress(a)).unwrap();
    a
}

fn expect_needs_reset(h: &mut Harness) {
    match h.run() {
        Err(Error::NeedsReset { .. }) => {}
        other => panic!("expected NeedsReset, got {other:?}"),
    }
    assert!(h.handler.is_broken());
    // A broken queue is left alone: further kicks do nothing and do not panic.
    assert!(matches!(h.run(), Ok(())));
}

#[test]
fn descriptor_loop() {
    let mut h = harness();
    let hdr = header(&mut h, 0, 0);
    h.write_desc(0, hdr, 16, F_NEXT, 1);
    h.write_desc(1, hdr, 16, F_NEXT, 0);
    h.publish(0);
    expect_needs_reset(&mut h);
}

#[test]
fn indirect_loop_and_nesting() {
    let mut h = harness();
    let hdr = header(&mut h, 0, 0);
    let table = h.alloc(64);
    h.write_desc_at(table, 0, hdr, 16, F_NEXT, 1);
    h.write_desc_at(table, 1, hdr, 16, F_NEXT, 0);
    h.write_desc(0, table, 32, F_INDIRECT, 0);
    h.publish(0);
    expect_needs_reset(&mut h);

    let mut h = harness();
    let table = h.alloc(64);
    h.write_desc_at(table, 0, table, 32, F_INDIRECT, 0);
    h.write_desc(0, table, 16, F_INDIRECT, 0);
    h.publish(0);
    expect_needs_reset(&mut h);
}

#[test]
fn addresses_outside_memory() {
    for addr in [MEM_SIZE as u64, MEM_SIZE as u64 - 8, u64::MAX - 15, 1 << 60] {
        let mut h = harness();
        let hdr = header(&mut h, 0, 0);
        let status = h.alloc(1);
        h.push_chain(&[
            Desc {
                addr: hdr,
                len: 16,
                write: false,
            },
            Desc {
                addr,
                len: 4096,
                write: true,
            },
            Desc {
                addr: status,
                len: 1,
                write: true,
            },
        ]);
        expect_needs_reset(&mut h);
    }
    // An indirect table outside memory.
    let mut h = harness();
    h.write_desc(0, MEM_SIZE as u64 + 4096, 32, F_INDIRECT, 0);
    h.publish(0);
    expect_needs_reset(&mut h);
}

#[test]
fn head_index_outside_table() {
    let mut h = harness();
    h.publish(300);
    expect_needs_reset(&mut h);
    let mut h = harness();
    let hdr = header(&mut h, 0, 0);
    h.write_desc(0, hdr, 16, F_NEXT, 999);
    h.publish(0);
    expect_needs_reset(&mut h);
}

#[test]
fn wrong_direction() {
    // Readable after writable.
    let mut h = harness();
    let hdr = header(&mut h, 1, 0);
    let status = h.alloc(1);
    let data = h.alloc(512);
    h.push_chain(&[
        Desc {
            addr: hdr,
            len: 16,
            write: false,
        },
        Desc {
            addr: status,
            len: 1,
            write: true,
        },
        Desc {
            addr: data,
            len: 512,
            write: false,
        },
    ]);
    expect_needs_reset(&mut h);

    // Header in a writable descriptor: no readable header → IOERR (status still writable).
    let mut h = harness();
    let hdr = header(&mut h, 0, 0);
    let head = h.push_chain(&[Desc {
        addr: hdr,
        len: 17,
        write: true,
    }]);
    h.run().unwrap();
    let used = h.take_used();
    assert_eq!(used, vec![(u32::from(head), 1)]);
    let mut s = [0u8];
    h.mem.read_slice(&mut s, GuestAddress(hdr + 16)).unwrap();
    assert_eq!(s[0], S_IOERR);

    // A read (IN) whose data buffer is device-readable: the data is not in the writable part,
    // so the device sees a zero-length read and completes it without touching the buffer.
    let mut h = harness();
    let hdr = header(&mut h, 0, 0);
    let data = h.alloc(512);
    h.mem.write_slice(&[0x5a; 512], GuestAddress(data)).unwrap();
    let status = h.alloc(1);
    h.push_chain(&[
        Desc {
            addr: hdr,
            len: 16,
            write: false,
        },
        Desc {
            addr: data,
            len: 512,
            write: false,
        },
        Desc {
            addr: status,
            len: 1,
            write: true,
        },
    ]);
    h.run().unwrap();
    let mut back = [0u8; 512];
    h.mem.read_slice(&mut back, GuestAddress(data)).unwrap();
    assert_eq!(back, [0x5a; 512]);
}

#[test]
fn missing_status_or_header() {
    // No writable byte at all: nowhere to put a status.
    let mut h = harness();
    let hdr = header(&mut h, 0, 0);
    h.push_chain(&[Desc {
        addr: hdr,
        len: 16,
        write: false,
    }]);
    expect_needs_reset(&mut h);

    // Short header: IOERR.
    let mut h = harness();
    let hdr = header(&mut h, 0, 0);
    let status = h.alloc(1);
    let head = h.push_chain(&[
        Desc {
            addr: hdr,
            len: 15,
            write: false,
        },
        Desc {
            addr: status,
            len: 1,
            write: true,
        },
    ]);
    h.run().unwrap();
    assert_eq!(h.take_used(), vec![(u32::from(head), 1)]);
    let mut s = [0u8];
    h.mem.read_slice(&mut s, GuestAddress(status)).unwrap();
    assert_eq!(s[0], S_IOERR);
}

#[test]
fn zero_length_descriptors() {
    let mut h = harness();
    let hdr = header(&mut h, 0, 0);
    let status = h.alloc(1);
    let head = h.push_chain(&[
        Desc {
            addr: hdr,
            len: 16,
            write: false,
        },
        Desc {
            addr: 0,
            len: 0,
            write: true,
        },
        Desc {
            addr: status,
            len: 1,
            write: true,
        },
    ]);
    h.run().unwrap();
    assert_eq!(h.take_used(), vec![(u32::from(head), 1)]);
    let mut s = [9u8];
    h.mem.read_slice(&mut s, GuestAddress(status)).unwrap();
    assert_eq!(s[0], S_OK, "a zero-length read succeeds");
}

#[test]
fn huge_lengths_and_sectors() {
    let mut h = harness();
    // A 16 MiB read on a 1 MiB disk: IOERR, no allocation of that size.
    let r = h.request(Layout::Linux, 0, 0, &[], 16 << 20);
    assert_eq!(r.status, S_IOERR);
    // A descriptor claiming almost 4 GiB, inside a 64 MiB guest: outside memory.
    let hdr = header(&mut h, 0, 0);
    let status = h.alloc(1);
    h.push_chain(&[
        Desc {
            addr: hdr,
            len: 16,
            write: false,
        },
        Desc {
            addr: 0x10_0000,
            len: u32::MAX - 1,
            write: true,
        },
        Desc {
            addr: status,
            len: 1,
            write: true,
        },
    ]);
    expect_needs_reset(&mut h);
}

#[test]
fn chain_longer_than_queue() {
    let mut h = harness();
    let hdr = header(&mut h, 0, 0);
    let table = h.alloc(16 * 300);
    for i in 0..300u16 {
        h.write_desc_at(table, i, hdr, 16, F_NEXT, i + 1);
    }
    // 300 entries claimed, chain runs off the end of its table.
    h.write_desc(0, table, 16 * 300, F_INDIRECT, 0);
    h.publish(0);
    expect_needs_reset(&mut h);
}

#[test]
fn avail_index_far_ahead() {
    // The driver claims 1000 new entries in a 256-entry ring: the queue refuses to process it.
    let mut h = harness();
    let avail = 256 * 16;
    h.mem
        .write_obj(1000u16.to_le(), GuestAddress(avail + 2))
        .unwrap();
    let err = h
        .run()
        .expect_err("a bogus available index stops the queue");
    assert!(matches!(err, crate::Error::NeedsReset { .. }), "{err}");
    assert!(h.handler.is_broken());
    assert!(h.take_used().is_empty());
}

#[test]
fn status_in_read_only_position_is_never_written() {
    // Writable descriptor that is only the status; readable data marked for OUT.
    let mut h = harness();
    let r = h.request(Layout::SharedStatus, 1, 0, &[3u8; 512], 0);
    assert_eq!(r.status, S_OK);
    let _ = F_WRITE;
}
