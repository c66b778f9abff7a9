//! [`VirtioScsi`]: the virtio-scsi device for in-process transports (the C ABI, MMIO/PCI
//! models in Rust VMMs, tests). vhost-user drives the queue handlers directly instead.

use std::os::unix::io::RawFd;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestAddressSpace;
use vstor_virtio_core::device::{ActivateContext, DeviceType, VirtioDevice};
use vstor_virtio_core::interrupt::{Interrupt, InterruptKind};
use vstor_virtio_core::GuestMemoryAtomic;

use crate::config::CONFIG_LEN;
use crate::ctrl::CtrlQueueHandler;
use crate::error::Error;
use crate::eventq::EventQueueHandler;
use crate::protocol::queue;
use crate::request::ScsiQueueHandler;
use crate::shared::ScsiShared;

/// The handler of one queue, by its role.
#[derive(Debug)]
pub enum QueueHandler {
    /// The control queue.
    Control(CtrlQueueHandler),
    /// The event queue.
    Event(EventQueueHandler),
    /// A request queue.
    Request(ScsiQueueHandler),
}

impl QueueHandler {
    /// The handler for queue `index` of a device over `shared`.
    pub fn new(shared: Arc<ScsiShared>, index: u16, acked_features: u64) -> QueueHandler {
        match index {
            queue::CONTROL => QueueHandler::Control(CtrlQueueHandler::new(shared, acked_features)),
            queue::EVENT => QueueHandler::Event(EventQueueHandler::new(shared, acked_features)),
            i => QueueHandler::Request(ScsiQueueHandler::new(shared, i, acked_features)),
        }
    }

    /// Processes what the driver made available; returns whether to notify it.
    pub fn process_queue(
        &mut self,
        queue: &mut Queue,
        mem: &Arc<vstor_virtio_core::GuestMemory>,
    ) -> crate::Result<bool> {
        match self {
            QueueHandler::Control(h) => h.process_queue(queue, mem),
            QueueHandler::Event(h) => h.process_queue(queue, mem),
            QueueHandler::Request(h) => h.process_queue(queue, mem),
        }
    }
}

struct ActiveQueue {
    queue: Queue,
    handler: QueueHandler,
}

struct Active {
    mem: GuestMemoryAtomic,
    current: Arc<vstor_virtio_core::GuestMemory>,
    interrupt: Arc<dyn Interrupt>,
    queues: Vec<Option<ActiveQueue>>,
}

/// A virtio-scsi device driven by an in-process transport. Commands execute synchronously in
/// `queue_notify`; events are delivered when the event queue is kicked or when
/// [`VirtioDevice::completion_fd`] of the event queue becomes readable.
pub struct VirtioScsi {
    shared: Arc<ScsiShared>,
    active: Option<Active>,
    needs_reset: bool,
}

impl VirtioScsi {
    /// A device over `shared` (see [`ScsiShared::new`]).
    pub fn new(shared: Arc<ScsiShared>) -> Self {
        VirtioScsi {
            shared,
            active: None,
            needs_reset: false,
        }
    }

    /// What the queues share (attach and detach units through it).
    pub fn shared(&self) -> &Arc<ScsiShared> {
        &self.shared
    }

    fn with_queue(&mut self, q: u16) -> vstor_virtio_core::Result<()> {
        let active = self
            .active
            .as_mut()
            .ok_or(vstor_virtio_core::Error::NotReady("device not activated"))?;
        let aq = active
            .queues
            .get_mut(usize::from(q))
            .and_then(|s| s.as_mut())
            .ok_or_else(|| vstor_virtio_core::Error::Queue {
                queue: q,
                reason: "no such queue or queue not enabled".into(),
            })?;
        match aq.handler.process_queue(&mut aq.queue, &active.current) {
            Ok(true) => active.interrupt.trigger(InterruptKind::Queue(q)),
            Ok(false) => Ok(()),
            Err(Error::NeedsReset { .. }) | Err(Error::Queue { .. }) => {
                self.needs_reset = true;
                active.interrupt.trigger(InterruptKind::Config)
            }
            Err(e) => Err(vstor_virtio_core::Error::Queue {
                queue: q,
                reason: e.to_string(),
            }),
        }
    }
}

