//! The cloud side's metrics (AWS): attached EBS volumes, CloudWatch `BurstBalance` with its own
//! timestamp, the local credit model, EBS NVMe exceeded-limit time, and what polling AWS costs.
//! Labels are volume ids, types and device names from AWS and sysfs: bounded by the instance's
//! attachments (at most a few dozen), nothing a container can choose.

use std::borrow::Cow;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::{Counter, Gauge};
use stallwatch_cloud::devices::BlockDevice;
use stallwatch_cloud::snapshot::{
    CloudSnapshot, Headroom, InstanceBalance, NvmeCounters, VolumeState, DOLLARS_PER_METRIC,
};

use super::table::{counter, family, flag, gauge, histograms, labelled, num, rows};
use super::table::{Labels, Row, BYTES, NONE, RATIO, SECONDS};
use crate::node::Node;

/// The device's bins (upper bound, count in the bin) as histogram buckets: per-bucket counts
/// with the bins' upper bounds as `le`, sorted, and the total as the `+Inf` bucket. Bins with
/// the same upper bound are merged.
fn latency_buckets(bins: &[(f64, u64)]) -> (Vec<(f64, u64)>, u64) {
    let mut b: Vec<(f64, u64)> = bins
        .iter()
        .filter(|(le, _)| le.is_finite())
        .copied()
        .collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut out: Vec<(f64, u64)> = Vec::with_capacity(b.len() + 1);
    for (le, c) in b {
        match out.last_mut() {
            Some(last) if last.0 == le => last.1 += c,
            _ => out.push((le, c)),
        }
    }
    let total: u64 = out.iter().map(|(_, c)| c).sum();
    out.push((f64::INFINITY, 0));
    (out, total)
}

#[derive(Debug)]
pub struct CloudCollector {
    /// The joined node: the cloud snapshot, and EBS volume ids by kernel device name.
    pub node: Arc<ArcSwap<Node>>,
}

/// Whether the cloud side is on at all (`cloud/src/runner.rs`).
pub const SWITCH: &[Row<CloudSnapshot>] = &[gauge(
    "cloud_enabled",
    "1 when the cloud features are on (IMDS answered or the instance was configured).",
    NONE,
    |s| flag(s.enabled),
)];

/// Block devices in sysfs (`cloud/src/devices.rs`), described even off EC2.
pub const DISK: &[Row<BlockDevice>] = &[gauge(
    "disk_io_timeout",
    "The block device's I/O timeout (queue/io_timeout). Amazon Linux sets EBS NVMe to 4294967295 s: a stalled volume never errors, its I/O waits in D.",
    SECONDS,
    |d| d.io_timeout_seconds,
)];

