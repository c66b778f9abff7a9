//! Helpers shared by the integration tests (each test file includes this module and uses a
//! subset of it, hence `dead_code` is allowed).
#![allow(dead_code)]

pub mod qcow2;
pub mod qemu;
pub mod queue;
