//! The static checks: generated, schema-valid, well-formed, every metric documented.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::harness::{repo, write};

use super::*;

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
