//! [`BlkBackend`]: the `vhost-user-backend` glue of a virtio-blk device.
//!
//! One worker thread per virtqueue (queue `i` is owned by worker `i`), each with its own epoll:
//! the vring's kick (event 0 of that worker) and the I/O engine's completion eventfd (event
//! [`BlkBackend::completion_event`]) both land on the thread that owns the queue.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VHOST_USER_CONFIG_SIZE};
use vhost_user_backend::VhostUserBackend;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};
use vstor_virtio_blk::BlkShared;
use vstor_virtio_core::features::VHOST_USER_PROTOCOL_FEATURES;
use vstor_virtio_core::GuestMemoryAtomic;

use crate::error::{Error, Result};
use crate::exit::ExitEvents;
use crate::queue::{EpollHandler, QueueContext, QueueState, Vring};

/// Most queues one backend can serve: `vhost-user-backend` maps queues to worker threads with
/// a 64-bit mask per thread.
pub const MAX_QUEUES: u16 = 64;

/// The epoll `data` value of a vring kick on its worker (each worker owns exactly one vring).
const KICK_EVENT: u16 = 0;

/// The vhost-user protocol features offered: configuration space access (`CONFIG`), several
/// queues (`MQ`), acknowledgements (`REPLY_ACK`) and incremental memory tables
/// (`CONFIGURE_MEM_SLOTS`, which libblkio requires).
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
}

/// A vhost-user-blk backend for one frontend connection.
///
/// Use it as `Arc<BlkBackend>` with a `vhost_user_backend::VhostUserDaemon`, then call
/// [`BlkBackend::attach_workers`] with the daemon's epoll handlers so completion eventfds can be
/// watched by the thread that owns each queue. Create a new backend for every connection (the
/// [`crate::BlkServer`] does): a backend remembers the features and rings of its frontend.
pub struct BlkBackend {
    shared: Arc<BlkShared>,
    queues: Vec<Mutex<QueueState>>,
    acked_features: AtomicU64,
    event_idx: AtomicBool,
    /// Worker exit events.
    exit: ExitEvents,
}

impl BlkBackend {
    /// A backend serving `shared` (its options give the number and size of the queues).
    pub fn new(shared: Arc<BlkShared>) -> Result<Self> {
        Self::with_poll(shared, poll_window())
    }

    /// Like [`BlkBackend::new`] with an explicit polling window (zero: never poll).
    pub fn with_poll(shared: Arc<BlkShared>, poll: Duration) -> Result<Self> {
        let num_queues = shared.options().num_queues;
        if num_queues == 0 || num_queues > MAX_QUEUES {
            return Err(Error::InvalidOption {
                name: "queues",
                value: num_queues.to_string(),
                reason: format!("must be 1..={MAX_QUEUES}"),
            });
        }
        let completion_event = u64::from(num_queues) + 1;
        let queues = (0..num_queues)
            .map(|i| Mutex::new(QueueState::new(i, completion_event, poll)))
            .collect();
        let exit = ExitEvents::new(usize::from(num_queues))
            .map_err(|e| Error::io("creating worker exit events", e))?;
        Ok(BlkBackend {
            shared,
            queues,
            acked_features: AtomicU64::new(0),
            event_idx: AtomicBool::new(false),
            exit,
        })
    }

    /// The device.
    pub fn shared(&self) -> &Arc<BlkShared> {
        &self.shared
    }

    /// The epoll `data` value used for I/O completion eventfds: above the ids
    /// `vhost-user-backend` reserves for the queues and the exit event.
    pub fn completion_event(&self) -> u64 {
        self.queues.len() as u64 + 1
    }

    /// The features the frontend acknowledged (0 before `SET_FEATURES`).
    pub fn negotiated_features(&self) -> u64 {
        self.acked_features.load(Ordering::Acquire)
    }

    /// Whether the frontend negotiated VIRTIO_F_RING_EVENT_IDX.
    pub fn event_idx(&self) -> bool {
        self.event_idx.load(Ordering::Acquire)
    }

