//! The device side of a virtio device: what a transport (PCI, MMIO, the C ABI, vhost-user)
//! drives, independent of how the guest reaches it.

use std::os::unix::io::RawFd;
use std::sync::Arc;

use virtio_queue::Queue;

use crate::error::Result;
use crate::interrupt::Interrupt;
use crate::memory::GuestMemoryAtomic;

/// Virtio device IDs (VIRTIO 1.2 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DeviceType {
    /// Block device (§5.2).
    Block = 2,
    /// SCSI host (§5.6).
    Scsi = 8,
}

/// Where a driver placed one split virtqueue (§2.7), as set through a transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueConfig {
    /// Queue size (entries); a power of two no larger than the device maximum.
    pub size: u16,
    /// Guest address of the descriptor table.
    pub desc_table: u64,
    /// Guest address of the available ring.
    pub avail_ring: u64,
    /// Guest address of the used ring.
    pub used_ring: u64,
    /// Whether the driver enabled the queue.
    pub ready: bool,
}

/// Everything a device needs to go live (the transport builds it on DRIVER_OK).
pub struct ActivateContext {
    /// Guest memory (swappable).
    pub mem: GuestMemoryAtomic,
    /// Interrupt delivery.
    pub interrupt: Arc<dyn Interrupt>,
    /// One entry per device queue; `None` for queues the driver left disabled.
    pub queues: Vec<Option<Queue>>,
    /// The negotiated features.
    pub features: u64,
}

/// A virtio device model. The transport owns the status and feature state machine
/// ([`crate::status`], [`crate::features`]) and calls into the device.
pub trait VirtioDevice: Send {
    /// The virtio device ID.
    fn device_type(&self) -> DeviceType;

    /// Number of virtqueues.
    fn num_queues(&self) -> u16;

    /// Largest queue size the device accepts.
    fn max_queue_size(&self) -> u16;

    /// Feature bits the device offers (device-specific and transport bits).
    fn device_features(&self) -> u64;

    /// Size of the device configuration structure in bytes.
    fn config_len(&self) -> usize;

    /// Reads `data.len()` bytes of configuration space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]) -> Result<()>;

    /// Writes configuration space (only the fields the device type makes writable).
    fn write_config(&mut self, offset: u64, data: &[u8]) -> Result<()>;

    /// Configuration generation: changes whenever the device changes its configuration, so a
    /// driver can read a multi-field value consistently (§2.5.1).
    fn config_generation(&self) -> u32;

    /// Validates the driver's feature selection when FEATURES_OK is set.
    fn check_features(&self, acked: u64) -> Result<()> {
        let _ = acked;
        Ok(())
    }

    /// Goes live with the given queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<()>;

    /// The driver kicked `queue`: take new requests from its available ring.
    fn queue_notify(&mut self, queue: u16) -> Result<()>;

    /// A descriptor that becomes readable when `queue` has completions to collect with
    /// [`VirtioDevice::process_completions`]; `None` when requests complete inside
    /// `queue_notify`.
    fn completion_fd(&self, queue: u16) -> Option<RawFd>;

    /// Collects finished requests of `queue` into its used ring and interrupts the driver.
    fn process_completions(&mut self, queue: u16) -> Result<()>;

    /// Whether a protocol error made the device set DEVICE_NEEDS_RESET (§2.1.2); the transport
    /// then reports it in the status field and raises a configuration interrupt.
    fn needs_reset(&self) -> bool {
        false
    }

    /// Returns to the initial state: waits for requests in flight, drops the queues.
    fn reset(&mut self);

    /// The transport replaced guest memory (hotplug): a device that caches the current map
    /// must reload it from the `GuestMemoryAtomic` it was activated with.
    fn memory_changed(&mut self) {}

    /// Waits until no request is in flight (before guest memory is removed, for example),
    /// completing them into the used rings. The device stays live.
    fn quiesce(&mut self) -> Result<()> {
        Ok(())
    }

    /// Queue `queue`'s next available and next used indices and whether it uses
    /// VIRTIO_F_RING_EVENT_IDX, while the device is live (for migration state).
    fn queue_indices(&self, queue: u16) -> Option<(u16, u16, bool)> {
        let _ = queue;
        None
    }

    /// Device-specific state for migration (config fields the driver wrote, write cache mode,
    /// heads of requests in flight). The transport saves queues and features itself.
    fn save_state(&mut self) -> Result<Vec<u8>>;

    /// Loads what [`VirtioDevice::save_state`] produced; called before `activate`.
    fn restore_state(&mut self, data: &[u8]) -> Result<()>;
}
