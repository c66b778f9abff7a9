//! The one opcode table: every command the logical unit executes, with its CDB usage data (the
//! bits it looks at, as REPORT SUPPORTED OPERATION CODES reports them) and its handler. The
//! table is the single source for dispatch and for REPORT SUPPORTED OPERATION CODES.

use crate::lun::{Command, LogicalUnit};
use crate::sense::Sense;
use crate::{sbc, spc};

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

/// Every supported command: SPC (primary commands) then SBC (block commands).
pub fn all() -> impl Iterator<Item = &'static OpInfo> {
    spc::OPS.iter().chain(sbc::OPS.iter())
}

/// Whether any entry has this opcode.
pub fn opcode_known(opcode: u8) -> bool {
    all().any(|o| o.opcode == opcode)
}

/// The entry for a CDB (opcode, and service action where the opcode has them).
pub fn lookup(cdb: &[u8]) -> Option<&'static OpInfo> {
    let opcode = *cdb.first()?;
    let sa = cdb.get(1).map(|b| b & 0x1f);
    all().find(|o| o.opcode == opcode && (o.service_action.is_none() || o.service_action == sa))
}
