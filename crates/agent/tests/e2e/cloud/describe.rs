//! The EC2 describe calls and the 1-minute checks, against moto and the harness's fakes
//! (DescribeVolumeStatus is the harness's; DescribeVolumesModifications is moto's with the
//! state the test sets; see tests/cloud/harness.py): status, io-performance and initialization
//! of a snapshot-restored volume; a gp2 volume flipped to io1 in place, its bucket dropped and
//! its limits switched within a describe interval; the instance type's EBS limits asked once;
//! the checks read under `{InstanceId, VolumeId}` and not `VolumeId` alone; a refused call named
//! with its IAM action while the volumes stay described.

use std::time::Duration;

use super::{minute, now, start_agent, Aws};
use crate::harness::Metrics;

/// A block device of this machine whose counters stand in for the gp2 volume's (no root
/// needed: the agent only reads /proc/diskstats).
fn some_disk() -> String {
    let names: Vec<String> = std::fs::read_dir("/sys/block")
        .expect("/sys/block")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    ["vda", "sda", "nvme0n1", "xvda"]
        .iter()
        .map(|s| s.to_string())
        .find(|n| names.contains(n))
        .or_else(|| names.into_iter().find(|n| !n.starts_with("ram")))
        .expect("a block device")
}

fn count(m: &Metrics, api: &str, outcome: &str) -> f64 {
    m.get(&format!(
        "stallwatch_cloud_requests_total{{api=\"{api}\",outcome=\"{outcome}\"}}"
    ))
    .unwrap_or(0.0)
}

