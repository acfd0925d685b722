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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cardinality::{FixtureNode, Shape};
use crate::cloud::{now, start_agent_with, Aws};
use crate::dashboards::{
    legend_labels, load, parse_label_values, recorded_by_rules, substitute, targets,
    variable_query, FLEET,
};
use crate::harness::{repo, write, Agent, Metrics};
use crate::promstack::{http, Server, Webhook};

/// Recording rules that may return nothing here, with the reason.
const RULES_ALLOWED_EMPTY: &[(&str, &str)] = &[
    // The EBS NVMe log page (0xD0) exists only on real EBS NVMe devices.
    (
        "volume:stallwatch_ebs_exceeded_iops:ratio",
        "no EBS NVMe device",
    ),
    (
        "volume:stallwatch_ebs_exceeded_throughput:ratio",
        "no EBS NVMe device",
    ),
    (
        "instance:stallwatch_ec2_ebs_exceeded_iops:ratio",
        "no EBS NVMe device",
    ),
    (
        "instance:stallwatch_ec2_ebs_exceeded_throughput:ratio",
        "no EBS NVMe device",
    ),
];

/// Labels a fleet legend may name that a series does not always carry: node C is off the
/// IMDS path with no instance type, and a single-cluster setup has no `cluster`.
const OPTIONAL_LEGEND_LABELS: &[&str] = &["cluster", "availability_zone", "instance_type"];

/// The VictoriaMetrics single-node server (Prometheus-compatible query API and remote_write).
struct Vm {
    server: Server,
}

impl Vm {
    fn start() -> Vm {
        let dir = tempfile::Builder::new()
            .prefix("stallwatch-vm-")
            .tempdir()
            .unwrap();
        let server = Server::start("victoria-metrics", "victoria-metrics", dir, |d, port| {
            vec![
                format!("-storageDataPath={}", d.join("data").display()),
                format!("-httpListenAddr=127.0.0.1:{port}"),
                // MetricsQL hides the last 30 s from queries by default (data still arriving
                // from many sources); this test asks right after writing.
                "-search.latencyOffset=0s".into(),
                "-search.disableCache".into(),
                "-loggerLevel=ERROR".into(),
            ]
        });
        Vm { server }
    }

    fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let r = http()
            .get(format!("{}{path}", self.server.url))
            .query(params)
            .send()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let text = r.text().unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"))
    }

    fn query(&self, expr: &str) -> Value {
        self.api("/api/v1/query", &[("query", expr)])
    }

    fn result(&self, expr: &str) -> Vec<Value> {
        let r = self.query(expr);
        assert_eq!(r["status"], "success", "{expr}: {r}");
        r["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    fn value(&self, expr: &str) -> Option<f64> {
        let r = self.result(expr);
        (r.len() == 1).then(|| r[0]["value"][1].as_str()?.parse().ok())?
    }

    fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        expr: &str,
        pred: impl Fn(f64) -> bool,
        diag: impl Fn() -> String,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.value(expr).is_some_and(&pred) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what} ({expr} = {}); log:\n{}\n{}",
                    self.query(expr),
                    self.server.log(),
                    diag()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// The `queue_config` of deploy/fleet/prometheus-agent.yml (as JSON, which YAML reads), so the
/// measured remote-write cost is that of the documented setup.
fn example_queue_config() -> String {
    let text = std::fs::read_to_string(repo().join("deploy/fleet/prometheus-agent.yml")).unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let q = &doc["remote_write"][0]["queue_config"];
    assert!(
        q.is_mapping(),
        "deploy/fleet/prometheus-agent.yml has no queue_config"
    );
    serde_json::to_string(q).unwrap()
}

