//! SBC-4 block commands: READ/WRITE (6/10/12/16), WRITE AND VERIFY, VERIFY, READ CAPACITY,
//! SYNCHRONIZE CACHE, UNMAP, WRITE SAME, COMPARE AND WRITE, GET LBA STATUS, START STOP UNIT,
//! PREVENT ALLOW MEDIUM REMOVAL and FORMAT UNIT.
//!
//! Every handler validates its CDB fields beyond the usage mask that [`crate::lun`] already
//! applied (reserved values inside a field, ranges against the capacity, buffer sizes) and
//! answers with the sense SBC-4 asks for.

use vstor_blockdev::request::run_blocking;
use vstor_blockdev::{IoOp, QueueOptions};

use crate::lun::{Command, LogicalUnit};
use crate::sense::Sense;
use crate::table::OpInfo;

/// MAXIMUM COMPARE AND WRITE LENGTH (Block Limits VPD page, byte 5): the largest NUMBER OF
/// LOGICAL BLOCKS COMPARE AND WRITE accepts.
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 255;

/// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT (Block Limits VPD page, bytes 24..28).
pub const MAX_UNMAP_DESCRIPTORS: u32 = 255;

/// MAXIMUM UNMAP LBA COUNT (Block Limits VPD page, bytes 20..24): the largest total number of
/// logical blocks one UNMAP command may name.
pub const MAX_UNMAP_LBA_COUNT: u32 = u32::MAX;

/// MAXIMUM WRITE SAME LENGTH (Block Limits VPD page, bytes 36..44); 0 = no limit.
pub const MAX_WRITE_SAME_BLOCKS: u64 = 0;

/// Largest number of descriptors GET LBA STATUS returns in one response.
const MAX_LBA_STATUS_DESCRIPTORS: usize = 64;

/// Bytes written per call when replicating a WRITE SAME pattern.
const WRITE_SAME_CHUNK: u64 = 1 << 20;

/// Control byte usage: NACA and LINK are not supported.
const CTL: u8 = 0x00;

macro_rules! op {
    ($opcode:expr, $sa:expr, $name:expr, $writes:expr, $handler:expr, [$($u:expr),* $(,)?]) => {
        OpInfo {
            opcode: $opcode,
            service_action: $sa,
            name: $name,
            usage: &[$($u),*],
            writes: $writes,
            handler: $handler,
        }
    };
}

