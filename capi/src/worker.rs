//! Worker mode: one vstor-owned thread per live queue waits for kicks (the embedder's ioeventfd
//! or `vstor_device_kick`) and completions, and processes the queue under the device lock.

use std::os::fd::AsRawFd;
use std::os::unix::io::RawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

use crate::device::{Device, Inner};
use crate::error::{CError, CResult};
use crate::events::drain_eventfd;

/// The running workers of one device.
pub(crate) struct Workers {
    stop: EventFd,
    threads: Vec<JoinHandle<()>>,
}

struct Plan {
    queue: u16,
    kicks: Vec<RawFd>,
    completion: Option<RawFd>,
}

impl Workers {
    /// Starts a thread per live queue. The descriptors they watch stay open until
    /// [`Workers::stop`] returns: the kick fds live in the device, and completion fds change
    /// only on reset, which stops the workers first.
    pub fn start(dev: &Device) -> CResult<Workers> {
        let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map_err(|e| CError::new(libc::EMFILE, format!("eventfd: {e}")))?;
        let plans = {
            let inner = dev.lock()?;
            let t = &inner.transport;
            (0..t.num_queues())
                .filter(|q| t.queue(*q).map(|c| c.ready).unwrap_or(false))
                .map(|q| {
                    let mut kicks = vec![dev.internal_kicks[usize::from(q)].as_raw_fd()];
                    if let Some(fd) = &inner.kick_fds[usize::from(q)] {
                        kicks.push(fd.as_raw_fd());
                    }
                    Plan {
                        queue: q,
                        kicks,
                        completion: t.completion_fd(q),
                    }
                })
                .collect::<Vec<_>>()
        };
        let mut workers = Workers {
            stop,
            threads: Vec::new(),
        };
        for plan in plans {
            let inner = dev.inner.clone();
            let stop = workers.stop.as_raw_fd();
            let spawned = std::thread::Builder::new()
                .name(format!("vstor-q{}", plan.queue))
                .spawn(move || run(inner, stop, plan));
            match spawned {
                Ok(h) => workers.threads.push(h),
                Err(e) => {
                    workers.stop();
                    return Err(CError::new(
                        libc::EAGAIN,
                        format!("cannot start worker: {e}"),
                    ));
                }
            }
        }
        Ok(workers)
    }

    /// Stops and joins every worker.
    pub fn stop(self) {
        let _ = self.stop.write(1);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn run(inner: Arc<Mutex<Inner>>, stop: RawFd, plan: Plan) {
    let mut fds: Vec<libc::pollfd> = std::iter::once(stop)
        .chain(plan.kicks.iter().copied())
        .chain(plan.completion)
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let nkicks = plan.kicks.len();
    loop {
        // SAFETY: `fds` is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            log::error!("vstor worker for queue {}: poll failed", plan.queue);
            return;
        }
        if fds[0].revents != 0 {
            return;
        }
        if fds
            .iter()
            .any(|f| f.revents & (libc::POLLNVAL | libc::POLLERR) != 0)
        {
            log::error!("vstor worker for queue {}: a watched fd failed", plan.queue);
            return;
        }
        let mut kicked = false;
        for f in &fds[1..=nkicks] {
            if f.revents & libc::POLLIN != 0 {
                kicked |= drain_eventfd(f.fd);
            }
        }
        let completed = plan.completion.is_some() && fds[nkicks + 1].revents != 0;
        let Ok(mut inner) = inner.lock() else {
            return;
        };
        if kicked {
            if let Err(e) = inner.transport.kick(plan.queue) {
                log::error!("queue {}: {e}", plan.queue);
            }
        }
        if completed {
            if let Err(e) = inner.transport.process_completions(plan.queue) {
                log::error!("queue {}: {e}", plan.queue);
            }
        }
    }
}
