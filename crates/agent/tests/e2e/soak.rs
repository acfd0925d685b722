//! The soak (`make soak`, not part of `make test`; ignored otherwise): the agent under process
//! and container churn for an hour with its RSS sampled, scraped all along, and a 10-minute
//! hang of a probed disk (the `HungDisk` rig) in the middle. Prints a table: scrape p50 / p99 /
//! max and failures before, during and after the hang; RSS at start, end and max; how much
//! churn there was. `SOAK_SCALE` scales every duration (1 = the hour; `SOAK_SCALE=0.05` is a
//! 3-minute run with a 30 s hang).
//!
//! It fails on what must never happen (a failed scrape, a panic, a hang that did not show as
//! probe timeouts) and prints the rest: timings and RSS are for a person to read, not to
//! assert (they depend on the machine and on what else runs).
//!
//! Churn: one thread starts `/bin/true` back to back (hundreds of processes a second); another
//! makes a docker-shaped cgroup (`docker/<64 hex>`) in each v1 hierarchy every 200 ms, puts a
//! `sleep` in it, and removes it half a second later, so containers keep appearing and
//! vanishing. During the hang a global `sync(2)` anywhere on the machine waits for it too (see
//! hung.rs): run the soak on a machine of its own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config_bounds::rss_kib;
use crate::harness::{require_root, write, Agent, Metrics};
use crate::hung::HungDisk;