/// SBC commands.
#[rustfmt::skip]
pub static OPS: &[OpInfo] = &[
    op!(0x04, None, "FORMAT UNIT", true, format_unit,
        [0x04, 0x2f, 0, 0, 0, CTL]),
    op!(0x08, None, "READ(6)", false, read,
        [0x08, 0x1f, 0xff, 0xff, 0xff, CTL]),
    op!(0x0a, None, "WRITE(6)", true, write,
        [0x0a, 0x1f, 0xff, 0xff, 0xff, CTL]),
    op!(0x1b, None, "START STOP UNIT", false, start_stop_unit,
        [0x1b, 0x01, 0, 0x0f, 0xf7, CTL]),
    op!(0x1e, None, "PREVENT ALLOW MEDIUM REMOVAL", false, prevent_allow,
        [0x1e, 0, 0, 0, 0x03, CTL]),
    op!(0x25, None, "READ CAPACITY(10)", false, read_capacity10,
        [0x25, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, CTL]),
    op!(0x28, None, "READ(10)", false, read,
        [0x28, 0xf8, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, CTL]),
    op!(0x2a, None, "WRITE(10)", true, write,
        [0x2a, 0xf8, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, CTL]),
    op!(0x2e, None, "WRITE AND VERIFY(10)", true, write_and_verify,
        [0x2e, 0xf6, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, CTL]),
    op!(0x2f, None, "VERIFY(10)", false, verify,
        [0x2f, 0xf6, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, CTL]),
    op!(0x35, None, "SYNCHRONIZE CACHE(10)", false, synchronize_cache,
        [0x35, 0x02, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, CTL]),
    op!(0x41, None, "WRITE SAME(10)", true, write_same,
        [0x41, 0xe8, 0xff, 0xff, 0xff, 0xff, 0x3f, 0xff, 0xff, CTL]),
    op!(0x42, None, "UNMAP", true, unmap,
        [0x42, 0, 0, 0, 0, 0, 0x3f, 0xff, 0xff, CTL]),
    op!(0x48, Some(0x01), "SANITIZE (OVERWRITE)", true, sanitize,
        [0x48, 0x9f, 0, 0, 0, 0, 0, 0xff, 0xff, CTL]),
    op!(0x48, Some(0x02), "SANITIZE (BLOCK ERASE)", true, sanitize,
        [0x48, 0x9f, 0, 0, 0, 0, 0, 0xff, 0xff, CTL]),
    op!(0x88, None, "READ(16)", false, read,
        [0x88, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0xff, 0xff, 0xff, 0xff, 0x3f, CTL]),
    op!(0x89, None, "COMPARE AND WRITE", true, compare_and_write,
        [0x89, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0x3f, CTL]),
    op!(0x8a, None, "WRITE(16)", true, write,
        [0x8a, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0xff, 0xff, 0xff, 0xff, 0x3f, CTL]),
    op!(0x8e, None, "WRITE AND VERIFY(16)", true, write_and_verify,
        [0x8e, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0xff, 0xff, 0xff, 0xff, 0x3f, CTL]),
    op!(0x8f, None, "VERIFY(16)", false, verify,
        [0x8f, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0xff, 0xff, 0xff, 0xff, 0x3f, CTL]),
    op!(0x91, None, "SYNCHRONIZE CACHE(16)", false, synchronize_cache,
        [0x91, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0xff, 0xff, 0xff, 0xff, 0x3f, CTL]),
    op!(0x93, None, "WRITE SAME(16)", true, write_same,
        [0x93, 0xe9, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0xff, 0xff, 0xff, 0xff, 0x3f, CTL]),
    op!(0x9e, Some(0x10), "READ CAPACITY(16)", false, read_capacity16,
        [0x9e, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0xff, 0xff, 0xff, 0xff, 0x01, CTL]),
    op!(0x9e, Some(0x12), "GET LBA STATUS", false, get_lba_status,
        [0x9e, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0xff, 0xff, 0xff, 0xff, 0, CTL]),
    op!(0xa8, None, "READ(12)", false, read,
        [0xa8, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, CTL]),
    op!(0xaa, None, "WRITE(12)", true, write,
        [0xaa, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, CTL]),
    op!(0xae, None, "WRITE AND VERIFY(12)", true, write_and_verify,
        [0xae, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, CTL]),
    op!(0xaf, None, "VERIFY(12)", false, verify,
        [0xaf, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f, CTL]),
];

/// Big-endian integer of `n` bytes at `off` (0 where the CDB is too short; the usage check
/// guarantees the length).
fn be(b: &[u8], off: usize, n: usize) -> u64 {
    b.get(off..off + n)
        .map_or(0, |s| s.iter().fold(0u64, |a, &x| (a << 8) | u64::from(x)))
}

/// Where the LBA and transfer length fields of a READ/WRITE/VERIFY style CDB are.
struct Rw {
    lba: u64,
    blocks: u64,
    /// Byte offset of the transfer length field (for field pointers).
    len_byte: u16,
}

impl Rw {
    /// The first `n` bytes of the data-out buffer, or INVALID FIELD IN CDB at the transfer
    /// length when the transport's buffer is shorter.
    fn out<'a>(&self, data_out: &'a [u8], n: usize) -> Result<&'a [u8], Sense> {
        data_out
            .get(..n)
            .ok_or(Sense::INVALID_FIELD_IN_CDB.in_cdb(self.len_byte, None))
    }
}

/// Decodes the LBA and length of the 6, 10, 12 and 16 byte forms (READ(6)/WRITE(6): a zero
/// length means 256 blocks).
/// The LBA range of a READ/WRITE/VERIFY-class CDB, on a started unit and inside capacity.
fn medium_range(lun: &LogicalUnit, cdb: &[u8]) -> Result<Rw, Sense> {
    let rw = rw_fields(cdb);
    check_started(lun)?;
    check_range(lun, rw.lba, rw.blocks)?;
    Ok(rw)
}

fn rw_fields(cdb: &[u8]) -> Rw {
    match cdb[0] >> 5 {
        0 => {
            let lba = be(cdb, 1, 3) & 0x1f_ffff;
            let blocks = match cdb.get(4).copied().unwrap_or(0) {
                0 => 256,
                n => u64::from(n),
            };
            Rw {
                lba,
                blocks,
                len_byte: 4,
            }
        }
        1 => Rw {
            lba: be(cdb, 2, 4),
            blocks: be(cdb, 7, 2),
            len_byte: 7,
        },
        5 => Rw {
            lba: be(cdb, 2, 4),
            blocks: be(cdb, 6, 4),
            len_byte: 6,
        },
        _ => Rw {
            lba: be(cdb, 2, 8),
            blocks: be(cdb, 10, 4),
            len_byte: 10,
        },
    }
}

