//! Feature bits, options and the configuration space (VIRTIO 1.2 §5.2.3, §5.2.4), and the
//! state every queue of one device shares.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use vm_memory::{ByteValued, Le16, Le32, Le64};
use vstor_blockdev::BlockDev;
use vstor_virtio_core::features::COMMON_FEATURES;

use crate::error::{Error, Result};

/// Feature bits of §5.2.3, one table: (bit, name). Offered bits are chosen in
/// [`BlkShared::features`].
pub mod feature {
    /// VIRTIO_BLK_F_SIZE_MAX: `size_max` is valid.
    pub const SIZE_MAX: u64 = 1 << 1;
    /// VIRTIO_BLK_F_SEG_MAX: `seg_max` is valid.
    pub const SEG_MAX: u64 = 1 << 2;
    /// VIRTIO_BLK_F_GEOMETRY: `geometry` is valid.
    pub const GEOMETRY: u64 = 1 << 4;
    /// VIRTIO_BLK_F_RO: the device is read-only.
    pub const RO: u64 = 1 << 5;
    /// VIRTIO_BLK_F_BLK_SIZE: `blk_size` is valid.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// VIRTIO_BLK_F_FLUSH: FLUSH requests are supported.
    pub const FLUSH: u64 = 1 << 9;
    /// VIRTIO_BLK_F_TOPOLOGY: `topology` is valid.
    pub const TOPOLOGY: u64 = 1 << 10;
    /// VIRTIO_BLK_F_CONFIG_WCE: the driver can switch the write cache with `writeback`.
    pub const CONFIG_WCE: u64 = 1 << 11;
    /// VIRTIO_BLK_F_MQ: `num_queues` is valid.
    pub const MQ: u64 = 1 << 12;
    /// VIRTIO_BLK_F_DISCARD: DISCARD requests are supported.
    pub const DISCARD: u64 = 1 << 13;
    /// VIRTIO_BLK_F_WRITE_ZEROES: WRITE_ZEROES requests are supported.
    pub const WRITE_ZEROES: u64 = 1 << 14;
    /// VIRTIO_BLK_F_LIFETIME: GET_LIFETIME requests are supported.
    pub const LIFETIME: u64 = 1 << 15;
    /// VIRTIO_BLK_F_SECURE_ERASE: SECURE_ERASE requests are supported.
    pub const SECURE_ERASE: u64 = 1 << 16;
}

/// Options of a virtio-blk device. `Default` gives one queue of 256 entries.
#[derive(Debug, Clone)]
pub struct BlkOptions {
    /// Serial number returned by GET_ID (at most 20 bytes).
    pub serial: String,
    /// Number of request queues (1..=256).
    pub num_queues: u16,
    /// Maximum queue size (a power of two, 2..=32768).
    pub queue_size: u16,
    /// Expose the device read-only even if the block device is writable.
    pub read_only: bool,
    /// Initial write-cache mode; `None` follows the block device (writeback unless the cache
    /// mode is write-through).
    pub writeback: Option<bool>,
    /// Offer DISCARD.
    pub discard: bool,
    /// Offer WRITE_ZEROES.
    pub write_zeroes: bool,
    /// Offer SECURE_ERASE when the block device can do it.
    pub secure_erase: bool,
    /// Maximum segments per DISCARD / WRITE_ZEROES / SECURE_ERASE request.
    pub max_discard_seg: u32,
}

impl Default for BlkOptions {
    fn default() -> Self {
        BlkOptions {
            serial: "vstor".to_string(),
            num_queues: 1,
            queue_size: 256,
            read_only: false,
            writeback: None,
            discard: true,
            write_zeroes: true,
            secure_erase: true,
            max_discard_seg: 32,
        }
    }
}

/// Length of the serial returned by GET_ID (VIRTIO_BLK_ID_BYTES).
pub const ID_BYTES: usize = 20;
/// Largest request size we advertise (`size_max`) and accept per segment, bytes.
pub const SIZE_MAX: u32 = 1 << 20;
/// Largest number of data segments in one IN/OUT request (host IOV_MAX).
pub const MAX_SEGMENTS: usize = 1024;

