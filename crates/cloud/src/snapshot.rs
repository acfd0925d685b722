//! What the cloud side publishes for the agent to encode: plain values, swapped whole into an
//! `ArcSwap` after every change, so a scrape never waits on AWS or on a hung device.

use stallwatch_collector::sample::SourceStatus;

use crate::devices::BlockDevice;

/// The AWS calls the poller makes (the `api` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Api {
    Imds,
    DescribeVolumes,
    DescribeVolumeStatus,
    DescribeVolumesModifications,
    DescribeInstanceTypes,
    GetMetricData,
}

impl Api {
    pub const ALL: [Api; 6] = [
        Api::Imds,
        Api::DescribeVolumes,
        Api::DescribeVolumeStatus,
        Api::DescribeVolumesModifications,
        Api::DescribeInstanceTypes,
        Api::GetMetricData,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Imds => "imds",
            Api::DescribeVolumes => "describe_volumes",
            Api::DescribeVolumeStatus => "describe_volume_status",
            Api::DescribeVolumesModifications => "describe_volumes_modifications",
            Api::DescribeInstanceTypes => "describe_instance_types",
            Api::GetMetricData => "get_metric_data",
        }
    }
    /// The EC2 action name of an EC2 api (the IAM action is `ec2:<name>`).
    pub fn ec2_action(self) -> Option<&'static str> {
        match self {
            Api::DescribeVolumes => Some("DescribeVolumes"),
            Api::DescribeVolumeStatus => Some("DescribeVolumeStatus"),
            Api::DescribeVolumesModifications => Some("DescribeVolumesModifications"),
            Api::DescribeInstanceTypes => Some("DescribeInstanceTypes"),
            _ => None,
        }
    }
}

/// How a call ended (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    Success,
    /// The service said slow down (HTTP 429/503 or a throttling error code).
    Throttled,
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Success, Outcome::Throttled, Outcome::Error];
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Throttled => "throttled",
            Outcome::Error => "error",
        }
    }
}

/// The instance this agent runs on (IMDS, or the config's overrides).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Instance {
    pub instance_id: String,
    pub region: String,
    pub availability_zone: String,
    pub instance_type: String,
}

/// A CloudWatch `BurstBalance` data point: the average over the minute starting at
/// `timestamp` (Unix seconds), in percent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BalancePoint {
    pub percent: f64,
    pub timestamp: f64,
}

/// Instance-level burst balances in `AWS/EC2` (smaller instance sizes burst their EBS bandwidth
/// and IOPS; T instances their CPU). When the instance's EBS balance empties, every volume is
/// held to the instance's baseline whatever its own credits say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InstanceBalance {
    EbsIo,
    EbsByte,
    CpuCredit,
}

impl InstanceBalance {
    pub const ALL: [InstanceBalance; 3] = [
        InstanceBalance::EbsIo,
        InstanceBalance::EbsByte,
        InstanceBalance::CpuCredit,
    ];
    pub fn cloudwatch_metric(self) -> &'static str {
        match self {
            InstanceBalance::EbsIo => "EBSIOBalance%",
            InstanceBalance::EbsByte => "EBSByteBalance%",
            InstanceBalance::CpuCredit => "CPUCreditBalance",
        }
    }
    /// Which instance types publish it: CPU credits only T instances; the EBS balances the
    /// smaller sizes of most families (asking an instance that has none costs a metric and
    /// returns nothing, so they are always asked).
    pub fn applies_to(self, instance_type: &str) -> bool {
        match self {
            InstanceBalance::CpuCredit => instance_type.starts_with('t'),
            _ => true,
        }
    }
}

/// CloudWatch's 1-minute EBS checks of a volume, published under the dimensions
/// `{InstanceId, VolumeId}` (not `VolumeId` alone) for volumes attached to Nitro instances:
/// 0 or 1 per minute (the poll asks for the minute's maximum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VolumeCheck {
    /// The volume's I/O stalled (EBS could not complete it), whatever the type.
    StalledIo,
    /// The workload kept asking for more IOPS than the volume delivers.
    IopsExceeded,
    /// The workload kept asking for more throughput than the volume delivers.
    ThroughputExceeded,
}

