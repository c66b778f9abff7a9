//! Persistent reservations (SPC-4 §5.14, SPC-5 §5.14): PERSISTENT RESERVE IN (READ KEYS, READ
//! RESERVATION, REPORT CAPABILITIES, READ FULL STATUS) and PERSISTENT RESERVE OUT (REGISTER,
//! RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT AND ABORT, REGISTER AND IGNORE EXISTING KEY,
//! REGISTER AND MOVE), the access rules each reservation type imposes on other commands, and
//! the interplay with RESERVE(6)/(10) (SPC-3 §5.6.3, CRH = 0).
//!
//! - All six reservation types, logical unit scope only.
//! - SPEC_I_PT is refused (INVALID FIELD IN PARAMETER LIST pointing at the bit, SIP_C = 0).
//!   ALL_TG_PT is accepted (ATP_C = 1): the logical unit has a single target port, so a
//!   registration through it already covers every target port; it is reported back in READ
//!   FULL STATUS.
//! - APTPL is honoured when [`crate::LunOptions::pr_file`] names a file (PTPL_C = 1): while
//!   set, every change is written there atomically ([`file`]), and it is loaded again when
//!   the logical unit is created.
//! - PREEMPT AND ABORT behaves as PREEMPT here: this layer runs one command at a time and has
//!   no task set; aborting the preempted nexuses' tasks is the transport's job.
//! - Unit attentions: REGISTRATIONS PREEMPTED to each nexus whose registration a PREEMPT
//!   removed, RESERVATIONS RELEASED to the other registrants when a registrants-only or
//!   all-registrants reservation is released (RELEASE, or the holder unregistering) or when
//!   a PREEMPT changes the type, RESERVATIONS PREEMPTED to the other registrants on CLEAR.
//! - An I_T nexus is named by [`Command::nexus`]; in TransportIDs it is a SAS address
//!   ([`transport_id`], [`nexus_of_transport_id`]).

pub mod file;

pub use file::PrFileError;

use crate::lun::{Command, LogicalUnit, LunState};
use crate::sense::Sense;

/// Most registrations the logical unit keeps; one more is refused with INSUFFICIENT
/// REGISTRATION RESOURCES.
pub const MAX_REGISTRATIONS: usize = 1024;

/// PROTOCOL IDENTIFIER of the TransportIDs this unit reports and accepts (SAS).
pub const SAS_PROTOCOL_ID: u8 = 6;

/// Length of a SAS TransportID.
pub const TRANSPORT_ID_LEN: usize = 24;

/// CDB usage data of PERSISTENT RESERVE IN: service action, allocation length.
pub const PR_IN_USAGE: &[u8] = &[0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0x00];

/// CDB usage data of PERSISTENT RESERVE OUT: service action, scope and type (ignored by the
/// service actions that do not use them, so never refused), parameter list length.
pub const PR_OUT_USAGE: &[u8] = &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x00];

/// The TransportID naming `nexus`: the SAS format (protocol identifier 6, format 00b) with the
/// nexus value as the 8-byte SAS address. The one place the nexus/TransportID mapping lives,
/// with [`nexus_of_transport_id`].
pub fn transport_id(nexus: u64) -> [u8; TRANSPORT_ID_LEN] {
    let mut t = [0u8; TRANSPORT_ID_LEN];
    t[0] = SAS_PROTOCOL_ID;
    t[4..12].copy_from_slice(&nexus.to_be_bytes());
    t
}

/// The nexus a TransportID names, or the (byte, bit) of the field at fault: a format code
/// other than 00b, a protocol other than SAS, or a TransportID shorter than 24 bytes.
pub fn nexus_of_transport_id(t: &[u8]) -> Result<u64, (usize, Option<u8>)> {
    let b0 = t.first().copied().ok_or((0, None))?;
    if b0 & 0xc0 != 0 {
        return Err((0, Some(7)));
    }
    if b0 & 0x0f != SAS_PROTOCOL_ID {
        return Err((0, Some(3)));
    }
    let addr = t.get(4..12).ok_or((0, None))?;
    if t.len() < TRANSPORT_ID_LEN {
        return Err((0, None));
    }
    Ok(be64(addr, 0))
}

