//! Shared harness for the end-to-end tests: start `vstor serve blk` (or, with
//! `VSTOR_TEST_SERVER=qsd`, qemu-storage-daemon as a reference peer) on a temporary socket, and
//! drive it with libblkio.
//!
//! Every wait is bounded and every server is killed by a `Drop` guard, so a broken server fails
//! a test instead of hanging it.

#![allow(dead_code)] // each test binary uses a different subset

use std::fs;
use std::mem::MaybeUninit;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};

/// Upper bound for the server to create its socket.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound for one request.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for the server to exit after SIGTERM.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;
pub const GIB: u64 = 1024 * 1024 * 1024;

/// The vstor binary under test.
pub fn vstor_bin() -> &'static str {
    env!("CARGO_BIN_EXE_vstor")
}

/// Which server implementation the tests talk to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// `vstor serve blk` (the default).
    Vstor,
    /// qemu-storage-daemon, to check the tests themselves against a reference server.
    Qsd,
}

impl Peer {
    /// Chosen with `VSTOR_TEST_SERVER=qsd`.
    pub fn from_env() -> Self {
        match std::env::var("VSTOR_TEST_SERVER").as_deref() {
            Ok("qsd") => Peer::Qsd,
            _ => Peer::Vstor,
        }
    }
}

/// The disk behind the server.
#[derive(Clone, Debug)]
pub enum Image {
    /// A raw file.
    File(PathBuf),
    /// `null:SIZE`: discards writes.
    Null(u64),
    /// `memory:SIZE`: RAM-backed.
    Memory(u64),
}

/// How to start a server.
#[derive(Clone, Debug)]
pub struct ServerOpts {
    pub image: Image,
    pub queues: u16,
    pub read_only: bool,
    /// `--cache`: `none` (O_DIRECT) or the server's default.
    pub cache_none: bool,
    /// `--aio`: `io_uring`, `threads`, or the server's default.
    pub aio: Option<&'static str>,
    /// `--poll-us` (vstor only): the ring polling window.
    pub poll_us: Option<u64>,
}

impl ServerOpts {
    pub fn new(image: Image) -> Self {
        Self {
            image,
            queues: 1,
            read_only: false,
            cache_none: false,
            aio: None,
            poll_us: None,
        }
    }

    pub fn cache_none(mut self) -> Self {
        self.cache_none = true;
        self
    }

    pub fn aio(mut self, engine: &'static str) -> Self {
        self.aio = Some(engine);
        self
    }

    pub fn poll_us(mut self, us: u64) -> Self {
        self.poll_us = Some(us);
        self
    }

    pub fn queues(mut self, n: u16) -> Self {
        self.queues = n;
        self
    }

    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }
}