impl VolumeCheck {
    pub const ALL: [VolumeCheck; 3] = [
        VolumeCheck::StalledIo,
        VolumeCheck::IopsExceeded,
        VolumeCheck::ThroughputExceeded,
    ];
    pub fn cloudwatch_metric(self) -> &'static str {
        match self {
            VolumeCheck::StalledIo => "VolumeStalledIOCheck",
            VolumeCheck::IopsExceeded => "VolumeIOPSExceededCheck",
            VolumeCheck::ThroughputExceeded => "VolumeThroughputExceededCheck",
        }
    }
    /// The `check` label.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeCheck::StalledIo => "stalled_io",
            VolumeCheck::IopsExceeded => "iops_exceeded",
            VolumeCheck::ThroughputExceeded => "throughput_exceeded",
        }
    }
}

/// The instance-level EBS checks in `AWS/EC2` (dimension `InstanceId`): the instance's own EBS
/// IOPS or throughput limit was exceeded in the minute (0 or 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InstanceCheck {
    IopsExceeded,
    ThroughputExceeded,
}

impl InstanceCheck {
    pub const ALL: [InstanceCheck; 2] = [
        InstanceCheck::IopsExceeded,
        InstanceCheck::ThroughputExceeded,
    ];
    pub fn cloudwatch_metric(self) -> &'static str {
        match self {
            InstanceCheck::IopsExceeded => "InstanceEBSIOPSExceededCheck",
            InstanceCheck::ThroughputExceeded => "InstanceEBSThroughputExceededCheck",
        }
    }
    /// The `check` label.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceCheck::IopsExceeded => "iops_exceeded",
            InstanceCheck::ThroughputExceeded => "throughput_exceeded",
        }
    }
}

/// A CloudWatch check's newest point: the minute's maximum (0 or 1) and the minute's start
/// (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckPoint {
    pub value: f64,
    pub timestamp: f64,
}

/// What the local estimate of a credit bucket rests on. Without one there is no estimate, only
/// its bounds ([`VolumeState::estimate_low_percent`], [`VolumeState::estimate_high_percent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EstimateBasis {
    /// A CloudWatch `BurstBalance` point, replayed to now with the I/O seen since.
    CloudWatch,
    /// A volume created minutes ago: it started full (AWS: a new gp2 volume receives 5.4 M
    /// credits) and every I/O since is in the kernel's counters.
    NewVolume,
    /// The agent's own estimate from before a restart within this boot, carried over the gap
    /// with the I/O the kernel counted meanwhile.
    Restored,
}

impl EstimateBasis {
    /// The `basis` label.
    pub fn as_str(self) -> &'static str {
        match self {
            EstimateBasis::CloudWatch => "cloudwatch",
            EstimateBasis::NewVolume => "new_volume",
            EstimateBasis::Restored => "restored",
        }
    }
}

/// Current I/O rates against the limit in force now (for a volume: provisioned for gp3/io1/io2,
/// burst or baseline for gp2/st1/sc1; for the instance: its EBS maximum, or its baseline once
/// its EBS burst balance is spent). Rates are per second over the host sampler's last interval,
/// in EBS's units: an operation is up to 256 KiB on SSD and 1 MiB on HDD (larger ones count as
/// several), bytes are bytes.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Headroom {
    pub iops: f64,
    pub iops_limit: f64,
    pub bytes_per_second: f64,
    pub bytes_limit: f64,
    /// The highest per-interval rates over the last [`crate::rates::PEAK_WINDOW_SECONDS`].
    pub iops_peak: f64,
    pub bytes_per_second_peak: f64,
    /// Seconds until the rate reaches its limit at the last minute's trend: +Inf while it is not
    /// rising, 0 at or over the limit; `None` until the window has enough readings.
    pub iops_limit_in_seconds: Option<f64>,
    pub bytes_limit_in_seconds: Option<f64>,
}

impl Headroom {
    /// The share of the IOPS limit left (0 at or over it).
    pub fn iops_ratio(&self) -> f64 {
        left(self.iops, self.iops_limit)
    }
    /// The share of the throughput limit left (0 at or over it).
    pub fn bytes_ratio(&self) -> f64 {
        left(self.bytes_per_second, self.bytes_limit)
    }
    /// The smaller of the two: how close the nearer limit is.
    pub fn ratio(&self) -> f64 {
        self.iops_ratio().min(self.bytes_ratio())
    }
}

