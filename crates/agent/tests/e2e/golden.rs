//! Fixture-root golden tests (node_exporter's end-to-end habit): run the real binary over a
//! fixture `proc`/`sys` tree, scrape, drop lines whose values depend on time, and diff against
//! `tests/golden/<fixture>.prom`. `UPDATE_GOLDEN=1` rewrites the golden files.

use std::time::Duration;

use crate::harness::{fixture, repo, Agent};

/// Series whose values depend on wall time or on the build, not on the fixture.
const VOLATILE: &[&str] = &[
    "stallwatch_build_info",
    "stallwatch_start_time_seconds",
    "stallwatch_config_last_reload_success_timestamp_seconds",
    "stallwatch_source_duration_seconds",
    "stallwatch_snapshot_age_seconds",
    "stallwatch_source_cpu_seconds_total",
    "stallwatch_source_reads_total",
    // the HTTP server's own counts (they count the test's scrapes) and the machine's fd limit
    "stallwatch_http_connections",
    "stallwatch_http_connections_accepted_total",
    "stallwatch_http_connections_closed_total",
    "stallwatch_http_connections_limit",
    "stallwatch_http_accept_errors_total",
    "stallwatch_process_max_fds",
    // integrals over time: they grow with every tick
    "stallwatch_procs_blocked_seconds_total",
    "stallwatch_dirty_over_background_seconds_total",
    "stallwatch_writeback_burst_seconds_total",
    // a fixture's diskstats never move: a device with I/O in flight there (vda, 3) is stalled
    // from the second tick on, and how long depends on when the scrape comes
    "stallwatch_disk_stalled_seconds_total",
    "stallwatch_disk_stall_seconds",
    // ... and so the verdict says disk_stalled from the tick its run reaches `stall_after`
    // (2 s) on; the scrape comes after the first tick, or later on a loaded machine
    "stallwatch_stalled",
    "stallwatch_verdict",
    "stallwatch_verdict_seconds_total",
    // one per host tick, and their CPU
    "stallwatch_verdict_evaluations_total",
    "stallwatch_verdict_cpu_seconds_total",
];

