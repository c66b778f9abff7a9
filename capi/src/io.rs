//! Guest memory, notifications and the event loop hooks: `vstor_device_add_memory`,
//! `vstor_device_kick`, the interrupt routes, `vstor_device_completion_fd` and
//! `vstor_device_process`.

use std::ffi::c_void;
use std::os::unix::io::RawFd;

use crate::device::{device, vstor_device, Region};
use crate::error::{boundary, CError};
use crate::events::{drain_eventfd, Source};
use crate::irq::{dup_eventfd, vstor_irq_fn};

/// Most memory regions one device accepts.
pub const VSTOR_MAX_MEMORY_REGIONS: u32 = 512;

/// Registers `len` bytes of guest physical memory at `gpa`, mapped in this process at `hva`.
/// vstor never maps, unmaps or frees it. Overlapping an existing region, a NULL `hva`, a zero
/// length or a range that wraps are refused with `-EINVAL`. Allowed at any time (hotplug).
///
/// # Safety
/// `hva` points to `len` bytes mapped readable and writable that stay mapped until
/// `vstor_device_remove_memory` for this region has returned or the device is freed.
#[no_mangle]
pub unsafe extern "C" fn vstor_device_add_memory(
    dev: *mut vstor_device,
    gpa: u64,
    len: u64,
    hva: *mut c_void,
) -> i32 {
    boundary("vstor_device_add_memory", || {
        let d = device(dev)?;
        let mut inner = d.lock()?;
        if inner.regions.len() >= VSTOR_MAX_MEMORY_REGIONS as usize {
            return Err(CError::new(
                libc::ENOSPC,
                format!("already {VSTOR_MAX_MEMORY_REGIONS} memory regions"),
            ));
        }
        if hva.is_null() || len == 0 {
            return Err(CError::inval(format!(
                "region gpa {gpa:#x} len {len:#x}: host address NULL or length zero"
            )));
        }
        let end = gpa.checked_add(len).ok_or_else(|| {
            CError::inval(format!("region gpa {gpa:#x} len {len:#x} wraps around"))
        })?;
        if (hva as usize).checked_add(len as usize).is_none() || usize::try_from(len).is_err() {
            return Err(CError::inval(format!(
                "region gpa {gpa:#x}: host range {hva:p} + {len:#x} wraps around"
            )));
        }
        if let Some(r) = inner
            .regions
            .iter()
            .find(|r| gpa < r.gpa + r.len && r.gpa < end)
        {
            return Err(CError::inval(format!(
                "region gpa {gpa:#x} len {len:#x} overlaps the registered region gpa {:#x} len \
                 {:#x}",
                r.gpa, r.len
            )));
        }
        let mut regions = inner.regions.clone();
        regions.push(Region {
            gpa,
            len,
            hva: hva as usize,
        });
        regions.sort_by_key(|r| r.gpa);
        inner.set_regions(regions)?;
        Ok(0)
    })
}

/// Unregisters the region added with exactly this `gpa` and `len` (`-ENOENT` if there is
/// none). Requests in flight finish first, so the caller may unmap it once this returns.
#[no_mangle]
pub extern "C" fn vstor_device_remove_memory(dev: *mut vstor_device, gpa: u64, len: u64) -> i32 {
    boundary("vstor_device_remove_memory", || {
        let d = device(dev)?;
        let mut inner = d.lock()?;
        let pos = inner
            .regions
            .iter()
            .position(|r| r.gpa == gpa && r.len == len)
            .ok_or_else(|| {
                CError::new(
                    libc::ENOENT,
                    format!("no region registered at gpa {gpa:#x} len {len:#x}"),
                )
            })?;
        inner.transport.quiesce()?;
        let mut regions = inner.regions.clone();
        regions.remove(pos);
        inner.set_regions(regions)?;
        Ok(0)
    })
}

/// The driver notified queue `queue`. Without worker threads the queue is processed here, on
/// the caller's thread; with them, its worker is woken.
#[no_mangle]
pub extern "C" fn vstor_device_kick(dev: *mut vstor_device, queue: u16) -> i32 {
    boundary("vstor_device_kick", || {
        let d = device(dev)?;
        if d.worker_mode {
            let fd = d.internal_kicks.get(usize::from(queue)).ok_or_else(|| {
                CError::inval(format!(
                    "queue {queue} does not exist (the device has {})",
                    d.internal_kicks.len()
                ))
            })?;
            if !d.lock()?.transport.is_active() {
                return Err(vstor_virtio_core::Error::NotReady(
                    "device is not live (DRIVER_OK not set)",
                )
                .into());
            }
            fd.write(1)
                .map_err(|e| CError::new(libc::EIO, format!("wake worker: {e}")))?;
            return Ok(0);
        }
        d.lock()?.transport.kick(queue)?;
        Ok(0)
    })
}

