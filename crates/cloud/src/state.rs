//! What the cloud side knows, and every decision it makes from that, without I/O or clock reads.
//!
//! The loops in `runner` make one bounded call per period (a sysfs scan with DescribeVolumes, a
//! GetMetricData poll, a look at the host sampler's disk counters, an NVMe log-page pass) and
//! hand its outcome to a method here; the method updates the state and answers what the loop
//! asked: when to call again (backoff after failures, fast polling while a balance is low), what
//! to ask CloudWatch, which devices to read. From the state comes the [`CloudSnapshot`] the agent
//! encodes. Every time is an argument (`now_unix`, the disk reading's own `at`), so each decision
//! is unit-tested (`state/tests.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stallwatch_collector::sys::block::Disk;

use crate::cloudwatch::Series;
use crate::config::{backoff, CloudConfig, VolumeOverride};
use crate::devices::BlockDevice;
use crate::ec2::{self, Volume};
use crate::model::{Anchor, Bucket, VolumeType};
use crate::nvme;
use crate::snapshot::{
    Api, BalancePoint, CloudSnapshot, Instance, InstanceBalance, NvmeCounters, Outcome, VolumeState,
};

/// BurstBalance and the instance balances are per-minute averages.
const POINT_PERIOD_SECONDS: f64 = 60.0;

/// Why an AWS call failed, as the state needs it: throttled or not, and the message to log.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The service said slow down (counted as `outcome="throttled"`).
    pub throttled: bool,
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

/// What a DescribeVolumes outcome changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Described {
    /// Described; the volumes are those known before.
    Same,
    /// Described, and the volumes are new or changed, or this is the first success after
    /// failures (worth one INFO line).
    Changed { volumes: usize },
    /// The call failed; the volumes known before stay.
    Failed {
        failure: Failure,
        retry_in: Duration,
    },
}

/// What one GetMetricData poll asks: BurstBalance of the volumes that have one, then the
/// instance's balances. Results come back keyed by the index in [`PollPlan::series`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PollPlan {
    pub volumes: Vec<String>,
    pub instance: Vec<InstanceBalance>,
    pub instance_id: String,
}

impl PollPlan {
    pub fn series(&self) -> Vec<Series> {
        let mut s: Vec<Series> = self
            .volumes
            .iter()
            .map(|v| Series::burst_balance(v))
            .collect();
        s.extend(
            self.instance
                .iter()
                .map(|b| Series::instance(b.cloudwatch_metric(), &self.instance_id)),
        );
        s
    }

    pub fn is_empty(&self) -> bool {
        self.volumes.is_empty() && self.instance.is_empty()
    }
}

/// A volume's new CloudWatch point and what anchoring its bucket did (`None`: no bucket).
pub type Anchored = (String, BalancePoint, Option<Anchor>);

/// The cloud side's state, shared by the loops behind one lock held only for these calls.
#[derive(Debug, Default)]
pub struct State {
    instance: Option<Instance>,
    volumes: Vec<Volume>,
    disks: Vec<BlockDevice>,
    /// Volume id → kernel device name.
    devices: BTreeMap<String, String>,
    buckets: HashMap<String, Bucket>,
    /// Newest CloudWatch point per volume.
    balances: BTreeMap<String, BalancePoint>,
    instance_balances: BTreeMap<InstanceBalance, BalancePoint>,
    /// Previous disk counters per device: (ops, bytes).
    prev_io: HashMap<String, (u64, u64)>,
    /// Time of the last disk reading fed to the buckets.
    disks_at: Option<Instant>,
    nvme: BTreeMap<String, nvme::Stats>,
    requests: BTreeMap<(Api, Outcome), u64>,
    metrics_requested: u64,
    last_success: BTreeMap<Api, f64>,
    /// Consecutive failures of each periodic call (0 after a success).
    describe_failures: u32,
    poll_failures: u32,
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
}

/// Describe: devices, volumes, and the buckets and mapping that follow from them.
impl State {
    /// One describe period: the sysfs scan (`None`: it failed or timed out, the devices known
    /// before stay) and DescribeVolumes. Device mapping is redone either way (the disks may have
    /// changed, and so may the config's overrides); buckets follow the volumes.
    pub fn on_describe(
        &mut self,
        disks: Option<Vec<BlockDevice>>,
        volumes: Result<Vec<Volume>, Failure>,
        cfg: &CloudConfig,
        now_unix: f64,
    ) -> Described {
        if let Some(d) = disks {
            self.disks = d;
        }
        let described = match volumes {
            Ok(vols) => {
                self.count(Api::DescribeVolumes, Outcome::Success, now_unix);
                let news = self.describe_failures > 0 || self.volumes != vols;
                self.describe_failures = 0;
                let n = vols.len();
                self.volumes = vols;
                self.sync_buckets();
                if news {
                    Described::Changed { volumes: n }
                } else {
                    Described::Same
                }
            }
            Err(failure) => {
                self.count(Api::DescribeVolumes, failure.outcome(), now_unix);
                self.describe_failures += 1;
                Described::Failed {
                    failure,
                    retry_in: self.describe_delay(cfg),
                }
            }
        };
        self.map_devices(&cfg.volumes);
        described
    }

