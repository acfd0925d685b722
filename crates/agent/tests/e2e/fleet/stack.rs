//! The fleet test's servers: VictoriaMetrics (the store), Prometheus in agent mode (the
//! scrapers) and vmalert (the ruler), each on a free loopback port with its own temp dir,
//! stopped by PID on drop (`promstack::Server`).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cardinality::family_sum;
use crate::harness::{repo, write, Metrics};
use crate::promstack::{http, Prometheus, Server, Webhook};

/// The VictoriaMetrics single-node server (Prometheus-compatible query API and remote_write),
/// queried through the same client as the Prometheus of the other tests.
pub(super) struct Vm {
    prom: Prometheus,
}

impl Vm {
    pub(super) fn start() -> Vm {
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
        Vm {
            prom: Prometheus::from_server(server),
        }
    }

    pub(super) fn url(&self) -> &str {
        self.prom.url()
    }

    pub(super) fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        self.prom.api(path, params)
    }

    pub(super) fn query(&self, expr: &str) -> Value {
        self.prom.query(expr)
    }

    pub(super) fn value(&self, expr: &str) -> Option<f64> {
        self.prom.value(expr)
    }

    pub(super) fn result(&self, expr: &str) -> Vec<Value> {
        let r = self.query(expr);
        assert_eq!(r["status"], "success", "{expr}: {r}");
        r["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    pub(super) fn wait_for(
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
                    self.prom.log(),
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
pub(super) fn prometheus_agent(cluster: &str, targets: &[&str], vm: &Vm) -> Server {
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
        vm.url(),
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
pub(super) fn vmalert(vm: &Vm, notifier: &Webhook) -> Server {
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
    let vm_url = vm.url().to_string();
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
pub(super) fn rule_errors(ruler: &Server) -> Vec<String> {
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
pub(super) fn remote_write_counters(agent: &Server) -> (f64, f64, f64) {
    let text = http()
        .get(format!("{}/metrics", agent.url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let m = Metrics::parse(&text);
    (
        family_sum(&m, "prometheus_remote_storage_samples_total"),
        family_sum(&m, "prometheus_remote_storage_bytes_total"),
        family_sum(&m, "prometheus_remote_storage_metadata_bytes_total"),
    )
}
