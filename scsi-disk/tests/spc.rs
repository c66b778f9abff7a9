//! SPC command tests: exact data-in bytes and exact sense (key, ASC/ASCQ, field pointer).

use std::sync::Arc;

use vstor_blockdev::memory::MemoryDev;
use vstor_scsi_disk::{spc, table, Command, LogicalUnit, LunOptions, Outcome};

const SIZE: u64 = 64 << 20;

fn unit() -> LogicalUnit {
    let dev = Arc::new(MemoryDev::new(SIZE, Default::default()).unwrap());
    LogicalUnit::new(dev, LunOptions::default())
}

/// Runs `cdb` on `nexus` with a data-in buffer of `buf` bytes.
fn run(lun: &LogicalUnit, nexus: u64, cdb: &[u8], out: &[u8], buf: usize) -> (Outcome, Vec<u8>) {
    let mut data = vec![0u8; buf];
    let o = lun.execute(&mut Command {
        cdb,
        data_out: out,
        data_in: &mut data,
        nexus,
    });
    data.truncate(o.data_in_len);
    (o, data)
}

/// A unit whose nexus 1 has consumed its power-on unit attention.
fn ready() -> LogicalUnit {
    let lun = unit();
    let (o, _) = run(&lun, 1, &[0; 6], &[], 0);
    assert_eq!(o.status, 2);
    lun
}

/// Runs a command expected to succeed and returns its data.
fn good(lun: &LogicalUnit, cdb: &[u8], out: &[u8], buf: usize) -> Vec<u8> {
    let (o, d) = run(lun, 1, cdb, out, buf);
    assert_eq!(o.status, 0, "{cdb:02x?}: sense {:02x?}", o.sense);
    d
}

/// Runs a command expected to fail and returns (key, asc, ascq, sense-key specific bytes).
fn fail(lun: &LogicalUnit, cdb: &[u8], out: &[u8]) -> (u8, u8, u8, [u8; 3]) {
    let (o, d) = run(lun, 1, cdb, out, 4096);
    assert_eq!(o.status, 2, "{cdb:02x?} succeeded");
    assert!(d.is_empty());
    let s = &o.sense;
    assert_eq!(s.len(), 18);
    assert_eq!((s[0], s[7]), (0x70, 10));
    (s[2], s[12], s[13], [s[15], s[16], s[17]])
}

const NO_SKS: [u8; 3] = [0, 0, 0];

/// Field pointer bytes for a CDB field.
fn cdb_ptr(byte: u16, bit: Option<u8>) -> [u8; 3] {
    let b0 = 0xc0 | bit.map_or(0, |b| 0x08 | b);
    [b0, (byte >> 8) as u8, byte as u8]
}

/// Field pointer bytes for a parameter-list field.
fn param_ptr(byte: u16, bit: Option<u8>) -> [u8; 3] {
    let b0 = 0x80 | bit.map_or(0, |b| 0x08 | b);
    [b0, (byte >> 8) as u8, byte as u8]
}

fn invalid_cdb(byte: u16, bit: Option<u8>) -> (u8, u8, u8, [u8; 3]) {
    (5, 0x24, 0, cdb_ptr(byte, bit))
}

fn invalid_param(byte: u16, bit: Option<u8>) -> (u8, u8, u8, [u8; 3]) {
    (5, 0x26, 0, param_ptr(byte, bit))
}

#[test]
fn power_on_unit_attention_per_nexus() {
    let lun = unit();
    // INQUIRY and REPORT LUNS do not report (nor clear) the unit attention.
    assert_eq!(run(&lun, 1, &[0x12, 0, 0, 0, 36, 0], &[], 36).0.status, 0);
    assert_eq!(
        run(&lun, 1, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], &[], 16)
            .0
            .status,
        0
    );
    let (o, _) = run(&lun, 1, &[0; 6], &[], 0);
    assert_eq!(o.status, 2);
    assert_eq!((o.sense[2], o.sense[12], o.sense[13]), (6, 0x29, 0));
    assert_eq!(run(&lun, 1, &[0; 6], &[], 0).0.status, 0);
    // REQUEST SENSE reports the unit attention as its data and clears it.
    let (o, d) = run(&lun, 2, &[0x03, 0, 0, 0, 252, 0], &[], 252);
    assert_eq!(o.status, 0);
    assert_eq!(d.len(), 18);
    assert_eq!((d[0], d[2], d[7], d[12], d[13]), (0x70, 6, 10, 0x29, 0));
    assert_eq!(run(&lun, 2, &[0; 6], &[], 0).0.status, 0);
}