fn left(rate: f64, limit: f64) -> f64 {
    if limit > 0.0 {
        (1.0 - rate / limit).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// The instance's EBS limits (`DescribeInstanceTypes` `EbsOptimizedInfo`), and the sum of its
/// EBS volumes' rates against the limit in force.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct InstanceEbs {
    pub baseline_iops: f64,
    pub maximum_iops: f64,
    pub baseline_bytes_per_second: f64,
    pub maximum_bytes_per_second: f64,
    /// Every mapped EBS volume's rates summed, against the maximum (or the baseline while the
    /// instance's `EBSIOBalance%` / `EBSByteBalance%` is spent); `None` before the first two
    /// disk readings.
    pub headroom: Option<Headroom>,
}

/// `DescribeVolumeStatus` of one volume.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VolumeStatus {
    /// `ok`, `warning`, `impaired` or `insufficient-data`.
    pub status: String,
    /// The `io-enabled` check: `passed` or `failed` (I/O disabled after a suspected
    /// inconsistency).
    pub io_enabled: Option<String>,
    /// The `io-performance` check of gp3/io1/io2 volumes: `normal`, `degraded`,
    /// `severely-degraded` or `stalled` (absent where not applicable). This instance's own
    /// attachment status when AWS reports one.
    pub io_performance: Option<String>,
    /// Initialization of a volume created from a snapshot: its blocks are fetched lazily, so
    /// first reads stall with full credits until it completes.
    pub initialization: Option<Initialization>,
}

impl VolumeStatus {
    /// Something is wrong now: impaired, I/O disabled, or performance degraded or stalled.
    pub fn troubled(&self) -> bool {
        self.status == "impaired"
            || self.io_enabled.as_deref() == Some("failed")
            || matches!(
                self.io_performance.as_deref(),
                Some("degraded" | "severely-degraded" | "stalled")
            )
    }
    /// Initialization is under way.
    pub fn initializing(&self) -> bool {
        self.initialization
            .as_ref()
            .is_some_and(|i| i.progress_percent.is_none_or(|p| p < 100.0))
    }
}

/// A snapshot-restored volume's initialization (`InitializationStatusDetails`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Initialization {
    /// `default` (lazy, on first access) or `provisioned-rate` (at a volume initialization rate).
    pub kind: String,
    pub progress_percent: Option<f64>,
    pub eta_seconds: Option<f64>,
}

/// The volume's newest modification (`DescribeVolumesModifications`): an in-place change of
/// type, size, IOPS or throughput.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Modification {
    /// `modifying`, `optimizing`, `completed` or `failed`.
    pub state: String,
    pub progress_percent: Option<f64>,
    pub original_volume_type: Option<String>,
    pub target_volume_type: Option<String>,
    pub target_size_gib: Option<u64>,
    pub target_iops: Option<u64>,
    pub target_throughput_mibps: Option<u64>,
    /// Unix seconds.
    pub start_time: Option<f64>,
    pub end_time: Option<f64>,
}

impl Modification {
    /// `modifying` or `optimizing`: the new limits are coming (or already in force, while
    /// optimizing, at a performance between the old and the new).
    pub fn in_progress(&self) -> bool {
        matches!(self.state.as_str(), "modifying" | "optimizing")
    }
}

/// EBS NVMe log page counters of one volume, converted to seconds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NvmeCounters {
    pub exceeded_iops_seconds: f64,
    pub exceeded_throughput_seconds: f64,
    pub queue_length: f64,
    pub read_ops: u64,
    pub write_ops: u64,
    /// Total time of completed reads/writes, seconds (the latency histograms' sums).
    pub read_time_seconds: f64,
    pub write_time_seconds: f64,
    /// Latency histograms as (upper bound in seconds, I/Os in this bin), bins in order.
    pub read_latency: Vec<(f64, u64)>,
    pub write_latency: Vec<(f64, u64)>,
}