/// A persistent reservation type (SPC-4 table 182).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrType {
    /// Write Exclusive (1).
    WriteExclusive,
    /// Exclusive Access (3).
    ExclusiveAccess,
    /// Write Exclusive – Registrants Only (5).
    WriteExclusiveRegistrantsOnly,
    /// Exclusive Access – Registrants Only (6).
    ExclusiveAccessRegistrantsOnly,
    /// Write Exclusive – All Registrants (7).
    WriteExclusiveAllRegistrants,
    /// Exclusive Access – All Registrants (8).
    ExclusiveAccessAllRegistrants,
}

impl PrType {
    /// The type for a TYPE field value, if supported.
    pub fn from_code(code: u8) -> Option<PrType> {
        Some(match code {
            1 => PrType::WriteExclusive,
            3 => PrType::ExclusiveAccess,
            5 => PrType::WriteExclusiveRegistrantsOnly,
            6 => PrType::ExclusiveAccessRegistrantsOnly,
            7 => PrType::WriteExclusiveAllRegistrants,
            8 => PrType::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    /// The TYPE field value.
    pub fn code(self) -> u8 {
        match self {
            PrType::WriteExclusive => 1,
            PrType::ExclusiveAccess => 3,
            PrType::WriteExclusiveRegistrantsOnly => 5,
            PrType::ExclusiveAccessRegistrantsOnly => 6,
            PrType::WriteExclusiveAllRegistrants => 7,
            PrType::ExclusiveAccessAllRegistrants => 8,
        }
    }

    /// Every registrant is a reservation holder.
    fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// One holder, but every registrant has access.
    fn registrants_only(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveRegistrantsOnly | PrType::ExclusiveAccessRegistrantsOnly
        )
    }

    /// Reads are refused to nexuses without access too.
    fn exclusive_access(self) -> bool {
        matches!(
            self,
            PrType::ExclusiveAccess
                | PrType::ExclusiveAccessRegistrantsOnly
                | PrType::ExclusiveAccessAllRegistrants
        )
    }
}

/// One registered I_T nexus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Registration {
    pub nexus: u64,
    pub key: u64,
    pub all_tg_pt: bool,
}

/// The persistent reservation (logical unit scope).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reservation {
    pub kind: PrType,
    /// The holder (for all-registrants types: the nexus that established it; every
    /// registrant holds it).
    pub holder: u64,
}

/// Registrations and reservation of a logical unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PrState {
    /// PRgeneration.
    pub generation: u32,
    /// Registrations, oldest first (the order READ KEYS reports).
    pub regs: Vec<Registration>,
    pub reservation: Option<Reservation>,
    /// The last APTPL bit accepted: the state is kept in the PR file.
    pub aptpl: bool,
}

/// What a command is, for the reservation access rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Allowed under every reservation type.
    Always,
    /// Allowed under Write Exclusive types, conflicts under Exclusive Access types.
    Read,
    /// Conflicts under every type for nexuses without access.
    Other,
}

/// How SPC-4 table 65 / SBC-4 table 13 treat a CDB from a nexus without access. TEST UNIT READY,
/// MODE SENSE and the MAINTENANCE IN reports follow ALLOW COMMANDS 011b (REPORT
/// CAPABILITIES). Commands not listed (including ones this unit does not implement) conflict.
fn access(cdb: &[u8]) -> Access {
    let b = |i: usize| cdb.get(i).copied().unwrap_or(0);
    let sa = b(1) & 0x1f;
    match b(0) {
        // TEST UNIT READY, REQUEST SENSE, INQUIRY, READ CAPACITY(10), LOG SENSE,
        // PERSISTENT RESERVE IN/OUT (their own rules), REPORT LUNS.
        0x00 | 0x03 | 0x12 | 0x25 | 0x4d | 0x5e | 0x5f | 0xa0 => Access::Always,
        // START STOP UNIT: only START = 1 with POWER CONDITION 0.
        0x1b if b(4) & 0xf1 == 0x01 => Access::Always,
        // PREVENT ALLOW MEDIUM REMOVAL: only allowing removal.
        0x1e if b(4) & 0x03 == 0 => Access::Always,
        // READ CAPACITY(16); GET LBA STATUS.
        0x9e if sa == 0x10 => Access::Always,
        0x9e if sa == 0x12 => Access::Read,
        // REPORT IDENTIFYING INFORMATION, REPORT TARGET PORT GROUPS, REPORT TIMESTAMP.
        0xa3 if matches!(sa, 0x05 | 0x0a | 0x0f) => Access::Always,
        // REPORT SUPPORTED OPERATION CODES / TASK MANAGEMENT FUNCTIONS.
        0xa3 if matches!(sa, 0x0c | 0x0d) => Access::Read,
        // READ(6/10/12/16), VERIFY(10/12/16), MODE SENSE(6/10), READ BUFFER, RECEIVE
        // DIAGNOSTIC RESULTS, READ DEFECT DATA(10/12), READ ATTRIBUTE.
        0x08 | 0x28 | 0xa8 | 0x88 | 0x2f | 0xaf | 0x8f | 0x1a | 0x5a | 0x3c | 0x1c | 0x37
        | 0xb7 | 0x8c => Access::Read,
        _ => Access::Other,
    }
}

