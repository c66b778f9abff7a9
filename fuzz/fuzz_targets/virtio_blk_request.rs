//! virtio-blk request path: descriptor tables, available-ring entries and guest memory in,
//! no panic and every invariant of `vstor_virtio_blk::fuzzing::blk_request` out.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vstor_virtio_blk::fuzzing::blk_request(data);
});
