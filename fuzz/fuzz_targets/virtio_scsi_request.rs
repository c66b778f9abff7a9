//! virtio-scsi request path: control, event and request queue chains in any layout, LUN
//! fields, CDBs, task management functions, asynchronous notification, config writes and
//! hotplug; no panic and every invariant of `vstor_virtio_scsi::fuzzing::scsi_request` out.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vstor_virtio_scsi::fuzzing::scsi_request(data);
});
