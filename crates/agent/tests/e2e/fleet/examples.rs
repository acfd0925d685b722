//! The remote_write examples in `deploy/fleet/`, through the tools that will read them.

use std::path::Path;
use std::process::Command;

use crate::harness::{repo, write};

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
