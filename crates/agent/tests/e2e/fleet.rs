//! Fleet scale through remote_write (issue 17), end to end with real parts only:
//!
//! ```text
//!  agent A (fixture root: 50 containers, PSI io full 25 %)  ─┐ scrape 1 s  prometheus --enable-feature=agent
//!  agent B (fixture root: 20 containers)                    ─┘             external_labels {cluster: east} ─┐
//!  agent C (this host's /proc, configured instance)  ──────────────────── prometheus agent {cluster: west} ──┤ remote_write
//!                                                                                                           ▼
//!        vmalert (deploy/prometheus/stallwatch.rules.yml) ──query / remote_write──▶ victoria-metrics (Debian)
//! ```
//!
//! Three agents are three distinct EC2 instances of the moto harness (`tests/cloud/harness.py`):
//! A and B discover theirs through its IMDSv2 (each started after the harness's identity is
//! switched to a new instance), C has `[cloud] instance_id`/`availability_zone` configured (so
//! its instance type is unknown: the "empty where unknown" path). Each has a gp2 volume with a
//! CloudWatch history (C's is not mapped to a device, so only CloudWatch knows its balance:
//! the fallback of `volume:stallwatch_ebs_burst_balance:percent`) and a sync-write probe.
//!
//! Then every recording rule of the rules file (run by vmalert, the ruler an agent-mode
//! Prometheus lacks) is run as a query against VictoriaMetrics and must return data, and its
//! recorded series must be in the store; every variable and panel query of the fleet dashboard
//! must return data from the store (and parse as PromQL with promtool); and the remote-write
//! cost is measured from the Prometheus agents' own counters (docs/fleet.md records it).

mod checks;
mod examples;
mod stack;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cardinality::{FixtureNode, Shape};
use crate::cloud::{now, start_agent_with, Aws};
use crate::harness::{write, Agent, Metrics};
use crate::promstack::Webhook;

use stack::{prometheus_agent, rule_errors, vmalert, Vm};

/// One agent of the fleet, as the harness sees it.
struct Node {
    agent: Agent,
    instance_id: String,
    volume_id: String,
    _root: Option<FixtureNode>,
}

/// Creates an instance with a 1 GiB gp2 volume in the harness and gives the volume a
/// CloudWatch BurstBalance history ending at `balance`.
fn instance_with_volume(aws: &Aws, balance: f64) -> (String, String, String) {
    let setup = aws.call("setup", json!({"volumes": [{"type": "gp2", "size": 1}]}));
    let vol = setup["volumes"][0].as_str().unwrap().to_string();
    let m0 = (now() / 60.0).floor() * 60.0;
    aws.call(
        "put",
        json!({"volume_id": vol, "points": [[m0 - 180.0, balance + 2.0], [m0 - 120.0, balance + 1.0], [m0 - 60.0, balance]]}),
    );
    (
        setup["instance_id"].as_str().unwrap().to_string(),
        setup["availability_zone"].as_str().unwrap().to_string(),
        vol,
    )
}

fn agent_config(dir: &Path, name: &str, aws: &Aws, cloud_extra: &str) -> std::path::PathBuf {
    let probe = dir.join(format!("probe-{name}"));
    std::fs::create_dir_all(&probe).unwrap();
    let cfg = dir.join(format!("{name}.toml"));
    write(
        &cfg,
        &format!(
            "{}\n[containers]\ninterval = \"2s\"\n\n[[probe]]\npath = \"{}\"\nsize = \"4KiB\"\ninterval = \"1s\"\n",
            aws.config(&format!(
                "poll_interval = \"2s\"\nfast_poll_interval = \"2s\"\ndescribe_interval = \"2s\"\nretry_min = \"1s\"\n{cloud_extra}"
            )),
            probe.display()
        ),
    );
    cfg
}

/// Starts a node and waits until its node_info names `instance_id` and its volume has a
/// CloudWatch balance.
fn start_node(cfg: &Path, root: Option<FixtureNode>, instance_id: &str, volume_id: &str) -> Node {
    let paths = root
        .as_ref()
        .map(FixtureNode::path_args)
        .unwrap_or_default();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let agent = start_agent_with(cfg, &paths);
    agent.wait_for(
        Duration::from_secs(60),
        "the instance and its volume's BurstBalance",
        |m| {
            m.series.iter().any(|(k, _)| {
                k.starts_with("stallwatch_node_info{")
                    && k.contains(&format!("instance_id=\"{instance_id}\""))
            }) && m
                .get(&format!(
                    "stallwatch_ebs_burst_balance_percent{{volume_id=\"{volume_id}\"}}"
                ))
                .is_some()
        },
    );
    Node {
        agent,
        instance_id: instance_id.into(),
        volume_id: volume_id.into(),
        _root: root,
    }
}

