//! The local EBS credit-bucket model: pure arithmetic, no I/O, no clock reads (the caller passes
//! every timestamp), so it is deterministic and property-tested.
//!
//! # Facts (AWS documentation, checked for this module)
//!
//! - gp2 (EBS User Guide, "General Purpose SSD volumes", gp2 section,
//!   <https://docs.aws.amazon.com/ebs/latest/userguide/general-purpose.html>): baseline 3 IOPS per
//!   GiB, at least 100 and at most 16,000; volumes below 1 TiB burst to 3,000 IOPS; every volume
//!   starts with, and its bucket holds at most, 5.4 million I/O credits ("enough to sustain the
//!   maximum burst performance of 3,000 IOPS for 30 minutes"). Credits are earned at the baseline
//!   rate and spent one per I/O, so the net change is `baseline − used` per second in both
//!   directions (earning more than is spent adds the difference; the bucket is clamped to
//!   `[0, 5.4 M]`). When the bucket is empty the volume is held to its baseline.
//! - I/O size (AWS knowledge center "How does Amazon EBS calculate the optimal I/O size…",
//!   <https://repost.aws/knowledge-center/ebs-calculate-optimal-io-size>): on SSD volumes an I/O
//!   is counted in units of up to 256 KiB (a 500 KiB I/O counts as 2); sequential I/O of 32 KiB or
//!   more may be merged by EBS into one 256 KiB unit.
//! - st1 and sc1 ("Throughput Optimized HDD and Cold HDD volumes",
//!   <https://docs.aws.amazon.com/ebs/latest/userguide/hdd-vols.html>): a burst bucket of throughput
//!   credits. st1: baseline 40 MiB/s per TiB (at most 500), burst 250 MiB/s per TiB (at most 500);
//!   sc1: baseline 12 MiB/s per TiB (at most 192), burst 80 MiB/s per TiB (at most 250); the bucket
//!   holds 1 TiB of credits per TiB of volume size. An HDD I/O of 1 MiB or less counts as 1 MiB.
//! - CloudWatch `BurstBalance` (EBS CloudWatch metrics): gp2, st1 and sc1 only; "for a volume
//!   1 TiB or larger, baseline performance is higher than maximum burst performance, so I/O
//!   credits are never spent" and on Nitro the balance is not reported. gp3, io1, io2 and
//!   standard have no bucket.
//!
//! # Decisions
//!
//! - Credit units from `/proc/diskstats` deltas, see [`CreditUnit::units`].
//! - [`VolumeType::has_burst_balance`] and [`Bucket::new`] answer the same question with one rule
//!   (gp2 below 1 TiB = 1024 GiB, st1 and sc1 of any non-zero size). A gp2 of 1000–1023 GiB has
//!   a baseline of 3,000–3,069 IOPS, so its bucket exists but can never drain (usage is clamped to
//!   the burst rate, which is then the baseline); likewise st1 from 12.5 TiB (baseline = burst =
//!   500 MiB/s). CloudWatch may or may not publish BurstBalance for those: asking costs one
//!   metric and a missing series is harmless.
//! - Usage measured above the burst rate is clamped to it: the volume cannot deliver more, so a
//!   higher measurement means EBS merged I/O we counted separately.
//! - A new bucket's level is unknown: it has bounds (empty and full) but no estimate until a
//!   CloudWatch point anchors it, the volume turns out to be minutes old (it started full,
//!   [`Bucket::start_new`]), or the agent's own estimate from before a restart is carried over
//!   ([`Bucket::restore`]).

use std::collections::VecDeque;

use crate::snapshot::EstimateBasis;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// gp2 bucket size and initial balance, in I/O credits.
pub const GP2_BUCKET_CREDITS: f64 = 5_400_000.0;
/// gp2 burst rate (IOPS) for volumes below 1 TiB.
pub const GP2_BURST_IOPS: f64 = 3_000.0;
/// gp2 baseline floor and ceiling (IOPS).
pub const GP2_MIN_BASELINE_IOPS: f64 = 100.0;
pub const GP2_MAX_BASELINE_IOPS: f64 = 16_000.0;
/// I/O accounting unit on SSD volumes.
pub const SSD_IO_UNIT_BYTES: u64 = 256 * KIB;
/// I/O accounting unit on HDD volumes.
pub const HDD_IO_UNIT_BYTES: u64 = MIB;
/// How far back [`Bucket::anchor`] can replay: CloudWatch points arrive 5–15 minutes late, so two
/// hours is ample; a point older than that is anchored at the start of the history.
pub const HISTORY_SECONDS: f64 = 7_200.0;
/// Hard cap on recorded steps (24 bytes each, ≤ 192 KiB per volume). At the agent's 1 s cadence
/// the age limit binds first; a caller advancing faster gets a shorter replay horizon.
pub const HISTORY_MAX_STEPS: usize = 8_192;
/// Window of the drain rate behind [`Bucket::seconds_to_empty`].
pub const DRAIN_WINDOW_SECONDS: f64 = 60.0;

