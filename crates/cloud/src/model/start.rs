//! How a bucket gets a level without waiting for CloudWatch: a volume created minutes ago
//! started full and every I/O since is in the kernel's counters ([`Bucket::start_new`]); and
//! the agent's own estimate, saved before a restart within the same boot, is carried over the
//! gap with the I/O the kernel counted meanwhile ([`Bucket::save`], [`Bucket::restore`]).
//!
//! Over an interval whose total usage `U` is known but not its timing, the bounds follow from
//! the two extreme orders (earnings `b·t` at the baseline, clamped at 0 and at the capacity):
//! spending first and earning after is the highest the bucket can end, earning first (and
//! losing what overflows the capacity) and spending after the lowest. The estimate takes the
//! usage as spread evenly, which is exact for a steady load.

use serde::{Deserialize, Serialize};

use super::{Bucket, Step, VolumeType};
use crate::snapshot::EstimateBasis;

/// How much recent history a saved bucket keeps: enough to replay a CloudWatch point that
/// arrives up to 20 minutes late after the restart.
pub const SAVED_HISTORY_SECONDS: f64 = 1_200.0;

/// What is known of the usage between a saved bucket and its restore.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gap {
    /// The device's counters went on: `units` credits used in all, timing unknown.
    Known { units: f64 },
    /// Nothing: the counters went back (the device was attached again, or is another one).
    Unknown,
}

/// A bucket as saved for a restart (JSON), with its recent history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedBucket {
    pub volume_type: String,
    pub size_gib: u64,
    /// Credits: the estimate and its bounds.
    pub balance: f64,
    pub low: f64,
    pub high: f64,
    /// `cloudwatch`, `new_volume` or `restored`; `None`: bounds only.
    pub basis: Option<String>,
    /// Unix time of the last advance.
    pub now: f64,
    pub last_anchor: Option<f64>,
    pub empty: bool,
    /// Recent steps as `[t_end, dt, units]`, oldest first.
    pub history: Vec<[f64; 3]>,
}

fn basis_of(s: &str) -> Option<EstimateBasis> {
    [
        EstimateBasis::CloudWatch,
        EstimateBasis::NewVolume,
        EstimateBasis::Restored,
    ]
    .into_iter()
    .find(|b| b.as_str() == s)
}

impl Bucket {
    /// The volume was created `age_seconds` before `t_unix` with a full bucket, and `units`
    /// credits of I/O were done on it since (the device's counters since it appeared). Starts
    /// the clock at `t_unix` with the estimate between the bounds of that interval.
    pub fn start_new(&mut self, t_unix: f64, age_seconds: f64, units: f64) {
        if !(t_unix.is_finite() && age_seconds.is_finite() && units.is_finite()) {
            return;
        }
        let age = age_seconds.max(0.0);
        let cap = self.perf.capacity;
        let used = units.max(0.0).min(self.perf.burst_per_sec * age);
        self.low = (cap - used).max(0.0);
        self.high = (self.low + self.perf.baseline_per_sec * age).min(cap);
        self.balance = (self.low + self.high) / 2.0;
        self.basis = Some(EstimateBasis::NewVolume);
        self.now = Some(t_unix);
        self.history.clear();
        self.pending_units = 0.0;
        self.latch();
    }

    /// The bucket as it is now, for a restart; `None` before its clock started.
    pub fn save(&self) -> Option<SavedBucket> {
        let now = self.now?;
        Some(SavedBucket {
            volume_type: self.volume_type.as_str().to_string(),
            size_gib: self.size_gib,
            balance: self.balance,
            low: self.low,
            high: self.high,
            basis: self.basis.map(|b| b.as_str().to_string()),
            now,
            last_anchor: self.last_anchor,
            empty: self.empty,
            history: self
                .history
                .iter()
                .filter(|s| s.t_end >= now - SAVED_HISTORY_SECONDS)
                .map(|s| [s.t_end, s.dt, s.units])
                .collect(),
        })
    }

