//! Sense data (SPC-5 §4.4): a sense key, an additional sense code and qualifier, and where SPC
//! asks for one a field pointer naming the CDB or parameter-list byte at fault; encoded in
//! fixed (0x70) or descriptor (0x72) format.

/// Sense keys (SPC-5 table 48).
pub mod key {
    /// No sense.
    pub const NO_SENSE: u8 = 0x0;
    /// Not ready.
    pub const NOT_READY: u8 = 0x2;
    /// Medium error.
    pub const MEDIUM_ERROR: u8 = 0x3;
    /// Hardware error.
    pub const HARDWARE_ERROR: u8 = 0x4;
    /// Illegal request.
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    /// Unit attention.
    pub const UNIT_ATTENTION: u8 = 0x6;
    /// Data protect.
    pub const DATA_PROTECT: u8 = 0x7;
    /// Aborted command.
    pub const ABORTED_COMMAND: u8 = 0xb;
    /// Miscompare.
    pub const MISCOMPARE: u8 = 0xe;
}

/// Where in the CDB or parameter list a field at fault is (sense-key specific bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    /// True: the field is in the CDB; false: in the parameter list (data-out).
    pub in_cdb: bool,
    /// Byte offset of the field.
    pub byte: u16,
    /// Bit of the field's most significant bit, when it does not start a byte.
    pub bit: Option<u8>,
}

/// One sense condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// Sense key.
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
    /// Field pointer (ILLEGAL REQUEST on a CDB or parameter field).
    pub field: Option<FieldPointer>,
    /// The INFORMATION field (e.g. the offset of the first miscompared byte).
    pub information: Option<u64>,
}

