//! The cloud side's settings (the agent's `[cloud]` section parses into this).

use std::path::PathBuf;
use std::time::Duration;

/// `enabled = "auto"` (default): on when IMDS answers; `true`: on, keep trying IMDS (or use the
/// configured instance); `false`: off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Enabled {
    #[default]
    Auto,
    On,
    Off,
}

/// A device → volume mapping set by hand, for devices the agent cannot map itself (tests use
/// a loop device standing in for a gp2 volume; odd hypervisors).
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeOverride {
    pub device: String,
    pub volume_id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CloudConfig {
    pub enabled: Enabled,
    /// Overrides the region IMDS reports.
    pub region: Option<String>,
    /// With `region`, skips IMDS discovery entirely.
    pub instance_id: Option<String>,
    pub availability_zone: Option<String>,
    pub imds_endpoint: Option<String>,
    /// Connect/read timeout of each IMDS call; off EC2 this is how long discovery takes.
    pub imds_timeout: Duration,
    pub ec2_endpoint: Option<String>,
    pub cloudwatch_endpoint: Option<String>,
    /// Timeout of each EC2/CloudWatch request ([`CloudConfig::call_deadline`] bounds a whole
    /// call).
    pub request_timeout: Duration,
    /// DescribeVolumes cadence (attachments, sizes and types change rarely).
    pub describe_interval: Duration,
    /// GetMetricData cadence for BurstBalance.
    pub poll_interval: Duration,
    /// Cadence while the estimate needs CloudWatch soon: a followed bucket not anchored yet
    /// (for its first 15 minutes), one that empties within `fast_poll_empty_within`, or any
    /// volume's balance (local estimate, else CloudWatch) below `fast_poll_below_percent`. Also
    /// the describe cadence while a modification is under way or a volume initializes or is
    /// impaired.
    pub fast_poll_interval: Duration,
    pub fast_poll_below_percent: f64,
    pub fast_poll_empty_within: Duration,
    /// How far back each GetMetricData call looks (EBS points arrive minutes late).
    pub lookback: Duration,
    /// A CloudWatch point older than this is no longer exported.
    pub staleness: Duration,
    /// First retry delay after a failed call; doubles per failure up to the call's interval.
    pub retry_min: Duration,
    /// The EBS NVMe log-page cadence and the cloud sampler's own tick. The credit model
    /// advances on the host sampler's publishes (each reading once, at its own time); this
    /// tick only catches up when one was missed.
    pub model_interval: Duration,
    /// Also poll the instance's `EBSIOBalance%`, `EBSByteBalance%` (and `CPUCreditBalance` on T
    /// instances) with the volumes' BurstBalance.
    pub instance_balances: bool,
    /// Also poll CloudWatch's 1-minute EBS checks of every attached volume
    /// (`VolumeStalledIOCheck`, `VolumeIOPSExceededCheck`, `VolumeThroughputExceededCheck`) and
    /// of the instance: 3 metrics per volume and 2 per instance in every poll.
    pub checks: bool,
    /// Read the EBS NVMe statistics log page of each EBS NVMe device (needs CAP_SYS_ADMIN).
    pub nvme_stats: bool,
    /// Where the credit model's state is kept for a restart within this boot (`None`: not
    /// kept); see `persist`. A tmpfs (`/run`) lives exactly as long as the disk counters it
    /// refers to, and never waits on a disk.
    pub state_file: Option<PathBuf>,
    /// Where device nodes are (`/dev`; in a container, the host's /dev mounted somewhere).
    pub dev_dir: PathBuf,
    pub volumes: Vec<VolumeOverride>,
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            enabled: Enabled::Auto,
            region: None,
            instance_id: None,
            availability_zone: None,
            imds_endpoint: None,
            imds_timeout: Duration::from_secs(1),
            ec2_endpoint: None,
            cloudwatch_endpoint: None,
            request_timeout: Duration::from_secs(10),
            describe_interval: Duration::from_secs(300),
            poll_interval: Duration::from_secs(300),
            fast_poll_interval: Duration::from_secs(60),
            fast_poll_below_percent: 30.0,
            fast_poll_empty_within: Duration::from_secs(3600),
            lookback: Duration::from_secs(20 * 60),
            staleness: Duration::from_secs(20 * 60),
            retry_min: Duration::from_secs(10),
            model_interval: Duration::from_secs(1),
            instance_balances: true,
            checks: true,
            nvme_stats: true,
            state_file: Some(PathBuf::from(crate::persist::DEFAULT_STATE_FILE)),
            dev_dir: PathBuf::from("/dev"),
            volumes: Vec::new(),
        }
    }
}

impl CloudConfig {
    /// The whole of one discovery, each source's deadline as the driver holds it to: the IMDS
    /// token and identity calls (each bounded by `imds_timeout` for connect and read), then
    /// building the AWS clients and their credentials chain.
    pub fn discovery_deadline(&self) -> Duration {
        self.imds_timeout.saturating_mul(3) + self.request_timeout
    }

    /// The whole of one DescribeVolumes or GetMetricData pass, every page and batch included
    /// (each request is bounded by `request_timeout`; the SDK tries a call up to three times).
    pub fn call_deadline(&self) -> Duration {
        self.request_timeout.saturating_mul(3)
    }
}

/// The delay before retry number `failures` (1-based): `min · 2^(failures-1)`, capped.
pub fn backoff(min: Duration, cap: Duration, failures: u32) -> Duration {
    let f = failures.saturating_sub(1).min(20);
    min.saturating_mul(1u32 << f).min(cap.max(min))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(10), s(300), 1), s(10));
        assert_eq!(backoff(s(10), s(300), 2), s(20));
        assert_eq!(backoff(s(10), s(300), 5), s(160));
        assert_eq!(backoff(s(10), s(300), 6), s(300));
        assert_eq!(backoff(s(10), s(300), 1000), s(300));
        assert_eq!(backoff(s(10), s(1), 3), s(10), "cap below min: min wins");
    }
}
