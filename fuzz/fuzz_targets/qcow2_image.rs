//! qcow2 image metadata: arbitrary bytes opened as a qcow2 image in memory (growth limited to
//! 64 MiB), then reads, writes, write-zeroes, flushes, close and reopen, with read-back
//! invariants. The logic lives in `vstor_blockdev::qcow2::fuzzing::image`; `cargo test -p
//! vstor-blockdev --test qcow2_hostile fuzz_corpus_replay` replays the seeds in
//! `blockdev/tests/corpus/qcow2_image` and mutations of them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vstor_blockdev::qcow2::fuzzing::image(data));