/// LOGICAL BLOCK ADDRESS OUT OF RANGE unless `[lba, lba+blocks)` lies inside the medium.
fn check_range(lun: &LogicalUnit, lba: u64, blocks: u64) -> Result<(), Sense> {
    match lba.checked_add(blocks) {
        Some(end) if end <= lun.blocks() => Ok(()),
        _ => Err(Sense::LBA_OUT_OF_RANGE),
    }
}

/// NOT READY when START STOP UNIT stopped the unit.
fn check_started(lun: &LogicalUnit) -> Result<(), Sense> {
    if lun.hot().stopped.load(std::sync::atomic::Ordering::Acquire) {
        Err(crate::spc::NOT_READY_INIT_REQUIRED)
    } else {
        Ok(())
    }
}

/// Byte length of `blocks` blocks, as a buffer length.
fn byte_len(lun: &LogicalUnit, blocks: u64, len_byte: u16) -> Result<usize, Sense> {
    blocks
        .checked_mul(lun.block_size())
        .and_then(|n| usize::try_from(n).ok())
        .ok_or(Sense::INVALID_FIELD_IN_CDB.in_cdb(len_byte, None))
}

fn read_err(_: vstor_blockdev::Error) -> Sense {
    Sense::READ_ERROR
}

fn write_err(e: vstor_blockdev::Error) -> Sense {
    match e {
        vstor_blockdev::Error::ReadOnly { .. } => Sense::WRITE_PROTECTED,
        _ => Sense::WRITE_ERROR,
    }
}

/// Writes `data` at `lba`, then flushes when FUA asks for it or the unit runs write-through
/// (WCE cleared) over a device with a volatile cache.
fn write_blocks(lun: &LogicalUnit, data: &[u8], lba: u64, fua: bool) -> Result<(), Sense> {
    lun.dev()?
        .write_at(data, lba * lun.block_size())
        .map_err(write_err)?;
    let write_through = !lun.state().wce && lun.dev()?.info().write_cache;
    if fua || write_through {
        lun.dev()?.flush().map_err(write_err)?;
    }
    Ok(())
}

/// Runs a discard or write-zeroes over `[offset, offset+len)` synchronously, in pieces of at
/// most the device's discard limit.
fn run_range(lun: &LogicalUnit, op: IoOp, offset: u64, len: u64) -> Result<(), Sense> {
    if len == 0 {
        return Ok(());
    }
    let mut q = lun
        .dev()?
        .open_queue(&QueueOptions { depth: 1 })
        .map_err(|_| Sense::INTERNAL_FAILURE)?;
    let max = match lun.dev()?.info().max_discard_bytes {
        0 => 1 << 30,
        m => m.min(1 << 30),
    };
    let bs = lun.block_size();
    let max = (max / bs).max(1) * bs;
    let mut off = offset;
    let end = offset + len;
    while off < end {
        let n = (end - off).min(max);
        run_blocking(&mut *q, op, off, n, &mut []).map_err(write_err)?;
        off += n;
    }
    Ok(())
}

/// READ(6/10/12/16).
pub(crate) fn read(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let cdb = cmd.cdb;
    if cdb[0] != 0x08 && cdb[1] & 0xe0 != 0 {
        return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(1, Some(7)));
    }
    let rw = medium_range(lun, cdb)?;
    let n = byte_len(lun, rw.blocks, rw.len_byte)?;
    if n == 0 {
        return Ok(0);
    }
    let buf = cmd
        .data_in
        .get_mut(..n)
        .ok_or(Sense::INVALID_FIELD_IN_CDB.in_cdb(rw.len_byte, None))?;
    lun.dev()?
        .read_at(buf, rw.lba * lun.block_size())
        .map_err(read_err)?;
    Ok(n)
}

