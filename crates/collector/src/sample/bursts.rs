//! Writeback bursts, pure: a burst is writeback over the threshold by EITHER of two readings,
//! so that one shorter than a sample still counts.
//!
//! - The level: meminfo `Writeback` above the threshold at a sample. A slow flush (seconds of
//!   Writeback on a throttled or credit-starved volume) shows here.
//! - The amount: more than the threshold written back (vmstat `nr_written` × page size) between
//!   two vmstat samples. On a fast disk a 400 MiB fsync is over in ~50–400 ms (measured here on
//!   an in-memory loop device): Writeback rises and falls between two 1 s samples and the level
//!   never shows it, but the pages it wrote are in the next sample's `nr_written`.
//!
//! The two are one condition (their OR), integrated by one [`AboveThreshold`]: a burst seen by
//! both is one episode, and a sample that wrote more than the threshold counts about one
//! sampler interval of burst time. A steady writer faster than threshold per interval (64 MiB/s
//! at the defaults) is one long burst for as long as it lasts: by this definition it is one.

use std::time::{Duration, Instant};

use crate::sample::window::AboveThreshold;

#[derive(Debug, Clone, Default)]
pub struct Bursts {
    /// Episodes and seconds of the OR condition.
    pub burst: AboveThreshold,
    level_over: bool,
    written_over: bool,
    /// The last `nr_written` (pages) and when it was read.
    written: Option<(Instant, u64)>,
}

impl Bursts {
    /// A meminfo reading at `at`: `writeback` bytes now. `threshold`: bytes (`None` while it
    /// cannot be resolved, e.g. a share of a background threshold not read yet).
    pub fn level(&mut self, at: Instant, writeback: u64, threshold: Option<u64>, gap: Duration) {
        if let Some(t) = threshold {
            self.level_over = writeback > t;
            self.observe(at, gap);
        }
    }

    /// A vmstat reading at `at`: `nr_written` pages since boot. Returns the bytes written back
    /// per second since the previous reading: `None` without one, after a gap longer than
    /// `gap` (a stuck read), or when the counter went backwards.
    pub fn written(
        &mut self,
        at: Instant,
        nr_written: Option<u64>,
        page_bytes: u64,
        threshold: Option<u64>,
        gap: Duration,
    ) -> Option<f64> {
        let bytes = match (self.written, nr_written) {
            (Some((t0, n0)), Some(n)) => {
                let dt = at.saturating_duration_since(t0);
                (n >= n0 && !dt.is_zero() && dt <= gap)
                    .then(|| ((n - n0).saturating_mul(page_bytes), dt))
            }
            _ => None,
        };
        self.written = nr_written.map(|n| (at, n));
        if let Some(t) = threshold {
            self.written_over = bytes.is_some_and(|(b, _)| b > t);
            self.observe(at, gap);
        }
        bytes.map(|(b, dt)| b as f64 / dt.as_secs_f64())
    }

    /// The vmstat source is gone: forget its half.
    pub fn forget_written(&mut self) {
        self.written = None;
        self.written_over = false;
    }

    fn observe(&mut self, at: Instant, gap: Duration) {
        let over = self.level_over || self.written_over;
        self.burst.observe(at, over, gap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const PAGE: u64 = 4096;
    const GAP: Duration = Duration::from_secs(5);

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_flush_between_two_samples_is_one_burst_of_about_one_interval() {
        let t0 = Instant::now();
        let t = Some(64 * MIB);
        let mut b = Bursts::default();
        let pages = |mib: u64| Some(1_000_000 + mib * MIB / PAGE);
        // 1 s ticks: meminfo first, then vmstat. Writeback is 0 at every sample; 400 MiB are
        // written between 1 s and 2 s.
        for (s, written) in [(0, 0), (1, 0), (2, 400), (3, 400), (4, 400)] {
            b.level(ms(t0, s * 1000), 0, t, GAP);
            let rate = b.written(ms(t0, s * 1000 + 1), pages(written), PAGE, t, GAP);
            if s == 2 {
                let r = rate.unwrap();
                assert!((r - 400.0 * MIB as f64 / 1.0).abs() < 1e6, "{r}");
            }
        }
        assert_eq!(b.burst.episodes, 1);
        assert!(
            (b.burst.seconds - 1.0).abs() < 0.01,
            "{} s: one interval",
            b.burst.seconds
        );
    }

    #[test]
    fn level_and_amount_together_are_one_episode() {
        let t0 = Instant::now();
        let t = Some(64 * MIB);
        let mut b = Bursts::default();
        let mut n = 0;
        // A slow flush: Writeback high for 3 samples while ~100 MiB a second are written.
        for s in 0..6u64 {
            let busy = (1..=3).contains(&s);
            b.level(ms(t0, s * 1000), if busy { 200 * MIB } else { 0 }, t, GAP);
            if busy {
                n += 100 * MIB / PAGE;
            }
            b.written(ms(t0, s * 1000 + 1), Some(n), PAGE, t, GAP);
        }
        assert_eq!(b.burst.episodes, 1);
        assert!(
            b.burst.seconds > 2.9 && b.burst.seconds < 3.1,
            "{}",
            b.burst.seconds
        );
    }

    #[test]
    fn small_writes_gaps_and_no_threshold_are_no_burst() {
        let t0 = Instant::now();
        let mut b = Bursts::default();
        // 10 MiB a second: under 64 MiB.
        for s in 0..4u64 {
            let n = Some(s * 10 * MIB / PAGE);
            b.written(ms(t0, s * 1000), n, PAGE, Some(64 * MIB), GAP);
        }
        assert_eq!(b.burst.episodes, 0);
        // 1 GiB over a 30 s gap (a stuck read): not a rate, not a burst.
        let r = b.written(ms(t0, 33_000), Some(1 << 30), PAGE, Some(64 * MIB), GAP);
        assert_eq!((r, b.burst.episodes), (None, 0));
        // Counter backwards: no rate.
        assert_eq!(b.written(ms(t0, 34_000), Some(0), PAGE, None, GAP), None);
        // No threshold: the rate is still measured, nothing is counted.
        let r = b.written(ms(t0, 35_000), Some(1 << 20), PAGE, None, GAP);
        assert!(r.is_some_and(|r| r > 0.0));
        assert_eq!(b.burst.episodes, 0);
    }
}
