//! SPC commands (SPC-5): TEST UNIT READY, REQUEST SENSE, INQUIRY with its VPD pages, REPORT
//! LUNS, the MAINTENANCE IN reports (supported operation codes, supported task management
//! functions, target port groups), MODE SENSE / MODE SELECT and RESERVE / RELEASE.
//!
//! Every handler fills `data_in` with at most the allocation length of its CDB (and at most the
//! transport's buffer) and returns how many bytes it filled.

use crate::lun::{Command, LogicalUnit};
use crate::sbc;
use crate::sense::{key, Sense};
use crate::table::{self, OpInfo};

/// LOGICAL UNIT NOT READY, INITIALIZING COMMAND REQUIRED (a stopped unit).
pub const NOT_READY_INIT_REQUIRED: Sense = Sense {
    key: key::NOT_READY,
    asc: 0x04,
    ascq: 0x02,
    field: None,
    information: None,
};

/// NO SENSE (REQUEST SENSE with nothing to report).
const NO_SENSE: Sense = Sense {
    key: key::NO_SENSE,
    asc: 0,
    ascq: 0,
    field: None,
    information: None,
};

/// The target port group of every port (VPD 0x83 and REPORT TARGET PORT GROUPS).
pub const TARGET_PORT_GROUP: u16 = 1;

/// IEEE company identifier used in an NAA 6 designator derived from the serial number (no
/// registered OUI: zero).
const DERIVED_OUI: u64 = 0;

/// MAINTENANCE IN operation code.
const MAINTENANCE_IN: u8 = 0xa3;

