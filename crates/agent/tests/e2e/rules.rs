//! The Prometheus rules and the Alertmanager example in `deploy/` (issue 8), checked with the
//! real tools: the checked-in rules are the default render of `params.yml`, `promtool check
//! rules` and `promtool test rules` pass, the unit tests cover every alert firing and not firing
//! (and fail when a threshold moves), every metric the rules name is one the agent documents,
//! and `amtool` accepts the Alertmanager config and routes each severity where it says.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_yaml_ng::Value;

use crate::harness::repo;

/// Alert names other parts of the project (dashboards, the end-to-end Alertmanager test, the
/// README) rely on.
const CONTRACT_ALERTS: &[&str] = &[
    "StallwatchDStatePileup",
    "StallwatchContainerDStatePileup",
    "StallwatchWritebackStorm",
    "StallwatchDirtyNearThreshold",
    "StallwatchProbeSlow",
    "StallwatchProbeHung",
    "StallwatchNodeIOPressure",
    "StallwatchEBSBurstCreditsLow",
    "StallwatchEBSBurstCreditsEmptySoon",
    "StallwatchEBSBurstCreditsExhausted",
    "StallwatchEBSExceededIOPS",
    "StallwatchEBSExceededThroughput",
    "StallwatchCloudPollingFailing",
    "StallwatchBurstBalanceStale",
    "StallwatchSourceStuck",
    "StallwatchAgentDown",
    "StallwatchConfigReloadFailed",
];

/// Cloud metrics being added by the cloud issue at the same time as these rules; accepted by
/// name until docs/metrics.md lists them (then they are found there as well).
const CLOUD_METRICS: &[&str] = &[
    "stallwatch_ebs_burst_balance_percent",
    "stallwatch_ebs_burst_balance_estimate_percent",
    "stallwatch_ebs_burst_seconds_to_empty",
    "stallwatch_ebs_burst_balance_timestamp_seconds",
    "stallwatch_ebs_exceeded_iops_seconds_total",
    "stallwatch_ebs_exceeded_throughput_seconds_total",
    "stallwatch_ec2_ebs_exceeded_iops_seconds_total",
    "stallwatch_ec2_ebs_exceeded_throughput_seconds_total",
    "stallwatch_cloud_requests_total",
    "stallwatch_cloud_enabled",
    "stallwatch_cloud_last_success_timestamp_seconds",
    "stallwatch_ebs_volume_info",
    "stallwatch_disk_info",
];

fn prom_dir() -> PathBuf {
    repo().join("deploy/prometheus")
}

fn rules_file() -> PathBuf {
    prom_dir().join("stallwatch.rules.yml")
}

fn test_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(prom_dir().join("tests"))
        .expect("read deploy/prometheus/tests")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no unit tests in deploy/prometheus/tests");
    v
}

/// Runs a tool; a missing tool is a failure naming the Debian/PyPI package.
pub(crate) fn run(cmd: &mut Command, what: &str) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("run {what} ({cmd:?}): {e}; `make test-deps` installs it"))
}

pub(crate) fn out_text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn render(args: &[&str]) -> Output {
    run(
        Command::new("python3")
            .arg(prom_dir().join("render.py"))
            .args(args),
        "python3 render.py (PyPI PyYAML)",
    )
}

fn yaml(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// Every rule of a rules document (recording and alerting), in order.
fn rules_of(doc: &Value) -> Vec<&Value> {
    doc["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").iter())
        .collect()
}

fn alerts_of(doc: &Value) -> Vec<&Value> {
    rules_of(doc)
        .into_iter()
        .filter(|r| r.get("alert").is_some())
        .collect()
}

#[test]
fn rules_checked_in_file_is_the_default_render() {
    let o = render(&[]);
    assert!(o.status.success(), "render.py failed:\n{}", out_text(&o));
    let rendered = String::from_utf8(o.stdout).unwrap();
    let checked_in = std::fs::read_to_string(rules_file()).unwrap();
    assert!(
        rendered == checked_in,
        "deploy/prometheus/stallwatch.rules.yml is not the default render of rules.tmpl.yml + \
         params.yml: run `python3 deploy/prometheus/render.py --out \
         deploy/prometheus/stallwatch.rules.yml`"
    );
}

