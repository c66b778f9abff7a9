//! Adaptive polling of a virtqueue's available ring after the worker emptied it.
//!
//! Sleeping in epoll costs every batch a kick (an eventfd write by the driver) and a wake-up of
//! the worker; polling the ring for a few microseconds with kicks suppressed catches the
//! driver's next requests without either, and lets the driver and the worker overlap instead
//! of taking turns. The window adapts the way QEMU's `aio_poll` does (`poll-max-ns`): it grows
//! (4 µs, then doubling) while events arrive within the maximum, stays while they arrive
//! inside the window, and drops to zero when the worker would have had to poll longer than
//! the maximum, so an idle queue costs no CPU. The spin yields the CPU between checks, so a
//! driver sharing the worker's CPU is not starved by it.
//!
//! While the ring is processed with kicks suppressed, a driver that waits for a completion is
//! signalled as soon as one is ready (EVENT_IDX `used_event`), not at the end of the batch, so
//! a driver on another CPU refills the ring while the batch is finished. When the signal lets
//! the driver run on the worker's own CPU (detected by the signal call lasting long while the
//! driver reaped and waited again, i.e. moved `used_event`), the rest of the turn
//! signals once per pass instead, keeping batches whole.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vstor_virtio_core::virtio_queue::{Queue, QueueT};

use vhost_user_backend::VringState;
use vstor_virtio_blk::handler::{Notify, Polled};
use vstor_virtio_blk::BlkQueueHandler;
use vstor_virtio_core::{GuestMemory, GuestMemoryAtomic};

/// First non-zero window (QEMU's initial grow step).
const FIRST_WINDOW: Duration = Duration::from_micros(4);
/// Ring checks between two looks at the clock and yields.
const CHECKS_PER_YIELD: u32 = 64;
/// A signal call that lasts longer than this, while the driver reaps, means the driver ran on
/// the worker's CPU.
const PREEMPTED: Duration = Duration::from_micros(5);
/// Longest time one event keeps the worker in [`poll_ring`], however busy the ring: then kicks
/// are re-enabled and the worker returns to its event loop (exit events, other fds).
const MAX_TURN: Duration = Duration::from_millis(2);

/// The adaptive polling window of one queue.
#[derive(Debug)]
pub(crate) struct Poller {
    max: Duration,
    window: Duration,
    /// When the worker last started waiting for the driver (polling, then sleeping).
    waiting_since: Option<Instant>,
}

impl Poller {
    /// A poller whose window never exceeds `max` (zero: never poll).
    pub fn new(max: Duration) -> Self {
        Poller {
            max,
            window: Duration::ZERO,
            waiting_since: None,
        }
    }

    /// The current window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// An event arrived at `now`: adapts the window to how long the worker waited for it.
    pub fn woke(&mut self, now: Instant) {
        let Some(since) = self.waiting_since.take() else {
            return;
        };
        let waited = now.saturating_duration_since(since);
        if waited <= self.window {
            // Polling would have caught it: the sweet spot.
        } else if waited > self.max {
            self.window = Duration::ZERO;
        } else if self.window < self.max {
            self.window = (self.window * 2).max(FIRST_WINDOW).min(self.max);
        }
    }

    /// The worker starts waiting for the driver at `since`.
    pub fn waiting(&mut self, since: Instant) {
        self.waiting_since = Some(since);
    }
}