/// SPC commands.
pub static OPS: &[OpInfo] = &[
    OpInfo {
        opcode: 0x00,
        service_action: None,
        name: "TEST UNIT READY",
        usage: &[0x00, 0, 0, 0, 0, 0],
        writes: false,
        handler: test_unit_ready,
    },
    OpInfo {
        opcode: 0x03,
        service_action: None,
        name: "REQUEST SENSE",
        usage: &[0x03, 0x01, 0, 0, 0xff, 0],
        writes: false,
        handler: request_sense,
    },
    OpInfo {
        opcode: 0x12,
        service_action: None,
        name: "INQUIRY",
        usage: &[0x12, 0x01, 0xff, 0xff, 0xff, 0],
        writes: false,
        handler: inquiry,
    },
    OpInfo {
        opcode: 0x15,
        service_action: None,
        name: "MODE SELECT(6)",
        usage: &[0x15, 0x11, 0, 0, 0xff, 0],
        writes: false,
        handler: mode_select,
    },
    OpInfo {
        opcode: 0x16,
        service_action: None,
        name: "RESERVE(6)",
        usage: &[0x16, 0, 0, 0, 0, 0],
        writes: false,
        handler: reserve,
    },
    OpInfo {
        opcode: 0x17,
        service_action: None,
        name: "RELEASE(6)",
        usage: &[0x17, 0, 0, 0, 0, 0],
        writes: false,
        handler: release,
    },
    OpInfo {
        opcode: 0x1a,
        service_action: None,
        name: "MODE SENSE(6)",
        usage: &[0x1a, 0x08, 0xff, 0xff, 0xff, 0],
        writes: false,
        handler: mode_sense,
    },
    OpInfo {
        opcode: 0x55,
        service_action: None,
        name: "MODE SELECT(10)",
        usage: &[0x55, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0],
        writes: false,
        handler: mode_select,
    },
    OpInfo {
        opcode: 0x56,
        service_action: None,
        name: "RESERVE(10)",
        usage: &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        writes: false,
        handler: reserve,
    },
    OpInfo {
        opcode: 0x57,
        service_action: None,
        name: "RELEASE(10)",
        usage: &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        writes: false,
        handler: release,
    },
    OpInfo {
        opcode: 0x5a,
        service_action: None,
        name: "MODE SENSE(10)",
        usage: &[0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0],
        writes: false,
        handler: mode_sense,
    },
    OpInfo {
        opcode: 0x5e,
        service_action: Some(0x00),
        name: "PERSISTENT RESERVE IN (READ KEYS)",
        usage: crate::pr::PR_IN_USAGE,
        writes: false,
        handler: crate::pr::pr_in,
    },
    OpInfo {
        opcode: 0x5e,
        service_action: Some(0x01),
        name: "PERSISTENT RESERVE IN (READ RESERVATION)",
        usage: crate::pr::PR_IN_USAGE,
        writes: false,
        handler: crate::pr::pr_in,
    },
    OpInfo {
        opcode: 0x5e,
        service_action: Some(0x02),
        name: "PERSISTENT RESERVE IN (REPORT CAPABILITIES)",
        usage: crate::pr::PR_IN_USAGE,
        writes: false,
        handler: crate::pr::pr_in,
    },
    OpInfo {
        opcode: 0x5e,
        service_action: Some(0x03),
        name: "PERSISTENT RESERVE IN (READ FULL STATUS)",
        usage: crate::pr::PR_IN_USAGE,
        writes: false,
        handler: crate::pr::pr_in,
    },
    OpInfo {
        opcode: 0x5f,
        service_action: Some(0x00),
        name: "PERSISTENT RESERVE OUT (REGISTER)",
        usage: crate::pr::PR_OUT_USAGE,
        writes: false,
        handler: crate::pr::pr_out,
    },
    OpInfo {
        opcode: 0x5f,
        service_action: Some(0x01),
        name: "PERSISTENT RESERVE OUT (RESERVE)",
        usage: crate::pr::PR_OUT_USAGE,
        writes: false,
        handler: crate::pr::pr_out,
    },
    OpInfo {
        opcode: 0x5f,
        service_action: Some(0x02),
        name: "PERSISTENT RESERVE OUT (RELEASE)",
        usage: crate::pr::PR_OUT_USAGE,
        writes: false,
        handler: crate::pr::pr_out,
    },
    OpInfo {
        opcode: 0x5f,
        service_action: Some(0x03),
        name: "PERSISTENT RESERVE OUT (CLEAR)",
        usage: crate::pr::PR_OUT_USAGE,
        writes: false,
        handler: crate::pr::pr_out,
    },
    OpInfo {
        opcode: 0x5f,
        service_action: Some(0x04),
        name: "PERSISTENT RESERVE OUT (PREEMPT)",
        usage: crate::pr::PR_OUT_USAGE,
        writes: false,
        handler: crate::pr::pr_out,
    },
    OpInfo {
        opcode: 0x5f,
        service_action: Some(0x05),
        name: "PERSISTENT RESERVE OUT (PREEMPT AND ABORT)",
        usage: crate::pr::PR_OUT_USAGE,
        writes: false,
        handler: crate::pr::pr_out,
    },
    OpInfo {
        opcode: 0x5f,
        service_action: Some(0x06),
        name: "PERSISTENT RESERVE OUT (REGISTER AND IGNORE EXISTING KEY)",
        usage: crate::pr::PR_OUT_USAGE,
        writes: false,
        handler: crate::pr::pr_out,
    },
    OpInfo {
        opcode: 0x5f,
        service_action: Some(0x07),
        name: "PERSISTENT RESERVE OUT (REGISTER AND MOVE)",
        usage: crate::pr::PR_OUT_USAGE,
        writes: false,
        handler: crate::pr::pr_out,
    },
    OpInfo {
        opcode: 0xa0,
        service_action: None,
        name: "REPORT LUNS",
        usage: &[0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],
        writes: false,
        handler: report_luns,
    },
    OpInfo {
        opcode: MAINTENANCE_IN,
        service_action: Some(0x0a),
        name: "REPORT TARGET PORT GROUPS",
        usage: &[0xa3, 0xea, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],
        writes: false,
        handler: report_target_port_groups,
    },
    OpInfo {
        opcode: MAINTENANCE_IN,
        service_action: Some(0x0c),
        name: "REPORT SUPPORTED OPERATION CODES",
        usage: &[
            0xa3, 0x0c, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
        writes: false,
        handler: report_supported_opcodes,
    },
    OpInfo {
        opcode: MAINTENANCE_IN,
        service_action: Some(0x0d),
        name: "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS",
        usage: &[0xa3, 0x0d, 0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],
        writes: false,
        handler: report_supported_tmfs,
    },
];

/// Big-endian 16-bit field at `i` (the caller checked the CDB length against the usage data).
fn be16(b: &[u8], i: usize) -> usize {
    match b.get(i..i + 2) {
        Some(s) => usize::from(u16::from_be_bytes([s[0], s[1]])),
        None => 0,
    }
}

/// Big-endian 32-bit field at `i`.
fn be32(b: &[u8], i: usize) -> usize {
    match b.get(i..i + 4) {
        Some(s) => u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize,
        None => 0,
    }
}

/// Byte `i` of `b`, 0 past the end.
fn byte(b: &[u8], i: usize) -> u8 {
    b.get(i).copied().unwrap_or(0)
}

/// Copies `data` into the data-in buffer, truncated to the allocation length and the buffer.
fn reply(cmd: &mut Command<'_>, data: &[u8], alloc: usize) -> usize {
    let n = data.len().min(alloc).min(cmd.data_in.len());
    cmd.data_in[..n].copy_from_slice(&data[..n]);
    n
}

/// `s` space padded (or truncated) to `n` bytes of printable ASCII.
fn ascii(s: &str, n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s
        .bytes()
        .map(|b| if (0x20..0x7f).contains(&b) { b } else { b' ' })
        .take(n)
        .collect();
    v.resize(n, b' ');
    v
}

fn test_unit_ready(lun: &LogicalUnit, _cmd: &mut Command<'_>) -> Result<usize, Sense> {
    if lun.hot().stopped.load(std::sync::atomic::Ordering::Acquire) {
        return Err(NOT_READY_INIT_REQUIRED);
    }
    Ok(0)
}

/// REQUEST SENSE: a pending unit attention of the nexus (cleared), else the last sense of the
/// nexus (cleared), else NO SENSE; DESC selects descriptor format.
fn request_sense(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let desc = byte(cmd.cdb, 1) & 1 != 0;
    let alloc = usize::from(byte(cmd.cdb, 4));
    let s = {
        let mut st = lun.state();
        let ua = st.ua.get_mut(&cmd.nexus).and_then(|q| q.pop_front());
        let last = st.last_sense.remove(&cmd.nexus);
        ua.or(last).unwrap_or(NO_SENSE)
    };
    let data = if desc { s.descriptor() } else { s.fixed() };
    Ok(reply(cmd, &data, alloc))
}

/// VPD pages this unit implements, in ascending order.
const VPD_PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2];

