//! [`Transport`]: the register-level state machine a PCI or MMIO model (or the C ABI) drives —
//! feature negotiation, the status field, per-queue setup, guest memory, kicks, completions,
//! reset and migration state — around one [`VirtioDevice`].
//!
//! Everything the driver can get wrong is checked here, once, for every device type: status
//! order (§3.1.1), features not offered (§2.2.1), queue sizes that are not powers of two or
//! exceed the maximum (§2.7), misaligned rings (§2.7: descriptor table 16, available ring 2,
//! used ring 4 bytes), rings outside guest memory, and changes to a live queue.

use std::os::unix::io::RawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestAddressSpace};

use crate::device::{ActivateContext, QueueConfig, VirtioDevice};
use crate::error::{Error, Result};
use crate::features::{Features, RING_EVENT_IDX};
use crate::interrupt::{Interrupt, InterruptKind};
use crate::memory::{GuestMemory, GuestMemoryAtomic};
use crate::state::{DeviceState, QueueState};
use crate::status::{self, StatusChange};

/// A virtio device behind its transport registers.
pub struct Transport {
    device: Box<dyn VirtioDevice>,
    features: Features,
    status: u8,
    queues: Vec<QueueConfig>,
    mem: GuestMemoryAtomic,
    interrupt: Arc<dyn Interrupt>,
    active: bool,
    /// Queue indices to resume from when a restored device is activated.
    resume: Option<Vec<(u16, u16)>>,
}

impl Transport {
    /// Wraps `device`; interrupts go to `interrupt`, guest memory starts empty.
    pub fn new(device: Box<dyn VirtioDevice>, interrupt: Arc<dyn Interrupt>) -> Self {
        let features = Features::new(device.device_features());
        let queues = vec![QueueConfig::default(); usize::from(device.num_queues())];
        Transport {
            device,
            features,
            status: 0,
            queues,
            mem: GuestMemoryAtomic::new(GuestMemory::default()),
            interrupt,
            active: false,
            resume: None,
        }
    }

    /// The device model.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// Features the device offers.
    pub fn device_features(&self) -> u64 {
        self.features.offered()
    }

    /// Features the driver acknowledged.
    pub fn driver_features(&self) -> u64 {
        self.features.acked()
    }

    /// Records the driver's feature selection: allowed after DRIVER and before FEATURES_OK
    /// (§3.1.1 steps 4-5).
    pub fn set_driver_features(&mut self, features: u64) -> Result<()> {
        if self.status & status::DRIVER == 0 || self.status & status::FEATURES_OK != 0 {
            return Err(Error::NotReady(
                "driver features are written after DRIVER and before FEATURES_OK",
            ));
        }
        self.features.ack(features)
    }

    /// The status field, with DEVICE_NEEDS_RESET once the device hit an unrecoverable error.
    pub fn status(&self) -> u8 {
        if self.device.needs_reset() {
            self.status | status::NEEDS_RESET
        } else {
            self.status
        }
    }

    /// Whether the device is live (DRIVER_OK accepted).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// A driver status write. Writing 0 resets the device. Setting FEATURES_OK validates the
    /// features (refused: the bit stays clear, as §3.1.1 has the driver check); setting
    /// DRIVER_OK activates the enabled queues (a queue outside guest memory is refused and the
    /// device reports DEVICE_NEEDS_RESET).
    pub fn set_status(&mut self, value: u8) -> Result<()> {
        let current = self.status();
        match status::transition(current, value)? {
            StatusChange::Reset => {
                self.reset();
                Ok(())
            }
            StatusChange::FeaturesOk => {
                self.device.check_features(self.features.acked())?;
                if self.features.acked() == 0 {
                    return Err(Error::Features {
                        acked: 0,
                        reason: "FEATURES_OK without a feature selection (VERSION_1 required)",
                    });
                }
                if value & status::DRIVER_OK != 0 {
                    return self.go_live(value);
                }
                self.status = value & !status::NEEDS_RESET;
                Ok(())
            }
            StatusChange::DriverOk => self.go_live(value),
            StatusChange::Other => {
                self.status = value & !status::NEEDS_RESET;
                Ok(())
            }
        }
    }

    /// Sets DRIVER_OK (with the other bits of `value`) and activates; on failure the status
    /// keeps its old bits plus DEVICE_NEEDS_RESET, so the status says live exactly when the
    /// device is.
    fn go_live(&mut self, value: u8) -> Result<()> {
        let before = self.status;
        self.status = value & !status::NEEDS_RESET;
        if let Err(e) = self.activate() {
            self.status = (before | value) & !status::DRIVER_OK | status::NEEDS_RESET;
            return Err(e);
        }
        Ok(())
    }

    /// Reads device configuration space.
    pub fn read_config(&self, offset: u64, data: &mut [u8]) -> Result<()> {
        self.device.read_config(offset, data)
    }

    /// Writes device configuration space.
    pub fn write_config(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.device.write_config(offset, data)
    }