    /// When to describe again: `describe_interval`, or the backoff after failures.
    pub fn describe_delay(&self, cfg: &CloudConfig) -> Duration {
        if self.describe_failures > 0 {
            backoff(cfg.retry_min, cfg.describe_interval, self.describe_failures)
        } else {
            cfg.describe_interval
        }
    }

    /// Volume id → device: NVMe serials of attached volumes, then Xen attachment names
    /// (`/dev/sdf` → `xvdf`) that exist in sysfs, then the config's overrides over both.
    fn map_devices(&mut self, overrides: &[VolumeOverride]) {
        let mut m = BTreeMap::new();
        let attached: HashSet<&str> = self.volumes.iter().map(|v| v.volume_id.as_str()).collect();
        for d in &self.disks {
            if let Some(id) = &d.volume_id {
                if attached.contains(id.as_str()) {
                    m.insert(id.clone(), d.name.clone());
                }
            }
        }
        for v in &self.volumes {
            if m.contains_key(&v.volume_id) {
                continue;
            }
            let xen = v
                .attachment_devices
                .iter()
                .filter_map(|a| ec2::kernel_name_of_attachment(a))
                .find(|k| self.disks.iter().any(|d| &d.name == k));
            if let Some(k) = xen {
                m.insert(v.volume_id.clone(), k);
            }
        }
        for o in overrides {
            m.insert(o.volume_id.clone(), o.device.clone());
        }
        self.devices = m;
    }

    /// Buckets for the volumes that can burst; a volume whose type or size changed gets a new
    /// one (its old level means nothing now), a detached volume loses its own.
    fn sync_buckets(&mut self) {
        let mut keep = HashMap::new();
        for v in &self.volumes {
            let vt = VolumeType::parse(&v.volume_type);
            if let Some(b) = self.buckets.remove(&v.volume_id) {
                if *b.volume_type() == vt && b.size_gib() == v.size_gib {
                    keep.insert(v.volume_id.clone(), b);
                    continue;
                }
            }
            if let Some(b) = Bucket::new(&vt, v.size_gib) {
                keep.insert(v.volume_id.clone(), b);
            }
        }
        self.buckets = keep;
    }
}

/// Poll: what to ask CloudWatch, its answers, and when to ask again.
impl State {
    /// What the next poll asks: BurstBalance of the volumes that publish one, and the instance
    /// balances that apply to its type (when `instance_balances` is on).
    pub fn poll_plan(&self, cfg: &CloudConfig) -> PollPlan {
        let volumes = self
            .volumes
            .iter()
            .filter(|v| VolumeType::parse(&v.volume_type).has_burst_balance(v.size_gib))
            .map(|v| v.volume_id.clone())
            .collect();
        let ty = self
            .instance
            .as_ref()
            .map_or("", |i| i.instance_type.as_str());
        let instance = if cfg.instance_balances {
            InstanceBalance::ALL
                .into_iter()
                .filter(|b| b.applies_to(ty))
                .collect()
        } else {
            Vec::new()
        };
        PollPlan {
            volumes,
            instance,
            instance_id: self
                .instance
                .as_ref()
                .map(|i| i.instance_id.clone())
                .unwrap_or_default(),
        }
    }

    /// One poll's outcome: the newest point of each series asked by `plan`, keyed by index.
    /// A volume's point newer than the one known re-anchors its bucket (as the average over
    /// its minute); an older one is ignored. Returns what was anchored, for the debug log.
    pub fn on_poll(
        &mut self,
        plan: &PollPlan,
        points: Result<BTreeMap<usize, BalancePoint>, Failure>,
        now_unix: f64,
    ) -> Result<Vec<Anchored>, Failure> {
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
        for (i, p) in points {
            let Some(vol) = plan.volumes.get(i) else {
                if let Some(b) = plan.instance.get(i - plan.volumes.len()) {
                    self.instance_balances.insert(*b, p);
                }
                continue;
            };
            let newer = self
                .balances
                .get(vol)
                .is_none_or(|q| p.timestamp > q.timestamp);
            if newer {
                let a = self
                    .buckets
                    .get_mut(vol)
                    .map(|b| b.anchor_period_average(p.percent, p.timestamp, POINT_PERIOD_SECONDS));
                anchored.push((vol.clone(), p, a));
                self.balances.insert(vol.clone(), p);
            }
        }
        Ok(anchored)
    }