impl VirtioDevice for VirtioScsi {
    fn device_type(&self) -> DeviceType {
        DeviceType::Scsi
    }

    fn num_queues(&self) -> u16 {
        self.shared.options().num_queues + queue::FIRST_REQUEST
    }

    fn max_queue_size(&self) -> u16 {
        self.shared.options().queue_size
    }

    fn device_features(&self) -> u64 {
        self.shared.features()
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) -> vstor_virtio_core::Result<()> {
        self.shared.read_config(offset, data).map_err(into_core)
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) -> vstor_virtio_core::Result<()> {
        self.shared.write_config(offset, data).map_err(into_core)
    }

    fn config_generation(&self) -> u32 {
        self.shared.generation()
    }

    fn activate(&mut self, ctx: ActivateContext) -> vstor_virtio_core::Result<()> {
        let queues = ctx
            .queues
            .into_iter()
            .enumerate()
            .map(|(i, q)| {
                q.map(|queue| ActiveQueue {
                    queue,
                    handler: QueueHandler::new(self.shared.clone(), i as u16, ctx.features),
                })
            })
            .collect();
        self.active = Some(Active {
            current: ctx.mem.memory().into_inner(),
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            queues,
        });
        self.shared.set_live(Some(ctx.features));
        self.needs_reset = false;
        Ok(())
    }

    fn queue_notify(&mut self, queue: u16) -> vstor_virtio_core::Result<()> {
        self.with_queue(queue)
    }

    fn completion_fd(&self, queue: u16) -> Option<RawFd> {
        (queue == queue::EVENT && self.active.is_some()).then(|| self.shared.event_fd())
    }

    fn process_completions(&mut self, queue: u16) -> vstor_virtio_core::Result<()> {
        if queue == queue::EVENT {
            return self.with_queue(queue);
        }
        Ok(())
    }

    fn needs_reset(&self) -> bool {
        self.needs_reset
    }

    fn reset(&mut self) {
        // Commands run inside queue_notify: none is in flight here.
        self.active = None;
        self.needs_reset = false;
        self.shared.set_live(None);
    }

    fn memory_changed(&mut self) {
        if let Some(a) = self.active.as_mut() {
            a.current = a.mem.memory().into_inner();
        }
    }

    fn queue_indices(&self, queue: u16) -> Option<(u16, u16, bool)> {
        use vstor_virtio_core::virtio_queue::QueueT;
        let a = self.active.as_ref()?;
        let q = &a.queues.get(usize::from(queue))?.as_ref()?.queue;
        Some((q.next_avail(), q.next_used(), q.event_idx_enabled()))
    }

    fn save_state(&mut self) -> vstor_virtio_core::Result<Vec<u8>> {
        let mut v = Vec::with_capacity(8);
        v.extend_from_slice(&self.shared.sense_size().to_le_bytes());
        v.extend_from_slice(&self.shared.cdb_size().to_le_bytes());
        Ok(v)
    }

    fn restore_state(&mut self, data: &[u8]) -> vstor_virtio_core::Result<()> {
        let [a, b, c, d, e, f, g, h] = data else {
            return Err(vstor_virtio_core::Error::State(format!(
                "virtio-scsi state must be 8 bytes (sense_size, cdb_size), got {}",
                data.len()
            )));
        };
        self.shared
            .set_sizes(
                u32::from_le_bytes([*a, *b, *c, *d]),
                u32::from_le_bytes([*e, *f, *g, *h]),
            )
            .map_err(into_core)
    }
}

fn into_core(e: Error) -> vstor_virtio_core::Error {
    match e {
        Error::Core(c) => c,
        other => vstor_virtio_core::Error::State(other.to_string()),
    }
}
