//! [`ScsiBackend`]: the `vhost-user-backend` glue of a virtio-scsi device.
//!
//! One worker thread per virtqueue (control, event, then the request queues), each with its
//! own epoll. Commands execute synchronously on the worker of their request queue, so a slow
//! command holds up only its own queue; task management functions on the control worker act
//! on commands running on the others through the device's task set. The event worker also
//! watches the device's event eventfd, so hotplug and capacity events reach the driver as soon
//! as they happen.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VHOST_USER_CONFIG_SIZE};
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringRwLock, VringT};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};
use vstor_virtio_core::features::VHOST_USER_PROTOCOL_FEATURES;
use vstor_virtio_core::GuestMemoryAtomic;
use vstor_virtio_scsi::config::CONFIG_LEN;
use vstor_virtio_scsi::protocol::queue;
use vstor_virtio_scsi::{QueueHandler, ScsiShared};

use crate::backend::{protocol_features, MAX_QUEUES};
use crate::error::{Error, Result};
use crate::exit::ExitEvents;

/// The vring type of the backend.
pub type ScsiVring = VringRwLock<GuestMemoryAtomic>;
/// The worker-thread event loop of the backend.
pub type ScsiEpollHandler = VringEpollHandler<Arc<ScsiBackend>>;

/// The epoll `data` value of a vring kick on its worker.
const KICK_EVENT: u16 = 0;

/// One virtqueue: its handler (created on the first kick after the ring starts).
struct QueueState {
    index: u16,
    mem: Option<GuestMemoryAtomic>,
    handler: Option<QueueHandler>,
    failed: bool,
}

