//! `vstor img bench`: qemu-img bench's flags and output over vstor's own queues. Each queue
//! thread keeps `-d` requests in flight through `BlockDev::open_queue` (submit, kick, then reap
//! after an epoll wait on the queue's completion eventfd). Offsets are sequential with step
//! `-S` like qemu-img, or random (`--random[=SEED]`, aligned to the buffer size).

use std::sync::Arc;
use std::thread;
use std::time::Instant;

use clap::Args;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vstor_blockdev::{
    AlignedBuf, BlockDev, CacheMode, Completion, EngineKind, IoOp, IoRequest, IoVec, QueueOptions,
    Submitted,
};

use super::{fail, open_dev, parse_size, CmdResult, Failure, OpenHow, PathArg};

/// Arguments of `vstor img bench` (qemu-img bench's, plus `--random` and `--queues`).
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Number of requests.
    #[arg(short = 'c', default_value_t = 75000)]
    count: u64,
    /// Requests in flight per queue.
    #[arg(short = 'd', default_value_t = 64)]
    depth: usize,
    /// Image format (probed when absent).
    #[arg(short = 'f')]
    fmt: Option<String>,
    /// Flush after this many writes (0: never).
    #[arg(long = "flush-interval", default_value_t = 0)]
    flush_interval: u64,
    /// I/O engine: io_uring, threads (native and auto choose automatically).
    #[arg(short = 'i')]
    aio: Option<String>,
    /// Bypass the host page cache (cache=none).
    #[arg(short = 'n', long = "nocache")]
    nocache: bool,
    /// Do not wait for requests in flight before a flush.
    #[arg(long = "no-drain")]
    no_drain: bool,
    /// First offset.
    #[arg(short = 'o', default_value = "0")]
    offset: String,
    /// Byte written by write requests.
    #[arg(long = "pattern", default_value_t = 0)]
    pattern: u8,
    /// Quiet: print only the result lines.
    #[arg(short = 'q')]
    quiet: bool,
    /// Request size.
    #[arg(short = 's', default_value = "4096")]
    bufsize: String,
    /// Distance between sequential offsets (default: the request size).
    #[arg(short = 'S')]
    step: Option<String>,
    /// Cache mode: none, writeback, writethrough, directsync, unsafe.
    #[arg(short = 't')]
    cache: Option<String>,
    /// Write instead of read.
    #[arg(short = 'w')]
    write: bool,
    /// Ignored (vstor never locks images).
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    /// Random offsets (aligned to the request size) from this seed.
    #[arg(long = "random", num_args = 0..=1, default_missing_value = "1")]
    random: Option<u64>,
    /// Queue threads, each with its own queue of `-d` requests.
    #[arg(long = "queues", default_value_t = 1)]
    queues: usize,
    /// The image.
    filename: PathArg,
}

/// What every queue thread needs to know.
#[derive(Clone, Copy)]
struct Plan {
    op: IoOp,
    bufsize: u64,
    step: u64,
    start: u64,
    size: u64,
    random: Option<u64>,
    flush_interval: u64,
    drain: bool,
    pattern: u8,
}

impl Plan {
    /// Offset of request number `i` (qemu: `offset = (start + i * step) % size`).
    fn offset(&self, i: u64, rng: &mut u64) -> u64 {
        match self.random {
            None => self.start.wrapping_add(i.wrapping_mul(self.step)) % self.size,
            Some(_) => {
                // xorshift64*
                *rng ^= *rng >> 12;
                *rng ^= *rng << 25;
                *rng ^= *rng >> 27;
                let r = rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
                let slots = (self.size - self.start) / self.bufsize;
                self.start + (r % slots.max(1)) * self.bufsize
            }
        }
    }
}