/// A Prometheus in agent mode: scrapes, keeps a WAL, remote-writes, evaluates nothing.
fn prometheus_agent(cluster: &str, targets: &[&str], vm: &Vm) -> Server {
    let dir = tempfile::Builder::new()
        .prefix("stallwatch-prom-agent-")
        .tempdir()
        .unwrap();
    let list = targets
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let cfg = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  external_labels:\n    cluster: {cluster}\n\
         scrape_configs:\n  - job_name: stallwatch\n    static_configs:\n      - targets: [{list}]\n\
         remote_write:\n  - url: {}/api/v1/write\n    queue_config: {}\n",
        vm.server.url,
        example_queue_config()
    );
    let path = dir.path().join("prometheus.yml");
    write(&path, &cfg);
    let out = Command::new("promtool")
        .args(["check", "config", "--agent"])
        .arg(&path)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check config --agent:\n{}{}\n{cfg}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Server::start("prometheus-agent", "prometheus", dir, |d, port| {
        vec![
            "--enable-feature=agent".into(),
            format!("--config.file={}", d.join("prometheus.yml").display()),
            format!("--storage.agent.path={}", d.join("wal").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--log.level=warn".into(),
        ]
    })
}

/// vmalert running the rules file against the store, writing recorded series back into it.
/// The daily group's 5-minute interval becomes 5 s so the test sees it evaluated.
fn vmalert(vm: &Vm, notifier: &Webhook) -> Server {
    let dir = tempfile::Builder::new()
        .prefix("stallwatch-vmalert-")
        .tempdir()
        .unwrap();
    let rules =
        std::fs::read_to_string(repo().join("deploy/prometheus/stallwatch.rules.yml")).unwrap();
    assert!(
        rules.contains("    interval: 5m\n"),
        "the daily group's interval moved"
    );
    write(
        &dir.path().join("rules.yml"),
        &rules.replace("    interval: 5m\n", "    interval: 5s\n"),
    );
    let vm_url = vm.server.url.clone();
    let am = notifier.url.trim_end_matches("/alerts").to_string();
    Server::start("vmalert", "vmalert", dir, move |d, port| {
        vec![
            format!("-rule={}", d.join("rules.yml").display()),
            format!("-datasource.url={vm_url}"),
            format!("-remoteWrite.url={vm_url}"),
            "-remoteWrite.flushInterval=1s".into(),
            format!("-notifier.url={am}"),
            "-evaluationInterval=1s".into(),
            format!("-httpListenAddr=127.0.0.1:{port}"),
            "-loggerLevel=ERROR".into(),
        ]
    })
}

