//! scsi_vs_blk: 4 KiB random reads at queue depth 32 through the guest-free in-process request
//! path, virtio-scsi against virtio-blk over the same backend, measured side by side.
//!
//! Each side is a driver harness of its crate (`vstor_virtio_blk::mock::Harness`,
//! `vstor_virtio_scsi::mock::Harness`): guest memory, a split queue and the device's queue
//! handler. A batch is 32 requests published at once (virtio-blk: IN header, 4 KiB data-in,
//! status byte; virtio-scsi: command header with READ(10), response with sense buffer, 4 KiB
//! data-in), then one run of the queue (which, for an asynchronous engine, also waits for the
//! completions), then the used ring is reaped; batches repeat until `--count` requests are
//! done. LBAs are pseudo-random over the whole device, the same sequence on both sides.
//!
//! Rounds interleave the two sides (the order alternates) and the reported ratio is the median
//! over rounds of scsi IOPS / blk IOPS within the round, so drifts in machine load cancel.
//!
//! Usage: `scsi_vs_blk [--rounds N] [--count N] [--backends file,null,memory] [--size MiB]
//! [--only blk|scsi]` (`--only`: run one side, for profilers; no ratio then).
//! Prints one markdown table row per backend:
//! `| backend | blk IOPS | scsi IOPS | scsi/blk | range |`.

use std::sync::Arc;
use std::time::Instant;

use vm_memory::{Bytes, GuestAddress};
use vstor_blockdev::memory::{MemoryDev, MemoryOptions};
use vstor_blockdev::null::{NullDev, NullOptions};
use vstor_blockdev::open::{open, OpenOptions};
use vstor_blockdev::BlockDev;
use vstor_scsi_disk::{LogicalUnit, LunOptions};
use vstor_virtio_blk::mock::{Desc as BlkDesc, Harness as BlkHarness};
use vstor_virtio_blk::BlkOptions;
use vstor_virtio_scsi::mock::{Desc as ScsiDesc, Harness as ScsiHarness};
use vstor_virtio_scsi::protocol::{queue, CMD_REQ_HEADER, CMD_RESP_HEADER};
use vstor_virtio_scsi::{LunAddr, ScsiOptions, ScsiShared};

/// Requests in flight.
const DEPTH: usize = 32;
/// Request size.
const BS: u64 = 4096;

/// Deterministic LBA sequence (xorshift64).
struct Lbas(u64, u64);

impl Lbas {
    fn new(blocks: u64) -> Lbas {
        Lbas(0x2545_f491_4f6c_dd1d, blocks)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % self.1
    }
}

/// One side of the comparison.
trait Side {
    /// Runs `count` reads (rounded up to whole batches); returns IOPS.
    fn run(&mut self, count: usize) -> f64;
}

/// virtio-blk: per slot a 16-byte header, a 4 KiB buffer and a status byte.
struct Blk {
    h: BlkHarness,
    slots: Vec<(u64, u64, u64)>,
    lbas: Lbas,
}

impl Blk {
    fn new(dev: Arc<dyn BlockDev>) -> Blk {
        let blocks = dev.info().size / BS;
        let mut h = BlkHarness::new(dev, BlkOptions::default());
        let slots = (0..DEPTH)
            .map(|_| (h.alloc(16), h.alloc(BS), h.alloc(1)))
            .collect();
        Blk {
            h,
            slots,
            lbas: Lbas::new(blocks),
        }
    }
}