#[test]
fn status_modifications_instance_limits_and_checks_are_followed() {
    let aws = Aws::start();
    let setup = aws.call(
        "setup",
        serde_json::json!({"volumes": [
            {"type": "gp2", "size": 100, "created_ago": 86_400},
            {"type": "gp3", "size": 100, "iops": 3000, "throughput": 125, "created_ago": 86_400},
        ]}),
    );
    let iid = setup["instance_id"].as_str().unwrap().to_string();
    let vols = Aws::volumes(&setup);
    let (gp2, gp3) = (&vols[0], &vols[1]);
    // The gp3 was restored from a snapshot (initializing) and its I/O has stalled.
    aws.call(
        "status",
        serde_json::json!({"volume_id": gp3, "status": "impaired", "io_performance": "stalled",
            "init_progress": 40, "init_eta": 600}),
    );
    // The checks, where AWS publishes them: under {InstanceId, VolumeId}. A decoy under
    // VolumeId alone says the gp2 stalled; the agent must not read it.
    let t = minute(now());
    let put = |dims: serde_json::Value, ns: &str, metric: &str, v: f64| {
        aws.call(
            "put",
            serde_json::json!({"dimensions": dims, "namespace": ns, "metric": metric,
                "unit": "Count", "points": [[t - 120.0, v]]}),
        );
    };
    put(
        serde_json::json!([["InstanceId", iid], ["VolumeId", gp3]]),
        "AWS/EBS",
        "VolumeStalledIOCheck",
        1.0,
    );
    put(
        serde_json::json!([["InstanceId", iid], ["VolumeId", gp2]]),
        "AWS/EBS",
        "VolumeIOPSExceededCheck",
        0.0,
    );
    put(
        serde_json::json!([["VolumeId", gp2]]),
        "AWS/EBS",
        "VolumeStalledIOCheck",
        1.0,
    );
    put(
        serde_json::json!([["InstanceId", iid]]),
        "AWS/EC2",
        "InstanceEBSIOPSExceededCheck",
        1.0,
    );

    let disk = some_disk();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("stallwatch.toml");
    crate::harness::write(
        &cfg,
        &aws.config(&format!(
            "describe_interval = \"4s\"\npoll_interval = \"4s\"\nfast_poll_interval = \"2s\"\nretry_min = \"1s\"\nlookback = \"30m\"\n\n[[cloud.volume]]\ndevice = \"{disk}\"\nvolume_id = \"{gp2}\"\n"
        )),
    );
    let agent = start_agent(&cfg);
    let s = |name: &str, vol: &str| format!("stallwatch_{name}{{volume_id=\"{vol}\"}}");
    let status = format!(
        "stallwatch_ebs_volume_status_info{{volume_id=\"{gp3}\",status=\"impaired\",io_enabled=\"passed\",io_performance=\"stalled\"}}"
    );
    let stalled =
        format!("stallwatch_ebs_volume_check{{volume_id=\"{gp3}\",check=\"stalled_io\"}}");
    let m = agent.wait_for(Duration::from_secs(40), "status, checks and limits", |m| {
        m.get(&status).is_some()
            && m.get(&stalled).is_some()
            && m.get("stallwatch_ec2_ebs_maximum_iops").is_some()
            && m.get(&s("ebs_volume_headroom_ratio", gp2).replace('}', ",limit=\"iops\"}"))
                .is_some()
    });
    assert_eq!(m.get(&s("ebs_volume_impaired", gp3)), Some(1.0));
    assert_eq!(m.get(&s("ebs_volume_impaired", gp2)), Some(0.0));
    assert_eq!(
        m.get(&s("ebs_volume_initialization_progress_ratio", gp3)),
        Some(0.4)
    );
    assert_eq!(
        m.get(&s("ebs_volume_initialization_eta_seconds", gp3)),
        Some(600.0)
    );
    assert_eq!(m.get(&stalled), Some(1.0));
    assert_eq!(
        m.get(&format!(
            "stallwatch_ebs_volume_check{{volume_id=\"{gp2}\",check=\"iops_exceeded\"}}"
        )),
        Some(0.0)
    );
    assert_eq!(
        m.get(&format!(
            "stallwatch_ebs_volume_check{{volume_id=\"{gp2}\",check=\"stalled_io\"}}"
        )),
        None,
        "the point under VolumeId alone is not the check"
    );
    assert_eq!(
        m.get("stallwatch_ec2_ebs_check{check=\"iops_exceeded\"}"),
        Some(1.0)
    );
    // The instance type's EBS limits (moto's m5.large): baseline 3,600 IOPS and 81.25 MB/s.
    assert_eq!(m.get("stallwatch_ec2_ebs_baseline_iops"), Some(3_600.0));
    assert_eq!(
        m.get("stallwatch_ec2_ebs_maximum_throughput_bytes_per_second"),
        Some(593_750_000.0)
    );
    assert!(
        m.get("stallwatch_ec2_ebs_iops_limit").is_some(),
        "the summed rates against it"
    );
    // The gp2 is followed: its bucket's bounds from the first readings, its limits now.
    assert_eq!(m.get(&s("ebs_volume_iops_limit", gp2)), Some(3_000.0));
    assert!(m
        .get(&s("ebs_burst_balance_estimate_high_percent", gp2))
        .is_some());
    assert!(m.text.contains(&format!(
        "stallwatch_ebs_volume_info{{volume_id=\"{gp2}\",volume_type=\"gp2\""
    )));
    // One poll asks everything: BurstBalance of moto's root and the gp2, two instance
    // balances, 3 checks for each of the 3 volumes and 2 for the instance.
    let calls = aws.metric_calls();
    assert_eq!(calls[0]["queries"], 2 + 2 + 9 + 2, "{calls:?}");

    // The operators' move before a critical period: gp2 flipped to io1 in place. EBS takes a
    // while ("optimizing"); the new limits are those DescribeVolumes reports.
    aws.call(
        "modify",
        serde_json::json!({"volume_id": gp2, "type": "io1", "iops": 4000, "state": "optimizing", "progress": 40}),
    );
    let modinfo = format!(
        "stallwatch_ebs_volume_modification_info{{volume_id=\"{gp2}\",state=\"optimizing\",target_volume_type=\"io1\"}}"
    );
    let m = agent.wait_for(Duration::from_secs(20), "the modification followed", |m| {
        m.get(&modinfo).is_some() && m.get(&s("ebs_volume_iops_limit", gp2)) == Some(4_000.0)
    });
    assert_eq!(
        m.get(&s("ebs_volume_modification_progress_ratio", gp2)),
        Some(0.4)
    );
    assert!(m
        .get(&s("ebs_volume_modification_start_timestamp_seconds", gp2))
        .is_some());
    assert!(
        m.get(&s("ebs_burst_balance_estimate_high_percent", gp2))
            .is_none(),
        "io1 has no bucket: the model dropped it"
    );
    assert_eq!(
        m.get(&s("ebs_volume_throughput_limit_bytes_per_second", gp2)),
        Some(500.0 * 1_048_576.0),
        "io1 at 4,000 IOPS: 256 KiB each, at most 500 MiB/s"
    );
    assert!(
        agent.log().contains("EBS volume modification."),
        "{}",
        agent.log()
    );
    aws.call(
        "modify",
        serde_json::json!({"volume_id": gp2, "state": "completed", "progress": 100}),
    );
    agent.wait_for(Duration::from_secs(20), "the modification completed", |m| {
        m.text.contains(&format!(
            "stallwatch_ebs_volume_modification_info{{volume_id=\"{gp2}\",state=\"completed\""
        ))
    });

    // A policy without ec2:DescribeVolumeStatus: named in the log, counted, the volumes stay.
    let before = Metrics::parse(&agent.scrape());
    aws.call(
        "fail",
        serde_json::json!({"api": "ec2", "op": "DescribeVolumeStatus", "count": 1,
            "code": "UnauthorizedOperation", "status": 403}),
    );
    let m = agent.wait_for(Duration::from_secs(20), "a refused status call", |m| {
        count(m, "describe_volume_status", "error") >= 1.0
    });
    assert!(
        count(&m, "describe_volumes", "success") > count(&before, "describe_volumes", "success")
    );
    assert!(m.get(&status).is_some(), "the status known before stays");
    assert!(
        agent
            .log()
            .contains("add ec2:DescribeVolumeStatus to the node's IAM policy"),
        "{}",
        agent.log()
    );
    // Asked once: the instance type does not change while the instance runs.
    assert_eq!(count(&m, "describe_instance_types", "success"), 1.0);
    assert!(count(&m, "describe_volumes_modifications", "success") >= 2.0);
}
