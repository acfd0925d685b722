//! The Grafana dashboards in dashboards/*.json, tested two ways:
//!
//! 1. Statically: the checked-in JSON is what dashboards/generate.py makes; it type-checks
//!    against Grafana's own dashboard schema types (dashboards/schema/check.py, tsc), and a
//!    broken copy does not; and the structure Grafana does not type-check holds (unique ids,
//!    non-overlapping grid, datasource variable everywhere, every variable used is defined,
//!    units Grafana knows, every metric documented).
//! 2. Live: the real agent (with a sync-write probe, a docker-shaped container cgroup with a
//!    process in it, and real threads in D) is scraped every second by the real Debian
//!    Prometheus, and EVERY panel target and variable query is run through Prometheus's HTTP
//!    API with Grafana's template variables substituted: each must parse and return data (with
//!    the labels its legend names), unless listed in `ALLOWED_EMPTY` with the reason.

mod live;
mod structure;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use serde_json::Value;

use crate::harness::repo;

pub(super) const FILES: [&str; 3] = [
    "stallwatch-node.json",
    "stallwatch-containers.json",
    "stallwatch-ebs.json",
];

/// The fleet dashboard (issue 17): checked statically here with the others; its queries need
/// the fleet recording rules and many nodes, so they run live in `fleet.rs` (against
/// VictoriaMetrics fed by Prometheus agents), not in this file's single-node test.
pub(crate) const FLEET: &str = "stallwatch-fleet.json";

/// Every dashboard file.
pub(super) fn all_files() -> impl Iterator<Item = &'static str> {
    FILES.into_iter().chain([FLEET])
}

/// A recording-rule name (`level:metric:operations`) of ours.
pub(super) const RULE_NAME: &str = r"\b[a-z_]+:stallwatch_[a-z0-9_]+:[a-z0-9_]+";

/// Recording-rule names in a PromQL expression.
pub(crate) fn recorded_rule_names(expr: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(RULE_NAME).unwrap();
    re.find_iter(expr).map(|m| m.as_str().to_string()).collect()
}

/// The names `deploy/prometheus/stallwatch.rules.yml` records.
pub(crate) fn recorded_by_rules() -> BTreeSet<String> {
    let text =
        std::fs::read_to_string(repo().join("deploy/prometheus/stallwatch.rules.yml")).unwrap();
    let re = regex::Regex::new(r"(?m)^\s*- record: (\S+)").unwrap();
    re.captures_iter(&text).map(|c| c[1].to_string()).collect()
}

/// (dashboard file, panel title, refIds or "*", why): targets that may return nothing in this
/// test. Every other target must return data.
pub(super) const ALLOWED_EMPTY: &[(&str, &str, &str, &str)] = &[
    // The test's volume (moto, via the cloud harness) is a 1 GiB gp2: no provisioned IOPS.
    (
        "stallwatch-ebs.json",
        "Volumes",
        "D",
        "gp2 has no provisioned IOPS",
    ),
    (
        "stallwatch-ebs.json",
        "IOPS on the volume vs its baseline",
        "C",
        "gp2 has no provisioned IOPS",
    ),
    // Only draining volumes are shown (`< +Inf`), and nothing here drains the test volume
    // above its baseline for the model's 60 s window (cloud::early_warning tests that).
    (
        "stallwatch-node.json",
        "Time until the credits run out",
        "*",
        "not draining",
    ),
    (
        "stallwatch-ebs.json",
        "Time until the credits run out",
        "*",
        "not draining",
    ),
    // Only volumes whose I/O rate is rising are shown (`< +Inf`); nothing ramps up here
    // (cloud/src/rates.rs and cloud::early::headroom test the trend and the limits).
    (
        "stallwatch-ebs.json",
        "Time until the limit at the current trend",
        "*",
        "no rising load",
    ),
    // The EBS NVMe log page (0xD0) exists only on real EBS NVMe devices.
    (
        "stallwatch-ebs.json",
        "Time over the volume's limits (NVMe log page)",
        "*",
        "no EBS NVMe device",
    ),
    (
        "stallwatch-ebs.json",
        "Time over the instance's EBS limits",
        "*",
        "no EBS NVMe device",
    ),
    // The cloud crate's sysfs scan describes NVMe, Xen and SCSI disks; this host's disk is
    // virtio (vda), so stallwatch_disk_info and stallwatch_disk_io_timeout_seconds are absent.
    (
        "stallwatch-ebs.json",
        "I/O timeout of the volume's device",
        "*",
        "virtio disk: not described",
    ),
    (
        "stallwatch-ebs.json",
        "Block devices",
        "*",
        "virtio disk: not described",
    ),
    // Absent while there are none ("absent source => absent metric"): overlay mounts exist
    // here only while a Docker test or engine runs.
    (
        "stallwatch-node.json",
        "Overlay mounts by upper device",
        "*",
        "no overlay mounts on an idle test host",
    ),
];

/// Variables whose values may be empty here, with the reason (none: the cloud harness gives
/// the EBS dashboard a volume).
pub(super) const ALLOWED_EMPTY_VARS: &[(&str, &str, &str)] = &[];

/// Labels a legend may name that a series does not always carry (none so far: the test's
/// container has a docker name, so `{{name}}` is checked too).
pub(super) const OPTIONAL_LEGEND_LABELS: &[&str] = &[];

/// The docker name of the test's container.
pub(super) const NAME: &str = "stallwatch-dashboards-test";

