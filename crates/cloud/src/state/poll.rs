//! Poll: what to ask CloudWatch, its answers, and when to ask again.
//!
//! One GetMetricData poll asks everything at once (batched by 500): BurstBalance of the volumes
//! that have one, the instance's balances, every attached volume's three 1-minute checks under
//! `{InstanceId, VolumeId}` and the instance's two EBS checks. Polls come every
//! `poll_interval`; every `fast_poll_interval` while the estimate needs CloudWatch soon (a
//! followed bucket not yet anchored, at most [`UNANCHORED_FAST_SECONDS`]; a bucket that
//! empties within `fast_poll_empty_within`; a balance below `fast_poll_below_percent`); at once
//! when the plan asks a series the last poll did not.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{faster, Failure, State, POINT_PERIOD_SECONDS};
use crate::cloudwatch::{Points, Series};
use crate::config::{backoff, CloudConfig};
use crate::model::{Anchor, Bucket, VolumeType};
use crate::snapshot::{
    Api, BalancePoint, CheckPoint, EstimateBasis, InstanceBalance, InstanceCheck, Outcome,
    VolumeCheck,
};

/// How long a followed bucket without a CloudWatch point is polled for fast: CloudWatch has a
/// volume's first points within minutes if it publishes them at all; a volume it never
/// publishes for must not cost a call a minute for ever.
pub const UNANCHORED_FAST_SECONDS: f64 = 900.0;

/// Points further back than this from the newest are not part of its trend.
const TREND_SECONDS: f64 = 600.0;
/// Points the trend is fitted through, at most.
const TREND_POINTS: usize = 5;

/// One series a poll asks, and what its answer is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// `BurstBalance` of a volume.
    Burst(String),
    /// A balance of the instance.
    Balance(InstanceBalance),
    /// A volume's 1-minute check.
    Check(String, VolumeCheck),
    /// An instance-level EBS check.
    InstanceCheck(InstanceCheck),
}

/// What one GetMetricData poll asks; results come back keyed by the index in
/// [`PollPlan::targets`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PollPlan {
    pub targets: Vec<Target>,
    pub instance_id: String,
}