impl PrState {
    fn reg(&self, nexus: u64) -> Option<&Registration> {
        self.regs.iter().find(|r| r.nexus == nexus)
    }

    fn is_holder(&self, nexus: u64) -> bool {
        match self.reservation {
            Some(r) if r.kind.all_registrants() => self.reg(nexus).is_some(),
            Some(r) => r.holder == nexus,
            None => false,
        }
    }

    /// Whether `cdb` from `nexus` conflicts with the persistent reservation.
    fn conflicts(&self, cdb: &[u8], nexus: u64) -> bool {
        let Some(r) = self.reservation else {
            return false;
        };
        if self.is_holder(nexus) || (r.kind.registrants_only() && self.reg(nexus).is_some()) {
            return false;
        }
        match access(cdb) {
            Access::Always => false,
            Access::Read => r.kind.exclusive_access(),
            Access::Other => true,
        }
    }

    /// The registered key of `nexus` if it equals `key`, else RESERVATION CONFLICT.
    fn check_key(&self, nexus: u64, key: u64) -> Result<(), Sense> {
        match self.reg(nexus) {
            Some(r) if r.key == key => Ok(()),
            _ => Err(Sense::RESERVATION_CONFLICT),
        }
    }

    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// RESERVATIONS RELEASED (or another UA) for every registrant but `except`.
    fn tell_others(&self, except: u64, s: Sense, uas: &mut Vec<(u64, Sense)>) {
        uas.extend(
            self.regs
                .iter()
                .filter(|r| r.nexus != except)
                .map(|r| (r.nexus, s)),
        );
    }

    /// REGISTER and REGISTER AND IGNORE EXISTING KEY.
    fn register(
        &mut self,
        nexus: u64,
        p: &Params,
        ignore: bool,
        uas: &mut Vec<(u64, Sense)>,
    ) -> Result<(), Sense> {
        match self.regs.iter().position(|r| r.nexus == nexus) {
            None => {
                if !ignore && p.key != 0 {
                    return Err(Sense::RESERVATION_CONFLICT);
                }
                if p.sa_key == 0 {
                    return Ok(()); // nothing to register: GOOD, no change
                }
                if self.regs.len() >= MAX_REGISTRATIONS {
                    return Err(Sense::INSUFFICIENT_REGISTRATION_RESOURCES);
                }
                self.regs.push(Registration {
                    nexus,
                    key: p.sa_key,
                    all_tg_pt: p.all_tg_pt,
                });
            }
            Some(i) => {
                let cur = self.regs.get(i).map_or(0, |r| r.key);
                if !ignore && cur != p.key {
                    return Err(Sense::RESERVATION_CONFLICT);
                }
                if p.sa_key == 0 {
                    self.unregister(i, uas);
                } else if let Some(r) = self.regs.get_mut(i) {
                    r.key = p.sa_key;
                }
            }
        }
        self.aptpl = p.aptpl;
        self.bump();
        Ok(())
    }

