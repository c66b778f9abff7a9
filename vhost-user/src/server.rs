//! [`BlkServer`]: a block device served as vhost-user-blk on a Unix socket, one frontend at a
//! time, reconnection after reconnection, until stopped.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vstor_blockdev::open::{open, OpenOptions};
use vstor_blockdev::BlockDev;
use vstor_virtio_blk::{BlkOptions, BlkShared};
use vstor_virtio_core::{GuestMemory, GuestMemoryAtomic};

use crate::backend::{BlkBackend, MAX_QUEUES};
use crate::error::{Error, Result};
use crate::shutdown::{spawn_signal_thread, SignalExit, StopHandle, StopState};

/// Everything needed to serve one block device over vhost-user-blk.
#[derive(Debug, Clone)]
pub struct ServeBlkOptions {
    /// The Unix socket to listen on. A stale socket there is replaced; a live one (another
    /// server answers) or any other kind of file is an error.
    pub socket: PathBuf,
    /// The block device: a file or host block device path, `null:<size>` or `memory:<size>`.
    pub image: String,
    /// How to open it: read-only, host cache mode, I/O engine, format.
    pub open: OpenOptions,
    /// The virtio-blk device: number and size of queues, serial, and so on.
    pub blk: BlkOptions,
    /// How long a worker polls its ring after emptying it (`None`: [`crate::poll_window`],
    /// i.e. `VSTOR_POLL_US` or 100 µs; zero turns polling off).
    pub poll: Option<Duration>,
}

impl ServeBlkOptions {
    /// Options serving `image` on `socket` with default open and device options.
    pub fn new(socket: impl Into<PathBuf>, image: impl Into<String>) -> Self {
        ServeBlkOptions {
            socket: socket.into(),
            image: image.into(),
            open: OpenOptions::default(),
            blk: BlkOptions::default(),
            poll: None,
        }
    }
}

/// epoll tokens of the accept wait.
const TOKEN_LISTENER: u64 = 0;
const TOKEN_STOP: u64 = 1;

/// A vhost-user-blk server bound to its socket.
///
/// [`BlkServer::bind`] opens the device and creates the socket (a frontend may connect as soon
/// as it returns); [`BlkServer::run`] serves frontends one after another until a
/// [`StopHandle`] or a signal ([`BlkServer::stop_on_signals`]) stops it. Every connection gets
/// a fresh backend: features, rings, memory table and write-cache setting start clean, while the
/// block device (and its data) stays open across connections.
pub struct BlkServer {
    dev: Arc<dyn BlockDev>,
    blk: BlkOptions,
    poll: Duration,
    socket: PathBuf,
    listener: Listener,
    poller: Epoll,
    stop: Arc<StopState>,
    connections: u64,
}

impl BlkServer {
    /// Opens the block device, checks the device options and binds the socket.
    pub fn bind(opts: ServeBlkOptions) -> Result<Self> {
        let ServeBlkOptions {
            socket,
            image,
            open: open_opts,
            mut blk,
            poll,
        } = opts;
        if blk.num_queues == 0 || blk.num_queues > MAX_QUEUES {
            return Err(Error::InvalidOption {
                name: "queues",
                value: blk.num_queues.to_string(),
                reason: format!("must be 1..={MAX_QUEUES}"),
            });
        }
        blk.read_only |= open_opts.read_only;
        let dev = open(&image, &open_opts).map_err(|source| Error::Open {
            name: image.clone(),
            source,
        })?;
        // Validates the device options against the device before any client sees them.
        BlkShared::new(dev.clone(), blk.clone())?;

        prepare_socket_path(&socket)?;
        let listener = Listener::new(&socket, false).map_err(|e| Error::socket(&socket, e))?;
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
        log::info!("serving {} on {}", dev.info().description, socket.display());
        Ok(BlkServer {
            dev,
            blk,
            poll: poll.unwrap_or_else(crate::poll_window),
            socket,
            listener,
            poller,
            stop,
            connections: 0,
        })
    }

    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The block device being served.
    pub fn device(&self) -> &Arc<dyn BlockDev> {
        &self.dev
    }

    /// A handle that stops [`BlkServer::run`] from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            state: self.stop.clone(),
        }
    }

    /// Turns the first SIGINT or SIGTERM into a stop: `run` cuts the connection, drains the
    /// requests in flight, flushes the device, removes the socket and returns `Ok`. If that
    /// takes longer than [`crate::SIGNAL_GRACE`], or on a second signal, the device is flushed,
    /// the socket removed and the process exits with status 0 (1 if the flush fails).
    pub fn stop_on_signals(&self) -> Result<()> {
        let dev = self.dev.clone();
        spawn_signal_thread(SignalExit {
            stop: self.stop_handle(),
            close: Box::new(move || dev.close().map_err(|e| e.to_string())),
            socket: self.socket.clone(),
        })
    }

    /// Serves frontends one after another until stopped, then flushes the device and removes
    /// the socket. A frontend that disconnects or breaks the protocol only ends its own
    /// connection.
    pub fn run(mut self) -> Result<()> {
        let served = self.serve();
        // A clean close: formats write back their metadata and clear their dirty bit.
        let flushed = self.dev.close().map_err(Error::Flush);
        let BlkServer { listener, stop, .. } = self;
        // Dropping the listener removes the socket file.
        drop(listener);
        stop.finish();
        log::info!("stopped");
        served.and(flushed)
    }

    fn serve(&mut self) -> Result<()> {
        while self.wait_for_client()? {
            self.serve_connection()?;
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

    /// Accepts one frontend and serves it until it disconnects or the server is stopped.
    fn serve_connection(&mut self) -> Result<()> {
        self.connections += 1;
        let id = self.connections;
        let shared = BlkShared::new(self.dev.clone(), self.blk.clone())?;
        let backend = Arc::new(BlkBackend::with_poll(shared, self.poll)?);
        let mem = GuestMemoryAtomic::new(GuestMemory::new());
        let mut daemon = VhostUserDaemon::new(format!("vstor-blk-{id}"), backend.clone(), mem)
            .map_err(|e| Error::Daemon(e.to_string()))?;
        backend.attach_workers(&daemon.get_epoll_handlers());
        daemon
            .start(&mut self.listener)
            .map_err(|e| Error::Daemon(e.to_string()))?;
        log::info!("connection {id}: frontend connected");
        self.stop.set_connection(daemon.shutdown_handle());
        let ended = daemon.wait();
        self.stop.set_connection(None);
        // Dropping the daemon stops and joins the worker threads: no event runs after this.
        drop(daemon);
        // Requests still in flight finish into the used ring before the next frontend comes.
        backend.stop_all();
        drop(backend);
        match ended {
            Ok(()) => log::info!("connection {id}: closed"),
            Err(e) if is_hang_up(&e) => log::info!("connection {id}: frontend disconnected"),
            Err(e) => log::warn!("connection {id}: ended: {e}"),
        }
        Ok(())
    }
}

/// Whether a daemon error only says that the frontend went away (as `VhostUserDaemon::serve`
/// treats it).
pub(crate) fn is_hang_up(e: &vhost_user_backend::Error) -> bool {
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

/// Serves `opts.image` on `opts.socket` until SIGINT or SIGTERM, then flushes the device,
/// removes the socket and returns `Ok` (see [`BlkServer::stop_on_signals`] for the forced
/// exit when stopping hangs).
pub fn serve_blk(opts: ServeBlkOptions) -> Result<()> {
    let server = BlkServer::bind(opts)?;
    server.stop_on_signals()?;
    log::info!("listening on {}", server.socket_path().display());
    server.run()
}
