//! The cloud side against real servers on loopback: the real AWS SDK (CloudWatch, RPCv2 CBOR)
//! and our SigV4-signed EC2 Query call, talking to moto through the harness's CBOR proxy, and
//! an IMDSv2 server that requires tokens like the real one (tests/cloud/harness.py).

use std::time::Duration;

use crate::harness::{Agent, Metrics};

mod aws;
mod calls;
mod describe;
mod early;
pub use aws::{now, start_agent, start_agent_env, start_agent_with, Aws};

fn minute(t: f64) -> f64 {
    (t / 60.0).floor() * 60.0
}

#[test]
fn off_ec2_the_cloud_turns_itself_off_with_one_line_and_the_agent_stays_healthy() {
    // The default IMDS address: nothing answers here, as on a laptop.
    let agent = Agent::start(&[]);
    let m = agent.wait_for(
        Duration::from_secs(10),
        "cloud_enabled 0 and a log line",
        |m| m.get("stallwatch_cloud_enabled") == Some(0.0),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !agent.log().contains("Not on EC2") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = agent.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("Not on EC2")).collect();
    assert_eq!(lines.len(), 1, "exactly one line says why; log:\n{log}");
    assert!(
        lines[0].contains("level=info"),
        "INFO, not a warning: {}",
        lines[0]
    );
    assert!(
        !log.contains("level=warn") && !log.contains("level=error"),
        "no noise off EC2:\n{log}"
    );
    assert!(!m.has_family("stallwatch_ebs_volume_info"));
    assert!(!m.has_family("stallwatch_cloud_requests_total"));
    assert_eq!(crate::harness::get(&agent.url("/healthz")).trim(), "ok");
    // Still quiet a few seconds later (no retry loop spamming the log).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(agent.log().matches("Not on EC2").count(), 1);
}

