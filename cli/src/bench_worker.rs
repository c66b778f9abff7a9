//! The per-queue I/O loop of `vstor bench`: keep `iodepth` requests in flight on one libblkio
//! queue, reap completions with `do_io(min = 1)`, resubmit, and record latencies.

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use blkio::{Blkioq, Completion, ReqFlags};

use super::pattern::{self as bench_pattern, BlockTag};
use super::stats::QueueStats;

/// How long one `do_io` may wait for any completion before the run is declared hung.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Request buffers of one worker: `iodepth` blocks of `bs` bytes inside a mapped memory region.
pub struct Buffers {
    base: *mut u8,
    bs: usize,
    slots: usize,
}

// SAFETY: `Buffers` is only a pointer into a libblkio memory region that the caller keeps mapped
// until every worker has been joined; each worker gets a disjoint range (see `Buffers::new`).
unsafe impl Send for Buffers {}

impl Buffers {
    /// Describes `slots` buffers of `bs` bytes starting at `base`.
    ///
    /// # Safety
    ///
    /// `base..base + slots * bs` must be writable memory mapped for the device, used by nothing
    /// else, and must stay mapped for as long as the returned value (and the queue it is used
    /// with) lives.
    pub unsafe fn new(base: *mut u8, bs: usize, slots: usize) -> Self {
        Self { base, bs, slots }
    }

    fn ptr(&self, slot: usize) -> *mut u8 {
        debug_assert!(slot < self.slots);
        // SAFETY: slot < slots, so the offset stays inside the range promised in `new`.
        unsafe { self.base.add(slot * self.bs) }
    }

    /// The buffer of `slot`, for the CPU.
    ///
    /// Only call this for a slot with no request in flight, so the device is not touching it.
    fn slice(&mut self, slot: usize) -> &mut [u8] {
        // SAFETY: the range is valid and exclusive to this worker (`new`'s contract), and the
        // caller only asks for slots that are not in flight; `&mut self` prevents aliasing.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(slot), self.bs) }
    }
}

/// The kind of request a slot carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read,
    Write,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
        }
    }
}

/// One request slot (one buffer, at most one request in flight).
#[derive(Clone, Copy)]
struct Slot {
    busy: bool,
    op: Op,
    block: u64,
    /// Generation being written (verify mode).
    generation: u32,
    submitted: Instant,
}

/// Why a worker stopped early.
#[derive(Debug)]
pub enum WorkerError {
    /// A request failed, a completion was wrong, or the device stopped answering.
    Failed(String),
    /// Another worker failed, so this one stopped.
    Aborted,
}

/// How a phase picks blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Block 0, 1, 2, … wrapping at the end of the region.
    Sequential,
    /// Uniformly random blocks.
    Random,
}

/// When a phase stops submitting.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// After this instant.
    At(Instant),
    /// After this many requests.
    AfterRequests(u64),
}

/// One pass of the worker over its region.
#[derive(Clone, Copy, Debug)]
pub struct Phase {
    /// Block order.
    pub access: Access,
    /// Percentage of requests that are reads (0 = all writes, 100 = all reads).
    pub read_pct: u32,
    /// End condition.
    pub stop: Stop,
}

/// Fixed parameters of one worker.
pub struct WorkerConfig<'a> {
    /// Queue number, for messages.
    pub queue: usize,
    /// Request size in bytes.
    pub bs: usize,
    /// Requests kept in flight.
    pub iodepth: usize,
    /// Disk offset of block 0 of this worker's region.
    pub region_start: u64,
    /// Blocks in this worker's region.
    pub blocks: u64,
    /// Write the verify pattern and check it on reads.
    pub verify: bool,
    /// Seed for offsets and the verify pattern.
    pub seed: u64,
    /// Set by any worker that fails, so the others stop early.
    pub abort: &'a AtomicBool,
}

/// xorshift64*: fast and good enough for picking offsets.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    #[inline]
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (multiply-high, no division).
    #[inline]
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// Drives one queue.
pub struct Worker<'a> {
    cfg: WorkerConfig<'a>,
    queue: Blkioq,
    buffers: Buffers,
    slots: Vec<Slot>,
    free: Vec<usize>,
    completions: Vec<MaybeUninit<Completion>>,
    /// Verify mode: generation last written per block (0 = not written by this run).
    generations: Vec<u32>,
    rng: Rng,
    cursor: u64,
}

