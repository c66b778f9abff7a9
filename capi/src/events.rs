//! The device's one pollable descriptor: an epoll set holding the kick eventfds the embedder
//! handed over and each live queue's completion eventfd. The embedder polls it in its own
//! event loop and calls `vstor_device_process` when it is readable.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::io::RawFd;

use crate::error::{CError, CResult};

/// What an epoll event stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The driver kicked this queue.
    Kick(u16),
    /// This queue has completions to collect.
    Completion(u16),
}

impl Source {
    fn encode(self) -> u64 {
        match self {
            Source::Kick(q) => u64::from(q),
            Source::Completion(q) => 1 << 32 | u64::from(q),
        }
    }

    fn decode(v: u64) -> Source {
        let q = v as u16;
        if v >> 32 == 1 {
            Source::Completion(q)
        } else {
            Source::Kick(q)
        }
    }
}

/// An epoll set and what is registered in it.
pub struct EventSet {
    epoll: OwnedFd,
    registered: Vec<(RawFd, Source)>,
}

/// Most events handled per `vstor_device_process` call (more stay readable for the next).
const MAX_EVENTS: usize = 64;

impl EventSet {
    /// An empty set.
    pub fn new() -> CResult<Self> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return Err(CError::new(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("epoll_create1: {e}"),
            ));
        }
        Ok(EventSet {
            // SAFETY: `fd` was just created and is owned by nobody else.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            registered: Vec::new(),
        })
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Replaces the registered descriptors with `want`.
    pub fn sync(&mut self, want: Vec<(RawFd, Source)>) -> CResult<()> {
        for (fd, _) in self.registered.drain(..) {
            // SAFETY: EPOLL_CTL_DEL with a NULL event is valid since Linux 2.6.9; a descriptor
            // closed meanwhile just yields an error, which is harmless here.
            unsafe {
                libc::epoll_ctl(
                    self.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    fd,
                    std::ptr::null_mut(),
                )
            };
        }
        for (fd, src) in want {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: src.encode(),
            };
            // SAFETY: `ev` is a valid epoll_event for the duration of the call.
            let rc = unsafe {
                libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev)
            };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                return Err(CError::new(
                    e.raw_os_error().unwrap_or(libc::EIO),
                    format!("cannot watch fd {fd} for {src:?}: {e}"),
                ));
            }
            self.registered.push((fd, src));
        }
        Ok(())
    }

    /// The sources that are readable now (no waiting).
    pub fn ready(&self, out: &mut Vec<Source>) -> CResult<()> {
        if self.registered.is_empty() {
            return Ok(());
        }
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        // SAFETY: `evs` has room for MAX_EVENTS events; timeout 0 never blocks.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                evs.as_mut_ptr(),
                MAX_EVENTS as i32,
                0,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(());
            }
            return Err(CError::new(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("epoll_wait: {e}"),
            ));
        }
        out.extend(evs[..n as usize].iter().map(|e| Source::decode(e.u64)));
        Ok(())
    }
}

/// Consumes an eventfd's counter without blocking; returns whether it was signalled.
pub fn drain_eventfd(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, timeout 0.
    let ready = unsafe { libc::poll(&mut pfd, 1, 0) } == 1 && pfd.revents & libc::POLLIN != 0;
    if ready {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into `v`; the fd was just reported readable, so this does not
        // block (one reader per fd).
        unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
    }
    ready
}