/// `name: lastError` of every rule vmalert reports an error for.
fn rule_errors(ruler: &Server) -> Vec<String> {
    let text = http()
        .get(format!("{}/api/v1/rules", ruler.url))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    v["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["lastError"].as_str().is_some_and(|e| !e.is_empty()))
        .map(|r| format!("{}: {}", r["name"], r["lastError"]))
        .collect()
}

/// The Prometheus agent's remote-write counters: (samples, bytes, metadata bytes).
fn remote_write_counters(agent: &Server) -> (f64, f64, f64) {
    let text = http()
        .get(format!("{}/metrics", agent.url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let m = Metrics::parse(&text);
    let sum = |name: &str| -> f64 {
        m.series
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{name}{{")))
            .map(|(_, v)| v)
            .sum()
    };
    (
        sum("prometheus_remote_storage_samples_total"),
        sum("prometheus_remote_storage_bytes_total"),
        sum("prometheus_remote_storage_metadata_bytes_total"),
    )
}

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

fn run_tool(cmd: &mut Command) -> (bool, String) {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}; `make test-deps` installs it"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

/// The flags of an `*.args` file (one per line), with `/etc/...` and `/var/...` paths
/// replaced by `files` (flag name → path).
fn args_file(name: &str, files: &[(&str, &Path)]) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("deploy/fleet").join(name)).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (flag, value) = l.split_once('=').unwrap_or((l, ""));
            match files.iter().find(|(f, _)| *f == flag) {
                Some((_, p)) => format!("{flag}={}", p.display()),
                None => format!("{flag}={value}"),
            }
        })
        .collect()
}

/// The remote_write examples in deploy/fleet/ are what the tools accept: the Prometheus
/// agent-mode config passes `promtool check config --agent` (Debian's promtool has no
/// Kubernetes discovery, so with the SD block swapped for a static target) and vmagent, which
/// has it, checks the scrape jobs as written; vmagent's and vmalert's flags are real flags
/// (both run in their dry-run modes with them).
#[test]
fn fleet_deploy_examples_pass_promtool_and_the_victoriametrics_tools() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = repo().join("deploy/fleet");
    let text = std::fs::read_to_string(fleet.join("prometheus-agent.yml")).unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    assert!(
        doc["global"]["external_labels"]["cluster"]
            .as_str()
            .is_some(),
        "the example sets the cluster as an external label"
    );
    assert!(doc["remote_write"][0]["url"].as_str().is_some());
    let jobs = doc["scrape_configs"].as_sequence().unwrap();
    assert!(jobs.iter().any(|j| j["job_name"] == "stallwatch"));
    // The scrape jobs, as written, through vmagent's parser (Kubernetes SD included).
    let mut scrape_only = serde_yaml_ng::Mapping::new();
    scrape_only.insert("global".into(), doc["global"].clone());
    scrape_only.insert("scrape_configs".into(), doc["scrape_configs"].clone());
    let scrape_path = dir.path().join("scrape.yml");
    write(
        &scrape_path,
        &serde_yaml_ng::to_string(&scrape_only).unwrap(),
    );
    for cfg in [scrape_path.clone(), fleet.join("vmagent.yml")] {
        let (ok, out) = run_tool(
            Command::new("vmagent")
                .arg(format!("-promscrape.config={}", cfg.display()))
                .arg("-promscrape.config.dryRun"),
        );
        assert!(
            ok && out.contains("is ok"),
            "vmagent rejects {}:\n{out}",
            cfg.display()
        );
    }
    // The whole file through promtool, agent mode, with a static target for the SD block.
    let mut doc2 = doc.clone();
    for j in doc2["scrape_configs"].as_sequence_mut().unwrap() {
        let m = j.as_mapping_mut().unwrap();
        if m.remove("kubernetes_sd_configs").is_some() {
            let st: serde_yaml_ng::Value =
                serde_yaml_ng::from_str("[{targets: ['127.0.0.1:10139']}]").unwrap();
            m.insert("static_configs".into(), st);
        }
    }
    let copy = dir.path().join("prometheus-agent.yml");
    write(&copy, &serde_yaml_ng::to_string(&doc2).unwrap());
    let (ok, out) = run_tool(
        Command::new("promtool")
            .args(["check", "config", "--agent"])
            .arg(&copy),
    );
    assert!(
        ok && out.contains("SUCCESS"),
        "promtool check config --agent:\n{out}"
    );
    // vmagent.args: real flags, and the config they name is valid.
    let tmp_data = dir.path().join("vmagent-data");
    let flags = args_file(
        "vmagent.args",
        &[
            ("-promscrape.config", &fleet.join("vmagent.yml")),
            ("-remoteWrite.tmpDataPath", &tmp_data),
        ],
    );
    assert!(flags
        .iter()
        .any(|f| f.starts_with("-remoteWrite.label=cluster=")));
    let (ok, out) = run_tool(
        Command::new("vmagent")
            .args(&flags)
            .arg("-promscrape.config.dryRun"),
    );
    assert!(ok, "vmagent {flags:?}:\n{out}");
    // vmalert.args with the real rules file: vmalert parses every rule (MetricsQL) and exits.
    let rules = repo().join("deploy/prometheus/stallwatch.rules.yml");
    let flags = args_file("vmalert.args", &[("-rule", &rules)]);
    let (ok, out) = run_tool(Command::new("vmalert").args(&flags).arg("-dryRun"));
    assert!(ok, "vmalert {flags:?}:\n{out}");
}

