//! Events waiting for the event queue (§5.6.6.3): hotplug, hot-unplug, parameter changes and
//! asynchronous notifications, bounded, with EVENTS_MISSED when some had to be dropped. The
//! eventfd is set by every new event and cleared when the event queue is served, so a driver
//! that posts no buffers does not make its poller spin.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::error::{Error, Result};
use crate::protocol::{event, event_bytes};

/// Events kept while the driver has no event buffer posted; more are dropped and the next
/// delivered event carries EVENTS_MISSED.
pub const MAX_PENDING: usize = 64;

/// The pending events and the eventfd that is readable while there are some.
#[derive(Debug)]
pub struct Events {
    pending: VecDeque<[u8; event::SIZE]>,
    missed: bool,
    /// Whether the driver is live and negotiated the feature each kind needs.
    enabled: bool,
    fd: EventFd,
}

impl Events {
    /// An empty, disabled list.
    pub fn new() -> Result<Events> {
        Ok(Events {
            pending: VecDeque::new(),
            missed: false,
            enabled: false,
            fd: EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Io {
                what: "creating the virtio-scsi event eventfd",
                source,
            })?,
        })
    }

    /// Starts (driver live) or stops (reset) collecting events; stopping drops what is
    /// pending.
    pub fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
        if !on {
            self.pending.clear();
            self.missed = false;
            let _ = self.fd.read();
        }
    }

    /// Queues an event (ignored while disabled).
    pub fn push(&mut self, kind: u32, lun: [u8; 8], reason: u32) {
        if !self.enabled {
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            self.missed = true;
            return;
        }
        self.pending.push_back(event_bytes(kind, lun, reason));
        let _ = self.fd.write(1);
    }

    /// The next event to deliver (with EVENTS_MISSED if events were dropped before it), or
    /// a bare NO_EVENT | EVENTS_MISSED when only the loss is left to report.
    pub fn pop(&mut self) -> Option<[u8; event::SIZE]> {
        let mut e = match self.pending.pop_front() {
            Some(e) => e,
            None if self.missed => event_bytes(event::NO_EVENT, [0; 8], 0),
            None => return None,
        };
        if std::mem::take(&mut self.missed) {
            let kind = u32::from_le_bytes([e[0], e[1], e[2], e[3]]) | event::EVENTS_MISSED;
            e[..4].copy_from_slice(&kind.to_le_bytes());
        }
        Some(e)
    }

    /// Puts back an event that could not be delivered (no buffer).
    pub fn unpop(&mut self, e: [u8; event::SIZE]) {
        let kind = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
        if kind & event::EVENTS_MISSED != 0 {
            self.missed = true;
        }
        if kind & !event::EVENTS_MISSED != event::NO_EVENT {
            let mut e = e;
            e[..4].copy_from_slice(&(kind & !event::EVENTS_MISSED).to_le_bytes());
            self.pending.push_front(e);
        }
    }

    /// Clears the eventfd (the event queue is being served now; a later push sets it again).
    pub fn ack_fd(&self) {
        let _ = self.fd.read();
    }

    /// Whether anything is waiting.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty() || self.missed
    }

    /// Readable while events are pending.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_sets_events_missed_on_the_next_event() {
        let mut ev = Events::new().unwrap();
        ev.push(event::TRANSPORT_RESET, [1; 8], 1);
        assert!(!ev.has_pending(), "disabled: nothing kept");
        ev.set_enabled(true);
        for i in 0..MAX_PENDING + 3 {
            ev.push(event::TRANSPORT_RESET, [1; 8], i as u32);
        }
        let first = ev.pop().unwrap();
        assert_eq!(
            u32::from_le_bytes(first[..4].try_into().unwrap()),
            event::TRANSPORT_RESET | event::EVENTS_MISSED
        );
        for _ in 1..MAX_PENDING {
            let e = ev.pop().unwrap();
            assert_eq!(u32::from_le_bytes(e[..4].try_into().unwrap()), 1);
        }
        assert!(ev.pop().is_none());
        // An event put back (no buffer) keeps its EVENTS_MISSED for the next try.
        for i in 0..=MAX_PENDING {
            ev.push(event::PARAM_CHANGE, [1; 8], i as u32);
        }
        let e = ev.pop().unwrap();
        ev.unpop(e);
        assert_eq!(ev.pop().unwrap(), e);
        for _ in 1..MAX_PENDING {
            ev.pop().unwrap();
        }
        assert!(ev.pop().is_none());
    }
}