pub fn stable(text: &str) -> String {
    text.lines()
        .filter(|l| {
            l.starts_with('#')
                || !VOLATILE
                    .iter()
                    .any(|v| l.starts_with(v) && l[v.len()..].starts_with(['{', ' ']))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

fn run_fixture(name: &str) -> String {
    let root = fixture(name);
    let cfg = repo().join("tests/golden/golden.toml");
    let agent = Agent::start(&[
        &format!("--path.procfs={}", root.join("proc").display()),
        &format!("--path.sysfs={}", root.join("sys").display()),
        &format!("--path.rootfs={}", root.display()),
        &format!("--config.file={}", cfg.display()),
    ]);
    // The first tick is complete when every source reports an age.
    let m = agent.wait_for(Duration::from_secs(10), "every source read once", |m| {
        [
            "stat",
            "loadavg",
            "meminfo",
            "vmstat",
            "diskstats",
            "sys_vm",
            "pressure_io",
            "threads",
            "containers",
            "cloud_describe",
        ]
        .iter()
        .all(|s| {
            m.get(&format!(
                "stallwatch_snapshot_age_seconds{{source=\"{s}\"}}"
            ))
            .is_some()
        })
    });
    stable(&m.text)
}

fn check(name: &str) {
    let got = run_fixture(name);
    let path = repo().join(format!("tests/golden/{name}.prom"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    if got != want {
        let diff: Vec<String> = diff_lines(&want, &got);
        panic!(
            "scrape of fixture {name} differs from {} (UPDATE_GOLDEN=1 rewrites it if the change is intended):\n{}",
            path.display(),
            diff.join("\n")
        );
    }
}

fn diff_lines(want: &str, got: &str) -> Vec<String> {
    let w: std::collections::BTreeSet<&str> = want.lines().collect();
    let g: std::collections::BTreeSet<&str> = got.lines().collect();
    let mut out: Vec<String> = w.difference(&g).map(|l| format!("- {l}")).collect();
    out.extend(g.difference(&w).map(|l| format!("+ {l}")));
    out
}

#[test]
fn golden_debian12_kernel_6_18() {
    check("debian12-6.18");
}

#[test]
fn golden_cgroup_v2_kernel_5_4_without_psi() {
    let got = run_fixture("v2-nopsi-5.4");
    assert!(
        !got.contains("stallwatch_pressure_"),
        "no PSI on this kernel: no pressure series"
    );
    assert!(
        got.contains("stallwatch_source_available{source=\"pressure_io\"} 0"),
        "{got}"
    );
    check("v2-nopsi-5.4");
}

/// A family row of docs/metrics.md: the metrics its first cell names, the reader modules of
/// its `reader` column and the encoder files its section names (paths under `crates/`).
#[derive(Debug)]
pub struct DocRow {
    pub metrics: Vec<String>,
    pub readers: Vec<String>,
    pub encoders: Vec<String>,
}

/// The `…` spans of a piece of markdown.
fn backticked(s: &str) -> Vec<String> {
    s.split('`').skip(1).step_by(2).map(String::from).collect()
}

/// Cells of a table row, split on `|` but not on an escaped `\|`.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    let mut out = vec![String::new()];
    let mut prev = ' ';
    for c in inner.chars() {
        if c == '|' && prev != '\\' {
            out.push(String::new());
        } else {
            out.last_mut().unwrap().push(c);
        }
        prev = c;
    }
    out.iter().map(|c| c.trim().to_string()).collect()
}

/// Every metric row of the metrics reference.
pub fn doc_rows(doc: &str) -> Vec<DocRow> {
    let mut rows = Vec::new();
    let mut encoders: Vec<String> = Vec::new();
    let mut reader: Option<usize> = None;
    for line in doc.lines() {
        if line.starts_with("## ") {
            encoders.clear();
            reader = None;
        } else if let Some(rest) = line.strip_prefix("Encoded by ") {
            encoders = backticked(rest);
        } else if line.starts_with("| metric |") {
            reader = cells(line).iter().position(|c| c == "reader");
        } else if line.starts_with("| `stallwatch_") {
            let c = cells(line);
            rows.push(DocRow {
                metrics: backticked(&c[0])
                    .into_iter()
                    .filter(|m| m.starts_with("stallwatch_"))
                    .collect(),
                readers: reader.map(|i| backticked(&c[i])).unwrap_or_default(),
                encoders: encoders.clone(),
            });
        }
    }
    rows
}

/// Scraped family names that have no row naming an existing reader module.
pub fn without_reader<'a>(doc: &str, names: &'a [String]) -> Vec<&'a String> {
    let rows = doc_rows(doc);
    let crates = repo().join("crates");
    names
        .iter()
        .filter(|n| {
            !rows.iter().any(|r| {
                r.metrics.contains(n)
                    && !r.readers.is_empty()
                    && r.readers.iter().all(|p| crates.join(p).is_file())
            })
        })
        .collect()
}

/// The names an encoder table may spell a documented family with: the prometheus-client name
/// has the `stallwatch_` prefix, the type's `_total`/`_info` and the unit appended.
fn table_names(metric: &str) -> Vec<String> {
    let n = metric.trim_start_matches("stallwatch_");
    let mut out = vec![n.to_string()];
    let base = n.strip_suffix("_total").unwrap_or(n);
    out.push(base.to_string());
    for unit in ["_bytes", "_seconds", "_ratio", "_info"] {
        if let Some(b) = base.strip_suffix(unit) {
            out.push(b.to_string());
        }
    }
    out
}

/// docs/metrics.md leads from every series to its code in two steps: the section's encoder
/// file (whose table names the family) and the row's reader module. Fast: no binary runs.
#[test]
fn docs_name_an_existing_reader_and_encoder_for_every_row() {
    let doc = std::fs::read_to_string(repo().join("docs/metrics.md")).unwrap();
    let rows = doc_rows(&doc);
    assert!(rows.len() > 150, "only {} rows parsed", rows.len());
    let crates = repo().join("crates");
    let mut bad = Vec::new();
    for r in &rows {
        let name = r.metrics.join(", ");
        if r.metrics.is_empty() {
            bad.push(format!("a row without a metric name: {r:?}"));
        }
        if r.readers.is_empty() {
            bad.push(format!("{name}: no reader"));
        }
        for p in r.readers.iter().chain(&r.encoders) {
            if !p.ends_with(".rs") || !crates.join(p).is_file() {
                bad.push(format!("{name}: {p} is not a file under crates/"));
            }
        }
        let sources: Vec<String> = r
            .encoders
            .iter()
            .filter_map(|p| std::fs::read_to_string(crates.join(p)).ok())
            .collect();
        for m in &r.metrics {
            let named = table_names(m)
                .iter()
                .any(|t| sources.iter().any(|src| src.contains(&format!("\"{t}\""))));
            if !named {
                bad.push(format!("{m}: not named in {:?}", r.encoders));
            }
        }
    }
    assert!(bad.is_empty(), "docs/metrics.md:\n{}", bad.join("\n"));
}
