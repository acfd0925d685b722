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
    /// Timeout of each EC2/CloudWatch request.
    pub request_timeout: Duration,
    /// DescribeVolumes cadence (attachments, sizes and types change rarely).
    pub describe_interval: Duration,
    /// GetMetricData cadence for BurstBalance.
    pub poll_interval: Duration,
    /// Cadence while any volume's balance (local estimate, or CloudWatch when there is no
    /// estimate) is below `fast_poll_below_percent`.
    pub fast_poll_interval: Duration,
    pub fast_poll_below_percent: f64,
    /// How far back each GetMetricData call looks (EBS points arrive minutes late).
    pub lookback: Duration,
    /// A CloudWatch point older than this is no longer exported.
    pub staleness: Duration,
    /// First retry delay after a failed call; doubles per failure up to the call's interval.
    pub retry_min: Duration,
    /// Local credit-model cadence: how often the host sampler's latest disk counters are looked
    /// at (a reading advances the model once, at its own time) and the EBS NVMe log pages read.
    pub model_interval: Duration,
    /// Also poll the instance's `EBSIOBalance%`, `EBSByteBalance%` (and `CPUCreditBalance` on T
    /// instances) with the volumes' BurstBalance.
    pub instance_balances: bool,
    /// Read the EBS NVMe statistics log page of each EBS NVMe device (needs CAP_SYS_ADMIN).
    pub nvme_stats: bool,
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
            lookback: Duration::from_secs(20 * 60),
            staleness: Duration::from_secs(20 * 60),
            retry_min: Duration::from_secs(10),
            model_interval: Duration::from_secs(1),
            instance_balances: true,
            nvme_stats: true,
            dev_dir: PathBuf::from("/dev"),
            volumes: Vec::new(),
        }
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
