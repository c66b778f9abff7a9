//! [`VirtioBlk`]: the virtio-blk device for in-process transports (the C ABI, MMIO/PCI models
//! in Rust VMMs, tests). vhost-user drives [`BlkQueueHandler`]s directly instead.

use std::os::unix::io::RawFd;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestAddressSpace;
use vstor_virtio_core::device::{ActivateContext, DeviceType, VirtioDevice};
use vstor_virtio_core::interrupt::{Interrupt, InterruptKind};
use vstor_virtio_core::{virtio_queue, GuestMemoryAtomic};

use crate::config::{BlkShared, VirtioBlkConfig};
use crate::error::Error;
use crate::handler::BlkQueueHandler;

struct ActiveQueue {
    queue: Queue,
    handler: BlkQueueHandler,
}

struct Active {
    mem: GuestMemoryAtomic,
    /// The current map, refreshed by `memory_changed` (saves an arc-swap load per kick).
    current: Arc<vstor_virtio_core::GuestMemory>,
    interrupt: Arc<dyn Interrupt>,
    queues: Vec<Option<ActiveQueue>>,
}

/// A virtio-blk device driven by an in-process transport.
pub struct VirtioBlk {
    shared: Arc<BlkShared>,
    active: Option<Active>,
    needs_reset: bool,
}

impl VirtioBlk {
    /// A device over `shared` (see [`BlkShared::new`]).
    pub fn new(shared: Arc<BlkShared>) -> Self {
        VirtioBlk {
            shared,
            active: None,
            needs_reset: false,
        }
    }

    /// What the queues share.
    pub fn shared(&self) -> &Arc<BlkShared> {
        &self.shared
    }

    /// The queue `q` while active (for state snapshots).
    pub fn queue(&self, q: u16) -> Option<&Queue> {
        let a = self.active.as_ref()?;
        a.queues.get(usize::from(q))?.as_ref().map(|aq| &aq.queue)
    }

    fn with_queue(
        &mut self,
        q: u16,
        f: impl FnOnce(&mut ActiveQueue, &Arc<vstor_virtio_core::GuestMemory>) -> crate::Result<bool>,
    ) -> vstor_virtio_core::Result<()> {
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
        match f(aq, &active.current) {
            Ok(true) => active.interrupt.trigger(InterruptKind::Queue(q)),
            Ok(false) => Ok(()),
            Err(Error::NeedsReset { .. }) | Err(Error::Queue { .. }) => {
                // §2.1.2: set DEVICE_NEEDS_RESET and tell the driver through a config interrupt.
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

impl VirtioDevice for VirtioBlk {
    fn device_type(&self) -> DeviceType {
        DeviceType::Block
    }

    fn num_queues(&self) -> u16 {
        self.shared.options().num_queues
    }

    fn max_queue_size(&self) -> u16 {
        self.shared.options().queue_size
    }

    fn device_features(&self) -> u64 {
        self.shared.features()
    }

    fn config_len(&self) -> usize {
        std::mem::size_of::<VirtioBlkConfig>()
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
        let mut queues = Vec::with_capacity(ctx.queues.len());
        for (i, q) in ctx.queues.into_iter().enumerate() {
            let Some(queue) = q else {
                queues.push(None);
                continue;
            };
            let handler = BlkQueueHandler::new(self.shared.clone(), i as u16, ctx.features)
                .map_err(into_core)?;
            queues.push(Some(ActiveQueue { queue, handler }));
        }
        self.active = Some(Active {
            current: ctx.mem.memory().into_inner(),
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            queues,
        });
        self.needs_reset = false;
        Ok(())
    }

    fn queue_notify(&mut self, queue: u16) -> vstor_virtio_core::Result<()> {
        self.with_queue(queue, |aq, mem| {
            aq.handler.process_queue(&mut aq.queue, mem)
        })
    }

    fn completion_fd(&self, queue: u16) -> Option<RawFd> {
        let a = self.active.as_ref()?;
        a.queues
            .get(usize::from(queue))?
            .as_ref()?
            .handler
            .completion_fd()
    }

    fn process_completions(&mut self, queue: u16) -> vstor_virtio_core::Result<()> {
        self.with_queue(queue, |aq, mem| {
            aq.handler.process_completions(&mut aq.queue, mem)
        })
    }

    fn needs_reset(&self) -> bool {
        self.needs_reset
    }

    fn reset(&mut self) {
        if let Some(mut active) = self.active.take() {
            let mem = active.mem.memory().into_inner();
            for aq in active.queues.iter_mut().flatten() {
                if let Err(e) = aq.handler.drain(&mut aq.queue, &mem) {
                    log::error!("virtio-blk reset: {e}");
                }
            }
        }
        self.needs_reset = false;
        self.shared.set_writeback(
            self.shared
                .options()
                .writeback
                .unwrap_or(!self.shared.dev().info().cache.write_through()),
        );
    }

    fn memory_changed(&mut self) {
        if let Some(a) = self.active.as_mut() {
            a.current = a.mem.memory().into_inner();
        }
    }

    fn quiesce(&mut self) -> vstor_virtio_core::Result<()> {
        if let Some(active) = self.active.as_mut() {
            let mem = active.mem.memory().into_inner();
            for (i, aq) in active.queues.iter_mut().enumerate() {
                if let Some(aq) = aq {
                    let notify = aq.handler.drain(&mut aq.queue, &mem).map_err(into_core)?;
                    if notify {
                        active.interrupt.trigger(InterruptKind::Queue(i as u16))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn queue_indices(&self, queue: u16) -> Option<(u16, u16, bool)> {
        use vstor_virtio_core::virtio_queue::QueueT;
        let q = self.queue(queue)?;
        Some((q.next_avail(), q.next_used(), q.event_idx_enabled()))
    }

    fn save_state(&mut self) -> vstor_virtio_core::Result<Vec<u8>> {
        // Requests in flight are completed first, so the saved queue indices cover them.
        self.quiesce()?;
        Ok(vec![self.shared.writeback() as u8])
    }

    fn restore_state(&mut self, data: &[u8]) -> vstor_virtio_core::Result<()> {
        match data {
            [wb] if *wb <= 1 => {
                self.shared.set_writeback(*wb == 1);
                Ok(())
            }
            _ => Err(vstor_virtio_core::Error::State(format!(
                "virtio-blk state must be 1 byte (writeback 0/1), got {} bytes",
                data.len()
            ))),
        }
    }
}

fn into_core(e: Error) -> vstor_virtio_core::Error {
    match e {
        Error::Core(c) => c,
        other => vstor_virtio_core::Error::State(other.to_string()),
    }
}
