//! The event queue (§5.6.6.3): the driver posts empty buffers; the device fills one per
//! pending event.

use std::sync::Arc;

use virtio_queue::Queue;
use vstor_virtio_core::GuestMemory;

use crate::error::Result;
use crate::protocol::event;
use crate::ring::RingCtx;
use crate::shared::ScsiShared;

/// The event queue processor.
#[derive(Debug)]
pub struct EventQueueHandler {
    shared: Arc<ScsiShared>,
    ring: RingCtx,
}

impl EventQueueHandler {
    /// The handler of the event queue (index 1).
    pub fn new(shared: Arc<ScsiShared>, acked_features: u64) -> Self {
        EventQueueHandler {
            shared,
            ring: RingCtx::new(crate::protocol::queue::EVENT, acked_features),
        }
    }

    /// Delivers pending events into the buffers the driver posted; returns whether to
    /// notify the driver. Called when the driver posts buffers and when
    /// [`ScsiShared::event_fd`] becomes readable.
    pub fn process_queue(&mut self, queue: &mut Queue, mem: &Arc<GuestMemory>) -> Result<bool> {
        let shared = self.shared.clone();
        shared.ack_event_fd();
        let has = || shared.has_events();
        self.ring.run(queue, mem, has, |ring, queue, head| {
            ring.walk(queue, mem, head)?;
            let Some(e) = shared.pop_event() else {
                return Ok(0);
            };
            let mut w = ring.chain.writer();
            if w.remaining() < event::SIZE as u64 {
                shared.unpop_event(e);
                return Err(ring.fatal(
                    head,
                    format!(
                        "event buffer of {} bytes, an event needs {}",
                        w.remaining(),
                        event::SIZE
                    ),
                ));
            }
            w.write_all(mem, &e)
                .map_err(|err| ring.fatal(head, format!("writing an event: {err}")))?;
            Ok(event::SIZE as u32)
        })
    }
}