macro_rules! sense_consts {
    ($($(#[$doc:meta])* $name:ident = ($k:expr, $asc:expr, $ascq:expr);)*) => {
        impl Sense {
            $($(#[$doc])* pub const $name: Sense = Sense { key: $k, asc: $asc, ascq: $ascq, field: None, information: None };)*
        }
    };
}

sense_consts! {
    /// INVALID COMMAND OPERATION CODE.
    INVALID_OPCODE = (key::ILLEGAL_REQUEST, 0x20, 0x00);
    /// LOGICAL BLOCK ADDRESS OUT OF RANGE.
    LBA_OUT_OF_RANGE = (key::ILLEGAL_REQUEST, 0x21, 0x00);
    /// INVALID FIELD IN CDB (use [`Sense::in_cdb`] to point at the field).
    INVALID_FIELD_IN_CDB = (key::ILLEGAL_REQUEST, 0x24, 0x00);
    /// LOGICAL UNIT NOT SUPPORTED.
    LUN_NOT_SUPPORTED = (key::ILLEGAL_REQUEST, 0x25, 0x00);
    /// INVALID FIELD IN PARAMETER LIST (use [`Sense::in_param`]).
    INVALID_FIELD_IN_PARAM = (key::ILLEGAL_REQUEST, 0x26, 0x00);
    /// PARAMETER LIST LENGTH ERROR.
    PARAM_LIST_LENGTH = (key::ILLEGAL_REQUEST, 0x1a, 0x00);
    /// SAVING PARAMETERS NOT SUPPORTED.
    SAVING_NOT_SUPPORTED = (key::ILLEGAL_REQUEST, 0x39, 0x00);
    /// WRITE PROTECTED.
    WRITE_PROTECTED = (key::DATA_PROTECT, 0x27, 0x00);
    /// UNRECOVERED READ ERROR.
    READ_ERROR = (key::MEDIUM_ERROR, 0x11, 0x00);
    /// WRITE ERROR.
    WRITE_ERROR = (key::MEDIUM_ERROR, 0x0c, 0x00);
    /// MISCOMPARE DURING VERIFY OPERATION.
    MISCOMPARE_VERIFY = (key::MISCOMPARE, 0x1d, 0x00);
    /// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    POWER_ON_RESET = (key::UNIT_ATTENTION, 0x29, 0x00);
    /// MODE PARAMETERS CHANGED.
    MODE_PARAMETERS_CHANGED = (key::UNIT_ATTENTION, 0x2a, 0x01);
    /// CAPACITY DATA HAS CHANGED.
    CAPACITY_CHANGED = (key::UNIT_ATTENTION, 0x2a, 0x09);
    /// REPORTED LUNS DATA HAS CHANGED.
    REPORTED_LUNS_CHANGED = (key::UNIT_ATTENTION, 0x3f, 0x0e);
    /// MEDIUM NOT PRESENT.
    MEDIUM_NOT_PRESENT = (key::NOT_READY, 0x3a, 0x00);
    /// NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED.
    MEDIUM_MAY_HAVE_CHANGED = (key::UNIT_ATTENTION, 0x28, 0x00);
    /// NO ADDITIONAL SENSE INFORMATION.
    NO_SENSE = (key::NO_SENSE, 0x00, 0x00);
    /// BUS DEVICE RESET FUNCTION OCCURRED (after a LOGICAL UNIT RESET).
    BUS_DEVICE_RESET = (key::UNIT_ATTENTION, 0x29, 0x03);
    /// I_T NEXUS LOSS OCCURRED (after an I_T NEXUS RESET).
    NEXUS_LOSS = (key::UNIT_ATTENTION, 0x29, 0x07);
    /// INTERNAL TARGET FAILURE.
    INTERNAL_FAILURE = (key::HARDWARE_ERROR, 0x44, 0x00);
    /// INVALID RELEASE OF PERSISTENT RESERVATION.
    INVALID_RELEASE = (key::ILLEGAL_REQUEST, 0x26, 0x04);
    /// INSUFFICIENT REGISTRATION RESOURCES.
    INSUFFICIENT_REGISTRATION_RESOURCES = (key::ILLEGAL_REQUEST, 0x55, 0x04);
    /// RESERVATIONS PREEMPTED.
    RESERVATIONS_PREEMPTED = (key::UNIT_ATTENTION, 0x2a, 0x03);
    /// RESERVATIONS RELEASED.
    RESERVATIONS_RELEASED = (key::UNIT_ATTENTION, 0x2a, 0x04);
    /// REGISTRATIONS PREEMPTED.
    REGISTRATIONS_PREEMPTED = (key::UNIT_ATTENTION, 0x2a, 0x05);
    /// Not sense data: a handler returns it to complete the command with RESERVATION
    /// CONFLICT status and no sense (`LogicalUnit::execute` maps it; an impossible sense key
    /// keeps it apart from real conditions).
    RESERVATION_CONFLICT = (0xff, 0xff, 0xff);
}

impl Sense {
    /// The same condition pointing at CDB byte `byte` (bit `bit`, if the field does not start
    /// the byte).
    pub fn in_cdb(self, byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            field: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
            ..self
        }
    }

    /// The same condition pointing at parameter-list byte `byte`.
    pub fn in_param(self, byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            field: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit,
            }),
            ..self
        }
    }

    /// The same condition with the INFORMATION field set.
    pub fn with_information(self, information: u64) -> Sense {
        Sense {
            information: Some(information),
            ..self
        }
    }

    /// The sense-key specific bytes (SKSV set) for a field pointer.
    fn sks(&self) -> Option<[u8; 3]> {
        let f = self.field?;
        let mut b0 = 0x80 | if f.in_cdb { 0x40 } else { 0 };
        if let Some(bit) = f.bit {
            b0 |= 0x08 | (bit & 7);
        }
        let [hi, lo] = f.byte.to_be_bytes();
        Some([b0, hi, lo])
    }

    /// Fixed-format sense data (response code 0x70, current error), 18 bytes.
    pub fn fixed(&self) -> Vec<u8> {
        let mut s = vec![0u8; 18];
        s[0] = 0x70;
        s[2] = self.key & 0xf;
        s[7] = 10; // additional sense length
        s[12] = self.asc;
        s[13] = self.ascq;
        if let Some(sks) = self.sks() {
            s[15..18].copy_from_slice(&sks);
        }
        // Fixed format holds 32 bits of INFORMATION (VALID set); larger values only in the
        // descriptor format.
        if let Some(info) = self.information.and_then(|i| u32::try_from(i).ok()) {
            s[0] |= 0x80;
            s[3..7].copy_from_slice(&info.to_be_bytes());
        }
        s
    }

    /// Descriptor-format sense data (response code 0x72), with a sense-key specific
    /// descriptor when there is a field pointer.
    pub fn descriptor(&self) -> Vec<u8> {
        let mut s = vec![0x72, self.key & 0xf, self.asc, self.ascq, 0, 0, 0, 0];
        if let Some(info) = self.information {
            s.extend_from_slice(&[0x00, 0x0a, 0x80, 0]);
            s.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(sks) = self.sks() {
            s.extend_from_slice(&[0x02, 0x06, 0, 0, sks[0], sks[1], sks[2], 0]);
        }
        s[7] = (s.len() - 8) as u8;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_and_descriptor_formats() {
        let s = Sense::INVALID_FIELD_IN_CDB.in_cdb(2, Some(1));
        let f = s.fixed();
        assert_eq!(&f[..3], &[0x70, 0, 0x05]);
        assert_eq!((f[7], f[12], f[13]), (10, 0x24, 0));
        assert_eq!(&f[15..18], &[0xc9, 0, 2]);
        let d = s.descriptor();
        assert_eq!(&d[..4], &[0x72, 0x05, 0x24, 0]);
        assert_eq!(d[7] as usize, d.len() - 8);
        assert_eq!(&d[8..16], &[0x02, 0x06, 0, 0, 0xc9, 0, 2, 0]);
        assert_eq!(
            Sense::LBA_OUT_OF_RANGE.fixed()[15],
            0,
            "no field pointer, SKSV clear"
        );
        let m = Sense::MISCOMPARE_VERIFY.with_information(17);
        assert_eq!(&m.fixed()[..7], &[0xf0, 0, 0x0e, 0, 0, 0, 17]);
        assert_eq!(
            &m.descriptor()[8..20],
            &[0, 0x0a, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 17]
        );
    }
}
