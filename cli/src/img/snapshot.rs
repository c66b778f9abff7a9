//! `vstor img snapshot`: list, create, apply and delete internal qcow2 snapshots through
//! `vstor_blockdev::qcow2::snapshot`, with qemu-img's table format.

use clap::Args;
use vstor_blockdev::image::{FileImage, ImageFile};
use vstor_blockdev::qcow2::snapshot as qsnap;
use vstor_blockdev::OpenOptions;

use super::json::Obj;
use super::{fail, image_format, open_failure, size_to_str, CmdResult, PathArg};

/// Arguments of `vstor img snapshot`.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("action").required(true)))]
pub struct SnapshotArgs {
    /// List snapshots.
    #[arg(short = 'l', group = "action")]
    list: bool,
    /// Create a snapshot.
    #[arg(short = 'c', group = "action", value_name = "NAME")]
    create: Option<String>,
    /// Revert the image to a snapshot.
    #[arg(short = 'a', group = "action", value_name = "NAME")]
    apply: Option<String>,
    /// Delete a snapshot.
    #[arg(short = 'd', group = "action", value_name = "NAME")]
    delete: Option<String>,
    /// Image format (must be qcow2).
    #[arg(short = 'f')]
    fmt: Option<String>,
    /// Quiet.
    #[arg(short = 'q')]
    quiet: bool,
    /// Ignored (vstor never locks images).
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    /// The image.
    filename: PathArg,
}

/// One snapshot as qemu-img shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapInfo {
    /// Unique id ("1", "2", ...).
    pub id: String,
    /// Name (tag).
    pub name: String,
    /// Saved VM state bytes.
    pub vm_state_size: u64,
    /// Creation time, seconds since the epoch.
    pub date_sec: u64,
    /// Creation time, nanoseconds.
    pub date_nsec: u64,
    /// Guest clock at creation, nanoseconds.
    pub vm_clock_nsec: u64,
    /// Instruction count, if recorded.
    pub icount: Option<u64>,
}

impl SnapInfo {
    /// The QAPI `SnapshotInfo` object.
    pub fn to_json(&self) -> Obj {
        let mut o = Obj::new();
        o.set("id", self.id.as_str());
        o.set("name", self.name.as_str());
        o.set("vm-state-size", self.vm_state_size);
        o.set("date-sec", self.date_sec);
        o.set("date-nsec", self.date_nsec);
        o.set("vm-clock-sec", self.vm_clock_nsec / 1_000_000_000);
        o.set("vm-clock-nsec", self.vm_clock_nsec % 1_000_000_000);
        if let Some(i) = self.icount {
            o.set("icount", i);
        }
        o
    }
}

/// The snapshots of a qcow2 image file.
pub fn list(file: &dyn ImageFile) -> Result<Vec<SnapInfo>, String> {
    let table = qsnap::list(file).map_err(|e| e.to_string())?;
    Ok(table
        .iter()
        .map(|s| SnapInfo {
            id: s.id.clone(),
            name: s.name.clone(),
            vm_state_size: s.vm_state_size,
            date_sec: u64::from(s.date_sec),
            date_nsec: u64::from(s.date_nsec),
            vm_clock_nsec: s.vm_clock_nsec,
            icount: s.icount,
        })
        .collect())
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// "YYYY-MM-DD HH:MM:SS" (UTC: vstor has no safe localtime; qemu-img prints local time, which
/// is the same on hosts running in UTC).
fn date(sec: u64) -> String {
    let days = (sec / 86400) as i64;
    let s = sec % 86400;
    let (y, m, d) = civil(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// qemu's snapshot table (header line and one line per snapshot, each ending in a newline).
pub fn table(snaps: &[SnapInfo]) -> String {
    let mut s = format!(
        "{:<10}{:<17}{:>8}{:>20}{:>13}{:>11}\n",
        "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT"
    );
    for sn in snaps {
        let secs = sn.vm_clock_nsec / 1_000_000_000;
        let clock = format!(
            "{:02}:{:02}:{:02}.{:03}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            (sn.vm_clock_nsec % 1_000_000_000) / 1_000_000
        );
        let icount = sn.icount.map(|i| i.to_string()).unwrap_or_default();
        s += &format!(
            "{:<9} {:<16} {:>8}{:>20}{:>13}{:>11}\n",
            sn.id,
            sn.name,
            size_to_str(sn.vm_state_size),
            date(sn.date_sec),
            clock,
            icount
        );
    }
    s
}

/// Runs `vstor img snapshot`.
pub fn run(a: SnapshotArgs) -> CmdResult {
    let _ = a.force_share;
    let path = &a.filename;
    let fmt = image_format(path, a.fmt.as_deref())?;
    if fmt != "qcow2" {
        return Err(fail(format!(
            "Could not {} snapshot: {}: the {fmt} format has no internal snapshots",
            if a.list { "list" } else { "change" },
            path.display()
        )));
    }
    let opts = OpenOptions {
        read_only: a.list,
        ..Default::default()
    };
    let file = FileImage::open(path, &opts).map_err(|e| open_failure(path, &e.to_string()))?;
    if a.list {
        let snaps = list(&file).map_err(|e| open_failure(path, &e))?;
        if !a.quiet && !snaps.is_empty() {
            print!("Snapshot list:\n{}", table(&snaps));
        }
        return Ok(0);
    }
    if let Some(name) = &a.create {
        qsnap::create(&file, name)
            .map_err(|e| fail(format!("Could not create snapshot '{name}': {e}")))?;
    } else if let Some(name) = &a.apply {
        qsnap::apply(&file, name)
            .map_err(|e| fail(format!("Could not apply snapshot '{name}': {e}")))?;
    } else if let Some(name) = &a.delete {
        qsnap::delete(&file, name)
            .map_err(|e| fail(format!("Could not delete snapshot '{name}': {e}")))?;
    }
    file.flush()
        .map_err(|e| fail(format!("{}: {e}", path.display())))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(date(0), "1970-01-01 00:00:00");
        assert_eq!(date(1_796_197_081), "2026-12-02 07:38:01");
        assert_eq!(date(951_782_400), "2000-02-29 00:00:00");
    }

    #[test]
    fn table_matches_qemu() {
        let s = SnapInfo {
            id: "1".into(),
            name: "snap1".into(),
            vm_state_size: 0,
            date_sec: 1_796_197_081,
            date_nsec: 0,
            vm_clock_nsec: 0,
            icount: Some(0),
        };
        assert_eq!(
            table(&[s]),
            "ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT\n\
             1         snap1                 0 B 2026-12-02 07:38:01 00:00:00.000          0\n"
        );
    }
}
