//! Logical units of `vstor serve scsi`: the `--lun` specification
//! (`target=T,lun=L,image=PATH,format=F,type=disk|cd,serial=S,wwn=0xN,readonly=on`), and
//! opening one into a [`LogicalUnit`] (persistent reservations kept in `IMAGE.pr`).

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use vstor_blockdev::open::{open, OpenOptions};
use vstor_scsi_disk::{LogicalUnit, LunKind, LunOptions};

use crate::error::{Error, Result};

/// One logical unit to serve.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LunConfig {
    /// Target (0..=255).
    #[serde(default)]
    pub target: u32,
    /// LUN (0..16384); `None`: the lowest free LUN of the target.
    #[serde(default)]
    pub lun: Option<u32>,
    /// The image: a path, `memory:SIZE` or `null:SIZE`.
    pub image: String,
    /// Image format (`raw`, `qcow2`); `None` probes.
    #[serde(default)]
    pub format: Option<String>,
    /// `disk` or `cd`.
    #[serde(default, rename = "type")]
    pub kind: UnitType,
    /// Unit serial number (VPD page 80h); default `vstor-T-L`.
    #[serde(default)]
    pub serial: Option<String>,
    /// NAA identifier (VPD page 83h); default derived from the serial.
    #[serde(default)]
    pub wwn: Option<u64>,
    /// Refuse writes.
    #[serde(default)]
    pub readonly: bool,
}

/// The kind of a unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitType {
    /// A disk (SBC).
    #[default]
    Disk,
    /// A read-only CD/DVD-ROM (MMC).
    Cd,
}

fn bad(spec: &str, reason: impl Into<String>) -> Error {
    Error::InvalidOption {
        name: "lun",
        value: spec.to_string(),
        reason: reason.into(),
    }
}

fn parse_bool(spec: &str, key: &str, v: &str) -> Result<bool> {
    match v {
        "on" | "yes" | "true" | "1" => Ok(true),
        "off" | "no" | "false" | "0" => Ok(false),
        _ => Err(bad(spec, format!("{key}={v}: expected on or off"))),
    }
}

fn parse_u64(v: &str) -> Option<u64> {
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

impl FromStr for LunConfig {
    type Err = Error;

    fn from_str(spec: &str) -> Result<LunConfig> {
        let mut c = LunConfig {
            target: 0,
            lun: None,
            image: String::new(),
            format: None,
            kind: UnitType::Disk,
            serial: None,
            wwn: None,
            readonly: false,
        };
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad(spec, format!("{part:?} is not key=value")))?;
            let num = |what: &str| {
                parse_u64(v)
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| bad(spec, format!("{what}={v} is not a number")))
            };
            match k {
                "target" => c.target = num("target")?,
                "lun" => c.lun = Some(num("lun")?),
                "image" | "file" => c.image = v.to_string(),
                "format" => c.format = Some(v.to_string()),
                "type" => {
                    c.kind = match v {
                        "disk" | "hd" => UnitType::Disk,
                        "cd" | "cdrom" => UnitType::Cd,
                        _ => return Err(bad(spec, format!("type={v}: expected disk or cd"))),
                    }
                }
                "serial" => c.serial = Some(v.to_string()),
                "wwn" => {
                    c.wwn = Some(
                        parse_u64(v)
                            .ok_or_else(|| bad(spec, format!("wwn={v} is not a number")))?,
                    )
                }
                "readonly" | "ro" => c.readonly = parse_bool(spec, k, v)?,
                _ => return Err(bad(spec, format!("unknown key {k:?}"))),
            }
        }
        if c.image.is_empty() {
            return Err(bad(spec, "image=PATH is required"));
        }
        Ok(c)
    }
}

impl LunConfig {
    /// Opens the image and builds the unit at `lun` (the LUN the caller settled on).
    pub fn open(&self, lun: u32, defaults: &OpenOptions) -> Result<Arc<LogicalUnit>> {
        let mut o = defaults.clone();
        o.read_only |= self.readonly || self.kind == UnitType::Cd;
        if self.format.is_some() {
            o.format = self.format.clone();
        }
        let dev = open(&self.image, &o).map_err(|source| Error::Open {
            name: self.image.clone(),
            source,
        })?;
        let serial = self
            .serial
            .clone()
            .unwrap_or_else(|| format!("vstor-{}-{lun}", self.target));
        if serial.is_empty() || serial.len() > 64 || !serial.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                &self.image,
                format!("serial {serial:?}: 1 to 64 printable ASCII characters"),
            ));
        }
        let file_backed = !self.image.contains(':') || std::path::Path::new(&self.image).exists();
        let opts = LunOptions {
            serial,
            wwn: self.wwn.unwrap_or(0),
            read_only: o.read_only,
            pr_file: (file_backed && self.kind == UnitType::Disk)
                .then(|| PathBuf::from(format!("{}.pr", self.image))),
            kind: match self.kind {
                UnitType::Disk => LunKind::Disk,
                UnitType::Cd => LunKind::Cdrom,
            },
            product: match self.kind {
                UnitType::Disk => "VSTOR DISK".into(),
                UnitType::Cd => "VSTOR CD-ROM".into(),
            },
            ..Default::default()
        };
        let unit = match self.kind {
            UnitType::Disk => {
                LogicalUnit::try_new(dev, opts).map_err(|e| bad(&self.image, e.to_string()))?
            }
            UnitType::Cd => LogicalUnit::new_cdrom(Some(dev), opts),
        };
        Ok(Arc::new(unit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_clear_errors() {
        let c: LunConfig =
            "target=2,lun=300,image=/x.img,format=qcow2,type=cd,serial=abc,wwn=0x5000,readonly=on"
                .parse()
                .unwrap();
        assert_eq!(
            (c.target, c.lun, c.kind, c.wwn, c.readonly),
            (2, Some(300), UnitType::Cd, Some(0x5000), true)
        );
        let c: LunConfig = "image=memory:1M".parse().unwrap();
        assert_eq!((c.target, c.lun), (0, None));
        for (spec, needle) in [
            ("target=1", "image=PATH is required"),
            ("image=x,bogus=1", "unknown key \"bogus\""),
            ("image=x,lun=abc", "lun=abc is not a number"),
            ("image=x,type=tape", "expected disk or cd"),
            ("image=x,readonly=maybe", "expected on or off"),
            ("image=x,junk", "is not key=value"),
        ] {
            let e = spec.parse::<LunConfig>().unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }
}
