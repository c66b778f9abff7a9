//! vstor-vhost-user: vstor devices served to any VMM over vhost-user.
//!
//! A vhost-user-blk backend on rust-vmm's `vhost-user-backend`:
//! - [`BlkBackend`] implements `VhostUserBackend` over a [`vstor_virtio_blk::BlkShared`]: one
//!   worker thread per virtqueue, each queue's state behind its own lock, the I/O engine's
//!   completion eventfd watched by the worker that owns the queue, requests in flight drained
//!   when the frontend stops a ring (`GET_VRING_BASE`), resets the device or disconnects;
//! - [`BlkServer`] binds a Unix socket and serves frontends one after another with a fresh
//!   backend each time, until a [`StopHandle`] or SIGINT/SIGTERM stops it; the device is then
//!   flushed and the socket removed;
//! - [`serve_blk`] is the one-call form that `vstor serve blk` uses.
//!
//! ```no_run
//! use vstor_vhost_user::{serve_blk, ServeBlkOptions};
//!
//! let mut opts = ServeBlkOptions::new("/tmp/vstor-blk.sock", "disk.img");
//! opts.open.format = Some("raw".into());
//! opts.blk.num_queues = 4;
//! // Blocks until SIGINT/SIGTERM. Attach QEMU with
//! //   -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem
//! //   -chardev socket,id=vblk,path=/tmp/vstor-blk.sock
//! //   -device vhost-user-blk-pci,chardev=vblk,num-queues=4
//! serve_blk(opts)?;
//! # Ok::<(), vstor_vhost_user::Error>(())
//! ```
//!
//! Stopping from another thread instead of a signal:
//!
//! ```no_run
//! use vstor_vhost_user::{BlkServer, ServeBlkOptions};
//!
//! let server = BlkServer::bind(ServeBlkOptions::new("/tmp/test.sock", "memory:64M"))?;
//! let stop = server.stop_handle();
//! let thread = std::thread::spawn(move || server.run());
//! // ... connect a frontend to /tmp/test.sock ...
//! stop.stop();
//! thread.join().unwrap()?;
//! # Ok::<(), vstor_vhost_user::Error>(())
//! ```
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod accept;
pub mod backend;
pub mod control;
pub mod error;
mod exit;
mod poll;
mod queue;
pub mod scsi_backend;
pub mod scsi_luns;
pub mod scsi_server;
pub mod server;
pub mod shutdown;

pub use backend::{poll_window, protocol_features, BlkBackend, DEFAULT_POLL, MAX_QUEUES};
pub use error::{Error, Result};
pub use queue::{EpollHandler, Vring};
pub use scsi_backend::ScsiBackend;
pub use scsi_luns::LunConfig;
pub use scsi_server::{serve_scsi, ScsiServer, ServeScsiOptions, Units};
pub use server::{serve_blk, BlkServer, ServeBlkOptions};
pub use shutdown::{StopHandle, SIGNAL_GRACE};

#[cfg(test)]
mod scsi_server_tests;
#[cfg(test)]
mod server_tests;