/// One attached EBS volume: DescribeVolumes (`cloud/src/ec2.rs`), CloudWatch
/// (`cloud/src/cloudwatch.rs`), the credit model (`cloud/src/model.rs`) and the NVMe log
/// page (`cloud/src/nvme.rs`).
pub const VOLUME: &[Row<VolumeState>] = &[
    gauge("ebs_volume_size", "Size of the EBS volume.", BYTES, |v| {
        Some(v.size_bytes as f64)
    }),
    gauge(
        "ebs_volume_baseline_iops",
        "Baseline IOPS: gp2 3 per GiB (min 100, max 16,000), gp3/io1/io2 the provisioned IOPS.",
        NONE,
        |v| v.baseline_iops,
    ),
    gauge(
        "ebs_volume_provisioned_iops",
        "IOPS as DescribeVolumes reports them (absent when not reported).",
        NONE,
        |v| num(v.provisioned_iops),
    ),
    gauge(
        "ebs_volume_provisioned_throughput_bytes_per_second",
        "Provisioned throughput (gp3), from DescribeVolumes.",
        NONE,
        |v| v.throughput_mibps.map(|x| x as f64 * 1048576.0),
    ),
    gauge(
        "ebs_burst_balance_percent",
        "CloudWatch BurstBalance: the newest per-minute average (gp2 < 1 TiB, st1, sc1), until it is older than [cloud] staleness.",
        NONE,
        |v| v.burst_balance.map(|p| p.percent),
    ),
    gauge(
        "ebs_burst_balance_timestamp_seconds",
        "Start of the minute the exported BurstBalance point averages (Unix time); CloudWatch publishes it minutes late.",
        NONE,
        |v| v.burst_balance.map(|p| p.timestamp),
    ),
    gauge(
        "ebs_burst_balance_estimate_percent",
        "Local credit-bucket estimate, every second from /proc/diskstats, re-anchored to each CloudWatch point.",
        NONE,
        |v| v.estimate_percent,
    ),
    gauge(
        "ebs_burst_seconds_to_empty",
        "Seconds until the credit bucket is empty at the last minute's net drain; +Inf when not draining, 0 once empty until it has refilled a minute of baseline earnings. Before the estimate has a basis: the latest it can empty (from the upper bound).",
        NONE,
        |v| v.seconds_to_empty,
    ),
    gauge(
        "ebs_burst_balance_estimate_low_percent",
        "Lowest level the credit bucket can be at given the I/O the model saw: 0 until something is known, equal to the estimate once a CloudWatch point anchored a minute the model saw whole.",
        NONE,
        |v| v.estimate_low_percent,
    ),
    gauge(
        "ebs_burst_balance_estimate_high_percent",
        "Highest level the credit bucket can be at given the I/O the model saw: 100 until something is known; a drain pulls it down before any CloudWatch point.",
        NONE,
        |v| v.estimate_high_percent,
    ),
    gauge(
        "ebs_volume_created_timestamp_seconds",
        "When the volume was created (DescribeVolumes createTime, Unix time).",
        NONE,
        |v| v.created,
    ),
    gauge(
        "ebs_volume_iops",
        "EBS operations per second over the host sampler's last interval, in EBS's units (up to 256 KiB each on SSD, 1 MiB on HDD).",
        NONE,
        |v| v.headroom.map(|h| h.iops),
    ),
    gauge(
        "ebs_volume_iops_limit",
        "IOPS the volume is held to now: provisioned (gp3/io1/io2), burst while credits last else baseline (gp2), 500/250 (st1/sc1).",
        NONE,
        |v| v.headroom.map(|h| h.iops_limit),
    ),
    gauge(
        "ebs_volume_iops_peak",
        "Highest per-interval IOPS over the last minute.",
        NONE,
        |v| v.headroom.map(|h| h.iops_peak),
    ),
    gauge(
        "ebs_volume_throughput_bytes_per_second",
        "Bytes read and written per second over the host sampler's last interval.",
        NONE,
        |v| v.headroom.map(|h| h.bytes_per_second),
    ),
    gauge(
        "ebs_volume_throughput_limit_bytes_per_second",
        "Throughput the volume is held to now (gp3 provisioned, gp2 128/250 MiB/s by size, io1/io2 256 KiB per provisioned IOPS up to their maximum, st1/sc1 burst while credits last else baseline).",
        NONE,
        |v| v.headroom.map(|h| h.bytes_limit),
    ),
    gauge(
        "ebs_volume_throughput_peak_bytes_per_second",
        "Highest per-interval throughput over the last minute.",
        NONE,
        |v| v.headroom.map(|h| h.bytes_per_second_peak),
    ),
    gauge(
        "ebs_volume_impaired",
        "1 while DescribeVolumeStatus says the volume is in trouble: status impaired, io-enabled failed, or io-performance degraded, severely-degraded or stalled.",
        NONE,
        |v| v.status.as_ref().and_then(|s| flag(s.troubled())),
    ),
    gauge(
        "ebs_volume_initialization_progress",
        "Initialization of a volume created from a snapshot (its blocks load lazily: first reads stall with full credits), 0 to 1.",
        RATIO,
        |v| init(v).and_then(|i| i.progress_percent).map(|p| p / 100.0),
    ),
    gauge(
        "ebs_volume_initialization_eta",
        "AWS's estimate of the time left to initialize the volume.",
        SECONDS,
        |v| init(v).and_then(|i| i.eta_seconds),
    ),
    gauge(
        "ebs_volume_modification_progress",
        "Progress of the volume's newest modification (in progress, or ended within the hour), 0 to 1.",
        RATIO,
        |v| v.modification.as_ref().and_then(|m| m.progress_percent).map(|p| p / 100.0),
    ),
    gauge(
        "ebs_volume_modification_start_timestamp_seconds",
        "When the volume's newest modification started (Unix time).",
        NONE,
        |v| v.modification.as_ref().and_then(|m| m.start_time),
    ),
    gauge(
        "ebs_volume_checks_timestamp_seconds",
        "Start of the minute of the newest CloudWatch check point of the volume (Unix time).",
        NONE,
        |v| v.checks.iter().map(|(_, p)| p.timestamp).reduce(f64::max),
    ),
    counter(
        "ebs_exceeded_iops",
        "Time the volume's I/O exceeded its provisioned IOPS (EBS NVMe log page 0xD0).",
        SECONDS,
        |v| v.nvme.as_ref().map(|n| n.exceeded_iops_seconds),
    ),
    counter(
        "ebs_exceeded_throughput",
        "Time the volume's I/O exceeded its provisioned throughput (EBS NVMe log page 0xD0).",
        SECONDS,
        |v| v.nvme.as_ref().map(|n| n.exceeded_throughput_seconds),
    ),
    gauge(
        "ebs_volume_queue_length",
        "EBS volume queue length (EBS NVMe log page 0xD0).",
        NONE,
        |v| v.nvme.as_ref().map(|n| n.queue_length),
    ),
];

