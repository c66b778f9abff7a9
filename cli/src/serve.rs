//! `vstor serve`: vhost-user backends.
//!
//! ```text
//! vstor serve blk [--image PATH] [--format raw|qcow2] [--l2-cache-size SIZE] [--socket PATH] [--queues N] [--queue-size N]
//!                 [--read-only] [--cache MODE] [--aio auto|io_uring|threads] [--poll-us US]
//!                 [--serial S]
//! vstor serve scsi --lun SPEC [--lun SPEC]... [--control PATH] (see `serve_scsi`)
//! ```

use std::fs::OpenOptions as FileOptions;
use std::io;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use vstor_blockdev::open::OpenOptions;
use vstor_blockdev::{CacheMode, EngineKind};
use vstor_vhost_user::{BlkServer, ServeBlkOptions};
use vstor_virtio_blk::BlkOptions;

/// Size of the disk served when no `--image` is given.
const DEFAULT_DISK_SIZE: u64 = 1 << 30;
/// File name of that disk, in `$XDG_RUNTIME_DIR` or `/tmp`.
const DEFAULT_DISK_NAME: &str = "vstor-default-disk.img";

/// Which device to serve.
#[derive(Subcommand, Debug)]
pub enum ServeCommand {
    /// Serve a block device as vhost-user-blk (QEMU, cloud-hypervisor, crosvm, libblkio).
    Blk(BlkArgs),
    /// Serve SCSI disks and CD-ROMs as one vhost-user-scsi device (QEMU vhost-user-scsi-pci).
    Scsi(crate::serve_scsi::ScsiArgs),
}

/// Options of `vstor serve blk`.
#[derive(Args, Debug)]
pub struct BlkArgs {
    /// Image to serve: a file or host block device, `null:<size>` or `memory:<size>`. Without
    /// it, a 1 GiB sparse raw file is created (if absent) in $XDG_RUNTIME_DIR or /tmp and served.
    #[arg(long, value_name = "PATH")]
    image: Option<String>,
    /// Image format: `raw` or `qcow2`. Without it the format is probed (a probed raw image
    /// refuses guest writes that would make its first sector look like an image format).
    #[arg(long, value_name = "FORMAT")]
    format: Option<String>,
    /// Unix socket to listen on.
    #[arg(long, value_name = "PATH", default_value = "/tmp/vstor-blk.sock")]
    socket: PathBuf,
    /// Number of request queues (one worker thread each).
    #[arg(long, value_name = "N", default_value_t = 1)]
    queues: u16,
    /// Maximum size of each queue (a power of two).
    #[arg(long, value_name = "N", default_value_t = 256)]
    queue_size: u16,
    /// Expose the device read-only.
    #[arg(long)]
    read_only: bool,
    /// Host cache mode: none, writeback, writethrough, directsync or unsafe.
    #[arg(long, value_name = "MODE", default_value = "writeback", value_parser = parse_cache)]
    cache: CacheMode,
    /// I/O engine for files: auto, io_uring or threads.
    #[arg(long, value_name = "ENGINE", default_value = "auto", value_parser = parse_engine)]
    aio: EngineKind,
    /// Longest time (µs) a queue worker keeps polling its ring for new requests after
    /// emptying it, adapting below it; 0 turns polling off. Default: $VSTOR_POLL_US or 100.
    #[arg(long, value_name = "US", value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    poll_us: Option<u64>,
    /// Serial number reported to the guest (at most 20 bytes).
    #[arg(long, value_name = "S")]
    serial: Option<String>,
    /// qcow2: bytes of L2 tables to cache (QEMU's l2-cache-size; K/M/G suffixes). Default:
    /// enough to map the whole disk, at most 32 MiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    l2_cache_size: Option<u64>,
    /// qcow2: bytes of refcount blocks to cache (QEMU's refcount-cache-size). Default 1 MiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    refcount_cache_size: Option<u64>,
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    vstor_blockdev::file::parse_size(&s.to_ascii_uppercase()).map_err(|e| e.to_string())
}

