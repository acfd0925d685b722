//! What the cloud side publishes for the agent to encode: plain values, swapped whole into an
//! `ArcSwap` after every change, so a scrape never waits on AWS or on a hung device.

use stallwatch_collector::sample::SourceStatus;

use crate::devices::BlockDevice;

/// The AWS calls the poller makes (the `api` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Api {
    Imds,
    DescribeVolumes,
    GetMetricData,
}

impl Api {
    pub const ALL: [Api; 3] = [Api::Imds, Api::DescribeVolumes, Api::GetMetricData];
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Imds => "imds",
            Api::DescribeVolumes => "describe_volumes",
            Api::GetMetricData => "get_metric_data",
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
    /// Seconds until the bucket is empty at the recent net drain; +Inf when not draining.
    pub seconds_to_empty: Option<f64>,
    pub nvme: Option<NvmeCounters>,
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
