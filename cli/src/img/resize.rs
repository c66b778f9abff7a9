//! `vstor img resize`: raw files by truncation, qcow2 through `vstor_blockdev::qcow2::resize`.

use clap::Args;
use vstor_blockdev::image::FileImage;
use vstor_blockdev::qcow2::header::Header;
use vstor_blockdev::OpenOptions;

use super::{fail, image_format, open_failure, parse_size, CmdResult, PathArg};

/// Arguments of `vstor img resize`.
#[derive(Args, Debug)]
pub struct ResizeArgs {
    /// Image format (probed when absent).
    #[arg(short = 'f')]
    fmt: Option<String>,
    /// Allow making the image smaller (data past the new end is lost).
    #[arg(long)]
    shrink: bool,
    /// Quiet.
    #[arg(short = 'q')]
    quiet: bool,
    /// The image.
    filename: PathArg,
    /// New size, or +SIZE / -SIZE relative to the current one.
    #[arg(allow_hyphen_values = true)]
    size: String,
}

/// Runs `vstor img resize`.
pub fn run(a: ResizeArgs) -> CmdResult {
    let path = &a.filename;
    let fmt = image_format(path, a.fmt.as_deref())?;
    let current = match fmt {
        "qcow2" => {
            let ro = OpenOptions {
                read_only: true,
                ..Default::default()
            };
            let file =
                FileImage::open(path, &ro).map_err(|e| open_failure(path, &e.to_string()))?;
            Header::read(&file)
                .map_err(|e| open_failure(path, &e.to_string()))?
                .size
        }
        _ => std::fs::metadata(path)
            .map_err(|e| open_failure(path, &e.to_string()))?
            .len(),
    };
    let bad = || fail("Invalid image size specified.");
    let new = if let Some(d) = a.size.strip_prefix('+') {
        current
            .checked_add(parse_size(d).map_err(|_| bad())?)
            .ok_or_else(bad)?
    } else if let Some(d) = a.size.strip_prefix('-') {
        current
            .checked_sub(parse_size(d).map_err(|_| bad())?)
            .ok_or_else(bad)?
    } else {
        parse_size(&a.size).map_err(|_| bad())?
    };
    if new < current && !a.shrink {
        return Err(fail(
            "Use the --shrink option to perform a shrink operation.\nvstor img: warning: Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.",
        ));
    }
    match fmt {
        "qcow2" => {
            vstor_blockdev::qcow2::resize::resize(path, new, a.shrink)
                .map_err(|e| fail(format!("{}: {e}", path.display())))?;
        }
        _ => {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| open_failure(path, &e.to_string()))?;
            f.set_len(new)
                .and_then(|_| f.sync_all())
                .map_err(|e| fail(format!("{}: {e}", path.display())))?;
        }
    }
    if !a.quiet {
        println!("Image resized.");
    }
    Ok(0)
}
