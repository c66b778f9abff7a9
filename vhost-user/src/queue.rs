//! The state of one virtqueue of a vhost-user-blk backend, owned by that queue's worker thread.
//!
//! Each queue has its own `Mutex<QueueState>`: the worker thread holds it while it processes a
//! kick or a completion, and the frontend thread takes it only to stop the queue
//! (`GET_VRING_BASE`, device reset, disconnect) or to swap guest memory. No lock is shared by two
//! queues on the I/O path. Lock order: queue state, then the vring.

use std::os::unix::io::RawFd;
use std::sync::{Arc, Weak};
use std::time::Duration;

use vhost_user_backend::{VringEpollHandler, VringRwLock, VringState, VringT};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::EventSet;
use vstor_virtio_blk::{BlkQueueHandler, BlkShared};
use vstor_virtio_core::{GuestMemory, GuestMemoryAtomic};

use crate::backend::BlkBackend;
use crate::poll::{poll_ring, Poller};

/// The vring type of the backend.
pub type Vring = VringRwLock<GuestMemoryAtomic>;
/// The worker-thread event loop of the backend.
pub type EpollHandler = VringEpollHandler<Arc<BlkBackend>>;

/// What a queue needs from the device to create its handler.
pub(crate) struct QueueContext<'a> {
    pub shared: &'a Arc<BlkShared>,
    pub acked_features: u64,
}

/// One virtqueue: its request handler (created on the first kick after the ring starts), the
/// completion eventfd registered with the worker's epoll, and the guest memory.
pub(crate) struct QueueState {
    index: u16,
    /// The epoll `data` value of completion events (above every queue and exit event id).
    completion_event: u64,
    mem: Option<GuestMemoryAtomic>,
    handler: Option<BlkQueueHandler>,
    /// The vring the handler serves, kept to drain it when the frontend is gone.
    vring: Option<Vring>,
    /// The event loop of the thread that owns this queue.
    epoll: Weak<EpollHandler>,
    /// The completion fd currently registered with `epoll`.
    registered: Option<RawFd>,
    /// A fatal error stopped the queue; kicks are ignored until it is stopped and restarted.
    failed: bool,
    /// The adaptive window for polling the ring after the worker emptied it.
    poller: Poller,
}

impl QueueState {
    pub fn new(index: u16, completion_event: u64, poll: Duration) -> Self {
        QueueState {
            index,
            completion_event,
            mem: None,
            handler: None,
            vring: None,
            epoll: Weak::new(),
            registered: None,
            failed: false,
            poller: Poller::new(poll),
        }
    }

    /// Records the event loop of the worker thread that owns this queue.
    pub fn set_epoll(&mut self, epoll: Weak<EpollHandler>) {
        self.epoll = epoll;
    }

    /// Records the guest memory (the frontend's memory table).
    pub fn set_memory(&mut self, mem: GuestMemoryAtomic) {
        self.mem = Some(mem);
    }

    fn memory(&self) -> Option<Arc<GuestMemory>> {
        self.mem.as_ref().map(|m| m.memory().into_inner())
    }

    /// Whether a request handler exists (the ring was kicked since it last started).
    pub fn active(&self) -> bool {
        self.handler.is_some()
    }

    /// The driver made buffers available (or the ring was just enabled).
    pub fn on_kick(&mut self, vring: &Vring, ctx: &QueueContext<'_>) {
        if self.failed {
            return;
        }
        let Some(mem) = self.memory() else {
            log::warn!(
                "queue {}: kicked before the memory table was set",
                self.index
            );
            return;
        };
        if self.handler.is_none() && !self.start(vring, ctx) {
            return;
        }
        let Some(handler) = self.handler.as_mut() else {
            return;
        };
        let index = self.index;
        let mut state = vring.get_mut();
        let ok = poll_ring(handler, &mut state, &mem, &mut self.poller, |r, st| {
            deliver(index, "requests", r, st)
        });
        drop(state);
        if !ok {
            self.fail();
        }
    }