/// A node on a generated fixture root (`containers`, `threads`, PSI io full avg10 in percent)
/// as a new harness instance discovered through IMDS, its volume at `balance` % and mapped to
/// the fixture's disk (so the agent's local estimate runs too). Returns it and its zone.
fn fixture_node(
    aws: &Aws,
    dir: &Path,
    name: &str,
    balance: f64,
    (containers, threads, io_full): (usize, usize, f64),
    salt: u64,
) -> (Node, String) {
    let (iid, zone, vol) = instance_with_volume(aws, balance);
    let root = FixtureNode::build(
        Shape {
            containers,
            threads,
        },
        io_full,
        salt,
    );
    if io_full > 0.0 {
        // The verdict reads the PSI totals' rate: keep them growing.
        root.keep_io_stalled(0.9, io_full / 100.0);
    }
    let cfg = agent_config(
        dir,
        name,
        aws,
        &format!("\n[[cloud.volume]]\ndevice = \"vda\"\nvolume_id = \"{vol}\"\n"),
    );
    (start_node(&cfg, Some(root), &iid, &vol), zone)
}

#[test]
fn fleet_prometheus_agents_remote_write_into_victoriametrics_and_every_fleet_query_has_data() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let aws = Aws::start();

    // A: stalled on I/O (PSI io some 90 %, full 25 % of each second: the agent's verdict says
    // disk_saturated, its D threads waiting with no device at its limit), 50 containers;
    // B: 20 containers.
    let (a, zone_a) = fixture_node(&aws, tmp.path(), "a", 40.0, (50, 400, 25.0), 1);
    let (b, zone_b) = fixture_node(&aws, tmp.path(), "b", 12.0, (20, 300, 0.0), 2);
    // C: this host, the instance configured (no IMDS discovery: no instance type).
    let (iid_c, _, vol_c) = instance_with_volume(&aws, 80.0);
    let zone_c = "us-east-1b";
    let cfg_c = agent_config(
        tmp.path(),
        "c",
        &aws,
        &format!(
            "region = \"us-east-1\"\ninstance_id = \"{iid_c}\"\navailability_zone = \"{zone_c}\"\n"
        ),
    );
    let c = start_node(&cfg_c, None, &iid_c, &vol_c);
    eprintln!(
        "fleet: agents up after {:?} ({zone_a}, {zone_b}, {zone_c})",
        t0.elapsed()
    );

    // One failed DescribeVolumes (whichever agent asks next; the SDK would retry a throttled
    // CloudWatch call away), so the failed-request ratio has a numerator: that rule is absent,
    // not 0, where nothing ever failed.
    aws.call(
        "fail",
        json!({"api": "ec2", "op": "DescribeVolumes", "count": 1, "status": 403,
               "code": "UnauthorizedOperation"}),
    );

    let vm = Vm::start();
    let notifier = Webhook::start();
    let east = prometheus_agent("east", &[&a.agent.addr, &b.agent.addr], &vm);
    let west = prometheus_agent("west", &[&c.agent.addr], &vm);
    let ruler = vmalert(&vm, &notifier);
    let diag = || {
        format!(
            "vmalert rule errors: {:#?}\nvmalert log:\n{}\nagent east log:\n{}",
            rule_errors(&ruler),
            ruler.log(),
            east.log()
        )
    };

    // The store has all three nodes, the fleet rules' outputs (the daily ones from a minute
    // boundary on) and a minute of scrapes: (timeout, what, query, at least).
    let io_a = format!(
        "instance:stallwatch_stall_cause:active{{cause=\"disk_saturated\",instance=\"{}\"}}",
        a.agent.addr
    );
    for (secs, what, expr, least) in [
        (
            60,
            "three nodes in the store",
            "count(stallwatch_node_info)",
            3.0,
        ),
        (
            60,
            "the stall causes recorded",
            "count(instance:stallwatch_stall_cause:active)",
            9.0,
        ),
        (
            90,
            "node A stalled on I/O by the agent's verdict",
            io_a.as_str(),
            1.0,
        ),
        (
            120,
            "a day's stall total",
            "count(instance:stallwatch_stalled_seconds:1d)",
            3.0,
        ),
        (
            60,
            "D-state hot spots",
            "count(cluster_zone_type_group:stallwatch_dstate_nodes:count)",
            1.0,
        ),
    ] {
        vm.wait_for(Duration::from_secs(secs), what, expr, |n| n >= least, diag);
    }
    eprintln!("fleet: store ready after {:?}", t0.elapsed());

    // 1. Every recording rule; 2. every fleet-dashboard variable and query.
    let (rule_count, mut failures) = checks::recording_rules(&vm);
    let want_values: BTreeMap<&str, Vec<&str>> = [
        ("cluster", vec!["east", "west"]),
        ("zone", vec![zone_a.as_str(), zone_b.as_str(), zone_c]),
        ("instance_type", vec!["m5.large"]),
    ]
    .into_iter()
    .collect();
    let (n_targets, f) = checks::fleet_dashboard(&vm, &want_values, tmp.path());
    failures.extend(f);

    // 3. What the panels show is right: A stalled on I/O with its volume; the lowest balance
    //    in the fleet is B's 12 %; C (CloudWatch only) at 80 %; all three nodes counted.
    let lowest = vm.result("bottomk(1, volume:stallwatch_ebs_burst_balance:percent)");
    if lowest.len() != 1 || lowest[0]["metric"]["volume_id"] != Value::String(b.volume_id.clone()) {
        failures.push(format!(
            "the volume closest to empty is not B's {}: {lowest:?}",
            b.volume_id
        ));
    }
    let c_balance = vm.value(&format!(
        "volume:stallwatch_ebs_burst_balance:percent{{volume_id=\"{}\"}}",
        c.volume_id
    ));
    if c_balance != Some(80.0) {
        failures.push(format!(
            "C's volume (CloudWatch only) is {c_balance:?}, want 80"
        ));
    }
    let nodes = vm.value("sum(cluster_zone_type:stallwatch_nodes:count)");
    if nodes != Some(3.0) {
        failures.push(format!(
            "cluster_zone_type:stallwatch_nodes:count sums to {nodes:?}"
        ));
    }
    let info = vm.result(&format!(
        "stallwatch_node_info{{instance=\"{}\"}}",
        c.agent.addr
    ));
    if info.len() != 1
        || info[0]["metric"]["cluster"] != "west"
        || info[0]["metric"]["instance_id"] != Value::String(c.instance_id.clone())
        || !info[0]["metric"]["instance_type"].is_null()
    {
        failures.push(format!("C's node_info: {info:?}"));
    }
    for n in [&a, &b] {
        let i = vm.result(&format!(
            "stallwatch_node_info{{instance=\"{}\"}}",
            n.agent.addr
        ));
        if i.len() != 1
            || i[0]["metric"]["instance_id"] != Value::String(n.instance_id.clone())
            || i[0]["metric"]["instance_type"] != "m5.large"
            || i[0]["metric"]["kernel_release"] != "6.18.44-fixture"
        {
            failures.push(format!("node_info of {}: {i:?}", n.agent.addr));
        }
    }

    for r in [
        "instance:stallwatch_stalled_seconds:1d",
        "instance:stallwatch_pressure_io_full_seconds:1d",
        "instance:stallwatch_dstate_thread_seconds:1d",
    ] {
        let v: Vec<String> = vm
            .result(r)
            .iter()
            .map(|s| format!("{}={}", s["metric"]["instance"], s["value"][1]))
            .collect();
        eprintln!("fleet: {r}: {}", v.join(" "));
    }

    // The cloud side's share of a node's series (docs/cardinality.md): one gp2 volume.
    let cloud: Vec<(String, usize)> =
        crate::cardinality::families(&Metrics::parse(&a.agent.scrape()))
            .into_iter()
            .filter(|(f, _)| {
                [
                    "stallwatch_cloud_",
                    "stallwatch_ebs_",
                    "stallwatch_ec2_",
                    "stallwatch_disk_info",
                    "stallwatch_disk_io_timeout",
                ]
                .iter()
                .any(|p| f.starts_with(p))
                    && f != "stallwatch_cloud_enabled"
            })
            .collect();
    let am = Metrics::parse(&a.agent.scrape());
    eprintln!(
        "fleet: cloud series of node A: {} {cloud:?}; GetMetricData: {:?} metrics in {:?} calls",
        cloud.iter().map(|(_, n)| n).sum::<usize>(),
        am.get("stallwatch_cloud_metrics_requested_total"),
        am.get("stallwatch_cloud_requests_total{api=\"get_metric_data\",outcome=\"success\"}")
    );

    // 4. The cost, measured: what the two Prometheus agents sent, per node.
    failures.extend(checks::remote_write_cost(&vm, &[&east, &west]));

    eprintln!(
        "fleet: {rule_count} recording rules and {n_targets} dashboard queries checked in {:?}",
        t0.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} fleet checks failed:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        diag()
    );
    drop((ruler, east, west, vm, notifier, a, b, c, aws));
}
