//! `ScsiServer` without a frontend: units from options, the control socket's requests and
//! their effect on the device (units attached and detached, capacity changed), errors that
//! name what is wrong, and a clean stop.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use serde_json::Value;
use vstor_virtio_scsi::{LunAddr, ScsiOptions};

use crate::scsi_server::{ScsiServer, ServeScsiOptions};

fn request(stream: &mut UnixStream, reader: &mut BufReader<UnixStream>, line: &str) -> Value {
    writeln!(stream, "{line}").unwrap();
    let mut reply = String::new();
    reader.read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap()
}

#[test]
fn control_socket_adds_resizes_and_removes_units() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("d0.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let control = dir.path().join("ctl.sock");
    let opts = ServeScsiOptions {
        socket: dir.path().join("vs.sock"),
        control: Some(control.clone()),
        luns: vec![
            format!("image={},format=raw,serial=d0", raw.display())
                .parse()
                .unwrap(),
            "image=memory:4M,lun=7".parse().unwrap(),
        ],
        open: Default::default(),
        scsi: ScsiOptions::default(),
    };
    let server = ScsiServer::bind(opts).unwrap();
    let units = server.units().clone();
    let shared = units.shared().clone();
    assert_eq!(
        shared.units(),
        vec![LunAddr { target: 0, lun: 0 }, LunAddr { target: 0, lun: 7 }]
    );
    let stop = server.stop_handle();
    let t = std::thread::spawn(move || server.run());
    let mut s = UnixStream::connect(&control).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());

    let v = request(
        &mut s,
        &mut r,
        r#"{"cmd":"add","target":3,"image":"memory:1M","serial":"hot"}"#,
    );
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        (v["target"].as_u64(), v["lun"].as_u64()),
        (Some(3), Some(0))
    );
    assert!(shared.unit(LunAddr { target: 3, lun: 0 }).is_some());

    let v = request(
        &mut s,
        &mut r,
        r#"{"cmd":"resize","target":0,"lun":0,"size":16777216}"#,
    );
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 16 << 20);
    let unit = shared.unit(LunAddr { target: 0, lun: 0 }).unwrap();
    assert_eq!(unit.blocks(), (16 << 20) / 512);

    let v = request(&mut s, &mut r, r#"{"cmd":"list"}"#);
    let luns = v["luns"].as_array().unwrap();
    assert_eq!(luns.len(), 3);
    assert_eq!(luns[0]["size"].as_u64(), Some(16 << 20));

    // A CD-ROM: eject and load through the socket.
    let v = request(
        &mut s,
        &mut r,
        r#"{"cmd":"add","target":1,"lun":2,"image":"memory:2M","type":"cd"}"#,
    );
    assert_eq!(v["ok"], true, "{v}");
    let cd = shared.unit(LunAddr { target: 1, lun: 2 }).unwrap();
    assert_eq!(cd.blocks(), (2 << 20) / 2048);
    let v = request(&mut s, &mut r, r#"{"cmd":"eject","target":1,"lun":2}"#);
    assert_eq!(v["ok"], true, "{v}");
    assert!(cd.medium().is_none());
    let v = request(
        &mut s,
        &mut r,
        r#"{"cmd":"load","target":1,"lun":2,"image":"memory:4M"}"#,
    );
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(cd.blocks(), (4 << 20) / 2048);
    let v = request(
        &mut s,
        &mut r,
        r#"{"cmd":"resize","target":1,"lun":2,"size":8388608}"#,
    );
    assert_eq!(v["ok"], false, "{v}");
    let v = request(&mut s, &mut r, r#"{"cmd":"remove","target":1,"lun":2}"#);
    assert_eq!(v["ok"], true, "{v}");

    let v = request(&mut s, &mut r, r#"{"cmd":"remove","target":3,"lun":0}"#);
    assert_eq!(v["ok"], true, "{v}");
    assert!(shared.unit(LunAddr { target: 3, lun: 0 }).is_none());

    // Errors name what is wrong; the connection stays usable.
    for (req, needle) in [
        (r#"{"cmd":"remove","target":3,"lun":0}"#, "target 3 LUN 0"),
        (
            r#"{"cmd":"add","target":0,"lun":7,"image":"memory:1M"}"#,
            "already attached",
        ),
        (
            r#"{"cmd":"add","image":"/nonexistent/x.img","format":"raw"}"#,
            "/nonexistent/x.img",
        ),
        (
            r#"{"cmd":"add","image":"memory:1M","colour":"red"}"#,
            "unknown field `colour`",
        ),
        (
            r#"{"cmd":"resize","target":0,"lun":7,"size":4096}"#,
            "raw disk image",
        ),
        (
            r#"{"cmd":"resize","target":0,"lun":0,"size":1000}"#,
            "multiple of 512",
        ),
        (r#"{"cmd":"eject","target":0,"lun":0}"#, "only CD units"),
        (r#"{"cmd":"fly"}"#, "unknown cmd \"fly\""),
        (r#"[1,2]"#, "JSON object"),
        ("not json", "not a JSON request"),
    ] {
        let v = request(&mut s, &mut r, req);
        assert_eq!(v["ok"], false, "{req}: {v}");
        let e = v["error"].as_str().unwrap();
        assert!(e.contains(needle), "{req}: {e}");
    }
    drop((s, r));
    stop.stop();
    t.join().unwrap().unwrap();
    assert!(!control.exists(), "control socket removed");
    drop(Arc::try_unwrap(units).ok());
}

#[test]
fn bad_units_fail_bind_with_the_image_named() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ServeScsiOptions {
        socket: dir.path().join("vs.sock"),
        control: None,
        luns: vec!["image=/nonexistent/y.raw,format=raw".parse().unwrap()],
        open: Default::default(),
        scsi: ScsiOptions::default(),
    };
    let e = ScsiServer::bind(opts).err().unwrap().to_string();
    assert!(e.contains("/nonexistent/y.raw"), "{e}");
}
