//! MMC (CD/DVD-ROM) logical unit tests: exact data-in bytes and exact sense for every command,
//! tray and medium changes (eject, load, PREVENT), and the cd opcode table against REPORT
//! SUPPORTED OPERATION CODES.

use std::sync::Arc;

use vstor_blockdev::memory::MemoryDev;
use vstor_blockdev::null::NullDev;
use vstor_blockdev::BlockDev;
use vstor_scsi_disk::mmc::{self, MediumLocked};
use vstor_scsi_disk::{table, Command, LogicalUnit, LunKind, LunOptions, Outcome};

/// Blocks of the synthetic image.
const BLOCKS: u64 = 64;

/// Byte `j` of 2048-byte block `i` of the synthetic image.
fn pattern(i: u64, j: usize) -> u8 {
    (i as usize * 7 + j * 13 + (j >> 8)) as u8
}

/// A synthetic ISO image of `BLOCKS` 2048-byte blocks over a 512-byte-sector memory device.
fn image() -> Arc<MemoryDev> {
    let dev = Arc::new(MemoryDev::new(BLOCKS * 2048, Default::default()).unwrap());
    let mut data = vec![0u8; (BLOCKS * 2048) as usize];
    for (k, b) in data.iter_mut().enumerate() {
        *b = pattern((k / 2048) as u64, k % 2048);
    }
    dev.write_at(&data, 0).unwrap();
    dev
}

fn cd(dev: Option<Arc<dyn BlockDev>>) -> LogicalUnit {
    LogicalUnit::new_cdrom(dev, LunOptions::default())
}

/// Runs `cdb` on `nexus` with a data-in buffer of `buf` bytes.
fn run(lun: &LogicalUnit, nexus: u64, cdb: &[u8], buf: usize) -> (Outcome, Vec<u8>) {
    let mut data = vec![0u8; buf];
    let o = lun.execute(&mut Command {
        cdb,
        data_out: &[],
        data_in: &mut data,
        nexus,
    });
    data.truncate(o.data_in_len);
    (o, data)
}

/// A cd unit over the synthetic image whose nexus 1 has consumed its power-on unit attention.
fn ready() -> LogicalUnit {
    let lun = cd(Some(image()));
    consume_power_on(&lun);
    lun
}

fn consume_power_on(lun: &LogicalUnit) {
    let (o, _) = run(lun, 1, &[0; 6], 0);
    assert_eq!(o.status, 2);
    assert_eq!((o.sense[2], o.sense[12], o.sense[13]), (6, 0x29, 0));
}

/// Runs a command expected to succeed and returns its data.
fn good(lun: &LogicalUnit, cdb: &[u8], buf: usize) -> Vec<u8> {
    let (o, d) = run(lun, 1, cdb, buf);
    assert_eq!(o.status, 0, "{cdb:02x?}: sense {:02x?}", o.sense);
    d
}

/// Runs a command expected to fail and returns (key, asc, ascq, sense-key specific bytes).
fn fail(lun: &LogicalUnit, cdb: &[u8]) -> (u8, u8, u8, [u8; 3]) {
    let (o, d) = run(lun, 1, cdb, 1 << 20);
    assert_eq!(o.status, 2, "{cdb:02x?} succeeded");
    assert!(d.is_empty());
    let s = &o.sense;
    assert_eq!(s.len(), 18);
    assert_eq!((s[0], s[7]), (0x70, 10));
    (s[2], s[12], s[13], [s[15], s[16], s[17]])
}

const NO_SKS: [u8; 3] = [0, 0, 0];

fn invalid_cdb(byte: u16, bit: Option<u8>) -> (u8, u8, u8, [u8; 3]) {
    let b0 = 0xc0 | bit.map_or(0, |b| 0x08 | b);
    (5, 0x24, 0, [b0, (byte >> 8) as u8, byte as u8])
}

const INVALID_OPCODE: (u8, u8, u8, [u8; 3]) = (5, 0x20, 0, NO_SKS);
const TRAY_CLOSED: (u8, u8, u8, [u8; 3]) = (2, 0x3a, 1, NO_SKS);
const TRAY_OPEN: (u8, u8, u8, [u8; 3]) = (2, 0x3a, 2, NO_SKS);
const MEDIUM_CHANGED: (u8, u8, u8, [u8; 3]) = (6, 0x28, 0, NO_SKS);
const LBA_OUT_OF_RANGE: (u8, u8, u8, [u8; 3]) = (5, 0x21, 0, NO_SKS);

fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let [a, b, c, d] = lba.to_be_bytes();
    let [h, l] = blocks.to_be_bytes();
    [0x28, 0, a, b, c, d, 0, h, l, 0]
}

