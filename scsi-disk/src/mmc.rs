//! MMC-6 commands of a read-only CD/DVD-ROM logical unit ([`LunKind::Cdrom`]): the medium is an
//! ISO image (any `BlockDev`; blocks of 2048 bytes), one data track in one closed session.
//!
//! The unit has a tray: the guest opens and closes it with START STOP UNIT (LOEJ), the host
//! with [`LogicalUnit::eject`] and [`LogicalUnit::load`]. PREVENT ALLOW MEDIUM REMOVAL locks
//! it against the guest's eject (the host may force). While the tray is open, or closed
//! without a disc, medium access reports MEDIUM NOT PRESENT (TRAY OPEN / TRAY CLOSED); closing
//! the tray on a disc, or loading one, queues NOT READY TO READY CHANGE, MEDIUM MAY HAVE
//! CHANGED for every nexus and a NewMedia event for GET EVENT STATUS NOTIFICATION.
//!
//! The SPC commands a CD-ROM has (INQUIRY, MODE SENSE/SELECT, REQUEST SENSE, REPORT LUNS,
//! REPORT SUPPORTED OPERATION CODES / TASK MANAGEMENT FUNCTIONS) come from [`crate::spc`],
//! which reports the peripheral type, VPD and mode pages by kind; READ(10)/(12) and READ
//! CAPACITY(10) reuse the [`crate::sbc`] handlers behind the tray check.

use std::collections::VecDeque;
use std::sync::Arc;

use vstor_blockdev::BlockDev;

use crate::lun::{Command, LogicalUnit, LunKind};
use crate::sense::{key, Sense};
use crate::table::OpInfo;
use crate::{sbc, spc};

/// Logical block size of a CD/DVD-ROM unit, whatever the device's own block size.
pub const BLOCK_SIZE: u64 = 2048;

/// The largest medium reported as a CD-ROM: 80 minutes of 75 sectors per second. A larger
/// image is a DVD-ROM.
pub const CD_MAX_BLOCKS: u64 = 80 * 60 * 75;

/// MMC profiles (GET CONFIGURATION).
pub mod profile {
    /// No current profile (no medium).
    pub const NONE: u16 = 0x0000;
    /// CD-ROM.
    pub const CD_ROM: u16 = 0x0008;
    /// DVD-ROM.
    pub const DVD_ROM: u16 = 0x0010;
}

/// Media class event codes (GET EVENT STATUS NOTIFICATION).
pub mod event {
    /// No change.
    pub const NO_CHANGE: u8 = 0;
    /// The user asked for an eject (the host tried to eject a locked medium).
    pub const EJECT_REQUEST: u8 = 1;
    /// A medium was loaded (or the tray closed on one).
    pub const NEW_MEDIA: u8 = 2;
    /// The medium was removed (or the tray opened).
    pub const MEDIA_REMOVAL: u8 = 3;
}

/// MEDIUM NOT PRESENT - TRAY CLOSED.
pub const NOT_PRESENT_TRAY_CLOSED: Sense = Sense {
    key: key::NOT_READY,
    asc: 0x3a,
    ascq: 0x01,
    field: None,
    information: None,
};

/// MEDIUM NOT PRESENT - TRAY OPEN.
pub const NOT_PRESENT_TRAY_OPEN: Sense = Sense {
    key: key::NOT_READY,
    asc: 0x3a,
    ascq: 0x02,
    field: None,
    information: None,
};

/// ILLEGAL REQUEST, MEDIUM REMOVAL PREVENTED (eject of a locked medium).
pub const REMOVAL_PREVENTED: Sense = Sense {
    key: key::ILLEGAL_REQUEST,
    asc: 0x53,
    ascq: 0x02,
    field: None,
    information: None,
};

/// NOT READY, MEDIUM REMOVAL PREVENTED (eject of a locked, empty drive).
pub const NOT_READY_REMOVAL_PREVENTED: Sense = Sense {
    key: key::NOT_READY,
    asc: 0x53,
    ascq: 0x02,
    field: None,
    information: None,
};

/// Media events kept for GET EVENT STATUS NOTIFICATION before the oldest are dropped.
const MAX_EVENTS: usize = 8;