#[test]
fn rules_render_overrides_and_rejects_bad_params() {
    // The overrides the end-to-end Alertmanager test uses land where they should.
    let o = render(&[
        "--param",
        "dstate_pileup_seconds=3",
        "--param",
        "dstate_pileup_for=0s",
    ]);
    assert!(o.status.success(), "{}", out_text(&o));
    let doc: Value = serde_yaml_ng::from_slice(&o.stdout).unwrap();
    let pileup = alerts_of(&doc)
        .into_iter()
        .find(|a| s(&a["alert"]) == "StallwatchDStatePileup")
        .expect("StallwatchDStatePileup");
    assert_eq!(s(&pileup["for"]), "0s");
    let expr = s(&pileup["expr"]);
    assert!(
        expr.contains("stallwatch_dstate_longest_seconds > 3\n"),
        "{expr}"
    );
    // --out writes the same text.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.yml");
    let o2 = render(&[
        "--param",
        "dstate_pileup_seconds=3",
        "--param",
        "dstate_pileup_for=0s",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o2.status.success(), "{}", out_text(&o2));
    assert_eq!(std::fs::read(&out).unwrap(), o.stdout);
    let check = run(
        Command::new("promtool").arg("check").arg("rules").arg(&out),
        "promtool (Debian prometheus)",
    );
    assert!(check.status.success(), "{}", out_text(&check));

    for (bad, why) in [
        ("no_such_param=1", "no such parameter"),
        ("dstate_pileup_for=soon", "not a Prometheus duration"),
        ("dstate_pileup_seconds=thirty", "not a number"),
        ("probe_slow_window=0s", "cannot be 0"),
        ("agent_job_regex=a\"b", "regex"),
    ] {
        let o = render(&["--param", bad]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.code() == Some(2) && err.contains(why),
            "render.py --param {bad}: expected exit 2 with {why:?}:\n{}",
            out_text(&o)
        );
    }
}

/// Every alert's `for` is a `<<..._for>>` parameter; every parameter is in the README table.
#[test]
fn rules_every_threshold_is_a_documented_parameter() {
    let tmpl = std::fs::read_to_string(prom_dir().join("rules.tmpl.yml")).unwrap();
    let doc: Value = serde_yaml_ng::from_str(&tmpl).expect("the template parses as YAML");
    let placeholder = regex::Regex::new(r"^<<\s*([a-z0-9_]+_for)\s*>>$").unwrap();
    let cmp = regex::Regex::new(r"(?:[<>]=?|==)\s*([0-9.]+)").unwrap();
    for a in alerts_of(&doc) {
        let f = a
            .get("for")
            .unwrap_or_else(|| panic!("alert {} has no for:", s(&a["alert"])));
        assert!(
            placeholder.is_match(&s(f)),
            "alert {}: for {:?} is not a <<..._for>> parameter",
            s(&a["alert"]),
            s(f)
        );
        // No literal numbers as thresholds in alert expressions: comparisons are against
        // parameters (or == 0 / == 1 / > 0 on boolean-like series).
        let expr = s(&a["expr"]);
        for c in cmp.captures_iter(&expr) {
            let n = &c[1];
            assert!(
                n == "0" || n == "1",
                "alert {}: literal threshold {n} in {expr:?}: make it a parameter",
                s(&a["alert"])
            );
        }
    }
    let params = yaml(&prom_dir().join("params.yml"));
    let readme = std::fs::read_to_string(prom_dir().join("README.md")).unwrap();
    let mut n = 0;
    for (k, v) in params.as_mapping().expect("params.yml is a mapping") {
        let k = s(k);
        let row = format!("| `{k}` | `{}` |", s(v));
        assert!(
            readme.contains(&row),
            "deploy/prometheus/README.md has no table row starting {row:?}"
        );
        n += 1;
    }
    assert!(n >= 20, "only {n} parameters?");
    for p in ["dstate_pileup_seconds", "dstate_pileup_for"] {
        assert!(
            params.get(p).is_some(),
            "parameter {p} (used by the e2e test) is gone"
        );
    }
}

#[test]
fn rules_pass_promtool_check_and_unit_tests() {
    let o = run(
        Command::new("promtool")
            .arg("check")
            .arg("rules")
            .arg(rules_file()),
        "promtool (Debian prometheus)",
    );
    assert!(
        o.status.success(),
        "promtool check rules:\n{}",
        out_text(&o)
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("SUCCESS"), "{}", out_text(&o));

    let o = run(
        Command::new("promtool")
            .arg("test")
            .arg("rules")
            .args(test_files()),
        "promtool (Debian prometheus)",
    );
    assert!(o.status.success(), "promtool test rules:\n{}", out_text(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        text.matches("SUCCESS").count(),
        test_files().len(),
        "{}",
        out_text(&o)
    );
}

/// The unit tests are sensitive: moving a threshold or a `for` makes them fail, naming the
/// alert. (A suite that passes whatever the rules say would be worthless.)
#[test]
fn rules_unit_tests_fail_when_a_threshold_moves() {
    for (param, alert) in [
        ("dstate_pileup_seconds=1000", "StallwatchDStatePileup"),
        ("dstate_pileup_for=10m", "StallwatchDStatePileup"),
        ("probe_hung_seconds=600", "StallwatchProbeHung"),
        ("ebs_burst_low_percent=5", "StallwatchEBSBurstCreditsLow"),
        ("ebs_headroom_low_ratio=0.01", "StallwatchEBSVolumeAtLimit"),
        ("ebs_volume_impaired_for=10m", "StallwatchEBSVolumeImpaired"),
        (
            "burst_balance_stale_seconds=100",
            "StallwatchBurstBalanceStale",
        ),
        ("agent_job_regex=node", "StallwatchAgentDown"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tests")).unwrap();
        let mut copies = vec![];
        for f in test_files() {
            let to = dir.path().join("tests").join(f.file_name().unwrap());
            std::fs::copy(&f, &to).unwrap();
            copies.push(to);
        }
        let r = render(&[
            "--param",
            param,
            "--out",
            dir.path().join("stallwatch.rules.yml").to_str().unwrap(),
        ]);
        assert!(r.status.success(), "{}", out_text(&r));
        let o = run(
            Command::new("promtool")
                .arg("test")
                .arg("rules")
                .args(&copies),
            "promtool",
        );
        let text = out_text(&o);
        assert!(
            !o.status.success() && text.contains(&format!("alertname: {alert},")),
            "with --param {param} the unit tests should fail on {alert}:\n{text}"
        );
    }
}

#[test]
fn rules_every_alert_is_tested_firing_and_not_firing() {
    let doc = yaml(&rules_file());
    let alerts: Vec<String> = alerts_of(&doc).iter().map(|a| s(&a["alert"])).collect();
    let set: BTreeSet<&str> = alerts.iter().map(String::as_str).collect();
    assert_eq!(set.len(), alerts.len(), "duplicate alert names: {alerts:?}");
    for c in CONTRACT_ALERTS {
        assert!(set.contains(c), "contract alert {c} is missing");
    }
    // alert -> (cases where it fires, cases where it must not)
    let mut seen: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for f in test_files() {
        let t = yaml(&f);
        let rule_files = t["rule_files"].as_sequence().expect("rule_files");
        assert!(
            rule_files.iter().any(|r| s(r) == "../stallwatch.rules.yml"),
            "{} does not test ../stallwatch.rules.yml",
            f.display()
        );
        for group in t["tests"].as_sequence().expect("tests") {
            for case in group["alert_rule_test"]
                .as_sequence()
                .map(|v| v.as_slice())
                .unwrap_or(&[])
            {
                let name = s(&case["alertname"]);
                assert!(
                    set.contains(name.as_str()),
                    "{}: tests an alert the rules do not have: {name}",
                    f.display()
                );
                let firing = case
                    .get("exp_alerts")
                    .and_then(Value::as_sequence)
                    .is_some_and(|v| !v.is_empty());
                let e = seen.entry(name).or_default();
                if firing {
                    e.0 += 1;
                } else {
                    e.1 += 1;
                }
            }
        }
    }
    for a in &alerts {
        let (fire, quiet) = seen.get(a).copied().unwrap_or_default();
        assert!(
            fire > 0 && quiet > 0,
            "alert {a}: {fire} firing and {quiet} not-firing unit test cases; need both"
        );
    }
    // Labels and annotations every alert carries.
    for a in alerts_of(&doc) {
        let name = s(&a["alert"]);
        let sev = s(&a["labels"]["severity"]);
        assert!(
            ["page", "ticket", "info"].contains(&sev.as_str()),
            "{name}: severity {sev:?}"
        );
        for k in ["summary", "description", "runbook"] {
            let v = a["annotations"].get(k).map(s).unwrap_or_default();
            assert!(v.len() > 20, "{name}: annotation {k} missing or empty");
        }
        let runbook = s(&a["annotations"]["runbook"]);
        assert!(
            runbook.contains("1.") && runbook.contains("2.") && runbook.contains("3."),
            "{name}: the runbook lists the first three things to check"
        );
        if let Some(cmd) = a["annotations"].get("command") {
            assert!(s(cmd).starts_with("stallwatch "), "{name}: command {cmd:?}");
        }
        // `by`/`on` aggregations would drop instance/volume_id, which Alertmanager groups by.
        let expr = s(&a["expr"]);
        assert!(
            !expr.contains(" by (") && !expr.contains(" on ("),
            "{name}: aggregate with `without`, keep the target's labels: {expr}"
        );
    }
    for pileup in ["StallwatchDStatePileup", "StallwatchContainerDStatePileup"] {
        let a = alerts_of(&doc)
            .into_iter()
            .find(|a| s(&a["alert"]) == pileup)
            .unwrap();
        assert!(
            s(&a["annotations"]["command"]).starts_with("stallwatch dstate"),
            "{pileup} tells what to run"
        );
    }
}

#[test]
fn rules_reference_only_documented_metrics() {
    let doc = yaml(&rules_file());
    let docs = std::fs::read_to_string(repo().join("docs/metrics.md")).unwrap();
    let name = regex::Regex::new(r"stallwatch_[a-z0-9_]+").unwrap();
    let documented: BTreeSet<String> = docs
        .split('`')
        .skip(1)
        .step_by(2) // inside backticks
        .flat_map(|code| {
            name.find_iter(code)
                .map(|m| m.as_str().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(documented.len() > 100, "docs/metrics.md parsed badly");
    let recorded: BTreeSet<String> = rules_of(&doc)
        .iter()
        .filter_map(|r| r.get("record").map(s))
        .collect();
    // Metric names, and recording-rule names (level:metric:ops), in every expr and annotation.
    let token = regex::Regex::new(r"[a-zA-Z_:][a-zA-Z0-9_:]*").unwrap();
    let mut checked = 0;
    for r in rules_of(&doc) {
        let mut texts = vec![s(&r["expr"])];
        if let Some(Value::Mapping(ann)) = r.get("annotations") {
            texts.extend(ann.values().map(s));
        }
        for text in texts {
            for t in token.find_iter(&text).map(|m| m.as_str()) {
                if t.contains(':') {
                    if t.contains(":stallwatch_") {
                        assert!(
                            recorded.contains(t),
                            "{t} is used but not recorded by any rule"
                        );
                    }
                    continue;
                }
                if !t.starts_with("stallwatch_") {
                    continue;
                }
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suf| t.strip_suffix(suf))
                    .filter(|b| documented.contains(*b))
                    .unwrap_or(t);
                assert!(
                    documented.contains(base) || CLOUD_METRICS.contains(&base),
                    "the rules use {t}, which docs/metrics.md does not document \
                     (and it is not one of the cloud metrics being added)"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 50, "only {checked} metric references found");
}

fn amtool(args: &[&str]) -> Output {
    run(
        Command::new("amtool").args(args),
        "amtool (Debian prometheus-alertmanager)",
    )
}

#[test]
fn rules_alertmanager_config_checks_routes_and_inhibits_real_alerts() {
    let cfg = repo().join("deploy/alertmanager/alertmanager.yml");
    let cfg_s = cfg.to_str().unwrap();
    let o = amtool(&["check-config", cfg_s]);
    assert!(o.status.success(), "amtool check-config:\n{}", out_text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("SUCCESS"),
        "{}",
        out_text(&o)
    );

    // Each severity the rules use goes where the file says.
    let doc = yaml(&rules_file());
    let severities: BTreeSet<String> = alerts_of(&doc)
        .iter()
        .map(|a| s(&a["labels"]["severity"]))
        .collect();
    assert_eq!(
        severities.iter().map(String::as_str).collect::<Vec<_>>(),
        ["info", "page", "ticket"]
    );
    for (labels, receivers) in [
        (
            vec![
                "severity=page",
                "alertname=StallwatchDStatePileup",
                "instance=n:10139",
            ],
            "stallwatch-pager,stallwatch-webhook",
        ),
        (
            vec![
                "severity=ticket",
                "alertname=StallwatchWritebackStorm",
                "instance=n:10139",
            ],
            "stallwatch-webhook",
        ),
        (
            vec!["severity=info", "alertname=StallwatchContainersDropped"],
            "stallwatch-webhook",
        ),
    ] {
        let mut args = vec![
            "config",
            "routes",
            "test",
            "--config.file",
            cfg_s,
            "--verify.receivers",
            receivers,
        ];
        args.extend(labels.iter().copied());
        let o = amtool(&args);
        assert!(
            o.status.success(),
            "amtool routes test {labels:?} -> {receivers}:\n{}",
            out_text(&o)
        );
    }

    // Grouping by node and volume; inhibit rules name alerts that exist.
    let am = yaml(&cfg);
    let group_by: Vec<String> = am["route"]["group_by"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    for l in ["alertname", "instance", "volume_id"] {
        assert!(group_by.iter().any(|g| g == l), "route.group_by lacks {l}");
    }
    let names: BTreeSet<String> = alerts_of(&doc).iter().map(|a| s(&a["alert"])).collect();
    let quoted = regex::Regex::new(r#"alertname(=~?|!=)"([^"]+)""#).unwrap();
    let mut n = 0;
    for rule in am["inhibit_rules"].as_sequence().expect("inhibit_rules") {
        for k in ["source_matchers", "target_matchers"] {
            for m in rule[k].as_sequence().unwrap() {
                for c in quoted.captures_iter(&s(m)) {
                    if &c[2] == "Stallwatch.+" {
                        continue;
                    }
                    for alt in c[2].split('|') {
                        assert!(
                            names.contains(alt),
                            "inhibit rule names {alt}, which is not an alert of the rules"
                        );
                        n += 1;
                    }
                }
            }
        }
    }
    assert!(n >= 6, "inhibit rules parsed badly");
}

/// The README's "Alerts" table lists every alert with the severity the rules give it.
#[test]
fn rules_readme_lists_every_alert_with_its_severity() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let doc = yaml(&rules_file());
    for a in alerts_of(&doc) {
        let row = format!("| `{}` | {} |", s(&a["alert"]), s(&a["labels"]["severity"]));
        assert!(readme.contains(&row), "README.md has no Alerts row {row:?}");
    }
}