fn init(v: &VolumeState) -> Option<&stallwatch_cloud::snapshot::Initialization> {
    v.status.as_ref()?.initialization.as_ref()
}

fn balance(s: &CloudSnapshot, b: InstanceBalance) -> Option<f64> {
    s.instance_balances
        .iter()
        .find(|(k, _)| *k == b)
        .map(|(_, p)| p.percent)
}

/// The instance's own burst balances (CloudWatch `AWS/EC2`, `cloud/src/cloudwatch.rs`).
pub const INSTANCE_BALANCES: &[Row<CloudSnapshot>] = &[
    gauge(
        "ec2_ebs_io_balance_percent",
        "CloudWatch EBSIOBalance%: the instance's EBS IOPS burst bucket (smaller instance sizes); at 0 every volume is held to the instance's EBS baseline.",
        NONE,
        |s| balance(s, InstanceBalance::EbsIo),
    ),
    gauge(
        "ec2_ebs_byte_balance_percent",
        "CloudWatch EBSByteBalance%: the instance's EBS throughput burst bucket.",
        NONE,
        |s| balance(s, InstanceBalance::EbsByte),
    ),
    gauge(
        "ec2_cpu_credit_balance",
        "CloudWatch CPUCreditBalance of a T instance (credits).",
        NONE,
        |s| balance(s, InstanceBalance::CpuCredit),
    ),
];

/// The instance's EBS limits exceeded (NVMe log page, `cloud/src/nvme.rs`).
pub const INSTANCE_EXCEEDED: &[Row<CloudSnapshot>] = &[
    counter(
        "ec2_ebs_exceeded_iops",
        "Time the instance's EBS I/O exceeded the instance's EBS IOPS limit (EBS NVMe log page 0xD0).",
        SECONDS,
        |s| s.instance_exceeded_iops_seconds,
    ),
    counter(
        "ec2_ebs_exceeded_throughput",
        "Time the instance's EBS I/O exceeded the instance's EBS throughput limit (EBS NVMe log page 0xD0).",
        SECONDS,
        |s| s.instance_exceeded_throughput_seconds,
    ),
];

mod labelled;

fn instance_headroom(s: &CloudSnapshot) -> Option<Headroom> {
    s.instance_ebs.as_ref()?.headroom
}

/// The instance's EBS limits (DescribeInstanceTypes) and its volumes' summed rates.
pub const INSTANCE_EBS: &[Row<CloudSnapshot>] = &[
    gauge(
        "ec2_ebs_baseline_iops",
        "The instance type's EBS baseline IOPS (DescribeInstanceTypes).",
        NONE,
        |s| s.instance_ebs.map(|i| i.baseline_iops),
    ),
    gauge(
        "ec2_ebs_maximum_iops",
        "The instance type's EBS maximum IOPS (held only while EBSIOBalance% lasts where it is above the baseline).",
        NONE,
        |s| s.instance_ebs.map(|i| i.maximum_iops),
    ),
    gauge(
        "ec2_ebs_baseline_throughput_bytes_per_second",
        "The instance type's EBS baseline throughput.",
        NONE,
        |s| s.instance_ebs.map(|i| i.baseline_bytes_per_second),
    ),
    gauge(
        "ec2_ebs_maximum_throughput_bytes_per_second",
        "The instance type's EBS maximum throughput.",
        NONE,
        |s| s.instance_ebs.map(|i| i.maximum_bytes_per_second),
    ),
    gauge(
        "ec2_ebs_iops",
        "EBS operations per second of every mapped volume summed, over the host sampler's last interval.",
        NONE,
        |s| instance_headroom(s).map(|h| h.iops),
    ),
    gauge(
        "ec2_ebs_iops_limit",
        "The instance's EBS IOPS limit in force: its maximum, or its baseline once EBSIOBalance% is spent.",
        NONE,
        |s| instance_headroom(s).map(|h| h.iops_limit),
    ),
    gauge(
        "ec2_ebs_throughput_bytes_per_second",
        "Throughput of every mapped volume summed, over the host sampler's last interval.",
        NONE,
        |s| instance_headroom(s).map(|h| h.bytes_per_second),
    ),
    gauge(
        "ec2_ebs_throughput_limit_bytes_per_second",
        "The instance's EBS throughput limit in force: its maximum, or its baseline once EBSByteBalance% is spent.",
        NONE,
        |s| instance_headroom(s).map(|h| h.bytes_limit),
    ),
    gauge(
        "ec2_ebs_checks_timestamp_seconds",
        "Start of the minute of the newest instance-level EBS check point (Unix time).",
        NONE,
        |s| s.instance_checks.iter().map(|(_, p)| p.timestamp).reduce(f64::max),
    ),
];