fn inquiry(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let evpd = byte(cmd.cdb, 1) & 1 != 0;
    let page = byte(cmd.cdb, 2);
    let alloc = be16(cmd.cdb, 3);
    let data = if evpd {
        vpd_page(lun, page).ok_or(Sense::INVALID_FIELD_IN_CDB.in_cdb(2, None))?
    } else if page != 0 {
        return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(2, None));
    } else {
        standard_inquiry(lun)
    };
    Ok(reply(cmd, &data, alloc))
}

/// Standard INQUIRY data (96 bytes).
fn standard_inquiry(lun: &LogicalUnit) -> Vec<u8> {
    let o = lun.options();
    let mut d = vec![0u8; 96];
    d[0] = 0x00; // connected, direct access block device
    d[2] = 0x07; // SPC-5
    d[3] = 0x12; // HISUP, response data format 2
    d[4] = (d.len() - 5) as u8;
    d[5] = 0x10; // TPGS 01b: implicit asymmetric access
    d[7] = 0x02; // CMDQUE
    d[8..16].copy_from_slice(&ascii(&o.vendor, 8));
    d[16..32].copy_from_slice(&ascii(&o.product, 16));
    d[32..36].copy_from_slice(&ascii(&o.revision, 4));
    // Version descriptors: SAM-5, SPC-5, SBC-4 (no version claimed).
    for (i, v) in [0x00a0u16, 0x05c0, 0x0600].iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    if crate::mmc::is_cdrom(lun) {
        d[0] = 0x05; // CD/DVD device
        d[1] = 0x80; // RMB
        d[5] = 0; // no ALUA
        d[62..64].copy_from_slice(&0x04e0u16.to_be_bytes()); // MMC-6 instead of SBC-4
    }
    d
}

/// A VPD page with its 4-byte header (16-bit page length).
fn vpd(page: u8, body: &[u8]) -> Vec<u8> {
    let mut d = vec![0, page];
    d.extend_from_slice(&(body.len() as u16).to_be_bytes());
    d.extend_from_slice(body);
    d
}

