//! Errors of the virtio-scsi device.

/// Result alias for virtio-scsi.
pub type Result<T> = std::result::Result<T, Error>;

/// Errors that stop a queue or refuse a setting. Errors in a single request never show up
/// here: they become a response code, a SCSI status and sense data for that request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The driver broke the virtqueue protocol on `queue` so badly that no response can be
    /// returned (malformed chain, no room for the response): the device needs a reset
    /// (DEVICE_NEEDS_RESET, VIRTIO 1.2 §2.1.2).
    #[error("virtio-scsi queue {queue}: request {head}: {reason}")]
    NeedsReset {
        /// The queue.
        queue: u16,
        /// The head descriptor of the request at fault.
        head: u16,
        /// What was wrong.
        reason: String,
    },
    /// Reading or writing the virtqueue rings failed.
    #[error("virtio-scsi queue {queue}: {source}")]
    Queue {
        /// The queue.
        queue: u16,
        /// The virtio-queue error.
        #[source]
        source: vstor_virtio_core::virtio_queue::Error,
    },
    /// An option value cannot be used.
    #[error("invalid virtio-scsi option {name}={value}: {reason}")]
    InvalidOption {
        /// Option name.
        name: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// A LUN cannot be attached, found or detached.
    #[error("target {target} LUN {lun}: {reason}")]
    Lun {
        /// Target.
        target: u32,
        /// LUN.
        lun: u32,
        /// Why.
        reason: String,
    },
    /// The host ran out of a resource (an eventfd, for instance).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The virtio core refused something (config access, features, state).
    #[error(transparent)]
    Core(#[from] vstor_virtio_core::Error),
}

impl Error {
    /// The positive errno value that best describes this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Core(e) => e.errno(),
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::NeedsReset { .. } | Error::Queue { .. } => libc::EIO,
            Error::InvalidOption { .. } => libc::EINVAL,
            Error::Lun { .. } => libc::ENOENT,
        }
    }
}
