//! [`ScsiShared`]: what every queue of one virtio-scsi device shares: the targets and their
//! logical units, the sizes the driver chose, the pending events and the task set.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use vstor_scsi_disk::{LogicalUnit, Target};

use crate::config::{config_bytes, config_range, ScsiOptions, CDB_SIZE_OFFSET, SENSE_SIZE_OFFSET};
use crate::error::{Error, Result};
use crate::events::Events;
use crate::lun_addr::{LunAddr, MAX_TARGETS};
use crate::protocol::{an, event, feature, CDB_SIZE, MAX_CDB_SIZE, MAX_SENSE_SIZE, SENSE_SIZE};
use crate::tasks::TaskSet;

/// The I_T nexus of the one initiator a virtio-scsi device has (the driver).
pub const NEXUS: u64 = 1;

/// State shared by the queues of one device.
#[derive(Debug)]
pub struct ScsiShared {
    opts: ScsiOptions,
    targets: RwLock<BTreeMap<u8, Arc<Target>>>,
    sense_size: AtomicU32,
    cdb_size: AtomicU32,
    generation: AtomicU32,
    /// Bumped whenever a unit is attached or detached (queue handlers cache lookups).
    topology: AtomicU64,
    /// Features the driver accepted (0 while not live).
    acked: AtomicU32,
    events: Mutex<Events>,
    /// Asynchronous notification classes the driver subscribed to, per LUN.
    an_subscribed: Mutex<HashMap<LunAddr, u32>>,
    tasks: TaskSet,
}

impl ScsiShared {
    /// A device with no logical unit yet.
    pub fn new(opts: ScsiOptions) -> Result<Arc<ScsiShared>> {
        opts.validate()?;
        Ok(Arc::new(ScsiShared {
            opts,
            targets: RwLock::new(BTreeMap::new()),
            sense_size: AtomicU32::new(SENSE_SIZE),
            cdb_size: AtomicU32::new(CDB_SIZE),
            generation: AtomicU32::new(0),
            topology: AtomicU64::new(0),
            acked: AtomicU32::new(0),
            events: Mutex::new(Events::new()?),
            an_subscribed: Mutex::new(HashMap::new()),
            tasks: TaskSet::default(),
        }))
    }

    /// The options.
    pub fn options(&self) -> &ScsiOptions {
        &self.opts
    }

    /// Feature bits offered.
    pub fn features(&self) -> u64 {
        self.opts.features()
    }

    /// The task set (commands in progress).
    pub fn tasks(&self) -> &TaskSet {
        &self.tasks
    }

    fn events(&self) -> MutexGuard<'_, Events> {
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches `unit` at `target`/`lun`; a live driver that negotiated HOTPLUG gets a
    /// TRANSPORT_RESET / RESCAN event for it.
    pub fn attach(&self, target: u32, lun: u32, unit: Arc<LogicalUnit>) -> Result<()> {
        let err = |reason: String| Error::Lun {
            target,
            lun,
            reason,
        };
        let t = u8::try_from(target)
            .ok()
            .filter(|&t| u16::from(t) < MAX_TARGETS)
            .ok_or_else(|| err(format!("target out of range (0..{MAX_TARGETS})")))?;
        let tgt = {
            let mut map = self.targets.write().unwrap_or_else(|e| e.into_inner());
            map.entry(t).or_default().clone()
        };
        tgt.attach(lun, unit).map_err(|e| err(e.to_string()))?;
        self.topology.fetch_add(1, Ordering::Release);
        let addr = LunAddr {
            target: t,
            lun: lun as u16,
        };
        self.push_event(
            feature::HOTPLUG,
            event::TRANSPORT_RESET,
            addr,
            event::RESET_RESCAN,
        );
        Ok(())
    }

