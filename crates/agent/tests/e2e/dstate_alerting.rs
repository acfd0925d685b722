//! Alerting end to end, nothing stubbed: real threads in D (the loop-device rig of
//! `dstate_rig.rs`) → the real agent → the real Debian Prometheus (scraping every second and
//! evaluating the rules of deploy/prometheus, rendered with short durations) → the real Debian
//! Alertmanager (the example deploy/alertmanager/alertmanager.yml with its receivers pointed at
//! a webhook this test runs) → a firing `StallwatchDStatePileup` notification naming the stuck
//! group; then the throttle is lifted and the resolved notification arrives.
//! (In the serial host-writeback test group: the module name starts with `dstate`.)

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use serde_yaml_ng::{Mapping, Value as Yaml};

use crate::dstate_rig::DStateRig;
use crate::harness::{repo, require_root, write, Agent};
use crate::promstack::{Alertmanager, Prometheus, Webhook};

const ALERT: &str = "StallwatchDStatePileup";
/// How the agent labels the rig's hostile comm (see dstate.rs).
const GROUP: &str = "sw) S 0 ?\u{FFFD}write";
/// Rule parameters for a test that fits in a minute: a thread in D for more than 3 s, at once.
const PARAMS: &[&str] = &["dstate_pileup_for=0s", "dstate_pileup_seconds=3"];
/// Alertmanager timings for the test (the example's are minutes).
const GROUP_WAIT: &str = "1s";
const GROUP_INTERVAL: &str = "2s";

/// Renders the rules with `PARAMS` through the project's own renderer.
fn render_rules(dir: &Path) -> String {
    let out_file = dir.join("rules.yml");
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("deploy/prometheus/render.py"));
    for p in PARAMS {
        cmd.args(["--param", p]);
    }
    let out = cmd.arg("--out").arg(&out_file).output().unwrap();
    assert!(
        out.status.success(),
        "render.py {PARAMS:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = std::fs::read_to_string(&out_file).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    rules
}

/// The example Alertmanager config with every receiver replaced by `webhook` (same names, so
/// the example's routing tree is what is tested) and its waits shortened (every
/// group_wait/group_interval in the tree; repeat_interval long enough not to interfere).
fn alertmanager_config(webhook: &str) -> (String, Yaml) {
    let path = repo().join("deploy/alertmanager/alertmanager.yml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (the example config)", path.display()));
    let mut doc: Yaml = serde_yaml_ng::from_str(&text).unwrap();
    let original = doc.clone();
    let map = doc.as_mapping_mut().expect("alertmanager.yml is a mapping");
    let receivers = map
        .get_mut("receivers")
        .and_then(Yaml::as_sequence_mut)
        .expect("receivers");
    assert!(!receivers.is_empty(), "the example has no receivers");
    for r in receivers.iter_mut() {
        let name = r["name"].clone();
        let mut m = Mapping::new();
        m.insert("name".into(), name);
        let hook: Yaml =
            serde_yaml_ng::from_str(&format!("- url: '{webhook}'\n  send_resolved: true\n"))
                .unwrap();
        m.insert("webhook_configs".into(), hook);
        *r = Yaml::Mapping(m);
    }
    fn shorten(route: &mut Yaml, root: bool) {
        let Some(m) = route.as_mapping_mut() else {
            return;
        };
        for (k, v) in [
            ("group_wait", GROUP_WAIT),
            ("group_interval", GROUP_INTERVAL),
            ("repeat_interval", "1h"),
        ] {
            if root || m.contains_key(k) {
                m.insert(k.into(), v.into());
            }
        }
        if let Some(children) = m.get_mut("routes").and_then(Yaml::as_sequence_mut) {
            for c in children {
                shorten(c, false);
            }
        }
    }
    shorten(map.get_mut("route").expect("route"), true);
    // Template files are relative to the example's directory.
    if let Some(ts) = map.get_mut("templates").and_then(Yaml::as_sequence_mut) {
        for t in ts {
            if let Some(s) = t.as_str() {
                *t = repo()
                    .join("deploy/alertmanager")
                    .join(s)
                    .display()
                    .to_string()
                    .into();
            }
        }
    }
    map.entry("global".into())
        .or_insert_with(|| Yaml::Mapping(Mapping::new()))
        .as_mapping_mut()
        .unwrap()
        .insert("resolve_timeout".into(), "5s".into());
    (serde_yaml_ng::to_string(&doc).unwrap(), original)
}

/// Which receiver the example's routing tree picks for these labels (`amtool config routes
/// test`, Alertmanager's own router).
fn routed_receiver(config: &Path, labels: &[String]) -> String {
    let out = Command::new("amtool")
        .args(["config", "routes", "test"])
        .arg(format!("--config.file={}", config.display()))
        .args(labels)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "amtool config routes test: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn find_alert<'a>(body: &'a Value, status: &str) -> Option<&'a Value> {
    body["alerts"].as_array()?.iter().find(|a| {
        a["labels"]["alertname"] == ALERT && a["status"] == status && a["labels"]["group"] == GROUP
    })
}

