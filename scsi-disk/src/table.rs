//! The opcode tables, one per device kind: every command a logical unit of that kind executes,
//! with its CDB usage data (the bits it looks at, as REPORT SUPPORTED OPERATION CODES reports
//! them) and its handler. A unit's table is the single source for its dispatch and its REPORT
//! SUPPORTED OPERATION CODES.

use std::sync::OnceLock;

use crate::lun::{Command, LogicalUnit, LunKind};
use crate::sense::Sense;
use crate::{mmc, sbc, spc};

/// A command handler: fills `data_in` and returns how many bytes it filled.
pub type Handler = fn(&LogicalUnit, &mut Command<'_>) -> Result<usize, Sense>;

/// One supported command.
#[derive(Debug)]
pub struct OpInfo {
    /// Operation code.
    pub opcode: u8,
    /// Service action (in CDB byte 1, bits 0..4), for opcodes that have them.
    pub service_action: Option<u8>,
    /// Name, for logs.
    pub name: &'static str,
    /// CDB usage data: one mask byte per CDB byte (byte 0 is the opcode itself).
    pub usage: &'static [u8],
    /// Whether the command changes the medium (refused on read-only units).
    pub writes: bool,
    /// The handler.
    pub handler: Handler,
}

/// Every command a unit of `kind` supports: for a disk SPC (primary commands) then SBC (block
/// commands); for a CD/DVD-ROM the SPC commands that apply then MMC ([`mmc::OPS`]).
pub fn for_kind(kind: LunKind) -> impl Iterator<Item = &'static OpInfo> + Clone {
    static DISK: OnceLock<Vec<&'static OpInfo>> = OnceLock::new();
    static CDROM: OnceLock<Vec<&'static OpInfo>> = OnceLock::new();
    let table = match kind {
        LunKind::Disk => DISK.get_or_init(|| spc::OPS.iter().chain(sbc::OPS.iter()).collect()),
        LunKind::Cdrom => CDROM.get_or_init(mmc::table),
    };
    table.iter().copied()
}

/// Every command a disk supports (`for_kind(LunKind::Disk)`).
pub fn all() -> impl Iterator<Item = &'static OpInfo> + Clone {
    for_kind(LunKind::Disk)
}

/// Whether any entry of the `kind` table has this opcode.
pub fn opcode_known(kind: LunKind, opcode: u8) -> bool {
    for_kind(kind).any(|o| o.opcode == opcode)
}

/// The entry of the `kind` table for a CDB (opcode, and service action where the opcode has
/// them).
pub fn lookup(kind: LunKind, cdb: &[u8]) -> Option<&'static OpInfo> {
    let opcode = *cdb.first()?;
    let sa = cdb.get(1).map(|b| b & 0x1f);
    for_kind(kind)
        .find(|o| o.opcode == opcode && (o.service_action.is_none() || o.service_action == sa))
}