/// FNV-1a, to derive a stable identifier from the serial number.
fn fnv1a(s: &[u8]) -> u64 {
    s.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The NAA identifier of the logical unit for VPD page 0x83: a configured WWN exactly as
/// given (8 bytes, as QEMU's `wwn=` reports it: its top nibble is the NAA type, 5 for IEEE
/// registered), else a 16-byte NAA 6 (IEEE registered extended) derived from the serial.
pub fn naa_id(lun: &LogicalUnit) -> Vec<u8> {
    let o = lun.options();
    if o.wwn != 0 {
        return o.wwn.to_be_bytes().to_vec();
    }
    let h = fnv1a(o.serial.as_bytes());
    let hi = (6 << 60) | (DERIVED_OUI << 36) | (h >> 28);
    let lo = h.rotate_left(32) ^ fnv1a(o.vendor.as_bytes());
    let mut id = Vec::with_capacity(16);
    id.extend_from_slice(&hi.to_be_bytes());
    id.extend_from_slice(&lo.to_be_bytes());
    id
}

/// One designation descriptor of VPD page 0x83.
fn designator(d: &mut Vec<u8>, code_set: u8, assoc_type: u8, id: &[u8]) {
    d.extend_from_slice(&[code_set, assoc_type, 0, id.len() as u8]);
    d.extend_from_slice(id);
}

/// Clamps a block count into a 32-bit VPD field.
fn clamp32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// VPD pages of a CD/DVD-ROM unit (no block device pages).
const CD_VPD_PAGES: [u8; 3] = [0x00, 0x80, 0x83];

fn vpd_page(lun: &LogicalUnit, page: u8) -> Option<Vec<u8>> {
    let cdrom = crate::mmc::is_cdrom(lun);
    let pages: &[u8] = if cdrom { &CD_VPD_PAGES } else { &VPD_PAGES };
    if !pages.contains(&page) {
        return None;
    }
    // Only the block device pages need the medium.
    let dev = lun.dev();
    let info = dev.as_ref().ok().map(|d| d.info());
    let o = lun.options();
    let bs = lun.block_size().max(1);
    let mut d = match page {
        0x00 => vpd(0x00, pages),
        0x80 => vpd(0x80, &ascii(&o.serial, o.serial.len().min(252))),
        0x83 => {
            let mut d = Vec::new();
            // NAA, binary, logical unit.
            designator(&mut d, 0x01, 0x03, &naa_id(lun));
            // T10 vendor ID, ASCII, logical unit: vendor then serial.
            let mut t10 = ascii(&o.vendor, 8);
            t10.extend(ascii(&o.serial, o.serial.len().min(200)));
            designator(&mut d, 0x02, 0x01, &t10);
            // Relative target port, target port association.
            let [ph, pl] = o.port.to_be_bytes();
            designator(&mut d, 0x01, 0x14, &[0, 0, ph, pl]);
            // Target port group, target port association (ALUA: not on a CD/DVD-ROM unit).
            if !cdrom {
                let [gh, gl] = TARGET_PORT_GROUP.to_be_bytes();
                designator(&mut d, 0x01, 0x15, &[0, 0, gh, gl]);
            }
            vpd(0x83, &d)
        }
        0xb0 => {
            let info = info?;
            // Limits as the SBC handlers enforce them.
            let mut d = [0u8; 0x3c];
            // WSNZ: WRITE SAME with 0 blocks (the whole medium) is refused.
            d[0] |= 1;
            if table::opcode_known(lun.options().kind, 0x89) {
                d[1] = sbc::MAX_COMPARE_AND_WRITE_BLOCKS;
            }
            let gran = (u64::from(info.physical_block_size) / bs).max(1);
            d[2..4].copy_from_slice(&(gran.min(0xffff) as u16).to_be_bytes());
            if info.discard {
                d[16..20].copy_from_slice(&sbc::MAX_UNMAP_LBA_COUNT.to_be_bytes());
                d[20..24].copy_from_slice(&sbc::MAX_UNMAP_DESCRIPTORS.to_be_bytes());
                d[24..28].copy_from_slice(&clamp32(gran).to_be_bytes()); // optimal granularity
            }
            d[32..40].copy_from_slice(&sbc::MAX_WRITE_SAME_BLOCKS.to_be_bytes());
            vpd(0xb0, &d)
        }
        0xb1 => {
            let mut d = [0u8; 0x3c];
            d[1] = 1; // medium rotation rate: non-rotating
            vpd(0xb1, &d)
        }
        0xb2 => {
            let info = info?;
            let mut b = 0u8;
            if info.discard {
                b |= 0xe0; // LBPU, LBPWS, LBPWS10
                if info.discard_zeroes {
                    b |= 0x04; // LBPRZ 001b
                }
            }
            let provisioning = if info.discard { 0x02 } else { 0x00 }; // thin
            vpd(0xb2, &[0, b, provisioning, 0])
        }
        _ => return None,
    };
    if cdrom {
        d[0] = 0x05; // peripheral device type: CD/DVD device
    }
    Some(d)
}

/// REPORT LUNS for the single logical unit 0 (no well-known or administrative units).
fn report_luns(_lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let select = byte(cmd.cdb, 2);
    let alloc = be32(cmd.cdb, 6);
    if alloc < 16 {
        return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(6, None));
    }
    let luns: &[u64] = match select {
        0x00 | 0x02 => &[0],
        0x01 => &[],
        _ => return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(2, None)),
    };
    let mut d = Vec::with_capacity(8 + 8 * luns.len());
    d.extend_from_slice(&((8 * luns.len()) as u32).to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    for l in luns {
        d.extend_from_slice(&l.to_be_bytes());
    }
    Ok(reply(cmd, &d, alloc))
}