/// WRITE(6/10/12/16).
fn write(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let cdb = cmd.cdb;
    if cdb[0] != 0x0a && cdb[1] & 0xe0 != 0 {
        return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(1, Some(7)));
    }
    let fua = cdb[0] != 0x0a && cdb[1] & 0x08 != 0;
    let rw = medium_range(lun, cdb)?;
    let n = byte_len(lun, rw.blocks, rw.len_byte)?;
    if n == 0 {
        return Ok(0);
    }
    let data = rw.out(cmd.data_out, n)?;
    write_blocks(lun, data, rw.lba, fua)?;
    Ok(0)
}

/// Compares `expected` with the medium at `lba`; MISCOMPARE DURING VERIFY OPERATION on the
/// first difference. SBC asks for the byte offset of the first difference in the INFORMATION
/// field; [`Sense`] has no INFORMATION field yet, so the offset is computed but not reported.
fn compare_medium(lun: &LogicalUnit, expected: &[u8], lba: u64) -> Result<(), Sense> {
    let mut got = vec![0u8; expected.len()];
    lun.dev()?
        .read_at(&mut got, lba * lun.block_size())
        .map_err(read_err)?;
    match first_difference(expected, &got) {
        None => Ok(()),
        Some(offset) => Err(Sense::MISCOMPARE_VERIFY.with_information(offset as u64)),
    }
}

/// Offset of the first differing byte.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// BYTCHK (byte 1 bits 2..1) of VERIFY and WRITE AND VERIFY.
fn bytchk(cdb: &[u8]) -> u8 {
    (cdb[1] >> 1) & 3
}

/// VERIFY(10/12/16): BYTCHK 00b checks the range only, 01b compares the data-out buffer with
/// the medium, 11b compares one data-out block with every block of the range.
fn verify(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let cdb = cmd.cdb;
    if cdb[1] & 0xe0 != 0 {
        return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(1, Some(7)));
    }
    let chk = bytchk(cdb);
    if chk == 2 {
        return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(1, Some(2)));
    }
    let rw = medium_range(lun, cdb)?;
    if chk == 0 || rw.blocks == 0 {
        return Ok(0);
    }
    let bs = lun.block_size() as usize;
    if chk == 1 {
        let n = byte_len(lun, rw.blocks, rw.len_byte)?;
        let data = rw.out(cmd.data_out, n)?;
        compare_medium(lun, data, rw.lba)?;
    } else {
        let block = cmd
            .data_out
            .get(..bs)
            .ok_or(Sense::INVALID_FIELD_IN_CDB.in_cdb(1, Some(2)))?;
        for i in 0..rw.blocks {
            compare_medium(lun, block, rw.lba + i)?;
        }
    }
    Ok(0)
}

/// WRITE AND VERIFY(10/12/16): writes, then with BYTCHK 01b reads back and compares.
fn write_and_verify(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let cdb = cmd.cdb;
    if cdb[1] & 0xe0 != 0 {
        return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(1, Some(7)));
    }
    let chk = bytchk(cdb);
    if chk > 1 {
        return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(1, Some(2)));
    }
    let rw = medium_range(lun, cdb)?;
    let n = byte_len(lun, rw.blocks, rw.len_byte)?;
    if n == 0 {
        return Ok(0);
    }
    let data = rw.out(cmd.data_out, n)?;
    write_blocks(lun, data, rw.lba, false)?;
    if chk == 1 {
        compare_medium(lun, data, rw.lba)?;
    }
    Ok(0)
}

/// Copies `data` into `data_in`, truncated to the allocation length and the buffer.
fn put(cmd: &mut Command<'_>, data: &[u8], alloc: usize) -> usize {
    let n = data.len().min(alloc).min(cmd.data_in.len());
    cmd.data_in[..n].copy_from_slice(&data[..n]);
    n
}

/// READ CAPACITY(10): the last LBA (0xFFFFFFFF when it does not fit) and the block length.
pub(crate) fn read_capacity10(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let cdb = cmd.cdb;
    // SBC-3: a non-zero LOGICAL BLOCK ADDRESS requires PMI (both obsolete in SBC-4).
    if cdb[8] & 1 == 0 && be(cdb, 2, 4) != 0 {
        return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(2, None));
    }
    let last = lun.blocks().saturating_sub(1).min(u64::from(u32::MAX)) as u32;
    let mut d = [0u8; 8];
    d[..4].copy_from_slice(&last.to_be_bytes());
    d[4..].copy_from_slice(&(lun.block_size() as u32).to_be_bytes());
    Ok(put(cmd, &d, 8))
}

