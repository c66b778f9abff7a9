//! virtio-core chain walker and its reader / writer over arbitrary guest memory, checked
//! against a model by `vstor_virtio_blk::fuzzing::chain::walk`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vstor_virtio_blk::fuzzing::chain::walk(data);
});