/// REPORT TARGET PORT GROUPS: one group, active/optimized, implicit ALUA, one port.
fn report_target_port_groups(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let format = byte(cmd.cdb, 1) >> 5;
    let alloc = be32(cmd.cdb, 6);
    let mut d = Vec::new();
    d.extend_from_slice(&[0; 4]);
    match format {
        0 => {}
        1 => d.extend_from_slice(&[0x10, 0, 0, 0]), // extended header, no transition time
        _ => return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(1, Some(7))),
    }
    let [gh, gl] = TARGET_PORT_GROUP.to_be_bytes();
    // PREF 1, active/optimized; AO_SUP; group; status 0; one port.
    d.extend_from_slice(&[0x80, 0x01, gh, gl, 0, 0, 0, 1]);
    let [ph, pl] = lun.options().port.to_be_bytes();
    d.extend_from_slice(&[0, 0, ph, pl]);
    let len = (d.len() - 4) as u32;
    d[..4].copy_from_slice(&len.to_be_bytes());
    Ok(reply(cmd, &d, alloc))
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS: ABORT TASK, ABORT TASK SET, CLEAR TASK SET,
/// LOGICAL UNIT RESET, QUERY TASK, QUERY TASK SET, I_T NEXUS RESET.
fn report_supported_tmfs(_lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let repd = byte(cmd.cdb, 2) & 0x80 != 0;
    let alloc = be32(cmd.cdb, 6);
    let mut d = vec![0xdc, 0x03, 0, 0];
    if repd {
        d.resize(16, 0);
        d[3] = 0x0c;
    }
    Ok(reply(cmd, &d, alloc))
}

/// Command timeouts descriptor (nominal and recommended timeouts not specified).
const TIMEOUTS: [u8; 12] = [0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// REPORT SUPPORTED OPERATION CODES, from the opcode table.
fn report_supported_opcodes(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let ops = || table::for_kind(lun.options().kind);
    let rctd = byte(cmd.cdb, 2) & 0x80 != 0;
    let options = byte(cmd.cdb, 2) & 0x07;
    let req_op = byte(cmd.cdb, 3);
    let req_sa = be16(cmd.cdb, 4);
    let alloc = be32(cmd.cdb, 6);
    let has_sa = ops().any(|o| o.opcode == req_op && o.service_action.is_some());
    let found = match options {
        0 => {
            let mut d = vec![0u8; 4];
            for o in ops() {
                d.push(o.opcode);
                d.push(0);
                d.extend_from_slice(&u16::from(o.service_action.unwrap_or(0)).to_be_bytes());
                d.push(0);
                d.push(u8::from(rctd) << 1 | u8::from(o.service_action.is_some()));
                d.extend_from_slice(&(o.usage.len() as u16).to_be_bytes());
                if rctd {
                    d.extend_from_slice(&TIMEOUTS);
                }
            }
            let len = (d.len() - 4) as u32;
            d[..4].copy_from_slice(&len.to_be_bytes());
            return Ok(reply(cmd, &d, alloc));
        }
        1 if has_sa => return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(3, None)),
        2 if !has_sa => return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(3, None)),
        1 => ops().find(|o| o.opcode == req_op),
        2 | 3 if has_sa => {
            ops().find(|o| o.opcode == req_op && o.service_action.map(usize::from) == Some(req_sa))
        }
        3 => ops().find(|o| o.opcode == req_op),
        _ => return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(2, Some(2))),
    };
    let d = match found {
        None => vec![0, 0x01, 0, 0], // not supported
        Some(o) => {
            let mut d = vec![0, u8::from(rctd) << 7 | 0x03];
            d.extend_from_slice(&(o.usage.len() as u16).to_be_bytes());
            d.extend_from_slice(o.usage);
            d[4] = o.opcode;
            if rctd {
                d.extend_from_slice(&TIMEOUTS);
            }
            d
        }
    };
    Ok(reply(cmd, &d, alloc))
}

