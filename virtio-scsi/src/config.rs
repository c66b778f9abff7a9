//! Options and the configuration space (VIRTIO 1.2 §5.6.4).

use vstor_virtio_core::features::COMMON_FEATURES;

use crate::error::{Error, Result};
use crate::lun_addr::MAX_TARGETS;
use crate::protocol::{event, feature, CDB_SIZE, SENSE_SIZE};
use vstor_scsi_disk::target::MAX_LUNS;

/// Options of a virtio-scsi device. `Default` gives one request queue of 256 entries.
#[derive(Debug, Clone)]
pub struct ScsiOptions {
    /// Number of request queues (1..=`MAX_REQUEST_QUEUES`); control and event queues come on
    /// top.
    pub num_queues: u16,
    /// Maximum queue size (a power of two, 2..=32768).
    pub queue_size: u16,
    /// `seg_max`: most data segments in one command.
    pub seg_max: u32,
    /// `max_sectors`: largest transfer in 512-byte sectors; also bounds the device's
    /// per-command buffers.
    pub max_sectors: u32,
    /// `cmd_per_lun`: commands the driver may queue per LUN.
    pub cmd_per_lun: u32,
    /// Offer VIRTIO_SCSI_F_HOTPLUG (hotplug and hot-unplug events).
    pub hotplug: bool,
    /// Offer VIRTIO_SCSI_F_CHANGE (capacity change events).
    pub change: bool,
}

/// Most request queues.
pub const MAX_REQUEST_QUEUES: u16 = 254;

impl Default for ScsiOptions {
    fn default() -> Self {
        ScsiOptions {
            num_queues: 1,
            queue_size: 256,
            seg_max: 254,
            max_sectors: 0xffff,
            cmd_per_lun: 128,
            hotplug: true,
            change: true,
        }
    }
}

impl ScsiOptions {
    /// Checks the options.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, value: String, reason: &str| Error::InvalidOption {
            name,
            value,
            reason: reason.into(),
        };
        if self.num_queues == 0 || self.num_queues > MAX_REQUEST_QUEUES {
            return Err(bad(
                "num_queues",
                self.num_queues.to_string(),
                "must be 1..=254",
            ));
        }
        if !self.queue_size.is_power_of_two() || self.queue_size < 2 {
            return Err(bad(
                "queue_size",
                self.queue_size.to_string(),
                "must be a power of two, 2..=32768",
            ));
        }
        if self.seg_max == 0 || self.seg_max > u32::from(self.queue_size) {
            return Err(bad(
                "seg_max",
                self.seg_max.to_string(),
                "must be 1..=queue_size",
            ));
        }
        if self.max_sectors == 0 || self.max_sectors > 1 << 17 {
            return Err(bad(
                "max_sectors",
                self.max_sectors.to_string(),
                "must be 1..=131072 (64 MiB)",
            ));
        }
        if self.cmd_per_lun == 0 {
            return Err(bad("cmd_per_lun", "0".into(), "must be at least 1"));
        }
        Ok(())
    }

    /// The feature bits offered.
    pub fn features(&self) -> u64 {
        let table = [
            (feature::INOUT, true),
            (feature::HOTPLUG, self.hotplug),
            (feature::CHANGE, self.change),
        ];
        table
            .iter()
            .filter(|(_, on)| *on)
            .fold(COMMON_FEATURES, |acc, (bit, _)| acc | bit)
    }

    /// Largest data transfer of one command in bytes.
    pub fn max_transfer(&self) -> usize {
        self.max_sectors as usize * 512
    }
}

/// Bytes of the configuration structure.
pub const CONFIG_LEN: usize = 36;
/// Offset of `sense_size` (driver-writable).
pub const SENSE_SIZE_OFFSET: usize = 20;
/// Offset of `cdb_size` (driver-writable).
pub const CDB_SIZE_OFFSET: usize = 24;

/// The configuration structure (§5.6.4) with the given sizes.
pub fn config_bytes(opts: &ScsiOptions, sense_size: u32, cdb_size: u32) -> [u8; CONFIG_LEN] {
    let mut b = [0u8; CONFIG_LEN];
    let fields: [(usize, u32); 8] = [
        (0, u32::from(opts.num_queues)),
        (4, opts.seg_max),
        (8, opts.max_sectors),
        (12, opts.cmd_per_lun),
        (16, event::SIZE as u32),
        (SENSE_SIZE_OFFSET, sense_size),
        (CDB_SIZE_OFFSET, cdb_size),
        (32, MAX_LUNS - 1),
    ];
    for (off, v) in fields {
        b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    // max_channel stays 0; max_target.
    b[30..32].copy_from_slice(&(MAX_TARGETS - 1).to_le_bytes());
    b
}

/// Default `sense_size` and `cdb_size`.
pub const DEFAULT_SIZES: (u32, u32) = (SENSE_SIZE, CDB_SIZE);

/// The byte range of a configuration access, or the error naming it.
pub fn config_range(offset: u64, len: usize) -> Result<std::ops::Range<usize>> {
    let err = || {
        Error::Core(vstor_virtio_core::Error::ConfigAccess {
            offset,
            len,
            size: CONFIG_LEN,
        })
    };
    let start = usize::try_from(offset).map_err(|_| err())?;
    let end = start.checked_add(len).ok_or_else(err)?;
    if end > CONFIG_LEN {
        return Err(err());
    }
    Ok(start..end)
}