/// `struct virtio_blk_config` up to the secure-erase fields (§5.2.4); zoned fields are not
/// included because VIRTIO_BLK_F_ZONED is never offered.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
pub struct VirtioBlkConfig {
    /// Capacity in 512-byte sectors. Offset 0.
    pub capacity: Le64,
    /// Maximum segment size. Offset 8.
    pub size_max: Le32,
    /// Maximum number of segments. Offset 12.
    pub seg_max: Le32,
    /// geometry.cylinders. Offset 16.
    pub cylinders: Le16,
    /// geometry.heads. Offset 18.
    pub heads: u8,
    /// geometry.sectors. Offset 19.
    pub sectors: u8,
    /// Logical block size. Offset 20.
    pub blk_size: Le32,
    /// topology.physical_block_exp: log2(physical / logical). Offset 24.
    pub physical_block_exp: u8,
    /// topology.alignment_offset. Offset 25.
    pub alignment_offset: u8,
    /// topology.min_io_size in logical blocks. Offset 26.
    pub min_io_size: Le16,
    /// topology.opt_io_size in logical blocks. Offset 28.
    pub opt_io_size: Le32,
    /// Write cache: 1 writeback, 0 writethrough. Offset 32.
    pub writeback: u8,
    /// Offset 33.
    pub unused0: u8,
    /// Number of request queues. Offset 34.
    pub num_queues: Le16,
    /// Offset 36.
    pub max_discard_sectors: Le32,
    /// Offset 40.
    pub max_discard_seg: Le32,
    /// Offset 44.
    pub discard_sector_alignment: Le32,
    /// Offset 48.
    pub max_write_zeroes_sectors: Le32,
    /// Offset 52.
    pub max_write_zeroes_seg: Le32,
    /// Offset 56.
    pub write_zeroes_may_unmap: u8,
    /// Offset 57.
    pub unused1: [u8; 3],
    /// Offset 60.
    pub max_secure_erase_sectors: Le32,
    /// Offset 64.
    pub max_secure_erase_seg: Le32,
    /// Offset 68.
    pub secure_erase_sector_alignment: Le32,
}

// SAFETY: a packed struct of little-endian integers and byte arrays: every bit pattern is valid
// and there is no padding.
unsafe impl ByteValued for VirtioBlkConfig {}

const _: () = assert!(std::mem::size_of::<VirtioBlkConfig>() == 72);

/// Offset of `writeback`, the one field a driver may write (with CONFIG_WCE).
const WRITEBACK_OFFSET: u64 = 32;

/// What all queues of one virtio-blk device share.
pub struct BlkShared {
    dev: Arc<dyn BlockDev>,
    opts: BlkOptions,
    read_only: bool,
    writeback: AtomicBool,
    generation: AtomicU32,
}

impl BlkShared {
    /// Validates the options against the block device.
    pub fn new(dev: Arc<dyn BlockDev>, opts: BlkOptions) -> Result<Arc<Self>> {
        let bad = |name, value: String, reason: &str| Error::InvalidOption {
            name,
            value,
            reason: reason.to_string(),
        };
        if opts.serial.len() > ID_BYTES {
            return Err(bad("serial", opts.serial.clone(), "longer than 20 bytes"));
        }
        if opts.num_queues == 0 || opts.num_queues > 256 {
            return Err(bad(
                "num_queues",
                opts.num_queues.to_string(),
                "must be 1..=256",
            ));
        }
        if !opts.queue_size.is_power_of_two() || opts.queue_size < 2 {
            return Err(bad(
                "queue_size",
                opts.queue_size.to_string(),
                "must be a power of two, 2..=32768",
            ));
        }
        if opts.max_discard_seg == 0 || opts.max_discard_seg > 256 {
            return Err(bad(
                "max_discard_seg",
                opts.max_discard_seg.to_string(),
                "must be 1..=256",
            ));
        }
        let info = dev.info();
        let read_only = opts.read_only || info.read_only;
        let writeback = opts.writeback.unwrap_or(!info.cache.write_through());
        Ok(Arc::new(BlkShared {
            dev,
            opts,
            read_only,
            writeback: AtomicBool::new(writeback),
            generation: AtomicU32::new(0),
        }))
    }

    /// The block device.
    pub fn dev(&self) -> &Arc<dyn BlockDev> {
        &self.dev
    }

    /// The options.
    pub fn options(&self) -> &BlkOptions {
        &self.opts
    }

    /// Whether the device is exposed read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether the driver sees a write-back cache (else every write is flushed on completion).
    pub fn writeback(&self) -> bool {
        self.writeback.load(Ordering::Relaxed)
    }

    /// Changes the write-cache mode (from the config space or a migrated state).
    pub fn set_writeback(&self, on: bool) {
        self.writeback.store(on, Ordering::Relaxed);
    }

    /// Configuration generation (bumped on every config change, such as a resize).
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Whether DISCARD is offered.
    pub fn discard(&self) -> bool {
        self.opts.discard && !self.read_only
    }

    /// Whether WRITE_ZEROES is offered.
    pub fn write_zeroes(&self) -> bool {
        self.opts.write_zeroes && !self.read_only
    }