#[test]
fn fleet_prometheus_agents_remote_write_into_victoriametrics_and_every_fleet_query_has_data() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let aws = Aws::start();

    // A: stalled on I/O (PSI io full avg10 25 %), 50 containers; B: 20 containers. Both have
    // threads in D (the fixture's 31 groups), so they turn "dstate" after 30 s too.
    let (iid_a, zone_a, vol_a) = instance_with_volume(&aws, 40.0);
    let root_a = FixtureNode::build(
        Shape {
            containers: 50,
            threads: 400,
        },
        25.0,
        1,
    );
    let cfg_a = agent_config(
        tmp.path(),
        "a",
        &aws,
        &format!("\n[[cloud.volume]]\ndevice = \"vda\"\nvolume_id = \"{vol_a}\"\n"),
    );
    let a = start_node(&cfg_a, Some(root_a), &iid_a, &vol_a);
    let (iid_b, zone_b, vol_b) = instance_with_volume(&aws, 12.0);
    let root_b = FixtureNode::build(
        Shape {
            containers: 20,
            threads: 300,
        },
        0.0,
        2,
    );
    let cfg_b = agent_config(
        tmp.path(),
        "b",
        &aws,
        &format!("\n[[cloud.volume]]\ndevice = \"vda\"\nvolume_id = \"{vol_b}\"\n"),
    );
    let b = start_node(&cfg_b, Some(root_b), &iid_b, &vol_b);
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
        json!({"api": "ec2", "count": 1, "status": 403, "code": "UnauthorizedOperation"}),
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
    // boundary on) and a minute of scrapes.
    vm.wait_for(
        Duration::from_secs(60),
        "three nodes in the store",
        "count(stallwatch_node_info)",
        |n| n == 3.0,
        diag,
    );
    vm.wait_for(
        Duration::from_secs(60),
        "the stall causes recorded",
        "count(instance:stallwatch_stall_cause:active)",
        |n| n >= 9.0,
        diag,
    );
    vm.wait_for(
        Duration::from_secs(90),
        "node A stalled by the io-full threshold",
        &format!(
            "instance:stallwatch_stall_cause:active{{cause=\"io_pressure\",instance=\"{}\"}}",
            a.agent.addr
        ),
        |v| v == 1.0,
        diag,
    );
    vm.wait_for(
        Duration::from_secs(120),
        "a day's stall total",
        "count(instance:stallwatch_stalled_seconds:1d)",
        |n| n == 3.0,
        diag,
    );
    vm.wait_for(
        Duration::from_secs(60),
        "D-state hot spots",
        "count(cluster_zone_type_group:stallwatch_dstate_nodes:count)",
        |n| n >= 1.0,
        diag,
    );
    eprintln!("fleet: store ready after {:?}", t0.elapsed());

    let mut failures = Vec::new();

    // 1. Every recording rule: its expression returns data from the store (MetricsQL), and
    //    its recorded series are in the store (written back by vmalert).
    let recorded = recorded_by_rules();
    let rules_doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("deploy/prometheus/stallwatch.rules.yml")).unwrap(),
    )
    .unwrap();
    let mut rule_count = 0;
    for g in rules_doc["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            let Some(name) = r.get("record").and_then(|v| v.as_str()) else {
                continue;
            };
            rule_count += 1;
            let expr = r["expr"].as_str().unwrap();
            let allowed = RULES_ALLOWED_EMPTY.iter().any(|(n, _)| *n == name);
            let q = vm.query(expr);
            if q["status"] != "success" {
                failures.push(format!("rule {name}: does not run on VictoriaMetrics: {q}"));
                continue;
            }
            let got = q["data"]["result"].as_array().map_or(0, Vec::len);
            // vmalert writes what it recorded through its own remote-write queue: give a rule
            // evaluated just now a few seconds to land.
            let deadline = Instant::now() + Duration::from_secs(if allowed { 0 } else { 20 });
            let stored = loop {
                let n = vm.result(name).len();
                if n > 0 || Instant::now() >= deadline {
                    break n;
                }
                std::thread::sleep(Duration::from_millis(500));
            };
            if !allowed && (got == 0 || stored == 0) {
                failures.push(format!("rule {name}: {got} series from its expression, {stored} recorded in the store\n    {expr}"));
            }
        }
    }
    assert_eq!(rule_count, recorded.len());

    // 2. The fleet dashboard: every variable offers the fleet's values; every target runs with
    //    "All" selected, returns data, and names only labels its series carry in its legend.
    let d = load(FLEET);
    let all = ".*".to_string();
    let vars: HashMap<&str, String> = [
        ("cluster", all.clone()),
        ("zone", all.clone()),
        ("instance_type", all.clone()),
    ]
    .into_iter()
    .collect();
    let want_values: BTreeMap<&str, Vec<&str>> = [
        ("cluster", vec!["east", "west"]),
        ("zone", vec![zone_a.as_str(), zone_b.as_str(), zone_c]),
        ("instance_type", vec!["m5.large"]),
    ]
    .into_iter()
    .collect();
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] != "query" {
            continue;
        }
        let name = v["name"].as_str().unwrap();
        let (sel, label) = parse_label_values(variable_query(v).unwrap());
        let sel = substitute(&sel, &vars);
        let r = vm.api(
            &format!("/api/v1/label/{label}/values"),
            &[("match[]", &sel)],
        );
        let values: BTreeSet<String> = r["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(String::from))
            .collect();
        for w in want_values.get(name).into_iter().flatten() {
            if !values.contains(*w) {
                failures.push(format!("variable {name}: {w} not among {values:?} ({r})"));
            }
        }
    }
    let mut promql_check = String::from("groups:\n  - name: fleet-dashboard\n    rules:\n");
    let mut n_targets = 0;
    for t in targets(&d) {
        n_targets += 1;
        let expr = substitute(t.expr, &vars);
        let what = format!("{:?} {}: {expr}", t.panel, t.ref_id);
        promql_check.push_str(&format!(
            "      - record: fleet_dashboard_{n_targets}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
        let r = vm.query(&expr);
        if r["status"] != "success" {
            failures.push(format!(
                "{what}\n    does not run on VictoriaMetrics: {}",
                r["error"]
            ));
            continue;
        }
        let result = r["data"]["result"].as_array().cloned().unwrap_or_default();
        if result.is_empty() {
            failures.push(format!("{what}\n    returned no data"));
        }
        for series in &result {
            for l in legend_labels(t.legend) {
                if series["metric"][&l].is_null() && !OPTIONAL_LEGEND_LABELS.contains(&l.as_str()) {
                    failures.push(format!(
                        "{what}\n    legend names {l}, missing from {}",
                        series["metric"]
                    ));
                }
            }
        }
    }
    // ...and each also parses as Prometheus's PromQL (a store may be Prometheus or Mimir).
    let check = tmp.path().join("dashboard-queries.yml");
    write(&check, &promql_check);
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&check)
        .output()
        .unwrap();
    if !out.status.success() {
        failures.push(format!(
            "the fleet dashboard's queries are not all PromQL:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }

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

    eprintln!(
        "fleet: cloud requests: {:?}",
        vm.result("stallwatch_cloud_requests_total")
            .iter()
            .map(|s| (
                s["metric"]["instance"].clone(),
                s["metric"]["api"].clone(),
                s["metric"]["outcome"].clone(),
                s["value"][1].clone()
            ))
            .collect::<Vec<_>>()
    );
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

    // 4. The cost, measured: what the two Prometheus agents sent over 20 s, per node.
    let series_per_node: Vec<(String, f64)> = vm
        .result("scrape_samples_scraped{job=\"stallwatch\"}")
        .iter()
        .map(|s| {
            (
                s["metric"]["instance"].as_str().unwrap_or("").to_string(),
                s["value"][1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    let before: Vec<(f64, f64, f64)> = [&east, &west]
        .iter()
        .map(|s| remote_write_counters(s))
        .collect();
    let m0 = Instant::now();
    std::thread::sleep(Duration::from_secs(20));
    let after: Vec<(f64, f64, f64)> = [&east, &west]
        .iter()
        .map(|s| remote_write_counters(s))
        .collect();
    let secs = m0.elapsed().as_secs_f64();
    let (mut samples, mut bytes, mut meta) = (0.0, 0.0, 0.0);
    for (x, y) in before.iter().zip(&after) {
        samples += y.0 - x.0;
        bytes += y.1 - x.1;
        meta += y.2 - x.2;
    }
    let total_series: f64 = series_per_node.iter().map(|(_, n)| n).sum();
    eprintln!(
        "fleet: measured over {secs:.1} s at a 1 s scrape: series per node {series_per_node:?} ({total_series} in all); \
         remote write {:.0} samples/s, {:.0} bytes/s, {:.2} bytes/sample (+{:.0} metadata bytes/s)",
        samples / secs,
        bytes / secs,
        bytes / samples.max(1.0),
        meta / secs
    );
    if samples <= 0.0 || bytes <= 0.0 || series_per_node.len() != 3 {
        failures.push(format!("no remote-write traffic measured: samples {samples}, bytes {bytes}, nodes {series_per_node:?}"));
    }

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