    /// Takes up a saved bucket of the same type and size at `t_unix`, carried over the gap
    /// since it was saved (see the module doc). The clock starts at `t_unix`. False, changing
    /// nothing, when the saved bucket is of another volume shape or from later than `t_unix`.
    pub fn restore(&mut self, saved: &SavedBucket, t_unix: f64, gap: Gap) -> bool {
        let same = VolumeType::parse(&saved.volume_type) == self.volume_type
            && saved.size_gib == self.size_gib;
        let finite = [saved.balance, saved.low, saved.high, saved.now, t_unix]
            .iter()
            .all(|v| v.is_finite());
        if !same || !finite || saved.now > t_unix {
            return false;
        }
        let cap = self.perf.capacity;
        let clamp = |v: f64| v.clamp(0.0, cap);
        let (b, dt) = (self.perf.baseline_per_sec, t_unix - saved.now);
        let (balance, low, high) = (clamp(saved.balance), clamp(saved.low), clamp(saved.high));
        self.history = saved
            .history
            .iter()
            .filter(|[t, dt, u]| t.is_finite() && *dt > 0.0 && u.is_finite() && *t <= saved.now)
            .map(|&[t_end, dt, units]| Step { t_end, dt, units })
            .collect();
        match gap {
            Gap::Known { units } => {
                let used = units.max(0.0).min(self.perf.burst_per_sec * dt);
                self.balance = self.step(balance, used, dt);
                self.low = clamp(clamp(low + b * dt) - used);
                self.high = clamp(clamp(high - used) + b * dt);
                if dt > 0.0 {
                    self.history.push_back(Step {
                        t_end: t_unix,
                        dt,
                        units: used,
                    });
                }
            }
            Gap::Unknown => {
                self.balance = balance;
                self.low = clamp(low - self.max_drain() * dt);
                self.high = clamp(high + b * dt);
                // Usage over the gap is unknown: no replay can cross it.
                self.history.clear();
            }
        }
        self.basis = saved
            .basis
            .as_deref()
            .and_then(basis_of)
            .map(|_| EstimateBasis::Restored);
        self.now = Some(t_unix);
        self.pending_units = 0.0;
        self.last_anchor = saved.last_anchor.filter(|a| a.is_finite());
        self.empty = saved.empty;
        self.latch();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::{GP2_BUCKET_CREDITS, HISTORY_SECONDS};
    use super::*;

    const T0: f64 = 1_700_000_000.0;

    fn gp2(size: u64) -> Bucket {
        Bucket::new(&VolumeType::Gp2, size).expect("gp2 bursts")
    }

    #[test]
    fn a_new_volume_starts_full_less_what_it_spent_within_the_earnings_it_may_have_lost() {
        // 100 GiB: baseline 300/s. Created 60 s ago, 50,000 I/Os since.
        let mut b = gp2(100);
        assert_eq!(b.estimate(), None);
        b.start_new(T0, 60.0, 50_000.0);
        let (lo, hi) = b.bounds_percent();
        let low = GP2_BUCKET_CREDITS - 50_000.0;
        assert!((lo - low / GP2_BUCKET_CREDITS * 100.0).abs() < 1e-9);
        // Spent first, then earned 18,000 back.
        assert!((hi - (low + 18_000.0) / GP2_BUCKET_CREDITS * 100.0).abs() < 1e-9);
        assert_eq!(b.basis(), Some(EstimateBasis::NewVolume));
        let est = b.estimate().expect("an estimate");
        assert!(lo < est && est < hi);
        assert_eq!(b.now(), Some(T0), "the clock starts");
        // Idle afterwards: full within the minute of earnings at most it can be short.
        b.advance(T0 + 200.0, 0, 0);
        assert_eq!(b.percent(), 100.0);
    }

    #[test]
    fn a_restart_carries_the_estimate_over_the_gap_with_the_usage_counted_meanwhile() {
        let mut a = gp2(100);
        a.advance(T0, 0, 0);
        a.anchor(50.0, T0);
        for i in 1..=30 {
            a.advance_units(T0 + f64::from(i), 2_000.0); // 1,700 net per second
        }
        let saved = a.save().expect("clock started");
        // The agent was down 10 s; the counters say 20,000 more units. A steady load: the
        // restored estimate is exactly what the bucket did.
        let mut truth = a.clone();
        for i in 31..=40 {
            truth.advance_units(T0 + f64::from(i), 2_000.0);
        }
        let mut b = gp2(100);
        assert!(b.restore(&saved, T0 + 40.0, Gap::Known { units: 20_000.0 }));
        assert_eq!(b.basis(), Some(EstimateBasis::Restored));
        assert!((b.balance() - truth.balance()).abs() < 1e-6);
        // The bounds collapsed at the anchor stay tight: nothing clamped.
        let (lo, hi) = b.bounds_percent();
        assert!((hi - lo).abs() < 1e-9, "{lo} {hi}");
        // The drain rate is known at once (the history came along).
        assert!((b.drain_rate() - 1_700.0).abs() < 1e-6);
        // A later CloudWatch point from before the restart still replays across it.
        assert!(matches!(
            b.anchor(50.0, T0),
            super::super::Anchor::Applied { gap_seconds, .. } if gap_seconds == 0.0
        ));
        assert!((b.balance() - truth.balance()).abs() < 1e-6);
    }

    #[test]
    fn an_unknown_gap_widens_the_bounds_and_a_foreign_saved_bucket_is_refused() {
        let mut a = gp2(100);
        a.advance(T0, 0, 0);
        a.anchor(50.0, T0);
        let saved = a.save().unwrap();
        let mut b = gp2(100);
        assert!(b.restore(&saved, T0 + 100.0, Gap::Unknown));
        let (lo, hi) = b.bounds_percent();
        // 100 s at most 2,700 net drain or 300 net earnings.
        assert!((lo - (2_700_000.0 - 270_000.0) / GP2_BUCKET_CREDITS * 100.0).abs() < 1e-9);
        assert!((hi - (2_700_000.0 + 30_000.0) / GP2_BUCKET_CREDITS * 100.0).abs() < 1e-9);
        assert_eq!(b.history_seconds(), 0.0);
        // Resized, retyped or from the future: not this bucket's state.
        assert!(!gp2(200).restore(&saved, T0 + 1.0, Gap::Unknown));
        let mut st1 = Bucket::new(&VolumeType::St1, 100).unwrap();
        assert!(!st1.restore(&saved, T0 + 1.0, Gap::Unknown));
        assert!(!gp2(100).restore(&saved, T0 - 1.0, Gap::Unknown));
        // Bounds only before: bounds only after.
        let mut c = gp2(100);
        c.advance(T0, 0, 0);
        let saved = c.save().unwrap();
        let mut d = gp2(100);
        assert!(d.restore(&saved, T0 + 5.0, Gap::Known { units: 0.0 }));
        assert_eq!(d.estimate(), None);
        assert_eq!(
            d.bounds_percent(),
            (0.0 + 1500.0 / GP2_BUCKET_CREDITS * 100.0, 100.0)
        );
    }

    #[test]
    fn a_saved_bucket_keeps_only_recent_history_and_round_trips_through_json() {
        let mut a = gp2(100);
        a.advance(T0, 0, 0);
        let mut t = T0;
        while t < T0 + HISTORY_SECONDS {
            t += 10.0;
            a.advance_units(t, 100.0);
        }
        let saved = a.save().unwrap();
        let span = saved.history.last().unwrap()[0] - saved.history[0][0];
        assert!(span <= SAVED_HISTORY_SECONDS, "{span}");
        let json = serde_json::to_string(&saved).unwrap();
        let back: SavedBucket = serde_json::from_str(&json).unwrap();
        assert_eq!(back, saved);
    }
}
