//! virtio-core's Transport around a virtio-blk device, driven by arbitrary register writes,
//! ring contents, memory swaps and corrupted save/restore blobs, checked by
//! `vstor_virtio_blk::fuzzing::transport`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vstor_virtio_blk::fuzzing::transport(data);
});