mod kinds;
pub use kinds::{CreditUnit, Performance, VolumeType};

/// One recorded interval of usage: `units` credits used over `(t_end − dt, t_end]`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Step {
    t_end: f64,
    dt: f64,
    units: f64,
}

/// What [`Bucket::anchor`] did with a point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Anchor {
    /// The balance was set at the point's time and `steps` recorded steps were replayed to now.
    /// `gap_seconds > 0` when the point precedes the recorded history (at start-up, or older
    /// than [`HISTORY_SECONDS`]): the balance was carried over that gap at the rate given to
    /// [`Bucket::anchor_with`] (0 by default), and the bounds widened by what the volume could
    /// have spent or earned in it.
    Applied { steps: usize, gap_seconds: f64 },
    /// The point is later than the last [`Bucket::advance`] (clock skew, or no advance yet): it
    /// was taken as the balance now.
    Future { ahead_seconds: f64 },
    /// Ignored: older than the last applied point (a newer point is better information).
    Superseded,
    /// Ignored: percent or time not finite.
    Invalid,
}

/// The credit bucket of one gp2/st1/sc1 volume, integrated from local I/O and re-anchored to
/// CloudWatch `BurstBalance`.
///
/// Besides the estimate, the bucket carries **bounds**: the lowest and highest level the bucket
/// can be at given the usage seen. They start at empty and full; every step moves both by the
/// same rule as the estimate, and since a step never reverses the order of two levels (the net
/// change is the same, the clamp at 0 and at the capacity is monotone) the true level stays
/// between them. A drain pulls the upper bound down long before any CloudWatch point, so "empty
/// within N minutes" can be said from the bound alone; an anchor on a minute the model saw whole
/// closes them onto the estimate.
#[derive(Debug, Clone)]
pub struct Bucket {
    volume_type: VolumeType,
    size_gib: u64,
    perf: Performance,
    balance: f64,
    low: f64,
    high: f64,
    basis: Option<EstimateBasis>,
    /// Time of the last [`Bucket::advance`]; `None` until the first one starts the clock.
    now: Option<f64>,
    /// Units seen in calls with no elapsed time, charged to the next interval.
    pending_units: f64,
    history: VecDeque<Step>,
    last_anchor: Option<f64>,
    /// The reported level reached 0: [`Bucket::seconds_to_empty`] says 0 until the bucket holds
    /// a minute of baseline earnings again. Held at its baseline, an empty volume's usage and
    /// earnings cancel out to within the jitter of a second's counters, and without the latch
    /// the answer flickered between 0 and a few seconds (once 18–33 s) for about 80 s.
    empty: bool,
}

impl Bucket {
    /// A bucket whose level is unknown: bounds 0 and full, no estimate until
    /// [`Bucket::anchor`], [`Bucket::start_new`] or a restore gives it a basis. `None` when the
    /// volume cannot burst (see [`VolumeType::has_burst_balance`]).
    pub fn new(volume_type: &VolumeType, size_gib: u64) -> Option<Bucket> {
        if !volume_type.has_burst_balance(size_gib) {
            return None;
        }
        let perf = volume_type.performance(size_gib)?;
        Some(Bucket {
            volume_type: volume_type.clone(),
            size_gib,
            perf,
            balance: perf.capacity,
            low: 0.0,
            high: perf.capacity,
            basis: None,
            now: None,
            pending_units: 0.0,
            history: VecDeque::new(),
            last_anchor: None,
            empty: false,
        })
    }

    /// The same bucket after an in-place resize, when the bucket itself stays: gp2 holds 5.4 M
    /// credits at any size below 1 TiB, only the baseline changes. `None` otherwise (another
    /// type, an HDD bucket whose size follows the volume's, a size that no longer bursts).
    /// History recorded before the resize replays at the new baseline.
    pub fn resized(&self, vt: &VolumeType, size_gib: u64) -> Option<Bucket> {
        if *vt != self.volume_type || *vt != VolumeType::Gp2 || !vt.has_burst_balance(size_gib) {
            return None;
        }
        let mut b = self.clone();
        b.perf = vt.performance(size_gib)?;
        b.size_gib = size_gib;
        Some(b)
    }

