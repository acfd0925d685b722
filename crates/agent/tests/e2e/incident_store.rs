//! Incident records and the hung disk (issue 14 item 3): the records' directory sits on the
//! very filesystem that hangs. The stall opens a record; its writer (a child process) waits on
//! the disk and is left behind at its deadline, counted as `timeout`; the API keeps answering
//! in milliseconds; when the disk resumes the closed record reaches the directory; a new agent
//! reads it back; and SIGTERM with a writer stuck on the disk still ends the agent at once.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{require_root, write, Agent, Metrics};
use crate::hung::{run, wait_exit, HungDisk};

/// GET with a short client timeout: an answer slower than this is a hang, not slowness.
fn api(agent: &Agent, path: &str) -> (Value, Duration) {
    let t = Instant::now();
    let body = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap()
        .get(agent.url(path))
        .send()
        .unwrap_or_else(|e| panic!("GET {path} while the disk hangs: {e}\n{}", agent.log()))
        .text()
        .unwrap();
    (serde_json::from_str(&body).unwrap(), t.elapsed())
}

fn wait(agent: &Agent, what: &str, limit: Duration, mut pred: impl FnMut(&Agent) -> bool) {
    let deadline = Instant::now() + limit;
    while !pred(agent) {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}\nverdict: {}\nlog:\n{}",
            api(agent, "/api/v1/verdict").0,
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Only `disk_stalled` can fire here: the other causes' thresholds are out of reach, so a
/// machine busy with other tests (CPU, I/O pressure) cannot open or prolong the incident.
const QUIET: &str = "io_some = \"100%\"\nio_full = \"100%\"\ncpu_some = \"100%\"\n\
                     run_queue_per_cpu = 1000\nmemory_some = \"100%\"\nmemory_full = \"100%\"\n\
                     lock_threads = 100000\n";

fn metric(agent: &Agent, series: &str) -> f64 {
    Metrics::parse(&agent.scrape()).get(series).unwrap_or(0.0)
}

#[test]
fn incident_records_survive_a_hung_records_disk_and_never_block_the_agent() {
    if !require_root("incident_records_survive_a_hung_records_disk_and_never_block_the_agent") {
        return;
    }
    let rig = HungDisk::start(&["probe", "incidents"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sw.toml");
    write(
        &cfg,
        &format!(
            "[[probe]]\npath = \"{}\"\ninterval = \"1s\"\ntimeout = \"1s\"\n\n\
             [verdict]\nclear_after = \"3s\"\n{QUIET}\n\
             [incident]\nmin_duration = \"2s\"\ndir = \"{}\"\n",
            rig.path("probe").display(),
            rig.path("incidents").display()
        ),
    );
    let flag = format!("--config.file={}", cfg.display());
    let mut agent = Agent::start_with(&[&flag], |c| rig.enter(c));
    let _resume = rig.resume_on_drop();
    wait(&agent, "a first verdict", Duration::from_secs(20), |a| {
        api(a, "/api/v1/verdict").0["time_unix"].as_f64() > Some(0.0)
    });

    // The disk hangs: the probe's O_DSYNC write and the canary wait in D on the loop device.
    rig.hang();
    let mut slowest = Duration::ZERO;
    let mut id = String::new();
    wait(
        &agent,
        "an open disk_stalled incident",
        Duration::from_secs(30),
        |a| {
            let (v, took) = api(a, "/api/v1/verdict");
            slowest = slowest.max(took);
            let causes: Vec<&str> = v["causes"]
                .as_array()
                .map(|c| c.iter().filter_map(|c| c["cause"].as_str()).collect())
                .unwrap_or_default();
            if let (true, Some(i)) = (causes.contains(&"disk_stalled"), v["incident"].as_str()) {
                id = i.to_string();
                true
            } else {
                false
            }
        },
    );
    // The record's writer is stuck on the same disk: left behind at its 10 s deadline.
    wait(
        &agent,
        "the writer's timeout",
        Duration::from_secs(30),
        |a| {
            let (_, took) = api(a, "/api/v1/incidents");
            slowest = slowest.max(took);
            metric(a, "stallwatch_incident_writes_total{outcome=\"timeout\"}") >= 1.0
        },
    );
    let (rec, took) = api(&agent, &format!("/api/v1/incidents/{id}"));
    slowest = slowest.max(took);
    assert_eq!(rec["open"], true, "{rec}");
    assert!(
        rec["disks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == rig.loop_device().as_str()
                && d["stalled_seconds"].as_f64() > Some(2.0)),
        "the record names the hung loop device: {rec}"
    );
    let (_, took) = api(&agent, "/api/v1/timeline?seconds=60");
    slowest = slowest.max(took);
    eprintln!("incident_store: slowest API answer while the disk hung: {slowest:?}");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");

    // The disk answers again: the stall clears, the closed record is written.
    rig.resume();
    wait(
        &agent,
        "the incident to close",
        Duration::from_secs(40),
        |a| {
            let (l, _) = api(a, "/api/v1/incidents");
            l["incidents"][0]["open"] == false
        },
    );
    let file = format!("{id}.json");
    wait(
        &agent,
        "the closed record on disk",
        Duration::from_secs(30),
        |_| run(rig.command(Path::new("ls")).arg(rig.path("incidents"))).contains(&file),
    );
    let text = run(rig
        .command(Path::new("cat"))
        .arg(rig.path("incidents").join(&file)));
    let on_disk: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(on_disk["id"], id.as_str());
    assert_eq!(
        on_disk["open"], false,
        "the last write is the closed record"
    );
    assert!(on_disk["timeline"]["t_unix"].as_array().unwrap().len() > 10);

    // A new agent reads the records back.
    agent.signal(libc::SIGTERM);
    assert!(wait_exit(&mut agent.child, Duration::from_secs(10)).is_some());
    let mut agent = Agent::start_with(&[&flag], |c| rig.enter(c));
    wait(
        &agent,
        "the record read back",
        Duration::from_secs(20),
        |a| {
            let (l, _) = api(a, "/api/v1/incidents");
            l["incidents"]
                .as_array()
                .is_some_and(|v| v.iter().any(|r| r["id"] == id.as_str()))
        },
    );
    let (back, _) = api(&agent, &format!("/api/v1/incidents/{id}"));
    assert_eq!(back["cause"], on_disk["cause"]);

    // SIGTERM while a record's writer is stuck on the disk: the agent still ends at once.
    rig.hang();
    wait(
        &agent,
        "a second record's writer on the hung disk",
        Duration::from_secs(40),
        |a| {
            api(a, "/api/v1/verdict").0["incident"].is_string()
                && metric(a, "stallwatch_incident_writes_total{outcome=\"ok\"}") == 0.0
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    agent.signal(libc::SIGTERM);
    let exited = wait_exit(&mut agent.child, Duration::from_secs(10));
    eprintln!(
        "incident_store: exit with a writer stuck on the disk took {:?}",
        t.elapsed()
    );
    assert!(
        exited.is_some(),
        "the agent did not exit while its writer waits on the disk"
    );
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
}
