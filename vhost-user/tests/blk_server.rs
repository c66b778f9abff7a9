//! A real vhost-user-blk frontend (libblkio's `virtio-blk-vhost-user` driver) against
//! `BlkServer`: multi-queue I/O, reconnection with clean state, no file descriptor leak per
//! connection, and stopping. One test function, so nothing else in this process opens files
//! while descriptors are counted.

use std::mem::MaybeUninit;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};
use vstor_vhost_user::{BlkServer, ServeBlkOptions};

const BLOCK: usize = 4096;

struct Client {
    // Field order: queues before the instance that owns their memory.
    queues: Vec<Blkioq>,
    region: MemoryRegion,
    blkio: Blkio,
}

impl Client {
    fn connect(sock: &Path, num_queues: i32) -> Client {
        let mut blkio = Blkio::new("virtio-blk-vhost-user").unwrap();
        blkio.set_str("path", sock.to_str().unwrap()).unwrap();
        blkio.connect().unwrap();
        blkio.set_i32("num-queues", num_queues).unwrap();
        let queues = blkio.start().unwrap().queues;
        assert_eq!(queues.len(), num_queues as usize);
        let region = blkio.alloc_mem_region(2 * BLOCK).unwrap();
        blkio.map_mem_region(&region).unwrap();
        Client {
            queues,
            region,
            blkio,
        }
    }

    fn buf(&mut self) -> &mut [u8] {
        // SAFETY: the region is 2 * BLOCK bytes of memory mapped by libblkio for this client
        // and only touched here while no request is in flight.
        unsafe { std::slice::from_raw_parts_mut(self.region.addr as *mut u8, 2 * BLOCK) }
    }

    fn complete(&mut self, q: usize) -> i32 {
        let mut done = [MaybeUninit::<Completion>::uninit()];
        let mut timeout = Duration::from_secs(10);
        let n = self.queues[q]
            .do_io(&mut done, 1, Some(&mut timeout), None)
            .unwrap();
        assert_eq!(n, 1, "request timed out");
        // SAFETY: do_io initialised the first `n` completions.
        unsafe { done[0].assume_init_read() }.ret
    }

    fn write(&mut self, q: usize, offset: u64, data: &[u8]) {
        self.buf()[..data.len()].copy_from_slice(data);
        let addr = self.region.addr as *const u8;
        self.queues[q].write(offset, addr, data.len(), 0, ReqFlags::empty());
        assert_eq!(self.complete(q), 0, "write failed");
    }

    fn read(&mut self, q: usize, offset: u64, len: usize) -> Vec<u8> {
        let addr = self.region.addr as *mut u8;
        self.queues[q].read(offset, addr, len, 0, ReqFlags::empty());
        assert_eq!(self.complete(q), 0, "read failed");
        self.buf()[..len].to_vec()
    }

    fn flush(&mut self, q: usize) {
        self.queues[q].flush(0, ReqFlags::empty());
        assert_eq!(self.complete(q), 0, "flush failed");
    }
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..BLOCK)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Waits until the process has at most `limit` open fds (the server tears a connection down
/// after the client has gone).
fn settle_fds(limit: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = open_fds();
        if n <= limit || Instant::now() > deadline {
            return n;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The number of open fds once it stopped changing for 300 ms.
fn stable_fds() -> usize {
    let mut last = open_fds();
    let mut since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    while since.elapsed() < Duration::from_millis(300) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        let n = open_fds();
        if n != last {
            last = n;
            since = Instant::now();
        }
    }
    last
}

#[test]
fn multiqueue_reconnect_and_stop() {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("blk.sock");
    let mut opts = ServeBlkOptions::new(&sock, "memory:16M");
    opts.blk.num_queues = 2;
    opts.blk.serial = "vstor-test".into();
    let server = BlkServer::bind(opts).unwrap();
    let stop = server.stop_handle();
    let serving = thread::spawn(move || server.run());

    // First frontend: write on one queue, read back on the other.
    {
        let mut c = Client::connect(&sock, 2);
        assert_eq!(c.blkio.get_u64("capacity").unwrap(), 16 << 20);
        c.write(0, 8192, &pattern(1));
        assert_eq!(c.read(1, 8192, BLOCK), pattern(1));
        c.flush(1);
    }
    let baseline = stable_fds();

    // Reconnections see the data and start from clean device state.
    for i in 0..8u8 {
        let mut c = Client::connect(&sock, 2);
        let q = usize::from(i % 2);
        assert_eq!(c.read(q, 8192, BLOCK), pattern(i + 1));
        c.write(1 - q, 8192, &pattern(i + 2));
        // One queue is enough for a client: the other stays untouched.
        drop(c);
        // A single-queue client on the same server.
        let mut c1 = Client::connect(&sock, 1);
        assert_eq!(c1.read(0, 8192, BLOCK), pattern(i + 2));
        c1.write(0, 8192, &pattern(i + 2));
    }
    let after = settle_fds(baseline);
    assert!(
        after <= baseline,
        "file descriptors leak across connections: {baseline} -> {after}"
    );

    // Stopping with a frontend connected cuts it and returns.
    let c = Client::connect(&sock, 2);
    stop.stop();
    serving.join().unwrap().unwrap();
    assert!(!sock.exists());
    drop(c);
}
