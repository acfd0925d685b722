//! What the fleet test asks of the store: every recording rule, every fleet-dashboard query,
//! and what the scrapers sent. Each check returns its failures instead of panicking, so one
//! run reports all of them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::dashboards::{
    legend_labels, load, parse_label_values, recorded_by_rules, substitute, targets,
    variable_query, FLEET,
};
use crate::harness::{repo, write};
use crate::promstack::Server;

use super::stack::{remote_write_counters, Vm};

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

/// Every recording rule of the rules file: its expression runs on the store (MetricsQL) and
/// returns data, and its recorded series are in the store (written back by vmalert).
/// Returns (rules checked, failures).
pub(super) fn recording_rules(vm: &Vm) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let recorded = recorded_by_rules();
    let rules_doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("deploy/prometheus/stallwatch.rules.yml")).unwrap(),
    )
    .unwrap();
    let mut count = 0;
    for g in rules_doc["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            let Some(name) = r.get("record").and_then(|v| v.as_str()) else {
                continue;
            };
            count += 1;
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
                failures.push(format!(
                    "rule {name}: {got} series from its expression, {stored} recorded in the store\n    {expr}"
                ));
            }
        }
    }
    assert_eq!(count, recorded.len(), "rules parsed badly");
    (count, failures)
}

/// The fleet dashboard: every variable offers `want_values`; every target runs with "All"
/// selected, returns data, names in its legend only labels its series carry, and parses as
/// Prometheus's PromQL too (`promtool check rules` on them as recording rules, in `dir`).
/// Returns (targets checked, failures).
pub(super) fn fleet_dashboard(
    vm: &Vm,
    want_values: &BTreeMap<&str, Vec<&str>>,
    dir: &Path,
) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let d = load(FLEET);
    let vars: HashMap<&str, String> = ["cluster", "zone", "instance_type"]
        .into_iter()
        .map(|v| (v, ".*".to_string()))
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
    let mut promql = String::from("groups:\n  - name: fleet-dashboard\n    rules:\n");
    let mut count = 0;
    for t in targets(&d) {
        count += 1;
        let expr = substitute(t.expr, &vars);
        let what = format!("{:?} {}: {expr}", t.panel, t.ref_id);
        promql.push_str(&format!(
            "      - record: fleet_dashboard_{count}\n        expr: {}\n",
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
    let check = dir.join("dashboard-queries.yml");
    write(&check, &promql);
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&check)
        .output()
        .expect("run promtool");
    if !out.status.success() {
        failures.push(format!(
            "the fleet dashboard's queries are not all PromQL:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    (count, failures)
}

/// What the scrapers sent over 20 s, from their own counters, with the series per node from
/// the store; printed for docs/fleet.md. Fails only if nothing was sent.
pub(super) fn remote_write_cost(vm: &Vm, scrapers: &[&Server]) -> Vec<String> {
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
    let before: Vec<(f64, f64, f64)> = scrapers.iter().map(|s| remote_write_counters(s)).collect();
    let m0 = Instant::now();
    std::thread::sleep(Duration::from_secs(20));
    let after: Vec<(f64, f64, f64)> = scrapers.iter().map(|s| remote_write_counters(s)).collect();
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
        vec![format!(
            "no remote-write traffic measured: samples {samples}, bytes {bytes}, nodes {series_per_node:?}"
        )]
    } else {
        Vec::new()
    }
}
