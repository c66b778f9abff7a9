//! SBC command tests: data round trips, boundaries, exact sense data and field pointers.

use std::sync::Arc;

use vstor_blockdev::memory::{MemoryDev, MemoryOptions};
use vstor_blockdev::{BlockDev, OpenOptions};
use vstor_scsi_disk::{Command, LogicalUnit, LunOptions, Outcome};

const BS: usize = 512;
const BLOCKS: u64 = 2048; // 1 MiB

fn mem_lun() -> (Arc<MemoryDev>, LogicalUnit) {
    let dev = Arc::new(MemoryDev::new(BLOCKS * BS as u64, MemoryOptions::default()).unwrap());
    let lun = LogicalUnit::new(dev.clone(), LunOptions::default());
    (dev, lun)
}

/// Runs a command, retrying once when the first command of the nexus gets the power-on unit
/// attention.
fn run(lun: &LogicalUnit, cdb: &[u8], out: &[u8], in_len: usize) -> (Outcome, Vec<u8>) {
    for _ in 0..2 {
        let mut buf = vec![0u8; in_len];
        let o = lun.execute(&mut Command {
            cdb,
            data_out: out,
            data_in: &mut buf,
            nexus: 1,
        });
        if o.status == 2 && o.sense[2] & 0xf == 0x6 {
            continue;
        }
        buf.truncate(o.data_in_len);
        return (o, buf);
    }
    panic!("unit attention twice");
}

fn good(lun: &LogicalUnit, cdb: &[u8], out: &[u8], in_len: usize) -> Vec<u8> {
    let (o, d) = run(lun, cdb, out, in_len);
    assert_eq!(o.status, 0, "cdb {cdb:02x?}: sense {:02x?}", o.sense);
    d
}

/// (key, asc, ascq) of a CHECK CONDITION.
fn sense(lun: &LogicalUnit, cdb: &[u8], out: &[u8], in_len: usize) -> (u8, u8, u8, [u8; 3]) {
    let (o, _) = run(lun, cdb, out, in_len);
    assert_eq!(o.status, 2, "cdb {cdb:02x?} should fail");
    let s = &o.sense;
    // Fixed format, current error (VALID may be set when INFORMATION is filled).
    assert_eq!(s[0] & 0x7f, 0x70);
    (s[2] & 0xf, s[12], s[13], [s[15], s[16], s[17]])
}

const INVALID_FIELD: (u8, u8, u8) = (5, 0x24, 0);

fn invalid_field_at(lun: &LogicalUnit, cdb: &[u8], out: &[u8], byte: u16, bit: Option<u8>) {
    let (k, a, q, sks) = sense(lun, cdb, out, 0);
    assert_eq!((k, a, q), INVALID_FIELD, "cdb {cdb:02x?}");
    let b0 = 0xc0 | bit.map_or(0, |b| 0x08 | b);
    let [hi, lo] = byte.to_be_bytes();
    assert_eq!(sks, [b0, hi, lo], "field pointer for cdb {cdb:02x?}");
}

fn lba_out_of_range(lun: &LogicalUnit, cdb: &[u8], out: &[u8], in_len: usize) {
    let (k, a, q, _) = sense(lun, cdb, out, in_len);
    assert_eq!((k, a, q), (5, 0x21, 0), "cdb {cdb:02x?}");
}

fn rw6(op: u8, lba: u32, n: u8) -> Vec<u8> {
    vec![
        op,
        (lba >> 16) as u8 & 0x1f,
        (lba >> 8) as u8,
        lba as u8,
        n,
        0,
    ]
}

fn rw10(op: u8, lba: u32, n: u16) -> Vec<u8> {
    let mut c = vec![op, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&n.to_be_bytes());
    c
}

fn rw12(op: u8, lba: u32, n: u32) -> Vec<u8> {
    let mut c = vec![0u8; 12];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[6..10].copy_from_slice(&n.to_be_bytes());
    c
}

