//! I/O engines for file-backed devices: io_uring, and a thread pool where io_uring is refused.
//!
//! The choice is made in one place, [`choose`]: `Threads` is always honoured, `IoUring` fails
//! where io_uring is refused, and `Auto` takes io_uring when it is available and threads
//! otherwise. Availability is probed once per process by creating a tiny ring; setting
//! [`DISABLE_IO_URING_ENV`] (`VSTOR_DISABLE_IO_URING=1`) makes vstor behave as if the kernel
//! refused io_uring, which exercises the fallback in CI.

use std::io;
use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};
use crate::file::core::FileCore;
use crate::request::IoQueue;
use crate::types::{EngineKind, QueueOptions};

pub(crate) mod prep;
pub(crate) mod threads;
pub(crate) mod uring;

/// Environment variable that, set to anything but `""` or `"0"`, disables io_uring.
pub const DISABLE_IO_URING_ENV: &str = "VSTOR_DISABLE_IO_URING";

/// Deepest queue an engine accepts; larger requests are clamped to this.
pub const MAX_QUEUE_DEPTH: usize = 4096;

/// Whether a value of [`DISABLE_IO_URING_ENV`] disables io_uring.
pub fn disabled_by_env_value(value: Option<&str>) -> bool {
    matches!(value, Some(v) if !v.is_empty() && v != "0")
}

/// The kernel's answer to "may this process use io_uring?", probed once per process.
fn kernel_probe() -> &'static std::result::Result<(), io::ErrorKind> {
    static PROBE: OnceLock<std::result::Result<(), io::ErrorKind>> = OnceLock::new();
    PROBE.get_or_init(|| match uring::new_ring(2) {
        Ok(_) => Ok(()),
        Err(e) => {
            log::info!("io_uring refused by the kernel: {e}");
            Err(e.kind())
        }
    })
}

/// Why io_uring cannot be used here, or `None` when it can.
fn uring_refusal() -> Option<io::Error> {
    if disabled_by_env_value(std::env::var(DISABLE_IO_URING_ENV).ok().as_deref()) {
        return Some(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("disabled by {DISABLE_IO_URING_ENV}"),
        ));
    }
    match kernel_probe() {
        Ok(()) => None,
        Err(kind) => Some(io::Error::new(*kind, "the kernel refused to create a ring")),
    }
}

/// Whether io_uring can be used (kernel probe, cached, and the environment override).
pub fn io_uring_available() -> bool {
    uring_refusal().is_none()
}

/// The engine a request for `requested` gets, given whether io_uring is available: the one
/// place the fallback happens. Never returns [`EngineKind::Auto`].
pub fn choose(requested: EngineKind, uring_available: bool) -> Result<EngineKind> {
    match (requested, uring_available) {
        (EngineKind::Threads, _) | (EngineKind::Auto, false) => Ok(EngineKind::Threads),
        (EngineKind::IoUring, true) | (EngineKind::Auto, true) => Ok(EngineKind::IoUring),
        (EngineKind::IoUring, false) => Err(Error::Engine {
            engine: "io_uring",
            source: uring_refusal().unwrap_or_else(|| io::Error::from_raw_os_error(libc::ENOSYS)),
        }),
    }
}

/// Resolves `requested` for this process (see [`choose`]) and logs the decision.
pub fn resolve(requested: EngineKind) -> Result<EngineKind> {
    let chosen = choose(requested, io_uring_available())?;
    log::info!("I/O engine: {chosen} (requested {requested})");
    Ok(chosen)
}

/// Opens a queue on `core` with the engine `kind` (already resolved by [`resolve`]). If a ring
/// cannot be set up for an `Auto` device, the queue falls back to threads.
pub(crate) fn open_queue(
    core: &Arc<FileCore>,
    kind: EngineKind,
    requested: EngineKind,
    opts: &QueueOptions,
) -> Result<Box<dyn IoQueue>> {
    if opts.depth == 0 {
        return Err(Error::InvalidOption {
            name: "depth",
            value: "0".into(),
            reason: "a queue holds at least one request".into(),
        });
    }
    let depth = opts.depth.min(MAX_QUEUE_DEPTH);
    if kind == EngineKind::Threads {
        return Ok(Box::new(threads::ThreadQueue::new(core.clone(), depth)?));
    }
    match uring::UringQueue::new(core.clone(), depth) {
        Ok(q) => Ok(Box::new(q)),
        Err(e) if requested == EngineKind::Auto => {
            log::warn!("io_uring queue set-up failed ({e}); using threads");
            Ok(Box::new(threads::ThreadQueue::new(core.clone(), depth)?))
        }
        Err(e) => Err(e),
    }
}
