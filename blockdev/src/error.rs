//! The one error type of the block layer: a kind, the operation, and where it happened.

use std::io;
use std::path::PathBuf;

/// Result alias for the block layer.
pub type Result<T> = std::result::Result<T, Error>;

/// Errors of the block layer. Each names the file, field or request at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Opening or probing `path` failed.
    #[error("{path}: cannot open: {source}")]
    Open {
        /// The file that could not be opened.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An I/O operation failed on the host.
    #[error("{op} at offset {offset} (len {len}) failed: {source}")]
    Io {
        /// The operation ("read", "write", "flush", "discard", ...).
        op: &'static str,
        /// Byte offset of the request.
        offset: u64,
        /// Byte length of the request.
        len: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A request reaches past the end of the device.
    #[error("{op} at offset {offset} (len {len}) is outside the device of {size} bytes")]
    OutOfRange {
        /// The operation.
        op: &'static str,
        /// Byte offset of the request.
        offset: u64,
        /// Byte length of the request.
        len: u64,
        /// Device size in bytes.
        size: u64,
    },
    /// A request is not aligned to the device's logical block size.
    #[error("{op} at offset {offset} (len {len}) is not aligned to {align} bytes")]
    Unaligned {
        /// The operation.
        op: &'static str,
        /// Byte offset of the request.
        offset: u64,
        /// Byte length of the request.
        len: u64,
        /// Required alignment.
        align: u32,
    },
    /// A write-class operation on a read-only device.
    #[error("{op} refused: device is read-only")]
    ReadOnly {
        /// The operation.
        op: &'static str,
    },
    /// The device or protocol does not support the operation.
    #[error("{op} is not supported by {what}")]
    Unsupported {
        /// The operation.
        op: &'static str,
        /// What does not support it (protocol, engine, file type).
        what: String,
    },
    /// An option has a value that cannot be used.
    #[error("invalid option {name}={value}: {reason}")]
    InvalidOption {
        /// Option name.
        name: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// The queue already holds as many requests as it can.
    #[error("I/O queue full ({depth} requests in flight)")]
    QueueFull {
        /// The queue depth.
        depth: usize,
    },
    /// An image's metadata is invalid: `field` names the header field, table or entry at fault.
    #[error("{image}: invalid {field}: {reason}")]
    Corrupt {
        /// The image file (path or description).
        image: String,
        /// The field, table or entry at fault (e.g. "header.l1_size", "L2 entry for offset 0x10000").
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Setting up an I/O engine failed.
    #[error("cannot set up {engine} engine: {source}")]
    Engine {
        /// The engine name.
        engine: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The positive errno value that best describes this error (for the C ABI and for
    /// device status mapping).
    pub fn errno(&self) -> i32 {
        match self {
            Error::Open { source, .. }
            | Error::Io { source, .. }
            | Error::Engine { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::OutOfRange { .. } | Error::Unaligned { .. } | Error::InvalidOption { .. } => {
                libc::EINVAL
            }
            Error::ReadOnly { .. } => libc::EROFS,
            Error::Corrupt { .. } => libc::EIO,
            Error::Unsupported { .. } => libc::ENOTSUP,
            Error::QueueFull { .. } => libc::EAGAIN,
        }
    }

    /// Builds an [`Error::Corrupt`].
    pub fn corrupt(image: &str, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            image: image.to_string(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::Io`] from an OS error.
    pub fn io(op: &'static str, offset: u64, len: u64, source: io::Error) -> Self {
        Error::Io {
            op,
            offset,
            len,
            source,
        }
    }
}