fn rw16(op: u8, lba: u64, n: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&n.to_be_bytes());
    c
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The (read, write) CDB pairs of every size for `n` blocks at `lba`.
fn all_sizes(lba: u32, n: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![
        (rw6(0x08, lba, n), rw6(0x0a, lba, n)),
        (rw10(0x28, lba, n.into()), rw10(0x2a, lba, n.into())),
        (rw12(0xa8, lba, n.into()), rw12(0xaa, lba, n.into())),
        (
            rw16(0x88, lba.into(), n.into()),
            rw16(0x8a, lba.into(), n.into()),
        ),
    ]
}

#[test]
fn read_write_round_trip_every_size() {
    let (dev, lun) = mem_lun();
    for (i, (r, w)) in all_sizes(100, 3).into_iter().enumerate() {
        let data = pattern(3 * BS, i as u8);
        assert!(good(&lun, &w, &data, 0).is_empty());
        assert_eq!(good(&lun, &r, &[], 3 * BS), data);
        let mut direct = vec![0u8; 3 * BS];
        dev.read_at(&mut direct, 100 * BS as u64).unwrap();
        assert_eq!(direct, data);
    }
    // FUA writes too.
    let mut w = rw10(0x2a, 7, 1);
    w[1] = 0x08;
    let data = pattern(BS, 9);
    good(&lun, &w, &data, 0);
    assert_eq!(good(&lun, &rw16(0x88, 7, 1), &[], BS), data);
}

#[test]
fn six_byte_zero_length_means_256_and_others_zero() {
    let (_dev, lun) = mem_lun();
    let data = pattern(256 * BS, 5);
    good(&lun, &rw6(0x0a, 10, 0), &data, 0);
    assert_eq!(good(&lun, &rw6(0x08, 10, 0), &[], 256 * BS), data);
    // Zero length on the larger forms transfers nothing.
    assert!(good(&lun, &rw10(0x28, 10, 0), &[], 4096).is_empty());
    assert!(good(&lun, &rw16(0x8a, 10, 0), &[], 0).is_empty());
    // ... even at the first LBA past the end (range check of a zero length is lba <= capacity).
    good(&lun, &rw10(0x28, BLOCKS as u32, 0), &[], 0);
}

#[test]
fn boundaries() {
    let (_dev, lun) = mem_lun();
    let last = (BLOCKS - 1) as u32;
    let block = pattern(BS, 1);
    for (r, w) in all_sizes(last, 1) {
        good(&lun, &w, &block, 0);
        assert_eq!(good(&lun, &r, &[], BS), block);
    }
    for (r, w) in all_sizes(last, 2) {
        lba_out_of_range(&lun, &r, &[], 2 * BS);
        lba_out_of_range(&lun, &w, &pattern(2 * BS, 0), 0);
    }
    for (r, w) in all_sizes(BLOCKS as u32, 1) {
        lba_out_of_range(&lun, &r, &[], BS);
        lba_out_of_range(&lun, &w, &block, 0);
    }
    // LBA + length overflowing 64 bits.
    lba_out_of_range(&lun, &rw16(0x88, u64::MAX, 2), &[], 2 * BS);
    lba_out_of_range(&lun, &rw16(0x8a, u64::MAX - 1, 0xffff_ffff), &[], 0);
}

#[test]
fn protect_fields_and_short_buffers() {
    let (_dev, lun) = mem_lun();
    for op in [0x28u8, 0x2a] {
        let mut c = rw10(op, 0, 1);
        c[1] = 0x20;
        invalid_field_at(&lun, &c, &[0; BS], 1, Some(7));
    }
    let mut c = rw16(0x8a, 0, 1);
    c[1] = 0xe0;
    invalid_field_at(&lun, &c, &[0; BS], 1, Some(7));
    // A reserved bit of byte 1 (the usage mask).
    let mut c = rw10(0x2a, 0, 1);
    c[1] = 0x04;
    invalid_field_at(&lun, &c, &[0; BS], 1, Some(2));
    // Data-out shorter than the transfer length: the transfer length field is at fault.
    invalid_field_at(&lun, &rw10(0x2a, 0, 2), &[0; BS], 7, None);
    invalid_field_at(&lun, &rw6(0x0a, 0, 2), &[0; BS], 4, None);
    invalid_field_at(&lun, &rw12(0xaa, 0, 2), &[0; BS], 6, None);
    invalid_field_at(&lun, &rw16(0x8a, 0, 2), &[0; BS], 10, None);
    // Data-in shorter than the transfer.
    let (k, a, q, sks) = sense(&lun, &rw10(0x28, 0, 2), &[], BS);
    assert_eq!(((k, a, q), sks), (INVALID_FIELD, [0xc0, 0, 7]));
}