impl<'a> Worker<'a> {
    /// Prepares a worker; the buffers must hold `cfg.iodepth` blocks of `cfg.bs` bytes.
    pub fn new(cfg: WorkerConfig<'a>, queue: Blkioq, mut buffers: Buffers) -> Self {
        let now = Instant::now();
        let slot = Slot {
            busy: false,
            op: Op::Read,
            block: 0,
            generation: 0,
            submitted: now,
        };
        // Give writes outside verify mode non-zero data, so a backend cannot take a
        // zero-detection shortcut.
        for s in 0..cfg.iodepth {
            let tag = BlockTag {
                offset: s as u64,
                seed: cfg.seed,
                generation: 0,
            };
            bench_pattern::fill(buffers.slice(s), &tag);
        }
        let generations = if cfg.verify {
            vec![0; cfg.blocks as usize]
        } else {
            Vec::new()
        };
        Self {
            rng: Rng::new(cfg.seed ^ (cfg.queue as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            slots: vec![slot; cfg.iodepth],
            free: (0..cfg.iodepth).rev().collect(),
            completions: (0..cfg.iodepth).map(|_| MaybeUninit::uninit()).collect(),
            generations,
            cursor: 0,
            cfg,
            queue,
            buffers,
        }
    }

    fn offset_of(&self, block: u64) -> u64 {
        self.cfg.region_start + block * self.cfg.bs as u64
    }

    fn in_flight(&self, block: u64) -> bool {
        self.slots.iter().any(|s| s.busy && s.block == block)
    }

    fn next_block(&mut self, access: Access) -> u64 {
        loop {
            let block = match access {
                Access::Random => self.rng.below(self.cfg.blocks),
                Access::Sequential => {
                    let b = self.cursor;
                    self.cursor = (self.cursor + 1) % self.cfg.blocks;
                    b
                }
            };
            // Two requests in flight on one block make its content undefined; verify mode
            // never does that. `iodepth <= blocks` (checked by the caller) bounds this loop.
            if !self.cfg.verify || !self.in_flight(block) {
                return block;
            }
        }
    }

    fn submit(&mut self, slot: usize, phase: &Phase, now: Instant) {
        let block = self.next_block(phase.access);
        let op = if phase.read_pct >= 100
            || (phase.read_pct > 0 && self.rng.below(100) < u64::from(phase.read_pct))
        {
            Op::Read
        } else {
            Op::Write
        };
        let offset = self.offset_of(block);
        let mut generation = 0;
        if op == Op::Write && self.cfg.verify {
            generation = self.generations[block as usize].wrapping_add(1).max(1);
            let tag = BlockTag {
                offset,
                seed: self.cfg.seed,
                generation: u64::from(generation),
            };
            bench_pattern::fill(self.buffers.slice(slot), &tag);
        }
        self.slots[slot] = Slot {
            busy: true,
            op,
            block,
            generation,
            submitted: now,
        };
        let buf = self.buffers.ptr(slot);
        let len = self.cfg.bs;
        match op {
            Op::Read => self.queue.read(offset, buf, len, slot, ReqFlags::empty()),
            Op::Write => self.queue.write(offset, buf, len, slot, ReqFlags::empty()),
        }
    }

    /// Handles one completion; on success the slot is free again.
    fn complete(
        &mut self,
        c: &Completion,
        now: Instant,
        stats: &mut QueueStats,
    ) -> Result<usize, String> {
        let slot_idx = c.user_data;
        let Some(slot) = self.slots.get(slot_idx).copied().filter(|s| s.busy) else {
            return Err(format!(
                "queue {}: completion for unknown request {slot_idx}",
                self.cfg.queue
            ));
        };
        let offset = self.offset_of(slot.block);
        if c.ret < 0 {
            let detail = if c.error_msg.is_null() {
                String::new()
            } else {
                // SAFETY: libblkio sets `error_msg` to null or to a static NUL-terminated string.
                let msg = unsafe { CStr::from_ptr(c.error_msg) };
                format!(" ({})", msg.to_string_lossy())
            };
            return Err(format!(
                "queue {}: {} at offset {offset:#x}, len {} failed: {}{detail}",
                self.cfg.queue,
                slot.op.name(),
                self.cfg.bs,
                io::Error::from_raw_os_error(-c.ret),
            ));
        }
        self.slots[slot_idx].busy = false;
        let latency = now.saturating_duration_since(slot.submitted);
        stats
            .latency
            .record(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
        stats.bytes += self.cfg.bs as u64;
        match slot.op {
            Op::Read => {
                stats.reads += 1;
                if self.cfg.verify {
                    let generation = self.generations[slot.block as usize];
                    if generation != 0 {
                        let tag = BlockTag {
                            offset,
                            seed: self.cfg.seed,
                            generation: u64::from(generation),
                        };
                        bench_pattern::check(self.buffers.slice(slot_idx), &tag).map_err(|m| {
                            format!(
                                "queue {}: read at offset {offset:#x}, len {}: {m}",
                                self.cfg.queue, self.cfg.bs
                            )
                        })?;
                        stats.verified += 1;
                    }
                }
            }
            Op::Write => {
                stats.writes += 1;
                if self.cfg.verify {
                    self.generations[slot.block as usize] = slot.generation;
                }
            }
        }
        Ok(slot_idx)
    }

    fn describe_in_flight(&self) -> String {
        let busy: Vec<_> = self.slots.iter().filter(|s| s.busy).collect();
        match busy.iter().min_by_key(|s| s.submitted) {
            Some(s) => format!(
                "{} requests in flight, oldest: {} at offset {:#x}, len {}",
                busy.len(),
                s.op.name(),
                self.offset_of(s.block),
                self.cfg.bs
            ),
            None => "no request in flight".to_string(),
        }
    }

    /// Runs one phase and returns what completed in it and how long it took.
    ///
    /// On error the other workers are told to stop (`abort`).
    pub fn run_phase(&mut self, phase: &Phase) -> Result<(QueueStats, Duration), WorkerError> {
        if self.cfg.abort.load(Ordering::Relaxed) {
            return Err(WorkerError::Aborted);
        }
        let result = self.run_phase_inner(phase);
        if let Err(WorkerError::Failed(_)) = result {
            self.cfg.abort.store(true, Ordering::Relaxed);
        }
        result
    }

    fn run_phase_inner(&mut self, phase: &Phase) -> Result<(QueueStats, Duration), WorkerError> {
        let mut stats = QueueStats::default();
        let start = Instant::now();
        let mut issued = 0u64;
        let mut in_flight = 0usize;
        self.cursor = 0;
        let more = |issued: u64, now: Instant| match phase.stop {
            Stop::At(t) => now < t,
            Stop::AfterRequests(n) => issued < n,
        };

        while more(issued, start) {
            let Some(slot) = self.free.pop() else { break };
            self.submit(slot, phase, start);
            issued += 1;
            in_flight += 1;
        }

        while in_flight > 0 {
            let mut timeout = IO_TIMEOUT;
            let n = self
                .queue
                .do_io(&mut self.completions, 1, Some(&mut timeout), None)
                .map_err(|e| {
                    WorkerError::Failed(format!(
                        "queue {}: waiting for completions: {e} (errno {}; {})",
                        self.cfg.queue,
                        e.errno().raw_os_error(),
                        self.describe_in_flight()
                    ))
                })?;
            let now = Instant::now();
            for i in 0..n {
                // SAFETY: do_io initialised the first `n` entries of `completions`.
                let c = unsafe { self.completions[i].assume_init_read() };
                let slot = self
                    .complete(&c, now, &mut stats)
                    .map_err(WorkerError::Failed)?;
                self.free.push(slot);
                in_flight -= 1;
            }
            if self.cfg.abort.load(Ordering::Relaxed) {
                return Err(WorkerError::Aborted);
            }
            while more(issued, now) {
                let Some(slot) = self.free.pop() else { break };
                self.submit(slot, phase, now);
                issued += 1;
                in_flight += 1;
            }
        }
        Ok((stats, start.elapsed()))
    }
}