#[test]
fn dstate_pileup_pages_through_alertmanager_and_resolves() {
    if !require_root("dstate_pileup_pages_through_alertmanager_and_resolves") {
        return;
    }
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let rules = render_rules(dir.path());
    assert!(rules.contains(&format!("alert: {ALERT}")), "{rules}");

    let webhook = Webhook::start();
    let (am_cfg, original) = alertmanager_config(&webhook.url);
    let am_file = dir.path().join("alertmanager.yml");
    write(&am_file, &am_cfg);
    let out = Command::new("amtool")
        .args(["check-config"])
        .arg(&am_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "amtool check-config of the test's config:\n{}{}\n{am_cfg}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let am = Alertmanager::start(&am_cfg);

    let cfg = dir.path().join("cfg.toml");
    write(
        &cfg,
        "[threads]\ninterval = \"10s\"\nfast_interval = \"1s\"\n",
    );
    let agent = Agent::start(&[&format!("--config.file={}", cfg.display())]);
    let prom = Prometheus::start(
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files: ['{{dir}}/rules.yml']\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{}']\n\
             scrape_configs:\n  - job_name: stallwatch\n    static_configs:\n      - targets: ['{}']\n",
            am.host_port(),
            agent.addr
        ),
        &[("rules.yml", &rules)],
    );
    prom.wait_for(
        Duration::from_secs(15),
        "the agent scraped",
        "up{job=\"stallwatch\"}",
        |v| v == 1.0,
    );
    // Nothing is stuck yet: the alert is not firing (a pile-up left over from another test
    // would make the firing check below meaningless).
    // (Selected by alertname only: Prometheus 2.42's lexer rejects a literal U+FFFD, which
    // the hostile group contains, in a query.)
    let pending = prom.query(&format!("ALERTS{{alertname=\"{ALERT}\"}}"));
    let already: Vec<&Value> = pending["data"]["result"]
        .as_array()
        .expect("ALERTS query")
        .iter()
        .filter(|a| a["metric"]["group"] == GROUP)
        .collect();
    assert!(already.is_empty(), "{pending}");
    let diag = || {
        format!(
            "prometheus alerts: {}\nalertmanager alerts: {}\nprometheus log:\n{}\nalertmanager log:\n{}\nagent log:\n{}",
            prom.api("/api/v1/alerts", &[]),
            reqwest::blocking::get(format!("{}/api/v2/alerts", am.url()))
                .and_then(|r| r.text())
                .unwrap_or_default(),
            prom.log(),
            am.log(),
            agent.log()
        )
    };

    // The receivers the example's routing tree picks for this alert (amtool prints every
    // receiver that gets it, comma-separated, when a route has `continue: true`).
    let orig_file = dir.path().join("example.yml");
    write(&orig_file, &serde_yaml_ng::to_string(&original).unwrap());
    let expected_labels = |severity: &str| {
        vec![
            format!("alertname={ALERT}"),
            format!("severity={severity}"),
            format!("instance={}", agent.addr),
            "job=stallwatch".to_string(),
            format!("group={GROUP}"),
        ]
    };
    let rule_severity = rules
        .split(&format!("alert: {ALERT}"))
        .nth(1)
        .and_then(|r| r.split("severity:").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .expect("the rule sets a severity label")
        .to_string();
    let routed_text = routed_receiver(&orig_file, &expected_labels(&rule_severity));
    let routed: Vec<String> = routed_text
        .split(',')
        .map(|r| r.trim().to_string())
        .collect();
    assert!(!routed.is_empty() && !routed[0].is_empty(), "{routed_text}");
    eprintln!("dstate_alerting: severity {rule_severity} routes to {routed:?}");

    // The pile-up.
    let rig = DStateRig::start(4, 3);
    let stalled = Instant::now();
    let mut fired = Vec::new();
    for receiver in &routed {
        fired.push(webhook.wait_for(
            Duration::from_secs(40),
            &format!("a firing {ALERT} for the rig's group at receiver {receiver}"),
            |b| b["receiver"] == receiver.as_str() && find_alert(b, "firing").is_some(),
            diag,
        ));
    }
    eprintln!(
        "dstate_alerting: firing notifications {:?} after the stall began",
        stalled.elapsed()
    );
    for body in &fired {
        let alert = find_alert(body, "firing").unwrap();
        assert_eq!(alert["labels"]["instance"], agent.addr.as_str(), "{body:#}");
        assert_eq!(alert["labels"]["job"], "stallwatch");
        assert_eq!(alert["labels"]["severity"], rule_severity.as_str());
        assert!(
            alert["annotations"]["summary"]
                .as_str()
                .is_some_and(|s| s.contains(GROUP)),
            "summary names the group: {body:#}"
        );
        assert!(
            alert["annotations"]["command"]
                .as_str()
                .is_some_and(|s| s.contains("stallwatch dstate")),
            "{body:#}"
        );
        // Grouped as the example says: the group labels are the alert's values of group_by.
        let group_labels = body["groupLabels"].as_object().expect("groupLabels");
        assert!(
            group_labels.contains_key("alertname")
                && group_labels.iter().all(|(k, v)| alert["labels"][k] == *v),
            "{body:#}"
        );
    }

    // Lift the stall: the threads leave D, the longest age drops to 0, the alert resolves.
    rig.lift();
    let lifted = Instant::now();
    for receiver in &routed {
        let resolved = webhook.wait_for(
            Duration::from_secs(40),
            &format!("the resolved {ALERT} at receiver {receiver}"),
            |b| b["receiver"] == receiver.as_str() && find_alert(b, "resolved").is_some(),
            diag,
        );
        let r = find_alert(&resolved, "resolved").unwrap();
        assert_eq!(r["labels"]["instance"], agent.addr.as_str());
        assert!(
            r["endsAt"].as_str().is_some_and(|e| !e.starts_with("0001")),
            "a resolved alert has an end: {resolved:#}"
        );
    }
    eprintln!(
        "dstate_alerting: resolved notifications {:?} after the lift; {:?} in all",
        lifted.elapsed(),
        t0.elapsed()
    );
    drop(rig);
    drop(prom);
    drop(am);
    drop(agent);
}