/// READ CAPACITY(16): last LBA, block length, physical block exponent, LBPME and LBPRZ.
fn read_capacity16(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let cdb = cmd.cdb;
    if cdb[14] & 1 == 0 && be(cdb, 2, 8) != 0 {
        return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(2, None));
    }
    let alloc = be(cdb, 10, 4) as usize;
    let dev = lun.dev()?;
    let info = dev.info();
    let mut d = [0u8; 32];
    d[..8].copy_from_slice(&lun.blocks().saturating_sub(1).to_be_bytes());
    d[8..12].copy_from_slice(&info.logical_block_size.to_be_bytes());
    d[13] = physical_exponent(info.logical_block_size, info.physical_block_size);
    if info.discard {
        d[14] |= 0x80;
        if info.discard_zeroes {
            d[14] |= 0x40;
        }
    }
    Ok(put(cmd, &d, alloc))
}

/// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT.
fn physical_exponent(logical: u32, physical: u32) -> u8 {
    if logical == 0 || physical <= logical || physical % logical != 0 {
        return 0;
    }
    let ratio = physical / logical;
    if ratio.is_power_of_two() {
        (ratio.trailing_zeros() as u8).min(15)
    } else {
        0
    }
}

/// SYNCHRONIZE CACHE(10/16): flushes the device (IMMED accepted; the flush still completes
/// before status).
fn synchronize_cache(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let cdb = cmd.cdb;
    let (lba, blocks) = if cdb[0] == 0x35 {
        (be(cdb, 2, 4), be(cdb, 7, 2))
    } else {
        (be(cdb, 2, 8), be(cdb, 10, 4))
    };
    check_range(lun, lba, blocks)?;
    lun.dev()?.flush().map_err(write_err)?;
    Ok(0)
}

/// UNMAP: parses the parameter list (every length checked), checks every descriptor against
/// the capacity, then discards.
fn unmap(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let cdb = cmd.cdb;
    let len = be(cdb, 7, 2) as usize;
    if len == 0 {
        return Ok(0);
    }
    if len < 8 {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    let p = cmd.data_out.get(..len).ok_or(Sense::PARAM_LIST_LENGTH)?;
    let data_len = be(p, 0, 2) as usize;
    let desc_len = be(p, 2, 2) as usize;
    if data_len + 2 > len || desc_len + 8 > len || desc_len % 16 != 0 {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    let count = desc_len / 16;
    if count as u64 > u64::from(MAX_UNMAP_DESCRIPTORS) {
        return Err(Sense::INVALID_FIELD_IN_PARAM.in_param(2, None));
    }
    let mut ranges = Vec::with_capacity(count);
    let mut total: u64 = 0;
    for i in 0..count {
        let d = 8 + 16 * i;
        let lba = be(p, d, 8);
        let blocks = be(p, d + 8, 4);
        check_range(lun, lba, blocks)?;
        total += blocks;
        if total > u64::from(MAX_UNMAP_LBA_COUNT) {
            return Err(Sense::INVALID_FIELD_IN_PARAM.in_param((d + 8) as u16, None));
        }
        if blocks != 0 {
            ranges.push((lba, blocks));
        }
    }
    check_started(lun)?;
    if !lun.dev()?.info().discard {
        // Unmapping is advisory: a device that cannot discard keeps the data.
        return Ok(0);
    }
    let bs = lun.block_size();
    for (lba, blocks) in ranges {
        run_range(lun, IoOp::Discard, lba * bs, blocks * bs)?;
    }
    Ok(0)
}

/// WRITE SAME(10/16): replicates one block over the range; with UNMAP (and an all-zero block)
/// or NDOB the range is zeroed and may be deallocated.
fn write_same(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let cdb = cmd.cdb;
    if cdb[1] & 0xe0 != 0 {
        return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(1, Some(7)));
    }
    let unmap = cdb[1] & 0x08 != 0;
    let (lba, blocks, len_byte, ndob) = if cdb[0] == 0x41 {
        (be(cdb, 2, 4), be(cdb, 7, 2), 7u16, false)
    } else {
        (be(cdb, 2, 8), be(cdb, 10, 4), 10u16, cdb[1] & 0x01 != 0)
    };
    if blocks == 0 || (MAX_WRITE_SAME_BLOCKS != 0 && blocks > MAX_WRITE_SAME_BLOCKS) {
        // The whole-medium form (NUMBER OF LOGICAL BLOCKS 0) is not supported.
        return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(len_byte, None));
    }
    check_started(lun)?;
    check_range(lun, lba, blocks)?;
    let bs = lun.block_size();
    let (offset, len) = (lba * bs, blocks * bs);
    if ndob {
        run_range(lun, IoOp::WriteZeroes { may_unmap: unmap }, offset, len)?;
        return Ok(0);
    }
    let block = cmd
        .data_out
        .get(..bs as usize)
        .ok_or(Sense::INVALID_FIELD_IN_CDB.in_cdb(len_byte, None))?;
    let zero = block.iter().all(|&b| b == 0);
    if unmap && !zero {
        return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(1, Some(3)));
    }
    if zero {
        run_range(lun, IoOp::WriteZeroes { may_unmap: unmap }, offset, len)?;
        return Ok(0);
    }
    let chunk = len.min(WRITE_SAME_CHUNK.max(bs));
    let buf: Vec<u8> = block.iter().copied().cycle().take(chunk as usize).collect();
    let mut off = offset;
    let end = offset + len;
    while off < end {
        let n = (end - off).min(chunk);
        lun.dev()?
            .write_at(&buf[..n as usize], off)
            .map_err(write_err)?;
        off += n;
    }
    if !lun.state().wce && lun.dev()?.info().write_cache {
        lun.dev()?.flush().map_err(write_err)?;
    }
    Ok(0)
}

