//! The cloud calls on the periodic driver, against moto: a poll follows a DescribeVolumes only
//! when the volumes changed, and a call that pages on and on is dropped at its deadline (one
//! deadline for the whole call, not only each request), counted and reported as the source's
//! error, while the agent goes on.

use std::time::Duration;

use super::{start_agent, Aws};
use crate::harness::Metrics;

fn count(aws: &Aws, op: &str) -> usize {
    aws.calls().iter().filter(|c| c["op"] == op).count()
}

#[test]
fn a_poll_follows_a_describe_only_when_the_volumes_changed() {
    let aws = Aws::start();
    aws.call(
        "setup",
        serde_json::json!({"volumes": [{"type": "gp2", "size": 100}]}),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("stallwatch.toml");
    // Describes every second; polls only every hour, or when the volumes change.
    crate::harness::write(
        &cfg,
        &aws.config(
            "poll_interval = \"1h\"\nfast_poll_interval = \"1h\"\ndescribe_interval = \"1s\"\nchecks = false",
        ),
    );
    let agent = start_agent(&cfg);
    let polled = "stallwatch_cloud_requests_total{api=\"get_metric_data\",outcome=\"success\"}";
    agent.wait_for(Duration::from_secs(30), "the first poll", |m| {
        m.get(polled) == Some(1.0)
    });
    let described = count(&aws, "DescribeVolumes");
    let t0 = std::time::Instant::now();
    while count(&aws, "DescribeVolumes") < described + 4 {
        assert!(t0.elapsed() < Duration::from_secs(30), "describes stopped");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        aws.metric_calls().len(),
        1,
        "unchanged describes wake no poll: {:?}",
        aws.metric_calls()
    );
    // A new volume: the next describe sees it and the poll asks for it at once.
    let new = aws.call(
        "attach",
        serde_json::json!({"type": "st1", "size": 500, "device": "/dev/sdz"}),
    );
    let new = new["volume"].as_str().unwrap().to_string();
    let m = agent.wait_for(Duration::from_secs(30), "a second poll", |m| {
        m.get(polled) == Some(2.0)
    });
    assert!(
        m.text.contains(&format!("volume_id=\"{new}\"")),
        "the new volume is described"
    );
    let calls = aws.metric_calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    // The root and first gp2 volumes and the instance's two EBS balances, then the st1 too.
    assert_eq!(calls[0]["queries"], 4, "{calls:?}");
    assert_eq!(calls[1]["queries"], 5, "{calls:?}");
    // And then quiet again.
    let described = count(&aws, "DescribeVolumes");
    while count(&aws, "DescribeVolumes") < described + 3 {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(aws.metric_calls().len(), 2);
    let m = Metrics::parse(&agent.scrape());
    for source in ["cloud_describe", "cloud_poll"] {
        assert_eq!(
            m.get(&format!("stallwatch_source_stuck{{source=\"{source}\"}}")),
            Some(0.0),
            "{source} is reported"
        );
        assert!(
            m.get(&format!(
                "stallwatch_snapshot_age_seconds{{source=\"{source}\"}}"
            ))
            .is_some(),
            "{source} has a good read"
        );
    }
    assert!(
        !m.has_family("stallwatch_source_stuck")
            || m.get("stallwatch_source_stuck{source=\"cloud_imds\"}")
                .is_none(),
        "discovery is done: cloud_imds is off"
    );
}

#[test]
fn a_call_that_pages_on_past_its_deadline_is_dropped_counted_and_retried() {
    let aws = Aws::start();
    let setup = aws.call(
        "setup",
        serde_json::json!({"volumes": [{"type": "gp2", "size": 100}]}),
    );
    let vol = setup["volumes"][0].as_str().unwrap().to_string();
    // Each page answers in 0.2 s, well within the 0.5 s request timeout; the whole call may
    // take 1.5 s (three request timeouts), so the pages go on past it.
    aws.call(
        "paginate",
        serde_json::json!({"api": "ec2", "count": 1000, "delay": 0.2}),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("stallwatch.toml");
    crate::harness::write(
        &cfg,
        &aws.config("request_timeout = \"500ms\"\nretry_min = \"1s\"\ndescribe_interval = \"2s\"\npoll_interval = \"2s\"\nfast_poll_interval = \"2s\""),
    );
    let agent = start_agent(&cfg);
    let failed = "stallwatch_cloud_requests_total{api=\"describe_volumes\",outcome=\"error\"}";
    let m = agent.wait_for(
        Duration::from_secs(30),
        "a describe cut at its deadline",
        |m| m.get(failed) >= Some(1.0),
    );
    assert!(
        m.get("stallwatch_source_errors_total{source=\"cloud_describe\",kind=\"io\"}") >= Some(1.0),
        "counted as the source's error"
    );
    assert_eq!(
        m.get("stallwatch_snapshot_age_seconds{source=\"cloud_describe\"}"),
        None,
        "no good read yet"
    );
    assert!(!m.has_family("stallwatch_ebs_volume_info"));
    let pages = count(&aws, "DescribeVolumes");
    assert!(
        (3..=20).contains(&pages),
        "the call paged on until its deadline: {pages} pages"
    );
    let log = agent.log();
    assert!(
        log.contains("DescribeVolumes failed") && log.contains("no answer within"),
        "{log}"
    );

    // Plain answers again: the retry describes the volumes; then GetMetricData pages on.
    aws.call("paginate", serde_json::json!({"api": "ec2", "count": 0}));
    aws.call(
        "paginate",
        serde_json::json!({"api": "cloudwatch", "count": 1000, "delay": 0.2}),
    );
    let info = format!("stallwatch_ebs_volume_info{{volume_id=\"{vol}\"");
    agent.wait_for(Duration::from_secs(30), "the volumes described", |m| {
        m.text.contains(&info)
    });
    let m = agent.wait_for(Duration::from_secs(30), "a poll cut at its deadline", |m| {
        m.get("stallwatch_cloud_requests_total{api=\"get_metric_data\",outcome=\"error\"}")
            >= Some(1.0)
    });
    assert!(
        m.get("stallwatch_source_errors_total{source=\"cloud_poll\",kind=\"io\"}") >= Some(1.0)
    );
    // Every page of the batch asked the same metrics; they are billed once per call.
    assert!(m.get("stallwatch_cloud_metrics_requested_total") >= Some(4.0));
    aws.call(
        "paginate",
        serde_json::json!({"api": "cloudwatch", "count": 0}),
    );
    agent.wait_for(Duration::from_secs(30), "a poll that succeeds", |m| {
        m.get("stallwatch_cloud_requests_total{api=\"get_metric_data\",outcome=\"success\"}")
            >= Some(1.0)
    });
    assert_eq!(crate::harness::get(&agent.url("/healthz")).trim(), "ok");
}

/// Found in the replay: the credentials chain was built without the region, so aws-config ran
/// its default region chain, whose last step asks IMDS through a client of its own at the
/// default address (or `AWS_EC2_METADATA_SERVICE_ENDPOINT`), not at `[cloud] imds_endpoint`.
/// Here that variable points at a decoy that counts connections: with the region given to the
/// chain, nothing ever connects to it.
#[test]
fn the_credentials_chain_never_asks_another_imds_than_the_configured_one() {
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let decoy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = decoy.local_addr().expect("addr");
    decoy.set_nonblocking(true).expect("nonblocking");
    let seen = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s2, stop2) = (Arc::clone(&seen), Arc::clone(&stop));
    let t = std::thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            match decoy.accept() {
                // Counted, then closed: whoever asked gets no answer.
                Ok((conn, _)) => {
                    s2.fetch_add(1, Ordering::SeqCst);
                    drop(conn);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    let aws = Aws::start();
    aws.call(
        "setup",
        serde_json::json!({"volumes": [{"type": "gp2", "size": 100}]}),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("stallwatch.toml");
    crate::harness::write(&cfg, &aws.config(""));
    let url = format!("http://{addr}");
    let agent = super::start_agent_env(&cfg, &[], &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &url)]);
    agent.wait_for(Duration::from_secs(30), "the volumes described", |m| {
        m.get("stallwatch_cloud_requests_total{api=\"describe_volumes\",outcome=\"success\"}")
            >= Some(1.0)
    });
    stop.store(true, Ordering::Relaxed);
    t.join().expect("decoy thread");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "something asked the default IMDS; log:\n{}",
        agent.log()
    );
}