/// One queue's run: `count` requests numbered `first, first + stride, ...`.
fn run_queue(
    dev: &dyn BlockDev,
    plan: Plan,
    depth: usize,
    first: u64,
    stride: u64,
    count: u64,
) -> Result<(), String> {
    let align = (dev.info().mem_align as usize).max(4096);
    // Declared before the queue so the queue (and any request it holds) is dropped first.
    let mut buf =
        AlignedBuf::new(plan.bufsize as usize * depth, align).map_err(|e| e.to_string())?;
    buf.as_mut_slice().fill(plan.pattern);
    let base = buf.as_mut_ptr();
    let mut q = dev
        .open_queue(&QueueOptions { depth })
        .map_err(|e| e.to_string())?;
    let epoll = Epoll::new().map_err(|e| e.to_string())?;
    if let Some(fd) = q.completion_fd() {
        epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, 0))
            .map_err(|e| e.to_string())?;
    }
    let mut free: Vec<u64> = (0..depth as u64).rev().collect();
    let mut rng = plan
        .random
        .unwrap_or(1)
        .max(1)
        .wrapping_add(first.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        | 1;
    let mut done_list: Vec<Completion> = Vec::new();
    let mut events = vec![EpollEvent::default(); 4];
    let (mut submitted, mut completed, mut in_flight) = (0u64, 0u64, 0usize);
    let mut writes_since_flush = 0u64;
    let mut error: Option<String> = None;
    const FLUSH_TAG: u64 = u64::MAX;
    let mut flush_pending = false;
    loop {
        // Submit while there is room (stop submitting after an error, but keep reaping).
        while error.is_none() && submitted < count && !free.is_empty() && !flush_pending {
            if plan.flush_interval > 0 && writes_since_flush >= plan.flush_interval {
                if plan.drain && in_flight > 0 {
                    break;
                }
                writes_since_flush = 0;
                let req = IoRequest {
                    op: IoOp::Flush,
                    offset: 0,
                    len: 0,
                    iovecs: Vec::new(),
                    tag: FLUSH_TAG,
                };
                match q.submit(req) {
                    Ok(Submitted::Queued) => {
                        in_flight += 1;
                        flush_pending = plan.drain;
                    }
                    Ok(Submitted::Done(Ok(()))) => {}
                    Ok(Submitted::Done(Err(e))) | Err(e) => error = Some(e.to_string()),
                }
                continue;
            }
            let slot = free.pop().unwrap_or(0);
            let idx = first + submitted * stride;
            let offset = plan.offset(idx, &mut rng);
            // SAFETY: slot `slot` is `bufsize` bytes inside `buf`, which outlives the queue
            // (declared earlier, and this function drains every request before returning); a
            // slot is handed to one request at a time (the free list).
            let iov = unsafe {
                IoVec::new(
                    base.add(slot as usize * plan.bufsize as usize),
                    plan.bufsize as usize,
                )
            };
            let req = IoRequest {
                op: plan.op,
                offset,
                len: plan.bufsize,
                iovecs: vec![iov],
                tag: slot,
            };
            submitted += 1;
            if plan.op == IoOp::Write {
                writes_since_flush += 1;
            }
            match q.submit(req) {
                Ok(Submitted::Queued) => in_flight += 1,
                Ok(Submitted::Done(r)) => {
                    free.push(slot);
                    completed += 1;
                    if let Err(e) = r {
                        error = Some(format!("request at offset {offset}: {e}"));
                    }
                }
                Err(e) => {
                    free.push(slot);
                    error = Some(format!("request at offset {offset}: {e}"));
                }
            }
        }
        if let Err(e) = q.kick() {
            error.get_or_insert(e.to_string());
        }
        if in_flight == 0 && (submitted >= count || error.is_some()) && !flush_pending {
            break;
        }
        if in_flight == 0 {
            continue;
        }
        done_list.clear();
        if q.reap(&mut done_list) == 0 {
            if q.completion_fd().is_some() {
                let _ = epoll.wait(1000, &mut events);
            }
            continue;
        }
        for c in done_list.drain(..) {
            in_flight -= 1;
            if c.tag == FLUSH_TAG {
                flush_pending = false;
            } else {
                free.push(c.tag);
                completed += 1;
            }
            if let Err(e) = c.result {
                error.get_or_insert(e.to_string());
            }
        }
    }
    let _ = completed;
    match error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Runs `vstor img bench`.
pub fn run(a: BenchArgs) -> CmdResult {
    let _ = a.force_share;
    let bufsize = parse_size(&a.bufsize)?;
    if bufsize == 0 || bufsize > (1 << 30) {
        return Err(fail(format!(
            "Invalid buffer size specified: {}",
            a.bufsize
        )));
    }
    let step = match &a.step {
        Some(s) => parse_size(s)?,
        None => bufsize,
    };
    let start = parse_size(&a.offset)?;
    if a.depth == 0 || a.depth > 65536 {
        return Err(fail(format!("Invalid queue depth specified: {}", a.depth)));
    }
    if a.queues == 0 || a.queues > 256 {
        return Err(fail(format!("Invalid number of queues: {}", a.queues)));
    }
    if a.flush_interval > 0 && !a.write {
        return Err(fail("--flush-interval is only available in write tests"));
    }
    let mut cache = CacheMode::Writeback;
    if let Some(t) = &a.cache {
        cache = t
            .parse()
            .map_err(|e: vstor_blockdev::Error| fail(e.to_string()))?;
    }
    if a.nocache {
        cache = CacheMode::None;
    }
    let engine = match a.aio.as_deref() {
        None | Some("native") | Some("auto") => EngineKind::Auto,
        Some(s) => s
            .parse()
            .map_err(|e: vstor_blockdev::Error| fail(e.to_string()))?,
    };
    let (dev, _) = open_dev(
        &a.filename,
        a.fmt.as_deref(),
        OpenHow {
            read_only: !a.write,
            cache,
            engine,
        },
    )?;
    let size = dev.info().size;
    if size < bufsize || start >= size {
        return Err(fail(format!(
            "{}: image of {size} bytes is too small for {bufsize}-byte requests at offset {start}",
            a.filename.display()
        )));
    }
    let plan = Plan {
        op: if a.write { IoOp::Write } else { IoOp::Read },
        bufsize,
        step,
        start,
        size,
        random: a.random,
        flush_interval: a.flush_interval,
        drain: !a.no_drain,
        pattern: a.pattern,
    };
    if !a.quiet {
        println!(
            "Sending {} {} requests, {} bytes each, {} in parallel (starting at offset {}, step size {})",
            a.count,
            if a.write { "write" } else { "read" },
            bufsize,
            a.depth * a.queues,
            start,
            step
        );
        if a.flush_interval > 0 {
            println!("Sending flush every {} requests", a.flush_interval);
        }
    }
    let t0 = Instant::now();
    let results = run_all(&dev, plan, a.depth, a.queues, a.count);
    let secs = t0.elapsed().as_secs_f64();
    if let Some(e) = results.into_iter().find_map(|r| r.err()) {
        return Err(Failure {
            code: 1,
            msg: format!("{}: {e}", a.filename.display()),
        });
    }
    println!("Run completed in {secs:.3} seconds.");
    let iops = if secs > 0.0 {
        a.count as f64 / secs
    } else {
        0.0
    };
    println!(
        "IOPS: {:.0}, bandwidth: {:.2} MiB/s",
        iops,
        iops * bufsize as f64 / (1 << 20) as f64
    );
    Ok(0)
}

fn run_all(
    dev: &Arc<dyn BlockDev>,
    plan: Plan,
    depth: usize,
    queues: usize,
    count: u64,
) -> Vec<Result<(), String>> {
    thread::scope(|s| {
        let handles: Vec<_> = (0..queues as u64)
            .map(|t| {
                let n = count / queues as u64 + u64::from(t < count % queues as u64);
                let dev = dev.as_ref();
                s.spawn(move || run_queue(dev, plan, depth, t, queues as u64, n))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("queue thread panicked".into()))
            })
            .collect()
    })
}