/// Metric names the EBS dashboard uses that belong to the cloud contract (issue "EBS burst
/// credits"), for as long as docs/metrics.md does not list them yet.
pub(super) const CLOUD_CONTRACT: &[&str] = &[
    "stallwatch_ebs_volume_info",
    "stallwatch_ebs_volume_size_bytes",
    "stallwatch_ebs_volume_baseline_iops",
    "stallwatch_ebs_volume_provisioned_iops",
    "stallwatch_ebs_burst_balance_percent",
    "stallwatch_ebs_burst_balance_timestamp_seconds",
    "stallwatch_ebs_burst_balance_estimate_percent",
    "stallwatch_ebs_burst_seconds_to_empty",
    "stallwatch_ebs_exceeded_iops_seconds_total",
    "stallwatch_ebs_exceeded_throughput_seconds_total",
    "stallwatch_ec2_ebs_exceeded_iops_seconds_total",
    "stallwatch_ec2_ebs_exceeded_throughput_seconds_total",
    "stallwatch_cloud_requests_total",
    "stallwatch_cloud_metrics_requested_total",
    "stallwatch_cloud_estimated_cost_dollars_total",
    "stallwatch_cloud_last_success_timestamp_seconds",
    "stallwatch_cloud_enabled",
    "stallwatch_disk_info",
    "stallwatch_disk_io_timeout_seconds",
];

/// Grafana unit ids the dashboards may use: a subset of the ids in @grafana/data 13.2.3
/// (dist/esm/valueFormats/categories.mjs), each checked there.
pub(super) const UNITS: &[&str] = &[
    "none",
    "short",
    "percent",
    "percentunit",
    "currencyUSD",
    "bytes",
    "decbytes",
    "pps",
    "binBps",
    "Bps",
    "ms",
    "s",
    "dtdurationms",
    "dtdurations",
    "clocks",
    "ops",
    "reqps",
    "iops",
    "bool",
];

/// Grafana's global variables.
pub(super) const BUILTIN_VARS: &[&str] = &[
    "__rate_interval",
    "__interval",
    "__interval_ms",
    "__range",
    "__range_s",
    "__range_ms",
    "__dashboard",
    "__from",
    "__to",
];

pub(super) fn dashboards_dir() -> PathBuf {
    repo().join("dashboards")
}

pub(crate) fn load(file: &str) -> Value {
    let p = dashboards_dir().join(file);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every panel, rows included, flattened (collapsed rows carry their panels inside).
pub(super) fn all_panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

pub(crate) struct Target<'a> {
    pub panel: &'a str,
    pub ref_id: &'a str,
    pub expr: &'a str,
    pub legend: &'a str,
}

pub(crate) fn targets(d: &Value) -> Vec<Target<'_>> {
    let mut out = Vec::new();
    for p in all_panels(d) {
        if p["type"] == "row" {
            continue;
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(Target {
                panel: p["title"].as_str().unwrap_or(""),
                ref_id: t["refId"].as_str().unwrap_or(""),
                expr: t["expr"].as_str().unwrap_or(""),
                legend: t["legendFormat"].as_str().unwrap_or(""),
            });
        }
    }
    out
}

/// `$name` and `${name}` / `${name:fmt}` references in `s`.
pub(super) fn var_refs(s: &str) -> Vec<String> {
    let re =
        regex::Regex::new(r"\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\$([A-Za-z_][A-Za-z0-9_]*)").unwrap();
    re.captures_iter(s)
        .map(|c| c.get(1).or(c.get(2)).unwrap().as_str().to_string())
        .collect()
}

/// `stallwatch_*` metric names in a PromQL expression (histogram series → their family;
/// recording-rule names, which contain one, are not metrics).
pub(super) fn metric_names(expr: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\bstallwatch_[a-z0-9_]+").unwrap();
    let expr = regex::Regex::new(RULE_NAME).unwrap().replace_all(expr, " ");
    re.find_iter(&expr)
        .map(|m| {
            let n = m.as_str();
            n.strip_suffix("_bucket")
                .or_else(|| n.strip_suffix("_count"))
                .or_else(|| n.strip_suffix("_sum"))
                .unwrap_or(n)
                .to_string()
        })
        .collect()
}

/// `{{label}}` names in a legend format.
pub(crate) fn legend_labels(legend: &str) -> Vec<String> {
    let re = regex::Regex::new(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}").unwrap();
    re.captures_iter(legend).map(|c| c[1].to_string()).collect()
}

pub(crate) fn variable_query(v: &Value) -> Option<&str> {
    v["query"]["query"].as_str().or(v["query"].as_str())
}

/// Grafana's substitutions for this test: a 1 s scrape interval makes `$__rate_interval`
/// 4 × 1 s (Grafana's `max($__interval + scrape, 4 × scrape)`).
pub(crate) fn substitute(expr: &str, vars: &HashMap<&str, String>) -> String {
    let re =
        regex::Regex::new(r"\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\$([A-Za-z_][A-Za-z0-9_]*)").unwrap();
    re.replace_all(expr, |c: &regex::Captures| {
        let name = c.get(1).or(c.get(2)).unwrap().as_str();
        vars.get(name)
            .cloned()
            .unwrap_or_else(|| panic!("no substitution for ${name} in {expr}"))
    })
    .into_owned()
}

/// `label_values(selector, label)` → (selector, label).
pub(crate) fn parse_label_values(q: &str) -> (String, String) {
    let inner = q
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not label_values(...): {q}"));
    let (sel, label) = inner
        .rsplit_once(',')
        .expect("label_values(selector, label)");
    (sel.trim().to_string(), label.trim().to_string())
}