/// Processes the ring with kicks suppressed, signalling the driver as soon as it waits for a
/// completion (EVENT_IDX), and collects the completions that are ready at once; then, while
/// the window is non-zero and no request is in flight in the I/O engine (whose completions
/// arrive through its own fd and are not polled here), keeps polling the available ring;
/// finally re-enables kicks and takes whatever arrived meanwhile. `deliver` signals the driver when a step asks for it and
/// returns false after a fatal error, which ends the call with false.
pub(crate) fn poll_ring(
    handler: &mut BlkQueueHandler,
    state: &mut VringState<GuestMemoryAtomic>,
    mem: &Arc<GuestMemory>,
    poller: &mut Poller,
    deliver: impl Fn(vstor_virtio_blk::Result<bool>, &VringState<GuestMemoryAtomic>) -> bool,
) -> bool {
    let start = Instant::now();
    poller.woke(start);
    let mut polling = !poller.window().is_zero();
    let mut rearm = false;
    let mut waiting_since = None;
    // Early notifications start a waiting driver on another CPU while the batch is
    // processed. A driver that shares this CPU instead preempts the worker as soon as it is
    // signalled (the signal call lasts while it reaps and waits again): for it, notify
    // once per pass for the rest of the turn, so it wakes once per batch rather than once
    // per completion.
    let mut notify = Notify::Early;
    loop {
        let mut more = false;
        let result = if rearm {
            handler.process_queue(state.get_queue_mut(), mem)
        } else {
            let pass = handler.process_queue_polled(state.get_queue_mut(), mem, notify);
            more = matches!(pass, Ok(Polled { more: true, .. }));
            pass.map(|p| p.notify)
        };
        let before = more.then(|| (Instant::now(), used_event(state.get_queue(), mem)));
        if !deliver(result, state) {
            return false;
        }
        if let Some((signalled, event)) = before {
            if signalled.elapsed() > PREEMPTED && event != used_event(state.get_queue(), mem) {
                notify = Notify::AfterPass;
            }
        }
        if more {
            // Signalled early (the driver was waiting); the rest of the ring is next.
            continue;
        }
        if handler.in_flight() > 0 {
            // Page-cache hits and other fast I/O complete while they are submitted: collect
            // them now instead of after another trip through epoll.
            let result = handler.process_completions(state.get_queue_mut(), mem);
            if !deliver(result, state) {
                return false;
            }
        }
        if rearm {
            poller.waiting(waiting_since.unwrap_or_else(Instant::now));
            return true;
        }
        polling &= start.elapsed() < MAX_TURN;
        if polling && handler.in_flight() == 0 {
            let spin_start = Instant::now();
            if spin_until_avail(handler, state, mem, poller.window()) {
                continue;
            }
            waiting_since = Some(spin_start);
        }
        // One more pass re-enables kicks (and takes what raced in).
        rearm = true;
    }
}

/// The driver's `used_event` (VIRTIO 1.2 §2.7.10: after the available ring's entries), or
/// `None` if it cannot be read. It changes when the driver has reaped completions and waits
/// again.
fn used_event(queue: &Queue, mem: &GuestMemory) -> Option<u16> {
    let addr = queue
        .avail_ring()
        .checked_add(4 + 2 * u64::from(queue.size()))?;
    mem.load::<u16>(GuestAddress(addr), Ordering::Acquire).ok()
}

/// Spins until the driver publishes a chain (true) or `window` passes (false).
fn spin_until_avail(
    handler: &BlkQueueHandler,
    state: &VringState<GuestMemoryAtomic>,
    mem: &GuestMemory,
    window: Duration,
) -> bool {
    let since = Instant::now();
    loop {
        for _ in 0..CHECKS_PER_YIELD {
            if handler.avail_pending(state.get_queue(), mem) {
                return true;
            }
            std::hint::spin_loop();
        }
        if since.elapsed() >= window {
            return false;
        }
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(32);

    fn wait(p: &mut Poller, us: u64) {
        let t = Instant::now();
        p.waiting(t);
        p.woke(t + Duration::from_micros(us));
    }

    #[test]
    fn grows_while_events_come_within_the_maximum() {
        let mut p = Poller::new(MAX);
        assert_eq!(p.window(), Duration::ZERO);
        let mut seen = Vec::new();
        for _ in 0..5 {
            wait(&mut p, 20);
            seen.push(p.window().as_micros());
        }
        assert_eq!(seen, [4, 8, 16, 32, 32]);
    }

    #[test]
    fn keeps_the_window_in_the_sweet_spot_and_drops_it_when_idle() {
        let mut p = Poller::new(MAX);
        for _ in 0..3 {
            wait(&mut p, 10);
        }
        assert_eq!(p.window(), Duration::from_micros(16));
        wait(&mut p, 12);
        assert_eq!(p.window(), Duration::from_micros(16));
        wait(&mut p, 5000);
        assert_eq!(p.window(), Duration::ZERO);
    }

    #[test]
    fn zero_maximum_never_polls() {
        let mut p = Poller::new(Duration::ZERO);
        wait(&mut p, 0);
        wait(&mut p, 1);
        assert_eq!(p.window(), Duration::ZERO);
    }

    #[test]
    fn an_event_without_a_wait_changes_nothing() {
        let mut p = Poller::new(MAX);
        p.woke(Instant::now());
        assert_eq!(p.window(), Duration::ZERO);
    }
}
