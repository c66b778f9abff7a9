//! A SCSI target: up to [`MAX_LUNS`] logical units behind one target port, with what SAM
//! gives the target rather than each unit: REPORT LUNS over every attached unit, the REPORT
//! LUNS well-known logical unit, answers for logical units that do not exist (INQUIRY with
//! peripheral qualifier 011b, LOGICAL UNIT NOT SUPPORTED otherwise) and REPORTED LUNS DATA HAS
//! CHANGED when units come and go.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::lun::{status, Command, LogicalUnit, Outcome};
use crate::sense::Sense;

/// Logical units per target: the 14-bit flat space addressing method.
pub const MAX_LUNS: u32 = 16384;

/// The REPORT LUNS well-known logical unit (SPC-5 §8.3), as its 16-bit LUN value
/// (well-known addressing method 11b, W-LUN 01h).
pub const REPORT_LUNS_WLUN: u16 = 0xc101;

/// Why a unit cannot be attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// The LUN is outside 0..[`MAX_LUNS`].
    #[error("LUN {0} is out of range (0..{MAX_LUNS})")]
    OutOfRange(u32),
    /// A unit is already attached at this LUN.
    #[error("LUN {0} is already attached")]
    Busy(u32),
}

/// A target holding logical units by LUN.
#[derive(Debug, Default)]
pub struct Target {
    luns: RwLock<BTreeMap<u16, Arc<LogicalUnit>>>,
}

const REPORT_LUNS: u8 = 0xa0;
const INQUIRY: u8 = 0x12;
const REQUEST_SENSE: u8 = 0x03;
const TEST_UNIT_READY: u8 = 0x00;

impl Target {
    /// An empty target.
    pub fn new() -> Target {
        Target::default()
    }

    fn map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u16, Arc<LogicalUnit>>> {
        self.luns.read().unwrap_or_else(|e| e.into_inner())
    }

