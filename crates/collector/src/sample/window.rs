//! Between-scrape bookkeeping: a sliding-window maximum and a time-above-threshold integrator.
//! Both are fed by the sampler at every tick and never reset: a scrape only reads them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Maximum of the values pushed within the last `window` (a monotonic deque: amortised O(1)
/// per push, at most one entry per sample in the window).
#[derive(Debug, Clone, Default)]
pub struct WindowMax {
    q: VecDeque<(Instant, f64)>,
}

impl WindowMax {
    pub fn push(&mut self, now: Instant, v: f64, window: Duration) {
        while self.q.back().is_some_and(|&(_, b)| b <= v) {
            self.q.pop_back();
        }
        self.q.push_back((now, v));
        self.expire(now, window);
    }

    /// Drops samples older than `window`.
    pub fn expire(&mut self, now: Instant, window: Duration) {
        while self
            .q
            .front()
            .is_some_and(|&(t, _)| now.saturating_duration_since(t) > window)
        {
            self.q.pop_front();
        }
    }

    /// The window's maximum, `None` when no sample is in the window.
    pub fn max(&self) -> Option<f64> {
        self.q.front().map(|&(_, v)| v)
    }
}

/// Integrates how long a signal stayed above a threshold and counts the episodes (rising
/// edges). Uses the left Riemann sum: the state seen at one sample holds until the next, so a
/// burst seen at a single 1 s sample counts one episode and about one second.
#[derive(Debug, Clone, Default)]
pub struct AboveThreshold {
    last: Option<(Instant, bool)>,
    /// Seconds spent above the threshold, total.
    pub seconds: f64,
    /// Rising edges seen, total.
    pub episodes: u64,
}

impl AboveThreshold {
    /// Records that at `now` the signal was (`above`) or was not above its threshold. Gaps
    /// longer than `max_gap` (a stuck source) are not integrated: we do not know what happened.
    pub fn observe(&mut self, now: Instant, above: bool, max_gap: Duration) {
        if let Some((t, was)) = self.last {
            let dt = now.saturating_duration_since(t);
            if was && dt <= max_gap {
                self.seconds += dt.as_secs_f64();
            }
        }
        if above && !self.last.is_some_and(|(_, was)| was) {
            self.episodes += 1;
        }
        self.last = Some((now, above));
    }
}

/// Integrates a gauge over time (e.g. blocked tasks → task-seconds), left Riemann sum.
#[derive(Debug, Clone, Default)]
pub struct Integral {
    last: Option<(Instant, f64)>,
    /// The integral, in the gauge's unit × seconds.
    pub total: f64,
}

impl Integral {
    pub fn observe(&mut self, now: Instant, v: f64, max_gap: Duration) {
        if let Some((t, prev)) = self.last {
            let dt = now.saturating_duration_since(t);
            if dt <= max_gap {
                self.total += prev * dt.as_secs_f64();
            }
        }
        self.last = Some((now, v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_max_forgets_old_peaks() {
        let t0 = Instant::now();
        let w = Duration::from_secs(60);
        let mut m = WindowMax::default();
        m.push(t0, 5.0, w);
        m.push(t0 + Duration::from_secs(1), 100.0, w);
        m.push(t0 + Duration::from_secs(30), 7.0, w);
        assert_eq!(m.max(), Some(100.0));
        m.push(t0 + Duration::from_secs(62), 3.0, w);
        assert_eq!(m.max(), Some(7.0), "100 fell out of the window");
        m.push(t0 + Duration::from_secs(91), 1.0, w);
        assert_eq!(m.max(), Some(3.0));
        assert_eq!(m.q.len(), 2, "deque stays monotonic");
    }

    #[test]
    fn above_threshold_counts_short_bursts_between_scrapes() {
        let t0 = Instant::now();
        let gap = Duration::from_secs(3);
        let mut a = AboveThreshold::default();
        for (s, above) in [
            (0, false),
            (1, true),
            (2, true),
            (3, false),
            (4, false),
            (5, true),
            (6, false),
        ] {
            a.observe(t0 + Duration::from_secs(s), above, gap);
        }
        assert_eq!(a.episodes, 2);
        assert!((a.seconds - 3.0).abs() < 1e-9, "{}", a.seconds);
    }

    #[test]
    fn above_threshold_skips_gaps_of_a_stuck_source() {
        let t0 = Instant::now();
        let mut a = AboveThreshold::default();
        a.observe(t0, true, Duration::from_secs(2));
        a.observe(t0 + Duration::from_secs(30), true, Duration::from_secs(2));
        assert_eq!(a.seconds, 0.0);
        assert_eq!(a.episodes, 1, "still the same episode");
    }

    #[test]
    fn integral_of_blocked_tasks() {
        let t0 = Instant::now();
        let mut i = Integral::default();
        i.observe(t0, 2.0, Duration::from_secs(5));
        i.observe(t0 + Duration::from_secs(1), 4.0, Duration::from_secs(5));
        i.observe(t0 + Duration::from_secs(3), 0.0, Duration::from_secs(5));
        assert!((i.total - (2.0 + 8.0)).abs() < 1e-9);
    }
}
