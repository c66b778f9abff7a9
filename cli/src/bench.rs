//! `vstor bench`: a libblkio client that drives a vhost-user-blk socket.
//!
//! One thread per virtqueue keeps `--iodepth` requests in flight from pre-allocated buffers in a
//! mapped memory region, reaps completions with `do_io(min = 1)` and resubmits; latencies go into
//! a per-thread histogram that is merged at the end. `--verify` writes a self-describing pattern
//! (see `bench_pattern`) and checks every block it reads back.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use blkio::{Blkio, Blkioq, MemoryRegion};
use clap::{Args, ValueEnum};

#[path = "bench_pattern.rs"]
mod pattern;
#[path = "bench_stats.rs"]
mod stats;
#[path = "bench_worker.rs"]
mod worker;

use self::stats::QueueStats;
use self::worker::{Access, Buffers, Phase, Stop, Worker, WorkerConfig, WorkerError};

/// The libblkio driver that speaks vhost-user-blk.
const DRIVER: &str = "virtio-blk-vhost-user";
/// libblkio's default virtqueue size; raised when `--iodepth` needs more.
const DEFAULT_QUEUE_SIZE: u32 = 256;
/// Largest virtqueue the virtio spec allows.
const MAX_QUEUE_SIZE: u32 = 32768;
/// `--verify` keeps one generation counter (4 bytes) per block; cap that table at 1 GiB.
const MAX_VERIFY_BLOCKS: u64 = 1 << 28;
/// How long to wait for all queues to finish their verify prefill.
const START_GATE_TIMEOUT: Duration = Duration::from_secs(3600);

/// The access pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RwMode {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    #[value(name = "randread")]
    RandRead,
    /// Random writes.
    #[value(name = "randwrite")]
    RandWrite,
    /// Random, half reads and half writes.
    #[value(name = "randrw")]
    RandRw,
}

impl RwMode {
    fn name(self) -> &'static str {
        match self {
            RwMode::Read => "read",
            RwMode::Write => "write",
            RwMode::RandRead => "randread",
            RwMode::RandWrite => "randwrite",
            RwMode::RandRw => "randrw",
        }
    }

    fn access(self) -> Access {
        match self {
            RwMode::Read | RwMode::Write => Access::Sequential,
            RwMode::RandRead | RwMode::RandWrite | RwMode::RandRw => Access::Random,
        }
    }

    fn read_pct(self) -> u32 {
        match self {
            RwMode::Read | RwMode::RandRead => 100,
            RwMode::Write | RwMode::RandWrite => 0,
            RwMode::RandRw => 50,
        }
    }

    fn reads(self) -> bool {
        self.read_pct() > 0
    }

    fn writes(self) -> bool {
        self.read_pct() < 100
    }
}

/// Benchmark options.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The vhost-user-blk socket to connect to.
    #[arg(long)]
    pub socket: PathBuf,
    /// Access pattern.
    #[arg(long, value_enum, default_value_t = RwMode::RandRead)]
    pub rw: RwMode,
    /// Request size (suffixes k, M, G; binary).
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    pub bs: u64,
    /// Requests kept in flight per queue.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=MAX_QUEUE_SIZE as i64))]
    pub iodepth: u32,
    /// Virtqueues to use, one thread each.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub queues: u16,
    /// Length of the measured run in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Bytes of the disk to use, from offset 0 (default: the whole capacity).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Write a pattern with a per-block header (offset, seed) and check every block read back;
    /// read workloads prefill the region first, write workloads read it back at the end.
    #[arg(long)]
    pub verify: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Parses `4096`, `4k`, `4K`, `4KiB`, `1M`, `1G`, `1T` (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid size {s:?}: expected a number with an optional k/M/G/T suffix")
    })?;
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => return Err(format!("invalid size {s:?}: unknown suffix {other:?}")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// What the device told us at connect time.
struct DeviceInfo {
    capacity: u64,
    request_alignment: u64,
    max_transfer: u64,
    max_segment_len: u64,
    max_queues: i32,
    mem_region_alignment: u64,
}

fn blkio_err(what: &str) -> impl FnOnce(blkio::Error) -> String + '_ {
    move |e| format!("{what}: {e} (errno {})", e.errno().raw_os_error())
}

