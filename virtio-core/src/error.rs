//! The one error type of virtio-core.

use vm_memory::GuestAddress;

/// Result alias for virtio-core.
pub type Result<T> = std::result::Result<T, Error>;

/// Errors of the virtio core: each names the descriptor, address, feature or field at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A descriptor index points outside the descriptor table (VIRTIO 1.2 §2.7.5).
    #[error("descriptor index {index} outside a table of {size} entries")]
    DescriptorIndex {
        /// The index found.
        index: u16,
        /// Table size.
        size: u16,
    },
    /// The chain is longer than its table allows, so it loops (§2.7.5.2).
    #[error("descriptor chain starting at {head} longer than {max} descriptors (loop?)")]
    ChainTooLong {
        /// Head index of the chain.
        head: u16,
        /// The limit.
        max: u32,
    },
    /// A descriptor table or buffer address is not in guest memory.
    #[error("guest address {addr:#x} (len {len}) outside guest memory")]
    BadAddress {
        /// Guest physical address.
        addr: u64,
        /// Length of the access.
        len: u64,
    },
    /// An indirect descriptor is malformed (§2.7.5.3.1).
    #[error("invalid indirect descriptor table at {addr:#x} (len {len}): {reason}")]
    BadIndirect {
        /// Table address.
        addr: u64,
        /// Table length in bytes.
        len: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// A device-readable descriptor follows a device-writable one (§2.7.4.2).
    #[error("readable descriptor {index} after a writable one in chain {head}")]
    ReadableAfterWritable {
        /// Head of the chain.
        head: u16,
        /// Position in the chain.
        index: u32,
    },
    /// The chain's total length overflows 2^32 bytes (§2.7.5.2).
    #[error("descriptor chain {head} longer than 4 GiB")]
    ChainOverflow {
        /// Head of the chain.
        head: u16,
    },
    /// A read or write past the end of the chain's buffers.
    #[error("{what}: needs {needed} bytes, only {available} left in the descriptor chain")]
    ShortBuffer {
        /// What was being read or written.
        what: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Bytes left.
        available: u64,
    },
    /// Guest memory access failed.
    #[error("guest memory access at {addr:?} failed: {source}")]
    Memory {
        /// Address accessed.
        addr: GuestAddress,
        /// The underlying error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// Building guest memory failed.
    #[error("cannot build guest memory region at {gpa:#x} (len {len:#x}): {reason}")]
    MemoryRegion {
        /// Guest physical address of the region.
        gpa: u64,
        /// Region length.
        len: u64,
        /// Why.
        reason: String,
    },
    /// The driver acknowledged features the device did not offer, or omitted required ones.
    #[error("driver features {acked:#x} invalid: {reason}")]
    Features {
        /// The driver's features.
        acked: u64,
        /// Why they are refused.
        reason: &'static str,
    },
    /// A status transition the spec forbids (§2.1.1, §3.1.1).
    #[error("device status {from:#x} -> {to:#x} not allowed: {reason}")]
    Status {
        /// Current status.
        from: u8,
        /// Requested status.
        to: u8,
        /// Why.
        reason: &'static str,
    },
    /// A queue index or setting is invalid.
    #[error("queue {queue}: {reason}")]
    Queue {
        /// Queue index.
        queue: u16,
        /// What is wrong.
        reason: String,
    },
    /// A configuration-space access outside the config structure.
    #[error("config access at offset {offset} len {len} outside {size} bytes")]
    ConfigAccess {
        /// Offset.
        offset: u64,
        /// Length.
        len: usize,
        /// Config size.
        size: usize,
    },
    /// A saved state blob cannot be restored.
    #[error("device state: {0}")]
    State(String),
    /// The device is in a state that does not allow the call.
    #[error("device not ready: {0}")]
    NotReady(&'static str),
    /// An OS call failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The positive errno value that best describes this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Os { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::NotReady(_) | Error::Status { .. } => libc::EBUSY,
            Error::BadAddress { .. } | Error::Memory { .. } => libc::EFAULT,
            _ => libc::EINVAL,
        }
    }
}