impl Side for Blk {
    fn run(&mut self, count: usize) -> f64 {
        let t0 = Instant::now();
        let mut done = 0;
        while done < count {
            for &(hdr, data, status) in &self.slots {
                let mut b = [0u8; 16];
                b[8..].copy_from_slice(&(self.lbas.next() * (BS / 512)).to_le_bytes());
                self.h
                    .mem
                    .write_slice(&b, GuestAddress(hdr))
                    .expect("header");
                self.h.push_chain(&[
                    BlkDesc {
                        addr: hdr,
                        len: 16,
                        write: false,
                    },
                    BlkDesc {
                        addr: data,
                        len: BS as u32,
                        write: true,
                    },
                    BlkDesc {
                        addr: status,
                        len: 1,
                        write: true,
                    },
                ]);
            }
            self.h.run().expect("virtio-blk queue");
            let used = self.h.take_used();
            assert_eq!(used.len(), DEPTH, "virtio-blk completed every request");
            assert!(
                used.iter().all(|&(_, len)| len == BS as u32 + 1),
                "virtio-blk transferred 4 KiB per request: {used:?}"
            );
            let status: u8 = self
                .h
                .mem
                .read_obj(GuestAddress(self.slots[0].2))
                .expect("status");
            assert_eq!(status, 0, "virtio-blk read succeeded");
            done += DEPTH;
        }
        done as f64 / t0.elapsed().as_secs_f64()
    }
}

/// virtio-scsi: per slot a command header (READ(10)), a response with the sense buffer and
/// a 4 KiB buffer.
struct Scsi {
    h: ScsiHarness,
    slots: Vec<(u64, u64, u64)>,
    hdr_len: u32,
    resp_len: u32,
    lbas: Lbas,
    lba_scale: u64,
}

impl Scsi {
    fn new(dev: Arc<dyn BlockDev>) -> Scsi {
        let (size, lbs) = (dev.info().size, u64::from(dev.info().logical_block_size));
        let shared = ScsiShared::new(ScsiOptions::default()).expect("options");
        let unit = Arc::new(LogicalUnit::new(dev, LunOptions::default()));
        shared.attach(0, 0, unit).expect("attach");
        let mut h = ScsiHarness::over(shared, None);
        let hdr_len = (CMD_REQ_HEADER as u32) + h.shared.cdb_size();
        let resp_len = (CMD_RESP_HEADER as u32) + h.shared.sense_size();
        let slots = (0..DEPTH)
            .map(|_| {
                (
                    h.alloc(u64::from(hdr_len)),
                    h.alloc(u64::from(resp_len)),
                    h.alloc(BS),
                )
            })
            .collect();
        // The power-on unit attention: the first command reports it.
        let r = h.command(LunAddr { target: 0, lun: 0 }, &[0; 6], &[], 0);
        assert_eq!(r.response, 0, "TEST UNIT READY reached the unit");
        Scsi {
            h,
            slots,
            hdr_len,
            resp_len,
            lbas: Lbas::new(size / BS),
            lba_scale: BS / lbs,
        }
    }
}

