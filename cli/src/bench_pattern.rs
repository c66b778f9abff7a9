//! The `--verify` data pattern: every block starts with a header naming its disk offset, the run's
//! seed and a write generation, followed by a body derived from the header.
//!
//! A block read back is checked against the header the bench expects for that offset, so a
//! misdirected write, a stale (lost) write, a torn block and plain corruption all show up as a
//! mismatch at a named offset.

use std::fmt;

/// "VSTORBNC", little endian, at byte 0 of every block.
const MAGIC: u64 = u64::from_le_bytes(*b"VSTORBNC");
/// Header bytes: magic, offset, seed, generation (four little-endian u64).
pub const HEADER_LEN: usize = 32;
/// The smallest block the pattern fits in.
pub const MIN_BLOCK: usize = HEADER_LEN;

/// What a block is expected to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockTag {
    /// Byte offset of the block on the disk.
    pub offset: u64,
    /// Per-run seed, so data left by an earlier run never passes.
    pub seed: u64,
    /// How many times this run wrote the block (starts at 1).
    pub generation: u64,
}

/// A block that did not hold what was written to it.
#[derive(Debug)]
pub struct Mismatch {
    /// What the block should have held.
    pub expected: BlockTag,
    /// The header found, if the magic was intact.
    pub found: Option<BlockTag>,
    /// First differing byte, relative to the start of the block.
    pub byte: usize,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.expected;
        write!(
            f,
            "verify failed at offset {:#x} (byte +{}): expected generation {} of seed {:#x}",
            e.offset, self.byte, e.generation, e.seed
        )?;
        match &self.found {
            Some(t) if t == e => write!(f, "; header intact, data differs"),
            Some(t) => write!(
                f,
                "; found a block written for offset {:#x}, generation {}, seed {:#x}",
                t.offset, t.generation, t.seed
            ),
            None => write!(f, "; no pattern header found"),
        }
    }
}

/// SplitMix64 finaliser: a cheap, well-mixed hash of the tag.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn body_base(tag: &BlockTag) -> u64 {
    mix(tag.offset ^ tag.seed.rotate_left(21) ^ tag.generation.rotate_left(42))
}

/// Body word `i`: distinct per word, per tag.
#[inline]
fn body_word(base: u64, i: usize) -> u64 {
    base.wrapping_add((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Fills `block` (at least [`MIN_BLOCK`] bytes, a multiple of 8) with the pattern for `tag`.
pub fn fill(block: &mut [u8], tag: &BlockTag) {
    fill_header(block, tag);
    let base = body_base(tag);
    for (i, word) in block[HEADER_LEN..].chunks_exact_mut(8).enumerate() {
        word.copy_from_slice(&body_word(base, i).to_le_bytes());
    }
}

/// Checks that `block` holds the pattern for `expected`.
pub fn check(block: &[u8], expected: &BlockTag) -> Result<(), Mismatch> {
    let found = (get_u64(block, 0) == MAGIC).then(|| BlockTag {
        offset: get_u64(block, 8),
        seed: get_u64(block, 16),
        generation: get_u64(block, 24),
    });
    let first_diff = |want: &[u8], at: usize| {
        want.iter()
            .zip(&block[at..])
            .position(|(a, b)| a != b)
            .map_or(at, |p| at + p)
    };
    if found.as_ref() != Some(expected) {
        let mut header = [0u8; HEADER_LEN];
        fill_header(&mut header, expected);
        return Err(Mismatch {
            expected: *expected,
            found,
            byte: first_diff(&header, 0),
        });
    }
    let base = body_base(expected);
    for (i, word) in block[HEADER_LEN..].chunks_exact(8).enumerate() {
        let want = body_word(base, i).to_le_bytes();
        if word != want {
            return Err(Mismatch {
                expected: *expected,
                found,
                byte: first_diff(&want, HEADER_LEN + i * 8),
            });
        }
    }
    Ok(())
}

fn fill_header(header: &mut [u8], tag: &BlockTag) {
    put_u64(header, 0, MAGIC);
    put_u64(header, 8, tag.offset);
    put_u64(header, 16, tag.seed);
    put_u64(header, 24, tag.generation);
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: BlockTag = BlockTag {
        offset: 0x12_3000,
        seed: 0xdead_beef,
        generation: 3,
    };

    #[test]
    fn round_trip() {
        let mut b = vec![0u8; 4096];
        fill(&mut b, &TAG);
        check(&b, &TAG).unwrap();
    }

    #[test]
    fn detects_wrong_offset_stale_generation_and_corruption() {
        let mut b = vec![0u8; 4096];
        fill(&mut b, &TAG);

        let moved = BlockTag {
            offset: 0x12_4000,
            ..TAG
        };
        let e = check(&b, &moved).unwrap_err();
        assert_eq!(e.found, Some(TAG));
        assert!(e.to_string().contains("offset 0x124000"), "{e}");

        let newer = BlockTag {
            generation: 4,
            ..TAG
        };
        assert_eq!(check(&b, &newer).unwrap_err().byte, 24);

        b[1000] ^= 1;
        let e = check(&b, &TAG).unwrap_err();
        assert_eq!(e.byte, 1000);
        assert!(e.to_string().contains("data differs"), "{e}");

        let e = check(&[0u8; 512], &TAG).unwrap_err();
        assert_eq!((e.found, e.byte), (None, 0));
    }
}
