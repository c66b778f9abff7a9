//! SCSI logical unit: arbitrary sequences of CDBs, data-out buffers, allocation lengths and
//! I_T nexuses against a logical unit on a memory device, read-only or not. The logic and its
//! invariants live in `vstor_scsi_disk::fuzzing::cdb`, which `cargo test -p vstor-scsi-disk`
//! also runs on seeded inputs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vstor_scsi_disk::fuzzing::cdb(data));