    /// Gives each queue the event loop of the worker thread that owns it (from
    /// `VhostUserDaemon::get_epoll_handlers`, one per thread, in thread order). Only weak
    /// references are kept: the handlers hold the backend, not the other way round.
    pub fn attach_workers(&self, handlers: &[Arc<EpollHandler>]) {
        for (queue, handler) in self.queues.iter().zip(handlers) {
            lock(queue).set_epoll(Arc::downgrade(handler));
        }
    }

    /// Drains every queue and drops the request handlers (device reset, or after the
    /// connection ended). The next kick starts each queue afresh.
    pub fn stop_all(&self) {
        for queue in &self.queues {
            lock(queue).stop();
        }
    }

    /// Whether any queue currently has a request handler.
    pub fn any_active(&self) -> bool {
        self.queues.iter().any(|q| lock(q).active())
    }
}

/// The longest a worker polls its ring for new requests after emptying it, before it
/// re-enables kicks and sleeps; the window adapts below it (see `poll.rs`), like QEMU's
/// iothread `poll-max-ns` (whose default is 32 µs). 100 µs covers a driver whose CPU has to
/// be woken from idle in a virtual machine, and an idle queue still costs nothing: the window
/// drops to zero once the driver stays away longer. `VSTOR_POLL_US` overrides it; 0 turns
/// polling off.
pub const DEFAULT_POLL: Duration = Duration::from_micros(100);