#[test]
fn attached_volumes_are_described_and_burst_balance_polled_for_bursting_ones_only() {
    let aws = Aws::start();
    let setup = aws.call(
        "setup",
        serde_json::json!({"volumes": [
            {"type": "gp2", "size": 100},
            {"type": "gp3", "size": 200},
            {"type": "st1", "size": 500},
            {"type": "gp2", "size": 2000},
            {"type": "io1", "size": 100, "iops": 1000},
            {"type": "gp2", "size": 50},
        ]}),
    );
    let vols: Vec<String> = setup["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let (gp2, gp3, st1, gp2_big, io1) = (&vols[0], &vols[1], &vols[2], &vols[3], &vols[4]);
    let stale = &vols[5];
    let t = minute(now());
    // Newest first does not matter: the agent must pick the newest point by timestamp.
    for (v, base) in [(gp2, 80.0), (st1, 60.0), (gp3, 50.0)] {
        aws.call(
            "put",
            serde_json::json!({"volume_id": v, "points": [[t - 300.0, base + 5.0], [t - 120.0, base], [t - 240.0, base + 3.0]]}),
        );
    }
    // The instance's own EBS burst bucket (m5.large bursts its EBS bandwidth): AWS/EC2.
    let iid = setup["instance_id"].as_str().unwrap();
    aws.call(
        "put",
        serde_json::json!({"instance_id": iid, "metric": "EBSIOBalance%", "points": [[t - 180.0, 91.0], [t - 120.0, 88.0]]}),
    );
    // Within the lookback but older than the staleness: fetched, not exported.
    aws.call(
        "put",
        serde_json::json!({"volume_id": stale, "points": [[t - 1800.0, 42.0]]}),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("stallwatch.toml");
    crate::harness::write(
        &cfg,
        // Without the 1-minute checks (cloud::describe tests those): this test counts what is
        // asked for BurstBalance.
        &aws.config("poll_interval = \"3s\"\nfast_poll_interval = \"3s\"\ndescribe_interval = \"3s\"\nretry_min = \"1s\"\nlookback = \"60m\"\nstaleness = \"10m\"\nchecks = false"),
    );
    let agent = start_agent(&cfg);
    let want_gp2 = format!("stallwatch_ebs_burst_balance_percent{{volume_id=\"{gp2}\"}}");
    let want_st1 = format!("stallwatch_ebs_burst_balance_percent{{volume_id=\"{st1}\"}}");
    let m = agent.wait_for(
        Duration::from_secs(30),
        "BurstBalance of gp2 and st1",
        |m| m.get(&want_gp2).is_some() && m.get(&want_st1).is_some(),
    );
    assert_eq!(m.get("stallwatch_cloud_enabled"), Some(1.0));
    assert!(
        m.text.contains(&format!("instance_id=\"{iid}\"")),
        "instance from IMDS:\n{}",
        m.text
    );
    // Every attached volume is described, with type and AZ.
    for (v, ty) in [
        (gp2, "gp2"),
        (gp3, "gp3"),
        (st1, "st1"),
        (gp2_big, "gp2"),
        (io1, "io1"),
    ] {
        let line = m
            .text
            .lines()
            .find(|l| l.starts_with("stallwatch_ebs_volume_info{") && l.contains(v.as_str()))
            .unwrap_or_else(|| panic!("no ebs_volume_info for {v}:\n{}", m.text));
        assert!(line.contains(&format!("volume_type=\"{ty}\"")), "{line}");
        assert!(line.contains("availability_zone=\"us-east-1a\""), "{line}");
    }
    assert_eq!(
        m.get(&format!(
            "stallwatch_ebs_volume_size_bytes{{volume_id=\"{gp2}\"}}"
        )),
        Some(100.0 * 1073741824.0)
    );
    // gp2 baseline is computed (moto reports no IOPS for gp2; real AWS reports the baseline).
    assert_eq!(
        m.get(&format!(
            "stallwatch_ebs_volume_baseline_iops{{volume_id=\"{gp2}\"}}"
        )),
        Some(300.0)
    );
    assert_eq!(
        m.get(&format!(
            "stallwatch_ebs_volume_baseline_iops{{volume_id=\"{io1}\"}}"
        )),
        Some(1000.0)
    );
    // The newest point and its own timestamp.
    assert_eq!(m.get(&want_gp2), Some(80.0));
    assert_eq!(m.get(&want_st1), Some(60.0));
    assert_eq!(
        m.get(&format!(
            "stallwatch_ebs_burst_balance_timestamp_seconds{{volume_id=\"{gp2}\"}}"
        )),
        Some(t - 120.0)
    );
    assert_eq!(m.get("stallwatch_ec2_ebs_io_balance_percent"), Some(88.0));
    assert_eq!(
        m.get("stallwatch_ec2_balance_timestamp_seconds{balance=\"EBSIOBalance%\"}"),
        Some(t - 120.0)
    );
    assert!(
        !m.has_family("stallwatch_ec2_ebs_byte_balance_percent"),
        "no points, no series"
    );
    assert!(!m.has_family("stallwatch_ec2_cpu_credit_balance"));
    // Not asked, not exported: gp3 (even though the test put a point for it), io1, gp2 ≥ 1 TiB.
    // And asked but stale: the 30-minute-old point.
    for v in [gp3, io1, gp2_big, stale] {
        assert!(
            !m.text.contains(&format!(
                "stallwatch_ebs_burst_balance_percent{{volume_id=\"{v}\"}}"
            )),
            "{v} has no BurstBalance:\n{}",
            m.text
        );
    }
    let calls = aws.metric_calls();
    assert!(!calls.is_empty());
    // moto's run_instances attaches a gp2 8 GiB root volume: it bursts too.
    for c in &calls {
        assert_eq!(
            c["queries"], 6,
            "only gp2 < 1 TiB (root + 2 data), st1 and the instance's two EBS balances (not CPU credits: m5 is no T instance) are requested: {c}"
        );
    }
    // The EC2 call was SigV4-signed with the instance role's credentials from IMDS.
    let ec2 = aws
        .calls()
        .into_iter()
        .find(|c| c["op"] == "DescribeVolumes")
        .expect("a DescribeVolumes call");
    let auth = ec2["authorization"].as_str().unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=ASIAIMDSTEST/")
            && auth.contains("/us-east-1/ec2/aws4_request"),
        "{auth}"
    );
    // Billing: what was requested, counted and priced.
    let m = Metrics::parse(&agent.scrape());
    let requested = m.get("stallwatch_cloud_metrics_requested_total").unwrap();
    let n_calls = aws.metric_calls().len() as f64;
    assert!(requested >= 6.0 && requested % 6.0 == 0.0, "{requested}");
    assert!(
        (requested - 6.0 * n_calls).abs() <= 6.0,
        "requested {requested} vs {n_calls} calls"
    );
    let cost = m
        .get("stallwatch_cloud_estimated_cost_dollars_total")
        .unwrap();
    assert!((cost - requested * 0.01 / 1000.0).abs() < 1e-12, "{cost}");
    assert!(
        m.get("stallwatch_cloud_requests_total{api=\"describe_volumes\",outcome=\"success\"}")
            .unwrap()
            >= 1.0
    );
    assert!(
        m.get("stallwatch_cloud_requests_total{api=\"imds\",outcome=\"success\"}")
            .unwrap()
            >= 1.0
    );

    // Throttling: the SDK makes 3 attempts per call; fail 3 → one failed poll counted as
    // throttled, then a retry after backoff that succeeds and picks up a newer point.
    aws.call(
        "put",
        serde_json::json!({"volume_id": gp2, "points": [[t - 60.0, 77.0]]}),
    );
    aws.call(
        "fail",
        serde_json::json!({"api": "cloudwatch", "count": 3, "code": "Throttling", "status": 400}),
    );
    let throttled =
        "stallwatch_cloud_requests_total{api=\"get_metric_data\",outcome=\"throttled\"}";
    agent.wait_for(Duration::from_secs(30), "a throttled poll", |m| {
        m.get(throttled) >= Some(1.0)
    });
    let m = agent.wait_for(Duration::from_secs(30), "recovery after throttling", |m| {
        m.get(&want_gp2) == Some(77.0)
    });
    assert_eq!(m.get(throttled), Some(1.0), "one poll failed, not more");
    let log = agent.log();
    assert!(
        log.contains("GetMetricData failed") && log.contains("Throttling"),
        "{log}"
    );

    // Errors on EC2: counted with their outcome, the volumes already known stay exported.
    // Only DescribeVolumes fails: a describe pass also calls DescribeVolumeStatus and
    // DescribeVolumesModifications, and one already under way would take an "any EC2 call"
    // failure on whichever of them came next.
    aws.call(
        "fail",
        serde_json::json!({"api": "ec2", "op": "DescribeVolumes", "count": 1,
                           "code": "UnauthorizedOperation", "status": 403}),
    );
    let err = "stallwatch_cloud_requests_total{api=\"describe_volumes\",outcome=\"error\"}";
    let m = agent.wait_for(Duration::from_secs(20), "a failed DescribeVolumes", |m| {
        m.get(err) == Some(1.0)
    });
    assert_eq!(
        m.text
            .lines()
            .filter(|l| l.starts_with("stallwatch_ebs_volume_info{"))
            .count(),
        7,
        "the volumes already known stay exported through a failed describe"
    );
    assert!(
        agent.log().contains("UnauthorizedOperation"),
        "{}",
        agent.log()
    );
}

#[test]
fn get_metric_data_is_batched_at_500_metrics_per_call() {
    let aws = Aws::start();
    // 501 bursting volumes on one instance (moto does not enforce the attachment limit).
    let mut spec = Vec::new();
    for i in 0..501 {
        let dev = format!(
            "/dev/sd{}{}",
            (b'a' + (i / 26) as u8) as char,
            (b'a' + (i % 26) as u8) as char
        );
        spec.push(serde_json::json!({"type": "gp2", "size": 10, "device": dev}));
    }
    let setup = aws.call("setup", serde_json::json!({"volumes": spec}));
    assert_eq!(setup["volumes"].as_array().unwrap().len(), 501);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("stallwatch.toml");
    crate::harness::write(
        &cfg,
        // Without the checks (3 more metrics per volume): the batching of BurstBalance alone.
        &aws.config(
            "poll_interval = \"1h\"\nfast_poll_interval = \"1h\"\ndescribe_interval = \"1h\"\nchecks = false",
        ),
    );
    let agent = start_agent(&cfg);
    let m = agent.wait_for(Duration::from_secs(60), "one poll of 501 volumes", |m| {
        m.get("stallwatch_cloud_requests_total{api=\"get_metric_data\",outcome=\"success\"}")
            == Some(1.0)
    });
    // 501 data volumes + moto's gp2 root volume + the instance's two EBS balances = 504
    // metrics: one call of 500 and one of 4.
    let calls = aws.metric_calls();
    let mut sizes: Vec<u64> = calls
        .iter()
        .map(|c| c["queries"].as_u64().unwrap())
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, vec![4, 500], "{calls:?}");
    assert_eq!(
        m.get("stallwatch_cloud_metrics_requested_total"),
        Some(504.0)
    );
    assert_eq!(
        m.text
            .lines()
            .filter(|l| l.starts_with("stallwatch_ebs_volume_info{"))
            .count(),
        502
    );
}