/// Tray and event state of a CD/DVD-ROM unit (part of the unit's state).
#[derive(Debug, Default)]
pub(crate) struct MmcState {
    /// The tray is open (the guest sees no medium, loaded or not).
    pub tray_open: bool,
    /// Pending media class events, oldest first.
    pub events: VecDeque<u8>,
}

impl MmcState {
    fn push_event(&mut self, code: u8) {
        if self.events.back() == Some(&code) {
            return;
        }
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(code);
    }
}

/// The host could not eject: the guest prevents medium removal (an eject request event was
/// queued for the guest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediumLocked;

impl std::fmt::Display for MediumLocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the guest prevents medium removal")
    }
}

impl std::error::Error for MediumLocked {}

impl LogicalUnit {
    /// Host side: ejects the medium (opens the tray and takes the disc out) and returns it. A
    /// medium the guest locked with PREVENT ALLOW MEDIUM REMOVAL stays in unless `force`: the
    /// guest is sent an eject request event instead and [`MediumLocked`] is returned.
    pub fn eject(&self, force: bool) -> Result<Option<Arc<dyn BlockDev>>, MediumLocked> {
        let loaded = self.medium().is_some();
        {
            let mut st = self.state();
            if st.prevent && !force && !st.mmc.tray_open && loaded {
                st.mmc.push_event(event::EJECT_REQUEST);
                return Err(MediumLocked);
            }
            if loaded && !st.mmc.tray_open {
                st.mmc.push_event(event::MEDIA_REMOVAL);
            }
            st.mmc.tray_open = true;
        }
        Ok(self.replace_medium(None))
    }

    /// Host side: puts `dev` in the tray (replacing any disc there) and closes it. Every nexus
    /// gets NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED; GET EVENT STATUS NOTIFICATION
    /// reports NewMedia. Returns the previous medium.
    pub fn load(&self, dev: Arc<dyn BlockDev>) -> Option<Arc<dyn BlockDev>> {
        let old = self.replace_medium(None);
        {
            let mut st = self.state();
            st.mmc.tray_open = false;
            st.mmc.push_event(event::NEW_MEDIA);
        }
        self.replace_medium(Some(dev));
        old
    }

    /// Whether the tray is open.
    pub fn tray_open(&self) -> bool {
        self.state().mmc.tray_open
    }
}

macro_rules! op {
    ($opcode:expr, $name:expr, $handler:expr, [$($u:expr),* $(,)?]) => {
        OpInfo {
            opcode: $opcode,
            service_action: None,
            name: $name,
            usage: &[$($u),*],
            writes: false,
            handler: $handler,
        }
    };
}