impl PollPlan {
    pub fn series(&self) -> Vec<Series> {
        let i = &self.instance_id;
        self.targets
            .iter()
            .map(|t| match t {
                Target::Burst(v) => Series::burst_balance(v),
                Target::Balance(b) => Series::instance(b.cloudwatch_metric(), i),
                Target::Check(v, c) => Series::volume_check(*c, i, v),
                Target::InstanceCheck(c) => Series::instance_check(*c, i),
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The volumes whose BurstBalance is asked, in order.
    pub fn volumes(&self) -> Vec<&str> {
        self.targets
            .iter()
            .filter_map(|t| match t {
                Target::Burst(v) => Some(v.as_str()),
                _ => None,
            })
            .collect()
    }

    /// What is asked, as a set (order is no change).
    pub fn keys(&self) -> BTreeSet<Target> {
        self.targets.iter().cloned().collect()
    }
}

/// A volume's new BurstBalance point and what anchoring its bucket did (`result` `None`: no
/// bucket). `first`: the bucket had no CloudWatch basis before (worth an INFO line).
#[derive(Debug, Clone, PartialEq)]
pub struct Anchored {
    pub volume_id: String,
    pub point: BalancePoint,
    pub result: Option<Anchor>,
    pub first: bool,
    /// The estimate and its bounds after the anchor (percent).
    pub estimate: Option<f64>,
    pub bounds: Option<(f64, f64)>,
    /// The CloudWatch trend carried over a gap before the model's history, percent per minute.
    pub trend_per_minute: f64,
}

/// The trend of the newest points (newest first) in percent per second: a least-squares line
/// through at most [`TREND_POINTS`] of them within [`TREND_SECONDS`] of the newest; 0 with
/// fewer than two.
pub fn trend(points: &[BalancePoint]) -> f64 {
    let Some(newest) = points.first() else {
        return 0.0;
    };
    let p: Vec<&BalancePoint> = points
        .iter()
        .take(TREND_POINTS)
        .filter(|p| newest.timestamp - p.timestamp <= TREND_SECONDS && p.percent.is_finite())
        .collect();
    if p.len() < 2 {
        return 0.0;
    }
    let n = p.len() as f64;
    let mt = p.iter().map(|x| x.timestamp).sum::<f64>() / n;
    let mv = p.iter().map(|x| x.percent).sum::<f64>() / n;
    let sxx: f64 = p.iter().map(|x| (x.timestamp - mt).powi(2)).sum();
    let sxy: f64 = p
        .iter()
        .map(|x| (x.timestamp - mt) * (x.percent - mv))
        .sum();
    if sxx > 0.0 {
        sxy / sxx
    } else {
        0.0
    }
}

impl State {
    /// What the next poll asks: BurstBalance of the volumes that publish one, the instance
    /// balances that apply to its type (`instance_balances`), and with `checks` every attached
    /// volume's 1-minute checks (not magnetic: AWS publishes none) and the instance's.
    pub fn poll_plan(&self, cfg: &CloudConfig) -> PollPlan {
        let mut targets: Vec<Target> = self
            .volumes
            .iter()
            .filter(|v| VolumeType::parse(&v.volume_type).has_burst_balance(v.size_gib))
            .map(|v| Target::Burst(v.volume_id.clone()))
            .collect();
        let instance = self.instance.as_ref();
        let ty = instance.map_or("", |i| i.instance_type.as_str());
        if cfg.instance_balances {
            targets.extend(
                InstanceBalance::ALL
                    .into_iter()
                    .filter(|b| b.applies_to(ty))
                    .map(Target::Balance),
            );
        }
        if cfg.checks && instance.is_some() {
            for v in &self.volumes {
                if VolumeType::parse(&v.volume_type) == VolumeType::Standard {
                    continue;
                }
                targets.extend(
                    VolumeCheck::ALL
                        .into_iter()
                        .map(|c| Target::Check(v.volume_id.clone(), c)),
                );
            }
            targets.extend(InstanceCheck::ALL.into_iter().map(Target::InstanceCheck));
        }
        PollPlan {
            targets,
            instance_id: instance.map(|i| i.instance_id.clone()).unwrap_or_default(),
        }
    }

    /// How long after the last poll the next one is due; `None`: no poll (no DescribeVolumes
    /// has succeeded yet, or there is nothing to ask). At once when the plan asks a series the
    /// last poll did not (new volumes are asked without waiting out the interval; a describe
    /// that changes nothing the poll asks wakes nothing, whatever order its answer came in),
    /// unless polls are failing: then the backoff holds.
    pub fn poll_schedule(
        &self,
        plan: &PollPlan,
        cfg: &CloudConfig,
        now_unix: f64,
    ) -> Option<Duration> {
        if !self.volumes_known || plan.is_empty() {
            return None;
        }
        if self.poll_failures == 0 && !plan.keys().is_subset(&self.asked) {
            return Some(Duration::ZERO);
        }
        Some(self.poll_delay(plan, cfg, now_unix))
    }

    /// One poll's outcome: the newest points of each series asked by `plan`, keyed by index.
    /// A volume's point newer than the one known re-anchors its bucket (as the average over its
    /// minute, carried over any gap before the model's history at the trend of the points
    /// before it); an older one is ignored. Returns what was anchored.
    pub fn on_poll(
        &mut self,
        plan: &PollPlan,
        points: Result<Points, Failure>,
        now_unix: f64,
    ) -> Result<Vec<Anchored>, Failure> {
        self.asked = plan.keys();
        let points = match points {
            Ok(p) => p,
            Err(failure) => {
                self.count(Api::GetMetricData, failure.outcome(), now_unix);
                self.poll_failures += 1;
                return Err(failure);
            }
        };
        self.count(Api::GetMetricData, Outcome::Success, now_unix);
        self.poll_failures = 0;
        let mut anchored = Vec::new();
        for (i, pts) in points {
            let (Some(target), Some(&p)) = (plan.targets.get(i), pts.first()) else {
                continue;
            };
            let check = CheckPoint {
                value: p.percent,
                timestamp: p.timestamp,
            };
            match target {
                Target::Balance(b) => {
                    self.instance_balances.insert(*b, p);
                }
                Target::Check(v, c) => {
                    self.checks.insert((v.clone(), *c), check);
                }
                Target::InstanceCheck(c) => {
                    self.instance_checks.insert(*c, check);
                }
                Target::Burst(vol) => {
                    if let Some(a) = self.anchor(vol, p, &pts) {
                        anchored.push(a);
                    }
                }
            }
        }
        Ok(anchored)
    }

    fn anchor(&mut self, vol: &str, p: BalancePoint, pts: &[BalancePoint]) -> Option<Anchored> {
        let newer = self
            .balances
            .get(vol)
            .is_none_or(|q| p.timestamp > q.timestamp);
        if !newer {
            return None;
        }
        self.balances.insert(vol.to_string(), p);
        let slope = trend(pts);
        let bucket = self.buckets.get_mut(vol);
        let first = bucket
            .as_ref()
            .is_some_and(|b| b.basis() != Some(EstimateBasis::CloudWatch));
        let result = bucket.map(|b| {
            let gap_net = slope / 100.0 * b.capacity();
            b.anchor_period_average_with(p.percent, p.timestamp, POINT_PERIOD_SECONDS, gap_net)
        });
        let b = self.buckets.get(vol);
        Some(Anchored {
            volume_id: vol.to_string(),
            point: p,
            result,
            first,
            estimate: b.and_then(Bucket::estimate),
            bounds: b.map(Bucket::bounds_percent),
            trend_per_minute: slope * 60.0,
        })
    }

    /// When to poll again: the backoff after failures; else `poll_interval`, shortened to
    /// `fast_poll_interval` while [`State::fast_poll_reason`] has one; `poll_interval` when
    /// there is nothing to ask.
    pub fn poll_delay(&self, plan: &PollPlan, cfg: &CloudConfig, now_unix: f64) -> Duration {
        if plan.is_empty() {
            return cfg.poll_interval;
        }
        if self.poll_failures > 0 {
            return backoff(cfg.retry_min, cfg.poll_interval, self.poll_failures);
        }
        if self.fast_poll_reason(cfg, now_unix).is_some() {
            faster(cfg.poll_interval, cfg.fast_poll_interval)
        } else {
            cfg.poll_interval
        }
    }

    /// Why CloudWatch should be asked again soon, if it should: a followed bucket not anchored
    /// yet (for at most [`UNANCHORED_FAST_SECONDS`] after it was made), one that empties within
    /// `fast_poll_empty_within` (from its estimate, else from its upper bound), or a low
    /// balance ([`State::low_balance`]).
    pub fn fast_poll_reason(&self, cfg: &CloudConfig, now_unix: f64) -> Option<&'static str> {
        let followed = || {
            self.buckets
                .iter()
                .filter(|(v, b)| self.devices.contains_key(*v) && b.now().is_some())
        };
        let unanchored = followed().any(|(v, b)| {
            b.basis() != Some(EstimateBasis::CloudWatch)
                && self
                    .bucket_since
                    .get(v)
                    .is_some_and(|since| now_unix - since < UNANCHORED_FAST_SECONDS)
        });
        if unanchored {
            return Some("unanchored");
        }
        let within = cfg.fast_poll_empty_within.as_secs_f64();
        if followed().any(|(_, b)| b.seconds_to_empty() < within) {
            return Some("empties_soon");
        }
        self.low_balance(cfg).then_some("low")
    }

    /// Any attached volume whose level (the local estimate, else CloudWatch's) is below
    /// `fast_poll_below_percent`, or an instance EBS balance below it (CPU credits are not I/O).
    pub fn low_balance(&self, cfg: &CloudConfig) -> bool {
        let below = |p: f64| p < cfg.fast_poll_below_percent;
        self.volumes.iter().any(|v| {
            let est = self.estimate(&v.volume_id).map(Bucket::percent);
            let level = est.or_else(|| self.balances.get(&v.volume_id).map(|p| p.percent));
            level.is_some_and(below)
        }) || [InstanceBalance::EbsIo, InstanceBalance::EbsByte]
            .iter()
            .any(|b| {
                self.instance_balances
                    .get(b)
                    .is_some_and(|p| below(p.percent))
            })
    }
}
