//! Devices: the object behind a `vstor_device *`, its lock, and the helpers every exported
//! device call uses (lookup, worker restart, event-set refresh).

use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;
use vstor_virtio_core::memory::{from_host_regions, HostRegion};
use vstor_virtio_core::Transport;

use crate::error::{CError, CResult};
use crate::events::{EventSet, Source};
use crate::handle::Registry;
use crate::irq::Routes;
use crate::worker::Workers;

/// A virtio device (opaque): virtio-blk (`vstor_blk_new`) or virtio-scsi (`vstor_scsi_new`).
pub struct vstor_device {
    _opaque: [u8; 0],
}

pub(crate) static DEVICES: Registry<Device> = Registry::new("device", 2);

/// One registered guest memory region: `(gpa, len, hva)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Region {
    pub gpa: u64,
    pub len: u64,
    pub hva: usize,
}

/// What the device lock protects.
pub(crate) struct Inner {
    pub transport: Transport,
    pub regions: Vec<Region>,
    /// ioeventfds the embedder handed over (our duplicates).
    pub kick_fds: Vec<Option<EventFd>>,
    pub events: EventSet,
    pub scratch: Vec<Source>,
}

/// A device behind its handle.
pub(crate) struct Device {
    pub inner: Arc<Mutex<Inner>>,
    pub routes: Arc<Routes>,
    /// Written by `vstor_device_kick` in worker mode.
    pub internal_kicks: Vec<EventFd>,
    pub worker_mode: bool,
    pub workers: Mutex<Option<Workers>>,
    /// The units of a virtio-scsi device (`None` for other device types): attach and detach
    /// go through it, without the device lock.
    pub scsi: Option<Arc<vstor_virtio_scsi::ScsiShared>>,
}

impl Device {
    /// Wraps a transport.
    pub fn new(transport: Transport, routes: Arc<Routes>, worker_mode: bool) -> CResult<Self> {
        let n = transport.num_queues();
        let internal_kicks = if worker_mode {
            (0..n)
                .map(|_| {
                    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
                        .map_err(|e| CError::new(libc::EMFILE, format!("eventfd: {e}")))
                })
                .collect::<CResult<Vec<_>>>()?
        } else {
            Vec::new()
        };
        Ok(Device {
            inner: Arc::new(Mutex::new(Inner {
                transport,
                regions: Vec::new(),
                kick_fds: (0..n).map(|_| None).collect(),
                events: EventSet::new()?,
                scratch: Vec::with_capacity(64),
            })),
            routes,
            internal_kicks,
            worker_mode,
            workers: Mutex::new(None),
            scsi: None,
        })
    }

    /// Locks the device state. A lock poisoned by an earlier internal error refuses service.
    pub fn lock(&self) -> CResult<MutexGuard<'_, Inner>> {
        self.inner.lock().map_err(|_| {
            CError::new(
                libc::ENOTRECOVERABLE,
                "the device is unusable after an earlier internal error; free it",
            )
        })
    }

    /// Runs a call that may activate or deactivate the device: worker threads are stopped
    /// around it and restarted (when the device is live afterwards), and the event set is
    /// refreshed.
    pub fn reconfigure<T>(&self, f: impl FnOnce(&mut Inner) -> CResult<T>) -> CResult<T> {
        self.stop_workers();
        let (result, live) = {
            let mut inner = self.lock()?;
            let result = f(&mut inner);
            let refreshed = inner.refresh_events(self.worker_mode);
            (
                result.and_then(|v| refreshed.map(|_| v)),
                inner.transport.is_active(),
            )
        };
        if live && self.worker_mode {
            self.start_workers()?;
        }
        result
    }

    fn stop_workers(&self) {
        let taken = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(w) = taken {
            w.stop();
        }
    }

    fn start_workers(&self) -> CResult<()> {
        let w = Workers::start(self)?;
        *self.workers.lock().unwrap_or_else(|p| p.into_inner()) = Some(w);
        Ok(())
    }

    /// Stops workers and resets the device (before it is dropped).
    pub fn shut_down(&self) {
        self.stop_workers();
        if let Ok(mut inner) = self.inner.lock() {
            inner.transport.reset();
            let _ = inner.events.sync(Vec::new());
        }
    }
}

impl Inner {
    /// Re-registers the kick and completion descriptors of the live queues.
    pub fn refresh_events(&mut self, worker_mode: bool) -> CResult<()> {
        let mut want = Vec::new();
        if self.transport.is_active() && !worker_mode {
            for q in 0..self.transport.num_queues() {
                if !self.transport.queue(q).map(|c| c.ready).unwrap_or(false) {
                    continue;
                }
                if let Some(fd) = &self.kick_fds[usize::from(q)] {
                    use std::os::fd::AsRawFd;
                    want.push((fd.as_raw_fd(), Source::Kick(q)));
                }
                if let Some(fd) = self.transport.completion_fd(q) {
                    want.push((fd, Source::Completion(q)));
                }
            }
        }
        self.events.sync(want)
    }

    /// Rebuilds guest memory from `regions` and installs it.
    pub fn set_regions(&mut self, regions: Vec<Region>) -> CResult<()> {
        let host: Vec<HostRegion> = regions
            .iter()
            .map(|r| HostRegion {
                gpa: r.gpa,
                len: r.len,
                hva: r.hva as *mut u8,
            })
            .collect();
        // SAFETY: each region was registered by the embedder through vstor_device_add_memory,
        // whose contract keeps the mapping valid until vstor_device_remove_memory returns or
        // the device is freed; both happen only after the device stopped using it.
        let mem = unsafe { from_host_regions(&host) }?;
        self.transport.set_memory(mem);
        self.regions = regions;
        Ok(())
    }
}

/// Looks a device handle up.
pub(crate) fn device(d: *const vstor_device) -> CResult<Arc<Device>> {
    DEVICES.get(d as usize)
}
