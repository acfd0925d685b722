//! The `ebs_credits` detector: an I/O stall the EBS volume (or the instance's EBS limits)
//! explains — an empty burst bucket, time over the provisioned IOPS or throughput (NVMe log
//! page), a volume at its limit in force (the cloud side's headroom), or a volume AWS reports
//! impaired or still initializing.

use super::causes::{ev, finding, io_pressure, Finding, Th};
use super::tick::Tick;
use super::wchan::WaitKind;
use super::who::{who_device, who_waits};
use super::{Cause, Severity, WhoDevice};
use crate::node::Node;

pub(super) fn ebs_credits(t: &Tick, node: &Node, th: &Th<'_>) -> Option<Finding> {
    let mut evidence = io_pressure(t, th)?;
    let empty = th.c.credits_empty / th.k; // the hold level is a fuller bucket
    let mut devices = Vec::new();
    let mut summary = Vec::new();
    for v in &node.cloud.volumes {
        let Some(dev) = &v.device else { continue };
        let active = t
            .disks
            .iter()
            .find(|d| &d.name == dev && (d.iops > 0.0 || d.in_flight > 0));
        let Some(d) = active else { continue };
        if let Some(p) = v.estimate_percent.or(v.burst_balance.map(|b| b.percent)) {
            if p / 100.0 <= empty {
                evidence.push(ev(
                    "ebs_burst_balance",
                    Some(&v.volume_id),
                    p / 100.0,
                    empty,
                    "ratio",
                ));
                summary.push(format!(
                    "{} ({}, {}) burst bucket empty ({:.1}%): held to {:.0} IOPS baseline",
                    v.volume_id,
                    v.volume_type,
                    dev,
                    p,
                    v.baseline_iops.unwrap_or(0.0)
                ));
                devices.push(who_device(d));
            }
        }
        // At its limit in force (provisioned for gp3/io1/io2, burst or baseline for the
        // others), from the disk counters in EBS's I/O units (the cloud side's headroom).
        if let Some(h) = &v.headroom {
            let share = th.x(th.c.limit_share);
            for (signal, what, used, limit, rate) in [
                (
                    "ebs_iops_used",
                    "IOPS",
                    1.0 - h.iops_ratio(),
                    h.iops_limit,
                    h.iops,
                ),
                (
                    "ebs_throughput_used",
                    "throughput",
                    1.0 - h.bytes_ratio(),
                    h.bytes_limit,
                    h.bytes_per_second,
                ),
            ] {
                if limit > 0.0 && used >= share {
                    evidence.push(ev(signal, Some(&v.volume_id), used, share, "ratio"));
                    let (r, l) = if what == "IOPS" {
                        (format!("{rate:.0}"), format!("{limit:.0}"))
                    } else {
                        (
                            format!("{:.1} MiB/s", rate / 1048576.0),
                            format!("{:.1} MiB/s", limit / 1048576.0),
                        )
                    };
                    summary.push(format!(
                        "{} ({}, {dev}) at its {what} limit: {r} of {l}",
                        v.volume_id, v.volume_type
                    ));
                    if !devices.iter().any(|w: &WhoDevice| w.name == d.name) {
                        devices.push(who_device(d));
                    }
                }
            }
        }
        // DescribeVolumeStatus: AWS itself says the volume is impaired or slow, or a volume
        // restored from a snapshot is still loading its blocks (first reads stall, whatever
        // the credits say).
        if let Some(st) = &v.status {
            if st.troubled() || st.initializing() {
                let what = if st.initializing() {
                    let p = st
                        .initialization
                        .as_ref()
                        .and_then(|i| i.progress_percent)
                        .map(|p| format!(" ({p:.0}% done)"))
                        .unwrap_or_default();
                    format!(
                        "still initializing from its snapshot{p}: first reads of each block stall"
                    )
                } else {
                    format!(
                        "reported {} by AWS (io-performance {})",
                        st.status,
                        st.io_performance.as_deref().unwrap_or("?")
                    )
                };
                evidence.push(ev(
                    "ebs_volume_status",
                    Some(&v.volume_id),
                    1.0,
                    1.0,
                    "flag",
                ));
                summary.push(format!("{} ({dev}) {what}", v.volume_id));
                if !devices.iter().any(|w: &WhoDevice| w.name == d.name) {
                    devices.push(who_device(d));
                }
            }
        }
    }
    for (kind, p) in &node.cloud.instance_balances {
        let name = kind.cloudwatch_metric();
        if name.starts_with("EBS") && p.percent / 100.0 <= empty {
            evidence.push(ev(
                "instance_ebs_balance",
                Some(name),
                p.percent / 100.0,
                empty,
                "ratio",
            ));
            summary.push(format!("the instance's {name} is empty ({:.1}%): every volume is held to the instance baseline", p.percent));
        }
    }
    for (vol, dev, iops, tp) in &t.ebs_exceeded {
        let name = dev.as_deref().unwrap_or("?");
        for (signal, what, secs) in [
            ("ebs_exceeded_iops_seconds", "IOPS", *iops),
            ("ebs_exceeded_throughput_seconds", "throughput", *tp),
        ] {
            if secs > 0.0 {
                evidence.push(ev(signal, Some(vol), secs, 0.0, "seconds"));
                summary.push(format!(
                    "{vol} ({name}) over its provisioned {what} for {secs:.1} s of the last {:.0} s (NVMe log page)",
                    t.dt
                ));
            }
        }
        if let Some(d) = t.disks.iter().find(|d| Some(&d.name) == dev.as_ref()) {
            if !devices.iter().any(|w: &WhoDevice| w.name == d.name) {
                devices.push(who_device(d));
            }
        }
    }
    if summary.is_empty() {
        return None;
    }
    let mut who = who_waits(node, |d| {
        WaitKind::of(d.wchan.as_deref()) == WaitKind::Device
    });
    who.devices = devices;
    Some(finding(
        Cause::EbsCredits,
        Severity::Critical,
        summary.join("; "),
        evidence,
        who,
    ))
}