fn connect(args: &BenchArgs) -> Result<(Blkio, DeviceInfo), String> {
    let path = args
        .socket
        .to_str()
        .ok_or_else(|| format!("socket path {:?} is not UTF-8", args.socket))?;
    let mut b = Blkio::new(DRIVER).map_err(blkio_err("creating the libblkio instance"))?;
    b.set_str("path", path)
        .map_err(blkio_err("setting the socket path"))?;
    // A read-only device refuses to start unless the client says it will not write.
    if !args.rw.writes() && !args.verify {
        b.set_bool("read-only", true)
            .map_err(blkio_err("setting read-only"))?;
    }
    b.connect().map_err(|e| {
        format!(
            "connecting to {}: {e} (errno {})",
            args.socket.display(),
            e.errno().raw_os_error()
        )
    })?;
    let get_u64 = |name: &str| {
        b.get_u64(name)
            .map_err(|e| format!("reading property {name}: {e}"))
    };
    let get_i32 = |name: &str| {
        b.get_i32(name)
            .map_err(|e| format!("reading property {name}: {e}"))
    };
    let nonneg = |v: i32| u64::try_from(v).unwrap_or(0);
    let info = DeviceInfo {
        capacity: get_u64("capacity")?,
        request_alignment: nonneg(get_i32("request-alignment")?).max(1),
        max_transfer: nonneg(get_i32("max-transfer")?),
        max_segment_len: nonneg(get_i32("max-segment-len")?),
        max_queues: get_i32("max-queues")?,
        mem_region_alignment: get_u64("mem-region-alignment")?.max(1),
    };
    Ok((b, info))
}

/// The checked shape of one run.
struct Plan {
    bs: usize,
    iodepth: usize,
    queues: usize,
    size: u64,
    blocks_per_queue: u64,
}

fn plan(args: &BenchArgs, dev: &DeviceInfo) -> Result<Plan, String> {
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        return Err(format!("--seconds must be positive, got {}", args.seconds));
    }
    let bs = args.bs;
    if bs == 0 || bs % dev.request_alignment != 0 {
        return Err(format!(
            "--bs {bs} is not a multiple of the device's request alignment ({})",
            dev.request_alignment
        ));
    }
    if args.verify && (bs < pattern::MIN_BLOCK as u64 || bs % 8 != 0) {
        return Err(format!(
            "--verify needs --bs of at least {} bytes",
            pattern::MIN_BLOCK
        ));
    }
    if dev.max_transfer != 0 && bs > dev.max_transfer {
        return Err(format!(
            "--bs {bs} exceeds the device's max transfer ({} bytes)",
            dev.max_transfer
        ));
    }
    if dev.max_segment_len != 0 && bs > dev.max_segment_len {
        return Err(format!(
            "--bs {bs} exceeds the device's max segment length ({} bytes); one buffer per request",
            dev.max_segment_len
        ));
    }
    let queues = usize::from(args.queues);
    if i32::from(args.queues) > dev.max_queues {
        return Err(format!(
            "--queues {queues}: the device has only {} queue(s)",
            dev.max_queues
        ));
    }
    let size = args.size.unwrap_or(dev.capacity);
    if size > dev.capacity {
        return Err(format!(
            "--size {size} exceeds the device capacity ({} bytes)",
            dev.capacity
        ));
    }
    let blocks_per_queue = size / bs / queues as u64;
    if blocks_per_queue == 0 {
        return Err(format!(
            "region of {size} bytes is too small for {queues} queue(s) of {bs}-byte blocks"
        ));
    }
    let mut iodepth = args.iodepth as usize;
    if args.verify {
        if blocks_per_queue * queues as u64 > MAX_VERIFY_BLOCKS {
            return Err(format!(
                "--verify tracks every block; {} blocks is too many, use --size or a larger --bs",
                blocks_per_queue * queues as u64
            ));
        }
        // Verify never has two requests in flight on one block.
        iodepth = iodepth.min(usize::try_from(blocks_per_queue).unwrap_or(usize::MAX));
    }
    Ok(Plan {
        bs: usize::try_from(bs).map_err(|_| format!("--bs {bs} is too large"))?,
        iodepth,
        queues,
        size,
        blocks_per_queue,
    })
}

/// The result of one queue's timed phase.
struct QueueResult {
    stats: QueueStats,
    elapsed: Duration,
    /// Reads checked in the prefill/read-back passes (verify mode).
    verified_outside: u64,
}