#[test]
fn verify_and_write_and_verify() {
    let (_dev, lun) = mem_lun();
    let data = pattern(2 * BS, 3);
    // WRITE AND VERIFY(10/12/16), BYTCHK 0 and 1.
    let mut c = rw10(0x2e, 20, 2);
    good(&lun, &c, &data, 0);
    c[1] = 0x02;
    good(&lun, &c, &data, 0);
    let mut c = rw12(0xae, 22, 2);
    c[1] = 0x02;
    good(&lun, &c, &data, 0);
    good(&lun, &rw16(0x8e, 24, 2), &data, 0);
    c[1] = 0x04; // BYTCHK 10b: reserved
    invalid_field_at(&lun, &c, &data, 1, Some(2));
    assert_eq!(
        good(&lun, &rw10(0x28, 20, 6), &[], 6 * BS),
        [&data[..], &data, &data].concat()
    );

    // VERIFY BYTCHK 0: range only.
    good(&lun, &rw10(0x2f, 20, 2), &[], 0);
    lba_out_of_range(&lun, &rw16(0x8f, BLOCKS - 1, 2), &[], 0);
    // BYTCHK 1: compare.
    for mut c in [rw10(0x2f, 20, 2), rw12(0xaf, 20, 2), rw16(0x8f, 20, 2)] {
        c[1] = 0x02;
        good(&lun, &c, &data, 0);
        let mut bad = data.clone();
        bad[700] ^= 1;
        let (k, a, q, _) = sense(&lun, &c, &bad, 0);
        assert_eq!((k, a, q), (0xe, 0x1d, 0));
        // INFORMATION: the offset of the first miscompared byte, VALID set.
        let (o, _) = run(&lun, &c, &bad, 0);
        assert_eq!(o.sense[0], 0xf0);
        assert_eq!(&o.sense[3..7], &700u32.to_be_bytes());
    }
    // BYTCHK 11b: one block against every block.
    let block = pattern(BS, 8);
    good(&lun, &rw10(0x2a, 40, 1), &block, 0);
    good(&lun, &rw10(0x2a, 41, 1), &block, 0);
    let mut c = rw10(0x2f, 40, 2);
    c[1] = 0x06;
    good(&lun, &c, &block, 0);
    let mut c = rw10(0x2f, 40, 3);
    c[1] = 0x06;
    assert_eq!(sense(&lun, &c, &block, 0).0, 0xe);
    // VRPROTECT.
    let mut c = rw10(0x2f, 0, 1);
    c[1] = 0x40;
    invalid_field_at(&lun, &c, &[], 1, Some(7));
}