/// What polling AWS costs (`cloud/src/runner.rs`).
pub const POLLER: &[Row<CloudSnapshot>] = &[
    counter(
        "cloud_metrics_requested",
        "Metrics requested from CloudWatch GetMetricData (the unit it bills).",
        NONE,
        |s| Some(s.metrics_requested as f64),
    ),
    counter(
        "cloud_estimated_cost_dollars",
        "Estimated GetMetricData cost at $0.01 per 1,000 metrics requested.",
        NONE,
        |s| Some(s.metrics_requested as f64 * DOLLARS_PER_METRIC),
    ),
];

fn vol(v: &VolumeState) -> Labels<'_> {
    vec![("volume_id", Cow::Borrowed(v.volume_id.as_str()))]
}

/// Label-only families (value 1) describe things: `(labels)` per item.
fn info<'a>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    items: impl IntoIterator<Item = Labels<'a>>,
) -> std::fmt::Result {
    family(
        e,
        name,
        help,
        NONE,
        Gauge,
        items.into_iter().map(|l| (l, 1.0)),
    )
}

impl Collector for CloudCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let node = self.node.load();
        let s: &CloudSnapshot = &node.cloud;
        let e = &mut e;
        rows(e, SWITCH, s)?;
        info(
            e,
            "disk_info",
            "Block devices with model and serial from sysfs; volume_id for EBS volumes (NVMe serial, Xen attachment or [[cloud.volume]]).",
            s.disks.iter().map(|d| {
                let mut l: Labels<'_> = vec![
                    ("device", Cow::Borrowed(d.name.as_str())),
                    ("model", Cow::Borrowed(d.model.as_deref().unwrap_or(""))),
                    ("serial", Cow::Borrowed(d.serial.as_deref().unwrap_or(""))),
                ];
                if let Some(id) = node.volume_of(&d.name) {
                    l.push(("volume_id", Cow::Borrowed(id)));
                }
                l
            }),
        )?;
        let disks: Vec<_> = s
            .disks
            .iter()
            .map(|d| (vec![("device", Cow::Borrowed(d.name.as_str()))], d))
            .collect();
        labelled(e, DISK, &disks)?;
        if let Some(i) = &s.instance {
            info(
                e,
                "cloud_instance_info",
                "The EC2 instance this agent runs on (IMDS identity document or config).",
                [vec![
                    ("instance_id", Cow::Borrowed(i.instance_id.as_str())),
                    ("region", Cow::Borrowed(i.region.as_str())),
                    (
                        "availability_zone",
                        Cow::Borrowed(i.availability_zone.as_str()),
                    ),
                    ("instance_type", Cow::Borrowed(i.instance_type.as_str())),
                ]],
            )?;
        }
        info(
            e,
            "ebs_volume_info",
            "EBS volumes attached to this instance (DescribeVolumes); device is the kernel's name when known.",
            s.volumes.iter().map(|v| {
                let mut l = vol(v);
                l.push(("volume_type", Cow::Borrowed(v.volume_type.as_str())));
                l.push(("availability_zone", Cow::Borrowed(v.availability_zone.as_str())));
                if let Some(d) = &v.device {
                    l.push(("device", Cow::Borrowed(d.as_str())));
                }
                l
            }),
        )?;
        let volumes: Vec<_> = s.volumes.iter().map(|v| (vol(v), v)).collect();
        labelled(e, VOLUME, &volumes)?;
        labelled::per_volume(e, s)?;
        latency(e, s)?;
        rows(e, INSTANCE_BALANCES, s)?;
        rows(e, INSTANCE_EBS, s)?;
        labelled::instance(e, s)?;
        family(
            e,
            "ec2_balance_timestamp_seconds",
            "Start of the minute the exported instance balance averages (Unix time).",
            NONE,
            Gauge,
            s.instance_balances
                .iter()
                .map(|(b, p)| ([("balance", b.cloudwatch_metric())], p.timestamp)),
        )?;
        rows(e, INSTANCE_EXCEEDED, s)?;
        if !s.enabled {
            return Ok(());
        }
        family(
            e,
            "cloud_requests",
            "AWS calls by api (imds, describe_volumes, get_metric_data) and outcome (success, throttled, error).",
            NONE,
            Counter,
            s.requests.iter().map(|(a, o, n)| {
                ([("api", a.as_str()), ("outcome", o.as_str())], *n as f64)
            }),
        )?;
        rows(e, POLLER, s)?;
        family(
            e,
            "cloud_last_success_timestamp_seconds",
            "Unix time of each AWS api's last successful call.",
            NONE,
            Gauge,
            s.last_success
                .iter()
                .map(|(a, t)| ([("api", a.as_str())], *t)),
        )
    }
}