fn scale() -> f64 {
    std::env::var("SOAK_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0 && s.is_finite())
        .unwrap_or(1.0)
}

#[derive(Default)]
struct Phase {
    scrapes: Vec<Duration>,
    failures: u64,
}

impl Phase {
    fn row(&mut self, name: &str) -> String {
        self.scrapes.sort();
        let q = |p: f64| {
            if self.scrapes.is_empty() {
                return "-".to_string();
            }
            let i = ((self.scrapes.len() - 1) as f64 * p).round() as usize;
            format!("{:.1}", self.scrapes[i].as_secs_f64() * 1e3)
        };
        format!(
            "{name:<14} {:>8} {:>9} {:>9} {:>9} {:>9}",
            self.scrapes.len(),
            q(0.5),
            q(0.99),
            q(1.0),
            self.failures
        )
    }
}

/// docker-shaped cgroups appearing and vanishing, until `stop`.
fn container_churn(stop: Arc<AtomicBool>, made: Arc<AtomicU64>) {
    let hierarchies: Vec<PathBuf> = ["memory", "cpu,cpuacct", "pids", "blkio"]
        .iter()
        .map(|h| Path::new("/sys/fs/cgroup").join(h))
        .filter(|p| p.join("cgroup.procs").exists())
        .collect();
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let id = format!("{:016x}{:048x}", std::process::id(), n);
        let dirs: Vec<PathBuf> = hierarchies
            .iter()
            .map(|h| h.join("docker").join(&id))
            .collect();
        let mut sleeper = match Command::new("sleep").arg("5").spawn() {
            Ok(c) => c,
            Err(_) => continue,
        };
        for d in &dirs {
            if std::fs::create_dir_all(d).is_ok() {
                let _ = std::fs::write(d.join("cgroup.procs"), sleeper.id().to_string());
            }
        }
        made.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(500));
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        for d in &dirs {
            let _ = std::fs::remove_dir(d);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Processes started back to back, until `stop`.
fn process_churn(stop: Arc<AtomicBool>, started: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        if Command::new("/bin/true")
            .stdout(Stdio::null())
            .status()
            .is_ok()
        {
            started.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[test]
#[ignore = "the soak: `make soak` (SOAK_SCALE=0.05 for 3 minutes)"]
fn soak() {
    if !require_root("soak") {
        return;
    }
    let s = scale();
    let total = Duration::from_secs_f64(3600.0 * s);
    let hang = Duration::from_secs_f64(600.0 * s);
    let hang_at = (total - hang) / 2;

    let rig = HungDisk::start(&["probe"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sw.toml");
    let probe = rig.path("probe");
    write(
        &cfg,
        &format!(
            "[threads]\ninterval = \"2s\"\n[containers]\ninterval = \"2s\"\n\n[[probe]]\npath = \"{}\"\nsize = \"64KiB\"\ninterval = \"5s\"\ntimeout = \"2s\"\n",
            probe.display()
        ),
    );
    let agent = Agent::start_with(&[&format!("--config.file={}", cfg.display())], |c| {
        rig.enter(c)
    });
    let _resume = rig.resume_on_drop();
    let pid = agent.child.id();
    agent.wait_for(Duration::from_secs(15), "first scrape", |m| {
        m.has_family("stallwatch_load1")
    });

    let stop = Arc::new(AtomicBool::new(false));
    let (procs, ctrs) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let churn = [
        {
            let (s, c) = (stop.clone(), procs.clone());
            std::thread::spawn(move || process_churn(s, c))
        },
        {
            let (s, c) = (stop.clone(), ctrs.clone());
            std::thread::spawn(move || container_churn(s, c))
        },
    ];

    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut phases = [Phase::default(), Phase::default(), Phase::default()];
    let rss_start = rss_kib(pid);
    let mut rss_max = rss_start;
    let mut last_rss_at = Instant::now();
    let mut hung_state = 0; // 0 before, 1 during, 2 after
    let mut last: Option<Metrics> = None;
    let mut timeouts_seen = false;
    let t0 = Instant::now();
    eprintln!(
        "soak: {:?} total, hang of {:?} after {:?} (SOAK_SCALE={s})",
        total, hang, hang_at
    );
    while t0.elapsed() < total {
        let el = t0.elapsed();
        if hung_state == 0 && el >= hang_at {
            rig.hang();
            hung_state = 1;
            eprintln!("soak: disk hung at {el:?}");
        } else if hung_state == 1 && el >= hang_at + hang {
            rig.resume();
            hung_state = 2;
            eprintln!("soak: disk resumed at {el:?}");
        }
        let t = Instant::now();
        match client.get(agent.url("/metrics")).send().and_then(|r| {
            let ok = r.status().is_success();
            r.text().map(|b| (ok, b))
        }) {
            Ok((true, body)) => {
                phases[hung_state].scrapes.push(t.elapsed());
                let m = Metrics::parse(&body);
                let timeouts = format!(
                    "stallwatch_probe_failures_total{{path=\"{}\",reason=\"timeout\"}}",
                    probe.display()
                );
                if hung_state == 1 && m.get(&timeouts).is_some_and(|n| n >= 1.0) {
                    timeouts_seen = true;
                }
                last = Some(m);
            }
            _ => phases[hung_state].failures += 1,
        }
        if last_rss_at.elapsed() >= Duration::from_secs(5) {
            rss_max = rss_max.max(rss_kib(pid));
            last_rss_at = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    for c in churn {
        let _ = c.join();
    }
    rig.resume();
    let rss_end = rss_kib(pid);

    let mut table = String::new();
    table += &format!(
        "\n{:<14} {:>8} {:>9} {:>9} {:>9} {:>9}\n",
        "phase", "scrapes", "p50 ms", "p99 ms", "max ms", "failures"
    );
    for (p, name) in phases
        .iter_mut()
        .zip(["before hang", "during hang", "after hang"])
    {
        table += &p.row(name);
        table += "\n";
    }
    let mut all = Phase::default();
    for p in &phases {
        all.scrapes.extend(&p.scrapes);
        all.failures += p.failures;
    }
    table += &all.row("all");
    table += &format!(
        "\nRSS KiB: start {rss_start}, end {rss_end}, max {rss_max}\nchurn: {} processes, {} containers in {:?} (hang {:?})\n",
        procs.load(Ordering::Relaxed),
        ctrs.load(Ordering::Relaxed),
        total,
        hang
    );
    if let Some(m) = &last {
        let errors: f64 = m
            .series
            .iter()
            .filter(|(k, _)| k.starts_with("stallwatch_source_errors_total"))
            .map(|(_, v)| v)
            .sum();
        table += &format!("source errors counted by the agent: {errors}\n");
    }
    eprintln!("{table}");

    assert_eq!(all.failures, 0, "failed scrapes:{table}");
    assert!(
        timeouts_seen,
        "the hang never showed as a probe timeout:{table}"
    );
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
}
