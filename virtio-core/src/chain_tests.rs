use super::*;
use crate::memory::anonymous;

fn put(mem: &GuestMemory, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&addr.to_le_bytes());
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[12..14].copy_from_slice(&flags.to_le_bytes());
    b[14..16].copy_from_slice(&next.to_le_bytes());
    mem.write_slice(&b, GuestAddress(table + u64::from(i) * 16))
        .unwrap();
}

fn mem() -> GuestMemory {
    anonymous(&[(GuestAddress(0), 0x100000)]).unwrap()
}

fn walk(mem: &GuestMemory, head: u16) -> Result<Chain> {
    Chain::walk(mem, GuestAddress(0), 16, head, &ChainLimits::default())
}

#[test]
fn header_spanning_descriptors() {
    let m = mem();
    put(&m, 0, 0, 0x1000, 3, F_NEXT, 1);
    put(&m, 0, 1, 0x2000, 13, F_NEXT, 2);
    put(&m, 0, 2, 0x3000, 513, F_WRITE, 0);
    m.write_slice(b"abc", GuestAddress(0x1000)).unwrap();
    m.write_slice(b"defghijklmnop", GuestAddress(0x2000))
        .unwrap();
    let c = walk(&m, 0).unwrap();
    let mut r = c.reader();
    let mut b = [0u8; 16];
    r.read_exact(&m, &mut b).unwrap();
    assert_eq!(&b, b"abcdefghijklmnop");
    assert!(r.read_exact(&m, &mut [0u8; 1]).is_err());
    let mut w = c.writer();
    let mut status = w.split_tail("status", 1).unwrap();
    assert_eq!(w.remaining(), 512);
    status.write_all(&m, &[7]).unwrap();
    let mut s = [0u8; 1];
    m.read_slice(&mut s, GuestAddress(0x3000 + 512)).unwrap();
    assert_eq!(s[0], 7);
    let mut segs = Vec::new();
    w.take_segments(512, &mut segs).unwrap();
    assert_eq!(
        segs,
        vec![Segment {
            addr: GuestAddress(0x3000),
            len: 512
        }]
    );
}

#[test]
fn loops_are_detected() {
    let m = mem();
    put(&m, 0, 0, 0x1000, 16, F_NEXT, 1);
    put(&m, 0, 1, 0x1000, 16, F_NEXT, 0);
    assert!(matches!(walk(&m, 0), Err(Error::ChainTooLong { .. })));
}

#[test]
fn index_and_address_checks() {
    let m = mem();
    put(&m, 0, 0, 0x1000, 16, F_NEXT, 99);
    assert!(matches!(
        walk(&m, 0),
        Err(Error::DescriptorIndex { index: 99, .. })
    ));
    put(&m, 0, 0, 0xffff_0000, 16, 0, 0);
    assert!(matches!(walk(&m, 0), Err(Error::BadAddress { .. })));
    put(&m, 0, 0, u64::MAX - 4, 16, 0, 0);
    assert!(matches!(walk(&m, 0), Err(Error::BadAddress { .. })));
    assert!(matches!(walk(&m, 16), Err(Error::DescriptorIndex { .. })));
}

#[test]
fn wrong_direction_is_refused() {
    let m = mem();
    put(&m, 0, 0, 0x1000, 16, F_WRITE | F_NEXT, 1);
    put(&m, 0, 1, 0x2000, 16, 0, 0);
    assert!(matches!(
        walk(&m, 0),
        Err(Error::ReadableAfterWritable { .. })
    ));
}

#[test]
fn indirect_tables() {
    let m = mem();
    put(&m, 0, 0, 0x8000, 32, F_INDIRECT, 0);
    put(&m, 0x8000, 0, 0x1000, 16, F_NEXT, 1);
    put(&m, 0x8000, 1, 0x2000, 1, F_WRITE, 0);
    let c = walk(&m, 0).unwrap();
    assert_eq!((c.readable_len(), c.writable_len()), (16, 1));
    // Nested indirect.
    put(&m, 0x8000, 1, 0x9000, 16, F_INDIRECT, 0);
    assert!(matches!(walk(&m, 0), Err(Error::BadIndirect { .. })));
    // Not negotiated.
    let no = ChainLimits { indirect: false };
    assert!(Chain::walk(&m, GuestAddress(0), 16, 0, &no).is_err());
    // Bad length.
    put(&m, 0, 0, 0x8000, 20, F_INDIRECT, 0);
    assert!(matches!(walk(&m, 0), Err(Error::BadIndirect { .. })));
    // A loop inside the indirect table.
    put(&m, 0, 0, 0x8000, 32, F_INDIRECT, 0);
    put(&m, 0x8000, 1, 0x2000, 1, F_NEXT, 0);
    assert!(matches!(walk(&m, 0), Err(Error::ChainTooLong { .. })));
}

#[test]
fn overflow_is_refused() {
    let m = anonymous(&[(GuestAddress(0), 0x100000)]).unwrap();
    // 4 GiB total cannot fit in this memory, so the address check fires first; the length
    // check is still exercised by a long chain of maximal descriptors in other tests.
    put(&m, 0, 0, 0x1000, u32::MAX, 0, 0);
    assert!(walk(&m, 0).is_err());
}

#[test]
fn zero_length_descriptors_are_skipped() {
    let m = mem();
    put(&m, 0, 0, 0x1000, 0, F_NEXT, 1);
    put(&m, 0, 1, 0x2000, 4, F_WRITE, 0);
    let c = walk(&m, 0).unwrap();
    assert_eq!((c.readable_len(), c.writable_len()), (0, 4));
    assert!(c.reader().read_obj::<u32>(&m).is_err());
}

#[test]
fn walk_into_reuses_without_leaking_the_previous_chain() {
    let m = mem();
    // Chain at 0: three readable + one writable; chain at 5: one readable + one writable.
    put(&m, 0, 0, 0x1000, 16, F_NEXT, 1);
    put(&m, 0, 1, 0x2000, 32, F_NEXT, 2);
    put(&m, 0, 2, 0x3000, 64, F_NEXT, 3);
    put(&m, 0, 3, 0x4000, 8, F_WRITE, 0);
    put(&m, 0, 5, 0x5000, 16, F_NEXT, 6);
    put(&m, 0, 6, 0x6000, 1, F_WRITE, 0);
    // A loop at 8, to leave a partial walk behind.
    put(&m, 0, 8, 0x7000, 16, F_NEXT, 9);
    put(&m, 0, 9, 0x7000, 16, F_NEXT, 8);
    let lim = ChainLimits::default();
    let mut c = Chain::default();
    for head in [0u16, 8, 5, 0] {
        let fresh = walk(&m, head);
        let reused = c.walk_into(&m, GuestAddress(0), 16, head, &lim);
        match fresh {
            Ok(f) => {
                reused.unwrap();
                assert_eq!(c.head(), f.head());
                assert_eq!(c.readable_len(), f.readable_len());
                assert_eq!(c.writable_len(), f.writable_len());
                assert_eq!(c.readable, f.readable);
                assert_eq!(c.writable, f.writable);
            }
            Err(_) => assert!(reused.is_err()),
        }
    }
}