    fn map_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u16, Arc<LogicalUnit>>> {
        self.luns.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches `unit` at `lun`; the other units report REPORTED LUNS DATA HAS CHANGED.
    pub fn attach(&self, lun: u32, unit: Arc<LogicalUnit>) -> Result<(), AttachError> {
        let l = u16::try_from(lun)
            .ok()
            .filter(|&l| u32::from(l) < MAX_LUNS)
            .ok_or(AttachError::OutOfRange(lun))?;
        let mut map = self.map_mut();
        if map.contains_key(&l) {
            return Err(AttachError::Busy(lun));
        }
        for other in map.values() {
            other.raise_unit_attention(Sense::REPORTED_LUNS_CHANGED);
        }
        map.insert(l, unit);
        Ok(())
    }

    /// Detaches the unit at `lun`; the remaining units report REPORTED LUNS DATA HAS CHANGED.
    pub fn detach(&self, lun: u32) -> Option<Arc<LogicalUnit>> {
        let l = u16::try_from(lun).ok()?;
        let mut map = self.map_mut();
        let unit = map.remove(&l)?;
        for other in map.values() {
            other.raise_unit_attention(Sense::REPORTED_LUNS_CHANGED);
        }
        Some(unit)
    }

    /// The unit at `lun`.
    pub fn get(&self, lun: u32) -> Option<Arc<LogicalUnit>> {
        let l = u16::try_from(lun).ok()?;
        self.map().get(&l).cloned()
    }

    /// The attached LUNs, ascending.
    pub fn luns(&self) -> Vec<u16> {
        self.map().keys().copied().collect()
    }

    /// Whether no unit is attached.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    /// Executes `cmd` addressed to `lun` (a LUN in 0..[`MAX_LUNS`] or
    /// [`REPORT_LUNS_WLUN`]).
    pub fn execute(&self, lun: u16, cmd: &mut Command<'_>) -> Outcome {
        let unit = self.map().get(&lun).cloned();
        self.execute_on(lun, unit.as_ref(), cmd)
    }

    /// Like [`Target::execute`] with the unit at `lun` already looked up (a transport that
    /// caches lookups; `None`: no unit there).
    pub fn execute_on(
        &self,
        lun: u16,
        unit: Option<&Arc<LogicalUnit>>,
        cmd: &mut Command<'_>,
    ) -> Outcome {
        let opcode = cmd.cdb.first().copied();
        match (unit, opcode) {
            // REPORT LUNS is the target's: the same answer through every LUN. The unit still
            // gets the command first so its unit attentions and CDB checks apply.
            (Some(u), Some(REPORT_LUNS)) => {
                let out = u.execute(cmd);
                if out.status != status::GOOD {
                    return out;
                }
                match self.report_luns(cmd) {
                    Ok(n) => Outcome {
                        data_in_len: n.min(cmd.data_in.len()),
                        ..out
                    },
                    Err(s) => u.check_condition(cmd.nexus, s),
                }
            }
            (Some(u), _) => u.execute(cmd),
            (None, op) => self.no_unit(lun, op, cmd),
        }
    }

    /// A command to a LUN with no unit: the REPORT LUNS well-known unit, or a LUN that is not
    /// there.
    fn no_unit(&self, lun: u16, opcode: Option<u8>, cmd: &mut Command<'_>) -> Outcome {
        let wlun = lun == REPORT_LUNS_WLUN;
        let result = match opcode {
            Some(REPORT_LUNS) => self.report_luns(cmd),
            Some(INQUIRY) => inquiry_absent(cmd, wlun),
            Some(REQUEST_SENSE) if !wlun => {
                // SPC-5 §5.12.2: sense data reporting LOGICAL UNIT NOT SUPPORTED, as data.
                let d = Sense::LUN_NOT_SUPPORTED.fixed();
                let alloc = usize::from(cmd.cdb.get(4).copied().unwrap_or(0));
                Ok(copy_out(cmd, &d, alloc))
            }
            Some(REQUEST_SENSE) | Some(TEST_UNIT_READY) if wlun => {
                let alloc = usize::from(cmd.cdb.get(4).copied().unwrap_or(0));
                if opcode == Some(REQUEST_SENSE) {
                    Ok(copy_out(cmd, &Sense::NO_SENSE.fixed(), alloc))
                } else {
                    Ok(0)
                }
            }
            _ if wlun => Err(Sense::INVALID_OPCODE),
            _ => Err(Sense::LUN_NOT_SUPPORTED),
        };
        match result {
            Ok(n) => Outcome {
                status: status::GOOD,
                sense: Vec::new(),
                data_in_len: n.min(cmd.data_in.len()),
            },
            Err(s) => Outcome {
                status: status::CHECK_CONDITION,
                sense: s.fixed(),
                data_in_len: 0,
            },
        }
    }

    /// REPORT LUNS (SPC-5 §6.29) over every attached unit; SELECT REPORT 00h (logical units),
    /// 01h (well-known: REPORT LUNS), 02h (both), 10h-12h (no administrative or subsidiary
    /// units here: empty lists).
    fn report_luns(&self, cmd: &mut Command<'_>) -> Result<usize, Sense> {
        let cdb = cmd.cdb;
        let select = cdb.get(2).copied().unwrap_or(0);
        let alloc = cdb
            .get(6..10)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
        if alloc < 16 {
            return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(6, None));
        }
        let (units, wellknown) = match select {
            0x00 => (true, false),
            0x01 => (false, true),
            0x02 => (true, true),
            0x10..=0x12 => (false, false),
            _ => return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(2, None)),
        };
        let mut list: Vec<u16> = if units { self.luns() } else { Vec::new() };
        if wellknown {
            list.push(REPORT_LUNS_WLUN);
        }
        let mut d = Vec::with_capacity(8 + 8 * list.len());
        d.extend_from_slice(&((8 * list.len()) as u32).to_be_bytes());
        d.extend_from_slice(&[0; 4]);
        for l in list {
            d.extend_from_slice(&encode_lun(l));
        }
        Ok(copy_out(cmd, &d, alloc))
    }
}

