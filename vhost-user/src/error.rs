//! Errors of the vhost-user backends.

use std::io;
use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Why a server could not start or stopped. A misbehaving client never shows up here: its
/// connection is logged and dropped, and the server waits for the next one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An option cannot be used.
    #[error("invalid option {name}={value}: {reason}")]
    InvalidOption {
        /// Option name.
        name: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// The block device could not be opened.
    #[error("cannot open {name}: {source}")]
    Open {
        /// The block device name (path, `null:<size>`, `memory:<size>`).
        name: String,
        /// What the block layer said.
        #[source]
        source: vstor_blockdev::Error,
    },
    /// The virtio-blk device refused its options.
    #[error(transparent)]
    Device(#[from] vstor_virtio_blk::Error),
    /// The socket path cannot be used.
    #[error("socket {path}: {reason}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The vhost-user daemon failed (spawning threads, accepting a connection).
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
    /// Setting up signal handling or the stop event failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The SCSI device refused a unit or an option.
    #[error("{0}")]
    Scsi(String),
    /// Flushing the block device at shutdown failed.
    #[error("flush at shutdown: {0}")]
    Flush(#[source] vstor_blockdev::Error),
}

impl Error {
    pub(crate) fn io(what: &'static str, source: io::Error) -> Self {
        Error::Io { what, source }
    }

    pub(crate) fn socket(path: &std::path::Path, reason: impl std::fmt::Display) -> Self {
        Error::Socket {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}