/// `64M`, `1G`, … as `vstor serve --image null:SIZE` takes it.
fn size_arg(bytes: u64) -> String {
    for (unit, suffix) in [(GIB, "G"), (MIB, "M"), (KIB, "K")] {
        if bytes % unit == 0 {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// A running server; killed on drop.
pub struct Server {
    child: Option<Child>,
    pub socket: PathBuf,
    stderr_path: PathBuf,
    pub peer: Peer,
}

impl Server {
    /// Starts a server in `dir` and waits (bounded) until its socket is there.
    pub fn start(dir: &Path, opts: &ServerOpts) -> Server {
        let peer = Peer::from_env();
        let socket = dir.join("blk.sock");
        let stderr_path = dir.join("server.stderr");
        let stderr = fs::File::create(&stderr_path).expect("create stderr file");
        let mut cmd = match peer {
            Peer::Vstor => {
                let image = match &opts.image {
                    Image::File(p) => p.display().to_string(),
                    Image::Null(n) => format!("null:{}", size_arg(*n)),
                    Image::Memory(n) => format!("memory:{}", size_arg(*n)),
                };
                let mut c = Command::new(vstor_bin());
                c.args(["serve", "blk", "--image", &image, "--socket"])
                    .arg(&socket)
                    .args(["--queues", &opts.queues.to_string()]);
                if opts.read_only {
                    c.arg("--read-only");
                }
                if opts.cache_none {
                    c.args(["--cache", "none"]);
                }
                if let Some(aio) = opts.aio {
                    c.args(["--aio", aio]);
                }
                if let Some(us) = opts.poll_us {
                    c.args(["--poll-us", &us.to_string()]);
                }
                c.env("RUST_LOG", "info");
                c
            }
            Peer::Qsd => {
                let mut file_opts = String::from("driver=file,node-name=img,discard=unmap");
                if opts.cache_none {
                    file_opts += ",cache.direct=on";
                }
                if let Some(aio) = opts.aio {
                    file_opts += &format!(",aio={aio}");
                }
                let blockdev = match &opts.image {
                    Image::File(p) => format!("{file_opts},filename={}", p.display()),
                    Image::Null(n) => {
                        format!("driver=null-co,node-name=img,size={n},read-zeroes=on")
                    }
                    Image::Memory(n) => {
                        let p = dir.join("qsd-memory.img");
                        let f = fs::File::create(&p).expect("create qsd memory image");
                        f.set_len(*n).expect("size qsd memory image");
                        format!("{file_opts},filename={}", p.display())
                    }
                };
                let export = format!(
                    "type=vhost-user-blk,id=exp,node-name=img,addr.type=unix,addr.path={},writable={},num-queues={}",
                    socket.display(),
                    if opts.read_only { "off" } else { "on" },
                    opts.queues
                );
                let mut c = Command::new("qemu-storage-daemon");
                c.args(["--blockdev", &blockdev, "--export", &export]);
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        let child = cmd.spawn().expect("spawn server");
        let mut server = Server {
            child: Some(child),
            socket,
            stderr_path,
            peer,
        };
        server.wait_ready();
        server
    }

    /// What the server printed on stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("server child");
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!(
                    "server exited during startup with {status}; stderr:\n{}",
                    self.stderr()
                );
            }
            let announced = match self.peer {
                Peer::Vstor => self.stderr().contains("listening on"),
                Peer::Qsd => true,
            };
            if announced && self.socket.exists() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "server did not listen on {} within {STARTUP_TIMEOUT:?}; stderr:\n{}",
                    self.socket.display(),
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to the server.
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("server child");
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let r = unsafe { libc::kill(pid, signal) };
        assert_eq!(r, 0, "kill({pid}, {signal})");
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(self) -> ExitStatus {
        self.stop(libc::SIGTERM)
    }

    /// Sends `signal` and waits (bounded) for the exit status.
    pub fn stop(mut self, signal: i32) -> ExitStatus {
        self.signal(signal);
        let mut child = self.child.take().expect("server child");
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "server did not exit within {EXIT_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts a clean exit after SIGTERM.
    pub fn terminate_ok(self) {
        self.stop_ok(libc::SIGTERM);
    }

    /// Asserts a clean exit after `signal`.
    pub fn stop_ok(self, signal: i32) {
        let stderr_path = self.stderr_path.clone();
        let status = self.stop(signal);
        assert!(
            status.success(),
            "server exited with {status} (signal {:?}) after signal {signal}; stderr:\n{}",
            status.signal(),
            fs::read_to_string(stderr_path).unwrap_or_default()
        );
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Client-side options.
#[derive(Clone, Copy, Debug)]
pub struct ClientOpts {
    pub queues: i32,
    pub read_only: bool,
    /// Bytes of request buffers to map.
    pub mem: usize,
}

impl Default for ClientOpts {
    fn default() -> Self {
        Self {
            queues: 1,
            read_only: false,
            mem: 16 * MIB as usize,
        }
    }
}

/// A buffer inside the client's mapped memory region. Valid while its `Client` lives.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub ptr: *mut u8,
    pub len: usize,
}

// SAFETY: a `Buf` is a plain range of a memfd mapping that outlives the threads using it (tests
// join their threads before dropping the client); tests give each thread its own buffers.
unsafe impl Send for Buf {}

impl Buf {
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the range lies in the client's mapped region (see `Client::alloc`), and no
        // request is in flight on it while the test looks at it.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as `as_slice`; `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// Splits into consecutive buffers of the given lengths (must add up to at most `len`).
    pub fn split(&self, lens: &[usize]) -> Vec<Buf> {
        let mut at = 0;
        lens.iter()
            .map(|&l| {
                assert!(at + l <= self.len, "split past the buffer");
                // SAFETY: stays inside this buffer (asserted above).
                let b = Buf {
                    ptr: unsafe { self.ptr.add(at) },
                    len: l,
                };
                at += l;
                b
            })
            .collect()
    }
}

/// Turns buffers into an iovec array for readv/writev.
pub fn iovecs(bufs: &[Buf]) -> Vec<libc::iovec> {
    bufs.iter()
        .map(|b| libc::iovec {
            iov_base: b.ptr.cast(),
            iov_len: b.len,
        })
        .collect()
}

/// A connected and started libblkio instance.
pub struct Client {
    /// Dropped before `blkio` (field order), as libblkio requires.
    pub queues: Vec<Blkioq>,
    region: MemoryRegion,
    next: usize,
    blkio: Blkio,
}

fn is_transient_connect_error(e: &blkio::Error) -> bool {
    let errno = e.errno().raw_os_error();
    errno == libc::ECONNREFUSED || errno == libc::ENOENT || errno == libc::EAGAIN
}

/// Creates and connects a libblkio instance (retrying while the server is not yet accepting).
pub fn connect_only(socket: &Path, read_only: bool) -> Result<Blkio, blkio::Error> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        let mut b = Blkio::new("virtio-blk-vhost-user")?;
        b.set_str("path", socket.to_str().expect("utf-8 socket path"))?;
        b.set_bool("read-only", read_only)?;
        match b.connect() {
            Ok(()) => return Ok(b),
            Err(e) if is_transient_connect_error(&e) && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

impl Client {
    /// Connects, starts `opts.queues` queues and maps `opts.mem` bytes of buffers.
    pub fn try_connect(socket: &Path, opts: ClientOpts) -> Result<Client, blkio::Error> {
        let mut blkio = connect_only(socket, opts.read_only)?;
        blkio.set_i32("num-queues", opts.queues)?;
        let queues = blkio.start()?.queues;
        let region = blkio.alloc_mem_region(opts.mem)?;
        blkio.map_mem_region(&region)?;
        Ok(Client {
            queues,
            region,
            next: 0,
            blkio,
        })
    }

    /// [`Client::try_connect`], panicking with the server's stderr on failure.
    pub fn connect(server: &Server, opts: ClientOpts) -> Client {
        Client::try_connect(&server.socket, opts).unwrap_or_else(|e| {
            panic!(
                "connecting to {}: {e} (errno {}); server stderr:\n{}",
                server.socket.display(),
                e.errno().raw_os_error(),
                server.stderr()
            )
        })
    }

    /// Disk size in bytes.
    pub fn capacity(&self) -> u64 {
        self.blkio.get_u64("capacity").expect("capacity")
    }

    pub fn get_i32(&self, name: &str) -> i32 {
        self.blkio
            .get_i32(name)
            .unwrap_or_else(|e| panic!("property {name}: {e}"))
    }

    pub fn get_u64(&self, name: &str) -> u64 {
        self.blkio
            .get_u64(name)
            .unwrap_or_else(|e| panic!("property {name}: {e}"))
    }

    /// Hands out `len` bytes (4 KiB aligned) of the mapped region.
    pub fn alloc(&mut self, len: usize) -> Buf {
        let start = self.next;
        let end = start + len.div_ceil(4096) * 4096;
        assert!(end <= self.region.len, "test buffer region exhausted");
        self.next = end;
        Buf {
            ptr: (self.region.addr + start) as *mut u8,
            len,
        }
    }
}

/// Submits one request with `submit` (user_data 0) and waits, bounded, for its completion.
/// Returns the completion's `ret` (0 or a negative errno).
pub fn sync_io(q: &mut Blkioq, submit: impl FnOnce(&mut Blkioq)) -> i32 {
    submit(q);
    let mut c = [MaybeUninit::<Completion>::uninit()];
    let mut timeout = IO_TIMEOUT;
    let n = q
        .do_io(&mut c, 1, Some(&mut timeout), None)
        .unwrap_or_else(|e| panic!("do_io: {e} (errno {})", e.errno().raw_os_error()));
    assert_eq!(n, 1);
    // SAFETY: do_io filled one completion.
    unsafe { c[0].assume_init_read() }.ret
}

/// Submits a batch of requests (the closure submits them with user_data 0..n) and waits for all;
/// returns `ret` indexed by user_data.
pub fn batch_io(q: &mut Blkioq, n: usize, submit: impl FnOnce(&mut Blkioq)) -> Vec<i32> {
    submit(q);
    let mut rets = vec![None; n];
    let mut c: Vec<MaybeUninit<Completion>> = (0..n).map(|_| MaybeUninit::uninit()).collect();
    let mut done = 0;
    while done < n {
        let mut timeout = IO_TIMEOUT;
        let got = q
            .do_io(&mut c, 1, Some(&mut timeout), None)
            .unwrap_or_else(|e| panic!("do_io with {} of {n} requests outstanding: {e}", n - done));
        for slot in c.iter().take(got) {
            // SAFETY: do_io filled the first `got` completions.
            let c = unsafe { slot.assume_init_read() };
            assert!(
                c.user_data < n && rets[c.user_data].is_none(),
                "bad user_data"
            );
            rets[c.user_data] = Some(c.ret);
            done += 1;
        }
    }
    rets.into_iter()
        .map(|r| r.expect("every request completed"))
        .collect()
}

pub fn read(q: &mut Blkioq, offset: u64, buf: Buf) -> i32 {
    sync_io(q, |q| {
        q.read(offset, buf.ptr, buf.len, 0, ReqFlags::empty())
    })
}

pub fn write(q: &mut Blkioq, offset: u64, buf: Buf) -> i32 {
    sync_io(q, |q| {
        q.write(offset, buf.ptr, buf.len, 0, ReqFlags::empty())
    })
}

pub fn readv(q: &mut Blkioq, offset: u64, bufs: &[Buf]) -> i32 {
    let iov = iovecs(bufs);
    sync_io(q, |q| {
        q.readv(offset, iov.as_ptr(), iov.len() as u32, 0, ReqFlags::empty())
    })
}

pub fn writev(q: &mut Blkioq, offset: u64, bufs: &[Buf]) -> i32 {
    let iov = iovecs(bufs);
    sync_io(q, |q| {
        q.writev(offset, iov.as_ptr(), iov.len() as u32, 0, ReqFlags::empty())
    })
}

pub fn flush(q: &mut Blkioq) -> i32 {
    sync_io(q, |q| q.flush(0, ReqFlags::empty()))
}

/// Deterministic test data: the byte at disk offset `pos` for `seed`. Any sub-range of a written
/// range can be checked on its own, and data landing at the wrong offset does not match.
pub fn pattern_byte(pos: u64, seed: u64) -> u8 {
    let mut z = (pos / 8) ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> ((pos % 8) * 8)) as u8
}

/// Fills `buf` with the pattern for disk range `offset..offset + buf.len()`.
pub fn fill_pattern(buf: &mut [u8], offset: u64, seed: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(offset + i as u64, seed);
    }
}

/// Panics naming the first differing disk offset.
pub fn assert_pattern(buf: &[u8], offset: u64, seed: u64, what: &str) {
    if let Some(i) = buf
        .iter()
        .enumerate()
        .position(|(i, &b)| b != pattern_byte(offset + i as u64, seed))
    {
        panic!(
            "{what}: data mismatch at disk offset {:#x} (buffer +{i}): got {:#04x}, want {:#04x}",
            offset + i as u64,
            buf[i],
            pattern_byte(offset + i as u64, seed)
        );
    }
}

/// Panics naming the first non-zero disk offset.
pub fn assert_zeros(buf: &[u8], offset: u64, what: &str) {
    if let Some(i) = buf.iter().position(|&b| b != 0) {
        panic!(
            "{what}: expected zeros, found {:#04x} at disk offset {:#x}",
            buf[i],
            offset + i as u64
        );
    }
}

/// A sparse raw image file of `len` bytes in `dir`.
pub fn raw_image(dir: &Path, name: &str, len: u64) -> PathBuf {
    let p = dir.join(name);
    let f = fs::File::create(&p).expect("create image");
    f.set_len(len).expect("size image");
    p
}

/// A fresh temporary directory for one test.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("vstor-e2e-")
        .tempdir()
        .expect("tempdir")
}
