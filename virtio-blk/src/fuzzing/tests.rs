//! The fuzz entries without cargo-fuzz: the checked-in seed corpus, pseudo-random inputs and
//! mutations of the corpus from a fixed seed, and regressions found by fuzzing.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    let inputs: Vec<_> = files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).expect("corpus file");
            (p, data)
        })
        .collect();
    assert!(inputs.len() >= 10, "{target}: seed corpus missing");
    inputs
}

/// Runs `f` on `data`, naming the input when it panics.
fn run_named<T>(name: &str, data: &[u8], f: impl Fn(&[u8]) -> T) -> T {
    match catch_unwind(AssertUnwindSafe(|| f(data))) {
        Ok(v) => v,
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
    total.requests_checked += s.requests_checked;
    total.requests_ok += s.requests_ok;
    total.needs_reset += s.needs_reset;
}

/// A few byte-level mutations, like a fuzzer's.
fn mutate(rng: &mut StdRng, data: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        let at = if v.is_empty() {
            0
        } else {
            rng.gen_range(0..v.len())
        };
        match rng.gen_range(0..5) {
            0 if !v.is_empty() => v[at] ^= 1 << rng.gen_range(0..8),
            1 if !v.is_empty() => v[at] = rng.gen(),
            2 => {
                let n = rng.gen_range(1..=8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                v.splice(at..at, bytes);
            }
            3 if !v.is_empty() => {
                let end = (at + rng.gen_range(1..=8)).min(v.len());
                v.drain(at..end);
            }
            _ if !other.is_empty() => {
                let s = rng.gen_range(0..other.len());
                let e = (s + rng.gen_range(1..=32)).min(other.len());
                v.splice(at..at, other[s..e].iter().copied());
            }
            _ => {}
        }
    }
    v
}

fn random_inputs(target: &str, seed: u64, count: usize) -> Vec<Vec<u8>> {
    let seeds = corpus(target);
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|i| {
            if i % 4 == 0 {
                let n = rng.gen_range(0..512);
                (0..n).map(|_| rng.gen()).collect()
            } else {
                let a = &seeds[rng.gen_range(0..seeds.len())].1;
                let b = &seeds[rng.gen_range(0..seeds.len())].1;
                mutate(&mut rng, a, b)
            }
        })
        .collect()
}

#[test]
fn blk_request_seed_corpus() {
    let mut total = Stats::default();
    for (path, data) in corpus("virtio_blk_request") {
        add(
            &mut total,
            run_named(&path.display().to_string(), &data, blk_request),
        );
    }
    // The corpus reaches every kind of check: predicted runs, successful and failed requests,
    // and queues stopped for a reset.
    assert!(total.strict_runs > 0, "{total:?}");
    assert!(total.requests_ok > 0, "{total:?}");
    assert!(total.requests_checked > total.requests_ok, "{total:?}");
    assert!(total.needs_reset > 0, "{total:?}");
}

#[test]
fn blk_request_random_inputs() {
    let mut total = Stats::default();
    for (i, data) in random_inputs("virtio_blk_request", 0x5eed_b1c0, 3000)
        .iter()
        .enumerate()
    {
        add(
            &mut total,
            run_named(&format!("random #{i}"), data, blk_request),
        );
    }
    assert!(total.requests_ok > 100, "{total:?}");
}

#[test]
fn chain_seed_corpus() {
    for (path, data) in corpus("virtio_chain") {
        run_named(&path.display().to_string(), &data, chain::walk);
    }
}

#[test]
fn chain_random_inputs() {
    for (i, data) in random_inputs("virtio_chain", 0xc4a1_0001, 3000)
        .iter()
        .enumerate()
    {
        run_named(&format!("random #{i}"), data, chain::walk);
    }
}

#[test]
fn transport_seed_corpus() {
    let (mut live, mut kicks, mut trips) = (0, 0, 0);
    for (path, data) in corpus("virtio_transport") {
        let s = run_named(&path.display().to_string(), &data, transport);
        live += usize::from(s.live_steps > 0);
        kicks += s.kicks;
        trips += usize::from(s.round_trip);
    }
    // The seeds must reach the live device, not only the refusals.
    assert!(
        live >= 6 && kicks >= 5 && trips >= 6,
        "live {live} kicks {kicks} trips {trips}"
    );
}

#[test]
fn transport_random_inputs() {
    for (i, data) in random_inputs("virtio_transport", 0x7a5, 1500)
        .iter()
        .enumerate()
    {
        run_named(&format!("transport random #{i}"), data, transport);
    }
}

#[test]
fn empty_and_tiny_inputs() {
    for n in 0..8 {
        let data = vec![0xffu8; n];
        blk_request(&data);
        chain::walk(&data);
    }
}