/// One EBS volume attached to this instance.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VolumeState {
    pub volume_id: String,
    /// Kernel block device name (`nvme1n1`, `xvdf`, `loop3` by config), when known.
    pub device: Option<String>,
    pub volume_type: String,
    pub availability_zone: String,
    pub size_bytes: u64,
    /// Provisioned IOPS as DescribeVolumes reports it (gp3/io1/io2; real AWS also reports gp2's
    /// baseline here).
    pub provisioned_iops: Option<u64>,
    /// Provisioned throughput, MiB/s (gp3).
    pub throughput_mibps: Option<u64>,
    /// Baseline IOPS computed from type and size (gp2: 3/GiB, min 100, max 16,000).
    pub baseline_iops: Option<f64>,
    /// The newest CloudWatch point, while not older than the configured staleness.
    pub burst_balance: Option<BalancePoint>,
    /// The local model's estimate (percent), when the volume can burst and its device is known.
    pub estimate_percent: Option<f64>,
    /// Seconds until the bucket is empty at the recent net drain; +Inf when not draining, 0
    /// once empty (until it refills). Without an estimate (no basis yet), the latest it can
    /// empty: from the upper bound.
    pub seconds_to_empty: Option<f64>,
    pub nvme: Option<NvmeCounters>,
    /// Creation time (Unix seconds), from DescribeVolumes.
    pub created: Option<f64>,
    /// What the estimate rests on; `None`: no estimate yet, only its bounds.
    pub estimate_basis: Option<EstimateBasis>,
    /// Bounds of the bucket's level given the I/O the model saw (percent): 0 and 100 before
    /// anything is known, narrowing as the I/O seen drains or fills every possible start, equal
    /// to the estimate once a CloudWatch point anchored a minute the model saw whole.
    pub estimate_low_percent: Option<f64>,
    pub estimate_high_percent: Option<f64>,
    /// Current rates against the limits in force, once the volume's device has two readings.
    pub headroom: Option<Headroom>,
    pub status: Option<VolumeStatus>,
    pub modification: Option<Modification>,
    /// CloudWatch's 1-minute checks under `{InstanceId, VolumeId}`, newest point each, while not
    /// stale.
    pub checks: Vec<(VolumeCheck, CheckPoint)>,
}

/// Everything the agent encodes for the cloud side.
#[derive(Debug, Clone, Default)]
pub struct CloudSnapshot {
    /// Cloud features are on (discovery succeeded or was configured).
    pub enabled: bool,
    pub instance: Option<Instance>,
    /// Block devices found in sysfs, with their volume ids when EBS (or mapped).
    pub disks: Vec<BlockDevice>,
    pub volumes: Vec<VolumeState>,
    /// Instance-level burst balances from CloudWatch (newest point, while not stale).
    pub instance_balances: Vec<(InstanceBalance, BalancePoint)>,
    /// The instance's EBS limits and its volumes' rates against them.
    pub instance_ebs: Option<InstanceEbs>,
    /// The instance-level EBS checks (newest point each, while not stale).
    pub instance_checks: Vec<(InstanceCheck, CheckPoint)>,
    /// Instance-level EBS limits exceeded (from any EBS NVMe device's log page), seconds.
    pub instance_exceeded_iops_seconds: Option<f64>,
    pub instance_exceeded_throughput_seconds: Option<f64>,
    /// Calls by api and outcome (monotonic).
    pub requests: Vec<(Api, Outcome, u64)>,
    /// Metrics requested from GetMetricData, the unit CloudWatch bills (monotonic).
    pub metrics_requested: u64,
    /// Unix time of each api's last success.
    pub last_success: Vec<(Api, f64)>,
    /// Health of the cloud sources that are on (`cloud_imds` while discovery is pending,
    /// `cloud_describe`, `cloud_poll`, `cloud_nvme`), for `stallwatch_source_*`.
    pub sources: Vec<SourceStatus>,
}

impl CloudSnapshot {
    /// The EBS volume behind kernel device `dev`: the cloud side's mapping (config overrides,
    /// NVMe serials and Xen attachments of attached volumes), else the NVMe serial in sysfs.
    pub fn volume_of_device(&self, dev: &str) -> Option<&str> {
        self.volumes
            .iter()
            .find(|v| v.device.as_deref() == Some(dev))
            .map(|v| v.volume_id.as_str())
            .or_else(|| {
                self.disks
                    .iter()
                    .find(|d| d.name == dev)
                    .and_then(|d| d.volume_id.as_deref())
            })
    }
}

/// GetMetricData's price: $0.01 per 1,000 metrics requested (us-east-1 list price).
pub const DOLLARS_PER_METRIC: f64 = 0.01 / 1000.0;
