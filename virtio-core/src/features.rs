//! Feature bits shared by all devices and their negotiation (VIRTIO 1.2 §2.2, §6).

use crate::error::{Error, Result};

/// VIRTIO_F_RING_INDIRECT_DESC (§6): the driver may use indirect descriptor tables.
pub const RING_INDIRECT_DESC: u64 = 1 << 28;
/// VIRTIO_F_RING_EVENT_IDX (§6): used_event / avail_event notification suppression.
pub const RING_EVENT_IDX: u64 = 1 << 29;
/// VIRTIO_F_VERSION_1 (§6): compliance with VIRTIO 1.x; vstor devices require it.
pub const VERSION_1: u64 = 1 << 32;
/// VIRTIO_F_ACCESS_PLATFORM (§6).
pub const ACCESS_PLATFORM: u64 = 1 << 33;
/// VHOST_USER_F_PROTOCOL_FEATURES: vhost-user's protocol feature negotiation bit.
pub const VHOST_USER_PROTOCOL_FEATURES: u64 = 1 << 30;

/// The transport feature bits every vstor device offers.
pub const COMMON_FEATURES: u64 = VERSION_1 | RING_INDIRECT_DESC | RING_EVENT_IDX;

/// Offered and acknowledged features of one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    offered: u64,
    acked: u64,
}

impl Features {
    /// Features with `offered` bits on offer and nothing acknowledged.
    pub fn new(offered: u64) -> Self {
        Features { offered, acked: 0 }
    }

    /// The bits the device offers.
    pub fn offered(&self) -> u64 {
        self.offered
    }

    /// The bits the driver acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Whether the driver acknowledged every bit of `mask`.
    pub fn has(&self, mask: u64) -> bool {
        self.acked & mask == mask
    }

    /// Records the driver's selection. Refuses bits the device did not offer (§2.2.1: "The
    /// driver MUST NOT accept a feature which the device did not offer") and a selection
    /// without VERSION_1 (vstor implements no legacy interface).
    pub fn ack(&mut self, driver: u64) -> Result<()> {
        if driver & !self.offered != 0 {
            return Err(Error::Features {
                acked: driver,
                reason: "bits the device did not offer",
            });
        }
        if driver & VERSION_1 == 0 {
            return Err(Error::Features {
                acked: driver,
                reason: "VIRTIO_F_VERSION_1 missing (legacy drivers are not supported)",
            });
        }
        self.acked = driver;
        Ok(())
    }

    /// Restores an acknowledged set from a snapshot (validated like [`Features::ack`]).
    pub fn restore(&mut self, acked: u64) -> Result<()> {
        if acked == 0 {
            self.acked = 0;
            return Ok(());
        }
        self.ack(acked)
    }

    /// Forgets the driver's selection (device reset).
    pub fn reset(&mut self) {
        self.acked = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unoffered_and_legacy() {
        let mut f = Features::new(COMMON_FEATURES | 1 << 5);
        assert!(f.ack(VERSION_1 | 1 << 6).is_err());
        assert!(f.ack(1 << 5).is_err());
        f.ack(VERSION_1 | 1 << 5).unwrap();
        assert!(f.has(1 << 5));
        assert!(!f.has(RING_EVENT_IDX));
        f.reset();
        assert_eq!(f.acked(), 0);
    }
}
