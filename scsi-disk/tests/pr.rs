//! Persistent reservation tests: PERSISTENT RESERVE IN/OUT data and sense, the access rules
//! of every reservation type, unit attentions, RESERVE(6)/(10) interplay, APTPL persistence.

use std::path::PathBuf;
use std::sync::Arc;

use vstor_blockdev::memory::MemoryDev;
use vstor_scsi_disk::pr::{self, MAX_REGISTRATIONS};
use vstor_scsi_disk::{Command, LogicalUnit, LunOptions, Outcome};

const SIZE: u64 = 1 << 20;
const CONFLICT: u8 = 0x18;

fn unit_with(opts: LunOptions) -> LogicalUnit {
    let dev = Arc::new(MemoryDev::new(SIZE, Default::default()).unwrap());
    LogicalUnit::new(dev, opts)
}

/// A unit whose nexuses 1..=4 have consumed their power-on unit attention.
fn unit() -> LogicalUnit {
    let lun = unit_with(LunOptions::default());
    wake(&lun, &[1, 2, 3, 4]);
    lun
}

fn wake(lun: &LogicalUnit, nexuses: &[u64]) {
    for &n in nexuses {
        let (o, _) = run(lun, n, &[0; 6], &[]);
        assert_eq!(o.status, 2);
        assert_eq!((o.sense[12], o.sense[13]), (0x29, 0));
    }
}

fn run(lun: &LogicalUnit, nexus: u64, cdb: &[u8], out: &[u8]) -> (Outcome, Vec<u8>) {
    let mut data = vec![0u8; 65536];
    let o = lun.execute(&mut Command {
        cdb,
        data_out: out,
        data_in: &mut data,
        nexus,
    });
    data.truncate(o.data_in_len);
    (o, data)
}

fn good(lun: &LogicalUnit, nexus: u64, cdb: &[u8], out: &[u8]) -> Vec<u8> {
    let (o, d) = run(lun, nexus, cdb, out);
    assert_eq!(
        o.status, 0,
        "{cdb:02x?} from {nexus}: sense {:02x?}",
        o.sense
    );
    d
}

fn conflict(lun: &LogicalUnit, nexus: u64, cdb: &[u8], out: &[u8]) {
    let (o, d) = run(lun, nexus, cdb, out);
    assert_eq!(
        (o.status, o.sense.len(), d.len()),
        (CONFLICT, 0, 0),
        "{cdb:02x?} from {nexus}"
    );
}

/// (key, asc, ascq, sense-key specific bytes) of a CHECK CONDITION.
fn fail(lun: &LogicalUnit, nexus: u64, cdb: &[u8], out: &[u8]) -> (u8, u8, u8, [u8; 3]) {
    let (o, d) = run(lun, nexus, cdb, out);
    assert_eq!(
        o.status, 2,
        "{cdb:02x?} from {nexus}: status {:#x}",
        o.status
    );
    assert!(d.is_empty());
    let s = &o.sense;
    assert_eq!((s.len(), s[0], s[7]), (18, 0x70, 10));
    (s[2], s[12], s[13], [s[15], s[16], s[17]])
}

fn invalid_cdb(byte: u8, bit: Option<u8>) -> (u8, u8, u8, [u8; 3]) {
    (5, 0x24, 0, [0xc0 | bit.map_or(0, |b| 0x08 | b), 0, byte])
}

fn invalid_param(byte: u8, bit: Option<u8>) -> (u8, u8, u8, [u8; 3]) {
    (5, 0x26, 0, [0x80 | bit.map_or(0, |b| 0x08 | b), 0, byte])
}

const PLLE: (u8, u8, u8, [u8; 3]) = (5, 0x1a, 0, [0; 3]);

// Service actions and types.
const REGISTER: u8 = 0;
const RESERVE: u8 = 1;
const RELEASE: u8 = 2;
const CLEAR: u8 = 3;
const PREEMPT: u8 = 4;
const PREEMPT_AND_ABORT: u8 = 5;
const REGISTER_IGNORE: u8 = 6;
const REGISTER_AND_MOVE: u8 = 7;
const WE: u8 = 1;
const EA: u8 = 3;
const WE_RO: u8 = 5;
const EA_RO: u8 = 6;
const WE_AR: u8 = 7;
const EA_AR: u8 = 8;
const TYPES: [u8; 6] = [WE, EA, WE_RO, EA_RO, WE_AR, EA_AR];

fn out_cdb(sa: u8, scope_type: u8, len: u32) -> [u8; 10] {
    let l = len.to_be_bytes();
    [0x5f, sa, scope_type, 0, 0, l[0], l[1], l[2], l[3], 0]
}

fn in_cdb(sa: u8, alloc: u16) -> [u8; 10] {
    let a = alloc.to_be_bytes();
    [0x5e, sa, 0, 0, 0, 0, 0, a[0], a[1], 0]
}

fn params(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = flags;
    p
}

/// PERSISTENT RESERVE OUT with the 24-byte parameter list.
fn pro(lun: &LogicalUnit, nexus: u64, sa: u8, ty: u8, key: u64, sa_key: u64) -> Outcome {
    run(lun, nexus, &out_cdb(sa, ty, 24), &params(key, sa_key, 0)).0
}

fn pro_ok(lun: &LogicalUnit, nexus: u64, sa: u8, ty: u8, key: u64, sa_key: u64) {
    let o = pro(lun, nexus, sa, ty, key, sa_key);
    assert_eq!(
        o.status, 0,
        "sa {sa} type {ty} from {nexus}: {:02x?}",
        o.sense
    );
}

fn pro_conflict(lun: &LogicalUnit, nexus: u64, sa: u8, ty: u8, key: u64, sa_key: u64) {
    let o = pro(lun, nexus, sa, ty, key, sa_key);
    assert_eq!(
        (o.status, o.sense.len()),
        (CONFLICT, 0),
        "sa {sa} from {nexus}"
    );
}

fn register(lun: &LogicalUnit, nexus: u64, key: u64) {
    pro_ok(lun, nexus, REGISTER, 0, 0, key);
}

