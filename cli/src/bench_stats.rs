//! Latency histogram and per-run counters for `vstor bench`.
//!
//! The histogram is log-linear (HDR style): values below 64 ns have their own bucket, above that
//! every power of two is split into 32 sub-buckets, so a reported percentile is within ~3 % of
//! the true value while recording costs one `leading_zeros` and one increment — cheap enough for
//! the I/O loop, and bounded in memory however long the run is.

use std::time::Duration;

/// Sub-buckets per power of two, as a shift (32 sub-buckets).
const SUB_BITS: u32 = 5;
/// Values below this are recorded exactly.
const LINEAR_LIMIT: u64 = 2 << SUB_BITS;
/// Enough buckets for any `u64` nanosecond value.
const BUCKETS: usize = ((64 - SUB_BITS as usize) << SUB_BITS) + (1 << SUB_BITS);

/// A latency histogram in nanoseconds.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }
}

/// Maps a value to its bucket.
fn bucket_of(v: u64) -> usize {
    if v < LINEAR_LIMIT {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS + 1
    let shift = exp - SUB_BITS;
    ((shift as usize) << SUB_BITS) + (v >> shift) as usize
}

/// The smallest value that maps to `bucket` and the width of the bucket.
fn bucket_range(bucket: usize) -> (u64, u64) {
    if (bucket as u64) < LINEAR_LIMIT {
        return (bucket as u64, 1);
    }
    let shift = (bucket >> SUB_BITS) as u32 - 1;
    let mantissa = (bucket as u64 & ((1 << SUB_BITS) - 1)) | (1 << SUB_BITS);
    (mantissa << shift, 1 << shift)
}

impl Histogram {
    /// Records one latency.
    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.counts[bucket_of(ns)] += 1;
        self.total += 1;
        self.sum_ns += u128::from(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Adds every sample of `other` to `self`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.sum_ns += other.sum_ns;
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// The value below which `pct` percent of the samples fall (bucket midpoint, clamped to the
    /// observed min/max), or zero without samples.
    pub fn percentile(&self, pct: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = ((pct / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (low, width) = bucket_range(bucket);
                let mid = low + width / 2;
                return Duration::from_nanos(mid.clamp(self.min_ns, self.max_ns));
            }
        }
        Duration::from_nanos(self.max_ns)
    }

    /// Mean latency, or zero without samples.
    pub fn mean(&self) -> Duration {
        match u64::try_from(self.sum_ns / u128::from(self.total.max(1))) {
            Ok(ns) => Duration::from_nanos(ns),
            Err(_) => Duration::MAX,
        }
    }

    /// Smallest sample, or zero without samples.
    pub fn min(&self) -> Duration {
        if self.total == 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(self.min_ns)
        }
    }

    /// Largest sample.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns)
    }
}

/// What one queue did during the timed phase.
#[derive(Clone, Default)]
pub struct QueueStats {
    /// Completed reads.
    pub reads: u64,
    /// Completed writes.
    pub writes: u64,
    /// Bytes moved by completed reads and writes.
    pub bytes: u64,
    /// Reads whose data was checked against the verify pattern.
    pub verified: u64,
    /// Submission-to-completion latency of every completed request.
    pub latency: Histogram,
}

impl QueueStats {
    /// Adds `other` to `self`.
    pub fn merge(&mut self, other: &QueueStats) {
        self.reads += other.reads;
        self.writes += other.writes;
        self.bytes += other.bytes;
        self.verified += other.verified;
        self.latency.merge(&other.latency);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_their_values() {
        let mut last = 0;
        for v in (0..5000u64).chain([1 << 20, (1 << 20) + 12345, u64::MAX / 3, u64::MAX]) {
            let b = bucket_of(v);
            assert!(b < BUCKETS, "{v} -> {b}");
            assert!(b >= last || v >= 5000);
            last = b;
            let (low, width) = bucket_range(b);
            assert!(
                low <= v && v - low < width,
                "{v}: bucket {b} = [{low}, +{width})"
            );
        }
    }

    #[test]
    fn percentiles_are_close() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v * 10);
        }
        for (p, want) in [(50.0, 500_000.0), (99.0, 990_000.0), (99.9, 999_000.0)] {
            let got = h.percentile(p).as_nanos() as f64;
            assert!((got - want).abs() / want < 0.03, "p{p}: {got} vs {want}");
        }
        assert_eq!(h.min(), Duration::from_nanos(10));
        assert_eq!(h.max(), Duration::from_nanos(1_000_000));
        let mut merged = Histogram::default();
        merged.merge(&h);
        merged.merge(&h);
        assert_eq!(merged.total, 200_000);
        assert_eq!(merged.percentile(50.0), h.percentile(50.0));
    }

    #[test]
    fn empty_histogram_reports_zero() {
        let h = Histogram::default();
        assert_eq!(h.percentile(99.0), Duration::ZERO);
        assert_eq!(h.mean(), Duration::ZERO);
        assert_eq!(h.min(), Duration::ZERO);
    }
}
