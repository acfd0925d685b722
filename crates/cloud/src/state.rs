//! What the cloud side knows, and every decision it makes from that, without I/O or clock reads.
//!
//! The sources in `sampler` make one bounded call each time the periodic driver asks (a sysfs
//! scan with the EC2 describe calls, a GetMetricData poll, an NVMe log-page pass) and hand its
//! outcome to a method here; the sampler also hands over each new host disk reading and the
//! model state saved before a restart. The methods update the state and answer what the sampler
//! asks: when each call is due (backoff after failures, fast polling while a bucket is
//! unanchored, draining towards empty within the hour or low, a poll at once when there is a new
//! series to ask), what to ask, which devices to read, what to save. From the state comes the
//! [`CloudSnapshot`] the agent encodes. Every time is an argument (`now_unix`, the disk
//! reading's own `at`), so each decision is unit-tested (`state/tests.rs`).
//!
//! - `describe`: devices, volumes and the buckets and limits that follow from them; volume
//!   status, modifications and the instance type's EBS limits.
//! - `poll`: what to ask CloudWatch, its answers, and when to ask again.
//! - `local`: the disk counters (credit model and headroom), restore and save, NVMe pages.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use stallwatch_collector::ErrorKind;

use crate::config::CloudConfig;
use crate::devices::BlockDevice;
use crate::ec2::Volume;
use crate::limits::{self, InstanceLimits};
use crate::model::{Bucket, VolumeType};
use crate::nvme;
use crate::persist::SavedVolume;
use crate::rates::Rates;
use crate::snapshot::{
    Api, BalancePoint, CheckPoint, CloudSnapshot, Instance, InstanceBalance, InstanceCheck,
    InstanceEbs, Modification, NvmeCounters, Outcome, VolumeCheck, VolumeState, VolumeStatus,
};

mod describe;
mod local;
mod poll;

pub use describe::Described;
pub use local::{Started, NEW_VOLUME_SECONDS};
pub use poll::{Anchored, PollPlan, Target, UNANCHORED_FAST_SECONDS};

/// BurstBalance and the instance balances are per-minute averages.
const POINT_PERIOD_SECONDS: f64 = 60.0;

/// A modification that ended longer ago than this is no longer exported.
const MODIFICATION_SHOWN_SECONDS: f64 = 3_600.0;

/// Why an AWS call failed, as the state needs it: throttled or not, the kind of error it is for
/// `stallwatch_source_errors_total`, and the message to log.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The service said slow down (counted as `outcome="throttled"`, and not as a source
    /// error: backing off is the answer, and `cloud_requests_total` shows it).
    pub throttled: bool,
    /// `permission` (HTTP 401/403, no credentials), `parse` (an answer we cannot read) or `io`
    /// (no answer, a transport or service error, the deadline).
    pub kind: ErrorKind,
    pub message: String,
}

impl Failure {
    fn outcome(&self) -> Outcome {
        if self.throttled {
            Outcome::Throttled
        } else {
            Outcome::Error
        }
    }
}

/// The cloud side's state, owned by the sampler.
#[derive(Debug, Default)]
pub struct State {
    instance: Option<Instance>,
    /// The instance type's EBS limits; `Some(None)`: asked, the type has none.
    instance_limits: Option<Option<InstanceLimits>>,
    instance_type_failures: u32,
    volumes: Vec<Volume>,
    statuses: BTreeMap<String, VolumeStatus>,
    modifications: BTreeMap<String, Modification>,
    disks: Vec<BlockDevice>,
    /// Volume id → kernel device name.
    devices: BTreeMap<String, String>,
    buckets: HashMap<String, Bucket>,
    /// Newest CloudWatch BurstBalance point per volume.
    balances: BTreeMap<String, BalancePoint>,
    checks: BTreeMap<(String, VolumeCheck), CheckPoint>,
    instance_balances: BTreeMap<InstanceBalance, BalancePoint>,
    instance_checks: BTreeMap<InstanceCheck, CheckPoint>,
    /// Previous disk counters per device: (ops, bytes).
    prev_io: HashMap<String, (u64, u64)>,
    /// Time of the last disk reading fed to the model (monotonic and wall clock).
    disks_at: Option<(Instant, f64)>,
    /// The last minute of each volume's rates, and of their sum (the instance's).
    rates: HashMap<String, Rates>,
    instance_rates: Rates,
    /// The model state saved before a restart, by volume id, until taken up.
    pending_restore: HashMap<String, SavedVolume>,
    /// Buckets already looked at for a start without CloudWatch (new volume or restore).
    started: HashSet<String>,
    nvme: BTreeMap<String, nvme::Stats>,
    requests: BTreeMap<(Api, Outcome), u64>,
    metrics_requested: u64,
    last_success: BTreeMap<Api, f64>,
    /// Consecutive failures of each periodic call (0 after a success).
    describe_failures: u32,
    poll_failures: u32,
    /// Describe (or scan-only) outcomes so far, failed or not.
    described: u64,
    /// At least one DescribeVolumes succeeded.
    volumes_known: bool,
    /// The series keys the last poll asked ([`PollPlan::keys`]): a plan that asks more is due
    /// at once.
    asked: BTreeSet<Target>,
    /// When each bucket was made (Unix seconds of the describe), for how long an unanchored
    /// one is polled fast.
    bucket_since: HashMap<String, f64>,
}

