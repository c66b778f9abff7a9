//! [`transport`]: virtio-core's `Transport` around a `VirtioBlk`, driven by an arbitrary
//! sequence of register writes, kicks, ring contents, memory swaps, saves and (corrupted)
//! restores, as a hostile or buggy driver and a confused hypervisor would issue them.
//!
//! Checked after every step: no panic; the status says live (DRIVER_OK) exactly when the
//! transport is live; FEATURES_OK implies VERSION_1 acknowledged and nothing acknowledged that
//! was not offered. At the end, a state saved from the fuzzed device restores into a fresh one
//! and saves back to the same state (configuration generation aside).

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};
use vstor_blockdev::memory::{MemoryDev, MemoryOptions};
use vstor_virtio_core::features::VERSION_1;
use vstor_virtio_core::interrupt::CallbackInterrupt;
use vstor_virtio_core::memory::anonymous;
use vstor_virtio_core::state::DeviceState;
use vstor_virtio_core::status::{DRIVER_OK, FEATURES_OK, NEEDS_RESET};
use vstor_virtio_core::{GuestMemory, QueueConfig, Transport};

use super::Input;
use crate::{BlkOptions, BlkShared, VirtioBlk};

const MEM: u64 = 0x10000;
const MAX_OPS: usize = 200;

fn memory(input: &mut Input<'_>) -> GuestMemory {
    // One or two regions, sometimes with a hole, so rings can straddle or miss them.
    match input.u8() % 3 {
        0 => anonymous(&[(GuestAddress(0), MEM as usize)]),
        1 => anonymous(&[
            (GuestAddress(0), MEM as usize / 2),
            (GuestAddress(MEM / 2), MEM as usize / 2),
        ]),
        _ => anonymous(&[(GuestAddress(0), 0x4000), (GuestAddress(0x8000), 0x8000)]),
    }
    .expect("anonymous guest memory")
}

fn device() -> Box<VirtioBlk> {
    let dev = Arc::new(
        MemoryDev::new(
            1 << 16,
            MemoryOptions {
                logical_block_size: 512,
                read_only: false,
            },
        )
        .expect("memory dev"),
    );
    let opts = BlkOptions {
        num_queues: 2,
        queue_size: 16,
        ..BlkOptions::default()
    };
    Box::new(VirtioBlk::new(BlkShared::new(dev, opts).expect("options")))
}

fn transport_with(mem: GuestMemory) -> Transport {
    let mut t = Transport::new(device(), Arc::new(CallbackInterrupt(|_| {})));
    t.set_memory(mem);
    t
}

fn check(t: &Transport) {
    let status = t.status();
    assert_eq!(
        t.is_active(),
        status & DRIVER_OK != 0,
        "status {status:#x} disagrees with liveness"
    );
    if status & FEATURES_OK != 0 {
        let acked = t.driver_features();
        assert_ne!(acked & VERSION_1, 0, "FEATURES_OK without VERSION_1");
        assert_eq!(acked & !t.device_features(), 0, "acked bits not offered");
    }
}

/// What one input reached (so tests can tell the seeds exercise the live device).
#[derive(Debug, Default, Clone, Copy)]
pub struct TransportStats {
    /// Steps after which the device was live.
    pub live_steps: usize,
    /// Kicks the live device accepted.
    pub kicks: usize,
    /// Whether the final save/restore round trip ran.
    pub round_trip: bool,
}

/// Runs one input; panics naming the broken invariant.
pub fn transport(data: &[u8]) -> TransportStats {
    let mut stats = TransportStats::default();
    let mut input = Input::new(data);
    let mut t = transport_with(memory(&mut input));
    let mut saved: Option<Vec<u8>> = None;
    let mut ops = 0;
    while !input.is_empty() && ops < MAX_OPS {
        ops += 1;
        let q = u16::from(input.u8() % 3);
        match input.u8() % 12 {
            0 => drop(t.set_status(input.u8())),
            1 => {
                // Mostly plausible selections, sometimes anything.
                let raw = input.u64();
                let f = if raw & 1 == 0 {
                    raw & t.device_features()
                } else {
                    raw
                };
                drop(t.set_driver_features(f));
            }
            2 => {
                let cfg = QueueConfig {
                    size: [0, 1, 2, 3, 8, 16, 32][usize::from(input.u8() % 7)],
                    desc_table: u64::from(input.u16()) * 2,
                    avail_ring: u64::from(input.u16()) * 2,
                    used_ring: u64::from(input.u16()) * 2,
                    ready: input.u8() & 1 != 0,
                };
                drop(t.set_queue(q, cfg));
            }
            3 => stats.kicks += usize::from(t.kick(q).is_ok()),
            4 => drop(t.process_completions(q)),
            5 => {
                let mut buf = [0u8; 64];
                let len = usize::from(input.u8() % 65);
                drop(t.read_config(u64::from(input.u8()), &mut buf[..len]));
            }
            6 => {
                let off = u64::from(input.u8());
                let n = usize::from(input.u8() % 9);
                let bytes = input.bytes(n).to_vec();
                drop(t.write_config(off, &bytes));
            }
            7 => saved = t.save().ok(),
            8 => {
                if let Some(mut blob) = saved.clone() {
                    // Corrupt a few bytes, or none.
                    for _ in 0..input.u8() % 4 {
                        let i = usize::from(input.u16()) % blob.len();
                        blob[i] ^= input.u8();
                    }
                    if input.u8() & 1 != 0 {
                        let cut = usize::from(input.u16()) % (blob.len() + 1);
                        blob.truncate(cut);
                    }
                    drop(t.restore(&blob));
                }
            }
            9 => t.reset(),
            10 => {
                // The driver writes rings and descriptors.
                let addr = u64::from(input.u16()) % MEM;
                let n = usize::from(input.u8() % 32);
                let bytes = input.bytes(n).to_vec();
                let mem = t.memory().memory();
                drop(mem.write_slice(&bytes, GuestAddress(addr)));
            }
            _ => {
                // Memory hotplug: the same contents in a new layout.
                let old = t.memory().memory();
                let new = memory(&mut input);
                let mut buf = vec![0u8; MEM as usize];
                drop(old.read_slice(&mut buf, GuestAddress(0)));
                drop(new.write_slice(&buf, GuestAddress(0)));
                drop(t.quiesce());
                t.set_memory(new);
            }
        }
        check(&t);
        stats.live_steps += usize::from(t.is_active());
    }
    // Migration round trip: what the fuzzed device saves, a fresh one restores and saves back.
    if let Ok(blob) = t.save() {
        let mut fresh = transport_with((*t.memory().memory()).clone());
        if let Err(e) = fresh.restore(&blob) {
            // A live device whose rings a memory swap moved out of guest memory cannot be
            // activated again; anything else must restore.
            assert!(
                matches!(e, vstor_virtio_core::Error::Queue { .. }),
                "saved state does not restore: {e}"
            );
            return stats;
        }
        stats.round_trip = true;
        check(&fresh);
        let again = fresh.save().expect("save after restore");
        let (mut a, mut b) = (
            DeviceState::decode(&blob).expect("decode"),
            DeviceState::decode(&again).expect("decode"),
        );
        if a.status & NEEDS_RESET != 0 {
            // Saved broken: restored with its bits (not live), nothing to resume.
            assert_eq!(
                b.status,
                a.status & !DRIVER_OK,
                "broken device restored wrong"
            );
            return stats;
        }
        a.config_generation = 0;
        b.config_generation = 0;
        assert_eq!(a, b, "state changed across save/restore");
    }
    stats
}