    /// Detaches the unit at `target`/`lun` (a target left empty goes away); a live driver
    /// that negotiated HOTPLUG gets a TRANSPORT_RESET / REMOVED event. Commands already
    /// running on the unit finish.
    pub fn detach(&self, target: u32, lun: u32) -> Result<Arc<LogicalUnit>> {
        let err = |reason: &str| Error::Lun {
            target,
            lun,
            reason: reason.into(),
        };
        let t = u8::try_from(target).map_err(|_| err("target out of range"))?;
        let unit = {
            let mut map = self.targets.write().unwrap_or_else(|e| e.into_inner());
            let tgt = map.get(&t).ok_or_else(|| err("no such target"))?.clone();
            let unit = tgt.detach(lun).ok_or_else(|| err("no such LUN"))?;
            if tgt.is_empty() {
                map.remove(&t);
            }
            self.topology.fetch_add(1, Ordering::Release);
            unit
        };
        let addr = LunAddr {
            target: t,
            lun: lun as u16,
        };
        self.an_subscribed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&addr);
        self.push_event(
            feature::HOTPLUG,
            event::TRANSPORT_RESET,
            addr,
            event::RESET_REMOVED,
        );
        Ok(unit)
    }

    /// Tells the driver that the unit at `addr` changed capacity (after
    /// [`LogicalUnit::replace_medium`], which queued the unit attention): a PARAM_CHANGE event
    /// with ASC/ASCQ 2Ah/09h when CHANGE was negotiated.
    pub fn capacity_changed(&self, addr: LunAddr) {
        self.push_event(
            feature::CHANGE,
            event::PARAM_CHANGE,
            addr,
            0x2a | (0x09 << 8),
        );
    }

    /// Tells a driver subscribed to media-change notifications that the medium at `addr`
    /// changed (a CD-ROM loaded or ejected).
    pub fn media_changed(&self, addr: LunAddr) {
        let subscribed = self
            .an_subscribed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr)
            .copied()
            .unwrap_or(0);
        if subscribed & an::MEDIA_CHANGE != 0 {
            self.push_event(0, event::ASYNC_NOTIFY, addr, an::MEDIA_CHANGE);
        }
    }

    fn push_event(&self, needs: u64, kind: u32, addr: LunAddr, reason: u32) {
        let acked = u64::from(self.acked.load(Ordering::Acquire));
        if needs != 0 && acked & needs == 0 {
            return;
        }
        self.events().push(kind, addr.encode(), reason);
    }

    /// A number that changes whenever a unit is attached or detached.
    pub fn topology(&self) -> u64 {
        self.topology.load(Ordering::Acquire)
    }

    /// The target, if any unit is attached to it.
    pub fn target(&self, target: u8) -> Option<Arc<Target>> {
        self.targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&target)
            .cloned()
    }

    /// The unit at `addr`.
    pub fn unit(&self, addr: LunAddr) -> Option<Arc<LogicalUnit>> {
        self.target(addr.target)?.get(u32::from(addr.lun))
    }

    /// Every attached unit's address, ascending.
    pub fn units(&self) -> Vec<LunAddr> {
        let map = self.targets.read().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .flat_map(|(&target, t)| t.luns().into_iter().map(move |lun| LunAddr { target, lun }))
            .collect()
    }

    /// Records the asynchronous notification classes the driver subscribed to for `addr`;
    /// returns the classes supported (media change, for units with removable media).
    pub fn an_subscribe(&self, addr: LunAddr, requested: u32, subscribe: bool) -> u32 {
        let supported = match self.unit(addr) {
            Some(u) if removable(&u) => an::MEDIA_CHANGE,
            _ => 0,
        };
        let actual = requested & supported;
        if subscribe {
            self.an_subscribed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(addr, actual);
        }
        actual
    }

    /// The driver went live with `acked` features (events start) or was reset (`None`:
    /// events stop, sizes return to their defaults).
    pub fn set_live(&self, acked: Option<u64>) {
        self.acked
            .store(acked.unwrap_or(0) as u32, Ordering::Release);
        self.events().set_enabled(acked.is_some());
        if acked.is_none() {
            self.sense_size.store(SENSE_SIZE, Ordering::Relaxed);
            self.cdb_size.store(CDB_SIZE, Ordering::Relaxed);
            self.an_subscribed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
    }

    /// Readable while events wait for the event queue.
    pub fn event_fd(&self) -> RawFd {
        self.events().fd()
    }

    /// Clears the event eventfd before the event queue is served.
    pub fn ack_event_fd(&self) {
        self.events().ack_fd()
    }

    /// Takes the next event to deliver.
    pub fn pop_event(&self) -> Option<[u8; event::SIZE]> {
        self.events().pop()
    }

    /// Whether events wait for the event queue.
    pub fn has_events(&self) -> bool {
        self.events().has_pending()
    }

    /// Puts back an event the event queue had no buffer for.
    pub fn unpop_event(&self, e: [u8; event::SIZE]) {
        self.events().unpop(e)
    }

    /// `sense_size` as the driver set it.
    pub fn sense_size(&self) -> u32 {
        self.sense_size.load(Ordering::Relaxed)
    }

    /// `cdb_size` as the driver set it.
    pub fn cdb_size(&self) -> u32 {
        self.cdb_size.load(Ordering::Relaxed)
    }

    /// Configuration generation.
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Reads configuration space.
    pub fn read_config(&self, offset: u64, data: &mut [u8]) -> Result<()> {
        let range = config_range(offset, data.len())?;
        let cfg = config_bytes(&self.opts, self.sense_size(), self.cdb_size());
        data.copy_from_slice(&cfg[range]);
        Ok(())
    }

    /// Writes configuration space: `sense_size` and `cdb_size` are the driver's (§5.6.4),
    /// clamped to what the device can hold; writes elsewhere are ignored.
    pub fn write_config(&self, offset: u64, data: &[u8]) -> Result<()> {
        let range = config_range(offset, data.len())?;
        let mut cfg = config_bytes(&self.opts, self.sense_size(), self.cdb_size());
        cfg[range].copy_from_slice(data);
        let field =
            |off: usize| u32::from_le_bytes([cfg[off], cfg[off + 1], cfg[off + 2], cfg[off + 3]]);
        let sense = field(SENSE_SIZE_OFFSET).min(MAX_SENSE_SIZE);
        let cdb = field(CDB_SIZE_OFFSET).min(MAX_CDB_SIZE);
        if sense != self.sense_size() || cdb != self.cdb_size() {
            self.sense_size.store(sense, Ordering::Relaxed);
            self.cdb_size.store(cdb, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Restores the driver-written sizes (migration).
    pub fn set_sizes(&self, sense: u32, cdb: u32) -> Result<()> {
        if sense > MAX_SENSE_SIZE || cdb > MAX_CDB_SIZE {
            return Err(Error::Core(vstor_virtio_core::Error::State(format!(
                "virtio-scsi state: sense_size {sense} / cdb_size {cdb} above {MAX_SENSE_SIZE} / {MAX_CDB_SIZE}"
            ))));
        }
        self.sense_size.store(sense, Ordering::Relaxed);
        self.cdb_size.store(cdb, Ordering::Relaxed);
        Ok(())
    }
}

/// Whether the unit has removable media (media-change notifications apply).
fn removable(unit: &LogicalUnit) -> bool {
    unit.options().kind == vstor_scsi_disk::LunKind::Cdrom
}