/// MMC commands of a CD/DVD-ROM unit (its opcode table lists them after its SPC commands).
#[rustfmt::skip]
pub static OPS: &[OpInfo] = &[
    op!(0x00, "TEST UNIT READY", test_unit_ready, [0x00, 0, 0, 0, 0, 0]),
    op!(0x1b, "START STOP UNIT", start_stop_unit, [0x1b, 0x01, 0, 0x0f, 0xf3, 0]),
    op!(0x1e, "PREVENT ALLOW MEDIUM REMOVAL", prevent_allow, [0x1e, 0, 0, 0, 0x03, 0]),
    op!(0x25, "READ CAPACITY(10)", read_capacity, [0x25, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, 0]),
    op!(0x28, "READ(10)", read, [0x28, 0x18, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0]),
    op!(0x43, "READ TOC/PMA/ATIP", read_toc, [0x43, 0x02, 0x0f, 0, 0, 0, 0xff, 0xff, 0xff, 0xc0]),
    op!(0x46, "GET CONFIGURATION", get_configuration, [0x46, 0x03, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0]),
    op!(0x4a, "GET EVENT STATUS NOTIFICATION", get_event_status, [0x4a, 0x01, 0, 0, 0xff, 0, 0, 0xff, 0xff, 0]),
    op!(0x51, "READ DISC INFORMATION", read_disc_information, [0x51, 0x07, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    op!(0x52, "READ TRACK INFORMATION", read_track_information, [0x52, 0x03, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0]),
    op!(0xa8, "READ(12)", read, [0xa8, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x80, 0]),
    op!(0xbb, "SET CD SPEED", set_cd_speed, [0xbb, 0x03, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0]),
    op!(0xbd, "MECHANISM STATUS", mechanism_status, [0xbd, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0]),
];

/// The SPC commands a CD/DVD-ROM unit has: (opcode, service action).
const SPC_COMMANDS: [(u8, Option<u8>); 9] = [
    (0x03, None),       // REQUEST SENSE
    (0x12, None),       // INQUIRY
    (0x15, None),       // MODE SELECT(6)
    (0x1a, None),       // MODE SENSE(6)
    (0x55, None),       // MODE SELECT(10)
    (0x5a, None),       // MODE SENSE(10)
    (0xa0, None),       // REPORT LUNS
    (0xa3, Some(0x0c)), // REPORT SUPPORTED OPERATION CODES
    (0xa3, Some(0x0d)), // REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS
];

/// The opcode table of a CD/DVD-ROM unit: its SPC commands, then [`OPS`].
pub(crate) fn table() -> Vec<&'static OpInfo> {
    spc::OPS
        .iter()
        .filter(|o| SPC_COMMANDS.contains(&(o.opcode, o.service_action)))
        .chain(OPS.iter())
        .collect()
}

/// Big-endian 16-bit field at `i` (0 past the end).
fn be16(b: &[u8], i: usize) -> usize {
    b.get(i..i + 2)
        .map_or(0, |s| usize::from(u16::from_be_bytes([s[0], s[1]])))
}

/// Big-endian 32-bit field at `i` (0 past the end).
fn be32(b: &[u8], i: usize) -> u64 {
    b.get(i..i + 4).map_or(0, |s| {
        u64::from(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    })
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

/// The medium the guest sees, or MEDIUM NOT PRESENT (tray open or closed).
fn disc(lun: &LogicalUnit) -> Result<Arc<dyn BlockDev>, Sense> {
    if lun.state().mmc.tray_open {
        return Err(NOT_PRESENT_TRAY_OPEN);
    }
    lun.medium().ok_or(NOT_PRESENT_TRAY_CLOSED)
}

/// Number of 2048-byte blocks of the guest-visible disc, if there is one.
fn disc_blocks(lun: &LogicalUnit) -> Option<u64> {
    disc(lun).ok().map(|d| d.info().size / BLOCK_SIZE)
}

/// The current profile: DVD-ROM for a disc larger than a CD, CD-ROM, or none.
fn current_profile(lun: &LogicalUnit) -> u16 {
    match disc_blocks(lun) {
        None => profile::NONE,
        Some(n) if n > CD_MAX_BLOCKS => profile::DVD_ROM,
        Some(_) => profile::CD_ROM,
    }
}

/// An LBA as MSF (a 4-byte address field: reserved, minute, second, frame), counting the
/// 2-second pregap; minutes saturate at 255.
fn msf(lba: u64) -> [u8; 4] {
    let a = lba.saturating_add(150);
    let m = (a / (60 * 75)).min(0xff) as u8;
    [0, m, (a / 75 % 60) as u8, (a % 75) as u8]
}

/// A 4-byte address field: MSF or LBA.
fn address(lba: u64, as_msf: bool) -> [u8; 4] {
    if as_msf {
        msf(lba)
    } else {
        u32::try_from(lba).unwrap_or(u32::MAX).to_be_bytes()
    }
}

fn test_unit_ready(lun: &LogicalUnit, _cmd: &mut Command<'_>) -> Result<usize, Sense> {
    disc(lun)?;
    Ok(0)
}

/// START STOP UNIT: with POWER CONDITION 0 and LOEJ, START=0 opens the tray (refused while
/// the medium is locked) and START=1 closes it; START without LOEJ has no effect (the disc
/// spins up on access). Valid power conditions are accepted without effect.
fn start_stop_unit(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let b4 = byte(cmd.cdb, 4);
    match b4 >> 4 {
        0 => {}
        1 | 2 | 3 | 5 | 7 | 0xa | 0xb => return Ok(0),
        _ => return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(4, Some(7))),
    }
    if b4 & 0x02 == 0 {
        return Ok(0);
    }
    let start = b4 & 0x01 != 0;
    let loaded = lun.medium().is_some();
    let changed = {
        let mut st = lun.state();
        if start != st.mmc.tray_open {
            // The tray is already where it was asked to go.
            false
        } else if !start {
            if st.prevent {
                return Err(if loaded {
                    REMOVAL_PREVENTED
                } else {
                    NOT_READY_REMOVAL_PREVENTED
                });
            }
            st.mmc.tray_open = true;
            if loaded {
                st.mmc.push_event(event::MEDIA_REMOVAL);
            }
            false
        } else {
            st.mmc.tray_open = false;
            if loaded {
                st.mmc.push_event(event::NEW_MEDIA);
            }
            loaded
        }
    };
    if changed {
        lun.raise_unit_attention(Sense::MEDIUM_MAY_HAVE_CHANGED);
    }
    Ok(0)
}

/// PREVENT ALLOW MEDIUM REMOVAL: records PREVENT (bit 0; the persistent prevent bit is
/// accepted).
fn prevent_allow(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    lun.state().prevent = byte(cmd.cdb, 4) & 1 != 0;
    Ok(0)
}

fn read_capacity(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    disc(lun)?;
    sbc::read_capacity10(lun, cmd)
}

/// READ(10)/(12) of 2048-byte blocks.
fn read(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    disc(lun)?;
    sbc::read(lun, cmd)
}

/// One feature descriptor of GET CONFIGURATION.
struct Feature {
    code: u16,
    version: u8,
    persistent: bool,
    current: bool,
    data: Vec<u8>,
}

impl Feature {
    fn encode(&self, d: &mut Vec<u8>) {
        d.extend_from_slice(&self.code.to_be_bytes());
        d.push(self.version << 2 | u8::from(self.persistent) << 1 | u8::from(self.current));
        d.push(self.data.len() as u8);
        d.extend_from_slice(&self.data);
    }
}

/// Every feature the unit has, in ascending feature number.
fn features(current: u16) -> Vec<Feature> {
    let mut profiles = Vec::new();
    for p in [profile::DVD_ROM, profile::CD_ROM] {
        profiles.extend_from_slice(&p.to_be_bytes());
        profiles.extend_from_slice(&[u8::from(p == current), 0]);
    }
    let present = current != profile::NONE;
    let f = |code, version, persistent, current, data: &[u8]| Feature {
        code,
        version,
        persistent,
        current,
        data: data.to_vec(),
    };
    vec![
        // Profile List.
        f(0x0000, 0, true, true, &profiles),
        // Core: SCSI physical interface, DBE.
        f(0x0001, 2, true, true, &[0, 0, 0, 1, 0x01, 0, 0, 0]),
        // Morphing: polled event status only, no operational change events.
        f(0x0002, 1, true, true, &[0, 0, 0, 0]),
        // Removable Medium: tray, eject, load, lockable.
        f(0x0003, 2, true, true, &[0x39, 0, 0, 0]),
        // Random Readable: 2048-byte blocks, blocking 1, read error recovery page present.
        f(0x0010, 0, false, present, &[0, 0, 0x08, 0, 0, 1, 0x01, 0]),
        // CD Read.
        f(0x001e, 2, false, current == profile::CD_ROM, &[0, 0, 0, 0]),
        // DVD Read.
        f(0x001f, 1, false, current == profile::DVD_ROM, &[0, 0, 0, 0]),
    ]
}

/// GET CONFIGURATION: the feature header (current profile) and the features RT selects from
/// the starting feature number: all (00b), the current ones (01b) or that one (10b).
fn get_configuration(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let rt = byte(cmd.cdb, 1) & 0x03;
    let start = be16(cmd.cdb, 2) as u16;
    let alloc = be16(cmd.cdb, 7);
    let current = current_profile(lun);
    let mut d = vec![0u8; 8];
    d[6..8].copy_from_slice(&current.to_be_bytes());
    for f in features(current) {
        let wanted = match rt {
            0 => f.code >= start,
            1 => f.code >= start && f.current,
            2 => f.code == start,
            _ => return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(1, Some(1))),
        };
        if wanted {
            f.encode(&mut d);
        }
    }
    let len = (d.len() - 4) as u32;
    d[..4].copy_from_slice(&len.to_be_bytes());
    Ok(reply(cmd, &d, alloc))
}

/// One track descriptor of READ TOC format 0 (ADR 1, data track).
fn toc_track(d: &mut Vec<u8>, track: u8, lba: u64, as_msf: bool) {
    d.extend_from_slice(&[0, 0x14, track, 0]);
    d.extend_from_slice(&address(lba, as_msf));
}

/// One descriptor of the full TOC: session 1, ADR 1 data, POINT and its PMIN/PSEC/PFRAME.
fn raw_toc_entry(d: &mut Vec<u8>, point: u8, p: [u8; 3]) {
    d.extend_from_slice(&[1, 0x14, 0, point, 0, 0, 0, 0, p[0], p[1], p[2]]);
}

/// READ TOC/PMA/ATIP: format 0 (TOC: track 1 and the lead-out), 1 (session information) and
/// 2 (full TOC, always MSF) of a single-session, single-track disc. The format may also come
/// from the two high bits of the control byte (the SFF-8020 placement).
fn read_toc(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let as_msf = byte(cmd.cdb, 1) & 0x02 != 0;
    let mut format = byte(cmd.cdb, 2) & 0x0f;
    if format == 0 {
        format = byte(cmd.cdb, 9) >> 6;
    }
    let number = byte(cmd.cdb, 6);
    let alloc = be16(cmd.cdb, 7);
    let blocks = disc(lun)?.info().size / BLOCK_SIZE;
    // Header: data length (filled below), first and last track (or session) number.
    let mut d = vec![0, 0, 1, 1];
    match format {
        0 => {
            match number {
                0 | 1 => toc_track(&mut d, 1, 0, as_msf),
                0xaa => {}
                _ => return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(6, None)),
            }
            toc_track(&mut d, 0xaa, blocks, as_msf);
        }
        1 => toc_track(&mut d, 1, 0, as_msf),
        2 => {
            if number > 1 {
                return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(6, None));
            }
            let m = |lba| {
                let a = msf(lba);
                [a[1], a[2], a[3]]
            };
            raw_toc_entry(&mut d, 0xa0, [1, 0, 0]); // first track 1, CD-ROM disc
            raw_toc_entry(&mut d, 0xa1, [1, 0, 0]); // last track 1
            raw_toc_entry(&mut d, 0xa2, m(blocks)); // lead-out
            raw_toc_entry(&mut d, 0x01, m(0)); // track 1
        }
        _ => return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(2, Some(3))),
    }
    let len = (d.len() - 2) as u16;
    d[..2].copy_from_slice(&len.to_be_bytes());
    Ok(reply(cmd, &d, alloc))
}