/// A LUN in the first level of the SAM LUN structure: peripheral device addressing below 256,
/// flat space addressing above, well-known addressing for W-LUNs.
pub fn encode_lun(lun: u16) -> [u8; 8] {
    let [hi, lo] = lun.to_be_bytes();
    let first = if !(256..0xc000).contains(&lun) {
        hi
    } else {
        0x40 | hi
    };
    [first, lo, 0, 0, 0, 0, 0, 0]
}

/// INQUIRY to a LUN with no unit: peripheral qualifier 011b / type 1Fh (SPC-5 §6.6.2), or the
/// well-known unit (type 1Eh). VPD pages are not available for either.
fn inquiry_absent(cmd: &mut Command<'_>, wlun: bool) -> Result<usize, Sense> {
    let cdb = cmd.cdb;
    // VPD to the well-known unit is refused; to a missing unit it gets the same qualifier and
    // a page length of 0 (below).
    if wlun && cdb.get(1).is_some_and(|b| b & 1 != 0) {
        return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(1, Some(0)));
    }
    let alloc = cdb
        .get(3..5)
        .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    let mut d = [0u8; 36];
    d[0] = if wlun { 0x1e } else { 0x7f };
    d[2] = 0x07;
    d[3] = 0x02;
    d[4] = 31;
    d[8..16].copy_from_slice(b"VSTOR   ");
    d[16..32].copy_from_slice(if wlun {
        b"REPORT LUNS WLUN"
    } else {
        b"NO LOGICAL UNIT "
    });
    d[32..36].copy_from_slice(b"0001");
    if cdb.get(1).is_some_and(|b| b & 1 != 0) {
        let vpd = [0x7f, cdb.get(2).copied().unwrap_or(0), 0, 0];
        return Ok(copy_out(cmd, &vpd, alloc));
    }
    Ok(copy_out(cmd, &d, alloc))
}

fn copy_out(cmd: &mut Command<'_>, data: &[u8], alloc: usize) -> usize {
    let n = data.len().min(alloc).min(cmd.data_in.len());
    cmd.data_in[..n].copy_from_slice(&data[..n]);
    n
}

impl LogicalUnit {
    /// LOGICAL UNIT RESET (SAM-5 §7.7) as far as the unit's state goes: the RESERVE(6)/(10)
    /// reservation is released, mode parameters return to their defaults, and every nexus gets
    /// BUS DEVICE RESET FUNCTION OCCURRED. Aborting the unit's commands is the transport's
    /// part.
    pub fn reset(&self) {
        let wce = self.medium().is_some_and(|d| d.info().write_cache);
        {
            let mut st = self.state();
            st.reservation = None;
            st.wce = wce;
            st.d_sense = false;
            st.prevent = false;
        }
        self.refresh_reserved();
        self.raise_unit_attention(Sense::BUS_DEVICE_RESET);
    }

    /// I_T NEXUS RESET (SAM-5 §7.8) for `nexus`: its RESERVE(6)/(10) reservation is
    /// released and it gets I_T NEXUS LOSS OCCURRED.
    pub fn nexus_reset(&self, nexus: u64) {
        {
            let mut st = self.state();
            if st.reservation == Some(nexus) {
                st.reservation = None;
            }
            if st.seen.contains(&nexus) {
                st.push_ua(nexus, Sense::NEXUS_LOSS, false);
            }
        }
        self.refresh_reserved();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luns_encode_as_linux_decodes_them() {
        assert_eq!(encode_lun(5), [0, 5, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(300), [0x41, 0x2c, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(16383), [0x7f, 0xff, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(REPORT_LUNS_WLUN), [0xc1, 0x01, 0, 0, 0, 0, 0, 0]);
    }
}