// ---- Mode pages ----

/// Mode pages this unit implements, in ascending order.
const MODE_PAGES: [u8; 5] = [0x01, 0x04, 0x08, 0x0a, 0x1a];

/// Mode pages of a CD/DVD-ROM unit: read error recovery, control, power condition, CD
/// capabilities and mechanical status.
const CD_MODE_PAGES: [u8; 4] = [0x01, 0x0a, 0x1a, 0x2a];

/// The mode pages of the unit's kind.
fn mode_pages(lun: &LogicalUnit) -> &'static [u8] {
    if crate::mmc::is_cdrom(lun) {
        &CD_MODE_PAGES
    } else {
        &MODE_PAGES
    }
}

/// Which values MODE SENSE reports (the PC field).
#[derive(Clone, Copy, PartialEq, Eq)]
enum PageControl {
    Current,
    Changeable,
    Default,
}

/// The values of the changeable parameters.
#[derive(Clone, Copy, PartialEq, Eq)]
struct ModeValues {
    wce: bool,
    d_sense: bool,
}

/// One mode page (subpage 0) with its header, or `None` if the unit does not implement it.
fn mode_page(lun: &LogicalUnit, page: u8, pc: PageControl, v: ModeValues) -> Option<Vec<u8>> {
    if !mode_pages(lun).contains(&page) {
        return None;
    }
    let len = match page {
        0x01 => 0x0a,
        0x04 => 0x16,
        0x08 => 0x12,
        0x0a => 0x0a,
        0x1a => 0x26,
        0x2a => 0x14,
        _ => return None,
    };
    let mut p = vec![0u8; len + 2];
    p[0] = page;
    p[1] = len as u8;
    match (page, pc) {
        (0x08, PageControl::Changeable) => p[2] = 0x04,
        (0x0a, PageControl::Changeable) => p[2] = 0x04,
        (_, PageControl::Changeable) => {}
        (0x01, _) => p[2] = 0x80, // AWRE
        (0x04, _) => {
            let cyl = (lun.blocks() / (16 * 63)).min(0xff_ffff) as u32;
            p[2..5].copy_from_slice(&cyl.to_be_bytes()[1..]);
            p[5] = 16; // heads
            p[20..22].copy_from_slice(&1u16.to_be_bytes()); // non-rotating
        }
        (0x08, _) => p[2] = if v.wce { 0x04 } else { 0 },
        (0x2a, _) => p.copy_from_slice(&crate::mmc::capabilities_page(lun)),
        (0x0a, _) => {
            p[2] = if v.d_sense { 0x04 } else { 0 };
            p[3] = 0x10; // QUEUE ALGORITHM MODIFIER: unrestricted reordering
        }
        _ => {}
    }
    Some(p)
}

