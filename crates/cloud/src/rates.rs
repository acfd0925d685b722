//! A device's I/O rates over the last minute, from the host sampler's disk readings, as
//! headroom against the limits in force ([`crate::limits`]): the rate of the last interval, the
//! peak of the window, and when the rate reaches the limit at the window's trend. Pure: the
//! caller passes every time.
//!
//! The trend is a least-squares line through the window's per-interval rates; it says "limit
//! within N s" only when the slope is positive and at least twice its standard error, so the
//! per-second jitter of a steady load reads as "not rising" (+Inf), not as a far-off crossing
//! that comes and goes.

use std::collections::VecDeque;

use crate::limits::Limits;
use crate::snapshot::Headroom;

/// The window of the peaks and the trend.
pub const PEAK_WINDOW_SECONDS: f64 = 60.0;
/// Intervals the trend needs before it says anything.
const TREND_MIN_INTERVALS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Interval {
    t_end: f64,
    dt: f64,
    ops: f64,
    bytes: f64,
}

/// The last minute of one device's (or the instance's summed) rates.
#[derive(Debug, Clone, Default)]
pub struct Rates {
    window: VecDeque<Interval>,
}

impl Rates {
    /// `ops` operations (in the limit's unit) and `bytes` over `(t_end − dt, t_end]`. An
    /// interval that does not follow the last one in time (the clock stepped back) starts the
    /// window again.
    pub fn push(&mut self, t_end: f64, dt: f64, ops: f64, bytes: f64) {
        let ok = [t_end, dt, ops, bytes].iter().all(|v| v.is_finite()) && dt > 0.0;
        if !ok {
            return;
        }
        if self.window.back().is_some_and(|l| l.t_end >= t_end) {
            self.window.clear();
        }
        self.window.push_back(Interval {
            t_end,
            dt,
            ops: ops.max(0.0),
            bytes: bytes.max(0.0),
        });
        while self
            .window
            .front()
            .is_some_and(|f| f.t_end <= t_end - PEAK_WINDOW_SECONDS)
        {
            self.window.pop_front();
        }
    }

    /// The rate of the last interval (ops/s, bytes/s).
    pub fn current(&self) -> Option<(f64, f64)> {
        self.window.back().map(|i| (i.ops / i.dt, i.bytes / i.dt))
    }

    /// The headroom against `limits`; `None` before the first interval.
    pub fn headroom(&self, limits: &Limits) -> Option<Headroom> {
        let (iops, bps) = self.current()?;
        let rate = |f: fn(&Interval) -> f64| -> Vec<(f64, f64)> {
            self.window
                .iter()
                .map(|i| (i.t_end - i.dt / 2.0, f(i) / i.dt))
                .collect()
        };
        let ops = rate(|i| i.ops);
        let bytes = rate(|i| i.bytes);
        let peak = |v: &[(f64, f64)]| v.iter().map(|p| p.1).fold(0.0, f64::max);
        Some(Headroom {
            iops,
            iops_limit: limits.iops,
            bytes_per_second: bps,
            bytes_limit: limits.bytes_per_second,
            iops_peak: peak(&ops),
            bytes_per_second_peak: peak(&bytes),
            iops_limit_in_seconds: limit_in(&ops, iops, limits.iops),
            bytes_limit_in_seconds: limit_in(&bytes, bps, limits.bytes_per_second),
        })
    }
}