#[test]
fn invalid_opcode() {
    let lun = ready();
    assert_eq!(
        fail(&lun, &[0x02, 0, 0, 0, 0, 0], &[]),
        (5, 0x20, 0, NO_SKS)
    );
    let (o, _) = run(&lun, 1, &[0x02, 0, 0, 0, 0, 0], &[], 0);
    let mut want = vec![0u8; 18];
    want[0] = 0x70;
    want[2] = 5;
    want[7] = 10;
    want[12] = 0x20;
    assert_eq!(o.sense, want);
    // Unknown MAINTENANCE IN service action: byte 1, bit 4.
    assert_eq!(
        fail(&lun, &[0xa3, 0x1f, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]),
        invalid_cdb(1, Some(4))
    );
}

#[test]
fn request_sense_last_sense_and_format() {
    let lun = ready();
    // The last CHECK CONDITION of the nexus (the power-on unit attention), once.
    let d = good(&lun, &[0x03, 0, 0, 0, 18, 0], &[], 18);
    assert_eq!((d[0], d[2], d[12], d[13]), (0x70, 6, 0x29, 0));
    assert_eq!(good(&lun, &[0x03, 0, 0, 0, 18, 0], &[], 18), {
        let mut v = vec![0u8; 18];
        v[0] = 0x70;
        v[7] = 10;
        v
    });
    fail(&lun, &[0x12, 0, 0x80, 0, 36, 0], &[]);
    // Descriptor format: INVALID FIELD IN CDB with a sense-key specific descriptor.
    let d = good(&lun, &[0x03, 1, 0, 0, 252, 0], &[], 252);
    assert_eq!(d, [0x72, 5, 0x24, 0, 0, 0, 0, 8, 2, 6, 0, 0, 0xc0, 0, 2, 0]);
    // Reported once, then NO SENSE; allocation length truncates.
    assert_eq!(
        good(&lun, &[0x03, 1, 0, 0, 4, 0], &[], 252),
        [0x72, 0, 0, 0]
    );
    // DESC bit is the only bit of byte 1.
    assert_eq!(
        fail(&lun, &[0x03, 2, 0, 0, 4, 0], &[]),
        invalid_cdb(1, Some(1))
    );
}

#[test]
fn standard_inquiry() {
    let lun = ready();
    let d = good(&lun, &[0x12, 0, 0, 0, 0xff, 0], &[], 4096);
    assert_eq!(d.len(), 96);
    assert_eq!(&d[..8], &[0, 0, 7, 0x12, 91, 0x10, 0, 2]);
    assert_eq!(&d[8..36], b"VSTOR   VSTOR DISK      0001");
    assert_eq!(&d[58..64], &[0x00, 0xa0, 0x05, 0xc0, 0x06, 0x00]);
    // Allocation length truncation.
    assert_eq!(good(&lun, &[0x12, 0, 0, 0, 5, 0], &[], 4096), &d[..5]);
    assert_eq!(good(&lun, &[0x12, 0, 0, 0, 0, 0], &[], 4096), b"");
    // EVPD=0 with a page code.
    assert_eq!(
        fail(&lun, &[0x12, 0, 0x80, 0, 36, 0], &[]),
        invalid_cdb(2, None)
    );
    // Obsolete CMDDT and a NACA control byte are outside the usage data.
    assert_eq!(
        fail(&lun, &[0x12, 2, 0, 0, 36, 0], &[]),
        invalid_cdb(1, Some(1))
    );
    assert_eq!(
        fail(&lun, &[0x12, 0, 0, 0, 36, 4], &[]),
        invalid_cdb(5, Some(2))
    );
    // Short CDB.
    assert_eq!(fail(&lun, &[0x12, 0, 0, 0], &[]), invalid_cdb(0, None));
}

