//! Errors of the virtio-blk device.

/// Result alias for virtio-blk.
pub type Result<T> = std::result::Result<T, Error>;

/// Errors that stop a queue or refuse a setting. Errors in a single request never show up
/// here: they become a status byte (IOERR / UNSUPP) for that request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The driver broke the virtqueue protocol on `queue` so badly that no status can be
    /// returned (malformed chain, no room for the status byte): the device needs a reset
    /// (DEVICE_NEEDS_RESET, VIRTIO 1.2 §2.1.2).
    #[error("queue {queue}: request {head}: {reason}")]
    NeedsReset {
        /// The queue.
        queue: u16,
        /// The head descriptor of the request at fault.
        head: u16,
        /// What was wrong.
        reason: String,
    },
    /// Reading or writing the virtqueue rings failed.
    #[error("queue {queue}: {source}")]
    Queue {
        /// The queue.
        queue: u16,
        /// The virtio-queue error.
        #[source]
        source: vstor_virtio_core::virtio_queue::Error,
    },
    /// An option value cannot be used.
    #[error("invalid virtio-blk option {name}={value}: {reason}")]
    InvalidOption {
        /// Option name.
        name: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// The block layer failed (opening a queue, for instance).
    #[error(transparent)]
    Block(#[from] vstor_blockdev::Error),
    /// The virtio core refused something (config access, features, state).
    #[error(transparent)]
    Core(#[from] vstor_virtio_core::Error),
}

impl Error {
    /// The positive errno value that best describes this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Block(e) => e.errno(),
            Error::Core(e) => e.errno(),
            Error::NeedsReset { .. } | Error::Queue { .. } => libc::EIO,
            Error::InvalidOption { .. } => libc::EINVAL,
        }
    }
}