    /// Removes registration `i`; a holder unregistering releases the reservation (an
    /// all-registrants one only with the last registrant).
    fn unregister(&mut self, i: usize, uas: &mut Vec<(u64, Sense)>) {
        if i >= self.regs.len() {
            return;
        }
        let gone = self.regs.remove(i);
        let Some(r) = self.reservation else {
            return;
        };
        if r.kind.all_registrants() {
            if self.regs.is_empty() {
                self.reservation = None;
            }
        } else if r.holder == gone.nexus {
            self.reservation = None;
            if r.kind.registrants_only() {
                self.tell_others(gone.nexus, Sense::RESERVATIONS_RELEASED, uas);
            }
        }
    }

    fn reserve(&mut self, nexus: u64, key: u64, kind: PrType) -> Result<(), Sense> {
        self.check_key(nexus, key)?;
        match self.reservation {
            None => {
                self.reservation = Some(Reservation {
                    kind,
                    holder: nexus,
                });
                Ok(())
            }
            Some(r) if r.kind == kind && self.is_holder(nexus) => Ok(()),
            Some(_) => Err(Sense::RESERVATION_CONFLICT),
        }
    }

    fn release(
        &mut self,
        nexus: u64,
        key: u64,
        kind: PrType,
        uas: &mut Vec<(u64, Sense)>,
    ) -> Result<(), Sense> {
        self.check_key(nexus, key)?;
        let Some(r) = self.reservation else {
            return Ok(());
        };
        if !self.is_holder(nexus) {
            return Ok(());
        }
        if r.kind != kind {
            return Err(Sense::INVALID_RELEASE);
        }
        self.reservation = None;
        if r.kind.registrants_only() || r.kind.all_registrants() {
            self.tell_others(nexus, Sense::RESERVATIONS_RELEASED, uas);
        }
        Ok(())
    }

    fn clear(&mut self, nexus: u64, key: u64, uas: &mut Vec<(u64, Sense)>) -> Result<(), Sense> {
        self.check_key(nexus, key)?;
        self.tell_others(nexus, Sense::RESERVATIONS_PREEMPTED, uas);
        self.regs.clear();
        self.reservation = None;
        self.bump();
        Ok(())
    }

    /// Removes the registrations `drop` selects, with REGISTRATIONS PREEMPTED for each (but
    /// the issuing nexus); how many were removed.
    fn remove_regs(
        &mut self,
        nexus: u64,
        drop: impl Fn(&Registration) -> bool,
        uas: &mut Vec<(u64, Sense)>,
    ) -> usize {
        let before = self.regs.len();
        self.regs.retain(|r| {
            let d = drop(r);
            if d && r.nexus != nexus {
                uas.push((r.nexus, Sense::REGISTRATIONS_PREEMPTED));
            }
            !d
        });
        before - self.regs.len()
    }

    /// PREEMPT and PREEMPT AND ABORT (SPC-4 §5.14.11.4).
    fn preempt(
        &mut self,
        nexus: u64,
        p: &Params,
        kind: PrType,
        uas: &mut Vec<(u64, Sense)>,
    ) -> Result<(), Sense> {
        self.check_key(nexus, p.key)?;
        let sark = p.sa_key;
        let zero_sark = Sense::INVALID_FIELD_IN_PARAM.in_param(8, None);
        match self.reservation {
            Some(r) if r.kind.all_registrants() && sark == 0 => {
                self.remove_regs(nexus, |reg| reg.nexus != nexus, uas);
                self.reservation = Some(Reservation {
                    kind,
                    holder: nexus,
                });
            }
            Some(r)
                if !r.kind.all_registrants() && self.reg(r.holder).map(|h| h.key) == Some(sark) =>
            {
                // Preempting the reservation (possibly the issuer's own: a type change).
                self.remove_regs(nexus, |reg| reg.key == sark && reg.nexus != nexus, uas);
                if r.kind != kind {
                    self.tell_others(nexus, Sense::RESERVATIONS_RELEASED, uas);
                }
                self.reservation = Some(Reservation {
                    kind,
                    holder: nexus,
                });
            }
            _ => {
                // Removing registrations only; the reservation stays unless its last
                // all-registrants holder goes.
                if sark == 0 {
                    return Err(zero_sark);
                }
                if self.remove_regs(nexus, |reg| reg.key == sark, uas) == 0 {
                    return Err(Sense::RESERVATION_CONFLICT);
                }
                if self.regs.is_empty() {
                    self.reservation = None;
                }
            }
        }
        self.bump();
        Ok(())
    }
}