fn vpd(lun: &LogicalUnit, page: u8) -> Vec<u8> {
    let d = good(lun, &[0x12, 1, page, 0x10, 0, 0], &[], 4096);
    assert_eq!(d[..2], [0, page]);
    assert_eq!(usize::from(u16::from_be_bytes([d[2], d[3]])) + 4, d.len());
    d
}

#[test]
fn vpd_pages() {
    let lun = ready();
    let d = vpd(&lun, 0x00);
    assert_eq!(d, [0, 0, 0, 6, 0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
    for &p in &d[4..] {
        vpd(&lun, p);
    }
    assert_eq!(vpd(&lun, 0x80), b"\0\x80\0\x06vstor0");

    // Device identification: NAA 6, T10 vendor ID, relative target port, target port group.
    let d = vpd(&lun, 0x83);
    let mut descs = Vec::new();
    let mut off = 4;
    while off < d.len() {
        let len = usize::from(d[off + 3]);
        descs.push(d[off..off + 4 + len].to_vec());
        off += 4 + len;
    }
    assert_eq!(off, d.len());
    assert_eq!(descs.len(), 4);
    assert_eq!(descs[0][..4], [0x01, 0x03, 0, 16]);
    assert_eq!(descs[0][4] >> 4, 6, "NAA 6");
    assert_eq!(descs[0][4..], spc::naa_id(&lun));
    assert_eq!(descs[1][..4], [0x02, 0x01, 0, 14]);
    assert_eq!(&descs[1][4..], b"VSTOR   vstor0");
    assert_eq!(descs[2], [0x01, 0x14, 0, 4, 0, 0, 0, 1]);
    assert_eq!(descs[3], [0x01, 0x15, 0, 4, 0, 0, 0, 1]);

    // Block limits: the SBC handlers' limits.
    let d = vpd(&lun, 0xb0);
    assert_eq!(d.len(), 64);
    assert_eq!(d[5], vstor_scsi_disk::sbc::MAX_COMPARE_AND_WRITE_BLOCKS);
    assert_eq!(d[6..8], [0, 1], "optimal transfer length granularity");
    let u32at = |i: usize| u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]);
    assert_eq!(u32at(20), vstor_scsi_disk::sbc::MAX_UNMAP_LBA_COUNT);
    assert_eq!(u32at(24), vstor_scsi_disk::sbc::MAX_UNMAP_DESCRIPTORS);
    assert_eq!(u32at(28), 1, "optimal UNMAP granularity");
    assert_eq!(
        d[36..44],
        vstor_scsi_disk::sbc::MAX_WRITE_SAME_BLOCKS.to_be_bytes()
    );

    let d = vpd(&lun, 0xb1);
    assert_eq!(d.len(), 64);
    assert_eq!(d[4..6], [0, 1], "non-rotating");

    // Logical block provisioning: LBPU, LBPWS, LBPWS10, LBPRZ=001b, thin.
    assert_eq!(vpd(&lun, 0xb2), [0, 0xb2, 0, 4, 0, 0xe4, 0x02, 0]);

    assert_eq!(
        fail(&lun, &[0x12, 1, 0x81, 0, 0xff, 0], &[]),
        invalid_cdb(2, None)
    );
    // Truncation keeps the full page length in the header.
    assert_eq!(
        good(&lun, &[0x12, 1, 0x83, 0, 4, 0], &[], 4096),
        &vpd(&lun, 0x83)[..4]
    );
    // The transport's buffer truncates too.
    assert_eq!(
        good(&lun, &[0x12, 1, 0x80, 0, 0xff, 0], &[], 6),
        b"\0\x80\0\x06vs"
    );
}

