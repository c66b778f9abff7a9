//! The `virtio_scsi_request` fuzz target's logic (`vstor_virtio_scsi::fuzzing::scsi_request`)
//! without cargo-fuzz: the checked-in seed corpus (`tests/corpus/virtio_scsi_request/`), then
//! a few hundred pseudo-random inputs and byte-level mutations of the seeds from a fixed seed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use vstor_virtio_scsi::fuzzing::{scsi_request, Stats};

fn corpus() -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/virtio_scsi_request");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    let seeds: Vec<_> = files
        .into_iter()
        .map(|p| {
            let d = std::fs::read(&p).expect("corpus file");
            (p, d)
        })
        .collect();
    assert!(
        seeds.len() >= 10,
        "seed corpus missing in {}",
        dir.display()
    );
    seeds
}

/// Runs one input, naming it when it panics.
fn run_named(name: &str, data: &[u8]) -> Stats {
    match catch_unwind(AssertUnwindSafe(|| scsi_request(data))) {
        Ok(s) => s,
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let shown = &data[..data.len().min(64)];
            panic!("{name} ({} bytes, from {shown:02x?}): {msg}", data.len());
        }
    }
}

fn add(total: &mut Stats, s: Stats) {
    total.runs += s.runs;
    total.strict_runs += s.strict_runs;
    total.commands_checked += s.commands_checked;
    total.commands_good += s.commands_good;
    total.reads_compared += s.reads_compared;
    total.media_written += s.media_written;
    total.ctrl_checked += s.ctrl_checked;
    total.events_checked += s.events_checked;
    total.needs_reset += s.needs_reset;
}

/// xorshift64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A few byte-level mutations, like a fuzzer's: flips, overwrites, insertions, deletions,
/// splices with another seed.
fn mutate(rng: &mut Rng, data: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    for _ in 0..1 + rng.below(8) {
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(v.len() + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(i..i, bytes);
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = (1 + rng.below(16)).min(v.len() - i);
                v.drain(i..i + n);
            }
            4 if !other.is_empty() => {
                let i = rng.below(v.len() + 1);
                let j = rng.below(other.len());
                let n = (1 + rng.below(64)).min(other.len() - j);
                v.splice(i..i, other[j..j + n].iter().copied());
            }
            _ => {
                let i = rng.below(v.len() + 1);
                v.truncate(i.max(1));
            }
        }
    }
    v
}

#[test]
fn seed_corpus_replays() {
    let mut total = Stats::default();
    for (p, data) in corpus() {
        add(&mut total, run_named(&p.display().to_string(), &data));
    }
    eprintln!("seed corpus: {total:?}");
    // The seeds reach the checks that matter.
    assert!(total.strict_runs > 0, "{total:?}");
    assert!(total.commands_good > 0, "{total:?}");
    assert!(total.reads_compared > 0, "{total:?}");
    assert!(total.media_written > 0, "{total:?}");
    assert!(total.ctrl_checked > 0, "{total:?}");
    assert!(total.events_checked > 0, "{total:?}");
    assert!(total.needs_reset > 0, "{total:?}");
}

#[test]
fn seeded_mutations_and_random_inputs() {
    let seeds = corpus();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut total = Stats::default();
    for i in 0..400 {
        let data: Vec<u8> = if i % 4 == 0 {
            let n = rng.below(1024);
            (0..n).map(|_| rng.next() as u8).collect()
        } else {
            let a = &seeds[rng.below(seeds.len())].1;
            let b = &seeds[rng.below(seeds.len())].1;
            mutate(&mut rng, a, b)
        };
        add(&mut total, run_named(&format!("input {i}"), &data));
    }
    assert!(total.strict_runs > 0, "{total:?}");
}