fn read12(lba: u32, blocks: u32) -> [u8; 12] {
    let [a, b, c, d] = lba.to_be_bytes();
    let [e, f, g, h] = blocks.to_be_bytes();
    [0xa8, 0, a, b, c, d, e, f, g, h, 0, 0]
}

const TUR: [u8; 6] = [0; 6];
const PREVENT: [u8; 6] = [0x1e, 0, 0, 0, 1, 0];
const ALLOW: [u8; 6] = [0x1e, 0, 0, 0, 0, 0];
const OPEN_TRAY: [u8; 6] = [0x1b, 0, 0, 0, 0x02, 0];
const CLOSE_TRAY: [u8; 6] = [0x1b, 0, 0, 0, 0x03, 0];

fn get_configuration(rt: u8, start: u16, alloc: u16) -> [u8; 10] {
    let [sh, sl] = start.to_be_bytes();
    let [ah, al] = alloc.to_be_bytes();
    [0x46, rt, sh, sl, 0, 0, 0, ah, al, 0]
}

fn read_toc(msf: bool, format: u8, track: u8) -> [u8; 10] {
    [0x43, u8::from(msf) << 1, format, 0, 0, 0, track, 0x10, 0, 0]
}

fn gesn(classes: u8) -> [u8; 10] {
    [0x4a, 0x01, 0, 0, classes, 0, 0, 0, 0x40, 0]
}

/// The media class event of GET EVENT STATUS NOTIFICATION: (event code, media status).
fn media_event(lun: &LogicalUnit) -> (u8, u8) {
    let d = good(lun, &gesn(0x10), 64);
    assert_eq!(d[..4], [0, 4, 0x04, 0x10]);
    assert_eq!(d.len(), 8);
    assert_eq!(d[6..], [0, 0]);
    (d[4], d[5])
}

#[test]
fn inquiry_and_vpd() {
    let lun = cd(None);
    let d = good(&lun, &[0x12, 0, 0, 0, 96, 0], 96);
    assert_eq!(d.len(), 96);
    assert_eq!(d[..8], [0x05, 0x80, 0x07, 0x12, 91, 0x00, 0x00, 0x02]);
    assert_eq!(&d[8..13], b"VSTOR");
    // SAM-5, SPC-5, MMC-6.
    assert_eq!(d[58..64], [0x00, 0xa0, 0x05, 0xc0, 0x04, 0xe0]);
    // VPD pages need no medium; no block device pages.
    let vpd = |p: u8| good(&lun, &[0x12, 1, p, 0, 255, 0], 255);
    assert_eq!(vpd(0x00), [0x05, 0x00, 0, 3, 0x00, 0x80, 0x83]);
    assert_eq!(
        vpd(0x80),
        [0x05, 0x80, 0, 6, b'v', b's', b't', b'o', b'r', b'0']
    );
    let id = vpd(0x83);
    assert_eq!(id[..2], [0x05, 0x83]);
    // NAA, T10 vendor ID, relative target port; no target port group (no ALUA).
    assert_eq!(usize::from(id[3]), id.len() - 4);
    assert_eq!(id[4..8], [0x01, 0x03, 0, 16]);
    assert_eq!(id[id.len() - 8..], [0x01, 0x14, 0, 4, 0, 0, 0, 1]);
    for p in [0xb0, 0xb1, 0xb2, 0x86] {
        assert_eq!(fail(&lun, &[0x12, 1, p, 0, 255, 0]), invalid_cdb(2, None));
    }
}

