//! What the vhost-user servers share: the listening socket with its stop event, the wait for
//! the next frontend, and one connection served by a `VhostUserDaemon` until it ends.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringEpollHandler, VringRwLock};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vstor_virtio_core::{GuestMemory, GuestMemoryAtomic};

use crate::error::{Error, Result};
use crate::shutdown::{StopHandle, StopState};

/// epoll tokens of the accept wait.
const TOKEN_LISTENER: u64 = 0;
const TOKEN_STOP: u64 = 1;

/// A bound vhost-user socket and the event that stops the server.
pub(crate) struct Acceptor {
    pub socket: PathBuf,
    listener: Listener,
    poller: Epoll,
    pub stop: Arc<StopState>,
    connections: u64,
}

impl Acceptor {
    /// Binds `socket` (a stale socket there is replaced).
    pub fn bind(socket: &Path) -> Result<Acceptor> {
        prepare_socket_path(socket)?;
        let listener = Listener::new(socket, false).map_err(|e| Error::socket(socket, e))?;
        let stop = Arc::new(StopState::new().map_err(|e| Error::io("creating stop event", e))?);
        let poller = Epoll::new().map_err(|e| Error::io("creating epoll", e))?;
        for (fd, token) in [
            (listener.as_raw_fd(), TOKEN_LISTENER),
            (stop.wake_fd(), TOKEN_STOP),
        ] {
            poller
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(|e| Error::io("watching the socket", e))?;
        }
        Ok(Acceptor {
            socket: socket.to_path_buf(),
            listener,
            poller,
            stop,
            connections: 0,
        })
    }

    /// A handle that stops the server from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            state: self.stop.clone(),
        }
    }

    /// Serves frontends one after another with `serve_one` until stopped.
    pub fn serve(&mut self, mut serve_one: impl FnMut(&mut Acceptor) -> Result<()>) -> Result<()> {
        while self.wait_for_client()? {
            serve_one(self)?;
            if self.stop.requested() {
                break;
            }
        }
        Ok(())
    }

    /// Waits until a frontend connects (true) or a stop is requested (false).
    fn wait_for_client(&self) -> Result<bool> {
        let mut events = [EpollEvent::new(EventSet::empty(), 0); 2];
        loop {
            if self.stop.requested() {
                return Ok(false);
            }
            let n = match self.poller.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("waiting for a client", e)),
            };
            let ready = &events[..n];
            if ready.iter().any(|e| e.data() == TOKEN_STOP) {
                return Ok(false);
            }
            if ready.iter().any(|e| e.data() == TOKEN_LISTENER) {
                return Ok(true);
            }
        }
    }

    /// Accepts one frontend and serves it with `backend` until it disconnects or the server
    /// is stopped; `attach` gets the daemon's worker event loops before it starts. When this
    /// returns the worker threads are joined: no event runs any more.
    pub fn run_connection<B>(
        &mut self,
        kind: &str,
        backend: Arc<B>,
        attach: impl FnOnce(&[Arc<VringEpollHandler<Arc<B>>>]) -> Result<()>,
    ) -> Result<()>
    where
        B: VhostUserBackend<Bitmap = (), Vring = VringRwLock<GuestMemoryAtomic>>
            + Send
            + Sync
            + 'static,
    {
        self.connections += 1;
        let id = self.connections;
        let mem = GuestMemoryAtomic::new(GuestMemory::new());
        let mut daemon = VhostUserDaemon::new(format!("vstor-{kind}-{id}"), backend, mem)
            .map_err(|e| Error::Daemon(e.to_string()))?;
        attach(&daemon.get_epoll_handlers())?;
        daemon
            .start(&mut self.listener)
            .map_err(|e| Error::Daemon(e.to_string()))?;
        log::info!("connection {id}: frontend connected");
        self.stop.set_connection(daemon.shutdown_handle());
        let ended = daemon.wait();
        self.stop.set_connection(None);
        // Dropping the daemon stops and joins the worker threads.
        drop(daemon);
        match ended {
            Ok(()) => log::info!("connection {id}: closed"),
            Err(e) if is_hang_up(&e) => log::info!("connection {id}: frontend disconnected"),
            Err(e) => log::warn!("connection {id}: ended: {e}"),
        }
        Ok(())
    }

    /// Removes the socket and tells waiters the server has stopped.
    pub fn finish(self) {
        let Acceptor { listener, stop, .. } = self;
        // Dropping the listener removes the socket file.
        drop(listener);
        stop.finish();
    }
}

/// Whether a daemon error only says that the frontend went away (as `VhostUserDaemon::serve`
/// treats it).
fn is_hang_up(e: &vhost_user_backend::Error) -> bool {
    use vhost::vhost_user::Error as VuError;
    matches!(
        e,
        vhost_user_backend::Error::HandleRequest(
            VuError::Disconnected | VuError::PartialMessage | VuError::SocketBroken(_)
        )
    )
}

/// Makes `path` free for a new socket: a stale socket is removed; a socket another server
/// still answers on, or any other kind of file, is an error.
pub(crate) fn prepare_socket_path(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::socket(path, e)),
    };
    if !meta.file_type().is_socket() {
        return Err(Error::socket(path, "exists and is not a socket"));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(Error::socket(path, "another server is listening on it"));
    }
    std::fs::remove_file(path).map_err(|e| Error::socket(path, e))
}