#[test]
fn read_capacity() {
    let (_dev, lun) = mem_lun();
    let d = good(&lun, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    assert_eq!(d, [0, 0, 0x07, 0xff, 0, 0, 0x02, 0]);
    // LBA without PMI.
    invalid_field_at(&lun, &[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0], &[], 2, None);

    let mut c = [0u8; 16];
    c[0] = 0x9e;
    c[1] = 0x10;
    c[13] = 32;
    let d = good(&lun, &c, &[], 64);
    assert_eq!(d.len(), 32);
    assert_eq!(u64::from_be_bytes(d[..8].try_into().unwrap()), BLOCKS - 1);
    assert_eq!(u32::from_be_bytes(d[8..12].try_into().unwrap()), BS as u32);
    assert_eq!(d[12], 0, "no protection");
    assert_eq!(d[13], 0, "physical = logical");
    // MemoryDev discards and reads discarded blocks as zeroes: LBPME and LBPRZ.
    assert_eq!(d[14], 0xc0);
    // Allocation length truncates.
    c[13] = 12;
    assert_eq!(good(&lun, &c, &[], 64).len(), 12);

    // A disk whose last LBA does not fit in 32 bits.
    let big = vstor_blockdev::open("null:4T", &OpenOptions::default()).unwrap();
    let lun = LogicalUnit::new(big, LunOptions::default());
    let d = good(&lun, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    assert_eq!(&d[..4], &[0xff; 4]);
    c[13] = 32;
    let d = good(&lun, &c, &[], 32);
    assert_eq!(
        u64::from_be_bytes(d[..8].try_into().unwrap()),
        (4u64 << 40) / 512 - 1
    );
}

#[test]
fn synchronize_cache() {
    let (_dev, lun) = mem_lun();
    good(&lun, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0);
    good(&lun, &[0x35, 0x02, 0, 0, 0, 0, 0, 0, 8, 0], &[], 0); // IMMED
    let mut c = rw16(0x91, 0, 0);
    c[1] = 0x02;
    good(&lun, &c, &[], 0);
    lba_out_of_range(&lun, &rw16(0x91, BLOCKS, 1), &[], 0);
    // SYNC_NV (obsolete) is not accepted.
    invalid_field_at(&lun, &[0x35, 0x04, 0, 0, 0, 0, 0, 0, 0, 0], &[], 1, Some(2));
}

fn unmap_list(ranges: &[(u64, u32)]) -> Vec<u8> {
    let mut p = vec![0u8; 8];
    for &(lba, n) in ranges {
        p.extend_from_slice(&lba.to_be_bytes());
        p.extend_from_slice(&n.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
    }
    let len = p.len();
    p[0..2].copy_from_slice(&((len - 2) as u16).to_be_bytes());
    p[2..4].copy_from_slice(&((len - 8) as u16).to_be_bytes());
    p
}

fn unmap_cdb(len: usize) -> Vec<u8> {
    let mut c = vec![0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[7..9].copy_from_slice(&(len as u16).to_be_bytes());
    c
}

#[test]
fn unmap_reads_back_zeroes_and_checks_lengths() {
    let (_dev, lun) = mem_lun();
    let data = pattern(16 * BS, 4);
    good(&lun, &rw10(0x2a, 0, 16), &data, 0);
    let p = unmap_list(&[(2, 3), (10, 2), (12, 0)]);
    good(&lun, &unmap_cdb(p.len()), &p, 0);
    let back = good(&lun, &rw10(0x28, 0, 16), &[], 16 * BS);
    for b in 0..16 {
        let blk = &back[b * BS..(b + 1) * BS];
        if (2..5).contains(&b) || (10..12).contains(&b) {
            assert!(blk.iter().all(|&x| x == 0), "block {b} unmapped");
        } else {
            assert_eq!(blk, &data[b * BS..(b + 1) * BS], "block {b} kept");
        }
    }
    // Parameter list length 0: nothing to do.
    good(&lun, &unmap_cdb(0), &[], 0);
    // 1..7: PARAMETER LIST LENGTH ERROR.
    let (k, a, q, _) = sense(&lun, &unmap_cdb(4), &p[..4], 0);
    assert_eq!((k, a, q), (5, 0x1a, 0));
    // Block descriptor data length not a multiple of 16, or longer than the list.
    let mut bad = p.clone();
    bad[3] = 17;
    assert_eq!(sense(&lun, &unmap_cdb(bad.len()), &bad, 0).1, 0x1a);
    let mut bad = p.clone();
    bad[2..4].copy_from_slice(&64u16.to_be_bytes());
    assert_eq!(sense(&lun, &unmap_cdb(bad.len()), &bad, 0).1, 0x1a);
    // Data-out shorter than the parameter list length.
    assert_eq!(sense(&lun, &unmap_cdb(p.len() + 16), &p, 0).1, 0x1a);
    // A descriptor past the end.
    let p2 = unmap_list(&[(0, 1), (BLOCKS - 1, 2)]);
    lba_out_of_range(&lun, &unmap_cdb(p2.len()), &p2, 0);
    let p2 = unmap_list(&[(u64::MAX, 1)]);
    lba_out_of_range(&lun, &unmap_cdb(p2.len()), &p2, 0);
    // The last block is fine.
    let p2 = unmap_list(&[(BLOCKS - 1, 1)]);
    good(&lun, &unmap_cdb(p2.len()), &p2, 0);
    // ANCHOR is not supported.
    let mut c = unmap_cdb(p.len());
    c[1] = 0x01;
    invalid_field_at(&lun, &c, &p, 1, Some(0));
}

fn ws10(lba: u32, n: u16, flags: u8) -> Vec<u8> {
    let mut c = rw10(0x41, lba, n);
    c[1] = flags;
    c
}

fn ws16(lba: u64, n: u32, flags: u8) -> Vec<u8> {
    let mut c = rw16(0x93, lba, n);
    c[1] = flags;
    c
}

#[test]
fn write_same() {
    let (_dev, lun) = mem_lun();
    let block = pattern(BS, 6);
    good(&lun, &ws10(100, 5, 0), &block, 0);
    let back = good(&lun, &rw10(0x28, 100, 5), &[], 5 * BS);
    assert!(back.chunks(BS).all(|c| c == &block[..]));
    good(&lun, &ws16(200, 3, 0), &block, 0);
    assert!(good(&lun, &rw10(0x28, 200, 3), &[], 3 * BS)
        .chunks(BS)
        .all(|c| c == &block[..]));
    // UNMAP with a zero block: reads back zeroes.
    good(&lun, &ws10(101, 2, 0x08), &[0; BS], 0);
    good(&lun, &ws16(200, 3, 0x08), &[0; BS], 0);
    let back = good(&lun, &rw10(0x28, 100, 5), &[], 5 * BS);
    assert_eq!(&back[..BS], &block[..]);
    assert!(back[BS..3 * BS].iter().all(|&x| x == 0));
    assert_eq!(&back[3 * BS..4 * BS], &block[..]);
    assert!(good(&lun, &rw10(0x28, 200, 3), &[], 3 * BS)
        .iter()
        .all(|&x| x == 0));
    // UNMAP with a non-zero block.
    invalid_field_at(&lun, &ws10(100, 1, 0x08), &block, 1, Some(3));
    // NDOB (16 only): zeroes without a data-out buffer.
    good(&lun, &rw10(0x2a, 300, 1), &block, 0);
    good(&lun, &ws16(300, 1, 0x01), &[], 0);
    good(&lun, &ws16(300, 1, 0x09), &[], 0);
    assert!(good(&lun, &rw10(0x28, 300, 1), &[], BS)
        .iter()
        .all(|&x| x == 0));
    invalid_field_at(&lun, &ws10(300, 1, 0x01), &block, 1, Some(0));
    // NUMBER OF LOGICAL BLOCKS 0: the whole-medium form is not supported.
    invalid_field_at(&lun, &ws10(0, 0, 0), &block, 7, None);
    invalid_field_at(&lun, &ws16(0, 0, 0), &block, 10, None);
    // Ranges, WRPROTECT, ANCHOR.
    good(&lun, &ws16(BLOCKS - 1, 1, 0), &block, 0);
    lba_out_of_range(&lun, &ws16(BLOCKS - 1, 2, 0), &block, 0);
    invalid_field_at(&lun, &ws10(0, 1, 0x20), &block, 1, Some(7));
    invalid_field_at(&lun, &ws10(0, 1, 0x10), &block, 1, Some(4));
    // No data-out block.
    invalid_field_at(&lun, &ws10(0, 1, 0), &[], 7, None);
}

fn caw(lba: u64, n: u8) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x89;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = n;
    c
}

#[test]
fn compare_and_write() {
    let (_dev, lun) = mem_lun();
    let old = pattern(2 * BS, 1);
    let new = pattern(2 * BS, 2);
    good(&lun, &rw10(0x2a, 50, 2), &old, 0);
    good(&lun, &caw(50, 2), &[&old[..], &new].concat(), 0);
    assert_eq!(good(&lun, &rw10(0x28, 50, 2), &[], 2 * BS), new);
    // Miscompare: the medium keeps the data.
    let (k, a, q, _) = sense(&lun, &caw(50, 2), &[&old[..], &old].concat(), 0);
    assert_eq!((k, a, q), (0xe, 0x1d, 0));
    assert_eq!(good(&lun, &rw10(0x28, 50, 2), &[], 2 * BS), new);
    // Zero blocks: nothing.
    good(&lun, &caw(50, 0), &[], 0);
    // Short data-out, range, FUA.
    invalid_field_at(&lun, &caw(50, 2), &new, 13, None);
    lba_out_of_range(&lun, &caw(BLOCKS - 1, 2), &[0; 4 * BS], 0);
    let mut c = caw(50, 2);
    c[1] = 0x08;
    good(&lun, &c, &[&new[..], &old].concat(), 0);
    c[1] = 0x40;
    invalid_field_at(&lun, &c, &[0; 4 * BS], 1, Some(7));
    // Reserved bytes 10..12.
    let mut c = caw(50, 1);
    c[11] = 1;
    invalid_field_at(&lun, &c, &[0; 2 * BS], 11, Some(0));
}

fn lba_status_cdb(lba: u64, alloc: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x9e;
    c[1] = 0x12;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    c
}

/// (lba, blocks, status) descriptors of a GET LBA STATUS response.
fn descriptors(d: &[u8]) -> Vec<(u64, u32, u8)> {
    let len = u32::from_be_bytes(d[..4].try_into().unwrap()) as usize;
    assert_eq!((len - 4) % 16, 0);
    d[8..(4 + len).min(d.len())]
        .chunks_exact(16)
        .map(|c| {
            (
                u64::from_be_bytes(c[..8].try_into().unwrap()),
                u32::from_be_bytes(c[8..12].try_into().unwrap()),
                c[12] & 0xf,
            )
        })
        .collect()
}

#[test]
fn get_lba_status_memory() {
    let (_dev, lun) = mem_lun();
    let p = unmap_list(&[(0, 8)]);
    good(&lun, &unmap_cdb(p.len()), &p, 0);
    // MemoryDev reports every block mapped (it has no block status of its own).
    let d = good(&lun, &lba_status_cdb(4, 4096), &[], 4096);
    assert_eq!(descriptors(&d), [(4, (BLOCKS - 4) as u32, 0)]);
    lba_out_of_range(&lun, &lba_status_cdb(BLOCKS, 4096), &[], 4096);
    good(&lun, &lba_status_cdb(BLOCKS - 1, 4096), &[], 4096);
    // Allocation length truncates.
    assert_eq!(good(&lun, &lba_status_cdb(0, 8), &[], 4096).len(), 8);
}

struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn get_lba_status_file_after_unmap() {
    let path = std::env::temp_dir().join(format!("vstor-sbc-test-{}.raw", std::process::id()));
    let tmp = TempFile(path);
    let f = std::fs::File::create(&tmp.0).unwrap();
    f.set_len(4 << 20).unwrap();
    drop(f);
    let dev = vstor_blockdev::open(tmp.0.to_str().unwrap(), &OpenOptions::default()).unwrap();
    assert!(dev.info().discard);
    let lun = LogicalUnit::new(dev, LunOptions::default());
    let bs = lun.block_size() as usize;
    let blocks = lun.blocks();
    // 2 MiB of data at the start, then unmap the 1 MiB in the middle of it.
    let per_mib = (1 << 20) / bs;
    let data = pattern(2 << 20, 7);
    let mut w = rw16(0x8a, 0, (2 * per_mib) as u32);
    good(&lun, &w, &data, 0);
    let p = unmap_list(&[(per_mib as u64 / 2, per_mib as u32)]);
    good(&lun, &unmap_cdb(p.len()), &p, 0);
    let d = good(&lun, &lba_status_cdb(0, 4096), &[], 4096);
    let h = per_mib as u64 / 2;
    let m = per_mib as u32;
    assert_eq!(
        descriptors(&d),
        [
            (0, m / 2, 0),
            (h, m, 1),
            (h + u64::from(m), m / 2, 0),
            (2 * u64::from(m), (blocks - 2 * u64::from(m)) as u32, 1),
        ]
    );
    let back = good(&lun, &rw16(0x88, 0, (2 * per_mib) as u32), &[], 2 << 20);
    assert!(back[(1 << 19)..(3 << 19)].iter().all(|&x| x == 0));
    assert_eq!(&back[..1 << 19], &data[..1 << 19]);
    // WRITE SAME with UNMAP deallocates too.
    w = ws16(0, m / 2, 0x08);
    good(&lun, &w, &vec![0; bs], 0);
    let d = good(&lun, &lba_status_cdb(0, 4096), &[], 4096);
    assert_eq!(descriptors(&d)[0], (0, m + m / 2, 1));
}

#[test]
fn start_stop_prevent_format() {
    let (_dev, lun) = mem_lun();
    good(&lun, &[0x1b, 0, 0, 0, 0, 0], &[], 0); // stop
    let (k, a, q, _) = sense(&lun, &rw10(0x28, 0, 1), &[], BS);
    assert_eq!((k, a, q), (2, 0x04, 0x02));
    good(&lun, &[0x1b, 0x01, 0, 0, 0x01, 0], &[], 0); // start, IMMED
    good(&lun, &rw10(0x28, 0, 1), &[], BS);
    good(&lun, &[0x1b, 0, 0, 0, 0x03, 0], &[], 0); // LOEJ accepted (as QEMU)
    good(&lun, &[0x1b, 0, 0, 0, 0x30, 0], &[], 0); // STANDBY: no effect
    good(&lun, &rw10(0x28, 0, 1), &[], BS);
    invalid_field_at(&lun, &[0x1b, 0, 0, 0, 0x40, 0], &[], 4, Some(7));
    invalid_field_at(&lun, &[0x1b, 0, 0, 0, 0x08, 0], &[], 4, Some(3));

    good(&lun, &[0x1e, 0, 0, 0, 1, 0], &[], 0);
    good(&lun, &[0x1e, 0, 0, 0, 0, 0], &[], 0);
    invalid_field_at(&lun, &[0x1e, 0, 0, 0, 4, 0], &[], 4, Some(2));

    good(&lun, &[0x04, 0, 0, 0, 0, 0], &[], 0);
    invalid_field_at(&lun, &[0x04, 0x10, 0, 0, 0, 0], &[], 1, Some(4));
}

#[test]
fn read_only_unit_refuses_writes() {
    let dev = Arc::new(MemoryDev::new(BLOCKS * BS as u64, MemoryOptions::default()).unwrap());
    let lun = LogicalUnit::new(
        dev,
        LunOptions {
            read_only: true,
            ..Default::default()
        },
    );
    good(&lun, &rw10(0x28, 0, 1), &[], BS);
    let p = unmap_list(&[(0, 1)]);
    for (c, out) in [
        (rw10(0x2a, 0, 1), vec![0; BS]),
        (ws16(0, 1, 0x08), vec![0; BS]),
        (unmap_cdb(p.len()), p.clone()),
        (caw(0, 1), vec![0; 2 * BS]),
    ] {
        let (k, a, q, _) = sense(&lun, &c, &out, 0);
        assert_eq!((k, a, q), (7, 0x27, 0), "cdb {c:02x?}");
    }
}

#[test]
fn no_panic_on_any_cdb() {
    let (_dev, lun) = mem_lun();
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let ops = [
        0x04u8, 0x08, 0x0a, 0x1b, 0x1e, 0x25, 0x48, 0x28, 0x2a, 0x2e, 0x2f, 0x35, 0x41, 0x42, 0x88,
        0x89, 0x8a, 0x8e, 0x8f, 0x91, 0x93, 0x9e, 0xa8, 0xaa, 0xae, 0xaf,
    ];
    let out = pattern(8 * BS, 3);
    for i in 0..20_000 {
        let len = [6usize, 10, 12, 16, 3][i % 5];
        let mut c: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        c[0] = ops[(next() % ops.len() as u64) as usize];
        if i % 3 == 0 {
            // Mostly small values, so handlers run past the range checks.
            for b in c.iter_mut().skip(2) {
                *b &= 0x03;
            }
        }
        let out_len = (next() % (out.len() as u64 + 1)) as usize;
        let mut buf = vec![0u8; (next() % 4096) as usize];
        let mut cmd = Command {
            cdb: &c,
            data_out: &out[..out_len],
            data_in: &mut buf,
            nexus: 2,
        };
        let o = lun.execute(&mut cmd);
        assert!(o.data_in_len <= buf.len());
        // Leave the unit started.
        lun.execute(&mut Command {
            cdb: &[0x1b, 0, 0, 0, 1, 0],
            data_out: &[],
            data_in: &mut [],
            nexus: 2,
        });
    }
}

fn sanitize_cdb(sa: u8, len: u16) -> Vec<u8> {
    let mut c = vec![0x48, sa, 0, 0, 0, 0, 0, 0, 0, 0];
    c[7..9].copy_from_slice(&len.to_be_bytes());
    c
}

#[test]
fn sanitize() {
    let (_dev, lun) = mem_lun();
    let data = pattern(4 * BS, 2);
    good(&lun, &rw10(0x2a, 0, 4), &data, 0);
    good(&lun, &rw10(0x2a, (BLOCKS - 4) as u32, 4), &data, 0);
    // BLOCK ERASE: everything reads zero.
    good(&lun, &sanitize_cdb(0x82, 0), &[], 0); // IMMED
    assert!(good(&lun, &rw10(0x28, 0, 4), &[], 4 * BS)
        .iter()
        .all(|&x| x == 0));
    assert!(good(&lun, &rw10(0x28, (BLOCKS - 4) as u32, 4), &[], 4 * BS)
        .iter()
        .all(|&x| x == 0));
    invalid_field_at(&lun, &sanitize_cdb(0x02, 4), &[0; 4], 7, None);
    // OVERWRITE with a 3-byte pattern, one pass.
    let p = [0x01, 0, 0, 3, 0xaa, 0xbb, 0xcc];
    good(&lun, &sanitize_cdb(0x01, 7), &p, 0);
    let want: Vec<u8> = [0xaa, 0xbb, 0xcc]
        .iter()
        .copied()
        .cycle()
        .take(BS)
        .collect();
    let back = good(&lun, &rw10(0x28, (BLOCKS - 2) as u32, 2), &[], 2 * BS);
    assert!(back.chunks(BS).all(|c| c == &want[..]));
    // INVERT with two passes ends on the inverted pattern.
    let p = [0x82, 0, 0, 1, 0x0f];
    good(&lun, &sanitize_cdb(0x01, 5), &p, 0);
    assert!(good(&lun, &rw10(0x28, 5, 1), &[], BS)
        .iter()
        .all(|&x| x == 0xf0));
    // Parameter list errors.
    let (k, a, q, sks) = sense(&lun, &sanitize_cdb(0x01, 5), &[0x00, 0, 0, 1, 0], 0);
    assert_eq!(((k, a, q), sks), ((5, 0x26, 0), [0x8c, 0, 0]), "OWCOUNT 0");
    let (k, a, q, sks) = sense(&lun, &sanitize_cdb(0x01, 5), &[0x01, 0, 0, 2, 0], 0);
    assert_eq!(
        ((k, a, q), sks),
        ((5, 0x26, 0), [0x80, 0, 2]),
        "pattern length"
    );
    let (k, a, q, sks) = sense(&lun, &sanitize_cdb(0x01, 5), &[0x21, 0, 0, 1, 0], 0);
    assert_eq!(((k, a, q), sks), ((5, 0x26, 0), [0x8e, 0, 0]), "TEST");
    invalid_field_at(&lun, &sanitize_cdb(0x01, 3), &[1, 0, 0], 7, None);
    // CRYPTO ERASE and EXIT FAILURE MODE are not supported; AUSE is not accepted.
    invalid_field_at(&lun, &sanitize_cdb(0x03, 0), &[], 1, Some(4));
    invalid_field_at(&lun, &sanitize_cdb(0x22, 0), &[], 1, Some(5));
}
