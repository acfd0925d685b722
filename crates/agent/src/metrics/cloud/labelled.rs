//! The cloud families with a second label besides the volume: headroom and time to the limit by
//! `limit`, the estimate's `basis`, status and modification words, CloudWatch checks by `check`.
//! Each label is a small fixed set (or AWS's own status words), so the rows stay bounded by the
//! instance's attachments.

use std::borrow::Cow;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::Gauge;
use stallwatch_cloud::snapshot::{CloudSnapshot, Headroom, VolumeState};

use super::super::table::{family, Labels, NONE, RATIO};
use super::{info, instance_headroom, vol};

/// `{limit="iops"|"throughput"}` rows of a headroom: the share left and when the trend reaches
/// the limit.
fn limit_rows(h: &Headroom) -> [(&'static str, f64, Option<f64>); 2] {
    [
        ("iops", h.iops_ratio(), h.iops_limit_in_seconds),
        ("throughput", h.bytes_ratio(), h.bytes_limit_in_seconds),
    ]
}

/// Per-volume families with a second label: headroom and time to the limit by `limit`, the
/// estimate's basis, status, modification state, CloudWatch checks by `check`.
pub(super) fn per_volume(e: &mut DescriptorEncoder<'_>, s: &CloudSnapshot) -> std::fmt::Result {
    fn with<'a>(v: &'a VolumeState, k: &'static str, val: &'static str) -> Labels<'a> {
        let mut l = vol(v);
        l.push((k, Cow::Borrowed(val)));
        l
    }
    family(
        e,
        "ebs_volume_headroom",
        "Share of the limit in force left (1 − rate / limit, at least 0), by limit (iops, throughput).",
        RATIO,
        Gauge,
        s.volumes.iter().flat_map(|v| {
            v.headroom
                .iter()
                .flat_map(limit_rows)
                .map(move |(k, r, _)| (with(v, "limit", k), r))
        }),
    )?;
    family(
        e,
        "ebs_volume_seconds_to_limit",
        "Seconds until the rate reaches the limit in force at the last minute's trend; 0 at the limit, +Inf while not rising (a rise must be twice its standard error).",
        NONE,
        Gauge,
        s.volumes.iter().flat_map(|v| {
            v.headroom.iter().flat_map(limit_rows).filter_map(move |(k, _, eta)| {
                eta.map(|t| (with(v, "limit", k), t))
            })
        }),
    )?;
    family(
        e,
        "ebs_burst_balance_estimate_basis",
        "What the local estimate rests on (1): cloudwatch (an anchored point), new_volume (created minutes ago, full less the I/O counted since), restored (the agent's own estimate from before a restart in this boot).",
        NONE,
        Gauge,
        s.volumes.iter().filter_map(|v| {
            v.estimate_basis
                .map(|b| (with(v, "basis", b.as_str()), 1.0))
        }),
    )?;
    info(
        e,
        "ebs_volume_status_info",
        "DescribeVolumeStatus: status (ok, warning, impaired, insufficient-data), io_enabled (passed, failed) and io_performance (normal, degraded, severely-degraded, stalled; gp3/io1/io2).",
        s.volumes.iter().filter_map(|v| {
            let st = v.status.as_ref()?;
            let mut l = vol(v);
            l.push(("status", Cow::Borrowed(st.status.as_str())));
            l.push(("io_enabled", Cow::Borrowed(st.io_enabled.as_deref().unwrap_or(""))));
            l.push(("io_performance", Cow::Borrowed(st.io_performance.as_deref().unwrap_or(""))));
            Some(l)
        }),
    )?;
    info(
        e,
        "ebs_volume_modification_info",
        "The volume's newest modification (in progress, or ended within the hour): state (modifying, optimizing, completed, failed) and the type it goes to.",
        s.volumes.iter().filter_map(|v| {
            let m = v.modification.as_ref()?;
            let mut l = vol(v);
            l.push(("state", Cow::Borrowed(m.state.as_str())));
            l.push((
                "target_volume_type",
                Cow::Borrowed(m.target_volume_type.as_deref().unwrap_or(v.volume_type.as_str())),
            ));
            Some(l)
        }),
    )?;
    family(
        e,
        "ebs_volume_check",
        "CloudWatch's 1-minute EBS checks (dimensions InstanceId and VolumeId), the newest minute's maximum: 1 failed, 0 passed; check is stalled_io, iops_exceeded or throughput_exceeded.",
        NONE,
        Gauge,
        s.volumes.iter().flat_map(|v| {
            v.checks
                .iter()
                .map(move |(c, p)| (with(v, "check", c.as_str()), p.value))
        }),
    )
}

/// The instance's families with a second label.
pub(super) fn instance(e: &mut DescriptorEncoder<'_>, s: &CloudSnapshot) -> std::fmt::Result {
    let h = instance_headroom(s);
    family(
        e,
        "ec2_ebs_headroom",
        "Share of the instance's EBS limit in force left, by limit (iops, throughput).",
        RATIO,
        Gauge,
        h.iter()
            .flat_map(limit_rows)
            .map(|(k, r, _)| ([("limit", k)], r)),
    )?;
    family(
        e,
        "ec2_ebs_seconds_to_limit",
        "Seconds until the instance's summed rate reaches its EBS limit at the last minute's trend; 0 at it, +Inf while not rising.",
        NONE,
        Gauge,
        h.iter()
            .flat_map(limit_rows)
            .filter_map(|(k, _, eta)| eta.map(|t| ([("limit", k)], t))),
    )?;
    family(
        e,
        "ec2_ebs_check",
        "CloudWatch's instance-level EBS checks (InstanceEBSIOPSExceededCheck, InstanceEBSThroughputExceededCheck), the newest minute's maximum: 1 failed.",
        NONE,
        Gauge,
        s.instance_checks
            .iter()
            .map(|(c, p)| ([("check", c.as_str())], p.value)),
    )
}