    /// When to poll again: the backoff after failures; else `poll_interval`, shortened to
    /// `fast_poll_interval` while a balance is low; `poll_interval` when there is nothing to ask.
    pub fn poll_delay(&self, plan: &PollPlan, cfg: &CloudConfig) -> Duration {
        if plan.is_empty() {
            return cfg.poll_interval;
        }
        if self.poll_failures > 0 {
            return backoff(cfg.retry_min, cfg.poll_interval, self.poll_failures);
        }
        if self.low_balance(cfg) {
            cfg.poll_interval.min(cfg.fast_poll_interval)
        } else {
            cfg.poll_interval
        }
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

    /// A volume's bucket once CloudWatch has anchored it: before the first point its level is
    /// unknown, and no estimate beats a made-up 100 %.
    fn estimate(&self, volume_id: &str) -> Option<&Bucket> {
        self.buckets
            .get(volume_id)
            .filter(|b| b.last_anchor().is_some())
    }
}

/// The local sources: disk counters for the credit model, EBS NVMe log pages.
impl State {
    /// One diskstats reading, every device unfiltered (the host sampler's), completed at `at`
    /// (`at_unix` on the wall clock): each mapped device's I/O since the previous reading
    /// advances its volume's bucket **at the reading's time**, so a late look does not smear
    /// the integration. A reading already fed (same or older `at`) is ignored: false.
    pub fn on_disk_counters(&mut self, disks: &[Disk], at: Instant, at_unix: f64) -> bool {
        if self.disks_at.is_some_and(|last| at <= last) {
            return false;
        }
        self.disks_at = Some(at);
        let volume_of: HashMap<&str, &str> = self
            .devices
            .iter()
            .map(|(v, d)| (d.as_str(), v.as_str()))
            .collect();
        for d in disks {
            let Some(vol) = volume_of.get(d.stat.name.as_str()) else {
                continue;
            };
            let s = &d.stat;
            let ops = s.reads_completed + s.writes_completed;
            let bytes = (s.sectors_read + s.sectors_written) * 512;
            let prev = self.prev_io.insert(s.name.clone(), (ops, bytes));
            let Some((pops, pbytes)) = prev else { continue };
            if let Some(b) = self.buckets.get_mut(*vol) {
                b.advance(
                    at_unix,
                    ops.saturating_sub(pops),
                    bytes.saturating_sub(pbytes),
                );
            }
        }
        true
    }

    /// The EBS NVMe devices whose log page to read: (device name, device node under `dev_dir`).
    pub fn nvme_targets(&self, dev_dir: &Path) -> Vec<(String, PathBuf)> {
        self.disks
            .iter()
            .filter(|d| d.volume_id.is_some() && d.name.starts_with("nvme"))
            .map(|d| (d.name.clone(), dev_dir.join(&d.name)))
            .collect()
    }

    /// A log page read from `device`.
    pub fn on_nvme(&mut self, device: String, stats: nvme::Stats) {
        self.nvme.insert(device, stats);
    }
}

impl State {
    /// Everything the agent encodes, as of `now_unix` (CloudWatch points older than
    /// `staleness` are left out).
    pub fn snapshot(&self, cfg: &CloudConfig, now_unix: f64) -> CloudSnapshot {
        let fresh = |p: &BalancePoint| now_unix - p.timestamp <= cfg.staleness.as_secs_f64();
        // The instance's limits are the same on every EBS device's page: the largest is newest.
        let max_of =
            |f: fn(&nvme::Stats) -> u64| self.nvme.values().map(|s| us(f(s))).reduce(f64::max);
        let volumes = self
            .volumes
            .iter()
            .map(|v| {
                let device = self.devices.get(&v.volume_id).cloned();
                let vt = VolumeType::parse(&v.volume_type);
                let bucket = self.estimate(&v.volume_id);
                VolumeState {
                    volume_id: v.volume_id.clone(),
                    volume_type: v.volume_type.clone(),
                    availability_zone: v.availability_zone.clone(),
                    size_bytes: v.size_gib.saturating_mul(1 << 30),
                    provisioned_iops: v.iops,
                    throughput_mibps: v.throughput_mibps,
                    baseline_iops: vt.baseline_iops(v.size_gib, v.iops),
                    burst_balance: self.balances.get(&v.volume_id).copied().filter(fresh),
                    estimate_percent: bucket.map(Bucket::percent),
                    seconds_to_empty: bucket.map(Bucket::seconds_to_empty),
                    nvme: device.as_ref().and_then(|d| self.nvme.get(d)).map(counters),
                    device,
                }
            })
            .collect();
        CloudSnapshot {
            enabled: true,
            instance: self.instance.clone(),
            disks: self.disks.clone(),
            volumes,
            instance_balances: self
                .instance_balances
                .iter()
                .filter(|(_, p)| fresh(p))
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
        }
    }
}

/// The wall-clock time of `at`, given that `now` is `now_unix`: how the runner turns the host
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

#[cfg(test)]
mod tests;
