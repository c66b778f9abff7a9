//! Interrupt routing: per queue (and for configuration changes) an irqfd the hypervisor gave
//! us, or the device's callback. Routes can change while the device is live (MSI-X vector
//! reprogramming), so they sit behind a read-mostly lock the queues take on each interrupt.

use std::ffi::c_void;
use std::os::fd::FromRawFd;
use std::os::unix::io::RawFd;
use std::sync::RwLock;

use vmm_sys_util::eventfd::EventFd;
use vstor_virtio_core::interrupt::{Interrupt, InterruptKind};

use crate::error::{in_callback, CError, CResult};

/// The `queue` argument an interrupt callback receives for a configuration change.
pub const VSTOR_IRQ_CONFIG: u32 = 0xFFFF_FFFF;

/// An interrupt callback: `queue` is the queue index, or `VSTOR_IRQ_CONFIG`. It may run on a
/// vstor worker thread, and must not call vstor functions (they fail with `-EDEADLK`): record
/// the interrupt and return.
pub type vstor_irq_fn = Option<unsafe extern "C" fn(opaque: *mut c_void, queue: u32)>;

#[derive(Clone, Copy)]
struct Callback {
    f: unsafe extern "C" fn(*mut c_void, u32),
    opaque: *mut c_void,
}

// SAFETY: the embedder registers the callback and its opaque pointer knowing (documented on
// vstor_device_set_irq_callback) that it may be called from vstor worker threads.
unsafe impl Send for Callback {}
// SAFETY: as above; vstor only passes the pointer back, never dereferences it.
unsafe impl Sync for Callback {}

#[derive(Default)]
struct Table {
    queues: Vec<Option<EventFd>>,
    config: Option<EventFd>,
    callback: Option<Callback>,
}

/// The device's interrupt sink.
pub struct Routes {
    table: RwLock<Table>,
}

impl Routes {
    /// No routes: interrupts are dropped until the embedder sets some.
    pub fn new(num_queues: u16) -> Self {
        Routes {
            table: RwLock::new(Table {
                queues: (0..num_queues).map(|_| None).collect(),
                ..Table::default()
            }),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the callback (NULL clears it).
    pub fn set_callback(&self, f: vstor_irq_fn, opaque: *mut c_void) {
        self.write().callback = f.map(|f| Callback { f, opaque });
    }

    /// Routes queue `q` (or the config interrupt with `None`) to a duplicate of `fd`; -1
    /// clears the route.
    pub fn set_fd(&self, q: Option<u16>, fd: RawFd) -> CResult<()> {
        let efd = if fd < 0 { None } else { Some(dup_eventfd(fd)?) };
        let mut t = self.write();
        match q {
            None => t.config = efd,
            Some(q) => {
                let n = t.queues.len();
                let slot = t.queues.get_mut(usize::from(q)).ok_or_else(|| {
                    CError::inval(format!("queue {q} does not exist (the device has {n})"))
                })?;
                *slot = efd;
            }
        }
        Ok(())
    }
}

/// Duplicates an eventfd the caller keeps owning.
pub fn dup_eventfd(fd: RawFd) -> CResult<EventFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a caller-supplied number only creates a new descriptor
    // (or fails with EBADF); no memory is involved.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(CError::new(
            libc::EBADF,
            format!("fd {fd} is not an open file descriptor"),
        ));
    }
    // SAFETY: `new` was just created by fcntl and is owned by nobody else.
    Ok(unsafe { EventFd::from_raw_fd(new) })
}

impl Interrupt for Routes {
    fn trigger(&self, kind: InterruptKind) -> vstor_virtio_core::Result<()> {
        let t = self.table.read().unwrap_or_else(|p| p.into_inner());
        let (fd, arg) = match kind {
            InterruptKind::Queue(q) => (
                t.queues.get(usize::from(q)).and_then(Option::as_ref),
                u32::from(q),
            ),
            InterruptKind::Config => (t.config.as_ref(), VSTOR_IRQ_CONFIG),
        };
        if let Some(fd) = fd {
            return fd.write(1).map_err(|source| vstor_virtio_core::Error::Os {
                what: "signal irqfd",
                source,
            });
        }
        if let Some(cb) = t.callback {
            // SAFETY: the embedder registered `f` with this `opaque` for exactly this call.
            in_callback(|| unsafe { (cb.f)(cb.opaque, arg) });
        }
        Ok(())
    }
}
