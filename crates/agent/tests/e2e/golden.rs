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
