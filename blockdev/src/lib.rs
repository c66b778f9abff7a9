//! vstor-blockdev: the block layer under every vstor device model.
//!
//! A [`BlockDev`] is an opened image: it knows its size and block sizes, whether it is read-only
//! and what it can do (discard, write-zeroes, block status), and it hands out [`IoQueue`]s. Each
//! device queue owns one `IoQueue`, so requests from several device queues run concurrently and a
//! slow request never blocks another queue. An `IoQueue` keeps many requests in flight (io_uring
//! for files, a thread pool where io_uring is refused) and signals completions through an eventfd
//! the embedder can poll.
//!
//! Formats translate guest ranges into host ranges; protocols move bytes. Protocols: regular
//! files and host block devices ([`mod@file`], [`FileDev`]), [`null`] and [`memory`];
//! file-backed queues run on an I/O [`engine`] (io_uring, or threads where io_uring is
//! refused), chosen once by one factory. Formats: raw, and [`qcow2`], which sits on an
//! [`image::ImageFile`]; [`open()`] honours an explicit format or probes ([`probe`], with the
//! raw block-0 guard).
//!
//! ```
//! use vstor_blockdev::{memory::MemoryDev, BlockDev};
//!
//! let dev = MemoryDev::new(1 << 20, Default::default()).unwrap();
//! dev.write_at(b"hello", 4096).unwrap();
//! let mut buf = [0u8; 5];
//! dev.read_at(&mut buf, 4096).unwrap();
//! assert_eq!(&buf, b"hello");
//! assert_eq!(dev.info().size, 1 << 20);
//! ```
//!
//! A qcow2 image (see [`qcow2`] for one in memory):
//!
//! ```no_run
//! use vstor_blockdev::qcow2::{create_path, CreateOptions};
//! use vstor_blockdev::{open, BlockDev, OpenOptions};
//!
//! let path = std::path::Path::new("/tmp/disk.qcow2");
//! create_path(path, &CreateOptions { size: 1 << 30, ..Default::default() }).unwrap();
//! let dev = open("/tmp/disk.qcow2", &OpenOptions::default()).unwrap(); // probed: qcow2
//! dev.write_at(b"data", 0).unwrap();
//! dev.close().unwrap();
//! ```
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod aligned;
pub mod error;
pub mod iovec;
pub mod request;
pub mod types;

pub mod engine;
pub mod file;
pub mod image;
pub mod memory;
pub mod null;
pub mod open;
pub mod probe;
pub mod qcow2;

pub use aligned::AlignedBuf;
pub use error::{Error, Result};
pub use file::FileDev;
pub use iovec::IoVec;
pub use open::{open, OpenOptions};
pub use request::{Completion, IoOp, IoQueue, IoRequest, Submitted};
pub use types::{BlockDev, BlockInfo, BlockStatus, CacheMode, EngineKind, MapExtent, QueueOptions};