/// Waits until every worker is ready for the timed phase (or one has failed).
fn start_gate(ready: &AtomicUsize, queues: usize, abort: &AtomicBool) -> Result<(), WorkerError> {
    ready.fetch_add(1, Ordering::SeqCst);
    let deadline = Instant::now() + START_GATE_TIMEOUT;
    while ready.load(Ordering::SeqCst) < queues {
        if abort.load(Ordering::Relaxed) {
            return Err(WorkerError::Aborted);
        }
        if Instant::now() > deadline {
            abort.store(true, Ordering::Relaxed);
            return Err(WorkerError::Failed(
                "timed out waiting for the other queues to finish the prefill".into(),
            ));
        }
        thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn run_queue(
    mut w: Worker<'_>,
    args: &BenchArgs,
    plan: &Plan,
    ready: &AtomicUsize,
    abort: &AtomicBool,
) -> Result<QueueResult, WorkerError> {
    let whole_region = |access, read_pct| Phase {
        access,
        read_pct,
        stop: Stop::AfterRequests(plan.blocks_per_queue),
    };
    let mut verified_outside = 0;
    if args.verify && args.rw.reads() {
        w.run_phase(&whole_region(Access::Sequential, 0))?;
    }
    start_gate(ready, plan.queues, abort)?;
    let timed = Phase {
        access: args.rw.access(),
        read_pct: args.rw.read_pct(),
        stop: Stop::At(Instant::now() + Duration::from_secs_f64(args.seconds)),
    };
    let (stats, elapsed) = w.run_phase(&timed)?;
    if args.verify && args.rw.writes() {
        let (readback, _) = w.run_phase(&whole_region(Access::Sequential, 100))?;
        verified_outside = readback.verified;
    }
    Ok(QueueResult {
        stats,
        elapsed,
        verified_outside,
    })
}

/// Runs the benchmark.
pub fn run(args: BenchArgs) -> Result<(), String> {
    let (mut blkio, dev) = connect(&args)?;
    let plan = plan(&args, &dev)?;

    blkio
        .set_i32("num-queues", i32::from(args.queues))
        .map_err(blkio_err("setting num-queues"))?;
    let queue_size = (plan.iodepth as u32)
        .next_power_of_two()
        .max(DEFAULT_QUEUE_SIZE);
    blkio
        .set_i32("queue-size", queue_size as i32)
        .map_err(blkio_err("setting queue-size"))?;
    let queues: Vec<Blkioq> = blkio
        .start()
        .map_err(blkio_err("starting the device"))?
        .queues;
    if queues.len() != plan.queues {
        return Err(format!(
            "asked libblkio for {} queues, got {}",
            plan.queues,
            queues.len()
        ));
    }

    let per_queue = plan.iodepth * plan.bs;
    let align = usize::try_from(dev.mem_region_alignment.max(4096))
        .map_err(|_| "absurd mem-region-alignment".to_string())?;
    let region_len = (per_queue * plan.queues).div_ceil(align) * align;
    let region: MemoryRegion = blkio
        .alloc_mem_region(region_len)
        .map_err(|e| format!("allocating {region_len} bytes of buffers: {e}"))?;
    blkio
        .map_mem_region(&region)
        .map_err(|e| format!("mapping {region_len} bytes of buffers for the device: {e}"))?;

    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32);
    let abort = AtomicBool::new(false);
    let ready = AtomicUsize::new(0);
    let region_bytes_per_queue = plan.blocks_per_queue * plan.bs as u64;

    let results: Vec<Result<QueueResult, WorkerError>> = thread::scope(|s| {
        let handles: Vec<_> = queues
            .into_iter()
            .enumerate()
            .map(|(i, queue)| {
                let cfg = WorkerConfig {
                    queue: i,
                    bs: plan.bs,
                    iodepth: plan.iodepth,
                    region_start: i as u64 * region_bytes_per_queue,
                    blocks: plan.blocks_per_queue,
                    verify: args.verify,
                    seed,
                    abort: &abort,
                };
                // SAFETY: `region` is `region_len >= queues * per_queue` bytes, mapped for the
                // device and kept (with `blkio`) until this scope has joined every thread; the
                // workers get disjoint `per_queue` slices.
                let buffers = unsafe {
                    Buffers::new(
                        (region.addr + i * per_queue) as *mut u8,
                        plan.bs,
                        plan.iodepth,
                    )
                };
                let (args, plan, ready, abort) = (&args, &plan, &ready, &abort);
                s.spawn(move || {
                    let w = Worker::new(cfg, queue, buffers);
                    run_queue(w, args, plan, ready, abort)
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                h.join().unwrap_or_else(|_| {
                    abort.store(true, Ordering::Relaxed);
                    Err(WorkerError::Failed(format!(
                        "queue {i}: worker thread panicked"
                    )))
                })
            })
            .collect()
    });
    blkio.unmap_mem_region(&region);

    let mut per_queue_results = Vec::with_capacity(results.len());
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok(q) => per_queue_results.push(q),
            Err(WorkerError::Failed(msg)) => failures.push(msg),
            Err(WorkerError::Aborted) => {}
        }
    }
    if let Some(first) = failures.first() {
        let more = match failures.len() {
            1 => String::new(),
            n => format!(" (and {} more failures)", n - 1),
        };
        return Err(format!("{first}{more}"));
    }
    let report = Report::new(&args, &plan, &per_queue_results);
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

/// Aggregated results.
struct Report<'a> {
    args: &'a BenchArgs,
    plan: &'a Plan,
    total: QueueStats,
    iops: f64,
    mib_per_s: f64,
    seconds: f64,
    verified: u64,
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

impl<'a> Report<'a> {
    fn new(args: &'a BenchArgs, plan: &'a Plan, queues: &[QueueResult]) -> Self {
        let mut total = QueueStats::default();
        let (mut iops, mut bytes_per_s, mut seconds, mut verified) = (0.0, 0.0, 0.0f64, 0);
        for q in queues {
            total.merge(&q.stats);
            let secs = q.elapsed.as_secs_f64().max(1e-9);
            // Queues run concurrently: rates add up.
            iops += (q.stats.reads + q.stats.writes) as f64 / secs;
            bytes_per_s += q.stats.bytes as f64 / secs;
            seconds = seconds.max(secs);
            verified += q.stats.verified + q.verified_outside;
        }
        Self {
            args,
            plan,
            total,
            iops,
            mib_per_s: bytes_per_s / (1024.0 * 1024.0),
            seconds,
            verified,
        }
    }

    fn text(&self) -> String {
        let l = &self.total.latency;
        let mut s = format!(
            "{} bs={} iodepth={} queues={} size={} ({:.0} MiB) {:.2} s\n",
            self.args.rw.name(),
            self.plan.bs,
            self.plan.iodepth,
            self.plan.queues,
            self.plan.size,
            self.plan.size as f64 / (1024.0 * 1024.0),
            self.seconds
        );
        s += &format!("  iops       {:.0}\n", self.iops);
        s += &format!("  bandwidth  {:.2} MiB/s\n", self.mib_per_s);
        s += &format!(
            "  latency    p50 {:.1} us  p99 {:.1} us  p99.9 {:.1} us  (min {:.1}, mean {:.1}, max {:.1} us)\n",
            us(l.percentile(50.0)),
            us(l.percentile(99.0)),
            us(l.percentile(99.9)),
            us(l.min()),
            us(l.mean()),
            us(l.max())
        );
        s += &format!(
            "  requests   {} reads, {} writes\n",
            self.total.reads, self.total.writes
        );
        if self.args.verify {
            s += &format!(
                "  verify     {} blocks checked, no mismatch\n",
                self.verified
            );
        }
        s
    }

    fn json(&self) -> String {
        let l = &self.total.latency;
        serde_json::json!({
            "rw": self.args.rw.name(),
            "bs": self.plan.bs,
            "iodepth": self.plan.iodepth,
            "queues": self.plan.queues,
            "size": self.plan.size,
            "seconds": self.seconds,
            "reads": self.total.reads,
            "writes": self.total.writes,
            "iops": self.iops,
            "mib_per_s": self.mib_per_s,
            "lat_us": {
                "p50": us(l.percentile(50.0)),
                "p99": us(l.percentile(99.0)),
                "p99_9": us(l.percentile(99.9)),
                "min": us(l.min()),
                "mean": us(l.mean()),
                "max": us(l.max()),
            },
            "verify": self.args.verify,
            "verified_blocks": self.verified,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2t"), Ok(2 << 40));
        assert!(parse_size("").is_err());
        assert!(parse_size("4x").is_err());
        assert!(parse_size("k").is_err());
        assert!(parse_size("99999999999999T").is_err());
    }
}
