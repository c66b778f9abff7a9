//! [`BlkServer`]: a block device served as vhost-user-blk on a Unix socket, one frontend at a
//! time, reconnection after reconnection, until stopped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vstor_blockdev::open::{open, OpenOptions};
use vstor_blockdev::BlockDev;
use vstor_virtio_blk::{BlkOptions, BlkShared};

use crate::accept::Acceptor;
use crate::backend::{BlkBackend, MAX_QUEUES};
use crate::error::{Error, Result};
use crate::shutdown::{spawn_signal_thread, SignalExit, StopHandle};

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
    acceptor: Acceptor,
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

        let acceptor = Acceptor::bind(&socket)?;
        log::info!("serving {} on {}", dev.info().description, socket.display());
        Ok(BlkServer {
            dev,
            blk,
            poll: poll.unwrap_or_else(crate::poll_window),
            acceptor,
        })
    }

    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        &self.acceptor.socket
    }

    /// The block device being served.
    pub fn device(&self) -> &Arc<dyn BlockDev> {
        &self.dev
    }

    /// A handle that stops [`BlkServer::run`] from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.acceptor.stop_handle()
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
            socket: self.acceptor.socket.clone(),
        })
    }

    /// Serves frontends one after another until stopped, then flushes the device and removes
    /// the socket. A frontend that disconnects or breaks the protocol only ends its own
    /// connection.
    pub fn run(self) -> Result<()> {
        let BlkServer {
            dev,
            blk,
            poll,
            mut acceptor,
        } = self;
        let served = acceptor.serve(|acceptor| {
            let shared = BlkShared::new(dev.clone(), blk.clone())?;
            let backend = Arc::new(BlkBackend::with_poll(shared, poll)?);
            acceptor.run_connection("blk", backend.clone(), |handlers| {
                backend.attach_workers(handlers);
                Ok(())
            })?;
            // Requests still in flight finish into the used ring before the next frontend.
            backend.stop_all();
            Ok(())
        });
        // A clean close: formats write back their metadata and clear their dirty bit.
        let flushed = dev.close().map_err(Error::Flush);
        acceptor.finish();
        log::info!("stopped");
        served.and(flushed)
    }
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