impl State {
    pub fn instance(&self) -> Option<&Instance> {
        self.instance.as_ref()
    }

    pub fn set_instance(&mut self, instance: Instance) {
        self.instance = Some(instance);
    }

    /// One call to `api` ended with `outcome` at `now_unix`.
    pub fn count(&mut self, api: Api, outcome: Outcome, now_unix: f64) {
        *self.requests.entry((api, outcome)).or_default() += 1;
        if outcome == Outcome::Success {
            self.last_success.insert(api, now_unix);
        }
    }

    /// A GetMetricData call is about to ask for `n` metrics (what CloudWatch bills).
    pub fn add_metrics_requested(&mut self, n: usize) {
        self.metrics_requested += n as u64;
    }

    /// A volume's bucket once it has an estimate (CloudWatch, new volume or restored): before,
    /// its level is unknown, and no estimate beats a made-up one.
    fn estimate(&self, volume_id: &str) -> Option<&Bucket> {
        self.buckets.get(volume_id).filter(|b| b.basis().is_some())
    }

    /// Whether the volume's bucket has credits: the estimate, else CloudWatch's newest word;
    /// `None` when neither is known.
    fn has_credits(&self, volume_id: &str) -> Option<bool> {
        self.estimate(volume_id)
            .map(|b| b.balance() > 0.0)
            .or_else(|| self.balances.get(volume_id).map(|p| p.percent > 0.0))
    }
}

impl State {
    /// Everything the agent encodes, as of `now_unix` (CloudWatch points older than
    /// `staleness` are left out).
    pub fn snapshot(&self, cfg: &CloudConfig, now_unix: f64) -> CloudSnapshot {
        let stale = cfg.staleness.as_secs_f64();
        let fresh = |t: f64| now_unix - t <= stale;
        // The instance's limits are the same on every EBS device's page: the largest is newest.
        let max_of =
            |f: fn(&nvme::Stats) -> u64| self.nvme.values().map(|s| us(f(s))).reduce(f64::max);
        let volumes = self
            .volumes
            .iter()
            .map(|v| self.volume_state(v, cfg, now_unix))
            .collect();
        let spent = |b: InstanceBalance| {
            self.instance_balances
                .get(&b)
                .is_some_and(|p| fresh(p.timestamp) && p.percent <= 0.0)
        };
        let instance_ebs = self.instance_limits.flatten().map(|l| InstanceEbs {
            baseline_iops: l.baseline_iops,
            maximum_iops: l.maximum_iops,
            baseline_bytes_per_second: l.baseline_bytes_per_second,
            maximum_bytes_per_second: l.maximum_bytes_per_second,
            headroom: self.instance_rates.headroom(&l.in_force(
                spent(InstanceBalance::EbsIo),
                spent(InstanceBalance::EbsByte),
            )),
        });
        CloudSnapshot {
            enabled: self.instance.is_some(),
            instance: self.instance.clone(),
            disks: self.disks.clone(),
            volumes,
            instance_balances: self
                .instance_balances
                .iter()
                .filter(|(_, p)| fresh(p.timestamp))
                .map(|(k, p)| (*k, *p))
                .collect(),
            instance_ebs,
            instance_checks: self
                .instance_checks
                .iter()
                .filter(|(_, p)| fresh(p.timestamp))
                .map(|(k, p)| (*k, *p))
                .collect(),
            instance_exceeded_iops_seconds: max_of(|s| s.ec2_instance_exceeded_iops_us),
            instance_exceeded_throughput_seconds: max_of(|s| s.ec2_instance_exceeded_tp_us),
            requests: self
                .requests
                .iter()
                .map(|((a, o), n)| (*a, *o, *n))
                .collect(),
            metrics_requested: self.metrics_requested,
            last_success: self.last_success.iter().map(|(a, t)| (*a, *t)).collect(),
            // The sampler adds its sources' health.
            sources: Vec::new(),
        }
    }