pub(crate) fn parse_cache(s: &str) -> Result<CacheMode, String> {
    s.parse().map_err(|e: vstor_blockdev::Error| e.to_string())
}

pub(crate) fn parse_engine(s: &str) -> Result<EngineKind, String> {
    s.parse().map_err(|e: vstor_blockdev::Error| e.to_string())
}

/// Runs a serve subcommand.
pub fn run(cmd: ServeCommand) -> Result<(), String> {
    match cmd {
        ServeCommand::Blk(args) => serve_blk(args),
        ServeCommand::Scsi(args) => crate::serve_scsi::serve_scsi(args),
    }
}

fn serve_blk(args: BlkArgs) -> Result<(), String> {
    let opts = args.to_options()?;
    let queues = opts.blk.num_queues;
    let server = BlkServer::bind(opts).map_err(|e| e.to_string())?;
    server.stop_on_signals().map_err(|e| e.to_string())?;
    let socket = server.socket_path().to_path_buf();
    eprintln!("attach with QEMU:\n  {}", qemu_args(&socket, queues));
    eprintln!("listening on {}", socket.display());
    server.run().map_err(|e| e.to_string())
}

impl BlkArgs {
    /// Checks the arguments and turns them into server options (creating the default disk
    /// when no image is given).
    fn to_options(&self) -> Result<ServeBlkOptions, String> {
        if let Some(format) = &self.format {
            if !["raw", "qcow2"].contains(&format.as_str()) {
                return Err(format!(
                    "unsupported image format '{format}': raw and qcow2 are supported"
                ));
            }
        }
        let (image, format) = match &self.image {
            Some(image) => (image.clone(), self.format.clone()),
            None => {
                let path = default_disk_path();
                ensure_default_disk(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                eprintln!(
                    "no --image given: serving {} (1 GiB sparse raw file)",
                    path.display()
                );
                (path.to_string_lossy().into_owned(), Some("raw".to_string()))
            }
        };
        let defaults = BlkOptions::default();
        Ok(ServeBlkOptions {
            socket: self.socket.clone(),
            image,
            open: OpenOptions {
                read_only: self.read_only,
                cache: self.cache,
                engine: self.aio,
                format,
                l2_cache_bytes: self.l2_cache_size,
                refcount_cache_bytes: self.refcount_cache_size,
                ..OpenOptions::default()
            },
            blk: BlkOptions {
                serial: self.serial.clone().unwrap_or(defaults.serial.clone()),
                num_queues: self.queues,
                queue_size: self.queue_size,
                read_only: self.read_only,
                ..defaults
            },
            poll: self.poll_us.map(std::time::Duration::from_micros),
        })
    }
}

/// `$XDG_RUNTIME_DIR/vstor-default-disk.img`, or `/tmp/vstor-default-disk.img`.
pub(crate) fn default_disk_path() -> PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    dir.join(DEFAULT_DISK_NAME)
}