/// Hands vstor an ioeventfd for queue `queue` (vstor keeps a duplicate; the caller may close
/// its own). With worker threads the queue's worker watches it; without, it joins the set
/// behind `vstor_device_completion_fd`. -1 removes it.
#[no_mangle]
pub extern "C" fn vstor_device_set_kick_fd(dev: *mut vstor_device, queue: u16, fd: i32) -> i32 {
    boundary("vstor_device_set_kick_fd", || {
        let d = device(dev)?;
        let efd = if fd < 0 { None } else { Some(dup_eventfd(fd)?) };
        d.reconfigure(|inner| {
            let n = inner.kick_fds.len();
            let slot = inner.kick_fds.get_mut(usize::from(queue)).ok_or_else(|| {
                CError::inval(format!("queue {queue} does not exist (the device has {n})"))
            })?;
            *slot = efd;
            Ok(())
        })?;
        Ok(0)
    })
}

/// Sets the interrupt callback, called with the queue index (or `VSTOR_IRQ_CONFIG`) for every
/// interrupt not routed to an irqfd. NULL removes it. It may run on a worker thread, and must
/// not call vstor functions (they fail with `-EDEADLK`).
#[no_mangle]
pub extern "C" fn vstor_device_set_irq_callback(
    dev: *mut vstor_device,
    callback: vstor_irq_fn,
    opaque: *mut c_void,
) -> i32 {
    boundary("vstor_device_set_irq_callback", || {
        device(dev)?.routes.set_callback(callback, opaque);
        Ok(0)
    })
}

/// Routes queue `queue`'s interrupts to an irqfd (vstor writes a duplicate; the caller keeps
/// its own). -1 removes the route (interrupts then go to the callback).
#[no_mangle]
pub extern "C" fn vstor_device_set_queue_irqfd(dev: *mut vstor_device, queue: u16, fd: i32) -> i32 {
    boundary("vstor_device_set_queue_irqfd", || {
        device(dev)?.routes.set_fd(Some(queue), fd)?;
        Ok(0)
    })
}

/// Routes configuration-change interrupts to an irqfd; -1 removes the route.
#[no_mangle]
pub extern "C" fn vstor_device_set_config_irqfd(dev: *mut vstor_device, fd: i32) -> i32 {
    boundary("vstor_device_set_config_irqfd", || {
        device(dev)?.routes.set_fd(None, fd)?;
        Ok(0)
    })
}

/// A descriptor (owned by vstor: do not close it) that becomes readable when the device has
/// work: a kick on an ioeventfd handed over with `vstor_device_set_kick_fd`, or completed I/O.
/// Poll it in your event loop, then call `vstor_device_process`. Returns the fd or a negative
/// errno.
#[no_mangle]
pub extern "C" fn vstor_device_completion_fd(dev: *const vstor_device) -> i32 {
    boundary("vstor_device_completion_fd", || {
        let fd: RawFd = device(dev)?.lock()?.events.fd();
        Ok(fd)
    })
}

/// Handles whatever made the completion fd readable: kicks and completed requests, raising
/// interrupts as the driver asked. Never blocks. Returns how many events were handled (0 when
/// there was nothing to do, and always 0 in worker mode) or the first error.
#[no_mangle]
pub extern "C" fn vstor_device_process(dev: *mut vstor_device) -> i32 {
    boundary("vstor_device_process", || {
        let d = device(dev)?;
        if d.worker_mode {
            return Ok(0);
        }
        let mut guard = d.lock()?;
        let inner = &mut *guard;
        let mut ready = std::mem::take(&mut inner.scratch);
        ready.clear();
        inner.events.ready(&mut ready)?;
        let mut first_err = None;
        for src in &ready {
            let r = match *src {
                Source::Kick(q) => {
                    let fd = inner.kick_fds[usize::from(q)].as_ref();
                    if fd.is_some_and(|f| {
                        use std::os::fd::AsRawFd;
                        drain_eventfd(f.as_raw_fd())
                    }) {
                        inner.transport.kick(q)
                    } else {
                        Ok(())
                    }
                }
                Source::Completion(q) => inner.transport.process_completions(q),
            };
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        let n = ready.len() as i32;
        inner.scratch = ready;
        match first_err {
            Some(e) => Err(e.into()),
            None => Ok(n),
        }
    })
}
