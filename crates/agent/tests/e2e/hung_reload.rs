//! A reload can never take the agent offline (issue 13 item 1). With a `[[probe]]` on a hung
//! filesystem, SIGHUP and a config edit used to freeze `/metrics` and `/healthz` for the whole
//! hang and make SIGTERM go unanswered: the reload read the file and `stat`ed the probe path on
//! an HTTP worker thread. Now the reload has its own thread and never touches a probe path; the
//! new probe's first write hangs on the probe's own thread and shows as its in-flight age and a
//! timeout failure.

use std::time::{Duration, Instant};

use crate::harness::{require_root, write, Agent, Metrics};
use crate::hung::{wait_exit, HungDisk};

/// Scrapes `/metrics` and `/healthz` for `span`, each request with `limit` as its timeout,
/// and returns the slowest. A request that waited on the hung disk would not return at all.
fn keep_scraping(agent: &Agent, span: Duration, limit: Duration) -> Duration {
    let client = reqwest::blocking::Client::builder()
        .timeout(limit)
        .build()
        .unwrap();
    let end = Instant::now() + span;
    let mut slowest = Duration::ZERO;
    while Instant::now() < end {
        for path in ["/metrics", "/healthz"] {
            let t = Instant::now();
            let r = client.get(agent.url(path)).send().unwrap_or_else(|e| {
                panic!("GET {path} while the disk hangs: {e}\n{}", agent.log())
            });
            assert!(r.status().is_success(), "{path}: {}", r.status());
            let _ = r.text();
            slowest = slowest.max(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    slowest
}

fn probe_toml(paths: &[std::path::PathBuf]) -> String {
    let mut t = String::from("[sampler]\ninterval = \"1s\"\n");
    for p in paths {
        t += &format!(
            "\n[[probe]]\npath = \"{}\"\ninterval = \"1s\"\ntimeout = \"1s\"\n",
            p.display()
        );
    }
    t
}

#[test]
fn sighup_and_an_edit_with_a_probe_on_a_hung_disk_keep_the_agent_answering() {
    if !require_root("sighup_and_an_edit_with_a_probe_on_a_hung_disk_keep_the_agent_answering") {
        return;
    }
    let rig = HungDisk::start(&["first", "second"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("stallwatch.toml");
    write(&cfg, &probe_toml(&[]));
    let mut agent = Agent::start_with(&[&format!("--config.file={}", cfg.display())], |c| {
        rig.enter(c)
    });
    // Dropped before `agent`: the disk resumes, so the agent's drop (kill, wait) can finish.
    let _resume = rig.resume_on_drop();
    agent.wait_for(Duration::from_secs(10), "first scrape", |m| {
        m.get("stallwatch_config_last_reload_successful") == Some(1.0)
    });
    rig.hang();

    // SIGHUP with a probe on the hung disk.
    let first = rig.path("first");
    write(&cfg, &probe_toml(std::slice::from_ref(&first)));
    agent.signal(libc::SIGHUP);
    let slow1 = keep_scraping(&agent, Duration::from_secs(4), Duration::from_secs(3));
    let in_flight = |p: &std::path::Path| {
        format!(
            "stallwatch_probe_in_flight_seconds{{path=\"{}\"}}",
            p.display()
        )
    };
    let timeouts = |p: &std::path::Path| {
        format!(
            "stallwatch_probe_failures_total{{path=\"{}\",reason=\"timeout\"}}",
            p.display()
        )
    };
    let m: Metrics = agent.wait_for(
        Duration::from_secs(10),
        "the reload applied, the probe hung",
        |m| {
            m.get("stallwatch_config_last_reload_successful") == Some(1.0)
                && m.get(&in_flight(&first)).is_some_and(|a| a > 1.0)
                && m.get(&timeouts(&first)).is_some_and(|n| n >= 1.0)
        },
    );
    assert!(
        m.has_family("stallwatch_memory_dirty_bytes"),
        "still sampling"
    );

    // An edit (no signal): a second probe on the hung disk, seen by the directory watcher.
    let second = rig.path("second");
    write(&cfg, &probe_toml(&[first.clone(), second.clone()]));
    let slow2 = keep_scraping(&agent, Duration::from_secs(3), Duration::from_secs(3));
    agent.wait_for(Duration::from_secs(10), "the edit applied", |m| {
        m.get(&in_flight(&second)).is_some_and(|a| a > 0.0)
    });
    assert!(
        agent.log().contains("trigger=\"file change\""),
        "{}",
        agent.log()
    );
    eprintln!("slowest request while hung: {slow1:?} after SIGHUP, {slow2:?} after the edit");

    // SIGTERM is answered while the disk still hangs: the server stops and says so.
    agent.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !agent.log().contains("Shut down.") {
        assert!(
            Instant::now() < deadline,
            "no shutdown after SIGTERM:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The probes' writer processes are still in D; the agent itself does not wait for them
    // (probe_hung.rs shows its PID gone within 5 s of SIGTERM). Resume, then check its exit.
    rig.resume();
    let status = wait_exit(&mut agent.child, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("did not exit after the disk resumed:\n{}", agent.log()));
    assert!(status.success(), "{status:?}\n{}", agent.log());
}