/// The EBS NVMe log page's read and write latency histograms, per volume that has one.
fn latency(e: &mut DescriptorEncoder<'_>, s: &CloudSnapshot) -> std::fmt::Result {
    type Pick = fn(&NvmeCounters) -> (&[(f64, u64)], f64);
    let sides: [(&str, &str, Pick); 2] = [
        (
            "ebs_read_latency",
            "EBS read latency as the volume sees it (EBS NVMe log page 0xD0 histogram; sum is the total read time).",
            |n| (&n.read_latency, n.read_time_seconds),
        ),
        (
            "ebs_write_latency",
            "EBS write latency as the volume sees it (EBS NVMe log page 0xD0 histogram; sum is the total write time).",
            |n| (&n.write_latency, n.write_time_seconds),
        ),
    ];
    for (name, help, pick) in sides {
        let items = s.volumes.iter().filter_map(|v| {
            let (bins, sum) = pick(v.nvme.as_ref()?);
            if bins.is_empty() {
                return None;
            }
            let (buckets, count) = latency_buckets(bins);
            Some((vol(v), sum, count, Cow::Owned(buckets)))
        });
        histograms(e, name, help, SECONDS, items)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::scrape;
    use crate::metrics::tests::snapshots::cloud_snapshot;

    fn collector(snap: CloudSnapshot) -> CloudCollector {
        CloudCollector {
            node: Arc::new(ArcSwap::from_pointee(Node::of_cloud(snap))),
        }
    }

    #[test]
    fn an_ebs_nvme_volume_is_encoded_with_its_log_page_counters_and_latency_histograms() {
        // The shared snapshot's vol-0abc: gp2 on nvme1n1, its latency bins out of order and
        // with a duplicated bound, as a device may report them.
        let t = scrape(collector(cloud_snapshot()));
        for want in [
            r#"stallwatch_ebs_exceeded_iops_seconds_total{volume_id="vol-0abc"} 1.5"#,
            r#"stallwatch_ebs_exceeded_throughput_seconds_total{volume_id="vol-0abc"} 0.25"#,
            r#"stallwatch_ebs_volume_queue_length{volume_id="vol-0abc"} 3.0"#,
            "stallwatch_ec2_ebs_exceeded_iops_seconds_total 2.0",
            r#"stallwatch_ebs_read_latency_seconds_bucket{le="0.0005",volume_id="vol-0abc"} 3"#,
            r#"stallwatch_ebs_read_latency_seconds_bucket{le="0.001",volume_id="vol-0abc"} 10"#,
            r#"stallwatch_ebs_read_latency_seconds_bucket{le="+Inf",volume_id="vol-0abc"} 10"#,
            r#"stallwatch_ebs_read_latency_seconds_count{volume_id="vol-0abc"} 10"#,
            r#"stallwatch_ebs_read_latency_seconds_sum{volume_id="vol-0abc"} 0.012"#,
            r#"stallwatch_ebs_write_latency_seconds_bucket{le="0.004",volume_id="vol-0abc"} 7"#,
            r#"stallwatch_ebs_burst_seconds_to_empty{volume_id="vol-0abc"} +Inf"#,
            r#"stallwatch_ebs_burst_balance_percent{volume_id="vol-0abc"} 42.0"#,
            r#"stallwatch_cloud_requests_total{api="get_metric_data",outcome="throttled"} 2"#,
            "stallwatch_cloud_estimated_cost_dollars_total 0.03", // + float noise
        ] {
            assert!(t.contains(want), "missing {want:?} in:\n{t}");
        }
    }

    #[test]
    fn off_ec2_only_the_switch_and_the_disks_are_encoded() {
        let t = scrape(collector(CloudSnapshot::default()));
        assert!(t.contains("stallwatch_cloud_enabled 0"), "{t}");
        assert!(!t.contains("stallwatch_cloud_requests_total"), "{t}");
        assert!(!t.contains("stallwatch_ebs_"), "{t}");
    }
}