    /// The I/O engine's completion eventfd became readable.
    pub fn on_completion(&mut self, vring: &Vring) {
        let Some(mem) = self.memory() else {
            return;
        };
        let Some(handler) = self.handler.as_mut() else {
            return;
        };
        let mut state = vring.get_mut();
        let result = handler.process_completions(state.get_queue_mut(), &mem);
        let mut ok = deliver(self.index, "completions", result, &state);
        if ok && handler.in_flight() == 0 && state.is_enabled() {
            // The engine is idle: take (and, with a polling window, wait a little for) the
            // requests the driver sends once it has its buffers back.
            let index = self.index;
            ok = poll_ring(handler, &mut state, &mem, &mut self.poller, |r, st| {
                deliver(index, "requests", r, st)
            });
        }
        drop(state);
        if !ok {
            self.fail();
        }
    }

    /// Creates the request handler with the negotiated features and registers its completion
    /// fd with the owning worker's epoll. Returns false (and marks the queue failed) on error.
    fn start(&mut self, vring: &Vring, ctx: &QueueContext<'_>) -> bool {
        let handler = match BlkQueueHandler::new(ctx.shared.clone(), self.index, ctx.acked_features)
        {
            Ok(h) => h,
            Err(e) => {
                log::error!("queue {}: cannot start: {e}", self.index);
                self.failed = true;
                return false;
            }
        };
        if let Some(fd) = handler.completion_fd() {
            let registered = match self.epoll.upgrade() {
                Some(epoll) => epoll
                    .register_listener(fd, EventSet::IN, self.completion_event)
                    .map_err(|e| e.to_string()),
                None => Err("the worker thread is gone".to_string()),
            };
            if let Err(e) = registered {
                log::error!("queue {}: cannot watch I/O completions: {e}", self.index);
                self.failed = true;
                // Keep nothing: no request was submitted yet.
                return false;
            }
            self.registered = Some(fd);
        }
        log::debug!(
            "queue {}: started (features {:#x})",
            self.index,
            ctx.acked_features
        );
        self.handler = Some(handler);
        self.vring = Some(vring.clone());
        true
    }

    /// Stops serving after a fatal error: kicks are ignored and completions no longer watched
    /// (so a level-triggered eventfd cannot spin the worker); the requests in flight are
    /// drained when the queue is stopped.
    fn fail(&mut self) {
        self.failed = true;
        self.unregister();
    }

    fn unregister(&mut self) {
        if let Some(fd) = self.registered.take() {
            if let Some(epoll) = self.epoll.upgrade() {
                if let Err(e) = epoll.unregister_listener(fd, EventSet::IN, self.completion_event) {
                    log::debug!("queue {}: unregister completion fd: {e}", self.index);
                }
            }
        }
    }

    /// Stops the queue (`GET_VRING_BASE`, device reset, disconnect): waits for the requests in
    /// flight, puts them in the used ring, and drops the handler so the next start is clean.
    pub fn stop(&mut self) {
        if let Some(mut handler) = self.handler.take() {
            if let (Some(vring), Some(mem)) = (self.vring.as_ref(), self.memory()) {
                let mut state = vring.get_mut();
                let result = handler.drain(state.get_queue_mut(), &mem);
                deliver(self.index, "drain", result, &state);
            } else if handler.in_flight() > 0 {
                log::warn!(
                    "queue {}: {} requests in flight abandoned",
                    self.index,
                    handler.in_flight()
                );
            }
            self.unregister();
            drop(handler);
            log::debug!("queue {}: stopped", self.index);
        }
        self.unregister();
        self.vring = None;
        self.failed = false;
    }
}

/// Notifies the driver when a processing step asks for it; logs a fatal error. Returns whether
/// the step succeeded.
fn deliver(
    index: u16,
    what: &str,
    result: vstor_virtio_blk::Result<bool>,
    state: &VringState<GuestMemoryAtomic>,
) -> bool {
    match result {
        Ok(notify) => {
            if notify {
                if let Err(e) = state.signal_used_queue() {
                    log::debug!("queue {index}: cannot signal the driver: {e}");
                }
            }
            true
        }
        Err(e) => {
            log::error!("queue {index}: {what}: {e}; queue stopped until the driver resets it");
            false
        }
    }
}