    /// Whether SECURE_ERASE is offered.
    pub fn secure_erase(&self) -> bool {
        self.opts.secure_erase && !self.read_only && self.dev.info().secure_erase
    }

    /// The feature bits the device offers.
    pub fn features(&self) -> u64 {
        let table = [
            (feature::SIZE_MAX, true),
            (feature::SEG_MAX, true),
            (feature::GEOMETRY, true),
            (feature::RO, self.read_only),
            (feature::BLK_SIZE, true),
            (feature::FLUSH, true),
            (feature::TOPOLOGY, true),
            (feature::CONFIG_WCE, true),
            (feature::MQ, self.opts.num_queues > 1),
            (feature::DISCARD, self.discard()),
            (feature::WRITE_ZEROES, self.write_zeroes()),
            (feature::LIFETIME, true),
            (feature::SECURE_ERASE, self.secure_erase()),
        ];
        table
            .iter()
            .filter(|(_, on)| *on)
            .fold(COMMON_FEATURES, |acc, (bit, _)| acc | bit)
    }

    /// Largest discard / write-zeroes / secure-erase request in 512-byte sectors.
    pub fn max_discard_sectors(&self) -> u32 {
        let bytes = self
            .dev
            .info()
            .max_discard_bytes
            .clamp(4096, u64::from(u32::MAX) << 9);
        (bytes >> 9).min(u64::from(u32::MAX)) as u32
    }

    /// The configuration space as the driver sees it now.
    pub fn config(&self) -> VirtioBlkConfig {
        let info = self.dev.info();
        let lbs = info.logical_block_size.max(512);
        let sectors = info.size / 512;
        // A CHS geometry for legacy guests, as QEMU derives it: 16 heads, 63 sectors.
        let cylinders = (sectors / (16 * 63)).min(u64::from(u16::MAX)) as u16;
        let pbe = (info.physical_block_size.max(lbs) / lbs).trailing_zeros() as u8;
        let align = (lbs / 512).max(1);
        let max_discard = self.max_discard_sectors();
        let seg = self.opts.max_discard_seg;
        VirtioBlkConfig {
            capacity: sectors.into(),
            size_max: SIZE_MAX.into(),
            seg_max: u32::from(self.opts.queue_size.saturating_sub(2).max(1)).into(),
            cylinders: cylinders.into(),
            heads: 16,
            sectors: 63,
            blk_size: lbs.into(),
            physical_block_exp: pbe,
            alignment_offset: 0,
            min_io_size: 1u16.into(),
            opt_io_size: 0u32.into(),
            writeback: self.writeback() as u8,
            unused0: 0,
            num_queues: self.opts.num_queues.into(),
            max_discard_sectors: max_discard.into(),
            max_discard_seg: seg.into(),
            discard_sector_alignment: align.into(),
            max_write_zeroes_sectors: max_discard.into(),
            max_write_zeroes_seg: seg.into(),
            write_zeroes_may_unmap: 1,
            unused1: [0; 3],
            max_secure_erase_sectors: max_discard.into(),
            max_secure_erase_seg: seg.into(),
            secure_erase_sector_alignment: align.into(),
        }
    }

    /// Reads configuration space.
    pub fn read_config(&self, offset: u64, data: &mut [u8]) -> Result<()> {
        let cfg = self.config();
        let bytes = cfg.as_slice();
        let range = config_range(offset, data.len(), bytes.len())?;
        data.copy_from_slice(&bytes[range]);
        Ok(())
    }

    /// Writes configuration space: only `writeback` is writable (with CONFIG_WCE); writes to
    /// other fields are ignored, as §5.2.4 makes them read-only.
    pub fn write_config(&self, offset: u64, data: &[u8]) -> Result<()> {
        let range = config_range(offset, data.len(), std::mem::size_of::<VirtioBlkConfig>())?;
        let wb = WRITEBACK_OFFSET as usize;
        if range.contains(&wb) {
            let on = data[wb - range.start] != 0;
            self.set_writeback(on);
            log::debug!(
                "virtio-blk: driver set write cache {}",
                if on { "on" } else { "off" }
            );
        }
        Ok(())
    }
}

fn config_range(offset: u64, len: usize, size: usize) -> Result<std::ops::Range<usize>> {
    let err = || Error::Core(vstor_virtio_core::Error::ConfigAccess { offset, len, size });
    let start = usize::try_from(offset).map_err(|_| err())?;
    let end = start.checked_add(len).ok_or_else(err)?;
    if end > size {
        return Err(err());
    }
    Ok(start..end)
}