    /// The configuration generation (§2.5.1).
    pub fn config_generation(&self) -> u32 {
        self.device.config_generation()
    }

    /// Number of queues.
    pub fn num_queues(&self) -> u16 {
        self.queues.len() as u16
    }

    /// Largest queue size the device accepts.
    pub fn max_queue_size(&self) -> u16 {
        self.device.max_queue_size()
    }

    /// The configuration of queue `q`.
    pub fn queue(&self, q: u16) -> Result<QueueConfig> {
        self.queues
            .get(usize::from(q))
            .copied()
            .ok_or_else(|| no_queue(q, self.queues.len()))
    }

    /// Sets queue `q`'s size, ring addresses and ready flag (§4.1.4.3 `queue_size`,
    /// `queue_desc`, `queue_driver`, `queue_device`, `queue_enable`). A size of 0 means the
    /// device maximum. Refused once the device is live.
    pub fn set_queue(&mut self, q: u16, cfg: QueueConfig) -> Result<()> {
        let n = self.queues.len();
        if usize::from(q) >= n {
            return Err(no_queue(q, n));
        }
        if self.active {
            return Err(Error::Queue {
                queue: q,
                reason: "cannot change a queue while the device is live (reset it first)".into(),
            });
        }
        let max = self.device.max_queue_size();
        let mut cfg = cfg;
        if cfg.size == 0 {
            cfg.size = max;
        }
        let bad = |reason: String| Error::Queue { queue: q, reason };
        if !cfg.size.is_power_of_two() || cfg.size > max {
            return Err(bad(format!(
                "size {} is not a power of two no larger than {max}",
                cfg.size
            )));
        }
        for (name, addr, align) in [
            ("descriptor table", cfg.desc_table, 16),
            ("available ring", cfg.avail_ring, 2),
            ("used ring", cfg.used_ring, 4),
        ] {
            if addr % align != 0 {
                return Err(bad(format!(
                    "{name} address {addr:#x} is not {align}-byte aligned (§2.7)"
                )));
            }
        }
        self.queues[usize::from(q)] = cfg;
        Ok(())
    }

    /// The guest memory the device uses.
    pub fn memory(&self) -> &GuestMemoryAtomic {
        &self.mem
    }

    /// Replaces guest memory (hotplug). Requests in flight keep the old map alive.
    pub fn set_memory(&mut self, mem: GuestMemory) {
        let guard = self.mem.lock().expect("guest memory lock poisoned");
        guard.replace(mem);
        self.device.memory_changed();
    }

    /// Waits until no request is in flight (before guest memory is removed); the device stays
    /// live.
    pub fn quiesce(&mut self) -> Result<()> {
        if self.active {
            self.device.quiesce()?;
        }
        Ok(())
    }

    /// The driver notified queue `q` (a kick).
    pub fn kick(&mut self, q: u16) -> Result<()> {
        self.live_queue(q)?;
        self.device.queue_notify(q)
    }

    /// The descriptor that becomes readable when queue `q` has completions to collect.
    pub fn completion_fd(&self, q: u16) -> Option<RawFd> {
        if !self.active {
            return None;
        }
        self.device.completion_fd(q)
    }

    /// Collects finished requests of queue `q`.
    pub fn process_completions(&mut self, q: u16) -> Result<()> {
        self.live_queue(q)?;
        self.device.process_completions(q)
    }

    /// Device reset (§2.1.2): requests in flight finish first, then features, status and
    /// queues return to their initial values. Guest memory stays registered.
    pub fn reset(&mut self) {
        self.device.reset();
        self.features.reset();
        self.status = 0;
        self.active = false;
        self.resume = None;
        for q in &mut self.queues {
            *q = QueueConfig::default();
        }
    }