    pub fn volume_type(&self) -> &VolumeType {
        &self.volume_type
    }
    pub fn size_gib(&self) -> u64 {
        self.size_gib
    }
    pub fn unit(&self) -> CreditUnit {
        self.perf.unit
    }
    /// Bucket size in credits ([`CreditUnit`]).
    pub fn capacity(&self) -> f64 {
        self.perf.capacity
    }
    /// Credits earned per second (IOPS for gp2, MiB/s for st1/sc1).
    pub fn baseline_per_sec(&self) -> f64 {
        self.perf.baseline_per_sec
    }
    /// The most the volume delivers per second while it has credits.
    pub fn burst_per_sec(&self) -> f64 {
        self.perf.burst_per_sec
    }
    /// Credits in the bucket now (the estimate; the initial full guess while there is no
    /// basis).
    pub fn balance(&self) -> f64 {
        self.balance
    }
    /// Balance as a percentage of capacity, like CloudWatch `BurstBalance`.
    pub fn percent(&self) -> f64 {
        self.balance / self.perf.capacity * 100.0
    }
    /// What the estimate rests on; `None`: there is no estimate, only bounds.
    pub fn basis(&self) -> Option<EstimateBasis> {
        self.basis
    }
    /// The estimate in percent, when it has a basis.
    pub fn estimate(&self) -> Option<f64> {
        self.basis.map(|_| self.percent())
    }
    /// The lowest and highest level the bucket can be at, percent.
    pub fn bounds_percent(&self) -> (f64, f64) {
        let c = self.perf.capacity;
        (self.low / c * 100.0, self.high / c * 100.0)
    }
    /// Time of the last [`Bucket::advance`].
    pub fn now(&self) -> Option<f64> {
        self.now
    }
    /// Time of the last applied CloudWatch point.
    pub fn last_anchor(&self) -> Option<f64> {
        self.last_anchor
    }
    /// How many seconds of usage are recorded for replay.
    pub fn history_seconds(&self) -> f64 {
        match (self.history.front(), self.now) {
            (Some(first), Some(now)) => now - (first.t_end - first.dt),
            _ => 0.0,
        }
    }

    /// Feeds the device's completed read+write `ops` and `bytes` since the previous call, at time
    /// `t_unix` (seconds). The first call only starts the clock (its deltas have no interval).
    /// A call at the same time as the previous one carries its usage into the next interval; a
    /// time earlier than the previous one (the wall clock stepped back) restarts the clock and
    /// forgets the history, since recorded times no longer compare with CloudWatch's.
    pub fn advance(&mut self, t_unix: f64, ops: u64, bytes: u64) {
        let units = self.perf.unit.units(ops, bytes);
        self.advance_units(t_unix, units);
    }

    /// [`Bucket::advance`] with usage already in credits.
    pub fn advance_units(&mut self, t_unix: f64, units: f64) {
        if !t_unix.is_finite() {
            return;
        }
        let units = if units.is_finite() && units > 0.0 {
            units
        } else {
            0.0
        };
        let Some(now) = self.now else {
            self.now = Some(t_unix);
            return;
        };
        let dt = t_unix - now;
        if dt <= 0.0 {
            self.pending_units += units;
            if dt < 0.0 {
                self.history.clear();
                self.now = Some(t_unix);
                // Anchors are compared on the new time axis from now on.
                self.last_anchor = self.last_anchor.map(|a| a.min(t_unix));
            }
            return;
        }
        let units = units + std::mem::take(&mut self.pending_units);
        self.balance = self.step(self.balance, units, dt);
        self.low = self.step(self.low, units, dt);
        self.high = self.step(self.high, units, dt);
        self.now = Some(t_unix);
        self.record(Step {
            t_end: t_unix,
            dt,
            units,
        });
        self.latch();
    }

    fn record(&mut self, s: Step) {
        self.history.push_back(s);
        let oldest = s.t_end - HISTORY_SECONDS;
        while self.history.len() > HISTORY_MAX_STEPS
            || self.history.front().is_some_and(|s| s.t_end < oldest)
        {
            self.history.pop_front();
        }
    }

    /// One interval at constant usage: exact for piecewise-constant usage, because a linear
    /// trajectory that reaches 0 or the capacity stays there for the rest of the interval.
    fn step(&self, balance: f64, units: f64, dt: f64) -> f64 {
        let used = units.min(self.perf.burst_per_sec * dt);
        // Net first: usage at or below the baseline can then never lower the balance by rounding.
        (balance + (self.perf.baseline_per_sec * dt - used)).clamp(0.0, self.perf.capacity)
    }

    /// The most the bucket can lose (positive) or gain per second.
    fn max_drain(&self) -> f64 {
        (self.perf.burst_per_sec - self.perf.baseline_per_sec).max(0.0)
    }