#[test]
fn table_matches_report_supported_operation_codes() {
    let lun = ready();
    let rsoc = |rctd: bool, options: u8, op: u8, sa: u16| {
        let [sh, sl] = sa.to_be_bytes();
        [
            0xa3,
            0x0c,
            u8::from(rctd) << 7 | options,
            op,
            sh,
            sl,
            0,
            0,
            0x10,
            0,
            0,
            0,
        ]
    };
    let cd_table: Vec<_> = table::for_kind(LunKind::Cdrom)
        .map(|o| (o.opcode, o.service_action, o.usage.len()))
        .collect();
    for rctd in [false, true] {
        let d = good(&lun, &rsoc(rctd, 0, 0, 0), 4096);
        let len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
        assert_eq!(len + 4, d.len());
        let step = if rctd { 20 } else { 8 };
        let reported: Vec<_> = d[4..]
            .chunks(step)
            .map(|e| {
                assert_eq!(e.len(), step);
                assert_eq!(e[5] & 2 != 0, rctd, "CTDP");
                let sa = u16::from_be_bytes([e[2], e[3]]) as u8;
                let cdb_len = usize::from(u16::from_be_bytes([e[6], e[7]]));
                (e[0], (e[5] & 1 != 0).then_some(sa), cdb_len)
            })
            .collect();
        assert_eq!(reported, cd_table);
    }
    for o in table::for_kind(LunKind::Cdrom) {
        let (opt, sa) = match o.service_action {
            None => (1, 0),
            Some(sa) => (2, u16::from(sa)),
        };
        let d = good(&lun, &rsoc(false, opt, o.opcode, sa), 4096);
        let n = o.usage.len();
        assert_eq!(d[..4], [0, 3, 0, n as u8], "{}", o.name);
        assert_eq!(d[4], o.opcode);
        assert_eq!(d[5..], o.usage[1..], "{}", o.name);
    }
    // The MMC set is there, the block-device-only commands are not.
    let opcodes: Vec<u8> = cd_table.iter().map(|e| e.0).collect();
    for op in [
        0x00, 0x03, 0x12, 0x1a, 0x1b, 0x1e, 0x25, 0x28, 0x43, 0x46, 0x4a, 0x51, 0x52, 0x5a, 0xa0,
        0xa3, 0xa8, 0xbb, 0xbd,
    ] {
        assert!(opcodes.contains(&op), "{op:#x} missing");
    }
    // Writes and non-MMC block commands: not supported, and INVALID COMMAND OPERATION CODE.
    for op in [
        0x04, 0x08, 0x0a, 0x16, 0x2a, 0x2e, 0x2f, 0x35, 0x41, 0x42, 0x48, 0x5e, 0x5f, 0x88, 0x89,
        0x8a, 0x8e, 0x91, 0x93, 0x9e, 0xaa, 0xae,
    ] {
        assert!(!opcodes.contains(&op), "{op:#x} listed");
        assert_eq!(good(&lun, &rsoc(false, 3, op, 0), 64), [0, 1, 0, 0]);
        let mut cdb = [0u8; 16];
        cdb[0] = op;
        assert_eq!(fail(&lun, &cdb), INVALID_OPCODE, "{op:#x}");
    }
    // The disk table is unchanged by the cd one.
    assert!(table::all().any(|o| o.opcode == 0x2a));
    assert!(!table::all().any(|o| o.opcode == 0x46));
    assert!(table::opcode_known(LunKind::Disk, 0x08));
    assert!(!table::opcode_known(LunKind::Cdrom, 0x08));
}

#[test]
fn get_configuration_cd() {
    let lun = ready();
    let header = |len: u32, profile: u16| {
        let mut h = len.to_be_bytes().to_vec();
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&profile.to_be_bytes());
        h
    };
    let profile_list = [0, 0, 0x03, 8, 0x00, 0x10, 0, 0, 0x00, 0x08, 1, 0];
    let core = [0, 1, 0x0b, 8, 0, 0, 0, 1, 1, 0, 0, 0];
    let morphing = [0, 2, 0x07, 4, 0, 0, 0, 0];
    let removable = [0, 3, 0x0b, 4, 0x39, 0, 0, 0];
    let random_readable = [0, 0x10, 0x01, 8, 0, 0, 8, 0, 0, 1, 1, 0];
    let cd_read = [0, 0x1e, 0x09, 4, 0, 0, 0, 0];
    let dvd_read = [0, 0x1f, 0x04, 4, 0, 0, 0, 0];
    let all: Vec<u8> = [
        &header(72, 0x0008)[..],
        &profile_list,
        &core,
        &morphing,
        &removable,
        &random_readable,
        &cd_read,
        &dvd_read,
    ]
    .concat();
    assert_eq!(good(&lun, &get_configuration(0, 0, 1024), 1024), all);
    // RT 01b: current features only (not DVD Read).
    assert_eq!(
        good(&lun, &get_configuration(1, 0, 1024), 1024),
        all[..all.len() - 8]
            .iter()
            .skip(8)
            .fold(header(64, 8), |mut v, &b| {
                v.push(b);
                v
            })
    );
    // Starting feature number.
    let from_0010: Vec<u8> = [
        &header(32, 0x0008)[..],
        &random_readable,
        &cd_read,
        &dvd_read,
    ]
    .concat();
    assert_eq!(
        good(&lun, &get_configuration(0, 0x0010, 1024), 1024),
        from_0010
    );
    // RT 10b: exactly the one feature; header only for one the unit does not have.
    let one: Vec<u8> = [&header(12, 0x0008)[..], &dvd_read].concat();
    assert_eq!(good(&lun, &get_configuration(2, 0x001f, 1024), 1024), one);
    assert_eq!(
        good(&lun, &get_configuration(2, 0x0004, 1024), 1024),
        header(4, 0x0008)
    );
    // Reserved RT, allocation length truncation (the data length still counts everything).
    assert_eq!(
        fail(&lun, &get_configuration(3, 0, 1024)),
        invalid_cdb(1, Some(1))
    );
    assert_eq!(
        good(&lun, &get_configuration(0, 0, 8), 1024),
        header(72, 0x0008)
    );
    assert!(good(&lun, &get_configuration(0, 0, 0), 1024).is_empty());
}

