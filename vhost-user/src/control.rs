//! The control socket of `vstor serve scsi`: a Unix stream socket taking one JSON request per
//! line and answering one JSON line each, to add, remove, resize, eject and load logical units
//! while a guest runs:
//!
//! ```text
//! {"cmd":"add","target":0,"lun":3,"image":"/img/d3.raw","format":"raw","serial":"d3"}
//! {"cmd":"remove","target":0,"lun":3}
//! {"cmd":"resize","target":0,"lun":0,"size":134217728}
//! {"cmd":"eject","target":0,"lun":2}      {"cmd":"load","target":0,"lun":2,"image":"/x.iso"}
//! {"cmd":"list"}
//! ```
//! Replies are `{"ok":true,...}` or `{"ok":false,"error":"..."}` naming what was wrong.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::scsi_luns::LunConfig;
use crate::scsi_server::Units;
use crate::shutdown::StopHandle;

/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;

/// Binds the control socket at `path` (a stale socket is replaced).
pub(crate) fn bind(path: &Path) -> Result<UnixListener> {
    crate::accept::prepare_socket_path(path)?;
    let l = UnixListener::bind(path).map_err(|e| Error::socket(path, e))?;
    l.set_nonblocking(true)
        .map_err(|e| Error::socket(path, e))?;
    Ok(l)
}

/// Serves control connections, one at a time, until `stop`.
pub(crate) fn serve(listener: UnixListener, path: PathBuf, units: Arc<Units>, stop: StopHandle) {
    while !stop.is_stopping() {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = connection(stream, &units, &stop) {
                    log::warn!("control socket {}: {e}", path.display());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                stop.wait(Duration::from_millis(50));
            }
            Err(e) => {
                log::error!("control socket {}: {e}", path.display());
                break;
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

fn connection(stream: UnixStream, units: &Units, stop: &StopHandle) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        if stop.is_stopping() {
            return Ok(());
        }
        let room = (MAX_LINE + 1).saturating_sub(line.len()) as u64;
        match (&mut reader).take(room).read_until(b'\n', &mut line) {
            Ok(0) if line.is_empty() => return Ok(()),
            Ok(_) if line.ends_with(b"\n") || line.len() > MAX_LINE => {}
            Ok(0) => {} // EOF after a last line without newline
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        }
        let reply = if line.len() > MAX_LINE {
            json!({"ok": false, "error": format!("request longer than {MAX_LINE} bytes")})
        } else {
            handle(units, &line)
        };
        let eof = !line.ends_with(b"\n");
        line.clear();
        writeln!(out, "{reply}")?;
        if eof {
            return Ok(());
        }
    }
}

fn field_u32(req: &Value, name: &str) -> std::result::Result<u32, String> {
    req.get(name)
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| format!("\"{name}\" must be a number"))
}

/// Runs one request line; returns the reply.
pub(crate) fn handle(units: &Units, line: &[u8]) -> Value {
    let r = (|| -> std::result::Result<Value, String> {
        let mut req: Value =
            serde_json::from_slice(line).map_err(|e| format!("not a JSON request: {e}"))?;
        let obj = req.as_object_mut().ok_or("a request is a JSON object")?;
        let cmd = obj
            .remove("cmd")
            .and_then(|c| c.as_str().map(str::to_string))
            .ok_or("\"cmd\" is missing")?;
        match cmd.as_str() {
            "add" => {
                let cfg: LunConfig =
                    serde_json::from_value(req).map_err(|e| format!("add: {e}"))?;
                let (t, l) = units.add(cfg).map_err(|e| e.to_string())?;
                Ok(json!({"ok": true, "target": t, "lun": l}))
            }
            "remove" => {
                units
                    .remove(field_u32(&req, "target")?, field_u32(&req, "lun")?)
                    .map_err(|e| e.to_string())?;
                Ok(json!({"ok": true}))
            }
            "resize" => {
                let size = req
                    .get("size")
                    .and_then(Value::as_u64)
                    .ok_or("\"size\" must be a number of bytes")?;
                units
                    .resize(field_u32(&req, "target")?, field_u32(&req, "lun")?, size)
                    .map_err(|e| e.to_string())?;
                Ok(json!({"ok": true}))
            }
            "eject" => {
                units
                    .change_medium(field_u32(&req, "target")?, field_u32(&req, "lun")?, None)
                    .map_err(|e| e.to_string())?;
                Ok(json!({"ok": true}))
            }
            "load" => {
                let image = req
                    .get("image")
                    .and_then(Value::as_str)
                    .ok_or("\"image\" must be a path")?;
                units
                    .change_medium(
                        field_u32(&req, "target")?,
                        field_u32(&req, "lun")?,
                        Some(image),
                    )
                    .map_err(|e| e.to_string())?;
                Ok(json!({"ok": true}))
            }
            "list" => Ok(json!({"ok": true, "luns": units.list()})),
            other => Err(format!(
                "unknown cmd {other:?} (add, remove, resize, eject, load, list)"
            )),
        }
    })();
    r.unwrap_or_else(|e| json!({"ok": false, "error": e}))
}