fn mode_sense(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let ten = byte(cmd.cdb, 0) == 0x5a;
    let dbd = byte(cmd.cdb, 1) & 0x08 != 0;
    let llbaa = ten && byte(cmd.cdb, 1) & 0x10 != 0;
    let pc = match byte(cmd.cdb, 2) >> 6 {
        0 => PageControl::Current,
        1 => PageControl::Changeable,
        2 => PageControl::Default,
        _ => return Err(Sense::SAVING_NOT_SUPPORTED),
    };
    let page = byte(cmd.cdb, 2) & 0x3f;
    let subpage = byte(cmd.cdb, 3);
    let alloc = if ten {
        be16(cmd.cdb, 7)
    } else {
        usize::from(byte(cmd.cdb, 4))
    };
    let v = match pc {
        PageControl::Default => ModeValues {
            wce: !crate::mmc::is_cdrom(lun) && lun.dev()?.info().write_cache,
            d_sense: false,
        },
        _ => {
            let st = lun.state();
            ModeValues {
                wce: st.wce,
                d_sense: st.d_sense,
            }
        }
    };
    if subpage != 0 && subpage != 0xff {
        return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(3, None));
    }
    let mut pages = Vec::new();
    if page == 0x3f {
        for &p in mode_pages(lun) {
            pages.extend(mode_page(lun, p, pc, v).unwrap_or_default());
        }
    } else {
        pages =
            mode_page(lun, page, pc, v).ok_or(Sense::INVALID_FIELD_IN_CDB.in_cdb(2, Some(5)))?;
    }
    let dev_specific = if crate::mmc::is_cdrom(lun) {
        0 // MMC: reserved
    } else {
        let read_only = lun.options().read_only || lun.dev()?.info().read_only;
        (if read_only { 0x80 } else { 0 }) | 0x10 // WP, DPOFUA
    };
    let mut bd = Vec::new();
    if !dbd {
        let (blocks, bs) = if pc == PageControl::Changeable {
            (0, 0)
        } else {
            (lun.blocks(), lun.block_size() as u32)
        };
        if llbaa {
            bd.extend_from_slice(&blocks.to_be_bytes());
            bd.extend_from_slice(&[0; 4]);
            bd.extend_from_slice(&bs.to_be_bytes());
        } else {
            bd.extend_from_slice(&clamp32(blocks).to_be_bytes());
            bd.extend_from_slice(&bs.to_be_bytes());
            bd[4] = 0;
        }
    }
    let mut d = if ten {
        let mut h = vec![0u8; 8];
        h[3] = dev_specific;
        h[4] = u8::from(llbaa && !dbd);
        h[6..8].copy_from_slice(&(bd.len() as u16).to_be_bytes());
        h
    } else {
        vec![0, 0, dev_specific, bd.len() as u8]
    };
    d.extend_from_slice(&bd);
    d.extend_from_slice(&pages);
    if ten {
        let n = (d.len() - 2) as u16;
        d[..2].copy_from_slice(&n.to_be_bytes());
    } else {
        d[0] = (d.len() - 1) as u8;
    }
    Ok(reply(cmd, &d, alloc))
}