    /// Saves the device's state for migration (requests in flight complete first).
    pub fn save(&mut self) -> Result<Vec<u8>> {
        let device = self.device.save_state()?;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, cfg) in self.queues.iter().enumerate() {
            let (next_avail, next_used, event_idx) =
                self.device.queue_indices(i as u16).unwrap_or_default();
            queues.push(QueueState {
                config: *cfg,
                event_idx,
                next_avail,
                next_used,
            });
        }
        Ok(DeviceState {
            device_type: self.device.device_type() as u32,
            status: self.status(),
            features: self.features.acked(),
            config_generation: self.device.config_generation(),
            queues,
            device,
        }
        .encode())
    }

    /// Restores what [`Transport::save`] produced on a device of the same type and queue
    /// count; guest memory must be registered first. The device is reset before loading, and
    /// activated again when the saved status had DRIVER_OK (a device saved with
    /// DEVICE_NEEDS_RESET comes back with that bit, not live, waiting for the driver's reset).
    pub fn restore(&mut self, blob: &[u8]) -> Result<()> {
        // Reset first, so a refused blob leaves the device reset whatever was wrong with it.
        self.reset();
        let st = DeviceState::decode(blob)?;
        let ty = self.device.device_type() as u32;
        if st.device_type != ty {
            return Err(Error::State(format!(
                "saved device type {} does not match this device ({ty})",
                st.device_type
            )));
        }
        if st.queues.len() != self.queues.len() {
            return Err(Error::State(format!(
                "saved state has {} queues, this device has {}",
                st.queues.len(),
                self.queues.len()
            )));
        }
        let result = self.load(&st);
        if result.is_err() {
            self.reset();
        }
        result
    }

    fn load(&mut self, st: &DeviceState) -> Result<()> {
        self.features.restore(st.features)?;
        for (i, qs) in st.queues.iter().enumerate() {
            if qs.config != QueueConfig::default() {
                self.set_queue(i as u16, qs.config)?;
            }
        }
        self.device.restore_state(&st.device)?;
        if st.status & status::NEEDS_RESET != 0 {
            // Saved broken: the driver must reset it anyway (§2.1.2). Keep the bits it has
            // seen (checked like any status write), but not live.
            let bits = st.status & !(status::DRIVER_OK | status::NEEDS_RESET);
            status::transition(0, bits)?;
            if bits & status::FEATURES_OK != 0 {
                if self.features.acked() == 0 {
                    return Err(Error::State("FEATURES_OK saved without features".into()));
                }
                self.device.check_features(self.features.acked())?;
            }
            self.status = bits | status::NEEDS_RESET;
            return Ok(());
        }
        self.resume = Some(
            st.queues
                .iter()
                .map(|q| (q.next_avail, q.next_used))
                .collect(),
        );
        // Walk the status through its legal steps so every check runs again.
        for bit in [
            status::ACKNOWLEDGE,
            status::DRIVER,
            status::FEATURES_OK,
            status::DRIVER_OK,
        ] {
            if st.status & bit != 0 {
                let to = self.status | bit;
                if bit == status::FEATURES_OK || bit == status::DRIVER_OK {
                    self.set_status(to)?;
                } else {
                    status::transition(self.status, to)?;
                    self.status = to;
                }
            }
        }
        self.status = st.status;
        self.resume = None;
        Ok(())
    }

    fn live_queue(&self, q: u16) -> Result<()> {
        if !self.active {
            return Err(Error::NotReady("device is not live (DRIVER_OK not set)"));
        }
        if usize::from(q) >= self.queues.len() {
            return Err(no_queue(q, self.queues.len()));
        }
        Ok(())
    }

    fn activate(&mut self) -> Result<()> {
        let mem = self.mem.memory();
        let event_idx = self.features.has(RING_EVENT_IDX);
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, cfg) in self.queues.iter().enumerate() {
            if !cfg.ready {
                queues.push(None);
                continue;
            }
            let q = i as u16;
            let mut queue = build_queue(q, cfg, self.device.max_queue_size())?;
            queue.set_event_idx(event_idx);
            if !queue.is_valid(&*mem) {
                return Err(Error::Queue {
                    queue: q,
                    reason: format!(
                        "rings (desc {:#x}, avail {:#x}, used {:#x}, size {}) are not inside \
                         registered guest memory",
                        cfg.desc_table, cfg.avail_ring, cfg.used_ring, cfg.size
                    ),
                });
            }
            if let Some((avail, used)) = self.resume.as_ref().and_then(|r| r.get(i)) {
                queue.set_next_avail(*avail);
                queue.set_next_used(*used);
            }
            queues.push(Some(queue));
        }
        if !queues.iter().any(Option::is_some) {
            log::warn!("DRIVER_OK with no queue enabled");
        }
        self.device.activate(ActivateContext {
            mem: self.mem.clone(),
            interrupt: self.interrupt.clone(),
            queues,
            features: self.features.acked(),
        })?;
        self.active = true;
        Ok(())
    }

    /// Raises a configuration-change interrupt (after a resize, for example).
    pub fn notify_config(&self) -> Result<()> {
        self.interrupt.trigger(InterruptKind::Config)
    }
}

fn no_queue(q: u16, n: usize) -> Error {
    Error::Queue {
        queue: q,
        reason: format!("no such queue (the device has {n})"),
    }
}

fn build_queue(q: u16, cfg: &QueueConfig, max: u16) -> Result<Queue> {
    let bad = |e: virtio_queue::Error| Error::Queue {
        queue: q,
        reason: e.to_string(),
    };
    let mut queue = Queue::new(max).map_err(bad)?;
    queue.try_set_size(cfg.size).map_err(bad)?;
    queue
        .try_set_desc_table_address(GuestAddress(cfg.desc_table))
        .map_err(bad)?;
    queue
        .try_set_avail_ring_address(GuestAddress(cfg.avail_ring))
        .map_err(bad)?;
    queue
        .try_set_used_ring_address(GuestAddress(cfg.used_ring))
        .map_err(bad)?;
    queue.set_ready(true);
    Ok(queue)
}

#[cfg(test)]
#[path = "transport_tests.rs"]
mod tests;