#[test]
fn get_configuration_dvd_and_no_medium() {
    // One block more than an 80-minute CD: a DVD.
    let size = (mmc::CD_MAX_BLOCKS + 1) * 2048;
    let dvd = Arc::new(NullDev::new(size, Default::default()).unwrap());
    let lun = cd(Some(dvd));
    consume_power_on(&lun);
    let d = good(&lun, &get_configuration(0, 0, 1024), 1024);
    assert_eq!(d[6..8], [0x00, 0x10]);
    assert_eq!(
        d[8..20],
        [0, 0, 0x03, 8, 0x00, 0x10, 1, 0, 0x00, 0x08, 0, 0]
    );
    let d = good(&lun, &get_configuration(2, 0x001f, 1024), 1024);
    assert_eq!(d[8..], [0, 0x1f, 0x05, 4, 0, 0, 0, 0]);
    let d = good(&lun, &get_configuration(2, 0x001e, 1024), 1024);
    assert_eq!(d[8..], [0, 0x1e, 0x08, 4, 0, 0, 0, 0]);
    // Exactly 80 minutes: still a CD.
    let cd80 = Arc::new(NullDev::new(mmc::CD_MAX_BLOCKS * 2048, Default::default()).unwrap());
    let lun = cd(Some(cd80));
    let d = good(&lun, &get_configuration(0, 0, 1024), 1024);
    assert_eq!(d[6..8], [0x00, 0x08]);
    // No medium: no current profile, random readable not current; the current features are
    // the persistent ones.
    let lun = cd(None);
    let d = good(&lun, &get_configuration(0, 0, 1024), 1024);
    assert_eq!(d[..8], [0, 0, 0, 72, 0, 0, 0, 0]);
    assert_eq!(
        d[8..20],
        [0, 0, 0x03, 8, 0x00, 0x10, 0, 0, 0x00, 0x08, 0, 0]
    );
    let d = good(&lun, &get_configuration(1, 0, 1024), 1024);
    let codes: Vec<u8> = [8usize, 20, 32, 40].iter().map(|&i| d[i + 1]).collect();
    assert_eq!(codes, [0, 1, 2, 3]);
    assert_eq!(d.len(), 48);
}