impl Side for Scsi {
    fn run(&mut self, count: usize) -> f64 {
        let q = queue::FIRST_REQUEST;
        let lun = LunAddr { target: 0, lun: 0 }.encode();
        // Logical blocks per 4 KiB request.
        let n = self.lba_scale as u16;
        let t0 = Instant::now();
        let mut done = 0;
        let mut hdr = vec![0u8; self.hdr_len as usize];
        hdr[..8].copy_from_slice(&lun);
        while done < count {
            for (i, &(h_addr, resp, data)) in self.slots.iter().enumerate() {
                let lba = (self.lbas.next() * self.lba_scale) as u32;
                let cdb = &mut hdr[CMD_REQ_HEADER..];
                cdb[..10].copy_from_slice(&[0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
                cdb[2..6].copy_from_slice(&lba.to_be_bytes());
                cdb[7..9].copy_from_slice(&n.to_be_bytes());
                hdr[8..16].copy_from_slice(&(i as u64).to_le_bytes());
                self.h
                    .mem
                    .write_slice(&hdr, GuestAddress(h_addr))
                    .expect("header");
                self.h.push(
                    q,
                    &[
                        ScsiDesc {
                            addr: h_addr,
                            len: self.hdr_len,
                            write: false,
                        },
                        ScsiDesc {
                            addr: resp,
                            len: self.resp_len,
                            write: true,
                        },
                        ScsiDesc {
                            addr: data,
                            len: BS as u32,
                            write: true,
                        },
                    ],
                );
            }
            self.h.run(q).expect("virtio-scsi request queue");
            let used = self.h.take_used(q);
            assert_eq!(used.len(), DEPTH, "virtio-scsi completed every request");
            let full = (CMD_RESP_HEADER as u32 + self.h.shared.sense_size()) + BS as u32;
            assert!(
                used.iter().all(|&(_, len)| len == full),
                "virtio-scsi transferred 4 KiB per command: {used:?}"
            );
            let resp: [u8; CMD_RESP_HEADER] = self
                .h
                .mem
                .read_obj(GuestAddress(self.slots[0].1))
                .expect("response");
            assert_eq!(
                (resp[10], resp[11]),
                (0, 0),
                "virtio-scsi READ(10) was GOOD"
            );
            done += DEPTH;
        }
        done as f64 / t0.elapsed().as_secs_f64()
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The backend `name` of `size` bytes; the temporary file (kept alive by the caller) for
/// `file`.
fn backend(name: &str, size: u64) -> (Arc<dyn BlockDev>, Option<tempfile::NamedTempFile>) {
    match name {
        "null" => (
            Arc::new(NullDev::new(size, NullOptions::default()).expect("null device")),
            None,
        ),
        "memory" => (
            Arc::new(MemoryDev::new(size, MemoryOptions::default()).expect("memory device")),
            None,
        ),
        "file" => {
            use std::io::Write;
            let mut f = tempfile::NamedTempFile::new().expect("temporary file");
            let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 + 1) as u8).collect();
            for _ in 0..size >> 20 {
                f.write_all(&chunk).expect("fill the file");
            }
            f.flush().expect("flush");
            let path = f.path().to_str().expect("UTF-8 path").to_string();
            let opts = OpenOptions {
                format: Some("raw".into()),
                ..OpenOptions::default()
            };
            (open(&path, &opts).expect("open the file"), Some(f))
        }
        other => panic!("unknown backend {other} (file, null, memory)"),
    }
}

fn main() {
    let mut rounds = 5usize;
    let mut count = 200_000usize;
    let mut backends = "file,null".to_string();
    let mut size_mib = 256u64;
    let mut only = String::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--rounds" => rounds = val().parse().expect("--rounds N"),
            "--count" => count = val().parse().expect("--count N"),
            "--backends" => backends = val(),
            "--size" => size_mib = val().parse().expect("--size MiB"),
            "--only" => only = val(),
            "-h" | "--help" => {
                println!(
                    "scsi_vs_blk [--rounds N] [--count N] [--backends file,null,memory] [--size MiB] \
                     [--only blk|scsi]"
                );
                return;
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let rounds = rounds.max(1);
    for name in backends.split(',') {
        let (dev, _file) = backend(name, size_mib << 20);
        let mut blk = Blk::new(dev.clone());
        let mut scsi = Scsi::new(dev);
        if !only.is_empty() {
            let side: &mut dyn Side = match only.as_str() {
                "blk" => &mut blk,
                "scsi" => &mut scsi,
                other => panic!("--only blk or scsi, not {other}"),
            };
            let iops: Vec<f64> = (0..rounds).map(|_| side.run(count)).collect();
            println!("{name} {only}: {iops:.0?} IOPS");
            continue;
        }
        // Warm-up: fault in guest memory and buffers on both sides.
        blk.run(count / 10 + DEPTH);
        scsi.run(count / 10 + DEPTH);
        let (mut b, mut s, mut r) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let (bi, si) = if round % 2 == 0 {
                let bi = blk.run(count);
                (bi, scsi.run(count))
            } else {
                let si = scsi.run(count);
                (blk.run(count), si)
            };
            eprintln!(
                "{name} round {}: blk {bi:.0} IOPS, scsi {si:.0} IOPS, ratio {:.3}",
                round + 1,
                si / bi
            );
            b.push(bi);
            s.push(si);
            r.push(si / bi);
        }
        let (lo, hi) = r
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        println!(
            "| {name} | {:.0} | {:.0} | {:.3} | {lo:.3}–{hi:.3} |",
            median(&mut b),
            median(&mut s),
            median(&mut r)
        );
    }
}