/// The polling window: `VSTOR_POLL_US` if set to a number of microseconds, else
/// [`DEFAULT_POLL`].
pub fn poll_window() -> Duration {
    match std::env::var("VSTOR_POLL_US") {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(us) => Duration::from_micros(us.min(1_000_000)),
            Err(_) => {
                log::warn!(
                    "VSTOR_POLL_US={v:?} is not a number of microseconds; using the default"
                );
                DEFAULT_POLL
            }
        },
        Err(_) => DEFAULT_POLL,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a queue lock would be a bug; keep serving the other queues.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = Vring;

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

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Release);
    }

    /// The configuration space; bytes past the end of `struct virtio_blk_config` as vstor
    /// knows it (a frontend may ask for newer, longer layouts) read as zero.
    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let size = size.min(VHOST_USER_CONFIG_SIZE) as usize;
        let mut out = vec![0u8; size];
        let known = std::mem::size_of_val(&self.shared.config());
        let start = offset as usize;
        if start < known {
            let n = size.min(known - start);
            if let Err(e) = self.shared.read_config(u64::from(offset), &mut out[..n]) {
                log::warn!("get_config({offset}, {size}): {e}");
                return Vec::new();
            }
        }
        out
    }

    /// Writes the configuration space (only `writeback` is writable); bytes past the known
    /// layout are ignored, like writes to the read-only fields.
    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        let known = std::mem::size_of_val(&self.shared.config());
        let start = offset as usize;
        if start >= known {
            return Ok(());
        }
        let n = buf.len().min(known - start);
        self.shared
            .write_config(u64::from(offset), &buf[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }

    fn update_memory(&self, mem: GuestMemoryAtomic) -> io::Result<()> {
        for queue in &self.queues {
            lock(queue).set_memory(mem.clone());
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

    /// `GET_VRING_BASE`: the ring is stopped; finish its requests before the frontend reads
    /// the ring base.
    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        if let Some(queue) = self.queues.get(queue_index as usize) {
            lock(queue).stop();
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        // Errors are handled per queue: returning one here would end the worker thread.
        let (Some(queue), Some(vring)) = (self.queues.get(thread_id), vrings.first()) else {
            log::warn!("event {device_event} for unknown worker {thread_id}");
            return Ok(());
        };
        let mut state = lock(queue);
        if device_event == KICK_EVENT {
            let ctx = QueueContext {
                shared: &self.shared,
                acked_features: self.negotiated_features(),
            };
            state.on_kick(vring, &ctx);
        } else if u64::from(device_event) == self.completion_event() {
            state.on_completion(vring);
        } else {
            log::debug!("worker {thread_id}: unexpected event {device_event}");
        }
        Ok(())
    }
}

impl Drop for BlkBackend {
    fn drop(&mut self) {
        self.stop_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vstor_blockdev::open::{open, OpenOptions};
    use vstor_virtio_blk::BlkOptions;

    fn backend(num_queues: u16) -> BlkBackend {
        let dev = open("memory:1M", &OpenOptions::default()).unwrap();
        let shared = BlkShared::new(
            dev,
            BlkOptions {
                num_queues,
                queue_size: 128,
                ..Default::default()
            },
        )
        .unwrap();
        BlkBackend::new(shared).unwrap()
    }

    #[test]
    fn offers_protocol_features_and_queue_layout() {
        let b = backend(4);
        assert_ne!(b.features() & VHOST_USER_PROTOCOL_FEATURES, 0);
        assert_eq!(
            b.features() & !VHOST_USER_PROTOCOL_FEATURES,
            b.shared().features()
        );
        let pf = b.protocol_features();
        assert!(pf.contains(
            VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        ));
        assert_eq!(b.num_queues(), 4);
        assert_eq!(b.max_queue_size(), 128);
        assert_eq!(b.queues_per_thread(), vec![1, 2, 4, 8]);
        assert_eq!(b.completion_event(), 5);
    }

    #[test]
    fn refuses_more_queues_than_workers_can_map() {
        let dev = open("null:1M", &OpenOptions::default()).unwrap();
        let opts = BlkOptions {
            num_queues: MAX_QUEUES + 1,
            ..Default::default()
        };
        let shared = BlkShared::new(dev, opts).unwrap();
        assert!(matches!(
            BlkBackend::new(shared),
            Err(Error::InvalidOption { name: "queues", .. })
        ));
    }

    #[test]
    fn config_reads_are_padded_and_bounded() {
        let b = backend(2);
        let cfg = b.get_config(0, 8);
        assert_eq!(u64::from_le_bytes(cfg.try_into().unwrap()), (1 << 20) / 512);
        // num_queues at offset 34.
        assert_eq!(b.get_config(34, 2), vec![2, 0]);
        // A longer layout (QEMU's with zoned fields, 96 bytes): the tail reads as zero.
        let long = b.get_config(0, 96);
        assert_eq!(long.len(), 96);
        assert!(long[72..].iter().all(|&x| x == 0));
        assert_eq!(b.get_config(200, 4), vec![0; 4]);
        assert_eq!(
            b.get_config(0, u32::MAX).len(),
            VHOST_USER_CONFIG_SIZE as usize
        );
    }

    #[test]
    fn config_writes_toggle_the_write_cache_only() {
        let b = backend(1);
        b.set_config(32, &[0]).unwrap();
        assert_eq!(b.get_config(32, 1), vec![0]);
        b.set_config(32, &[1]).unwrap();
        assert_eq!(b.get_config(32, 1), vec![1]);
        // Read-only fields and bytes past the layout are ignored.
        b.set_config(0, &[0xff; 8]).unwrap();
        assert_eq!(
            u64::from_le_bytes(b.get_config(0, 8).try_into().unwrap()),
            (1 << 20) / 512
        );
        b.set_config(70, &[1; 10]).unwrap();
        b.set_config(4000, &[1]).unwrap();
    }

    #[test]
    fn feature_state_is_recorded_and_reset() {
        let b = backend(1);
        b.acked_features(0x1234);
        b.set_event_idx(true);
        assert_eq!(b.negotiated_features(), 0x1234);
        assert!(b.event_idx());
        b.reset_device();
        assert_eq!(b.negotiated_features(), 0);
        assert!(!b.any_active());
    }

    #[test]
    fn events_for_unknown_workers_are_ignored() {
        let b = backend(1);
        b.handle_event(0, EventSet::IN, &[], 7).unwrap();
        b.stop_vring(99).unwrap();
    }
}
