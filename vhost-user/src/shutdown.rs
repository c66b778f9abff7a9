//! Stopping a server: a [`StopHandle`] any thread can use, and SIGINT/SIGTERM handling.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use vhost_user_backend::ShutdownHandle;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::error::{Error, Result};

/// How long a signalled server may take to drain and flush before the process exits anyway.
pub const SIGNAL_GRACE: Duration = Duration::from_secs(10);

/// Shared between a server and its stop handles.
pub(crate) struct StopState {
    requested: AtomicBool,
    /// Written once on stop; wakes the server while it waits for a client.
    wake: EventFd,
    /// The connection being served, to cut it on stop.
    connection: Mutex<Option<ShutdownHandle>>,
    finished: Mutex<bool>,
    finished_cv: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl StopState {
    pub fn new() -> io::Result<Self> {
        Ok(StopState {
            requested: AtomicBool::new(false),
            wake: EventFd::new(EFD_NONBLOCK)?,
            connection: Mutex::new(None),
            finished: Mutex::new(false),
            finished_cv: Condvar::new(),
        })
    }

    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Records the connection being served (or none). A stop requested just before the
    /// connection was recorded is applied to it here.
    pub fn set_connection(&self, handle: Option<ShutdownHandle>) {
        let mut slot = lock(&self.connection);
        *slot = handle;
        if self.requested() {
            if let Some(h) = slot.as_ref() {
                h.shutdown();
            }
        }
    }

    fn stop(&self) {
        self.requested.store(true, Ordering::SeqCst);
        if let Err(e) = self.wake.write(1) {
            log::warn!("cannot wake the server: {e}");
        }
        if let Some(h) = lock(&self.connection).as_ref() {
            h.shutdown();
        }
    }

    /// The server finished (drained, flushed, socket removed).
    pub fn finish(&self) {
        *lock(&self.finished) = true;
        self.finished_cv.notify_all();
    }

    /// Waits up to `timeout` for [`StopState::finish`]; returns whether it happened.
    fn wait_finished(&self, timeout: Duration) -> bool {
        let guard = lock(&self.finished);
        let (guard, _) = self
            .finished_cv
            .wait_timeout_while(guard, timeout, |done| !*done)
            .unwrap_or_else(PoisonError::into_inner);
        *guard
    }
}

/// Stops a running [`crate::BlkServer`] from any thread: the connection being served (if any)
/// is cut, its requests in flight are drained, the device is flushed, the socket removed, and
/// [`crate::BlkServer::run`] returns.
#[derive(Clone)]
pub struct StopHandle {
    pub(crate) state: Arc<StopState>,
}

impl StopHandle {
    /// Asks the server to stop. Returns at once; calling it again does nothing more.
    pub fn stop(&self) {
        self.state.stop();
    }

    /// Whether a stop was requested.
    pub fn is_stopping(&self) -> bool {
        self.state.requested()
    }

    /// Waits up to `timeout` for the server to finish; returns whether it did.
    pub fn wait(&self, timeout: Duration) -> bool {
        self.state.wait_finished(timeout)
    }
}

/// What the signal thread needs to force an exit.
pub(crate) struct SignalExit {
    pub stop: StopHandle,
    /// Writes back and closes the devices (formats clear their dirty bit).
    pub close: Box<dyn FnOnce() -> std::result::Result<(), String> + Send>,
    pub socket: PathBuf,
}

/// Spawns the thread that turns SIGINT/SIGTERM into a stop (see
/// [`crate::BlkServer::stop_on_signals`]).
pub(crate) fn spawn_signal_thread(exit: SignalExit) -> Result<()> {
    let mut signals =
        Signals::new([SIGINT, SIGTERM]).map_err(|e| Error::io("installing signal handlers", e))?;
    thread::Builder::new()
        .name("vstor-signals".into())
        .spawn(move || {
            let Some(sig) = signals.forever().next() else {
                return;
            };
            log::info!("{}: stopping", signal_name(sig));
            exit.stop.stop();
            let deadline = Instant::now() + SIGNAL_GRACE;
            loop {
                if exit.stop.wait(Duration::from_millis(100)) {
                    return;
                }
                if let Some(sig) = signals.pending().next() {
                    log::warn!("{} again: exiting now", signal_name(sig));
                    break;
                }
                if Instant::now() >= deadline {
                    log::warn!("not stopped after {SIGNAL_GRACE:?}: exiting now");
                    break;
                }
            }
            let code = match (exit.close)() {
                Ok(()) => 0,
                Err(e) => {
                    log::error!("flush: {e}");
                    1
                }
            };
            let _ = std::fs::remove_file(&exit.socket);
            std::process::exit(code);
        })
        .map_err(|e| Error::io("spawning the signal thread", e))?;
    Ok(())
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_wakes_and_finish_is_observed() {
        let state = Arc::new(StopState::new().unwrap());
        let handle = StopHandle {
            state: state.clone(),
        };
        assert!(!handle.is_stopping());
        assert!(!handle.wait(Duration::from_millis(1)));
        handle.stop();
        handle.stop();
        assert!(handle.is_stopping());
        assert_eq!(state.wake.read().unwrap(), 2);
        let waiter = {
            let handle = handle.clone();
            thread::spawn(move || handle.wait(Duration::from_secs(10)))
        };
        state.finish();
        assert!(waiter.join().unwrap());
    }
}
