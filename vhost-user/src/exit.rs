//! Worker exit events of a `vhost-user-backend` backend: created up front (running out of
//! file descriptors fails the backend's construction, not a worker that then can never be
//! stopped), handed out per worker thread, and their read ends closed when the backend goes.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard, PoisonError};

use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

/// One worker's exit event: the read end the worker watches and the write end that stops it.
pub(crate) type ExitEvent = (EventConsumer, EventNotifier);

fn new_exit_event() -> io::Result<ExitEvent> {
    new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The exit events of a backend's worker threads. Must be a field of the backend: its `Drop`
/// relies on every worker (each holding the backend) being gone when the backend is dropped.
pub(crate) struct ExitEvents {
    prepared: Mutex<Vec<Option<ExitEvent>>>,
    /// Read ends handed to `vhost-user-backend`, which registers them with the worker's epoll
    /// via `into_raw_fd` and never closes them; closed in `Drop`.
    consumers: Mutex<Vec<RawFd>>,
}

impl ExitEvents {
    /// Events for `workers` threads.
    pub fn new(workers: usize) -> io::Result<ExitEvents> {
        let prepared = (0..workers)
            .map(|_| new_exit_event().map(Some))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(ExitEvents {
            prepared: Mutex::new(prepared),
            consumers: Mutex::new(Vec::new()),
        })
    }

    /// The exit event of worker `thread_index` (`VhostUserBackend::exit_event`).
    pub fn take(&self, thread_index: usize) -> Option<ExitEvent> {
        let prepared = lock(&self.prepared)
            .get_mut(thread_index)
            .and_then(Option::take);
        let event = match prepared {
            Some(event) => event,
            // Asked twice for one thread (not done by vhost-user-backend 0.24): make another.
            None => match new_exit_event() {
                Ok(event) => event,
                Err(e) => {
                    log::error!("worker {thread_index}: cannot create an exit event: {e}");
                    return None;
                }
            },
        };
        lock(&self.consumers).push(event.0.as_raw_fd());
        Some(event)
    }
}

impl Drop for ExitEvents {
    fn drop(&mut self) {
        let fds = std::mem::take(
            self.consumers
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for fd in fds {
            // SAFETY: `fd` is the read end of an exit event created in `take`.
            // vhost-user-backend 0.24 (`VringEpollHandler::new`) turns it into a raw fd with
            // `into_raw_fd`, adds it to the worker's epoll and never closes it. These events
            // are a field of the backend, and every `VringEpollHandler` holds a clone of the
            // `Arc` of that backend, so when this is dropped all of them (and their epolls and
            // worker threads) are gone: nothing else owns or uses `fd`, and closing it here is
            // the only close.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
}