/// The basic PERSISTENT RESERVE OUT parameter list (24 bytes).
struct Params {
    key: u64,
    sa_key: u64,
    all_tg_pt: bool,
    aptpl: bool,
}

impl Params {
    fn parse(p: &[u8]) -> Result<Params, Sense> {
        let (Some(&flags), Some(&b21)) = (p.get(20), p.get(21)) else {
            return Err(Sense::PARAM_LIST_LENGTH);
        };
        if flags & 0x08 != 0 {
            // SPEC_I_PT: not supported (SIP_C = 0).
            return Err(Sense::INVALID_FIELD_IN_PARAM.in_param(20, Some(3)));
        }
        if flags & 0xf2 != 0 {
            return Err(Sense::INVALID_FIELD_IN_PARAM.in_param(20, Some(high_bit(flags & 0xf2))));
        }
        if b21 != 0 {
            return Err(Sense::INVALID_FIELD_IN_PARAM.in_param(21, Some(high_bit(b21))));
        }
        if p.len() != 24 {
            return Err(Sense::PARAM_LIST_LENGTH);
        }
        Ok(Params {
            key: be64(p, 0),
            sa_key: be64(p, 8),
            all_tg_pt: flags & 0x04 != 0,
            aptpl: flags & 0x01 != 0,
        })
    }
}

fn high_bit(b: u8) -> u8 {
    7u8.saturating_sub(b.leading_zeros() as u8)
}

fn be64(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(i..i.saturating_add(8)) {
        a.copy_from_slice(s);
    }
    u64::from_be_bytes(a)
}

fn be32(b: &[u8], i: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(i..i.saturating_add(4)) {
        a.copy_from_slice(s);
    }
    u32::from_be_bytes(a)
}

fn byte(b: &[u8], i: usize) -> u8 {
    b.get(i).copied().unwrap_or(0)
}

/// Queues unit attention `s` for one nexus (once: a condition already pending is not queued
/// again).
pub(crate) fn queue_ua(st: &mut LunState, nexus: u64, s: Sense) {
    st.push_ua(nexus, s, false);
}

/// Whether `cdb` from `nexus` conflicts with the reservation state: a persistent reservation
/// the nexus has no access under, PERSISTENT RESERVE IN/OUT while a RESERVE(6)/(10)
/// reservation is held (by any nexus), RESERVE/RELEASE(6)/(10) while any nexus is registered
/// (SPC-3 §5.6.3 with CRH = 0).
pub fn conflict(lun: &LogicalUnit, cdb: &[u8], nexus: u64) -> bool {
    let st = lun.state();
    match cdb.first() {
        Some(0x5e | 0x5f) => st.reservation.is_some(),
        Some(0x16 | 0x17 | 0x56 | 0x57) => !st.pr.regs.is_empty(),
        _ => st.pr.conflicts(cdb, nexus),
    }
}

/// Copies `data` into the data-in buffer, truncated to the allocation length and the buffer.
fn reply(cmd: &mut Command<'_>, data: &[u8], alloc: usize) -> usize {
    let n = data.len().min(alloc).min(cmd.data_in.len());
    if let (Some(dst), Some(src)) = (cmd.data_in.get_mut(..n), data.get(..n)) {
        dst.copy_from_slice(src);
    }
    n
}