    /// The level [`Bucket::seconds_to_empty`] speaks of: the estimate, else the upper bound (the
    /// latest the bucket can empty).
    fn level(&self) -> f64 {
        if self.basis.is_some() {
            self.balance
        } else {
            self.high
        }
    }

    fn latch(&mut self) {
        let level = self.level();
        if level <= 0.0 {
            self.empty = true;
        } else if level > self.perf.baseline_per_sec * DRAIN_WINDOW_SECONDS {
            self.empty = false;
        }
    }

    /// A CloudWatch `BurstBalance` point says the bucket held `percent` at `at_unix`: set the
    /// balance then and replay the usage recorded since to now. [`Bucket::anchor_with`] with no
    /// net change assumed over a gap before the history.
    pub fn anchor(&mut self, percent: f64, at_unix: f64) -> Anchor {
        self.anchor_with(percent, at_unix, 0.0)
    }

    /// [`Bucket::anchor`], carrying the balance over a gap between the point and the recorded
    /// history at `gap_net` credits per second (positive: refilling; the CloudWatch trend before
    /// the point, say), clipped to what the volume can do. The bounds at the end of the gap are
    /// what the volume could reach from the point at its most draining and its most idle.
    ///
    /// Points older than the last applied one are ignored; a point after the last advance is
    /// taken as now. For a per-minute average use [`Bucket::anchor_period_average`].
    pub fn anchor_with(&mut self, percent: f64, at_unix: f64, gap_net: f64) -> Anchor {
        if !percent.is_finite() || !at_unix.is_finite() {
            return Anchor::Invalid;
        }
        if self.last_anchor.is_some_and(|last| at_unix < last) {
            return Anchor::Superseded;
        }
        let cap = self.perf.capacity;
        let value = (percent / 100.0 * cap).clamp(0.0, cap);
        self.basis = Some(EstimateBasis::CloudWatch);
        let Some(now) = self.now.filter(|&now| at_unix <= now) else {
            (self.balance, self.low, self.high) = (value, value, value);
            let ahead = self.now.map_or(0.0, |now| at_unix - now);
            // Keep later points comparable: never record an anchor ahead of our clock.
            self.last_anchor = Some(self.now.unwrap_or(at_unix));
            self.latch();
            return Anchor::Future {
                ahead_seconds: ahead,
            };
        };
        let history_start = self.history.front().map_or(now, |s| s.t_end - s.dt);
        let from = at_unix.max(history_start);
        let gap = (history_start - at_unix).max(0.0);
        let net = if gap_net.is_finite() {
            gap_net.clamp(-self.max_drain(), self.perf.baseline_per_sec)
        } else {
            0.0
        };
        let mut balance = (value + net * gap).clamp(0.0, cap);
        let mut low = (value - self.max_drain() * gap).clamp(0.0, cap);
        let mut high = (value + self.perf.baseline_per_sec * gap).clamp(0.0, cap);
        let mut steps = 0;
        for s in self.history.iter().filter(|s| s.t_end > from) {
            let start = s.t_end - s.dt;
            // The point may fall inside this step: replay its later part, usage pro rata.
            let f = if start >= from {
                1.0
            } else {
                (s.t_end - from) / s.dt
            };
            let (u, dt) = (s.units * f, s.dt * f);
            balance = self.step(balance, u, dt);
            low = self.step(low, u, dt);
            high = self.step(high, u, dt);
            steps += 1;
        }
        (self.balance, self.low, self.high) = (balance, low, high);
        self.last_anchor = Some(at_unix);
        self.latch();
        Anchor::Applied {
            steps,
            gap_seconds: gap,
        }
    }

    /// [`Bucket::anchor_period_average_with`] with no net change assumed where the history
    /// does not reach.
    pub fn anchor_period_average(
        &mut self,
        percent: f64,
        period_start: f64,
        period_seconds: f64,
    ) -> Anchor {
        self.anchor_period_average_with(percent, period_start, period_seconds, 0.0)
    }

