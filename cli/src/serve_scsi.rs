//! `vstor serve scsi`: logical units behind one vhost-user-scsi device.
//!
//! ```text
//! vstor serve scsi [--socket PATH] [--control PATH] [--queues N] [--queue-size N]
//!                  [--cache MODE] [--aio ENGINE] --lun SPEC [--lun SPEC]...
//! SPEC: image=PATH[,target=T][,lun=L][,format=raw|qcow2][,type=disk|cd][,serial=S]
//!       [,wwn=0xN][,readonly=on]
//! ```

use std::path::{Path, PathBuf};

use clap::Args;
use vstor_blockdev::open::OpenOptions;
use vstor_blockdev::{CacheMode, EngineKind};
use vstor_vhost_user::{LunConfig, ScsiServer, ServeScsiOptions};
use vstor_virtio_scsi::ScsiOptions;

/// Options of `vstor serve scsi`.
#[derive(Args, Debug)]
pub struct ScsiArgs {
    /// A logical unit: `image=PATH[,target=T][,lun=L][,format=raw|qcow2][,type=disk|cd]
    /// [,serial=S][,wwn=0xN][,readonly=on]` (repeat for more units; without any, one 1 GiB
    /// sparse raw disk in $XDG_RUNTIME_DIR or /tmp is served as target 0 LUN 0).
    #[arg(long = "lun", value_name = "SPEC", value_parser = parse_lun)]
    pub luns: Vec<LunConfig>,
    /// Unix socket to listen on.
    #[arg(long, value_name = "PATH", default_value = "/tmp/vstor-scsi.sock")]
    pub socket: PathBuf,
    /// Control socket (JSON lines: add, remove, resize, eject, load, list).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Number of request queues (one worker thread each).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub queues: u16,
    /// Maximum size of each queue (a power of two).
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub queue_size: u16,
    /// Host cache mode: none, writeback, writethrough, directsync or unsafe.
    #[arg(long, value_name = "MODE", default_value = "writeback", value_parser = crate::serve::parse_cache)]
    pub cache: CacheMode,
    /// I/O engine for files: auto, io_uring or threads.
    #[arg(long, value_name = "ENGINE", default_value = "auto", value_parser = crate::serve::parse_engine)]
    pub aio: EngineKind,
}

fn parse_lun(s: &str) -> Result<LunConfig, String> {
    s.parse()
        .map_err(|e: vstor_vhost_user::Error| e.to_string())
}

/// Runs `vstor serve scsi`.
pub fn serve_scsi(args: ScsiArgs) -> Result<(), String> {
    let mut luns = args.luns;
    if luns.is_empty() {
        let path = crate::serve::default_disk_path();
        crate::serve::ensure_default_disk(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!(
            "no --lun given: serving {} (1 GiB sparse raw file) as target 0 LUN 0",
            path.display()
        );
        luns.push(
            format!("image={},format=raw", path.display())
                .parse()
                .map_err(|e: vstor_vhost_user::Error| e.to_string())?,
        );
    }
    let opts = ServeScsiOptions {
        socket: args.socket,
        control: args.control,
        luns,
        open: OpenOptions {
            cache: args.cache,
            engine: args.aio,
            ..OpenOptions::default()
        },
        scsi: ScsiOptions {
            num_queues: args.queues,
            queue_size: args.queue_size,
            ..ScsiOptions::default()
        },
    };
    let queues = opts.scsi.num_queues;
    let server = ScsiServer::bind(opts).map_err(|e| e.to_string())?;
    server.stop_on_signals().map_err(|e| e.to_string())?;
    let socket = server.socket_path().to_path_buf();
    eprintln!("attach with QEMU:\n  {}", qemu_args(&socket, queues));
    eprintln!("listening on {}", socket.display());
    server.run().map_err(|e| e.to_string())
}

/// The QEMU arguments that attach the device.
fn qemu_args(socket: &Path, queues: u16) -> String {
    format!(
        "-object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \
         -chardev socket,id=vscsi,path={} -device vhost-user-scsi-pci,chardev=vscsi,num_queues={queues}",
        socket.display()
    )
}
