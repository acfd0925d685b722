//! The cloud side against real servers on loopback: the real AWS SDK (CloudWatch, RPCv2 CBOR)
//! and our SigV4-signed EC2 Query call, talking to moto through the harness's CBOR proxy, and
//! an IMDSv2 server that requires tokens like the real one (tests/cloud/harness.py).

use std::time::Duration;

use crate::harness::{Agent, Metrics};

mod aws;
mod calls;
pub use aws::{now, start_agent, start_agent_with, Aws};

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
        &aws.config("poll_interval = \"3s\"\nfast_poll_interval = \"3s\"\ndescribe_interval = \"3s\"\nretry_min = \"1s\"\nlookback = \"60m\"\nstaleness = \"10m\""),
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
    aws.call("fail", serde_json::json!({"api": "ec2", "count": 1, "code": "UnauthorizedOperation", "status": 403}));
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
        &aws.config(
            "poll_interval = \"1h\"\nfast_poll_interval = \"1h\"\ndescribe_interval = \"1h\"",
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

/// The test's own EBS: a gp2 volume's credit bucket, spent by the I/O the kernel counts on the
/// loop device. Written here from AWS's documented rules, independently of the agent's model.
struct PlayedGp2 {
    credits: f64,
    baseline: f64,
    last: Option<(f64, u64, u64)>,
}

const GP2_CREDITS: f64 = 5_400_000.0;
const GP2_BURST: f64 = 3_000.0;

impl PlayedGp2 {
    fn percent(&self) -> f64 {
        self.credits / GP2_CREDITS * 100.0
    }

    /// Reads the device's completed I/O from /proc/diskstats and spends credits: each I/O of up
    /// to 256 KiB is one credit, the volume earns its baseline per second.
    fn tick(&mut self, dev: &str) {
        let text = std::fs::read_to_string("/proc/diskstats").unwrap();
        let f: Vec<&str> = text
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(2) == Some(&dev))
            .unwrap_or_else(|| panic!("{dev} not in /proc/diskstats"));
        let n = |i: usize| f[i].parse::<u64>().unwrap();
        let (ops, bytes) = (n(3) + n(7), (n(5) + n(9)) * 512);
        let t = now();
        if let Some((t0, o0, b0)) = self.last {
            let dt = t - t0;
            let (dops, dbytes) = (ops - o0, bytes - b0);
            let units = (dops as f64).max((dbytes as f64 / 262_144.0).ceil());
            let used = units.min(GP2_BURST * dt);
            self.credits = (self.credits + self.baseline * dt - used).clamp(0.0, GP2_CREDITS);
        }
        self.last = Some((t, ops, bytes));
    }
}

