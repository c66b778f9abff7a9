//! The device status field and its state machine (VIRTIO 1.2 §2.1).

use crate::error::{Error, Result};

/// ACKNOWLEDGE: the guest found the device.
pub const ACKNOWLEDGE: u8 = 1;
/// DRIVER: the guest has a driver for it.
pub const DRIVER: u8 = 2;
/// DRIVER_OK: the driver is set up and the device is live.
pub const DRIVER_OK: u8 = 4;
/// FEATURES_OK: feature negotiation is complete.
pub const FEATURES_OK: u8 = 8;
/// DEVICE_NEEDS_RESET: the device hit an error it cannot recover from.
pub const NEEDS_RESET: u8 = 64;
/// FAILED: the driver gave up on the device.
pub const FAILED: u8 = 128;

/// What a status write asks the device to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusChange {
    /// Writing 0: reset the device (§2.1.2).
    Reset,
    /// FEATURES_OK newly set: validate the negotiated features now.
    FeaturesOk,
    /// DRIVER_OK newly set: activate the queues.
    DriverOk,
    /// Anything else: just record it.
    Other,
}

/// Checks a driver's status write against the current value (§3.1.1: the order ACKNOWLEDGE,
/// DRIVER, FEATURES_OK, DRIVER_OK; bits once set are not cleared except by reset).
pub fn transition(from: u8, to: u8) -> Result<StatusChange> {
    if to == 0 {
        return Ok(StatusChange::Reset);
    }
    let err = |reason| Error::Status { from, to, reason };
    if from & !to & !NEEDS_RESET != 0 {
        return Err(err("bits may only be cleared by a reset"));
    }
    if to & NEEDS_RESET != 0 && from & NEEDS_RESET == 0 {
        return Err(err("DEVICE_NEEDS_RESET is set by the device only"));
    }
    let newly = to & !from;
    let needs = |bit: u8, before: u8| newly & bit != 0 && to & before != before;
    if needs(DRIVER, ACKNOWLEDGE) {
        return Err(err("DRIVER before ACKNOWLEDGE"));
    }
    if needs(FEATURES_OK, ACKNOWLEDGE | DRIVER) {
        return Err(err("FEATURES_OK before DRIVER"));
    }
    if needs(DRIVER_OK, ACKNOWLEDGE | DRIVER | FEATURES_OK) {
        return Err(err("DRIVER_OK before FEATURES_OK"));
    }
    Ok(if newly & FEATURES_OK != 0 {
        StatusChange::FeaturesOk
    } else if newly & DRIVER_OK != 0 {
        StatusChange::DriverOk
    } else {
        StatusChange::Other
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_enforced() {
        assert_eq!(transition(0, ACKNOWLEDGE).unwrap(), StatusChange::Other);
        assert!(transition(0, DRIVER).is_err());
        assert!(transition(ACKNOWLEDGE, ACKNOWLEDGE | DRIVER_OK).is_err());
        let s = ACKNOWLEDGE | DRIVER;
        assert_eq!(
            transition(s, s | FEATURES_OK).unwrap(),
            StatusChange::FeaturesOk
        );
        let s = s | FEATURES_OK;
        assert_eq!(
            transition(s, s | DRIVER_OK).unwrap(),
            StatusChange::DriverOk
        );
        assert!(transition(s | DRIVER_OK, s).is_err());
        assert_eq!(transition(s, 0).unwrap(), StatusChange::Reset);
        assert!(transition(s, s | NEEDS_RESET).is_err());
    }
}
