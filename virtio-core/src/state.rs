//! Device state snapshots for live migration: a versioned, length-checked binary blob.
//!
//! Layout (little endian): magic `VSTS`, version u32, device type u32, status u8, 3 bytes pad,
//! driver features u64, config generation u32, queue count u32, then per queue: size u16,
//! ready u8, event_idx u8, desc u64, avail u64, used u64, next_avail u16, next_used u16, then
//! device-specific length u32 and bytes.

use crate::device::QueueConfig;
use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"VSTS";
/// Version of the snapshot layout written by this build.
pub const STATE_VERSION: u32 = 1;
const MAX_QUEUES: u32 = 1024;
const MAX_DEVICE_STATE: u32 = 16 << 20;

/// The state of one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueState {
    /// Addresses, size and ready flag.
    pub config: QueueConfig,
    /// Whether VIRTIO_F_RING_EVENT_IDX is in use on the queue.
    pub event_idx: bool,
    /// Next available-ring index the device will read.
    pub next_avail: u16,
    /// Next used-ring index the device will write.
    pub next_used: u16,
}

/// A whole device's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceState {
    /// Virtio device ID.
    pub device_type: u32,
    /// Device status byte.
    pub status: u8,
    /// Negotiated features.
    pub features: u64,
    /// Configuration generation.
    pub config_generation: u32,
    /// Per-queue state.
    pub queues: Vec<QueueState>,
    /// Device-specific state.
    pub device: Vec<u8>,
}

impl DeviceState {
    /// Encodes the state.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.queues.len() * 32 + self.device.len());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&STATE_VERSION.to_le_bytes());
        b.extend_from_slice(&self.device_type.to_le_bytes());
        b.extend_from_slice(&[self.status, 0, 0, 0]);
        b.extend_from_slice(&self.features.to_le_bytes());
        b.extend_from_slice(&self.config_generation.to_le_bytes());
        b.extend_from_slice(&(self.queues.len() as u32).to_le_bytes());
        for q in &self.queues {
            b.extend_from_slice(&q.config.size.to_le_bytes());
            b.push(q.config.ready as u8);
            b.push(q.event_idx as u8);
            b.extend_from_slice(&q.config.desc_table.to_le_bytes());
            b.extend_from_slice(&q.config.avail_ring.to_le_bytes());
            b.extend_from_slice(&q.config.used_ring.to_le_bytes());
            b.extend_from_slice(&q.next_avail.to_le_bytes());
            b.extend_from_slice(&q.next_used.to_le_bytes());
        }
        b.extend_from_slice(&(self.device.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.device);
        b
    }

    /// Decodes a state blob, refusing anything truncated, oversized or of another version.
    pub fn decode(data: &[u8]) -> Result<DeviceState> {
        let mut r = Bytes { data, pos: 0 };
        if r.take(4, "magic")? != MAGIC {
            return Err(Error::State("bad magic (not a vstor device state)".into()));
        }
        let version = r.u32("version")?;
        if version != STATE_VERSION {
            return Err(Error::State(format!(
                "version {version} not supported (this build reads {STATE_VERSION})"
            )));
        }
        let device_type = r.u32("device type")?;
        let status = r.take(4, "status")?[0];
        let features = r.u64("features")?;
        let config_generation = r.u32("config generation")?;
        let n = r.u32("queue count")?;
        if n > MAX_QUEUES {
            return Err(Error::State(format!("queue count {n} > {MAX_QUEUES}")));
        }
        let mut queues = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let size = r.u16("queue size")?;
            let flags = r.take(2, "queue flags")?;
            let (ready, event_idx) = (flags[0] != 0, flags[1] != 0);
            let desc_table = r.u64("desc table")?;
            let avail_ring = r.u64("avail ring")?;
            let used_ring = r.u64("used ring")?;
            let next_avail = r.u16("next avail")?;
            let next_used = r.u16("next used")?;
            queues.push(QueueState {
                config: QueueConfig {
                    size,
                    desc_table,
                    avail_ring,
                    used_ring,
                    ready,
                },
                event_idx,
                next_avail,
                next_used,
            });
        }
        let len = r.u32("device state length")?;
        if len > MAX_DEVICE_STATE {
            return Err(Error::State(format!("device state length {len} too large")));
        }
        let device = r.take(len as usize, "device state")?.to_vec();
        if r.pos != data.len() {
            return Err(Error::State(format!(
                "{} trailing bytes",
                data.len() - r.pos
            )));
        }
        Ok(DeviceState {
            device_type,
            status,
            features,
            config_generation,
            queues,
            device,
        })
    }
}

/// A bounds-checked little-endian reader over a byte slice.
pub struct Bytes<'a> {
    /// The data.
    pub data: &'a [u8],
    /// Read position.
    pub pos: usize,
}

impl<'a> Bytes<'a> {
    /// Takes `n` bytes or fails naming `field`.
    pub fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| Error::State(format!("truncated at {field}")))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    /// Reads a u16.
    pub fn u16(&mut self, field: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2, field)?.try_into().expect("2"),
        ))
    }
    /// Reads a u32.
    pub fn u32(&mut self, field: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, field)?.try_into().expect("4"),
        ))
    }
    /// Reads a u64.
    pub fn u64(&mut self, field: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8, field)?.try_into().expect("8"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let s = DeviceState {
            device_type: 2,
            status: 15,
            features: 1 << 32,
            config_generation: 3,
            queues: vec![QueueState {
                config: QueueConfig {
                    size: 256,
                    desc_table: 0x1000,
                    avail_ring: 0x2000,
                    used_ring: 0x3000,
                    ready: true,
                },
                event_idx: true,
                next_avail: 7,
                next_used: 5,
            }],
            device: vec![1, 2, 3],
        };
        let b = s.encode();
        assert_eq!(DeviceState::decode(&b).unwrap(), s);
        for cut in 0..b.len() {
            assert!(DeviceState::decode(&b[..cut]).is_err(), "cut {cut}");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(DeviceState::decode(&long).is_err());
    }
}