/// GET EVENT STATUS NOTIFICATION, polled only: the media class (the oldest pending event,
/// which it clears, and the tray and medium status); NEA when the request names no class the
/// unit supports.
fn get_event_status(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    const MEDIA_CLASS: u8 = 4;
    if byte(cmd.cdb, 1) & 0x01 == 0 {
        return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(1, Some(0)));
    }
    let request = byte(cmd.cdb, 4);
    let alloc = be16(cmd.cdb, 7);
    let mut d = vec![0, 0, 0x80, 1 << MEDIA_CLASS];
    if request & (1 << MEDIA_CLASS) != 0 {
        let loaded = lun.medium().is_some();
        let mut st = lun.state();
        let code = st.mmc.events.pop_front().unwrap_or(event::NO_CHANGE);
        // Media status: tray open (bit 0), else media present (bit 1).
        let status = match (st.mmc.tray_open, loaded) {
            (true, _) => 0x01,
            (false, true) => 0x02,
            (false, false) => 0x00,
        };
        drop(st);
        d[2] = MEDIA_CLASS;
        d.extend_from_slice(&[code, status, 0, 0]);
    }
    let len = (d.len() - 4) as u16;
    d[..2].copy_from_slice(&len.to_be_bytes());
    Ok(reply(cmd, &d, alloc))
}