/// Creates a sparse raw file of [`DEFAULT_DISK_SIZE`] unless `path` already exists.
pub(crate) fn ensure_default_disk(path: &Path) -> io::Result<()> {
    match FileOptions::new().write(true).create_new(true).open(path) {
        Ok(file) => file.set_len(DEFAULT_DISK_SIZE),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// The QEMU arguments that attach the device (guest RAM must be shared with the backend).
fn qemu_args(socket: &Path, queues: u16) -> String {
    format!(
        "-object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \
         -chardev socket,id=vblk,path={} -device vhost-user-blk-pci,chardev=vblk,num-queues={queues}",
        socket.display()
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        cmd: ServeCommand,
    }

    fn parse(args: &[&str]) -> Result<BlkArgs, clap::Error> {
        let argv = std::iter::once("serve").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|c| match c.cmd {
            ServeCommand::Blk(a) => a,
            ServeCommand::Scsi(_) => panic!("not a blk command"),
        })
    }

    #[test]
    fn scsi_units_parse_with_the_spec_at_fault_named() {
        let argv = [
            "serve",
            "scsi",
            "--lun",
            "image=a.raw,lun=3",
            "--lun",
            "image=b.iso,type=cd",
        ];
        let Ok(Cli {
            cmd: ServeCommand::Scsi(a),
        }) = Cli::try_parse_from(argv)
        else {
            panic!("scsi args");
        };
        assert_eq!(a.luns.len(), 2);
        assert_eq!(a.luns[0].lun, Some(3));
        assert_eq!(a.socket, Path::new("/tmp/vstor-scsi.sock"));
        let e = Cli::try_parse_from(["serve", "scsi", "--lun", "lun=3"]).unwrap_err();
        assert!(e.to_string().contains("image=PATH is required"), "{e}");
    }

    #[test]
    fn defaults() {
        let a = parse(&["blk", "--image", "null:1G"]).unwrap();
        let o = a.to_options().unwrap();
        assert_eq!(o.image, "null:1G");
        assert_eq!(o.socket, Path::new("/tmp/vstor-blk.sock"));
        assert_eq!(o.blk.num_queues, 1);
        assert_eq!(o.blk.queue_size, 256);
        assert_eq!(o.open.cache, CacheMode::Writeback);
        assert_eq!(o.open.engine, EngineKind::Auto);
        assert_eq!(o.open.format, None);
        assert!(!o.open.read_only);
        assert_eq!(o.blk.serial, BlkOptions::default().serial);
    }

    #[test]
    fn every_option() {
        let a = parse(&[
            "blk",
            "--image",
            "disk.img",
            "--format",
            "raw",
            "--socket",
            "/run/x.sock",
            "--queues",
            "4",
            "--queue-size",
            "128",
            "--read-only",
            "--cache",
            "none",
            "--aio",
            "threads",
            "--serial",
            "SN1",
            "--l2-cache-size",
            "4m",
            "--refcount-cache-size",
            "256K",
        ])
        .unwrap();
        let o = a.to_options().unwrap();
        assert_eq!(o.open.format.as_deref(), Some("raw"));
        assert_eq!(o.socket, Path::new("/run/x.sock"));
        assert_eq!((o.blk.num_queues, o.blk.queue_size), (4, 128));
        assert!(o.open.read_only && o.blk.read_only);
        assert_eq!(o.open.cache, CacheMode::None);
        assert_eq!(o.open.engine, EngineKind::Threads);
        assert_eq!(o.blk.serial, "SN1");
        assert_eq!(o.open.l2_cache_bytes, Some(4 << 20));
        assert_eq!(o.open.refcount_cache_bytes, Some(256 << 10));
    }

    #[test]
    fn refuses_other_formats_and_bad_values() {
        let a = parse(&["blk", "--image", "x.vmdk", "--format", "vmdk"]).unwrap();
        let err = a.to_options().unwrap_err();
        assert!(err.contains("vmdk"), "{err}");
        let q = parse(&["blk", "--image", "x.qcow2", "--format", "qcow2"]).unwrap();
        assert_eq!(
            q.to_options().unwrap().open.format.as_deref(),
            Some("qcow2")
        );
        assert!(parse(&["blk", "--cache", "sometimes"]).is_err());
        assert!(parse(&["blk", "--aio", "posix"]).is_err());
        assert!(parse(&["blk", "--queues", "-1"]).is_err());
    }

    #[test]
    fn default_disk_is_sparse_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEFAULT_DISK_NAME);
        ensure_default_disk(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), DEFAULT_DISK_SIZE);
        assert!(std::os::unix::fs::MetadataExt::blocks(&meta) < 1024);
        std::fs::write(&path, b"kept").unwrap();
        ensure_default_disk(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"kept");
    }

    #[test]
    fn qemu_hint_names_socket_and_queues() {
        let s = qemu_args(Path::new("/tmp/s.sock"), 3);
        assert!(s.contains("path=/tmp/s.sock"));
        assert!(s.contains("num-queues=3"));
        assert!(s.contains("share=on"));
    }
}