/// The first seed incident, shortened: a loop device stands in for a 1 GiB gp2 volume whose
/// bucket is at 4 % (CloudWatch says so, minutes late, as it does). A real writer spends it at
/// 2,000 IOPS through a blkio throttle; the test plays EBS, spending credits by the I/O the
/// kernel counts and dropping the throttle to the 100 IOPS baseline when the bucket is empty,
/// and publishes per-minute averages to CloudWatch 30 s after each minute ends. The agent's
/// estimate must track the played bucket every second (±2 points as the issue asks; we hold it
/// to ±0.25, since the whole run moves only 4 points) and its seconds-to-empty, read once the
/// drain window is full, must predict the drop within 10 %.
#[test]
fn early_warning_the_estimate_tracks_a_draining_gp2_bucket_and_predicts_when_it_empties() {
    if !crate::harness::require_root("cloud::early_warning") {
        return;
    }
    const START_PCT: f64 = 4.0;
    const LOAD_IOPS: u32 = 2_000;
    const BASELINE: f64 = 100.0; // 1 GiB gp2: 3 IOPS/GiB, at least 100
                                 // Start early in a minute: the agent then starts inside the first minute CloudWatch will
                                 // report and the load begins some 15 s into it, so that minute's average must be anchored
                                 // from a history that starts mid-minute (the hard case, which once failed in CI).
    while !(2.0..12.0).contains(&(now() % 60.0)) {
        std::thread::sleep(Duration::from_millis(500));
    }
    let aws = Aws::start();
    let setup = aws.call(
        "setup",
        serde_json::json!({"volumes": [{"type": "gp2", "size": 1}]}),
    );
    let vol = setup["volumes"][0].as_str().unwrap().to_string();
    // Threads start (and are seen) in D at 5 IOPS; the load starts later.
    let rig = crate::dstate_rig::DStateRig::start(4, 5);
    let dev = rig.loop_device();
    let mut ebs = PlayedGp2 {
        credits: GP2_CREDITS * START_PCT / 100.0,
        baseline: BASELINE,
        last: None,
    };
    ebs.tick(&dev);
    // CloudWatch's history: the bucket sat at 4 % for the last minutes.
    let m0 = minute(now());
    aws.call(
        "put",
        serde_json::json!({"volume_id": vol, "points": [[m0 - 180.0, START_PCT], [m0 - 120.0, START_PCT], [m0 - 60.0, START_PCT]]}),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("stallwatch.toml");
    crate::harness::write(
        &cfg,
        &aws.config(&format!(
            "poll_interval = \"60s\"\nfast_poll_interval = \"5s\"\nfast_poll_below = \"30%\"\ndescribe_interval = \"60s\"\nretry_min = \"1s\"\n\n[[cloud.volume]]\ndevice = \"{dev}\"\nvolume_id = \"{vol}\"\n"
        )),
    );
    let agent = start_agent(&cfg);
    let est_series =
        format!("stallwatch_ebs_burst_balance_estimate_percent{{volume_id=\"{vol}\"}}");
    let tte_series = format!("stallwatch_ebs_burst_seconds_to_empty{{volume_id=\"{vol}\"}}");
    // (t, played %) for CloudWatch's per-minute averages: the bucket sat at START_PCT from the
    // start of this minute until the played bucket's first tick, then it is sampled every second.
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let first_tick = ebs.last.unwrap().0;
    let mut t = m0;
    while t < first_tick {
        samples.push((t, START_PCT));
        t += 1.0;
    }
    let anchored = std::time::Instant::now();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        ebs.tick(&dev);
        samples.push((now(), ebs.percent()));
        if Metrics::parse(&agent.scrape()).get(&est_series).is_some() {
            break;
        }
        assert!(
            anchored.elapsed() < Duration::from_secs(30),
            "no anchored estimate:\n{}",
            agent.log()
        );
    }
    let calls_before = aws.metric_calls().len();
    // Refilling (5 IOPS < the 100 IOPS baseline): not draining, so +Inf, spelled as both
    // exposition formats want it.
    let idle = agent.scrape();
    assert!(
        idle.lines()
            .any(|l| l.starts_with(&tte_series) && l.ends_with(" +Inf")),
        "{}",
        idle.lines()
            .filter(|l| l.contains("to_empty"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The model reads the host sampler's unfiltered diskstats: the `[disks]` filter hides loop
    // devices from the disk series (by default), not from the credit model.
    let shown = format!("device=\"{dev}\"");
    assert!(
        !idle
            .lines()
            .any(|l| l.starts_with("stallwatch_disk_") && l.contains(&shown)),
        "{dev} should be filtered out of the disk series"
    );

    rig.set_write_iops(LOAD_IOPS);
    let load_start = now();
    let mut published: Vec<f64> = Vec::new();
    let mut worst = 0.0f64;
    let mut prediction: Option<(f64, f64)> = None; // (t, seconds to empty)
    let mut t_empty: Option<f64> = None;
    let deadline = load_start + 200.0;
    let mut after_empty = 0;
    while now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        ebs.tick(&dev);
        let t = now();
        samples.push((t, ebs.percent()));
        if t_empty.is_none() && ebs.credits <= 0.0 {
            // Empty: EBS holds the volume to its baseline.
            rig.set_write_iops(BASELINE as u32);
            t_empty = Some(t);
        }
        // CloudWatch: each minute's average, 30 s after the minute ended.
        let done_minute = minute(t - 30.0) - 60.0;
        if done_minute >= m0 && !published.contains(&done_minute) {
            let in_minute: Vec<f64> = samples
                .iter()
                .filter(|(ts, _)| *ts >= done_minute && *ts < done_minute + 60.0)
                .map(|(_, p)| *p)
                .collect();
            if !in_minute.is_empty() {
                let avg = in_minute.iter().sum::<f64>() / in_minute.len() as f64;
                aws.call(
                    "put",
                    serde_json::json!({"volume_id": vol, "points": [[done_minute, avg]]}),
                );
            }
            published.push(done_minute);
        }
        let m = Metrics::parse(&agent.scrape());
        let est = m.get(&est_series).expect("the estimate stays exported");
        if samples.len() % 10 == 0 {
            eprintln!(
                "+{:.0}s played {:.3} % estimate {est:.3} % to-empty {:?}",
                t - load_start,
                ebs.percent(),
                m.get(&tte_series)
            );
        }
        let diff = (est - ebs.percent()).abs();
        worst = worst.max(diff);
        assert!(
            diff <= 2.0,
            "at +{:.0}s the agent estimates {est:.3} % but the bucket is at {:.3} %",
            t - load_start,
            ebs.percent()
        );
        // Once the 60 s drain window holds only the load, take the agent's prediction.
        if prediction.is_none() && t - load_start >= 65.0 && t_empty.is_none() {
            let tte = m.get(&tte_series).unwrap_or_else(|| {
                let ebs: Vec<&str> = m
                    .text
                    .lines()
                    .filter(|l| l.contains(vol.as_str()))
                    .collect();
                panic!("no {tte_series}:\n{}", ebs.join("\n"))
            });
            assert!(
                tte.is_finite() && tte > 0.0,
                "draining: finite time to empty, got {tte}"
            );
            prediction = Some((t, tte));
        }
        if let Some(te) = t_empty {
            if t - te >= 5.0 {
                assert!(est < 0.5, "empty bucket, estimate {est}");
                after_empty += 1;
                if after_empty >= 3 {
                    break;
                }
            }
        }
    }
    let t_empty = t_empty.unwrap_or_else(|| {
        panic!(
            "the played bucket never emptied (at {:.2} %)",
            ebs.percent()
        )
    });
    let (t_pred, tte) = prediction.expect("a prediction was taken");
    let actual = t_empty - t_pred;
    let err = (tte - actual).abs() / actual;
    eprintln!(
        "early warning: predicted empty in {tte:.1}s at +{:.0}s, emptied {actual:.1}s later (error {:.1} %); worst estimate error {worst:.3} points; {} CloudWatch minutes published",
        t_pred - load_start,
        err * 100.0,
        published.len()
    );
    assert!(err <= 0.10, "predicted {tte:.1}s, actual {actual:.1}s");
    assert!(worst <= 0.25, "worst tracking error {worst:.3} points");
    // Below fast_poll_below the agent polls every 5 s, not every 60 s.
    let polls = aws.metric_calls().len() - calls_before;
    let run = now() - load_start;
    assert!(
        polls as f64 >= run / 5.0 * 0.6,
        "{polls} polls in {run:.0}s"
    );
    rig.lift();
}
