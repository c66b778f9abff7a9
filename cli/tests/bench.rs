//! `vstor bench` against a real `vstor serve blk` (or qemu-storage-daemon with
//! `VSTOR_TEST_SERVER=qsd`): a short verified run passes, and verification really checks data.

mod common;

use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Runs `vstor bench` with a bounded wait (it should take about `--seconds`).
fn bench(server: &Server, args: &[&str]) -> Output {
    let mut child = Command::new(vstor_bin())
        .arg("bench")
        .arg("--socket")
        .arg(&server.socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vstor bench");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("bench output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("bench output");
            panic!(
                "vstor bench {args:?} did not finish within 60 s; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "vstor bench failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bench --json output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn bench_verify_passes() {
    let dir = temp_dir();
    let img = raw_image(dir.path(), "disk.raw", 64 * MIB);
    let server = Server::start(dir.path(), &ServerOpts::new(Image::File(img)).queues(2));
    for rw in ["randread", "randrw", "write"] {
        let out = bench(
            &server,
            &[
                "--seconds",
                "1",
                "--verify",
                "--size",
                "16M",
                "--rw",
                rw,
                "--queues",
                "2",
                "--iodepth",
                "8",
                "--json",
            ],
        );
        let v = json(&out);
        assert_eq!(v["rw"], rw);
        assert!(v["iops"].as_f64().unwrap() > 0.0, "{v}");
        assert!(
            v["verified_blocks"].as_u64().unwrap() > 0,
            "{rw}: nothing verified: {v}"
        );
        let lat = &v["lat_us"];
        let (p50, p99, p999) = (
            lat["p50"].as_f64().unwrap(),
            lat["p99"].as_f64().unwrap(),
            lat["p99_9"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= p999, "{v}");
    }
    // Human-readable output names the numbers.
    let out = bench(&server, &["--seconds", "1", "--verify", "--size", "8M"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["iops", "MiB/s", "p50", "p99", "p99.9", "no mismatch"] {
        assert!(text.contains(word), "{word:?} missing from:\n{text}");
    }
    drop(server);
}

#[test]
fn bench_verify_detects_a_device_that_loses_writes() {
    // A null device drops every write, so nothing read back can carry the pattern.
    let dir = temp_dir();
    let server = Server::start(dir.path(), &ServerOpts::new(Image::Null(GIB)));
    let out = bench(
        &server,
        &[
            "--seconds",
            "1",
            "--verify",
            "--size",
            "4M",
            "--iodepth",
            "4",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "verify passed on a null device");
    assert!(
        stderr.contains("verify failed at offset 0x"),
        "error does not name the offset: {stderr}"
    );
}

#[test]
fn bench_reports_errors() {
    let dir = temp_dir();
    let server = Server::start(
        dir.path(),
        &ServerOpts::new(Image::Memory(8 * MIB)).read_only(),
    );
    // Writes to a read-only device fail up front, with a message.
    let out = bench(&server, &["--seconds", "1", "--rw", "randwrite"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("read-only"), "{stderr}");
    // Reads from a read-only device work.
    let v = json(&bench(
        &server,
        &["--seconds", "1", "--json", "--iodepth", "1"],
    ));
    assert!(v["reads"].as_u64().unwrap() > 0);
    // A region larger than the disk is refused.
    let out = bench(&server, &["--seconds", "1", "--size", "1G"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("capacity"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