/// READ DISC INFORMATION, standard disc information: a finalized disc, one complete session
/// with track 1.
fn read_disc_information(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    if byte(cmd.cdb, 1) & 0x07 != 0 {
        return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(1, Some(2)));
    }
    let alloc = be16(cmd.cdb, 7);
    disc(lun)?;
    let mut d = vec![0u8; 34];
    d[1] = 32; // disc information length
    d[2] = 0x0e; // last session complete, disc finalized
    d[3] = 1; // first track on disc
    d[4] = 1; // number of sessions
    d[5] = 1; // first track in last session
    d[6] = 1; // last track in last session
    d[7] = 0x20; // URU
    d[8] = 0x00; // CD-DA or CD-ROM disc
                 // Last session lead-in start and last possible lead-out start: none on a finalized disc.
    d[16..24].fill(0xff);
    Ok(reply(cmd, &d, alloc))
}

/// READ TRACK INFORMATION for track 1 (by LBA inside the disc, track number 1 or session 1).
fn read_track_information(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let kind = byte(cmd.cdb, 1) & 0x03;
    let number = be32(cmd.cdb, 2);
    let alloc = be16(cmd.cdb, 7);
    let blocks = disc(lun)?.info().size / BLOCK_SIZE;
    match kind {
        0 if number < blocks => {}
        0 => return Err(Sense::LBA_OUT_OF_RANGE),
        1 | 2 if number == 1 => {}
        1 | 2 => return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(2, None)),
        _ => return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(1, Some(1))),
    }
    let size = u32::try_from(blocks).unwrap_or(u32::MAX);
    let mut d = vec![0u8; 48];
    d[1] = 46; // data length
    d[2] = 1; // track number
    d[3] = 1; // session number
    d[5] = 0x04; // track mode: data, recorded uninterrupted
    d[6] = 0x01; // data mode 1
    d[7] = 0x02; // LRA_V
    d[24..28].copy_from_slice(&size.to_be_bytes()); // track size
    d[28..32].copy_from_slice(&size.saturating_sub(1).to_be_bytes()); // last recorded
    Ok(reply(cmd, &d, alloc))
}

