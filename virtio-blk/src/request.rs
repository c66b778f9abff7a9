//! Request types, the request header and discard segments (VIRTIO 1.2 §5.2.6), and the one
//! table that dispatches them.

use vm_memory::{ByteValued, Le32, Le64};
use vstor_blockdev::IoOp;

use crate::config::feature;

/// VIRTIO_BLK_S_OK.
pub const S_OK: u8 = 0;
/// VIRTIO_BLK_S_IOERR.
pub const S_IOERR: u8 = 1;
/// VIRTIO_BLK_S_UNSUPP.
pub const S_UNSUPP: u8 = 2;

/// VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: the only defined segment flag.
pub const SEG_FLAG_UNMAP: u32 = 1;

/// Sector size of the request protocol: always 512 bytes, whatever `blk_size` is (§5.2.6).
pub const SECTOR_SHIFT: u32 = 9;

/// `struct virtio_blk_req` header: type, reserved (ioprio), sector.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestHeader {
    /// Request type (`VIRTIO_BLK_T_*`).
    pub type_: Le32,
    /// Reserved (I/O priority in legacy drivers).
    pub reserved: Le32,
    /// First 512-byte sector.
    pub sector: Le64,
}
// SAFETY: plain little-endian integers, no padding; any bit pattern is valid.
unsafe impl ByteValued for RequestHeader {}

/// `struct virtio_blk_discard_write_zeroes`: one range of a DISCARD, WRITE_ZEROES or
/// SECURE_ERASE request.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DiscardSegment {
    /// First 512-byte sector.
    pub sector: Le64,
    /// Number of sectors.
    pub num_sectors: Le32,
    /// Flags (`SEG_FLAG_UNMAP`).
    pub flags: Le32,
}
// SAFETY: plain little-endian integers, no padding; any bit pattern is valid.
unsafe impl ByteValued for DiscardSegment {}

/// How a request type is executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Data from the device into the driver's buffers.
    In,
    /// Data from the driver's buffers to the device.
    Out,
    /// Flush the write cache.
    Flush,
    /// Return the serial.
    GetId,
    /// Return wear information.
    GetLifetime,
    /// A list of ranges, each becoming one block-layer request of the given operation.
    Ranges(RangeOp),
}

/// The range-list operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOp {
    /// DISCARD.
    Discard,
    /// WRITE_ZEROES.
    WriteZeroes,
    /// SECURE_ERASE.
    SecureErase,
}

impl RangeOp {
    /// The block-layer operation for one segment.
    pub fn io_op(self, flags: u32) -> IoOp {
        match self {
            RangeOp::Discard => IoOp::Discard,
            RangeOp::WriteZeroes => IoOp::WriteZeroes {
                may_unmap: flags & SEG_FLAG_UNMAP != 0,
            },
            RangeOp::SecureErase => IoOp::SecureErase,
        }
    }

    /// Flags a segment may carry for this operation (§5.2.6.2: "the unmap bit MUST be 0" for
    /// DISCARD and SECURE_ERASE).
    pub fn allowed_flags(self) -> u32 {
        match self {
            RangeOp::WriteZeroes => SEG_FLAG_UNMAP,
            RangeOp::Discard | RangeOp::SecureErase => 0,
        }
    }
}

/// One row of the request table.
#[derive(Debug)]
pub struct RequestType {
    /// `VIRTIO_BLK_T_*` value.
    pub code: u32,
    /// Name for logs.
    pub name: &'static str,
    /// How it executes.
    pub kind: Kind,
    /// Feature bit that must be negotiated, if any.
    pub feature: Option<u64>,
    /// Whether it changes the device's content (refused with IOERR on a read-only device).
    pub writes: bool,
}

/// Every supported request type: the single source of truth for dispatch.
pub const REQUEST_TYPES: &[RequestType] = &[
    RequestType {
        code: 0,
        name: "IN",
        kind: Kind::In,
        feature: None,
        writes: false,
    },
    RequestType {
        code: 1,
        name: "OUT",
        kind: Kind::Out,
        feature: None,
        writes: true,
    },
    RequestType {
        code: 4,
        name: "FLUSH",
        kind: Kind::Flush,
        feature: Some(feature::FLUSH),
        writes: false,
    },
    RequestType {
        code: 8,
        name: "GET_ID",
        kind: Kind::GetId,
        feature: None,
        writes: false,
    },
    RequestType {
        code: 10,
        name: "GET_LIFETIME",
        kind: Kind::GetLifetime,
        feature: Some(feature::LIFETIME),
        writes: false,
    },
    RequestType {
        code: 11,
        name: "DISCARD",
        kind: Kind::Ranges(RangeOp::Discard),
        feature: Some(feature::DISCARD),
        writes: true,
    },
    RequestType {
        code: 13,
        name: "WRITE_ZEROES",
        kind: Kind::Ranges(RangeOp::WriteZeroes),
        feature: Some(feature::WRITE_ZEROES),
        writes: true,
    },
    RequestType {
        code: 14,
        name: "SECURE_ERASE",
        kind: Kind::Ranges(RangeOp::SecureErase),
        feature: Some(feature::SECURE_ERASE),
        writes: true,
    },
];

/// Looks a request type up by its code.
pub fn lookup(code: u32) -> Option<&'static RequestType> {
    REQUEST_TYPES.iter().find(|t| t.code == code)
}

/// `struct virtio_blk_lifetime` as GET_LIFETIME returns it: pre-EOL "normal" and both wear
/// estimates "0-10% used" (JEDEC values), since vstor's backing stores do not wear out.
pub const LIFETIME: [u8; 6] = [1, 0, 1, 0, 1, 0];
