//! Notifying the driver: used-buffer and configuration-change interrupts, by eventfd (irqfd,
//! vhost-user call fd) or by a callback into the embedder.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::error::{Error, Result};

/// What the driver is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptKind {
    /// Buffers were added to this queue's used ring.
    Queue(u16),
    /// The configuration space changed (or DEVICE_NEEDS_RESET was set).
    Config,
}

/// Something that delivers interrupts to the driver.
pub trait Interrupt: Send + Sync {
    /// Delivers one interrupt.
    fn trigger(&self, kind: InterruptKind) -> Result<()>;
}

/// Interrupts delivered by writing eventfds (one per queue plus one for config changes).
#[derive(Debug, Default)]
pub struct EventFdInterrupt {
    queues: Vec<Option<EventFd>>,
    config: Option<EventFd>,
}

impl EventFdInterrupt {
    /// No eventfds yet: interrupts are dropped until set.
    pub fn new(num_queues: u16) -> Self {
        EventFdInterrupt {
            queues: (0..num_queues).map(|_| None).collect(),
            config: None,
        }
    }

    /// Sets (or clears) the eventfd for `queue`.
    pub fn set_queue(&mut self, queue: u16, fd: Option<EventFd>) -> Result<()> {
        let slot = self
            .queues
            .get_mut(usize::from(queue))
            .ok_or(Error::Queue {
                queue,
                reason: "no such queue".into(),
            })?;
        *slot = fd;
        Ok(())
    }

    /// Sets (or clears) the configuration-change eventfd.
    pub fn set_config(&mut self, fd: Option<EventFd>) {
        self.config = fd;
    }
}

impl Interrupt for EventFdInterrupt {
    fn trigger(&self, kind: InterruptKind) -> Result<()> {
        let fd = match kind {
            InterruptKind::Queue(q) => self.queues.get(usize::from(q)).and_then(|f| f.as_ref()),
            InterruptKind::Config => self.config.as_ref(),
        };
        match fd {
            Some(fd) => fd.write(1).map_err(|source| Error::Os {
                what: "signal interrupt eventfd",
                source,
            }),
            None => Ok(()),
        }
    }
}

/// Interrupts delivered by calling a closure.
pub struct CallbackInterrupt<F: Fn(InterruptKind) + Send + Sync>(pub F);

impl<F: Fn(InterruptKind) + Send + Sync> Interrupt for CallbackInterrupt<F> {
    fn trigger(&self, kind: InterruptKind) -> Result<()> {
        (self.0)(kind);
        Ok(())
    }
}

/// An interrupt sink shared by a device's queues.
pub type SharedInterrupt = Arc<dyn Interrupt>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn eventfd_and_callback() {
        let mut irq = EventFdInterrupt::new(2);
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        irq.set_queue(1, Some(fd.try_clone().unwrap())).unwrap();
        irq.trigger(InterruptKind::Queue(1)).unwrap();
        irq.trigger(InterruptKind::Queue(0)).unwrap();
        assert_eq!(fd.read().unwrap(), 1);
        assert!(irq.set_queue(5, None).is_err());

        let count = Arc::new(AtomicU32::new(0));
        let c = count.clone();
        let cb = CallbackInterrupt(move |k| {
            if k == InterruptKind::Config {
                c.fetch_add(1, Ordering::SeqCst);
            }
        });
        cb.trigger(InterruptKind::Config).unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
