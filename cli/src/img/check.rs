//! `vstor img check`: qcow2 consistency check and repair, with qemu-img's output and exit codes
//! (0 clean, 1 check not completed, 2 corruptions, 3 leaks only, 63 format without checks).

use clap::{Args, ValueEnum};
use vstor_blockdev::image::FileImage;
use vstor_blockdev::qcow2::check::{check, CheckReport, RepairMode};
use vstor_blockdev::OpenOptions;

use super::json::{Obj, Value};
use super::{fail, image_format, open_failure, CmdResult, Failure, OutputFormat, PathArg};

/// Exit status for images whose format has no checks.
pub const EXIT_NO_CHECKS: u8 = 63;

/// What `-r` may repair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Repair {
    /// Only leaked clusters.
    Leaks,
    /// Leaks and corruptions.
    All,
}

/// Arguments of `vstor img check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Image format (probed when absent).
    #[arg(short = 'f')]
    fmt: Option<String>,
    /// Repair leaks, or everything.
    #[arg(short = 'r', value_enum)]
    repair: Option<Repair>,
    /// Output format.
    #[arg(long = "output", value_enum, default_value_t)]
    output: OutputFormat,
    /// Quiet: print nothing, only set the exit status.
    #[arg(short = 'q')]
    quiet: bool,
    /// Ignored (vstor never locks images).
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    /// The image.
    filename: PathArg,
}

/// The QAPI `ImageCheck` object (schema order; zero counters are left out like qemu does).
pub fn to_json(r: &CheckReport, filename: &str, format: &str) -> Obj {
    let mut o = Obj::new();
    o.set("filename", filename);
    o.set("format", format);
    o.set("check-errors", r.check_errors);
    let opt = |o: &mut Obj, k: &str, v: u64| {
        if v != 0 {
            o.set(k, v);
        }
    };
    opt(&mut o, "image-end-offset", r.image_end_offset);
    opt(&mut o, "corruptions", r.corruptions);
    opt(&mut o, "leaks", r.leaks);
    opt(&mut o, "corruptions-fixed", r.corruptions_fixed);
    opt(&mut o, "leaks-fixed", r.leaks_fixed);
    opt(&mut o, "total-clusters", r.total_clusters);
    opt(&mut o, "allocated-clusters", r.allocated_clusters);
    opt(&mut o, "fragmented-clusters", r.fragmented_clusters);
    opt(&mut o, "compressed-clusters", r.compressed_clusters);
    o
}

/// qemu-img's `dump_human_image_check`.
pub fn to_human(r: &CheckReport) -> String {
    let mut s = String::new();
    if r.corruptions == 0 && r.leaks == 0 && r.check_errors == 0 {
        s += "No errors were found on the image.\n";
    } else {
        if r.corruptions != 0 {
            s += &format!(
                "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n",
                r.corruptions
            );
        }
        if r.leaks != 0 {
            s += &format!(
                "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n",
                r.leaks
            );
        }
        if r.check_errors != 0 {
            s += &format!(
                "\n{} internal errors have occurred during the check.\n",
                r.check_errors
            );
        }
    }
    if r.total_clusters != 0 && r.allocated_clusters != 0 {
        let alloc = r.allocated_clusters as f64;
        s += &format!(
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters\n",
            r.allocated_clusters,
            r.total_clusters,
            alloc * 100.0 / r.total_clusters as f64,
            r.fragmented_clusters as f64 * 100.0 / alloc,
            r.compressed_clusters as f64 * 100.0 / alloc
        );
    }
    if r.image_end_offset != 0 {
        s += &format!("Image end offset: {}\n", r.image_end_offset);
    }
    s
}

fn run_check(file: &FileImage, mode: RepairMode) -> Result<CheckReport, Failure> {
    check(file, mode).map_err(|e| fail(format!("Check failed: {e}")))
}

/// Runs `vstor img check`.
pub fn run(a: CheckArgs) -> CmdResult {
    let _ = a.force_share;
    let path = &a.filename;
    let fmt = image_format(path, a.fmt.as_deref())?;
    if fmt != "qcow2" {
        return Err(Failure {
            code: EXIT_NO_CHECKS,
            msg: "This image format does not support checks".into(),
        });
    }
    let opts = OpenOptions {
        read_only: a.repair.is_none(),
        ..Default::default()
    };
    let file = FileImage::open(path, &opts).map_err(|e| open_failure(path, &e.to_string()))?;
    let mode = match a.repair {
        None => RepairMode::None,
        Some(Repair::Leaks) => RepairMode::Leaks,
        Some(Repair::All) => RepairMode::All,
    };
    let mut report = run_check(&file, mode)?;
    for m in &report.messages {
        eprintln!("{m}");
    }
    let mut out = String::new();
    if report.corruptions_fixed != 0 || report.leaks_fixed != 0 {
        if a.output == OutputFormat::Human {
            out += &format!(
                "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...\n",
                report.leaks_fixed, report.corruptions_fixed
            );
        }
        let (lf, cf) = (report.leaks_fixed, report.corruptions_fixed);
        report = run_check(&file, RepairMode::None)?;
        for m in &report.messages {
            eprintln!("{m}");
        }
        report.leaks_fixed = lf;
        report.corruptions_fixed = cf;
    }
    let name = path.to_string_lossy();
    match a.output {
        OutputFormat::Human => out += &to_human(&report),
        OutputFormat::Json => {
            out += &Value::Obj(to_json(&report, &name, fmt)).pretty();
            out.push('\n');
        }
    }
    if !a.quiet {
        print!("{out}");
    }
    if report.check_errors != 0 {
        return Err(fail("Check failed"));
    }
    Ok(if report.corruptions != 0 {
        2
    } else if report.leaks != 0 {
        3
    } else {
        0
    })
}
