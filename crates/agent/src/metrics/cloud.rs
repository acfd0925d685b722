//! The cloud side's metrics (AWS): attached EBS volumes, CloudWatch `BurstBalance` with its own
//! timestamp, the local credit model, EBS NVMe exceeded-limit time, and what polling AWS costs.
//! Labels are volume ids, types and device names from AWS and sysfs: bounded by the instance's
//! attachments (at most a few dozen), nothing a container can choose.

use std::borrow::Cow;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType::{Counter, Gauge, Histogram};
use prometheus_client::registry::Unit;
use stallwatch_cloud::snapshot::{CloudSnapshot, InstanceBalance, VolumeState, DOLLARS_PER_METRIC};

use crate::node::Node;

use super::{family, opt, single, Labels};

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
    pub node: Arc<ArcSwap<Node>>,
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
        let node = self.node.load();
        let s: &CloudSnapshot = &node.cloud;
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
                if let Some(id) = node.volume_of(&d.name) {
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
            per_volume(s, |v| Some(v.size_bytes as f64)),
        )?;
        family(
            &mut e,
            "ebs_volume_baseline_iops",
            "Baseline IOPS: gp2 3 per GiB (min 100, max 16,000), gp3/io1/io2 the provisioned IOPS.",
            None,
            Gauge,
            per_volume(s, |v| v.baseline_iops),
        )?;
        family(
            &mut e,
            "ebs_volume_provisioned_iops",
            "IOPS as DescribeVolumes reports them (absent when not reported).",
            None,
            Gauge,
            per_volume(s, |v| v.provisioned_iops.map(|x| x as f64)),
        )?;
        family(
            &mut e,
            "ebs_volume_provisioned_throughput_bytes_per_second",
            "Provisioned throughput (gp3), from DescribeVolumes.",
            None,
            Gauge,
            per_volume(s, |v| v.throughput_mibps.map(|x| x as f64 * 1048576.0)),
        )?;
        family(
            &mut e,
            "ebs_burst_balance_percent",
            "CloudWatch BurstBalance: the newest per-minute average (gp2 < 1 TiB, st1, sc1), until it is older than [cloud] staleness.",
            None,
            Gauge,
            per_volume(s, |v| v.burst_balance.map(|p| p.percent)),
        )?;
        family(
            &mut e,
            "ebs_burst_balance_timestamp_seconds",
            "Start of the minute the exported BurstBalance point averages (Unix time); CloudWatch publishes it minutes late.",
            None,
            Gauge,
            per_volume(s, |v| v.burst_balance.map(|p| p.timestamp)),
        )?;
        family(
            &mut e,
            "ebs_burst_balance_estimate_percent",
            "Local credit-bucket estimate, every second from /proc/diskstats, re-anchored to each CloudWatch point.",
            None,
            Gauge,
            per_volume(s, |v| v.estimate_percent),
        )?;
        family(
            &mut e,
            "ebs_burst_seconds_to_empty",
            "Seconds until the credit bucket is empty at the last minute's net drain; +Inf when not draining.",
            None,
            Gauge,
            per_volume(s, |v| v.seconds_to_empty),
        )?;
        family(
            &mut e,
            "ebs_exceeded_iops",
            "Time the volume's I/O exceeded its provisioned IOPS (EBS NVMe log page 0xD0).",
            Some(&secs),
            Counter,
            per_volume(s, |v| v.nvme.as_ref().map(|n| n.exceeded_iops_seconds)),
        )?;
        family(
            &mut e,
            "ebs_exceeded_throughput",
            "Time the volume's I/O exceeded its provisioned throughput (EBS NVMe log page 0xD0).",
            Some(&secs),
            Counter,
            per_volume(s, |v| {
                v.nvme.as_ref().map(|n| n.exceeded_throughput_seconds)
            }),
        )?;
        family(
            &mut e,
            "ebs_volume_queue_length",
            "EBS volume queue length (EBS NVMe log page 0xD0).",
            None,
            Gauge,
            per_volume(s, |v| v.nvme.as_ref().map(|n| n.queue_length)),
        )?;
        for (name, help, pick) in [
            (
                "ebs_read_latency",
                "EBS read latency as the volume sees it (EBS NVMe log page 0xD0 histogram; sum is the total read time).",
                true,
            ),
            (
                "ebs_write_latency",
                "EBS write latency as the volume sees it (EBS NVMe log page 0xD0 histogram; sum is the total write time).",
                false,
            ),
        ] {
            let rows: Vec<(&VolumeState, &stallwatch_cloud::snapshot::NvmeCounters)> = s
                .volumes
                .iter()
                .filter_map(|v| v.nvme.as_ref().map(|n| (v, n)))
                .filter(|(_, n)| !(if pick { &n.read_latency } else { &n.write_latency }).is_empty())
                .collect();
            if rows.is_empty() {
                continue;
            }
            let mut m = e.encode_descriptor(name, help, Some(&secs), Histogram)?;
            for (v, n) in rows {
                let (bins, sum) = if pick {
                    (&n.read_latency, n.read_time_seconds)
                } else {
                    (&n.write_latency, n.write_time_seconds)
                };
                let (buckets, count) = latency_buckets(bins);
                m.encode_family(&vol(v))?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
        let inst = |b: InstanceBalance| {
            s.instance_balances
                .iter()
                .find(|(k, _)| *k == b)
                .map(|(_, p)| p.percent)
        };
        opt(
            &mut e,
            "ec2_ebs_io_balance_percent",
            "CloudWatch EBSIOBalance%: the instance's EBS IOPS burst bucket (smaller instance sizes); at 0 every volume is held to the instance's EBS baseline.",
            None,
            Gauge,
            inst(InstanceBalance::EbsIo),
        )?;
        opt(
            &mut e,
            "ec2_ebs_byte_balance_percent",
            "CloudWatch EBSByteBalance%: the instance's EBS throughput burst bucket.",
            None,
            Gauge,
            inst(InstanceBalance::EbsByte),
        )?;
        opt(
            &mut e,
            "ec2_cpu_credit_balance",
            "CloudWatch CPUCreditBalance of a T instance (credits).",
            None,
            Gauge,
            inst(InstanceBalance::CpuCredit),
        )?;
        family(
            &mut e,
            "ec2_balance_timestamp_seconds",
            "Start of the minute the exported instance balance averages (Unix time).",
            None,
            Gauge,
            s.instance_balances.iter().map(|(b, p)| {
                (
                    vec![("balance", Cow::Borrowed(b.cloudwatch_metric()))],
                    p.timestamp,
                )
            }),
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

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use stallwatch_cloud::snapshot::{Api, BalancePoint, Instance, NvmeCounters, Outcome};

    fn scrape(snap: CloudSnapshot) -> String {
        let mut r = Registry::with_prefix("stallwatch");
        r.register_collector(Box::new(CloudCollector {
            node: Arc::new(ArcSwap::from_pointee(crate::node::Node::of_cloud(snap))),
        }));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }

    #[test]
    fn an_ebs_nvme_volume_is_encoded_with_its_log_page_counters_and_latency_histograms() {
        let snap = CloudSnapshot {
            enabled: true,
            instance: Some(Instance {
                instance_id: "i-1".into(),
                region: "eu-west-1".into(),
                availability_zone: "eu-west-1a".into(),
                instance_type: "m5.large".into(),
            }),
            volumes: vec![VolumeState {
                volume_id: "vol-0abc".into(),
                device: Some("nvme1n1".into()),
                volume_type: "gp2".into(),
                availability_zone: "eu-west-1a".into(),
                size_bytes: 100 << 30,
                baseline_iops: Some(300.0),
                burst_balance: Some(BalancePoint {
                    percent: 42.0,
                    timestamp: 1_700_000_000.0,
                }),
                estimate_percent: Some(40.5),
                seconds_to_empty: Some(f64::INFINITY),
                nvme: Some(NvmeCounters {
                    exceeded_iops_seconds: 1.5,
                    exceeded_throughput_seconds: 0.25,
                    queue_length: 3.0,
                    read_ops: 10,
                    write_ops: 7,
                    read_time_seconds: 0.012,
                    write_time_seconds: 0.02,
                    // Out of order and with a duplicated bound, as a device may report.
                    read_latency: vec![(0.001, 6), (0.0005, 3), (0.001, 1)],
                    write_latency: vec![(0.004, 7)],
                }),
                ..VolumeState::default()
            }],
            instance_exceeded_iops_seconds: Some(2.0),
            instance_exceeded_throughput_seconds: Some(0.0),
            requests: vec![(Api::GetMetricData, Outcome::Throttled, 2)],
            metrics_requested: 3000,
            ..CloudSnapshot::default()
        };
        let t = crate::metrics::exposition::fix_infinities(scrape(snap));
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
        let t = scrape(CloudSnapshot::default());
        assert!(t.contains("stallwatch_cloud_enabled 0"), "{t}");
        assert!(!t.contains("stallwatch_cloud_requests_total"), "{t}");
        assert!(!t.contains("stallwatch_ebs_"), "{t}");
    }
}
