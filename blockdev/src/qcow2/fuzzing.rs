//! The qcow2 fuzz entry point, shared by the cargo-fuzz target `qcow2_image` and the corpus
//! replay in `cargo test`: arbitrary bytes are opened as an image in memory, then read,
//! written (synchronously and through a queue), zeroed, discarded, flushed, closed and
//! reopened. Beyond "no panic, bounded memory" it checks that a write that succeeded reads
//! back, a write-zeroes reads back zeroes, and (for images `check` finds consistent) the last
//! write survives a close and reopen.

use std::sync::Arc;

use super::{Qcow2Dev, Qcow2Options};
use crate::image::{ImageFile, MemImage};
use crate::request::{IoOp, IoRequest, Submitted};
use crate::types::{BlockDev, QueueOptions};

/// Largest image file a fuzz input may grow to.
pub const FUZZ_FILE_LIMIT: u64 = 64 << 20;

/// Runs one fuzz input. Panics only when an invariant breaks.
pub fn image(data: &[u8]) {
    let file = Arc::new(MemImage::new(data.to_vec(), FUZZ_FILE_LIMIT));
    // Data can only be promised for images whose refcounts agree with their tables: where a
    // used cluster has refcount 0, allocation may hand it out again (QEMU's too).
    let consistent = super::check::check(&*file, super::check::RepairMode::None)
        .is_ok_and(|r| r.corruptions == 0 && r.check_errors == 0);
    let as_file: Arc<dyn ImageFile> = file.clone();
    let Ok(dev) = Qcow2Dev::open_file(as_file, &Qcow2Options::default(), None) else {
        return;
    };
    let size = dev.info().size;
    let mut seed = data
        .iter()
        .take(4096)
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut buf = vec![0u8; 1 << 17];
    let mut back = vec![0u8; 1 << 17];
    let mut last_write: Option<(u64, usize, u8)> = None;
    let mut queue = dev.open_queue(&QueueOptions { depth: 4 }).ok();
    for i in 0..10u8 {
        if size == 0 {
            break;
        }
        let len = (next() % (1 << 17)).min(size).max(1) as usize;
        let off = next() % (size - len as u64 + 1);
        match next() % 5 {
            0 => {
                let _ = dev.read_at(&mut buf[..len], off);
            }
            1 | 2 => {
                buf[..len].fill(i | 0x80);
                let ok = if i % 2 == 0 {
                    dev.write_at(&buf[..len], off).is_ok()
                } else {
                    queued_write(&mut queue, &mut buf[..len], off)
                };
                // A failed write may have changed part of its range.
                if overlaps(last_write, off, len) {
                    last_write = None;
                }
                if ok && consistent && dev.read_at(&mut back[..len], off).is_ok() {
                    assert!(
                        back[..len] == buf[..len],
                        "write at {off:#x}+{len} reads back"
                    );
                    last_write = Some((off, len, i | 0x80));
                }
            }
            3 => {
                if let Some(q) = queue.as_mut() {
                    let r = q.submit(IoRequest {
                        op: IoOp::WriteZeroes {
                            may_unmap: i % 2 == 0,
                        },
                        offset: off,
                        len: len as u64,
                        iovecs: Vec::new(),
                        tag: 0,
                    });
                    if matches!(r, Ok(Submitted::Done(Ok(()))))
                        && dev.read_at(&mut back[..len], off).is_ok()
                    {
                        assert!(
                            back[..len].iter().all(|&b| b == 0),
                            "zeroes at {off:#x}+{len}"
                        );
                        if last_write
                            .is_some_and(|(o, l, _)| o < off + len as u64 && off < o + l as u64)
                        {
                            last_write = None;
                        }
                    }
                }
            }
            _ => {
                let _ = dev.flush();
            }
        }
    }
    drop(queue);
    let closed = consistent && dev.close().is_ok() && !dev.header().corrupt();
    drop(dev);
    let again: Arc<dyn ImageFile> = Arc::new(MemImage::new(file.bytes(), FUZZ_FILE_LIMIT));
    let ro = Qcow2Options {
        read_only: true,
        ..Default::default()
    };
    if let Ok(dev) = Qcow2Dev::open_file(again, &ro, None) {
        if let (true, Some((off, len, byte))) = (closed, last_write) {
            if dev.read_at(&mut back[..len], off).is_ok() {
                assert!(
                    back[..len].iter().all(|&b| b == byte),
                    "last write survives a reopen"
                );
            }
        }
    }
}

fn overlaps(w: Option<(u64, usize, u8)>, off: u64, len: usize) -> bool {
    w.is_some_and(|(o, l, _)| o < off + len as u64 && off < o + l as u64)
}

/// A write through the queue, waited for; whether it succeeded.
fn queued_write(queue: &mut Option<Box<dyn crate::IoQueue>>, buf: &mut [u8], off: u64) -> bool {
    queue.as_mut().is_some_and(|q| {
        crate::request::run_blocking(&mut **q, IoOp::Write, off, buf.len() as u64, buf).is_ok()
    })
}
