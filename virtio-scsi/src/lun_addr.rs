//! The 8-byte LUN address of virtio-scsi requests (§5.6.6.1): byte 0 is 1, byte 1 the
//! target, bytes 2-3 the LUN in the SAM single-level format (peripheral or flat space
//! addressing, or the REPORT LUNS well-known LUN), bytes 4-7 zero.

use vstor_scsi_disk::target::{MAX_LUNS, REPORT_LUNS_WLUN};

/// Targets a device can address (byte 1).
pub const MAX_TARGETS: u16 = 256;

/// A decoded address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LunAddr {
    /// Target (0..=255).
    pub target: u8,
    /// LUN (0..16384, or [`REPORT_LUNS_WLUN`]).
    pub lun: u16,
}

impl LunAddr {
    /// Decodes `b`; `None` when it is not a valid single-level address (the request then
    /// gets VIRTIO_SCSI_S_BAD_TARGET).
    pub fn decode(b: &[u8; 8]) -> Option<LunAddr> {
        if b[0] != 1 || b[4..] != [0, 0, 0, 0] {
            return None;
        }
        let lun = match b[2] >> 6 {
            // Peripheral device addressing, bus 0.
            0b00 if b[2] == 0 => u16::from(b[3]),
            // Flat space addressing.
            0b01 => (u16::from(b[2] & 0x3f) << 8) | u16::from(b[3]),
            // Well-known: only the REPORT LUNS W-LUN.
            0b11 if u16::from_be_bytes([b[2], b[3]]) == REPORT_LUNS_WLUN => REPORT_LUNS_WLUN,
            _ => return None,
        };
        Some(LunAddr { target: b[1], lun })
    }

    /// The address the device reports in events, in the form REPORT LUNS uses (peripheral
    /// addressing below 256, flat space above): Linux reads bytes 2-3 of an event as the LUN
    /// number its scan found, so the two must agree.
    pub fn encode(self) -> [u8; 8] {
        let l = vstor_scsi_disk::target::encode_lun(self.lun);
        [1, self.target, l[0], l[1], 0, 0, 0, 0]
    }

    /// Whether this addresses a logical unit (not a well-known LUN).
    pub fn is_unit(self) -> bool {
        u32::from(self.lun) < MAX_LUNS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_peripheral_and_wellknown_addresses() {
        assert_eq!(
            LunAddr::decode(&[1, 3, 0x40, 7, 0, 0, 0, 0]),
            Some(LunAddr { target: 3, lun: 7 })
        );
        assert_eq!(
            LunAddr::decode(&[1, 0, 0x7f, 0xff, 0, 0, 0, 0]),
            Some(LunAddr {
                target: 0,
                lun: 16383
            })
        );
        assert_eq!(
            LunAddr::decode(&[1, 255, 0, 9, 0, 0, 0, 0]),
            Some(LunAddr {
                target: 255,
                lun: 9
            })
        );
        assert_eq!(
            LunAddr::decode(&[1, 0, 0xc1, 0x01, 0, 0, 0, 0]).map(|a| a.lun),
            Some(REPORT_LUNS_WLUN)
        );
        // Wrong first byte, bus != 0, extended addressing, a second level.
        assert_eq!(LunAddr::decode(&[0, 0, 0x40, 0, 0, 0, 0, 0]), None);
        assert_eq!(LunAddr::decode(&[1, 0, 0x01, 0, 0, 0, 0, 0]), None);
        assert_eq!(LunAddr::decode(&[1, 0, 0x80, 0, 0, 0, 0, 0]), None);
        assert_eq!(LunAddr::decode(&[1, 0, 0x40, 0, 0, 1, 0, 0]), None);
        let a = LunAddr {
            target: 9,
            lun: 300,
        };
        assert_eq!(LunAddr::decode(&a.encode()), Some(a));
    }
}