/// SET CD SPEED: accepted, nothing to do.
fn set_cd_speed(_lun: &LogicalUnit, _cmd: &mut Command<'_>) -> Result<usize, Sense> {
    Ok(0)
}

/// MECHANISM STATUS: no changer (one slot), idle, the door state; no slot tables.
fn mechanism_status(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let alloc = be16(cmd.cdb, 8);
    let mut d = [0u8; 8];
    if lun.state().mmc.tray_open {
        d[1] = 0x10; // door open
    }
    d[5] = 1; // number of slots
    Ok(reply(cmd, &d, alloc))
}

/// The CD capabilities and mechanical status mode page (0x2A), current values: read support
/// for CD-R/RW and DVD-ROM/R/RAM, tray loading with eject and lock (LOCK STATE from PREVENT),
/// speeds as QEMU reports them.
pub(crate) fn capabilities_page(lun: &LogicalUnit) -> [u8; 22] {
    let mut p = [0u8; 22];
    p[0] = 0x2a;
    p[1] = 0x14;
    p[2] = 0x3b; // CD-R, CD-RW, DVD-ROM, DVD-R, DVD-RAM read
    p[4] = 0x7f; // audio play, composite, digital ports, mode 2 form 1 & 2, multi-session
    p[5] = 0xff; // CD-DA commands, accurate, R-W, corrected, C2, ISRC, UPC, bar code
    p[6] = 0x2d | if lun.state().prevent { 0x02 } else { 0 }; // tray, eject, jumper, lock
    p[8..10].copy_from_slice(&(50u16 * 176).to_be_bytes()); // maximum read speed
    p[10..12].copy_from_slice(&2u16.to_be_bytes()); // volume levels
    p[12..14].copy_from_slice(&2048u16.to_be_bytes()); // buffer size (KiB)
    p[14..16].copy_from_slice(&(16u16 * 176).to_be_bytes()); // current read speed
    p[18..20].copy_from_slice(&(16u16 * 176).to_be_bytes()); // maximum write speed
    p[20..22].copy_from_slice(&(16u16 * 176).to_be_bytes()); // current write speed
    p
}

/// Whether `lun` is a CD/DVD-ROM unit.
pub(crate) fn is_cdrom(lun: &LogicalUnit) -> bool {
    lun.options().kind == LunKind::Cdrom
}