/// A vhost-user-scsi backend for one frontend connection. Create a new one for every
/// connection: it remembers the features and rings of its frontend, while the
/// [`ScsiShared`] (the logical units) outlives connections.
pub struct ScsiBackend {
    shared: Arc<ScsiShared>,
    queues: Vec<Mutex<QueueState>>,
    acked_features: AtomicU64,
    exit: ExitEvents,
    /// The event loop of the event queue's worker, to watch the event eventfd.
    event_worker: Mutex<Weak<ScsiEpollHandler>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ScsiBackend {
    /// A backend serving `shared` (its options give the number and size of the queues).
    pub fn new(shared: Arc<ScsiShared>) -> Result<Self> {
        let total = shared.options().num_queues + queue::FIRST_REQUEST;
        if total > MAX_QUEUES {
            return Err(Error::InvalidOption {
                name: "queues",
                value: shared.options().num_queues.to_string(),
                reason: format!(
                    "at most {} request queues (control and event queues come on top)",
                    MAX_QUEUES - queue::FIRST_REQUEST
                ),
            });
        }
        let queues = (0..total)
            .map(|index| {
                Mutex::new(QueueState {
                    index,
                    mem: None,
                    handler: None,
                    failed: false,
                })
            })
            .collect();
        Ok(ScsiBackend {
            exit: ExitEvents::new(usize::from(total))
                .map_err(|e| Error::io("creating worker exit events", e))?,
            shared,
            queues,
            acked_features: AtomicU64::new(0),
            event_worker: Mutex::new(Weak::new()),
        })
    }

    /// The device.
    pub fn shared(&self) -> &Arc<ScsiShared> {
        &self.shared
    }

    /// The epoll `data` value of the device's event eventfd (on the event queue's worker).
    pub fn events_event(&self) -> u64 {
        self.queues.len() as u64 + 1
    }

    /// Watches the device's event eventfd from the event queue's worker (handlers from
    /// `VhostUserDaemon::get_epoll_handlers`, one per queue in queue order).
    pub fn attach_workers(&self, handlers: &[Arc<ScsiEpollHandler>]) -> Result<()> {
        if let Some(h) = handlers.get(usize::from(queue::EVENT)) {
            h.register_listener(self.shared.event_fd(), EventSet::IN, self.events_event())
                .map_err(|e| Error::io("watching the event eventfd", e))?;
            *lock(&self.event_worker) = Arc::downgrade(h);
        }
        Ok(())
    }

    /// Drops every queue handler (device reset, or after the connection ended). Commands run
    /// synchronously, so none is in flight once the workers are idle.
    pub fn stop_all(&self) {
        for q in &self.queues {
            let mut st = lock(q);
            st.handler = None;
            st.failed = false;
        }
        self.shared.set_live(None);
    }

    fn process(&self, index: usize, vring: &ScsiVring) {
        let Some(q) = self.queues.get(index) else {
            return;
        };
        let mut st = lock(q);
        if st.failed {
            return;
        }
        let Some(mem) = st.mem.as_ref().map(|m| m.memory().into_inner()) else {
            log::warn!("queue {index}: kicked before the memory table was set");
            return;
        };
        if st.handler.is_none() {
            let acked = self.acked_features.load(Ordering::Acquire);
            // The first queue to start makes the device live (events flow from now on).
            self.shared.set_live(Some(acked));
            st.handler = Some(QueueHandler::new(self.shared.clone(), st.index, acked));
        }
        let mut state = vring.get_mut();
        let Some(handler) = st.handler.as_mut() else {
            return;
        };
        match handler.process_queue(state.get_queue_mut(), &mem) {
            Ok(true) => {
                if let Err(e) = state.signal_used_queue() {
                    log::debug!("queue {index}: cannot signal the driver: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => {
                log::error!("queue {index}: {e}; queue stopped until the driver resets it");
                st.failed = true;
            }
        }
    }
}

impl VhostUserBackend for ScsiBackend {
    type Bitmap = ();
    type Vring = ScsiVring;

    fn num_queues(&self) -> usize {
        self.queues.len()
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.shared.options().queue_size)
    }

    fn features(&self) -> u64 {
        self.shared.features() | VHOST_USER_PROTOCOL_FEATURES
    }

    fn acked_features(&self, features: u64) {
        self.acked_features.store(features, Ordering::Release);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        protocol_features()
    }

    fn reset_device(&self) {
        self.stop_all();
        self.acked_features.store(0, Ordering::Release);
    }

    fn set_event_idx(&self, _enabled: bool) {}

    /// The configuration space; bytes past `struct virtio_scsi_config` read as zero.
    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let size = size.min(VHOST_USER_CONFIG_SIZE) as usize;
        let mut out = vec![0u8; size];
        let start = offset as usize;
        if start < CONFIG_LEN {
            let n = size.min(CONFIG_LEN - start);
            if let Err(e) = self.shared.read_config(u64::from(offset), &mut out[..n]) {
                log::warn!("get_config({offset}, {size}): {e}");
                return Vec::new();
            }
        }
        out
    }

    /// Writes `sense_size` / `cdb_size`; other bytes are ignored.
    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        let start = offset as usize;
        if start >= CONFIG_LEN {
            return Ok(());
        }
        let n = buf.len().min(CONFIG_LEN - start);
        self.shared
            .write_config(u64::from(offset), &buf[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }

    fn update_memory(&self, mem: GuestMemoryAtomic) -> io::Result<()> {
        for q in &self.queues {
            lock(q).mem = Some(mem.clone());
        }
        Ok(())
    }

    /// One worker thread per queue: thread `i` owns queue `i`.
    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.queues.len()).map(|i| 1u64 << i).collect()
    }

    fn exit_event(&self, thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.exit.take(thread_index)
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        if let Some(q) = self.queues.get(queue_index as usize) {
            lock(q).handler = None;
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[ScsiVring],
        thread_id: usize,
    ) -> io::Result<()> {
        let Some(vring) = vrings.first() else {
            return Ok(());
        };
        if device_event == KICK_EVENT || u64::from(device_event) == self.events_event() {
            self.process(thread_id, vring);
        } else {
            log::debug!("worker {thread_id}: unexpected event {device_event}");
        }
        Ok(())
    }
}

impl Drop for ScsiBackend {
    fn drop(&mut self) {
        // The workers (each holding this backend) are gone: their epolls, and the event
        // eventfd's registration with one of them, went with them.
        self.stop_all();
    }
}