/// PERSISTENT RESERVE IN.
pub(crate) fn pr_in(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let sa = byte(cmd.cdb, 1) & 0x1f;
    let alloc = usize::from(u16::from_be_bytes([byte(cmd.cdb, 7), byte(cmd.cdb, 8)]));
    let port = lun.options().port;
    let ptpl_c = lun.options().pr_file.is_some();
    let data = {
        let st = lun.state();
        if st.reservation.is_some() {
            return Err(Sense::RESERVATION_CONFLICT);
        }
        let pr = &st.pr;
        let mut d = pr.generation.to_be_bytes().to_vec();
        match sa {
            0x00 => {
                // READ KEYS.
                d.extend_from_slice(&len32(8 * pr.regs.len()));
                for r in &pr.regs {
                    d.extend_from_slice(&r.key.to_be_bytes());
                }
            }
            0x01 => {
                // READ RESERVATION.
                match pr.reservation {
                    None => d.extend_from_slice(&[0; 4]),
                    Some(r) => {
                        d.extend_from_slice(&len32(16));
                        let key = if r.kind.all_registrants() {
                            0
                        } else {
                            pr.reg(r.holder).map_or(0, |h| h.key)
                        };
                        d.extend_from_slice(&key.to_be_bytes());
                        d.extend_from_slice(&[0, 0, 0, 0, 0, r.kind.code(), 0, 0]);
                    }
                }
            }
            0x02 => {
                // REPORT CAPABILITIES: ATP_C, PTPL_C; TMV, ALLOW COMMANDS 011b, PTPL_A; the
                // six types.
                d = vec![
                    0,
                    8,
                    0x04 | u8::from(ptpl_c),
                    0x80 | 0x30 | u8::from(pr.aptpl),
                    0xea,
                    0x01,
                    0,
                    0,
                ];
            }
            0x03 => {
                // READ FULL STATUS.
                d.extend_from_slice(&len32(48 * pr.regs.len()));
                for r in &pr.regs {
                    let holder = pr.is_holder(r.nexus);
                    d.extend_from_slice(&r.key.to_be_bytes());
                    d.extend_from_slice(&[0; 4]);
                    d.push(u8::from(r.all_tg_pt) << 1 | u8::from(holder));
                    d.push(match pr.reservation {
                        Some(res) if holder => res.kind.code(),
                        _ => 0,
                    });
                    d.extend_from_slice(&[0; 4]);
                    d.extend_from_slice(&port.to_be_bytes());
                    d.extend_from_slice(&len32(TRANSPORT_ID_LEN));
                    d.extend_from_slice(&transport_id(r.nexus));
                }
            }
            _ => return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(1, Some(4))),
        }
        d
    };
    Ok(reply(cmd, &data, alloc))
}

/// A 32-bit length field (clamped; the lengths here are bounded by [`MAX_REGISTRATIONS`]).
fn len32(n: usize) -> [u8; 4] {
    u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes()
}

/// PERSISTENT RESERVE OUT service actions.
mod sa {
    pub const REGISTER: u8 = 0;
    pub const RESERVE: u8 = 1;
    pub const RELEASE: u8 = 2;
    pub const CLEAR: u8 = 3;
    pub const PREEMPT: u8 = 4;
    pub const PREEMPT_AND_ABORT: u8 = 5;
    pub const REGISTER_AND_IGNORE: u8 = 6;
    pub const REGISTER_AND_MOVE: u8 = 7;
}

/// PERSISTENT RESERVE OUT. The state changes on a copy; the copy is persisted (APTPL) and
/// then installed with its unit attentions, so a failed write leaves everything as it was.
pub(crate) fn pr_out(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let action = byte(cmd.cdb, 1) & 0x1f;
    let scope = byte(cmd.cdb, 2) >> 4;
    let type_code = byte(cmd.cdb, 2) & 0x0f;
    let plen = usize::try_from(be32(cmd.cdb, 5)).unwrap_or(usize::MAX);
    let kind = match action {
        sa::RESERVE | sa::RELEASE | sa::PREEMPT | sa::PREEMPT_AND_ABORT => {
            if scope != 0 {
                return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(2, Some(7)));
            }
            Some(
                PrType::from_code(type_code)
                    .ok_or(Sense::INVALID_FIELD_IN_CDB.in_cdb(2, Some(3)))?,
            )
        }
        sa::REGISTER | sa::CLEAR | sa::REGISTER_AND_IGNORE | sa::REGISTER_AND_MOVE => None,
        _ => return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(1, Some(4))),
    };
    if plen < 24 {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    let p = cmd.data_out.get(..plen).ok_or(Sense::PARAM_LIST_LENGTH)?;
    let nexus = cmd.nexus;
    let opts = lun.options();
    let ptpl_c = opts.pr_file.is_some();
    let mut st = lun.state();
    if st.reservation.is_some() {
        return Err(Sense::RESERVATION_CONFLICT);
    }
    let mut next = st.pr.clone();
    let mut uas = Vec::new();
    if action == sa::REGISTER_AND_MOVE {
        register_and_move(&mut next, nexus, p, opts.port, ptpl_c)?;
    } else {
        let params = Params::parse(p)?;
        let kind = kind.unwrap_or(PrType::WriteExclusive);
        match action {
            sa::REGISTER | sa::REGISTER_AND_IGNORE => {
                if params.aptpl && !ptpl_c {
                    return Err(Sense::INVALID_FIELD_IN_PARAM.in_param(20, Some(0)));
                }
                next.register(nexus, &params, action == sa::REGISTER_AND_IGNORE, &mut uas)?
            }
            sa::RESERVE => next.reserve(nexus, params.key, kind)?,
            sa::RELEASE => next.release(nexus, params.key, kind, &mut uas)?,
            sa::CLEAR => next.clear(nexus, params.key, &mut uas)?,
            // PREEMPT AND ABORT: as PREEMPT; this layer has no task set to abort (the
            // transport aborts the preempted nexuses' tasks).
            _ => next.preempt(nexus, &params, kind, &mut uas)?,
        }
    }
    if next != st.pr {
        if let Some(path) = &opts.pr_file {
            let saved = if next.aptpl {
                file::store(path, &next)
            } else if st.pr.aptpl {
                file::remove(path)
            } else {
                Ok(())
            };
            saved.map_err(|_| Sense::INTERNAL_FAILURE)?;
        }
        st.pr = next;
        for (n, s) in uas {
            queue_ua(&mut st, n, s);
        }
    }
    Ok(0)
}