    /// Anchors a CloudWatch datapoint that is the *average* of the balance over
    /// `[period_start, period_start + period_seconds)` (GetMetricData timestamps are period
    /// starts; `BurstBalance` is a per-minute average).
    ///
    /// When the recorded history reaches the end of the period, the balance at `period_start`
    /// is solved for: with the usage we recorded, the balance at time t in the period is
    /// `B + C(t)` (C the net credits earned since the start), so its average is
    /// `B + mean(C)` and `B = average − mean(C)`. Any part of the period before the recorded
    /// history (the agent started inside that minute) is taken at `gap_net` credits per second,
    /// the same assumption [`Bucket::anchor_with`] makes for a point before the history. This
    /// matters when a load starts or stops inside the minute: the trajectory is then not a
    /// straight line, and taking the average as the midpoint's value (the fallback when the
    /// history does not cover the period) is off by up to what the bucket moves in half a
    /// minute — measured in the early-warning test as a lasting 0.17-point error. Hitting 0 or
    /// full inside the period is ignored (the clamp makes the true average a little higher or
    /// lower than `B + mean(C)`).
    pub fn anchor_period_average_with(
        &mut self,
        percent: f64,
        period_start: f64,
        period_seconds: f64,
        gap_net: f64,
    ) -> Anchor {
        if !percent.is_finite() || !period_start.is_finite() {
            return Anchor::Invalid;
        }
        if !(period_seconds.is_finite() && period_seconds > 0.0) {
            return self.anchor_with(percent, period_start, gap_net);
        }
        let end = period_start + period_seconds;
        let covered = !self.history.is_empty() && self.now.is_some_and(|now| now >= end);
        if !covered {
            return self.anchor_with(percent, period_start + period_seconds / 2.0, gap_net);
        }
        let gap_rate = if gap_net.is_finite() {
            gap_net.clamp(-self.max_drain(), self.perf.baseline_per_sec)
        } else {
            0.0
        };
        // ∫ C(t) dt over the period, C piecewise linear (constant net rate per segment): first
        // the part before the history at the gap's rate, then each recorded step.
        let history_start = self.history.front().map_or(end, |s| s.t_end - s.dt);
        let before = (history_start.min(end) - period_start).max(0.0);
        let segments = std::iter::once((period_start, period_start + before, gap_rate)).chain(
            self.history.iter().map(|st| {
                let rate =
                    self.perf.baseline_per_sec - (st.units / st.dt).min(self.perf.burst_per_sec);
                (st.t_end - st.dt, st.t_end, rate)
            }),
        );
        let mut c = 0.0;
        let mut integral = 0.0;
        for (a, b, rate) in segments {
            let (a, b) = (a.max(period_start), b.min(end));
            if b <= a {
                continue;
            }
            let w = b - a;
            integral += c * w + rate * w * w / 2.0;
            c += rate * w;
        }
        let mean_c = integral / period_seconds;
        let avg = percent / 100.0 * self.perf.capacity;
        let start_percent = (avg - mean_c) / self.perf.capacity * 100.0;
        self.anchor_with(start_percent.clamp(0.0, 100.0), period_start, gap_net)
    }

    /// Net credits drained per second over the last [`DRAIN_WINDOW_SECONDS`] (positive while
    /// draining, negative while refilling; 0 with no recorded interval).
    ///
    /// A sliding window rather than an EWMA: under a constant load it reaches the exact rate
    /// once the window has passed (an EWMA only approaches it), a burst leaves the window
    /// entirely after 60 s instead of decaying forever, and it costs one pass over the last
    /// ~60 recorded steps that the history keeps anyway. 60 s smooths the per-second jitter of
    /// diskstats while following a new load within a minute.
    pub fn drain_rate(&self) -> f64 {
        let mut used = 0.0;
        let mut span = 0.0;
        for s in self.history.iter().rev() {
            let left = DRAIN_WINDOW_SECONDS - span;
            if left <= 0.0 {
                break;
            }
            let f = if s.dt > left { left / s.dt } else { 1.0 };
            used += (s.units * f).min(self.perf.burst_per_sec * s.dt * f);
            span += s.dt * f;
        }
        if span <= 0.0 {
            return 0.0;
        }
        let net = used / span - self.perf.baseline_per_sec;
        // Usage exactly at the baseline must read as "not draining", not as ±1 ulp of drain.
        if net.abs() <= 1e-9 * self.perf.baseline_per_sec {
            0.0
        } else {
            net
        }
    }

    /// Seconds until the bucket is empty at the recent drain rate ([`Bucket::drain_rate`]):
    /// `f64::INFINITY` when not draining, `0` once empty and until it holds a minute of baseline
    /// earnings again (the volume is then held to its baseline, so its usage no longer drains
    /// the bucket, yet "empty" is the answer that matters). Without a basis it is the latest
    /// the bucket can empty: from the upper bound.
    pub fn seconds_to_empty(&self) -> f64 {
        let level = self.level();
        if level <= 0.0 || self.empty {
            return 0.0;
        }
        let rate = self.drain_rate();
        if rate > 0.0 {
            level / rate
        } else {
            f64::INFINITY
        }
    }
}

mod start;
pub use start::{Gap, SavedBucket};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
