//! Scenario 4: the restore storm ("was it I/O?" — it was not). 45 containers (`/docker/<id>`
//! cgroups) each start a CPU-bound process at once on this 2-CPU machine. The verdict must say
//! `cpu`, `"io": false`, and carry the container starts as evidence; the container pass runs
//! every second here (`containers.interval = "1s"`; at the default 10 s the starts would show
//! up to 10 s later).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::rig::{unique_id, Container};
use super::{agent, evidence, get_json, incident, now_unix, report, wait_cause, wait_verdict};
use crate::harness::{require_root, Agent, Metrics};

const CONTAINERS: usize = 45;
/// How long the storm may run at most (it is stopped as soon as the assertions are done).
const STORM_LIMIT: Duration = Duration::from_secs(40);

fn starts(a: &Agent) -> f64 {
    Metrics::parse(&a.scrape())
        .get("stallwatch_container_starts_total")
        .unwrap_or(0.0)
}

#[test]
fn forty_five_cpu_bound_container_starts_are_cpu_not_io() {
    if !require_root("forty_five_cpu_bound_container_starts_are_cpu_not_io") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = agent(tmp.path(), "[containers]\ninterval = \"1s\"\n");
    // Let the first pass count what already runs on this machine.
    std::thread::sleep(Duration::from_millis(1500));
    let before = starts(&a);
    let cpus = std::thread::available_parallelism().unwrap().get();

    let containers: Vec<Container> = (0..CONTAINERS)
        .map(|_| Container::new(&unique_id()))
        .collect();
    let t0 = Instant::now();
    let start_unix = now_unix();
    for c in &containers {
        // A busy loop that ends by itself should the test process die without cleaning up.
        let mut cmd = Command::new("timeout");
        cmd.args([
            &format!("{}", STORM_LIMIT.as_secs()),
            "sh",
            "-c",
            "while :; do :; done",
        ])
        .stdin(Stdio::null());
        c.spawn(&mut cmd);
    }
    eprintln!("{CONTAINERS} busy containers started in {:?}", t0.elapsed());

    let found = wait_cause(&a, t0, Duration::from_secs(20), "cpu", |c| {
        c["evidence"].as_array().is_some_and(|e| {
            e.iter().any(|x| {
                x["signal"] == "container_starts_total"
                    && x["value"].as_f64().unwrap_or(0.0) >= before + CONTAINERS as f64
            })
        })
    });
    let c = found.cause("cpu");
    assert_eq!(c["io"], false, "cpu is not I/O");
    evidence(c, "psi_cpu_some", None);
    let rq = evidence(c, "run_queue_per_cpu", None);
    assert!(
        rq["value"].as_f64().unwrap() >= 4.0,
        "tens of runnable tasks per CPU on {cpus} CPUs: {rq}"
    );
    let summary = c["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("Not I/O") && summary.contains("container starts"),
        "{summary}"
    );

    // The top-level answer: the node is stalled on CPU, not on I/O. (An I/O stall of a
    // neighbour would rank above cpu; the storm runs long enough to see its own verdict.)
    let top = wait_verdict(
        &a,
        t0,
        Duration::from_secs(15),
        "cpu as the top cause",
        |v| v["cause"] == "cpu",
    );
    assert_eq!(top.verdict["stalled"], true);
    assert_eq!(top.verdict["io"], false);
    assert!(
        top.verdict["summary"]
            .as_str()
            .unwrap()
            .starts_with("Stalled (not I/O, cpu)"),
        "{}",
        top.verdict["summary"]
    );
    let rec = incident(&a, "cpu", start_unix, Duration::from_secs(15));
    let (metrics_starts, _) = (starts(&a), get_json(&a, "/api/v1/verdict"));
    assert!(metrics_starts >= before + CONTAINERS as f64);
    report(
        "cpu (45 container starts, CPU-bound)",
        Some(found.after),
        &top.verdict,
        "cpu",
        Some(&rec),
    );
    for c in &containers {
        c.stop();
    }
}