/// REGISTER AND MOVE (SPC-4 §5.14.9): the holder registers the nexus a TransportID names and
/// hands it the reservation, optionally unregistering itself.
fn register_and_move(
    pr: &mut PrState,
    nexus: u64,
    p: &[u8],
    port: u16,
    ptpl_c: bool,
) -> Result<(), Sense> {
    let bad = |byte: usize, bit: Option<u8>| {
        Sense::INVALID_FIELD_IN_PARAM.in_param(u16::try_from(byte).unwrap_or(u16::MAX), bit)
    };
    let tid_len = usize::try_from(be32(p, 20)).unwrap_or(usize::MAX);
    if 24usize.checked_add(tid_len).is_none_or(|end| end > p.len()) {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    pr.check_key(nexus, be64(p, 0))?;
    let res = match pr.reservation {
        Some(r) if !r.kind.all_registrants() && r.holder == nexus => r,
        _ => return Err(Sense::RESERVATION_CONFLICT),
    };
    let sa_key = be64(p, 8);
    if sa_key == 0 {
        return Err(bad(8, None));
    }
    if byte(p, 16) != 0 {
        return Err(bad(16, Some(high_bit(byte(p, 16)))));
    }
    let flags = byte(p, 17);
    if flags & 0xfc != 0 {
        return Err(bad(17, Some(high_bit(flags & 0xfc))));
    }
    let (unreg, aptpl) = (flags & 0x02 != 0, flags & 0x01 != 0);
    if aptpl && !ptpl_c {
        return Err(bad(17, Some(0)));
    }
    if u16::from_be_bytes([byte(p, 18), byte(p, 19)]) != port {
        return Err(bad(18, None));
    }
    if tid_len < TRANSPORT_ID_LEN {
        return Err(bad(20, None));
    }
    let tid = p.get(24..24 + tid_len).unwrap_or(&[]);
    let dest = nexus_of_transport_id(tid).map_err(|(b, bit)| bad(24 + b, bit))?;
    if dest == nexus {
        return Err(bad(24, None));
    }
    match pr.regs.iter_mut().find(|r| r.nexus == dest) {
        Some(r) => r.key = sa_key,
        None => {
            if pr.regs.len() >= MAX_REGISTRATIONS {
                return Err(Sense::INSUFFICIENT_REGISTRATION_RESOURCES);
            }
            pr.regs.push(Registration {
                nexus: dest,
                key: sa_key,
                all_tg_pt: false,
            });
        }
    }
    pr.reservation = Some(Reservation {
        kind: res.kind,
        holder: dest,
    });
    if unreg {
        pr.regs.retain(|r| r.nexus != nexus);
    }
    pr.aptpl = aptpl;
    pr.bump();
    Ok(())
}
