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
use prometheus_client::registry::Unit;
use stallwatch_cloud::snapshot::{CloudSnapshot, VolumeState, DOLLARS_PER_METRIC};

use super::{family, opt, single, Labels};

#[derive(Debug)]
pub struct CloudCollector {
    pub snap: Arc<ArcSwap<CloudSnapshot>>,
}

fn vol(v: &VolumeState) -> Labels<'_> {
    vec![("volume_id", Cow::Borrowed(v.volume_id.as_str()))]
}

fn per_volume<'a>(
    s: &'a CloudSnapshot,
    f: impl Fn(&VolumeState) -> Option<f64> + 'a,
) -> impl Iterator<Item = (Labels<'a>, f64)> + 'a {
    s.volumes
        .iter()
        .filter_map(move |v| f(v).map(|x| (vol(v), x)))
}

impl Collector for CloudCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.snap.load();
        let secs = Unit::Seconds;
        let bytes = Unit::Bytes;
        single(
            &mut e,
            "cloud_enabled",
            "1 when the cloud features are on (IMDS answered or the instance was configured).",
            None,
            Gauge,
            if s.enabled { 1.0 } else { 0.0 },
        )?;
        // Disks are described even off EC2: model, serial and (for EBS NVMe) the volume id.
        family(
            &mut e,
            "disk_info",
            "Block devices with model and serial from sysfs; volume_id for EBS volumes (NVMe serial, Xen attachment or [[cloud.volume]]).",
            None,
            Gauge,
            s.disks.iter().map(|d| {
                let mut l: Labels<'_> = vec![
                    ("device", Cow::Borrowed(d.name.as_str())),
                    ("model", Cow::Borrowed(d.model.as_deref().unwrap_or(""))),
                    ("serial", Cow::Borrowed(d.serial.as_deref().unwrap_or(""))),
                ];
                let mapped = s
                    .volumes
                    .iter()
                    .find(|v| v.device.as_deref() == Some(d.name.as_str()))
                    .map(|v| v.volume_id.as_str());
                if let Some(id) = d.volume_id.as_deref().or(mapped) {
                    l.push(("volume_id", Cow::Borrowed(id)));
                }
                (l, 1.0)
            }),
        )?;
        family(
            &mut e,
            "disk_io_timeout",
            "The block device's I/O timeout (queue/io_timeout). Amazon Linux sets EBS NVMe to 4294967295 s: a stalled volume never errors, its I/O waits in D.",
            Some(&secs),
            Gauge,
            s.disks.iter().filter_map(|d| {
                d.io_timeout_seconds
                    .map(|t| (vec![("device", Cow::Borrowed(d.name.as_str()))], t))
            }),
        )?;
        if let Some(i) = &s.instance {
            family(
                &mut e,
                "cloud_instance_info",
                "The EC2 instance this agent runs on (IMDS identity document or config).",
                None,
                Gauge,
                [(
                    vec![
                        ("instance_id", Cow::Borrowed(i.instance_id.as_str())),
                        ("region", Cow::Borrowed(i.region.as_str())),
                        (
                            "availability_zone",
                            Cow::Borrowed(i.availability_zone.as_str()),
                        ),
                        ("instance_type", Cow::Borrowed(i.instance_type.as_str())),
                    ],
                    1.0,
                )],
            )?;
        }
        family(
            &mut e,
            "ebs_volume_info",
            "EBS volumes attached to this instance (DescribeVolumes); device is the kernel's name when known.",
            None,
            Gauge,
            s.volumes.iter().map(|v| {
                let mut l = vol(v);
                l.push(("volume_type", Cow::Borrowed(v.volume_type.as_str())));
                l.push(("availability_zone", Cow::Borrowed(v.availability_zone.as_str())));
                if let Some(d) = &v.device {
                    l.push(("device", Cow::Borrowed(d.as_str())));
                }
                (l, 1.0)
            }),
        )?;
        family(
            &mut e,
            "ebs_volume_size",
            "Size of the EBS volume.",
            Some(&bytes),
            Gauge,
            per_volume(&s, |v| Some(v.size_bytes as f64)),
        )?;
        family(
            &mut e,
            "ebs_volume_baseline_iops",
            "Baseline IOPS: gp2 3 per GiB (min 100, max 16,000), gp3/io1/io2 the provisioned IOPS.",
            None,
            Gauge,
            per_volume(&s, |v| v.baseline_iops),
        )?;
        family(
            &mut e,
            "ebs_volume_provisioned_iops",
            "IOPS as DescribeVolumes reports them (absent when not reported).",
            None,
            Gauge,
            per_volume(&s, |v| v.provisioned_iops.map(|x| x as f64)),
        )?;
        family(
            &mut e,
            "ebs_volume_provisioned_throughput_bytes_per_second",
            "Provisioned throughput (gp3), from DescribeVolumes.",
            None,
            Gauge,
            per_volume(&s, |v| v.throughput_mibps.map(|x| x as f64 * 1048576.0)),
        )?;
        family(
            &mut e,
            "ebs_burst_balance_percent",
            "CloudWatch BurstBalance: the newest per-minute average (gp2 < 1 TiB, st1, sc1), until it is older than [cloud] staleness.",
            None,
            Gauge,
            per_volume(&s, |v| v.burst_balance.map(|p| p.percent)),
        )?;
        family(
            &mut e,
            "ebs_burst_balance_timestamp_seconds",
            "Start of the minute the exported BurstBalance point averages (Unix time); CloudWatch publishes it minutes late.",
            None,
            Gauge,
            per_volume(&s, |v| v.burst_balance.map(|p| p.timestamp)),
        )?;
        family(
            &mut e,
            "ebs_burst_balance_estimate_percent",
            "Local credit-bucket estimate, every second from /proc/diskstats, re-anchored to each CloudWatch point.",
            None,
            Gauge,
            per_volume(&s, |v| v.estimate_percent),
        )?;
        family(
            &mut e,
            "ebs_burst_seconds_to_empty",
            "Seconds until the credit bucket is empty at the last minute's net drain; +Inf when not draining.",
            None,
            Gauge,
            per_volume(&s, |v| v.seconds_to_empty),
        )?;
        family(
            &mut e,
            "ebs_exceeded_iops",
            "Time the volume's I/O exceeded its provisioned IOPS (EBS NVMe log page 0xD0).",
            Some(&secs),
            Counter,
            per_volume(&s, |v| v.nvme.map(|n| n.exceeded_iops_seconds)),
        )?;
        family(
            &mut e,
            "ebs_exceeded_throughput",
            "Time the volume's I/O exceeded its provisioned throughput (EBS NVMe log page 0xD0).",
            Some(&secs),
            Counter,
            per_volume(&s, |v| v.nvme.map(|n| n.exceeded_throughput_seconds)),
        )?;
        family(
            &mut e,
            "ebs_volume_queue_length",
            "EBS volume queue length (EBS NVMe log page 0xD0).",
            None,
            Gauge,
            per_volume(&s, |v| v.nvme.map(|n| n.queue_length)),
        )?;
        opt(
            &mut e,
            "ec2_ebs_exceeded_iops",
            "Time the instance's EBS I/O exceeded the instance's EBS IOPS limit (EBS NVMe log page 0xD0).",
            Some(&secs),
            Counter,
            s.instance_exceeded_iops_seconds,
        )?;
        opt(
            &mut e,
            "ec2_ebs_exceeded_throughput",
            "Time the instance's EBS I/O exceeded the instance's EBS throughput limit (EBS NVMe log page 0xD0).",
            Some(&secs),
            Counter,
            s.instance_exceeded_throughput_seconds,
        )?;
        if s.enabled {
            family(
                &mut e,
                "cloud_requests",
                "AWS calls by api (imds, describe_volumes, get_metric_data) and outcome (success, throttled, error).",
                None,
                Counter,
                s.requests.iter().map(|(a, o, n)| {
                    (
                        vec![
                            ("api", Cow::Borrowed(a.as_str())),
                            ("outcome", Cow::Borrowed(o.as_str())),
                        ],
                        *n as f64,
                    )
                }),
            )?;
            single(
                &mut e,
                "cloud_metrics_requested",
                "Metrics requested from CloudWatch GetMetricData (the unit it bills).",
                None,
                Counter,
                s.metrics_requested as f64,
            )?;
            single(
                &mut e,
                "cloud_estimated_cost_dollars",
                "Estimated GetMetricData cost at $0.01 per 1,000 metrics requested.",
                None,
                Counter,
                s.metrics_requested as f64 * DOLLARS_PER_METRIC,
            )?;
            family(
                &mut e,
                "cloud_last_success_timestamp_seconds",
                "Unix time of each AWS api's last successful call.",
                None,
                Gauge,
                s.last_success
                    .iter()
                    .map(|(a, t)| (vec![("api", Cow::Borrowed(a.as_str()))], *t)),
            )?;
        }
        Ok(())
    }
}
