//! `vstor`: serve virtio devices over vhost-user, benchmark them, and work on disk images
//! (`vstor img`, like qemu-img).
//!
//! ```text
//! vstor serve blk [--image PATH] [--socket PATH] [--queues N] ...
//! vstor bench --socket PATH [--rw randread] [--bs 4k] [--iodepth 32] ...
//! ```

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod img;
mod serve;
mod serve_scsi;

/// vstor: a hypervisor's storage device stack.
#[derive(Parser, Debug)]
#[command(name = "vstor", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve a device to a VMM over vhost-user.
    #[command(subcommand)]
    Serve(serve::ServeCommand),
    /// Drive a vhost-user-blk socket with libblkio and report IOPS, bandwidth and latency.
    Bench(bench::BenchArgs),
    /// Work on disk images (like qemu-img).
    #[command(subcommand)]
    Img(img::ImgCommand),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(cmd) => serve::run(cmd),
        Command::Bench(args) => bench::run(args),
        Command::Img(cmd) => return img::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vstor: {e}");
            ExitCode::FAILURE
        }
    }
}
