//! Regular files and host block devices.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::memory::{MemoryDev, MemoryOptions};
use crate::null::{NullDev, NullOptions};
use crate::open::OpenOptions;
use crate::types::BlockDev;

/// Parses a size with an optional K/M/G/T suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = || Error::InvalidOption {
        name: "size",
        value: s.to_string(),
        reason: "expected a number with an optional K, M, G or T suffix".into(),
    };
    let (num, shift) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 10),
        Some('M') => (&s[..s.len() - 1], 20),
        Some('G') => (&s[..s.len() - 1], 30),
        Some('T') => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// Opens a named device (see [`crate::open::open`]).
pub(crate) fn open_by_name(name: &str, opts: &OpenOptions) -> Result<Arc<dyn BlockDev>> {
    if let Some(size) = name.strip_prefix("null:") {
        return Ok(Arc::new(NullDev::new(
            parse_size(size)?,
            NullOptions {
                read_zeroes: opts.read_zeroes,
                read_only: opts.read_only,
                logical_block_size: opts.logical_block_size.unwrap_or(512),
            },
        )?));
    }
    if let Some(size) = name.strip_prefix("memory:") {
        return Ok(Arc::new(MemoryDev::new(
            parse_size(size)?,
            MemoryOptions {
                logical_block_size: opts.logical_block_size.unwrap_or(512),
                read_only: opts.read_only,
            },
        )?));
    }
    Err(Error::Unsupported {
        op: "open",
        what: format!("{name}: file protocol not built yet"),
    })
}