#[test]
fn read_toc_formats() {
    let lun = ready();
    // Format 0, LBA: track 1 at 0, lead-out at the capacity.
    let toc_lba = [
        0, 18, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0, 0, 0x14, 0xaa, 0, 0, 0, 0, 64,
    ];
    assert_eq!(good(&lun, &read_toc(false, 0, 0), 64), toc_lba);
    assert_eq!(good(&lun, &read_toc(false, 0, 1), 64), toc_lba);
    // MSF: 00:02:00 and 64 + 150 frames = 00:02:64.
    assert_eq!(
        good(&lun, &read_toc(true, 0, 0), 64),
        [0, 18, 1, 1, 0, 0x14, 1, 0, 0, 0, 2, 0, 0, 0x14, 0xaa, 0, 0, 0, 2, 64]
    );
    // Starting at the lead-out.
    assert_eq!(
        good(&lun, &read_toc(false, 0, 0xaa), 64),
        [0, 10, 1, 1, 0, 0x14, 0xaa, 0, 0, 0, 0, 64]
    );
    assert_eq!(fail(&lun, &read_toc(false, 0, 2)), invalid_cdb(6, None));
    // Format 1: session information.
    assert_eq!(
        good(&lun, &read_toc(false, 1, 0), 64),
        [0, 10, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        good(&lun, &read_toc(true, 1, 0), 64),
        [0, 10, 1, 1, 0, 0x14, 1, 0, 0, 0, 2, 0]
    );
    // The SFF-8020 format field in the control byte.
    let mut cdb = read_toc(false, 0, 0);
    cdb[9] = 0x40;
    assert_eq!(good(&lun, &cdb, 64)[..2], [0, 10]);
    // Format 2: full TOC (A0, A1, A2, track 1), always MSF.
    let raw = [
        vec![0, 46, 1, 1],
        vec![1, 0x14, 0, 0xa0, 0, 0, 0, 0, 1, 0, 0],
        vec![1, 0x14, 0, 0xa1, 0, 0, 0, 0, 1, 0, 0],
        vec![1, 0x14, 0, 0xa2, 0, 0, 0, 0, 0, 2, 64],
        vec![1, 0x14, 0, 0x01, 0, 0, 0, 0, 0, 2, 0],
    ]
    .concat();
    assert_eq!(good(&lun, &read_toc(false, 2, 1), 64), raw);
    assert_eq!(good(&lun, &read_toc(true, 2, 0), 64), raw);
    assert_eq!(fail(&lun, &read_toc(false, 2, 2)), invalid_cdb(6, None));
    // PMA, ATIP, CD-TEXT: not on a pressed disc.
    for f in [3, 4, 5, 15] {
        assert_eq!(fail(&lun, &read_toc(false, f, 0)), invalid_cdb(2, Some(3)));
    }
    // Allocation length.
    let mut cdb = read_toc(false, 0, 0);
    cdb[7..9].copy_from_slice(&[0, 4]);
    assert_eq!(good(&lun, &cdb, 64), [0, 18, 1, 1]);
    // MSF of a long disc: 74 minutes.
    let long = Arc::new(NullDev::new(333_000 * 2048, Default::default()).unwrap());
    let lun = cd(Some(long));
    consume_power_on(&lun);
    // 333000 + 150 = 333150 frames = 74:02:00.
    assert_eq!(good(&lun, &read_toc(true, 0, 0xaa), 64)[8..], [0, 74, 2, 0]);
}

#[test]
fn read_capacity_and_reads() {
    let lun = ready();
    assert_eq!(
        good(&lun, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8),
        [0, 0, 0, 63, 0, 0, 8, 0]
    );
    let expect = |lba: u64, n: u64| -> Vec<u8> {
        (0..(n * 2048) as usize)
            .map(|k| pattern(lba + (k / 2048) as u64, k % 2048))
            .collect()
    };
    assert_eq!(good(&lun, &read10(0, 1), 2048), expect(0, 1));
    assert_eq!(good(&lun, &read10(5, 3), 3 * 2048), expect(5, 3));
    assert_eq!(good(&lun, &read10(63, 1), 2048), expect(63, 1));
    assert_eq!(good(&lun, &read12(10, 54), 54 * 2048), expect(10, 54));
    // DPO and FUA are accepted.
    let mut cdb = read10(1, 1);
    cdb[1] = 0x18;
    assert_eq!(good(&lun, &cdb, 2048), expect(1, 1));
    // Zero blocks.
    assert!(good(&lun, &read10(64, 0), 0).is_empty());
    // Past the end.
    assert_eq!(fail(&lun, &read10(64, 1)), LBA_OUT_OF_RANGE);
    assert_eq!(fail(&lun, &read10(63, 2)), LBA_OUT_OF_RANGE);
    assert_eq!(fail(&lun, &read12(u32::MAX, u32::MAX)), LBA_OUT_OF_RANGE);
    // Reserved bits: RDPROTECT is not MMC; READ(12) byte 10 has only Streaming.
    let mut cdb = read10(0, 1);
    cdb[1] = 0x20;
    assert_eq!(fail(&lun, &cdb), invalid_cdb(1, Some(5)));
    let mut cdb = read12(0, 1);
    cdb[10] = 0x80;
    assert_eq!(good(&lun, &cdb, 2048), expect(0, 1));
    cdb[10] = 0x3f;
    assert_eq!(fail(&lun, &cdb), invalid_cdb(10, Some(5)));
}

#[test]
fn disc_track_and_mechanism() {
    let lun = ready();
    let mut disc = vec![0u8; 34];
    disc[..9].copy_from_slice(&[0, 32, 0x0e, 1, 1, 1, 1, 0x20, 0]);
    disc[16..24].fill(0xff);
    let di = |ty: u8| [0x51, ty, 0, 0, 0, 0, 0, 0, 64, 0];
    assert_eq!(good(&lun, &di(0), 64), disc);
    assert_eq!(fail(&lun, &di(1)), invalid_cdb(1, Some(2)));
    // Track information by track 1, session 1 and an LBA inside.
    let mut track = vec![0u8; 48];
    track[..8].copy_from_slice(&[0, 46, 1, 1, 0, 0x04, 0x01, 0x02]);
    track[24..28].copy_from_slice(&64u32.to_be_bytes());
    track[28..32].copy_from_slice(&63u32.to_be_bytes());
    let ti = |ty: u8, n: u32| {
        let [a, b, c, d] = n.to_be_bytes();
        [0x52, ty, a, b, c, d, 0, 0, 64, 0]
    };
    assert_eq!(good(&lun, &ti(1, 1), 64), track);
    assert_eq!(good(&lun, &ti(2, 1), 64), track);
    assert_eq!(good(&lun, &ti(0, 63), 64), track);
    assert_eq!(fail(&lun, &ti(0, 64)), LBA_OUT_OF_RANGE);
    assert_eq!(fail(&lun, &ti(1, 2)), invalid_cdb(2, None));
    assert_eq!(fail(&lun, &ti(3, 1)), invalid_cdb(1, Some(1)));
    // Mechanism status: no changer, tray closed, then open.
    let ms = [0xbd, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0];
    assert_eq!(good(&lun, &ms, 64), [0, 0, 0, 0, 0, 1, 0, 0]);
    good(&lun, &OPEN_TRAY, 0);
    assert_eq!(good(&lun, &ms, 64), [0, 0x10, 0, 0, 0, 1, 0, 0]);
    // Without a visible disc: not ready (tray open).
    assert_eq!(fail(&lun, &di(0)), TRAY_OPEN);
    assert_eq!(fail(&lun, &ti(1, 1)), TRAY_OPEN);
    // SET CD SPEED: accepted.
    assert!(good(
        &lun,
        &[0xbb, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0],
        0
    )
    .is_empty());
}

#[test]
fn no_medium() {
    let lun = cd(None);
    consume_power_on(&lun);
    assert!(lun.medium().is_none());
    for cdb in [
        &TUR[..],
        &read10(0, 1),
        &read12(0, 1),
        &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &read_toc(false, 0, 0),
        &[0x51, 0, 0, 0, 0, 0, 0, 0, 64, 0],
    ] {
        assert_eq!(fail(&lun, cdb), TRAY_CLOSED, "{cdb:02x?}");
    }
    // What works without a disc.
    good(&lun, &[0x12, 0, 0, 0, 36, 0], 36);
    good(&lun, &[0x5a, 0, 0x3f, 0, 0, 0, 0, 1, 0, 0], 256);
    good(&lun, &[0x1a, 0, 0x2a, 0, 255, 0], 256);
    good(&lun, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256);
    assert_eq!(media_event(&lun), (0, 0));
    good(&lun, &PREVENT, 0);
    // Opening a locked, empty drive: NOT READY, MEDIUM REMOVAL PREVENTED.
    assert_eq!(fail(&lun, &OPEN_TRAY), (2, 0x53, 2, NO_SKS));
    good(&lun, &ALLOW, 0);
    good(&lun, &OPEN_TRAY, 0);
    assert_eq!(fail(&lun, &TUR), TRAY_OPEN);
    good(&lun, &CLOSE_TRAY, 0);
    assert_eq!(
        fail(&lun, &TUR),
        TRAY_CLOSED,
        "closing an empty tray: no unit attention"
    );
    // The host loads a disc: unit attention, then ready.
    assert!(lun.load(image()).is_none());
    assert_eq!(fail(&lun, &TUR), MEDIUM_CHANGED);
    good(&lun, &TUR, 0);
    assert_eq!(media_event(&lun), (2, 2));
    assert_eq!(good(&lun, &read10(2, 1), 2048)[..4], [14, 27, 40, 53]);
}

#[test]
fn guest_eject_and_prevent() {
    let lun = ready();
    good(&lun, &PREVENT, 0);
    assert_eq!(fail(&lun, &OPEN_TRAY), (5, 0x53, 2, NO_SKS));
    good(&lun, &TUR, 0);
    assert!(!lun.tray_open());
    // The lock shows in the capabilities page.
    assert_eq!(good(&lun, &[0x1a, 0x08, 0x2a, 0, 255, 0], 255)[4 + 6], 0x2f);
    good(&lun, &ALLOW, 0);
    assert_eq!(good(&lun, &[0x1a, 0x08, 0x2a, 0, 255, 0], 255)[4 + 6], 0x2d);
    good(&lun, &OPEN_TRAY, 0);
    assert!(lun.tray_open());
    assert!(lun.medium().is_some(), "the disc stays on the tray");
    assert_eq!(fail(&lun, &TUR), TRAY_OPEN);
    assert_eq!(fail(&lun, &read10(0, 1)), TRAY_OPEN);
    assert_eq!(media_event(&lun), (3, 1));
    assert_eq!(media_event(&lun), (0, 1));
    // Opening an open tray, or locking an open tray, changes nothing.
    good(&lun, &OPEN_TRAY, 0);
    good(&lun, &PREVENT, 0);
    good(&lun, &OPEN_TRAY, 0);
    // START without LOEJ does not move the tray.
    good(&lun, &[0x1b, 0, 0, 0, 0x01, 0], 0);
    assert_eq!(fail(&lun, &TUR), TRAY_OPEN);
    // Closing it on the disc: unit attention for every nexus, NewMedia event.
    good(&lun, &CLOSE_TRAY, 0);
    assert_eq!(fail(&lun, &TUR), MEDIUM_CHANGED);
    good(&lun, &TUR, 0);
    assert_eq!(media_event(&lun), (2, 2));
    assert_eq!(media_event(&lun), (0, 2));
    // Power conditions: accepted without effect; reserved ones refused.
    good(&lun, &[0x1b, 0, 0, 0, 0x30, 0], 0);
    assert_eq!(
        fail(&lun, &[0x1b, 0, 0, 0, 0x40, 0]),
        invalid_cdb(4, Some(7))
    );
    // The FL bit is not supported.
    assert_eq!(
        fail(&lun, &[0x1b, 0, 0, 0, 0x04, 0]),
        invalid_cdb(4, Some(2))
    );
}

#[test]
fn host_eject_and_load() {
    let lun = ready();
    good(&lun, &PREVENT, 0);
    // Locked: the guest is asked to eject instead.
    assert_eq!(lun.eject(false).err(), Some(MediumLocked));
    assert!(lun.medium().is_some());
    assert_eq!(media_event(&lun), (1, 2));
    good(&lun, &TUR, 0);
    // Forced.
    let old = lun.eject(true).unwrap();
    assert!(old.is_some());
    assert!(lun.medium().is_none());
    assert!(lun.tray_open());
    assert_eq!(fail(&lun, &TUR), TRAY_OPEN);
    assert_eq!(media_event(&lun), (3, 1));
    // Eject of an empty drive.
    assert!(lun.eject(false).unwrap().is_none());
    assert_eq!(media_event(&lun), (0, 1));
    // Load: UA on every nexus (nexus 2 first sees power on), then NewMedia.
    assert!(lun.load(image()).is_none());
    assert!(!lun.tray_open());
    assert_eq!(fail(&lun, &TUR), MEDIUM_CHANGED);
    good(&lun, &TUR, 0);
    assert_eq!(media_event(&lun), (2, 2));
    // Swapping discs: unit attention again.
    assert!(lun.load(image()).is_some());
    assert_eq!(fail(&lun, &read10(0, 1)), MEDIUM_CHANGED);
    good(&lun, &read10(0, 1), 2048);
    // GET EVENT STATUS NOTIFICATION and GET CONFIGURATION neither report nor clear a unit
    // attention; TUR does.
    lun.load(image());
    assert_eq!(media_event(&lun), (2, 2));
    good(&lun, &get_configuration(0, 0, 8), 8);
    assert_eq!(fail(&lun, &TUR), MEDIUM_CHANGED);
    good(&lun, &TUR, 0);
}

#[test]
fn get_event_status_notification() {
    let lun = ready();
    // Polled only.
    let mut cdb = gesn(0x10);
    cdb[1] = 0;
    assert_eq!(fail(&lun, &cdb), invalid_cdb(1, Some(0)));
    // No supported class requested: NEA, header only.
    assert_eq!(good(&lun, &gesn(0x02), 64), [0, 0, 0x80, 0x10]);
    assert_eq!(good(&lun, &gesn(0), 64), [0, 0, 0x80, 0x10]);
    // Media class among others.
    assert_eq!(good(&lun, &gesn(0x5e), 64), [0, 4, 0x04, 0x10, 0, 2, 0, 0]);
    // An event is consumed only when the media class is reported.
    good(&lun, &OPEN_TRAY, 0);
    assert_eq!(good(&lun, &gesn(0x02), 64), [0, 0, 0x80, 0x10]);
    assert_eq!(media_event(&lun), (3, 1));
    // Allocation length: the header alone consumes the event too.
    good(&lun, &CLOSE_TRAY, 0);
    let mut cdb = gesn(0x10);
    cdb[8] = 4;
    assert_eq!(good(&lun, &cdb, 64), [0, 4, 0x04, 0x10]);
    assert_eq!(media_event(&lun), (0, 2));
}

#[test]
fn mode_pages() {
    let lun = ready();
    // Capabilities page, current values (QEMU's).
    let caps = [
        0x2a, 0x14, 0x3b, 0, 0x7f, 0xff, 0x2d, 0, 0x22, 0x60, 0, 2, 0x08, 0, 0x0b, 0, 0, 0, 0x0b,
        0, 0x0b, 0,
    ];
    let d = good(&lun, &[0x5a, 0x08, 0x2a, 0, 0, 0, 0, 1, 0, 0], 256);
    assert_eq!(d[..8], [0, 6 + 22, 0, 0, 0, 0, 0, 0]);
    assert_eq!(d[8..], caps);
    // Changeable: nothing.
    let d = good(&lun, &[0x5a, 0x08, 0x6a, 0, 0, 0, 0, 1, 0, 0], 256);
    assert_eq!(d[8..10], [0x2a, 0x14]);
    assert!(d[10..].iter().all(|&b| b == 0));
    // All pages: 01, 0A, 1A, 2A; block descriptor of 2048-byte blocks; no WP/DPOFUA byte.
    let d = good(&lun, &[0x1a, 0, 0x3f, 0, 255, 0], 255);
    assert_eq!(d[..4], [d.len() as u8 - 1, 0, 0, 8]);
    assert_eq!(d[4..12], [0, 0, 0, 64, 0, 0, 8, 0]);
    let mut pages = Vec::new();
    let mut i = 12;
    while i < d.len() {
        pages.push(d[i]);
        i += usize::from(d[i + 1]) + 2;
    }
    assert_eq!(i, d.len());
    assert_eq!(pages, [0x01, 0x0a, 0x1a, 0x2a]);
    // Disk pages are not there.
    for p in [0x04, 0x08] {
        assert_eq!(
            fail(&lun, &[0x1a, 0, p, 0, 255, 0]),
            invalid_cdb(2, Some(5))
        );
    }
    // MODE SELECT of the capabilities page as sensed: accepted (nothing changes).
    let mut p = vec![0u8; 8];
    p.extend_from_slice(&caps);
    let mut data = [0u8; 0];
    let o = lun.execute(&mut Command {
        cdb: &[0x55, 0x10, 0, 0, 0, 0, 0, 0, p.len() as u8, 0],
        data_out: &p,
        data_in: &mut data,
        nexus: 1,
    });
    assert_eq!(o.status, 0, "{:02x?}", o.sense);
    // The disk's mode pages are unchanged.
    let disk = LogicalUnit::new(image(), LunOptions::default());
    consume_power_on(&disk);
    assert_eq!(
        fail(&disk, &[0x1a, 0, 0x2a, 0, 255, 0]),
        invalid_cdb(2, Some(5))
    );
    assert_eq!(good(&disk, &[0x1a, 0, 0x08, 0, 255, 0], 255)[4 + 8], 0x08);
}

#[test]
fn kind_option_and_disk_defaults() {
    // `new` with kind Cdrom gives a cd too.
    let opts = LunOptions {
        kind: LunKind::Cdrom,
        ..Default::default()
    };
    let lun = LogicalUnit::new(image(), opts);
    assert_eq!(lun.options().kind, LunKind::Cdrom);
    assert_eq!((lun.block_size(), lun.blocks()), (2048, BLOCKS));
    assert_eq!(good(&lun, &[0x12, 0, 0, 0, 1, 0], 1), [0x05]);
    // `new_cdrom` forces the kind.
    let lun = LogicalUnit::new_cdrom(Some(image()), LunOptions::default());
    assert_eq!(lun.options().kind, LunKind::Cdrom);
    // Disks: the default kind, the device's block size.
    assert_eq!(LunOptions::default().kind, LunKind::Disk);
    let disk = LogicalUnit::new(image(), LunOptions::default());
    assert_eq!((disk.block_size(), disk.blocks()), (512, BLOCKS * 4));
    assert_eq!(good(&disk, &[0x12, 0, 0, 0, 2, 0], 2), [0x00, 0x00]);
}

#[test]
fn no_panic_on_any_cd_cdb() {
    let lun = ready();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let ops: Vec<_> = table::for_kind(LunKind::Cdrom).collect();
    for i in 0..20_000 {
        let op = ops[i % ops.len()];
        let mut cdb: Vec<u8> = op.usage.iter().map(|&m| next() as u8 & m).collect();
        cdb[0] = op.opcode;
        if let Some(sa) = op.service_action {
            cdb[1] = cdb[1] & 0xe0 | sa;
        }
        let (o, d) = run(&lun, next() % 3, &cdb, (next() % 9000) as usize);
        assert!(o.status == 0 || o.status == 2, "{cdb:02x?}");
        assert!(d.len() <= 9000);
        if i % 1000 == 999 {
            // Keep the disc in so medium commands get past the tray check.
            lun.load(image());
        }
    }
}