#[test]
fn naa_from_wwn() {
    let dev = Arc::new(MemoryDev::new(SIZE, Default::default()).unwrap());
    let lun = LogicalUnit::new(
        dev,
        LunOptions {
            wwn: 0x5001_4050_0000_0001,
            ..Default::default()
        },
    );
    // The WWN as given: an 8-byte NAA 5 designator.
    let id = spc::naa_id(&lun);
    assert_eq!(id, 0x5001_4050_0000_0001u64.to_be_bytes());
    let other = ready();
    assert_eq!(spc::naa_id(&other).len(), 16);
    assert_eq!(spc::naa_id(&other)[0] >> 4, 6, "derived: NAA 6");
}

#[test]
fn report_luns() {
    let lun = ready();
    let cdb = |sel: u8, alloc: u8| [0xa0, 0, sel, 0, 0, 0, 0, 0, 0, alloc, 0, 0];
    let one = [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(good(&lun, &cdb(0, 0xff), &[], 4096), one);
    assert_eq!(good(&lun, &cdb(2, 0xff), &[], 4096), one);
    assert_eq!(good(&lun, &cdb(1, 0xff), &[], 4096), [0; 8]);
    assert_eq!(fail(&lun, &cdb(3, 0xff), &[]), invalid_cdb(2, None));
    assert_eq!(fail(&lun, &cdb(0, 15), &[]), invalid_cdb(6, None));
    assert_eq!(good(&lun, &cdb(0, 16), &[], 10), one[..10]);
}

fn rsoc(rctd: bool, options: u8, op: u8, sa: u16) -> [u8; 12] {
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
}

#[test]
fn report_supported_operation_codes_matches_table() {
    let lun = ready();
    for rctd in [false, true] {
        let d = good(&lun, &rsoc(rctd, 0, 0, 0), &[], 4096);
        let len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
        assert_eq!(len + 4, d.len());
        let step = if rctd { 20 } else { 8 };
        let mut reported = Vec::new();
        for e in d[4..].chunks(step) {
            assert_eq!(e.len(), step);
            let sa = u16::from_be_bytes([e[2], e[3]]);
            let servactv = e[5] & 1 != 0;
            assert_eq!(e[5] & 2 != 0, rctd, "CTDP");
            if rctd {
                assert_eq!(e[8..12], [0, 0x0a, 0, 0]);
            }
            let cdb_len = usize::from(u16::from_be_bytes([e[6], e[7]]));
            reported.push((e[0], servactv.then_some(sa as u8), cdb_len));
        }
        let table: Vec<_> = table::all()
            .map(|o| (o.opcode, o.service_action, o.usage.len()))
            .collect();
        assert_eq!(reported, table);
        assert!(reported.contains(&(0xa3, Some(0x0c), 12)), "lists itself");
    }
    // Each command alone returns its usage data.
    for o in table::all() {
        let queries: &[(u8, u16)] = match o.service_action {
            None => &[(1, 0), (3, 0x1234)],
            Some(sa) => &[(2, u16::from(sa)), (3, u16::from(sa))],
        };
        for &(opt, sa) in queries {
            for rctd in [false, true] {
                let d = good(&lun, &rsoc(rctd, opt, o.opcode, sa), &[], 4096);
                let n = o.usage.len();
                assert_eq!(
                    d[..4],
                    [0, u8::from(rctd) << 7 | 3, 0, n as u8],
                    "{}",
                    o.name
                );
                assert_eq!(d[4], o.opcode);
                assert_eq!(d[5..4 + n], o.usage[1..], "{}", o.name);
                assert_eq!(d.len(), 4 + n + if rctd { 12 } else { 0 });
            }
        }
    }
    // The query's own usage data.
    let d = good(&lun, &rsoc(false, 2, 0xa3, 0x0c), &[], 4096);
    assert_eq!(
        d,
        [0, 3, 0, 12, 0xa3, 0x0c, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]
    );
    // Not supported.
    assert_eq!(
        good(&lun, &rsoc(false, 1, 0x02, 0), &[], 4096),
        [0, 1, 0, 0]
    );
    assert_eq!(
        good(&lun, &rsoc(false, 2, 0xa3, 0x1e), &[], 4096),
        [0, 1, 0, 0]
    );
    assert_eq!(
        good(&lun, &rsoc(false, 3, 0xa3, 0x100), &[], 4096),
        [0, 1, 0, 0]
    );
    // Option 1 on an opcode with service actions, option 2 on one without.
    assert_eq!(
        fail(&lun, &rsoc(false, 1, 0xa3, 0), &[]),
        invalid_cdb(3, None)
    );
    assert_eq!(
        fail(&lun, &rsoc(false, 2, 0x12, 0), &[]),
        invalid_cdb(3, None)
    );
    // Reserved reporting options.
    assert_eq!(
        fail(&lun, &rsoc(false, 4, 0, 0), &[]),
        invalid_cdb(2, Some(2))
    );
    assert_eq!(
        fail(&lun, &rsoc(false, 0x08, 0, 0), &[]),
        invalid_cdb(2, Some(3))
    );
    // Allocation length truncation.
    let mut cdb = rsoc(false, 0, 0, 0);
    cdb[8..10].copy_from_slice(&[0, 6]);
    assert_eq!(good(&lun, &cdb, &[], 4096).len(), 6);
}

#[test]
fn report_supported_tmfs() {
    let lun = ready();
    let cdb = |repd: u8| [0xa3, 0x0d, repd, 0, 0, 0, 0, 0, 0, 0xff, 0, 0];
    assert_eq!(good(&lun, &cdb(0), &[], 4096), [0xdc, 0x03, 0, 0]);
    let d = good(&lun, &cdb(0x80), &[], 4096);
    assert_eq!(d[..4], [0xdc, 0x03, 0, 0x0c]);
    assert_eq!(d.len(), 16);
    assert_eq!(fail(&lun, &cdb(0x40), &[]), invalid_cdb(2, Some(6)));
}

#[test]
fn report_target_port_groups() {
    let lun = ready();
    let cdb = |fmt: u8| [0xa3, 0x0a | fmt << 5, 0, 0, 0, 0, 0, 0, 0, 0xff, 0, 0];
    let desc = [0x80, 0x01, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1];
    let d = good(&lun, &cdb(0), &[], 4096);
    assert_eq!(d[..4], [0, 0, 0, 12]);
    assert_eq!(d[4..], desc);
    let d = good(&lun, &cdb(1), &[], 4096);
    assert_eq!(d[..8], [0, 0, 0, 16, 0x10, 0, 0, 0]);
    assert_eq!(d[8..], desc);
    assert_eq!(fail(&lun, &cdb(2), &[]), invalid_cdb(1, Some(7)));
}

const CACHING: [u8; 20] = [
    0x08, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];
const CONTROL: [u8; 12] = [0x0a, 0x0a, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0];

#[test]
fn mode_sense() {
    let lun = ready();
    let d = good(&lun, &[0x1a, 0, 0x3f, 0, 0xff, 0], &[], 4096);
    assert_eq!(d.len(), 120);
    assert_eq!(d[..4], [119, 0, 0x10, 8]);
    assert_eq!(d[4..12], [0, 2, 0, 0, 0, 0, 2, 0], "131072 blocks of 512");
    let pages = &d[12..];
    let codes: Vec<u8> = {
        let mut v = Vec::new();
        let mut off = 0;
        while off < pages.len() {
            v.push(pages[off]);
            off += 2 + usize::from(pages[off + 1]);
        }
        v
    };
    assert_eq!(codes, [0x01, 0x04, 0x08, 0x0a, 0x1a]);
    assert_eq!(pages[..12], [0x01, 0x0a, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let geo = &pages[12..36];
    assert_eq!(geo[..6], [0x04, 0x16, 0, 0, 130, 16]);
    assert_eq!(geo[20..22], [0, 1]);
    assert_eq!(pages[36..56], CACHING);
    assert_eq!(pages[56..68], CONTROL);
    assert_eq!(pages[68..70], [0x1a, 0x26]);

    // Changeable: WCE and D_SENSE only; no block descriptor fields.
    let d = good(&lun, &[0x1a, 8, 0x48, 0, 0xff, 0], &[], 4096);
    let mut want = CACHING;
    want[2] = 4;
    assert_eq!(d, [&[23, 0, 0x10, 0][..], &want].concat());
    let d = good(&lun, &[0x5a, 0, 0x4a, 0, 0, 0, 0, 0, 0xff, 0], &[], 4096);
    let mut want = [0u8; 12];
    want[..3].copy_from_slice(&[0x0a, 0x0a, 4]);
    assert_eq!(
        d[..16],
        [0, 26, 0, 0x10, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(d[16..], want);
    // Default equals current here.
    assert_eq!(
        good(&lun, &[0x1a, 8, 0x88, 0, 0xff, 0], &[], 4096),
        [&[23, 0, 0x10, 0][..], &CACHING].concat()
    );

    // MODE SENSE(10) with LLBAA: 16-byte descriptor, LONGLBA.
    let d = good(&lun, &[0x5a, 0x10, 0x08, 0, 0, 0, 0, 0, 0xff, 0], &[], 4096);
    assert_eq!(d[..8], [0, 42, 0, 0x10, 1, 0, 0, 16]);
    assert_eq!(d[8..24], [0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0]);
    assert_eq!(d[24..], CACHING);
    // Subpage 0xff of a page is that page; other subpages are not implemented.
    assert_eq!(
        good(&lun, &[0x1a, 8, 0x08, 0xff, 0xff, 0], &[], 4096)[4..],
        CACHING
    );
    assert_eq!(
        fail(&lun, &[0x1a, 8, 0x08, 1, 0xff, 0], &[]),
        invalid_cdb(3, None)
    );
    // Saved values, unknown page, allocation length.
    assert_eq!(
        fail(&lun, &[0x1a, 0, 0xc8, 0, 0xff, 0], &[]),
        (5, 0x39, 0, NO_SKS)
    );
    assert_eq!(
        fail(&lun, &[0x1a, 0, 0x02, 0, 0xff, 0], &[]),
        invalid_cdb(2, Some(5))
    );
    assert_eq!(
        good(&lun, &[0x1a, 0, 0x3f, 0, 3, 0], &[], 4096),
        [119, 0, 0x10]
    );
    assert_eq!(
        fail(&lun, &[0x1a, 0x10, 0x3f, 0, 3, 0], &[]),
        invalid_cdb(1, Some(4))
    );
}

#[test]
fn mode_sense_write_protect() {
    let dev = Arc::new(MemoryDev::new(SIZE, Default::default()).unwrap());
    let lun = LogicalUnit::new(
        dev,
        LunOptions {
            read_only: true,
            ..Default::default()
        },
    );
    run(&lun, 1, &[0; 6], &[], 0);
    assert_eq!(
        good(&lun, &[0x1a, 8, 0x08, 0, 4, 0], &[], 4096),
        [23, 0, 0x90, 0]
    );
}

#[test]
fn mode_select_round_trip() {
    let lun = ready();
    // Nexus 2 exists (and has seen its power-on unit attention).
    assert_eq!(run(&lun, 2, &[0; 6], &[], 0).0.status, 2);
    let mut page = CACHING;
    page[2] = 4;
    let list = [&[0, 0, 0, 0][..], &page].concat();
    good(&lun, &[0x15, 0x10, 0, 0, list.len() as u8, 0], &list, 0);
    let d = good(&lun, &[0x1a, 8, 0x08, 0, 0xff, 0], &[], 4096);
    assert_eq!(d[4..], page);
    // The issuing nexus gets no unit attention, the other one does.
    assert_eq!(run(&lun, 1, &[0; 6], &[], 0).0.status, 0);
    let (o, _) = run(&lun, 2, &[0; 6], &[], 0);
    assert_eq!(
        (o.status, o.sense[2], o.sense[12], o.sense[13]),
        (2, 6, 0x2a, 1)
    );
    assert_eq!(run(&lun, 2, &[0; 6], &[], 0).0.status, 0);
    // Setting the same value again raises nothing.
    good(&lun, &[0x15, 0x10, 0, 0, list.len() as u8, 0], &list, 0);
    assert_eq!(run(&lun, 2, &[0; 6], &[], 0).0.status, 0);

    // MODE SELECT(10) with a block descriptor: D_SENSE on, WCE off.
    let mut control = CONTROL;
    control[2] = 4;
    let list = [
        &[0, 0, 0, 0, 0, 0, 0, 8][..],
        &[0, 2, 0, 0, 0, 0, 2, 0],
        &CACHING,
        &control,
    ]
    .concat();
    good(
        &lun,
        &[0x55, 0x10, 0, 0, 0, 0, 0, 0, list.len() as u8, 0],
        &list,
        0,
    );
    let d = good(&lun, &[0x1a, 8, 0x3f, 0, 0xff, 0], &[], 4096);
    assert_eq!(d[4 + 36..4 + 56], CACHING);
    assert_eq!(d[4 + 56..4 + 68], control);
    // Sense is now in descriptor format.
    let (o, _) = run(&lun, 1, &[0x02, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(o.sense, [0x72, 5, 0x20, 0, 0, 0, 0, 0]);
}

#[test]
fn mode_select_errors() {
    let lun = ready();
    let sel6 = |len: u8| [0x15, 0x10, 0, 0, len, 0];
    let mut page = CACHING;
    page[2] = 4;
    let list = [&[0, 0, 0, 0][..], &page].concat();
    assert_eq!(
        fail(&lun, &[0x15, 0, 0, 0, 24, 0], &list),
        invalid_cdb(1, Some(4))
    );
    assert_eq!(
        fail(&lun, &[0x15, 0x11, 0, 0, 24, 0], &list),
        invalid_cdb(1, Some(0))
    );
    assert_eq!(
        fail(&lun, &[0x55, 0x11, 0, 0, 0, 0, 0, 0, 28, 0], &list),
        invalid_cdb(1, Some(0))
    );
    // Zero length: nothing to do.
    good(&lun, &sel6(0), &[], 0);
    // Parameter list shorter than the header, than a page, or than the data-out buffer.
    assert_eq!(fail(&lun, &sel6(3), &list), (5, 0x1a, 0, NO_SKS));
    assert_eq!(fail(&lun, &sel6(10), &list), (5, 0x1a, 0, NO_SKS));
    assert_eq!(fail(&lun, &sel6(5), &list), (5, 0x1a, 0, NO_SKS));
    assert_eq!(fail(&lun, &sel6(25), &list), (5, 0x1a, 0, NO_SKS));
    // A non-changeable bit (RCD), an unknown page, a wrong page length, SPF, medium type.
    let mut bad = list.clone();
    bad[6] |= 1;
    assert_eq!(fail(&lun, &sel6(24), &bad), invalid_param(6, Some(0)));
    let mut bad = list.clone();
    bad[4] = 0x02;
    assert_eq!(fail(&lun, &sel6(24), &bad), invalid_param(4, Some(5)));
    let mut bad = list.clone();
    bad[5] = 0x11;
    assert_eq!(fail(&lun, &sel6(24), &bad), invalid_param(5, None));
    let mut bad = list.clone();
    bad[4] |= 0x40;
    assert_eq!(fail(&lun, &sel6(24), &bad), invalid_param(4, Some(6)));
    let mut bad = list.clone();
    bad[1] = 1;
    assert_eq!(fail(&lun, &sel6(24), &bad), invalid_param(1, None));
    // Block descriptor: bad length, wrong block count, wrong block length.
    let bd = |b: [u8; 8]| [&[0, 0, 0, 8][..], &b, &page].concat();
    assert_eq!(
        fail(&lun, &sel6(32), &bd([0, 0, 0, 1, 0, 0, 2, 0])),
        invalid_param(4, None)
    );
    assert_eq!(
        fail(&lun, &sel6(32), &bd([0, 0, 0, 0, 0, 0, 16, 0])),
        invalid_param(9, None)
    );
    let mut bad = bd([0; 8]);
    bad[3] = 4;
    assert_eq!(fail(&lun, &sel6(28), &bad), invalid_param(3, None));
    // A later bad page leaves the earlier good one unapplied.
    let mut control = CONTROL;
    control[2] = 1; // RLEC: not changeable
    let list2 = [&list[..], &control].concat();
    assert_eq!(fail(&lun, &sel6(36), &list2), invalid_param(26, Some(0)));
    assert_eq!(
        good(&lun, &[0x1a, 8, 0x08, 0, 0xff, 0], &[], 4096)[4..],
        CACHING
    );
    // The same list applies with a block count of zero.
    good(&lun, &sel6(32), &bd([0, 0, 0, 0, 0, 0, 2, 0]), 0);
    assert_eq!(
        good(&lun, &[0x1a, 8, 0x08, 0, 0xff, 0], &[], 4096)[4..],
        page
    );
}

#[test]
fn reserve_release() {
    let lun = ready();
    let tur = [0u8; 6];
    good(&lun, &[0x16, 0, 0, 0, 0, 0], &[], 0);
    assert!(!spc::reservation_conflict(&lun, &tur, 1));
    assert!(spc::reservation_conflict(&lun, &tur, 2));
    assert!(spc::reservation_conflict(&lun, &[0x16, 0, 0, 0, 0, 0], 2));
    assert!(!spc::reservation_conflict(&lun, &[0x12, 0, 0, 0, 36, 0], 2));
    assert!(!spc::reservation_conflict(&lun, &[0xa0; 12], 2));
    assert!(!spc::reservation_conflict(
        &lun,
        &[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        2
    ));
    assert!(spc::reservation_conflict(
        &lun,
        &[0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        2
    ));
    // RELEASE from another nexus: GOOD, no effect.
    assert_eq!(
        run(&lun, 2, &[0x17, 0, 0, 0, 0, 0], &[], 0).0.status,
        2,
        "power on"
    );
    assert_eq!(run(&lun, 2, &[0x17, 0, 0, 0, 0, 0], &[], 0).0.status, 0);
    assert!(spc::reservation_conflict(&lun, &tur, 2));
    // Through execute: the other nexus gets RESERVATION CONFLICT, no sense.
    let (o, _) = run(&lun, 2, &tur, &[], 0);
    assert_eq!((o.status, o.sense.len()), (0x18, 0));
    // RESERVE(10) again by the holder, then RELEASE(10).
    good(&lun, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0);
    good(&lun, &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0);
    assert!(!spc::reservation_conflict(&lun, &tur, 2));
    // Third-party and extent bits are not supported.
    assert_eq!(
        fail(&lun, &[0x16, 0x10, 0, 0, 0, 0], &[]),
        invalid_cdb(1, Some(4))
    );
}

#[test]
fn test_unit_ready() {
    let lun = ready();
    assert_eq!(good(&lun, &[0; 6], &[], 0), b"");
    assert_eq!(
        fail(&lun, &[0, 0, 0, 0, 1, 0], &[]),
        invalid_cdb(4, Some(0))
    );
}

#[test]
fn no_panic_on_any_spc_cdb() {
    let lun = ready();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for op in spc::OPS {
        for i in 0..2000 {
            let len = (next() % 18) as usize;
            let mut cdb: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(b) = cdb.first_mut() {
                *b = op.opcode;
            }
            if i % 2 == 0 {
                // Mostly valid CDBs: keep only the bits the command uses.
                for (b, m) in cdb.iter_mut().zip(op.usage).skip(1) {
                    *b &= m;
                }
                if let (Some(sa), Some(b)) = (op.service_action, cdb.get_mut(1)) {
                    *b = (*b & 0xe0) | sa;
                }
            }
            let out: Vec<u8> = (0..next() % 80).map(|_| next() as u8).collect();
            let buf = (next() % 300) as usize;
            let nexus = next() % 3;
            let (o, _) = run(&lun, nexus, &cdb, &out, buf);
            assert!(o.data_in_len <= buf);
        }
    }
}