    fn volume_state(&self, v: &Volume, cfg: &CloudConfig, now_unix: f64) -> VolumeState {
        let fresh = |t: f64| now_unix - t <= cfg.staleness.as_secs_f64();
        let device = self.devices.get(&v.volume_id).cloned();
        let vt = VolumeType::parse(&v.volume_type);
        let bucket = self.buckets.get(&v.volume_id);
        // Bounds only where the model follows a device: elsewhere they would say 0–100 for ever.
        let followed = bucket.filter(|b| b.now().is_some());
        let limits = limits::volume(
            &vt,
            v.size_gib,
            v.iops,
            v.throughput_mibps,
            self.has_credits(&v.volume_id),
        );
        let headroom = limits
            .zip(self.rates.get(&v.volume_id))
            .and_then(|(l, r)| r.headroom(&l));
        let modification = self
            .modifications
            .get(&v.volume_id)
            .filter(|m| {
                m.in_progress()
                    || m.end_time
                        .is_none_or(|e| now_unix - e <= MODIFICATION_SHOWN_SECONDS)
            })
            .cloned();
        VolumeState {
            volume_id: v.volume_id.clone(),
            volume_type: v.volume_type.clone(),
            availability_zone: v.availability_zone.clone(),
            size_bytes: v.size_gib.saturating_mul(1 << 30),
            provisioned_iops: v.iops,
            throughput_mibps: v.throughput_mibps,
            baseline_iops: vt.baseline_iops(v.size_gib, v.iops),
            burst_balance: self
                .balances
                .get(&v.volume_id)
                .copied()
                .filter(|p| fresh(p.timestamp)),
            estimate_percent: bucket.and_then(Bucket::estimate),
            seconds_to_empty: followed
                .filter(|b| b.basis().is_some() || b.history_seconds() > 0.0)
                .map(Bucket::seconds_to_empty),
            estimate_basis: bucket.and_then(Bucket::basis),
            estimate_low_percent: followed.map(|b| b.bounds_percent().0),
            estimate_high_percent: followed.map(|b| b.bounds_percent().1),
            nvme: device.as_ref().and_then(|d| self.nvme.get(d)).map(counters),
            created: v.created,
            headroom,
            status: self.statuses.get(&v.volume_id).cloned(),
            modification,
            checks: self
                .checks
                .range((v.volume_id.clone(), VolumeCheck::StalledIo)..)
                .take_while(|((id, _), _)| *id == v.volume_id)
                .filter(|(_, p)| fresh(p.timestamp))
                .map(|((_, c), p)| (*c, *p))
                .collect(),
            device,
        }
    }
}

/// The wall-clock time of `at`, given that `now` is `now_unix`: how the cloud sampler turns the host
/// sampler's reading time into the time axis CloudWatch's points are on.
pub fn unix_time_of(at: Instant, now: Instant, now_unix: f64) -> f64 {
    now_unix - now.saturating_duration_since(at).as_secs_f64()
}

fn counters(s: &nvme::Stats) -> NvmeCounters {
    NvmeCounters {
        exceeded_iops_seconds: us(s.volume_exceeded_iops_us),
        exceeded_throughput_seconds: us(s.volume_exceeded_tp_us),
        queue_length: s.volume_queue_length as f64,
        read_ops: s.total_read_ops,
        write_ops: s.total_write_ops,
        read_time_seconds: us(s.total_read_time_us),
        write_time_seconds: us(s.total_write_time_us),
        read_latency: bins(&s.read_io_latency_histogram),
        write_latency: bins(&s.write_io_latency_histogram),
    }
}

fn bins(h: &nvme::Histogram) -> Vec<(f64, u64)> {
    h.bins
        .iter()
        .map(|b| (us(b.upper_us), u64::from(b.count)))
        .collect()
}

fn us(v: u64) -> f64 {
    v as f64 / 1e6
}

/// `fast` when it is shorter, else `normal`: a fast interval above the normal one never slows
/// anything down.
fn faster(normal: Duration, fast: Duration) -> Duration {
    normal.min(fast)
}

#[cfg(test)]
mod tests;
