//! Server tests that need no frontend library: socket handling, option checks, stopping, and
//! frontends that break the protocol.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread;
use std::time::Duration;

use crate::{BlkServer, Error, ServeBlkOptions, MAX_QUEUES};

fn opts(dir: &tempfile::TempDir) -> ServeBlkOptions {
    ServeBlkOptions::new(dir.path().join("blk.sock"), "memory:1M")
}

#[test]
fn bind_creates_the_socket_and_run_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(&dir);
    let sock = o.socket.clone();
    let server = BlkServer::bind(o).unwrap();
    assert!(sock.exists());
    assert_eq!(server.socket_path(), sock);
    assert_eq!(server.device().info().size, 1 << 20);
    let stop = server.stop_handle();
    let t = thread::spawn(move || server.run());
    thread::sleep(Duration::from_millis(50));
    stop.stop();
    t.join().unwrap().unwrap();
    assert!(stop.wait(Duration::from_secs(1)));
    assert!(!sock.exists());
}

#[test]
fn stop_before_run_returns_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = BlkServer::bind(opts(&dir)).unwrap();
    server.stop_handle().stop();
    server.run().unwrap();
}

#[test]
fn refuses_a_path_that_is_not_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(&dir);
    std::fs::write(&o.socket, b"precious").unwrap();
    let err = BlkServer::bind(o.clone()).err().unwrap();
    assert!(matches!(err, Error::Socket { .. }), "{err}");
    assert_eq!(std::fs::read(&o.socket).unwrap(), b"precious");
}

#[test]
fn refuses_a_live_socket_and_replaces_a_stale_one() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(&dir);
    let live = UnixListener::bind(&o.socket).unwrap();
    let err = BlkServer::bind(o.clone()).err().unwrap();
    assert!(err.to_string().contains("another server"), "{err}");
    drop(live); // the file stays: a stale socket
    assert!(o.socket.exists());
    let server = BlkServer::bind(o).unwrap();
    server.stop_handle().stop();
    server.run().unwrap();
}

#[test]
fn checks_options_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(&dir);
    o.blk.num_queues = MAX_QUEUES + 1;
    assert!(matches!(
        BlkServer::bind(o.clone()),
        Err(Error::InvalidOption { name: "queues", .. })
    ));
    o.blk.num_queues = 1;
    o.blk.queue_size = 100;
    assert!(matches!(BlkServer::bind(o.clone()), Err(Error::Device(_))));
    o.blk.queue_size = 256;
    o.image = "null:nonsense".into();
    let err = BlkServer::bind(o.clone()).err().unwrap();
    assert!(matches!(err, Error::Open { .. }), "{err}");
    assert!(!o.socket.exists());
}

#[test]
fn survives_frontends_that_break_the_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(&dir);
    let sock = o.socket.clone();
    let server = BlkServer::bind(o).unwrap();
    let stop = server.stop_handle();
    let t = thread::spawn(move || server.run());

    // Garbage instead of a message header, a truncated header, and a silent hang-up.
    let garbage: [&[u8]; 3] = [&[0xff; 64], &[1, 0, 0], &[]];
    for bytes in garbage {
        let mut s = UnixStream::connect(&sock).unwrap();
        let _ = s.write_all(bytes);
        drop(s);
    }
    // A well-formed GET_FEATURES (request 1, version 1) still gets an answer afterwards.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hdr = [0u8; 12];
    hdr[0..4].copy_from_slice(&1u32.to_le_bytes());
    hdr[4..8].copy_from_slice(&1u32.to_le_bytes());
    s.write_all(&hdr).unwrap();
    let mut reply = [0u8; 20];
    std::io::Read::read_exact(&mut s, &mut reply).unwrap();
    let features = u64::from_le_bytes(reply[12..20].try_into().unwrap());
    assert_ne!(
        features & vstor_virtio_core::features::VHOST_USER_PROTOCOL_FEATURES,
        0
    );
    assert_ne!(features & vstor_virtio_core::features::VERSION_1, 0);
    drop(s);

    stop.stop();
    t.join().unwrap().unwrap();
}