/// Seconds until the trend of `points` (time, rate) reaches `limit`: 0 at or over it, +Inf
/// while not rising significantly, `None` with too few points.
fn limit_in(points: &[(f64, f64)], current: f64, limit: f64) -> Option<f64> {
    if current >= limit {
        return Some(0.0);
    }
    let n = points.len();
    if n < TREND_MIN_INTERVALS {
        return None;
    }
    let nf = n as f64;
    let mt = points.iter().map(|p| p.0).sum::<f64>() / nf;
    let mr = points.iter().map(|p| p.1).sum::<f64>() / nf;
    let sxx: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - mr)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let residual: f64 = points
        .iter()
        .map(|p| (p.1 - (mr + slope * (p.0 - mt))).powi(2))
        .sum();
    let se = (residual / (nf - 2.0) / sxx).sqrt();
    if slope <= 0.0 || slope < 2.0 * se {
        return Some(f64::INFINITY);
    }
    let last = points[n - 1].0;
    let fitted = mr + slope * (last - mt);
    if fitted >= limit {
        return Some(0.0);
    }
    Some((limit - fitted) / slope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CreditUnit;

    const T0: f64 = 1_700_000_000.0;

    fn limits(iops: f64, bytes: f64) -> Limits {
        Limits {
            iops,
            bytes_per_second: bytes,
            unit: CreditUnit::Io256KiB,
        }
    }

    #[test]
    fn the_last_interval_is_the_rate_and_the_window_keeps_the_peak_of_a_minute() {
        let mut r = Rates::default();
        assert!(r.headroom(&limits(3000.0, 1e8)).is_none());
        r.push(T0 + 1.0, 1.0, 2850.0, 2850.0 * 4096.0);
        let h = r.headroom(&limits(3000.0, 125.0 * 1_048_576.0)).unwrap();
        assert_eq!((h.iops, h.iops_limit), (2850.0, 3000.0));
        assert!((h.iops_ratio() - 0.05).abs() < 1e-12);
        assert!(h.bytes_ratio() > 0.9);
        assert!((h.ratio() - 0.05).abs() < 1e-12);
        assert_eq!(h.iops_limit_in_seconds, None, "one interval: no trend");
        // A quiet second keeps the peak; after a minute the peak is gone.
        r.push(T0 + 2.0, 1.0, 10.0, 0.0);
        let h = r.headroom(&limits(3000.0, 1e8)).unwrap();
        assert_eq!((h.iops, h.iops_peak), (10.0, 2850.0));
        for i in 3..=62 {
            r.push(T0 + f64::from(i), 1.0, 10.0, 0.0);
        }
        assert_eq!(r.headroom(&limits(3000.0, 1e8)).unwrap().iops_peak, 10.0);
        // Intervals of two seconds are rates over two seconds.
        r.push(T0 + 64.0, 2.0, 100.0, 0.0);
        assert_eq!(r.current(), Some((50.0, 0.0)));
    }

    #[test]
    fn a_rising_rate_says_when_it_reaches_the_limit_and_a_steady_one_does_not() {
        let l = limits(3000.0, 1e9);
        let mut r = Rates::default();
        // +20 IOPS every second from 1,000: 3,000 in 100 s from the start.
        for i in 1..=30 {
            r.push(T0 + f64::from(i), 1.0, 1000.0 + 20.0 * f64::from(i), 0.0);
        }
        let eta = r.headroom(&l).unwrap().iops_limit_in_seconds.unwrap();
        // At +30 s the rate is 1,600: 1,400 left at 20 more per second.
        assert!((eta - 70.0).abs() < 1e-6, "{eta}");
        // Steady with jitter: not rising.
        let mut r = Rates::default();
        for i in 1..=60 {
            let jitter = if i % 2 == 0 { 30.0 } else { -30.0 };
            r.push(T0 + f64::from(i), 1.0, 2000.0 + jitter, 0.0);
        }
        let h = r.headroom(&l).unwrap();
        assert_eq!(h.iops_limit_in_seconds, Some(f64::INFINITY));
        assert_eq!(
            h.bytes_limit_in_seconds,
            Some(f64::INFINITY),
            "zero is steady"
        );
        // At the limit: now.
        r.push(T0 + 61.0, 1.0, 3000.0, 0.0);
        assert_eq!(r.headroom(&l).unwrap().iops_limit_in_seconds, Some(0.0));
    }

    #[test]
    fn a_clock_step_back_or_a_bad_interval_does_not_poison_the_window() {
        let mut r = Rates::default();
        r.push(T0 + 10.0, 1.0, 100.0, 0.0);
        r.push(T0 + 10.0, 0.0, 1e12, 0.0);
        r.push(T0 + 11.0, 1.0, f64::NAN, 0.0);
        assert_eq!(r.current(), Some((100.0, 0.0)));
        r.push(T0 + 5.0, 1.0, 7.0, 0.0);
        let h = r.headroom(&limits(100.0, 100.0)).unwrap();
        assert_eq!(
            (h.iops, h.iops_peak),
            (7.0, 7.0),
            "the window started again"
        );
    }
}