/// COMPARE AND WRITE: compares the first half of the data-out buffer with the medium and, when
/// equal, writes the second half. It runs holding the unit's write gate exclusively (see
/// `LogicalUnit::run`): no other write of the unit, from any queue, runs between the compare
/// and the write.
fn compare_and_write(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let cdb = cmd.cdb;
    if cdb[1] & 0xe0 != 0 {
        return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(1, Some(7)));
    }
    let lba = be(cdb, 2, 8);
    let blocks = u64::from(cdb[13]);
    let fua = cdb[1] & 0x08 != 0;
    if blocks > u64::from(MAX_COMPARE_AND_WRITE_BLOCKS) {
        return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(13, None));
    }
    check_started(lun)?;
    check_range(lun, lba, blocks)?;
    if blocks == 0 {
        return Ok(0);
    }
    let n = byte_len(lun, blocks, 13)?;
    let data = cmd
        .data_out
        .get(..2 * n)
        .ok_or(Sense::INVALID_FIELD_IN_CDB.in_cdb(13, None))?;
    let (verify, new) = data.split_at(n);
    compare_medium(lun, verify, lba)?;
    let offset = lba * lun.block_size();
    let dev = lun.dev()?;
    dev.write_at(new, offset).map_err(write_err)?;
    let wce = lun.state().wce;
    if fua || (!wce && dev.info().write_cache) {
        dev.flush().map_err(write_err)?;
    }
    Ok(0)
}

/// GET LBA STATUS: provisioning status descriptors from the device's block status, starting
/// at the given LBA (mapped 0, deallocated 1).
fn get_lba_status(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let cdb = cmd.cdb;
    let start = be(cdb, 2, 8);
    let alloc = be(cdb, 10, 4) as usize;
    let blocks = lun.blocks();
    if start >= blocks {
        return Err(Sense::LBA_OUT_OF_RANGE);
    }
    let bs = lun.block_size();
    let max_desc = (alloc.saturating_sub(8) / 16).clamp(1, MAX_LBA_STATUS_DESCRIPTORS);
    let mut descs: Vec<(u64, u64, u8)> = Vec::new();
    let mut lba = start;
    let mut steps = 0;
    while lba < blocks && steps < 4096 {
        steps += 1;
        let want = (blocks - lba).min(u64::from(u32::MAX)) * bs;
        let s = lun.dev()?.block_status(lba * bs, want).map_err(read_err)?;
        let (n, state) = if s.allocated {
            (s.len.div_ceil(bs), 0u8)
        } else {
            match s.len / bs {
                0 => (1, 0),
                n => (n, 1),
            }
        };
        let n = n.clamp(1, blocks - lba);
        let full = descs.len() == max_desc;
        match descs.last_mut() {
            Some(d) if d.2 == state && d.1 + n <= u64::from(u32::MAX) => d.1 += n,
            _ if full => break,
            _ => descs.push((lba, n, state)),
        }
        lba += n;
    }
    let mut d = vec![0u8; 8 + 16 * descs.len()];
    let plen = (d.len() - 4) as u32;
    d[..4].copy_from_slice(&plen.to_be_bytes());
    for (i, (l, n, state)) in descs.iter().enumerate() {
        let o = 8 + 16 * i;
        d[o..o + 8].copy_from_slice(&l.to_be_bytes());
        d[o + 8..o + 12].copy_from_slice(&(*n as u32).to_be_bytes());
        d[o + 12] = *state;
    }
    Ok(put(cmd, &d, alloc))
}