fn mode_select(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let ten = byte(cmd.cdb, 0) == 0x55;
    let b1 = byte(cmd.cdb, 1);
    if b1 & 0x10 == 0 {
        return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(1, Some(4)));
    }
    if b1 & 0x01 != 0 {
        return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(1, Some(0)));
    }
    let plen = if ten {
        be16(cmd.cdb, 7)
    } else {
        usize::from(byte(cmd.cdb, 4))
    };
    if plen == 0 {
        return Ok(0);
    }
    let Some(p) = cmd.data_out.get(..plen) else {
        return Err(Sense::PARAM_LIST_LENGTH);
    };
    let hdr = if ten { 8 } else { 4 };
    if p.len() < hdr {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    let bad = |i: usize, bit: Option<u8>| Sense::INVALID_FIELD_IN_PARAM.in_param(i as u16, bit);
    let (medium, bd_len, longlba) = if ten {
        (1, be16(p, 6), p[4] & 1 != 0)
    } else {
        (1, usize::from(p[3]), false)
    };
    if p[medium] != 0 {
        return Err(bad(medium, None));
    }
    let bd_len_at = if ten { 6 } else { 3 };
    let desc_len = if longlba { 16 } else { 8 };
    if bd_len != 0 && bd_len != desc_len {
        return Err(bad(bd_len_at, None));
    }
    if p.len() < hdr + bd_len {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    if bd_len != 0 {
        let b = &p[hdr..hdr + bd_len];
        let (blocks, current, bs_at) = if longlba {
            (
                be32(b, 0) as u64 * (1 << 32) + be32(b, 4) as u64,
                lun.blocks(),
                12,
            )
        } else {
            (be32(b, 0) as u64, u64::from(clamp32(lun.blocks())), 5)
        };
        if blocks != 0 && blocks != current {
            return Err(bad(hdr, None));
        }
        let bs = if longlba {
            be32(b, 12) as u64
        } else {
            (be32(b, 4) & 0xff_ffff) as u64
        };
        if bs != lun.block_size() {
            return Err(bad(hdr + bs_at, None));
        }
    }
    let old = {
        let st = lun.state();
        ModeValues {
            wce: st.wce,
            d_sense: st.d_sense,
        }
    };
    // Check pass: every page known, complete, and changing only changeable bits.
    let mut new = old;
    let mut off = hdr + bd_len;
    while off < p.len() {
        if p.len() - off < 2 {
            return Err(Sense::PARAM_LIST_LENGTH);
        }
        if p[off] & 0x40 != 0 {
            return Err(bad(off, Some(6)));
        }
        let code = p[off] & 0x3f;
        let cur = mode_page(lun, code, PageControl::Current, old).ok_or(bad(off, Some(5)))?;
        let chg = mode_page(lun, code, PageControl::Changeable, old).unwrap_or_default();
        let len = usize::from(p[off + 1]);
        if len + 2 != cur.len() {
            return Err(bad(off + 1, None));
        }
        if p.len() - off < len + 2 {
            return Err(Sense::PARAM_LIST_LENGTH);
        }
        let page = &p[off..off + len + 2];
        for i in 2..page.len() {
            let diff = (page[i] ^ cur[i]) & !chg[i];
            if diff != 0 {
                let bit = 7 - diff.leading_zeros() as u8;
                return Err(bad(off + i, Some(bit)));
            }
        }
        match code {
            0x08 => new.wce = page[2] & 0x04 != 0,
            0x0a => new.d_sense = page[2] & 0x04 != 0,
            _ => {}
        }
        off += len + 2;
    }
    // Apply pass.
    if new != old {
        let mut st = lun.state();
        st.wce = new.wce;
        st.d_sense = new.d_sense;
        let others: Vec<u64> = st
            .seen
            .iter()
            .copied()
            .filter(|&n| n != cmd.nexus)
            .collect();
        for n in others {
            st.push_ua(n, Sense::MODE_PARAMETERS_CHANGED, false);
        }
    }
    Ok(0)
}

// ---- RESERVE / RELEASE (SPC-2) ----

/// Whether `cdb` from `nexus` conflicts with a RESERVE(6)/(10) reservation held by another
/// nexus (the caller then completes it with RESERVATION CONFLICT status). INQUIRY, REQUEST
/// SENSE, REPORT LUNS, RELEASE and REPORT TARGET PORT GROUPS never conflict.
pub fn reservation_conflict(lun: &LogicalUnit, cdb: &[u8], nexus: u64) -> bool {
    // Persistent reservations, and their interplay with RESERVE/RELEASE (see crate::pr).
    if crate::pr::conflict(lun, cdb, nexus) {
        return true;
    }
    let holder = lun.state().reservation;
    match holder {
        Some(h) if h != nexus => {}
        _ => return false,
    }
    match cdb.first() {
        Some(0x12 | 0x03 | 0xa0 | 0x17 | 0x57) => false,
        Some(&MAINTENANCE_IN) => byte(cdb, 1) & 0x1f != 0x0a,
        _ => true,
    }
}

/// RESERVE(6)/(10): the nexus becomes the holder (a reservation held by another nexus is a
/// conflict, reported before the handler runs, see [`reservation_conflict`]).
fn reserve(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let mut st = lun.state();
    if !st.pr.regs.is_empty() {
        // Registrations exist (SPC-3 5.6.3, CRH = 0).
        return Err(Sense::RESERVATION_CONFLICT);
    }
    match st.reservation {
        Some(h) if h != cmd.nexus => Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(0, None)),
        _ => {
            st.reservation = Some(cmd.nexus);
            Ok(0)
        }
    }
}

/// RELEASE(6)/(10): releases the nexus's reservation; GOOD without effect otherwise.
fn release(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let mut st = lun.state();
    if st.reservation == Some(cmd.nexus) {
        st.reservation = None;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LunOptions;
    use std::sync::Arc;
    use vstor_blockdev::memory::MemoryDev;

    #[test]
    fn stopped_unit_is_not_ready() {
        let dev = Arc::new(MemoryDev::new(1 << 20, Default::default()).unwrap());
        let lun = LogicalUnit::new(dev, LunOptions::default());
        let mut buf = [0u8; 0];
        let mut c = Command {
            cdb: &[0; 6],
            data_out: &[],
            data_in: &mut buf,
            nexus: 1,
        };
        assert_eq!(lun.execute(&mut c).status, 2, "power on UA");
        assert_eq!(lun.execute(&mut c).status, 0);
        lun.hot()
            .stopped
            .store(true, std::sync::atomic::Ordering::Release);
        let out = lun.execute(&mut c);
        assert_eq!(&out.sense[..3], &[0x70, 0, 0x02]);
        assert_eq!((out.sense[12], out.sense[13]), (0x04, 0x02));
    }
}
