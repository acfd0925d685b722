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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::dstate_rig::DStateRig;
use crate::harness::{repo, require_root, write};
use crate::promstack::Prometheus;

const FILES: [&str; 3] = [
    "stallwatch-node.json",
    "stallwatch-containers.json",
    "stallwatch-ebs.json",
];

/// The fleet dashboard (issue 17): checked statically here with the others; its queries need
/// the fleet recording rules and many nodes, so they run live in `fleet.rs` (against
/// VictoriaMetrics fed by Prometheus agents), not in this file's single-node test.
pub(crate) const FLEET: &str = "stallwatch-fleet.json";

/// Every dashboard file.
fn all_files() -> impl Iterator<Item = &'static str> {
    FILES.into_iter().chain([FLEET])
}

/// A recording-rule name (`level:metric:operations`) of ours.
const RULE_NAME: &str = r"\b[a-z_]+:stallwatch_[a-z0-9_]+:[a-z0-9_]+";

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
const ALLOWED_EMPTY: &[(&str, &str, &str, &str)] = &[
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
const ALLOWED_EMPTY_VARS: &[(&str, &str, &str)] = &[];

/// Labels a legend may name that a series does not always carry (none so far: the test's
/// container has a docker name, so `{{name}}` is checked too).
const OPTIONAL_LEGEND_LABELS: &[&str] = &[];

/// The docker name of the test's container.
const NAME: &str = "stallwatch-dashboards-test";

/// Metric names the EBS dashboard uses that belong to the cloud contract (issue "EBS burst
/// credits"), for as long as docs/metrics.md does not list them yet.
const CLOUD_CONTRACT: &[&str] = &[
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
const UNITS: &[&str] = &[
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
const BUILTIN_VARS: &[&str] = &[
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

fn dashboards_dir() -> PathBuf {
    repo().join("dashboards")
}

pub(crate) fn load(file: &str) -> Value {
    let p = dashboards_dir().join(file);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every panel, rows included, flattened (collapsed rows carry their panels inside).
fn all_panels(d: &Value) -> Vec<&Value> {
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
fn var_refs(s: &str) -> Vec<String> {
    let re =
        regex::Regex::new(r"\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\$([A-Za-z_][A-Za-z0-9_]*)").unwrap();
    re.captures_iter(s)
        .map(|c| c.get(1).or(c.get(2)).unwrap().as_str().to_string())
        .collect()
}

/// `stallwatch_*` metric names in a PromQL expression (histogram series → their family;
/// recording-rule names, which contain one, are not metrics).
fn metric_names(expr: &str) -> BTreeSet<String> {
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

/// The structural rules Grafana's schema types cannot express. Returns every violation.
fn structural_problems(file: &str, d: &Value, documented: &str) -> Vec<String> {
    let recorded = recorded_by_rules();
    let mut bad = Vec::new();
    let mut err = |m: String| bad.push(format!("{file}: {m}"));
    if d["schemaVersion"].as_u64().unwrap_or(0) < 39 {
        err(format!("schemaVersion {} < 39", d["schemaVersion"]));
    }
    for k in ["uid", "title"] {
        if d[k].as_str().is_none_or(str::is_empty) {
            err(format!("no {k}"));
        }
    }
    // Variables: a prometheus datasource variable, unique names, each one's references
    // defined before it (Grafana resolves chained variables in order).
    let vars = d["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut defined: Vec<String> = Vec::new();
    for v in &vars {
        let name = v["name"].as_str().unwrap_or("").to_string();
        if defined.contains(&name) {
            err(format!("variable {name} defined twice"));
        }
        for r in var_refs(variable_query(v).unwrap_or(""))
            .into_iter()
            .chain(var_refs(v["datasource"]["uid"].as_str().unwrap_or("")))
        {
            if !defined.contains(&r) && !BUILTIN_VARS.contains(&r.as_str()) {
                err(format!("variable {name} uses ${r}, not defined before it"));
            }
        }
        if v["type"] == "query" {
            let q = variable_query(v).unwrap_or("");
            if !(q.starts_with("label_values(") && q.ends_with(')')) {
                err(format!(
                    "variable {name}: query {q:?} is not label_values(...)"
                ));
            }
            for m in metric_names(q) {
                if !documented.contains(&format!("`{m}`")) && !CLOUD_CONTRACT.contains(&m.as_str())
                {
                    err(format!(
                        "variable {name}: metric {m} is not in docs/metrics.md"
                    ));
                }
            }
        }
        defined.push(name);
    }
    if !vars.iter().any(|v| {
        v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"
    }) {
        err("no `datasource` variable of type datasource (prometheus)".into());
    }
    let uses_ds = |ds: &Value| ds["type"] == "prometheus" && ds["uid"] == "${datasource}";

    // Panels: unique ids, a grid position inside 24 columns, no two overlapping.
    let mut ids = BTreeSet::new();
    let mut rects: Vec<(String, i64, i64, i64, i64)> = Vec::new();
    for p in all_panels(d) {
        let title = p["title"].as_str().unwrap_or("").to_string();
        let id = p["id"].as_i64();
        match id {
            Some(id) if ids.insert(id) => {}
            _ => err(format!("panel {title:?}: missing or duplicate id {id:?}")),
        }
        if title.is_empty() {
            err(format!("panel id {id:?} has no title"));
        }
        let g = &p["gridPos"];
        let (Some(x), Some(y), Some(w), Some(h)) = (
            g["x"].as_i64(),
            g["y"].as_i64(),
            g["w"].as_i64(),
            g["h"].as_i64(),
        ) else {
            err(format!("panel {title:?}: gridPos {g} incomplete"));
            continue;
        };
        if x < 0 || y < 0 || w <= 0 || h <= 0 || x + w > 24 {
            err(format!(
                "panel {title:?}: gridPos {g} outside the 24-column grid"
            ));
        }
        for (other, ox, oy, ow, oh) in &rects {
            if x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h {
                err(format!("panels {title:?} and {other:?} overlap"));
            }
        }
        rects.push((title.clone(), x, y, w, h));
        if p["type"] == "row" {
            continue;
        }
        if !["timeseries", "stat", "table", "gauge", "bargauge", "text"]
            .contains(&p["type"].as_str().unwrap_or(""))
        {
            err(format!("panel {title:?}: unexpected type {}", p["type"]));
        }
        if !uses_ds(&p["datasource"]) {
            err(format!(
                "panel {title:?}: datasource {} is not ${{datasource}}",
                p["datasource"]
            ));
        }
        let unit = p["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or("");
        if !UNITS.contains(&unit) {
            err(format!(
                "panel {title:?}: unit {unit:?} is not a Grafana unit id we know"
            ));
        }
        let ts = p["targets"].as_array().cloned().unwrap_or_default();
        if ts.is_empty() {
            err(format!("panel {title:?}: no targets"));
        }
        let mut refs = BTreeSet::new();
        for t in &ts {
            let r = t["refId"].as_str().unwrap_or("");
            if r.is_empty() || !refs.insert(r.to_string()) {
                err(format!("panel {title:?}: missing or duplicate refId {r:?}"));
            }
            let expr = t["expr"].as_str().unwrap_or("");
            if expr.trim().is_empty() {
                err(format!("panel {title:?} {r}: no expr"));
            }
            if !uses_ds(&t["datasource"]) {
                err(format!(
                    "panel {title:?} {r}: datasource is not ${{datasource}}"
                ));
            }
            for v in var_refs(expr)
                .into_iter()
                .chain(var_refs(t["legendFormat"].as_str().unwrap_or("")))
            {
                if !defined.contains(&v) && !BUILTIN_VARS.contains(&v.as_str()) {
                    err(format!("panel {title:?} {r}: ${v} is not a variable"));
                }
            }
            let names = metric_names(expr);
            let rules = recorded_rule_names(expr);
            for r in rules.iter().filter(|r| !recorded.contains(*r)) {
                err(format!(
                    "panel {title:?} {r}: recording rule {r} is not in deploy/prometheus/stallwatch.rules.yml"
                ));
            }
            if names.is_empty() && rules.is_empty() {
                err(format!(
                    "panel {title:?} {r}: no stallwatch metric in {expr:?}"
                ));
            }
            for m in names {
                if !documented.contains(&format!("`{m}`")) && !CLOUD_CONTRACT.contains(&m.as_str())
                {
                    err(format!(
                        "panel {title:?} {r}: metric {m} is not in docs/metrics.md"
                    ));
                }
            }
        }
    }
    bad
}

fn run_ok(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn dashboards_are_generated_schema_valid_and_well_formed() {
    let dir = dashboards_dir();
    let (ok, out) = run_ok(
        Command::new("python3")
            .arg(dir.join("generate.py"))
            .arg("--check"),
    );
    assert!(
        ok,
        "dashboards/*.json are not what generate.py makes:\n{out}"
    );

    // Grafana's own schema types, through tsc.
    let check = dir.join("schema/check.py");
    let paths: Vec<PathBuf> = all_files().map(|f| dir.join(f)).collect();
    let (ok, out) = run_ok(Command::new("python3").arg(&check).args(&paths));
    assert!(ok, "schema check failed:\n{out}");
    // ...which rejects a misspelt key, an unknown enum value and a wrongly typed field.
    let tmp = tempfile::tempdir().unwrap();
    let mut broken = load(FILES[0]);
    broken["panels"][1]["gridpos"] = broken["panels"][1]["gridPos"].clone();
    broken["panels"][2]["fieldConfig"]["defaults"]["color"]["mode"] = "palette-classics".into();
    broken["templating"]["list"][1]["refresh"] = 7.into();
    broken["schemaVersion"] = "39".into();
    let bad = tmp.path().join("broken.json");
    write(&bad, &broken.to_string());
    let (ok, out) = run_ok(Command::new("python3").arg(&check).arg(&bad));
    assert!(!ok, "the schema check accepted a broken dashboard:\n{out}");
    for want in [
        "gridpos",
        "palette-classics",
        "'7'",
        "'string' is not assignable to type 'number'",
    ] {
        assert!(
            out.contains(want),
            "schema check output lacks {want:?}:\n{out}"
        );
    }

    // What the types cannot say.
    let documented = std::fs::read_to_string(repo().join("docs/metrics.md")).unwrap();
    let mut problems = Vec::new();
    let mut uids = BTreeSet::new();
    for f in all_files() {
        let d = load(f);
        assert!(
            uids.insert(d["uid"].as_str().unwrap().to_string()),
            "{f}: uid reused"
        );
        problems.extend(structural_problems(f, &d, &documented));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // ...and the structural check is not blind: a copy with an overlap, a duplicate id, an
    // undefined variable, a bad unit and an undocumented metric fails on each.
    let mut broken = load(FILES[1]);
    let panels = broken["panels"].as_array_mut().unwrap();
    let mut dup = panels[3].clone();
    dup["gridPos"]["x"] = (dup["gridPos"]["x"].as_i64().unwrap() + 1).into();
    dup["fieldConfig"]["defaults"]["unit"] = "seconds".into();
    dup["targets"][0]["expr"] = "rate(stallwatch_no_such_metric{pod=~\"$pod\"}[5m])".into();
    panels.push(dup);
    let problems = structural_problems("broken", &broken, &documented).join("\n");
    for want in [
        "duplicate id",
        "overlap",
        "$pod is not a variable",
        "\"seconds\"",
        "stallwatch_no_such_metric",
    ] {
        assert!(
            problems.contains(want),
            "structural check missed {want:?}:\n{problems}"
        );
    }
    // ...and a recording rule the rules do not record fails too (the fleet dashboard reads
    // the fleet rules).
    let mut broken = load(FLEET);
    let panels = broken["panels"].as_array_mut().unwrap();
    let p = panels.iter_mut().find(|p| p["type"] != "row").unwrap();
    p["targets"][0]["expr"] = "sum(instance:stallwatch_no_such_rule:max)".into();
    let problems = structural_problems("broken-fleet", &broken, &documented).join("\n");
    assert!(
        problems.contains("recording rule instance:stallwatch_no_such_rule:max is not in"),
        "structural check missed an unknown recording rule:\n{problems}"
    );
    for (f, title, _, _) in ALLOWED_EMPTY {
        assert!(
            targets(&load(f)).iter().any(|t| t.panel == *title),
            "ALLOWED_EMPTY names a panel that does not exist: {f} {title:?}"
        );
    }
}

// ------------------------------------------------------------------------------------------
// Live: the real agent, the real Prometheus.
// ------------------------------------------------------------------------------------------

/// A cgroup in the docker cgroupfs shape (`/docker/<64 hex>`) in every v1 hierarchy and the
/// unified tree, with a CPU quota, a memory limit, a blkio throttle rule (so v1 counts its
/// direct I/O) and one process in its own network namespace (a veth pair inside it) that does
/// some direct I/O and UDP, then burns CPU. Killed and removed on drop.
struct DockerShaped {
    id: String,
    cg: Option<cgroups_rs::fs::Cgroup>,
    unified: PathBuf,
    child: Child,
    created_parents: Vec<String>,
}

impl DockerShaped {
    fn start(dir: &Path) -> DockerShaped {
        use cgroups_rs::fs::hierarchies::V1;
        let seed = u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let id: String = (0..4u32)
            .map(|i| format!("{:016x}", seed.rotate_left(i * 17)))
            .collect();
        let rel = format!("docker/{id}");
        let created_parents = if Path::new("/sys/fs/cgroup/memory/docker").exists() {
            vec![]
        } else {
            vec!["docker".to_string()]
        };
        let cg = cgroups_rs::fs::Cgroup::new(Box::new(V1::new()), &rel)
            .unwrap_or_else(|e| panic!("create cgroup {rel}: {e}"));
        let unified = PathBuf::from("/sys/fs/cgroup/unified").join(&rel);
        std::fs::create_dir_all(&unified).unwrap();
        let disk = whole_disk_of(dir);
        let script = format!(
            "read go; \
             ip link add swa0 type veth peer name swb0 && ip link set swa0 up && ip link set swb0 up \
             && ip addr add 169.254.99.1/30 dev swa0 && ip addr add 169.254.99.2/30 dev swb0; \
             python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
             [s.sendto(b\"x\" * 100, (\"169.254.99.2\", 9)) for _ in range(20)]'; \
             dd if=/dev/zero of={out} bs=4k count=64 oflag=direct 2>/dev/null; \
             dd if={out} of=/dev/null bs=4k iflag=direct 2>/dev/null; \
             while :; do :; done",
            out = dir.join("io.bin").display()
        );
        let child = Command::new("unshare")
            .args(["--net", "sh", "-c", &script])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let mut c = DockerShaped {
            id,
            cg: Some(cg),
            unified,
            child,
            created_parents,
        };
        let v1 = |ctrl: &str, file: &str, value: &str| {
            let p = PathBuf::from("/sys/fs/cgroup")
                .join(ctrl)
                .join(&rel)
                .join(file);
            std::fs::write(&p, value)
                .unwrap_or_else(|e| panic!("write {value:?} to {}: {e}", p.display()));
        };
        let devnum = std::fs::read_to_string(format!("/sys/block/{disk}/dev")).unwrap();
        let devnum = devnum.trim();
        v1(
            "blkio",
            "blkio.throttle.read_bps_device",
            &format!("{devnum} 10000000000"),
        );
        v1(
            "blkio",
            "blkio.throttle.write_bps_device",
            &format!("{devnum} 10000000000"),
        );
        v1("cpu", "cpu.cfs_quota_us", "20000");
        v1("memory", "memory.limit_in_bytes", "536870912");
        let pid = c.child.id();
        c.cg.as_ref()
            .unwrap()
            .add_task_by_tgid(cgroups_rs::CgroupPid::from(u64::from(pid)))
            .unwrap();
        std::fs::write(c.unified.join("cgroup.procs"), pid.to_string()).unwrap();
        c.child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        c
    }
}

impl Drop for DockerShaped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(cg) = self.cg.take() {
            for _ in 0..50 {
                if cg.delete().is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = std::fs::remove_dir(&self.unified);
        for parent in self.created_parents.iter().rev() {
            if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
                for h in rd.filter_map(|e| e.ok()) {
                    let _ = std::fs::remove_dir(h.path().join(parent));
                }
            }
        }
    }
}

/// The whole disk (e.g. `vda`) holding `path`: v1 throttle rules are per whole disk.
fn whole_disk_of(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).unwrap().dev();
    let (maj, min) = (libc::major(dev), libc::minor(dev));
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{maj}:{min}")).unwrap();
    let disk = if sys.join("partition").exists() {
        sys.parent().unwrap().to_path_buf()
    } else {
        sys
    };
    disk.file_name().unwrap().to_string_lossy().into_owned()
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

#[test]
fn dashboards_every_panel_query_returns_data_from_real_prometheus() {
    if !require_root("dashboards_every_panel_query_returns_data_from_real_prometheus") {
        return;
    }
    let t0 = Instant::now();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let probe_dir = dir.path().join("probe");
    std::fs::create_dir(&probe_dir).unwrap();
    // Real threads in D (so the D-state panels have groups, ages and wait channels) and a
    // container with a process in it.
    let rig = DStateRig::start(2, 4);
    let ctr = DockerShaped::start(dir.path());
    // Docker's state for the `name` label, in a private docker_root.
    let docker_root = dir.path().join("docker");
    let state = docker_root.join("containers").join(&ctr.id);
    std::fs::create_dir_all(&state).unwrap();
    write(
        &state.join("config.v2.json"),
        &format!("{{\"ID\": \"{}\", \"Name\": \"/{NAME}\"}}", ctr.id),
    );
    // The cloud side on loopback (moto + IMDSv2, tests/cloud/harness.py): one 1 GiB gp2 volume
    // with a CloudWatch history, mapped to the disk under the test's temp dir, so the EBS
    // panels have a volume, a BurstBalance, a local estimate and cloud request counters.
    let aws = crate::cloud::Aws::start();
    let setup = aws.call(
        "setup",
        serde_json::json!({"volumes": [{"type": "gp2", "size": 1}]}),
    );
    let vol = setup["volumes"][0].as_str().unwrap().to_string();
    let m0 = (crate::cloud::now() / 60.0).floor() * 60.0;
    aws.call(
        "put",
        serde_json::json!({"volume_id": vol, "points": [[m0 - 180.0, 90.0], [m0 - 120.0, 88.0], [m0 - 60.0, 87.0]]}),
    );
    // The instance's own EBS buckets (AWS/EC2), for the instance-burst panel.
    let iid = setup["instance_id"].as_str().unwrap();
    for (metric, v) in [("EBSIOBalance%", 93.0), ("EBSByteBalance%", 97.0)] {
        aws.call(
            "put",
            serde_json::json!({"instance_id": iid, "metric": metric, "points": [[m0 - 120.0, v], [m0 - 60.0, v]]}),
        );
    }
    let disk = whole_disk_of(dir.path());
    let cfg = dir.path().join("cfg.toml");
    write(
        &cfg,
        &format!(
            "{}\n[threads]\ninterval = \"1s\"\nfast_interval = \"1s\"\n\n\
             [containers]\ninterval = \"1s\"\ndocker_root = \"{}\"\n\n\
             [[probe]]\npath = \"{}\"\nsize = \"64KiB\"\ninterval = \"1s\"\ntimeout = \"5s\"\n",
            aws.config(&format!(
                "poll_interval = \"3s\"\nfast_poll_interval = \"3s\"\ndescribe_interval = \"3s\"\n\
                 retry_min = \"1s\"\n\n[[cloud.volume]]\ndevice = \"{disk}\"\nvolume_id = \"{vol}\"\n"
            )),
            docker_root.display(),
            probe_dir.display()
        ),
    );
    let agent = crate::cloud::start_agent(&cfg);
    let prom = Prometheus::start(
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: stallwatch\n    static_configs:\n      - targets: ['{}']\n",
            agent.addr
        ),
        &[],
    );
    let cid = &ctr.id;
    // Enough scrapes for every rate() window, with the container, the D threads and a few
    // probe writes in them.
    prom.wait_for(
        Duration::from_secs(30),
        "8 scrapes",
        "count_over_time(up{job=\"stallwatch\"}[1m])",
        |n| n >= 8.0,
    );
    prom.wait_for(Duration::from_secs(30), "the container's CPU counter for 6 s", &format!("count_over_time(stallwatch_container_cpu_usage_seconds_total{{container_id=\"{cid}\"}}[1m])"), |n| n >= 6.0);
    for dir in ["read", "written"] {
        prom.wait_for(
            Duration::from_secs(30),
            &format!("container I/O {dir}"),
            &format!("sum(stallwatch_container_io_{dir}_bytes_total{{container_id=\"{cid}\"}})"),
            |n| n >= 64.0 * 4096.0,
        );
    }
    prom.wait_for(
        Duration::from_secs(30),
        "threads in D",
        "sum(stallwatch_dstate_threads)",
        |n| n >= 1.0,
    );
    prom.wait_for(
        Duration::from_secs(30),
        "probe writes",
        "sum(stallwatch_probe_write_seconds_count)",
        |n| n >= 3.0,
    );
    prom.wait_for(
        Duration::from_secs(30),
        "the volume's CloudWatch value and local estimate",
        &format!("stallwatch_ebs_burst_balance_percent{{volume_id=\"{vol}\"}} + on (volume_id) count_over_time(stallwatch_ebs_burst_balance_estimate_percent{{volume_id=\"{vol}\"}}[1m])"),
        |n| n >= 87.0 + 5.0,
    );
    eprintln!("dashboards: stack ready after {:?}", t0.elapsed());

    let vars: HashMap<&str, String> = [
        ("job", "stallwatch".to_string()),
        ("instance", agent.addr.clone()),
        ("name", NAME.to_string()),
        ("container", cid.clone()),
        ("volume", vol.clone()),
        ("__rate_interval", "4s".to_string()),
        ("__interval", "1s".to_string()),
        ("__range", "1m".to_string()),
    ]
    .into_iter()
    .collect();

    let mut failures = Vec::new();
    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for f in FILES {
        let d = load(f);
        // Variable queries, as Grafana's Prometheus datasource runs label_values(): the
        // series API's label values for the substituted selector.
        for v in d["templating"]["list"].as_array().unwrap() {
            if v["type"] != "query" {
                continue;
            }
            let name = v["name"].as_str().unwrap();
            let (sel, label) = parse_label_values(variable_query(v).unwrap());
            let sel = substitute(&sel, &vars);
            let r = prom.api(
                &format!("/api/v1/label/{label}/values"),
                &[("match[]", &sel)],
            );
            let values = r["data"].as_array().cloned().unwrap_or_default();
            let allowed = ALLOWED_EMPTY_VARS
                .iter()
                .any(|(af, an, _)| *af == f && *an == name);
            if r["status"] != "success" {
                failures.push(format!("{f} variable {name}: {sel}: {r}"));
            } else if values.is_empty() && !allowed {
                failures.push(format!(
                    "{f} variable {name}: no values for {label} of {sel}"
                ));
            }
            // The test's own choices must be among the values a user could pick.
            let want = match name {
                "job" => Some("stallwatch".to_string()),
                "instance" => Some(agent.addr.clone()),
                "container" => Some(cid.clone()),
                "name" => Some(NAME.to_string()),
                "volume" => Some(vol.clone()),
                _ => None,
            };
            if let Some(w) = want {
                if !values.iter().any(|x| x == &Value::String(w.clone())) {
                    failures.push(format!("{f} variable {name}: {w} not among {values:?}"));
                }
            }
        }
        for t in targets(&d) {
            let expr = substitute(t.expr, &vars);
            let r = prom.query(&expr);
            let c = counts.entry(f).or_default();
            c.0 += 1;
            let what = format!("{f} {:?} {}: {expr}", t.panel, t.ref_id);
            if r["status"] != "success" {
                failures.push(format!("{what}\n    does not run: {}", r["error"]));
                continue;
            }
            let result = r["data"]["result"].as_array().cloned().unwrap_or_default();
            let allowed = ALLOWED_EMPTY.iter().any(|(af, ap, refs, _)| {
                *af == f && *ap == t.panel && (*refs == "*" || refs.contains(t.ref_id))
            });
            if result.is_empty() {
                if !allowed {
                    failures.push(format!("{what}\n    returned no data"));
                }
                continue;
            }
            c.1 += 1;
            if allowed {
                eprintln!("dashboards: note: allowed-empty {what} returned data now");
            }
            // Every label the legend names is on every series (else Grafana prints it empty).
            for series in &result {
                for l in legend_labels(t.legend) {
                    if series["metric"][&l].is_null()
                        && !OPTIONAL_LEGEND_LABELS.contains(&l.as_str())
                    {
                        failures.push(format!(
                            "{what}\n    legend {:?} names {l}, missing from {}",
                            t.legend, series["metric"]
                        ));
                    }
                }
            }
        }
    }
    eprintln!(
        "dashboards: (targets, with data) per file: {counts:?}; {:?} in all",
        t0.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} dashboard queries failed against the real Prometheus:\n{}\nPrometheus targets: {}",
        failures.len(),
        failures.join("\n"),
        prom.api("/api/v1/targets", &[])
    );
    // The container panels had the container, the D-state panels the rig's threads.
    assert!(prom
        .value(&format!(
            "sum(stallwatch_container_cpu_usage_seconds_total{{container_id=\"{cid}\"}})"
        ))
        .is_some_and(|v| v > 0.0));
    drop(prom);
    drop(agent);
    drop(ctr);
    drop(rig);
}