fn generation(d: &[u8]) -> u32 {
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// A nexus that only observes (never registers), retrying past its unit attentions.
fn observe(lun: &LogicalUnit, cdb: &[u8]) -> Vec<u8> {
    const OBSERVER: u64 = 0xdead;
    loop {
        let (o, d) = run(lun, OBSERVER, cdb, &[]);
        if o.status == 2 && o.sense[2] == 6 {
            continue;
        }
        assert_eq!(o.status, 0, "{cdb:02x?}: {:02x?}", o.sense);
        return d;
    }
}

fn read_keys(lun: &LogicalUnit) -> (u32, Vec<u64>) {
    let d = observe(lun, &in_cdb(0, 65535));
    let len = u32::from_be_bytes([d[4], d[5], d[6], d[7]]) as usize;
    assert_eq!(d.len(), 8 + len);
    let keys = d[8..]
        .chunks(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
        .collect();
    (generation(&d), keys)
}

/// (key, type) of the reservation, if any.
fn read_reservation(lun: &LogicalUnit) -> Option<(u64, u8)> {
    let d = observe(lun, &in_cdb(1, 4096));
    match d[4..8] {
        [0, 0, 0, 0] => {
            assert_eq!(d.len(), 8);
            None
        }
        [0, 0, 0, 0x10] => {
            assert_eq!(d.len(), 24);
            assert_eq!(d[16..21], [0; 5]);
            assert_eq!(d[22..24], [0; 2]);
            Some((u64::from_be_bytes(d[8..16].try_into().unwrap()), d[21]))
        }
        _ => panic!("bad READ RESERVATION {d:02x?}"),
    }
}

/// Pops the next unit attention of `nexus` with TEST UNIT READY: its (asc, ascq), or None.
fn next_ua(lun: &LogicalUnit, nexus: u64) -> Option<(u8, u8)> {
    let (o, _) = run(lun, nexus, &[0; 6], &[]);
    match o.status {
        0 => None,
        2 => {
            assert_eq!(o.sense[2], 6, "{:02x?}", o.sense);
            Some((o.sense[12], o.sense[13]))
        }
        s => panic!("status {s:#x}"),
    }
}

const RES_PREEMPTED: (u8, u8) = (0x2a, 0x03);
const RES_RELEASED: (u8, u8) = (0x2a, 0x04);
const REG_PREEMPTED: (u8, u8) = (0x2a, 0x05);

#[test]
fn register_and_read_keys() {
    let lun = unit();
    assert_eq!(read_keys(&lun), (0, vec![]));
    // Unregistered with a nonzero reservation key: conflict, no change.
    pro_conflict(&lun, 1, REGISTER, 0, 5, 0xaa);
    // Unregistered, service action key zero: GOOD, nothing happens.
    pro_ok(&lun, 1, REGISTER, 0, 0, 0);
    assert_eq!(read_keys(&lun), (0, vec![]));
    register(&lun, 1, 0xaa);
    register(&lun, 2, 0xbb);
    let d = good(&lun, 3, &in_cdb(0, 4096), &[]);
    let mut want = vec![0, 0, 0, 2, 0, 0, 0, 16];
    want.extend(0xaau64.to_be_bytes());
    want.extend(0xbbu64.to_be_bytes());
    assert_eq!(d, want);
    // Allocation length truncates; the header still tells the full length.
    assert_eq!(good(&lun, 3, &in_cdb(0, 10), &[]), want[..10]);
    // Wrong key from a registered nexus: conflict.
    pro_conflict(&lun, 1, REGISTER, 0, 0xbb, 0xcc);
    // Key change.
    pro_ok(&lun, 1, REGISTER, 0, 0xaa, 0xcc);
    assert_eq!(read_keys(&lun), (3, vec![0xcc, 0xbb]));
    // REGISTER AND IGNORE EXISTING KEY: any key field.
    pro_ok(&lun, 2, REGISTER_IGNORE, 0, 0x1234, 0xdd);
    pro_ok(&lun, 3, REGISTER_IGNORE, 0, 0x1234, 0xee);
    assert_eq!(read_keys(&lun), (5, vec![0xcc, 0xdd, 0xee]));
    // Unregister.
    pro_ok(&lun, 2, REGISTER, 0, 0xdd, 0);
    pro_ok(&lun, 3, REGISTER_IGNORE, 0, 0, 0);
    assert_eq!(read_keys(&lun), (7, vec![0xcc]));
    // The same key twice (different nexuses) is listed twice.
    register(&lun, 4, 0xcc);
    assert_eq!(read_keys(&lun), (8, vec![0xcc, 0xcc]));
}

#[test]
fn reserve_and_read_reservation() {
    let lun = unit();
    // Not registered.
    pro_conflict(&lun, 1, RESERVE, WE, 0, 0);
    register(&lun, 1, 0xaa);
    register(&lun, 2, 0xbb);
    // Wrong key.
    pro_conflict(&lun, 1, RESERVE, WE, 0xbb, 0);
    assert_eq!(read_reservation(&lun), None);
    pro_ok(&lun, 1, RESERVE, WE, 0xaa, 0);
    let d = good(&lun, 2, &in_cdb(1, 4096), &[]);
    let mut want = vec![0, 0, 0, 2, 0, 0, 0, 0x10];
    want.extend(0xaau64.to_be_bytes());
    want.extend([0, 0, 0, 0, 0, WE, 0, 0]);
    assert_eq!(d, want);
    // The holder again, same type: GOOD, nothing changes (no generation change).
    pro_ok(&lun, 1, RESERVE, WE, 0xaa, 0);
    assert_eq!(read_reservation(&lun), Some((0xaa, WE)));
    // The holder with another type, another registrant: conflict.
    pro_conflict(&lun, 1, RESERVE, EA, 0xaa, 0);
    pro_conflict(&lun, 2, RESERVE, WE, 0xbb, 0);
    assert_eq!(
        read_keys(&lun).0,
        2,
        "reservations leave PRgeneration alone"
    );
    // All registrants: key 0 reported; every registrant is a holder.
    pro_ok(&lun, 1, RELEASE, WE, 0xaa, 0);
    pro_ok(&lun, 2, RESERVE, EA_AR, 0xbb, 0);
    assert_eq!(read_reservation(&lun), Some((0, EA_AR)));
    pro_ok(&lun, 1, RESERVE, EA_AR, 0xaa, 0);
    pro_conflict(&lun, 1, RESERVE, WE_AR, 0xaa, 0);
}

#[test]
fn report_capabilities() {
    let lun = unit();
    // ATP_C, no PTPL_C without a PR file; TMV, ALLOW COMMANDS 011b; the six types.
    assert_eq!(
        good(&lun, 1, &in_cdb(2, 4096), &[]),
        [0, 8, 0x04, 0xb0, 0xea, 0x01, 0, 0]
    );
    assert_eq!(good(&lun, 1, &in_cdb(2, 3), &[]), [0, 8, 0x04]);
    let dir = TempDir::new("caps");
    let lun = unit_with(LunOptions {
        pr_file: Some(dir.file()),
        ..Default::default()
    });
    wake(&lun, &[1]);
    assert_eq!(
        good(&lun, 1, &in_cdb(2, 4096), &[]),
        [0, 8, 0x05, 0xb0, 0xea, 0x01, 0, 0]
    );
    good(&lun, 1, &out_cdb(REGISTER, 0, 24), &params(0, 1, 0x01));
    assert_eq!(
        good(&lun, 1, &in_cdb(2, 4096), &[]),
        [0, 8, 0x05, 0xb1, 0xea, 0x01, 0, 0],
        "PTPL_A"
    );
}

fn full_status_descriptor(key: u64, all_tg_pt: bool, holder: Option<u8>, nexus: u64) -> Vec<u8> {
    let mut d = key.to_be_bytes().to_vec();
    d.extend([0; 4]);
    d.push(u8::from(all_tg_pt) << 1 | u8::from(holder.is_some()));
    d.push(holder.unwrap_or(0));
    d.extend([0, 0, 0, 0, 0, 1, 0, 0, 0, 24]);
    d.extend([6, 0, 0, 0]);
    d.extend(nexus.to_be_bytes());
    d.extend([0; 12]);
    d
}

#[test]
fn read_full_status() {
    let lun = unit();
    assert_eq!(good(&lun, 1, &in_cdb(3, 4096), &[]), [0; 8]);
    register(&lun, 1, 0xaa);
    wake(&lun, &[0x5000_c500_1234_5678]);
    // ALL_TG_PT is accepted and reported back.
    good(
        &lun,
        0x5000_c500_1234_5678,
        &out_cdb(REGISTER, 0, 24),
        &params(0, 0xbb, 0x04),
    );
    pro_ok(&lun, 1, RESERVE, EA_RO, 0xaa, 0);
    let d = good(&lun, 2, &in_cdb(3, 4096), &[]);
    let mut want = vec![0, 0, 0, 2, 0, 0, 0, 96];
    want.extend(full_status_descriptor(0xaa, false, Some(EA_RO), 1));
    want.extend(full_status_descriptor(
        0xbb,
        true,
        None,
        0x5000_c500_1234_5678,
    ));
    assert_eq!(d, want);
    assert_eq!(&d[8 + 24..8 + 48], pr::transport_id(1));
    // All registrants: every registrant is a holder.
    pro_ok(&lun, 1, RELEASE, EA_RO, 0xaa, 0);
    pro_ok(&lun, 1, RESERVE, WE_AR, 0xaa, 0);
    let d = good(&lun, 2, &in_cdb(3, 4096), &[]);
    assert_eq!((d[8 + 12], d[8 + 13]), (0x01, WE_AR));
    assert_eq!((d[56 + 12], d[56 + 13]), (0x03, WE_AR));
}

#[test]
fn release() {
    let lun = unit();
    register(&lun, 1, 0xaa);
    register(&lun, 2, 0xbb);
    register(&lun, 3, 0xcc);
    // Nothing reserved: GOOD.
    pro_ok(&lun, 1, RELEASE, WE, 0xaa, 0);
    // Not registered / wrong key: conflict.
    pro_conflict(&lun, 4, RELEASE, WE, 0, 0);
    pro_ok(&lun, 1, RESERVE, WE_RO, 0xaa, 0);
    pro_conflict(&lun, 1, RELEASE, WE_RO, 0xbb, 0);
    // A registrant that is not the holder: GOOD, no effect.
    pro_ok(&lun, 2, RELEASE, WE_RO, 0xbb, 0);
    assert_eq!(read_reservation(&lun), Some((0xaa, WE_RO)));
    // The holder with another type.
    assert_eq!(
        fail(&lun, 1, &out_cdb(RELEASE, WE, 24), &params(0xaa, 0, 0)),
        (5, 0x26, 0x04, [0; 3])
    );
    assert_eq!(read_reservation(&lun), Some((0xaa, WE_RO)));
    pro_ok(&lun, 1, RELEASE, WE_RO, 0xaa, 0);
    assert_eq!(read_reservation(&lun), None);
    // Registrants-only: RESERVATIONS RELEASED to the other registrants.
    for n in [2, 3] {
        assert_eq!(next_ua(&lun, n), Some(RES_RELEASED));
        assert_eq!(next_ua(&lun, n), None);
    }
    assert_eq!(next_ua(&lun, 1), None);
    assert_eq!(next_ua(&lun, 4), None, "not registered");
    // Write Exclusive: no unit attention.
    pro_ok(&lun, 1, RESERVE, WE, 0xaa, 0);
    pro_ok(&lun, 1, RELEASE, WE, 0xaa, 0);
    assert_eq!(next_ua(&lun, 2), None);
    // All registrants: any registrant releases it, the others are told.
    pro_ok(&lun, 1, RESERVE, EA_AR, 0xaa, 0);
    pro_ok(&lun, 3, RELEASE, EA_AR, 0xcc, 0);
    assert_eq!(read_reservation(&lun), None);
    assert_eq!(next_ua(&lun, 1), Some(RES_RELEASED));
    assert_eq!(next_ua(&lun, 2), Some(RES_RELEASED));
    assert_eq!(next_ua(&lun, 3), None);
    assert_eq!(read_keys(&lun).0, 3);
}

#[test]
fn unregistering_the_holder() {
    let lun = unit();
    register(&lun, 1, 0xaa);
    register(&lun, 2, 0xbb);
    pro_ok(&lun, 1, RESERVE, EA_RO, 0xaa, 0);
    pro_ok(&lun, 1, REGISTER, 0, 0xaa, 0);
    assert_eq!(read_reservation(&lun), None);
    assert_eq!(next_ua(&lun, 2), Some(RES_RELEASED));
    // Write Exclusive: released, nobody told.
    register(&lun, 1, 0xaa);
    pro_ok(&lun, 1, RESERVE, WE, 0xaa, 0);
    pro_ok(&lun, 1, REGISTER, 0, 0xaa, 0);
    assert_eq!(read_reservation(&lun), None);
    assert_eq!(next_ua(&lun, 2), None);
    // All registrants: kept until the last registrant goes.
    register(&lun, 1, 0xaa);
    pro_ok(&lun, 1, RESERVE, WE_AR, 0xaa, 0);
    pro_ok(&lun, 1, REGISTER, 0, 0xaa, 0);
    assert_eq!(read_reservation(&lun), Some((0, WE_AR)));
    pro_ok(&lun, 2, REGISTER, 0, 0xbb, 0);
    assert_eq!(read_reservation(&lun), None);
}

#[test]
fn clear() {
    let lun = unit();
    register(&lun, 1, 0xaa);
    register(&lun, 2, 0xbb);
    register(&lun, 3, 0xcc);
    pro_ok(&lun, 2, RESERVE, EA, 0xbb, 0);
    pro_conflict(&lun, 4, CLEAR, 0, 0, 0);
    pro_conflict(&lun, 1, CLEAR, 0, 0xbb, 0);
    // Scope and type are ignored.
    pro_ok(&lun, 1, CLEAR, 0xff, 0xaa, 0);
    assert_eq!(read_keys(&lun), (4, vec![]));
    assert_eq!(read_reservation(&lun), None);
    assert_eq!(next_ua(&lun, 2), Some(RES_PREEMPTED));
    assert_eq!(next_ua(&lun, 3), Some(RES_PREEMPTED));
    assert_eq!(next_ua(&lun, 1), None);
    assert_eq!(next_ua(&lun, 4), None);
}

#[test]
fn preempt_reservation() {
    for sa in [PREEMPT, PREEMPT_AND_ABORT] {
        let lun = unit();
        register(&lun, 1, 0xaa);
        register(&lun, 2, 0xbb);
        register(&lun, 3, 0xbb);
        register(&lun, 4, 0xdd);
        pro_ok(&lun, 2, RESERVE, WE, 0xbb, 0);
        // Not registered, wrong key.
        let o = run(&lun, 5, &out_cdb(sa, EA, 24), &params(0, 0xbb, 0)).0;
        assert_eq!(o.status, 2, "power on");
        pro_conflict(&lun, 5, sa, EA, 0, 0xbb);
        pro_conflict(&lun, 1, sa, EA, 0xcc, 0xbb);
        // Preempt the holder's key: every registration with it goes, the reservation moves
        // (with the new type) to the preempting nexus.
        pro_ok(&lun, 1, sa, EA, 0xaa, 0xbb);
        assert_eq!(read_keys(&lun), (5, vec![0xaa, 0xdd]));
        assert_eq!(read_reservation(&lun), Some((0xaa, EA)));
        assert_eq!(next_ua(&lun, 2), Some(REG_PREEMPTED));
        assert_eq!(next_ua(&lun, 3), Some(REG_PREEMPTED));
        // Type changed: the remaining registrants learn the old one was released.
        assert_eq!(next_ua(&lun, 4), Some(RES_RELEASED));
        assert_eq!(next_ua(&lun, 1), None);
        // The holder preempting itself: a type change, no registration lost.
        pro_ok(&lun, 1, sa, WE_RO, 0xaa, 0xaa);
        assert_eq!(read_reservation(&lun), Some((0xaa, WE_RO)));
        assert_eq!(read_keys(&lun), (6, vec![0xaa, 0xdd]));
        assert_eq!(next_ua(&lun, 4), Some(RES_RELEASED));
        // Same type: nobody told about a release.
        pro_ok(&lun, 1, sa, WE_RO, 0xaa, 0xaa);
        assert_eq!(next_ua(&lun, 4), None);
        // Another registrant's key (not the holder's): only its registrations go.
        pro_ok(&lun, 1, sa, EA, 0xaa, 0xdd);
        assert_eq!(read_keys(&lun), (8, vec![0xaa]));
        assert_eq!(read_reservation(&lun), Some((0xaa, WE_RO)));
        assert_eq!(next_ua(&lun, 4), Some(REG_PREEMPTED));
        // A key nobody holds: conflict. Zero: invalid.
        pro_conflict(&lun, 1, sa, EA, 0xaa, 0x77);
        assert_eq!(
            fail(&lun, 1, &out_cdb(sa, EA, 24), &params(0xaa, 0, 0)),
            invalid_param(8, None)
        );
    }
}

#[test]
fn preempt_without_reservation_and_all_registrants() {
    let lun = unit();
    register(&lun, 1, 0xaa);
    register(&lun, 2, 0xbb);
    register(&lun, 3, 0xcc);
    // No reservation: removes registrations only; zero key is invalid.
    assert_eq!(
        fail(&lun, 1, &out_cdb(PREEMPT, WE, 24), &params(0xaa, 0, 0)),
        invalid_param(8, None)
    );
    pro_conflict(&lun, 1, PREEMPT, WE, 0xaa, 0x99);
    pro_ok(&lun, 1, PREEMPT, WE, 0xaa, 0xbb);
    assert_eq!(read_keys(&lun), (4, vec![0xaa, 0xcc]));
    assert_eq!(read_reservation(&lun), None);
    assert_eq!(next_ua(&lun, 2), Some(REG_PREEMPTED));
    // All registrants, key zero: everybody else goes, the preempting nexus holds the new
    // reservation.
    register(&lun, 2, 0xbb);
    pro_ok(&lun, 2, RESERVE, WE_AR, 0xbb, 0);
    pro_ok(&lun, 3, PREEMPT, EA, 0xcc, 0);
    assert_eq!(read_keys(&lun), (6, vec![0xcc]));
    assert_eq!(read_reservation(&lun), Some((0xcc, EA)));
    assert_eq!(next_ua(&lun, 1), Some(REG_PREEMPTED));
    assert_eq!(next_ua(&lun, 2), Some(REG_PREEMPTED));
    assert_eq!(next_ua(&lun, 3), None);
    // All registrants, a key: only those registrations go, the reservation stays.
    register(&lun, 1, 0xaa);
    register(&lun, 2, 0xbb);
    pro_ok(&lun, 3, PREEMPT, EA_AR, 0xcc, 0xcc);
    pro_ok(&lun, 3, PREEMPT, EA_AR, 0xcc, 0);
    for n in [1, 2] {
        assert_eq!(next_ua(&lun, n), Some(RES_RELEASED), "type changed");
        assert_eq!(next_ua(&lun, n), Some(REG_PREEMPTED));
    }
    register(&lun, 1, 0xaa);
    register(&lun, 2, 0xbb);
    assert_eq!(read_reservation(&lun), Some((0, EA_AR)));
    pro_ok(&lun, 3, PREEMPT, EA_AR, 0xcc, 0xbb);
    assert_eq!(read_keys(&lun).1, vec![0xcc, 0xaa]);
    assert_eq!(read_reservation(&lun), Some((0, EA_AR)));
}

/// The REGISTER AND MOVE parameter list.
fn move_params(key: u64, sa_key: u64, flags: u8, port: u16, tid: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[17] = flags;
    p[18..20].copy_from_slice(&port.to_be_bytes());
    p[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
    p.extend_from_slice(tid);
    p
}

fn move_cdb(p: &[u8]) -> [u8; 10] {
    out_cdb(REGISTER_AND_MOVE, 0, p.len() as u32)
}

#[test]
fn register_and_move() {
    let lun = unit();
    register(&lun, 1, 0xaa);
    register(&lun, 2, 0xbb);
    let to3 = move_params(0xaa, 0x33, 0, 1, &pr::transport_id(3));
    // No reservation: conflict.
    conflict(&lun, 1, &move_cdb(&to3), &to3);
    pro_ok(&lun, 1, RESERVE, EA_RO, 0xaa, 0);
    // Not the holder, not registered, wrong key: conflict.
    let from2 = move_params(0xbb, 0x33, 0, 1, &pr::transport_id(3));
    conflict(&lun, 2, &move_cdb(&from2), &from2);
    conflict(&lun, 4, &move_cdb(&from2), &from2);
    conflict(&lun, 1, &move_cdb(&from2), &from2);
    // Field errors.
    let p = move_params(0xaa, 0, 0, 1, &pr::transport_id(3));
    assert_eq!(fail(&lun, 1, &move_cdb(&p), &p), invalid_param(8, None));
    let p = move_params(0xaa, 0x33, 0, 2, &pr::transport_id(3));
    assert_eq!(fail(&lun, 1, &move_cdb(&p), &p), invalid_param(18, None));
    let mut tid = pr::transport_id(3);
    tid[0] = 0x05; // iSCSI
    let p = move_params(0xaa, 0x33, 0, 1, &tid);
    assert_eq!(fail(&lun, 1, &move_cdb(&p), &p), invalid_param(24, Some(3)));
    tid[0] = 0x46; // format code 01b
    let p = move_params(0xaa, 0x33, 0, 1, &tid);
    assert_eq!(fail(&lun, 1, &move_cdb(&p), &p), invalid_param(24, Some(7)));
    let p = move_params(0xaa, 0x33, 0, 1, &pr::transport_id(1));
    assert_eq!(fail(&lun, 1, &move_cdb(&p), &p), invalid_param(24, None));
    let p = move_params(0xaa, 0x33, 0, 1, &pr::transport_id(3)[..20]);
    assert_eq!(fail(&lun, 1, &move_cdb(&p), &p), invalid_param(20, None));
    let p = move_params(0xaa, 0x33, 0x04, 1, &pr::transport_id(3));
    assert_eq!(fail(&lun, 1, &move_cdb(&p), &p), invalid_param(17, Some(2)));
    let p = move_params(0xaa, 0x33, 0x01, 1, &pr::transport_id(3));
    assert_eq!(
        fail(&lun, 1, &move_cdb(&p), &p),
        invalid_param(17, Some(0)),
        "APTPL without a PR file"
    );
    // TransportID longer than the parameter list: length error.
    let mut p = to3.clone();
    p[23] = 40;
    assert_eq!(fail(&lun, 1, &move_cdb(&p), &p), PLLE);
    assert_eq!(fail(&lun, 1, &out_cdb(REGISTER_AND_MOVE, 0, 20), &p), PLLE);
    assert_eq!(read_keys(&lun), (2, vec![0xaa, 0xbb]), "nothing changed");
    // The move: nexus 3 (never seen) registered with the key and holding the reservation.
    good(&lun, 1, &move_cdb(&to3), &to3);
    assert_eq!(read_keys(&lun), (3, vec![0xaa, 0xbb, 0x33]));
    assert_eq!(read_reservation(&lun), Some((0x33, EA_RO)));
    conflict(&lun, 1, &move_cdb(&to3), &to3);
    // Back to nexus 2 (registered: its key is replaced), unregistering nexus 3.
    let to2 = move_params(0x33, 0x22, 0x02, 1, &pr::transport_id(2));
    good(&lun, 3, &move_cdb(&to2), &to2);
    assert_eq!(read_keys(&lun), (4, vec![0xaa, 0x22]));
    assert_eq!(read_reservation(&lun), Some((0x22, EA_RO)));
    // All registrants reservations do not move.
    pro_ok(&lun, 2, RELEASE, EA_RO, 0x22, 0);
    pro_ok(&lun, 2, RESERVE, WE_AR, 0x22, 0);
    let p = move_params(0x22, 0x33, 0, 1, &pr::transport_id(3));
    conflict(&lun, 2, &move_cdb(&p), &p);
}

#[test]
fn cdb_and_parameter_list_errors() {
    let lun = unit();
    register(&lun, 1, 0xaa);
    let p = params(0xaa, 0, 0);
    // Scope other than logical unit; unsupported types.
    assert_eq!(
        fail(&lun, 1, &out_cdb(RESERVE, 0x10 | WE, 24), &p),
        invalid_cdb(2, Some(7))
    );
    for ty in [0, 2, 4, 9, 0xf] {
        for sa in [RESERVE, RELEASE, PREEMPT, PREEMPT_AND_ABORT] {
            assert_eq!(
                fail(&lun, 1, &out_cdb(sa, ty, 24), &p),
                invalid_cdb(2, Some(3))
            );
        }
    }
    // Parameter list length other than 24.
    for len in [0, 23, 25, 48] {
        let mut long = p.clone();
        long.resize(48, 0);
        assert_eq!(fail(&lun, 1, &out_cdb(REGISTER, 0, len), &long), PLLE);
        assert_eq!(fail(&lun, 1, &out_cdb(RESERVE, WE, len), &long), PLLE);
    }
    // Fewer bytes than the parameter list length.
    assert_eq!(fail(&lun, 1, &out_cdb(REGISTER, 0, 24), &p[..20]), PLLE);
    // SPEC_I_PT is not supported; reserved bits; APTPL without a PR file.
    for sa in [REGISTER, REGISTER_IGNORE, RESERVE, CLEAR] {
        assert_eq!(
            fail(&lun, 1, &out_cdb(sa, WE, 24), &params(0xaa, 0, 0x08)),
            invalid_param(20, Some(3))
        );
    }
    assert_eq!(
        fail(&lun, 1, &out_cdb(REGISTER, 0, 24), &params(0xaa, 1, 0x02)),
        invalid_param(20, Some(1))
    );
    assert_eq!(
        fail(&lun, 1, &out_cdb(REGISTER, 0, 24), &params(0xaa, 1, 0x01)),
        invalid_param(20, Some(0))
    );
    let mut b21 = params(0xaa, 1, 0);
    b21[21] = 0x40;
    assert_eq!(
        fail(&lun, 1, &out_cdb(REGISTER, 0, 24), &b21),
        invalid_param(21, Some(6))
    );
    // APTPL on other service actions is ignored.
    good(&lun, 1, &out_cdb(RESERVE, WE, 24), &params(0xaa, 0, 0x01));
    // Unknown service actions; reserved CDB bytes.
    assert_eq!(
        fail(&lun, 1, &out_cdb(8, 0, 24), &p),
        invalid_cdb(1, Some(4))
    );
    assert_eq!(fail(&lun, 1, &in_cdb(4, 100), &[]), invalid_cdb(1, Some(4)));
    let mut cdb = out_cdb(REGISTER, 0, 24);
    cdb[3] = 1;
    assert_eq!(fail(&lun, 1, &cdb, &p), invalid_cdb(3, Some(0)));
    let mut cdb = in_cdb(0, 100);
    cdb[2] = 0x80;
    assert_eq!(fail(&lun, 1, &cdb, &[]), invalid_cdb(2, Some(7)));
    assert_eq!(read_keys(&lun), (1, vec![0xaa]));
}

/// The commands of the conflict matrix, and whether each reads, writes or neither.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Class {
    Always,
    Read,
    Other,
}

fn matrix_commands() -> Vec<(&'static str, Vec<u8>, Vec<u8>, Class)> {
    vec![
        ("TEST UNIT READY", vec![0; 6], vec![], Class::Always),
        ("INQUIRY", vec![0x12, 0, 0, 0, 36, 0], vec![], Class::Always),
        (
            "READ CAPACITY(10)",
            vec![0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![],
            Class::Always,
        ),
        (
            "REPORT LUNS",
            vec![0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0],
            vec![],
            Class::Always,
        ),
        (
            "PERSISTENT RESERVE IN",
            in_cdb(0, 100).to_vec(),
            vec![],
            Class::Always,
        ),
        (
            "READ(10)",
            vec![0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            vec![],
            Class::Read,
        ),
        (
            "VERIFY(10)",
            vec![0x2f, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            vec![],
            Class::Read,
        ),
        (
            "MODE SENSE(6)",
            vec![0x1a, 0, 0x3f, 0, 255, 0],
            vec![],
            Class::Read,
        ),
        (
            "WRITE(10)",
            vec![0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            vec![0x5a; 512],
            Class::Other,
        ),
        (
            "SYNCHRONIZE CACHE(10)",
            vec![0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![],
            Class::Other,
        ),
        (
            "UNMAP",
            vec![0x42, 0, 0, 0, 0, 0, 0, 0, 8, 0],
            vec![0, 6, 0, 0, 0, 0, 0, 0],
            Class::Other,
        ),
        (
            "MODE SELECT(6)",
            vec![0x15, 0x10, 0, 0, 0, 0],
            vec![],
            Class::Other,
        ),
    ]
}

#[test]
fn conflict_matrix() {
    // Nexus 1 holds the reservation, nexus 2 is registered, nexus 3 is not.
    for ty in TYPES {
        let lun = unit();
        register(&lun, 1, 0xaa);
        register(&lun, 2, 0xbb);
        pro_ok(&lun, 1, RESERVE, ty, 0xaa, 0);
        let exclusive_access = matches!(ty, EA | EA_RO | EA_AR);
        let registrants_have_access = ty >= WE_RO;
        for (name, cdb, out, class) in matrix_commands() {
            for nexus in [1u64, 2, 3] {
                let access = nexus == 1 || (nexus == 2 && registrants_have_access);
                let allowed = access
                    || match class {
                        Class::Always => true,
                        Class::Read => !exclusive_access,
                        Class::Other => false,
                    };
                let (o, _) = run(&lun, nexus, &cdb, &out);
                let want = if allowed { 0 } else { CONFLICT };
                assert_eq!(
                    o.status, want,
                    "{name} from nexus {nexus} under type {ty}: {:02x?}",
                    o.sense
                );
            }
        }
        // PERSISTENT RESERVE OUT follows its own rules: a non-registrant may register.
        register(&lun, 3, 0xcc);
        if matches!(ty, WE_AR | EA_AR) {
            // Now a registrant, hence a holder.
            pro_ok(&lun, 3, RESERVE, ty, 0xcc, 0);
        } else {
            pro_conflict(&lun, 3, RESERVE, ty, 0xcc, 0);
        }
    }
}

#[test]
fn start_stop_and_prevent_allow_under_reservation() {
    let lun = unit();
    register(&lun, 1, 0xaa);
    pro_ok(&lun, 1, RESERVE, EA, 0xaa, 0);
    // START = 1, POWER CONDITION 0 and allowing removal are allowed; the rest conflicts.
    good(&lun, 2, &[0x1b, 0, 0, 0, 0x01, 0], &[]);
    conflict(&lun, 2, &[0x1b, 0, 0, 0, 0x00, 0], &[]);
    good(&lun, 2, &[0x1e, 0, 0, 0, 0, 0], &[]);
    conflict(&lun, 2, &[0x1e, 0, 0, 0, 1, 0], &[]);
}

#[test]
fn reserve6_interplay() {
    let lun = unit();
    let reserve6 = [0x16, 0, 0, 0, 0, 0];
    let release6 = [0x17, 0, 0, 0, 0, 0];
    let reserve10 = [0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    // Registrations: RESERVE and RELEASE conflict, whoever sends them.
    register(&lun, 1, 0xaa);
    for n in [1, 2] {
        conflict(&lun, n, &reserve6, &[]);
        conflict(&lun, n, &reserve10, &[]);
        conflict(&lun, n, &release6, &[]);
    }
    pro_ok(&lun, 1, REGISTER, 0, 0xaa, 0);
    // A RESERVE(6) reservation: PERSISTENT RESERVE IN/OUT conflict, the holder's too.
    good(&lun, 1, &reserve6, &[]);
    for n in [1, 2] {
        conflict(&lun, n, &in_cdb(0, 100), &[]);
        conflict(&lun, n, &in_cdb(2, 100), &[]);
        conflict(&lun, n, &out_cdb(REGISTER, 0, 24), &params(0, 0xaa, 0));
    }
    good(&lun, 1, &release6, &[]);
    register(&lun, 1, 0xaa);
    assert!(vstor_scsi_disk::spc::reservation_conflict(
        &lun, &reserve6, 2
    ));
}

#[test]
fn unit_attention_order() {
    let lun = unit();
    register(&lun, 1, 0xaa);
    register(&lun, 2, 0xbb);
    register(&lun, 3, 0xcc);
    pro_ok(&lun, 1, RESERVE, WE_RO, 0xaa, 0);
    pro_ok(&lun, 1, RELEASE, WE_RO, 0xaa, 0); // RESERVATIONS RELEASED to 2, 3
    pro_ok(&lun, 1, PREEMPT, WE, 0xaa, 0xbb); // REGISTRATIONS PREEMPTED to 2
    pro_ok(&lun, 1, RESERVE, EA, 0xaa, 0);
    pro_ok(&lun, 1, CLEAR, 0, 0xaa, 0); // RESERVATIONS PREEMPTED to 3
    assert_eq!(next_ua(&lun, 2), Some(RES_RELEASED));
    // REQUEST SENSE reports (and clears) the next one.
    let d = good(&lun, 2, &[0x03, 0, 0, 0, 18, 0], &[]);
    assert_eq!((d[2], d[12], d[13]), (6, 0x2a, 0x05));
    assert_eq!(next_ua(&lun, 2), None);
    assert_eq!(next_ua(&lun, 3), Some(RES_RELEASED));
    assert_eq!(next_ua(&lun, 3), Some(RES_PREEMPTED));
    assert_eq!(next_ua(&lun, 3), None);
    // A nexus first seen after its registration was preempted: power on first.
    let to7 = move_params(0xaa, 0x77, 0, 1, &pr::transport_id(7));
    register(&lun, 1, 0xaa);
    pro_ok(&lun, 1, RESERVE, WE, 0xaa, 0);
    good(&lun, 1, &move_cdb(&to7), &to7);
    pro_ok(&lun, 1, PREEMPT, EA, 0xaa, 0x77);
    assert_eq!(next_ua(&lun, 7), Some((0x29, 0)));
    assert_eq!(next_ua(&lun, 7), Some(REG_PREEMPTED));
    assert_eq!(next_ua(&lun, 7), None);
    // A pending unit attention is reported before a reservation conflict check passes:
    // INQUIRY does not consume it.
    assert_eq!(good(&lun, 1, &[0x12, 0, 0, 0, 36, 0], &[]).len(), 36);
}

#[test]
fn registration_limit() {
    let lun = unit();
    for n in 0..MAX_REGISTRATIONS as u64 {
        let o = pro(&lun, 100 + n, REGISTER, 0, 0, n + 1);
        // Every nexus starts with its power-on unit attention.
        assert_eq!(o.status, 2);
        pro_ok(&lun, 100 + n, REGISTER, 0, 0, n + 1);
    }
    let _ = pro(&lun, 5000, REGISTER, 0, 0, 1);
    assert_eq!(
        fail(&lun, 5000, &out_cdb(REGISTER, 0, 24), &params(0, 1, 0)),
        (5, 0x55, 0x04, [0; 3])
    );
    assert_eq!(
        fail(
            &lun,
            5000,
            &out_cdb(REGISTER_IGNORE, 0, 24),
            &params(0, 1, 0)
        ),
        (5, 0x55, 0x04, [0; 3])
    );
    // Registered nexuses still change their keys; READ FULL STATUS fits.
    pro_ok(&lun, 100, REGISTER, 0, 1, 0x99);
    let (generation, keys) = read_keys(&lun);
    assert_eq!(
        (generation, keys.len()),
        (MAX_REGISTRATIONS as u32 + 1, 1024)
    );
    let mut buf = vec![0u8; 65535];
    let o = lun.execute(&mut Command {
        cdb: &in_cdb(3, 65535),
        data_out: &[],
        data_in: &mut buf,
        nexus: 1,
    });
    assert_eq!((o.status, o.data_in_len), (0, 8 + 48 * MAX_REGISTRATIONS));
    // One unregisters: room for another.
    pro_ok(&lun, 101, REGISTER, 0, 2, 0);
    pro_ok(&lun, 5000, REGISTER, 0, 0, 1);
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "vstor-pr-test-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn file(&self) -> PathBuf {
        self.0.join("disk.img.pr")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pr_unit(path: &std::path::Path) -> LogicalUnit {
    let dev = Arc::new(MemoryDev::new(SIZE, Default::default()).unwrap());
    let lun = LogicalUnit::try_new(
        dev,
        LunOptions {
            pr_file: Some(path.to_path_buf()),
            ..Default::default()
        },
    )
    .unwrap();
    wake(&lun, &[1, 2, 3]);
    lun
}

#[test]
fn aptpl_persistence() {
    let dir = TempDir::new("aptpl");
    let path = dir.file();
    let lun = pr_unit(&path);
    // Without APTPL nothing is written.
    register(&lun, 1, 0xaa);
    assert!(!path.exists());
    // APTPL: written on this and every later change.
    good(&lun, 2, &out_cdb(REGISTER, 0, 24), &params(0, 0xbb, 0x05));
    assert!(path.exists());
    pro_ok(&lun, 1, RESERVE, EA_RO, 0xaa, 0);
    let status = good(&lun, 3, &in_cdb(3, 4096), &[]);
    let caps = good(&lun, 3, &in_cdb(2, 4096), &[]);
    assert_eq!(caps[3] & 1, 1, "PTPL_A");
    drop(lun);
    assert!(!dir.0.join("disk.img.pr.tmp").exists());
    // Power cycle: the same state (new nexuses get power on, the registrations stay).
    let lun = pr_unit(&path);
    assert_eq!(good(&lun, 3, &in_cdb(3, 4096), &[]), status);
    assert_eq!(good(&lun, 3, &in_cdb(2, 4096), &[]), caps);
    conflict(&lun, 3, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[]);
    good(&lun, 2, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[]);
    // REGISTER AND MOVE carries its own APTPL bit.
    let to3 = move_params(0xaa, 0x33, 0x03, 1, &pr::transport_id(3));
    good(&lun, 1, &move_cdb(&to3), &to3);
    drop(lun);
    let lun = pr_unit(&path);
    assert_eq!(read_keys(&lun).1, vec![0xbb, 0x33]);
    assert_eq!(read_reservation(&lun), Some((0x33, EA_RO)));
    // APTPL cleared: the file goes, and a power cycle forgets everything.
    pro_ok(&lun, 2, REGISTER, 0, 0xbb, 0xb2);
    assert!(!path.exists());
    drop(lun);
    let lun = pr_unit(&path);
    assert_eq!(read_keys(&lun), (0, vec![]));
    assert_eq!(read_reservation(&lun), None);
    // CLEAR under APTPL persists the empty state.
    good(&lun, 1, &out_cdb(REGISTER, 0, 24), &params(0, 0xaa, 0x01));
    pro_ok(&lun, 1, CLEAR, 0, 0xaa, 0);
    drop(lun);
    let lun = pr_unit(&path);
    assert_eq!(read_keys(&lun).1, Vec::<u64>::new());
    assert_eq!(good(&lun, 1, &in_cdb(2, 8), &[])[3] & 1, 1, "still APTPL");
}

#[test]
fn corrupt_pr_file() {
    let dir = TempDir::new("corrupt");
    let path = dir.file();
    let dev = || Arc::new(MemoryDev::new(SIZE, Default::default()).unwrap());
    let opts = || LunOptions {
        pr_file: Some(path.clone()),
        ..Default::default()
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"garbage\n".to_vec(), "header"),
        (vec![0xff, 0xfe, 0, 1, 2], "file"),
        (
            b"vstor-pr 1\nregistration 1 0 0\n".to_vec(),
            "registration.key",
        ),
        (
            b"vstor-pr 1\nregistration 1 aa 0\nreservation 9 1\n".to_vec(),
            "reservation.type",
        ),
        (
            b"vstor-pr 1\nregistration 1 aa 0\nreservation 1 2\n".to_vec(),
            "reservation.holder",
        ),
        (vec![b'#'; 300 << 10], "file"),
    ];
    for (content, field) in cases {
        std::fs::write(&path, &content).unwrap();
        let e = LogicalUnit::try_new(dev(), opts()).unwrap_err();
        assert_eq!(e.field, field);
        assert_eq!(e.path, path);
        let msg = e.to_string();
        assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
        assert!(msg.contains(field), "{msg}");
        // `new` does not panic: the unit starts without registrations.
        let lun = LogicalUnit::new(dev(), opts());
        wake(&lun, &[1]);
        assert_eq!(read_keys(&lun), (0, vec![]));
    }
    let e = {
        std::fs::write(
            &path,
            b"vstor-pr 1\ngeneration 3\nregistration 1 aa 0\nbogus\n",
        )
        .unwrap();
        LogicalUnit::try_new(dev(), opts()).unwrap_err()
    };
    assert_eq!((e.line, e.field), (4, "keyword"));
    // Random bytes never panic.
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for _ in 0..200 {
        let mut content = b"vstor-pr 1\n".to_vec();
        for _ in 0..(x % 200) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            content.push(
                b"0123456789abcdef registration reservation generation \n"[(x % 52) as usize],
            );
        }
        std::fs::write(&path, &content).unwrap();
        let _ = LogicalUnit::try_new(dev(), opts());
    }
}

#[test]
fn rsoc_lists_every_service_action() {
    let lun = unit();
    for (op, sas) in [(0x5eu8, 0..4u8), (0x5f, 0..8)] {
        for sa in sas {
            let d = good(
                &lun,
                1,
                &[0xa3, 0x0c, 0x02, op, 0, sa, 0, 0, 0x10, 0, 0, 0],
                &[],
            );
            let usage: &[u8] = if op == 0x5e {
                &[0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0]
            } else {
                &[0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0]
            };
            assert_eq!(d[..5], [0, 3, 0, 10, op]);
            assert_eq!(&d[5..], usage);
        }
    }
}

#[test]
fn no_panic_on_random_pr_commands() {
    let lun = unit();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20000 {
        let r = next();
        let op = if r & 1 == 0 { 0x5e } else { 0x5f };
        let sa = ((r >> 1) % 9) as u8;
        let ty = TYPES[((r >> 8) % 6) as usize] | if r & (1 << 12) != 0 { 0x10 } else { 0 };
        let key = (next() % 4) + 1;
        let sa_key = next() % 5;
        let nexus = next() % 5;
        let mut out = match sa {
            7 => move_params(
                key,
                sa_key,
                (next() % 4) as u8,
                1,
                &pr::transport_id(next() % 5),
            ),
            _ => params(
                if next() % 4 == 0 { 0 } else { key },
                sa_key,
                [0, 0x04][(next() % 2) as usize],
            ),
        };
        if next() % 16 == 0 {
            let i = (next() % out.len() as u64) as usize;
            out[i] ^= next() as u8;
        }
        let len = if next() % 16 == 0 {
            (next() % 64) as u32
        } else {
            out.len() as u32
        };
        let cdb = if op == 0x5e {
            in_cdb(sa, (next() % 200) as u16)
        } else {
            out_cdb(sa, ty, len)
        };
        let (o, d) = run(&lun, nexus, &cdb, &out);
        assert!(matches!(o.status, 0 | 2 | 0x18));
        assert!(d.len() <= 8192);
    }
    // The state is still consistent: READ FULL STATUS describes every key READ KEYS lists.
    let keys = read_keys(&lun).1;
    let d = good(&lun, 1, &in_cdb(3, 8192), &[]);
    assert_eq!(d.len(), 8 + 48 * keys.len());
    if let Some((_, ty)) = read_reservation(&lun) {
        assert!(TYPES.contains(&ty));
        assert!(d[8..].chunks(48).any(|c| c[12] & 1 == 1), "a holder");
    }
}