/// START STOP UNIT: with POWER CONDITION 0, START starts or stops the unit (LOEJ is accepted
/// and ignored: the medium is not removable, as QEMU does); other valid power conditions are
/// accepted without effect.
fn start_stop_unit(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let b4 = cmd.cdb[4];
    match b4 >> 4 {
        0 => {
            lun.hot()
                .stopped
                .store(b4 & 1 == 0, std::sync::atomic::Ordering::Release);
            Ok(0)
        }
        1 | 2 | 3 | 7 | 0xa | 0xb => Ok(0),
        _ => Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(4, Some(7))),
    }
}

/// PREVENT ALLOW MEDIUM REMOVAL: records PREVENT (bit 0).
fn prevent_allow(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    lun.state().prevent = cmd.cdb[4] & 1 != 0;
    Ok(0)
}

/// FORMAT UNIT without a parameter list (FMTDATA 0, enforced by the usage mask): nothing to
/// do, the medium is always formatted.
fn format_unit(lun: &LogicalUnit, _cmd: &mut Command<'_>) -> Result<usize, Sense> {
    check_started(lun)?;
    Ok(0)
}

/// Writes `block` (one logical block) over the whole medium.
fn fill_medium(lun: &LogicalUnit, block: &[u8]) -> Result<(), Sense> {
    let bs = lun.block_size();
    let len = lun.blocks() * bs;
    let chunk = len.min(WRITE_SAME_CHUNK.max(bs));
    let buf: Vec<u8> = block.iter().copied().cycle().take(chunk as usize).collect();
    let mut off = 0;
    while off < len {
        let n = (len - off).min(chunk);
        lun.dev()?
            .write_at(&buf[..n as usize], off)
            .map_err(write_err)?;
        off += n;
    }
    lun.dev()?.flush().map_err(write_err)
}

/// SANITIZE: BLOCK ERASE zeroes (and may deallocate) the whole medium; OVERWRITE writes the
/// initialization pattern over it. Runs to completion before status (IMMED is accepted). Only
/// the final OVERWRITE pass is written: on a virtual medium earlier passes leave no trace.
fn sanitize(lun: &LogicalUnit, cmd: &mut Command<'_>) -> Result<usize, Sense> {
    let cdb = cmd.cdb;
    let len = be(cdb, 7, 2) as usize;
    check_started(lun)?;
    if cdb[1] & 0x1f == 0x02 {
        if len != 0 {
            return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(7, None));
        }
        run_range(
            lun,
            IoOp::WriteZeroes { may_unmap: true },
            0,
            lun.blocks() * lun.block_size(),
        )?;
        lun.dev()?.flush().map_err(write_err)?;
        return Ok(0);
    }
    // OVERWRITE: a 4-byte header and the initialization pattern.
    let bs = lun.block_size() as usize;
    if len < 4 || len > bs + 4 {
        return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(7, None));
    }
    let p = cmd.data_out.get(..len).ok_or(Sense::PARAM_LIST_LENGTH)?;
    let invert = p[0] & 0x80 != 0;
    let test = (p[0] >> 5) & 3;
    let passes = p[0] & 0x1f;
    let plen = be(p, 2, 2) as usize;
    if test != 0 {
        return Err(Sense::INVALID_FIELD_IN_PARAM.in_param(0, Some(6)));
    }
    if passes == 0 {
        return Err(Sense::INVALID_FIELD_IN_PARAM.in_param(0, Some(4)));
    }
    if plen == 0 || plen > bs || plen + 4 != len {
        return Err(Sense::INVALID_FIELD_IN_PARAM.in_param(2, None));
    }
    // With INVERT the pattern alternates between passes, starting uninverted.
    let flip = invert && passes % 2 == 0;
    let block: Vec<u8> = p[4..]
        .iter()
        .map(|&b| if flip { !b } else { b })
        .cycle()
        .take(bs)
        .collect();
    fill_medium(lun, &block)?;
    Ok(0)
}
