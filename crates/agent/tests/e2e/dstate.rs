//! Who is stuck, for real: threads held in D state by a throttled loop device (see
//! `dstate_rig.rs`), with a hostile comm. The running agent must name their group, count them
//! within 3 s, age them, integrate their D time, and `stallwatch dstate` must list them with
//! their wait channel.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::dstate_rig::{DStateRig, HOSTILE_COMM};
use crate::harness::{require_root, write, Agent, BIN};

/// What the agent must show for the hostile comm: invalid UTF-8 as U+FFFD, the newline as `?`.
const EXPECTED_GROUP: &str = "sw) S 0 ?\u{FFFD}write";

#[test]
fn real_dstate_threads_are_named_counted_aged_and_listed() {
    if !require_root("real_dstate_threads_are_named_counted_aged_and_listed") {
        return;
    }
    assert_eq!(
        stallwatch_collector::proc::task_stat::sanitize(HOSTILE_COMM),
        EXPECTED_GROUP,
        "the label rule itself"
    );
    let rig = DStateRig::start(4, 3);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg.toml");
    write(
        &cfg,
        // The walk's own behaviour (the eBPF source's: dstate_bpf.rs, where episodes are exact
        // and a thread's ages restart with each write).
        "[threads]\ninterval = \"10s\"\nfast_interval = \"1s\"\n[bpf]\nenabled = false\n",
    );
    let t0 = Instant::now();
    let agent = Agent::start(&[&format!("--config.file={}", cfg.display())]);

    let series = |name: &str| format!("{name}{{group=\"{EXPECTED_GROUP}\"}}");
    let threads = series("stallwatch_dstate_threads");
    let m1 = agent.wait_for(Duration::from_secs(3), "the hostile group in D", |m| {
        m.get(&threads).is_some_and(|n| n >= 3.0)
    });
    eprintln!(
        "agent reported {} D threads after {:?}",
        m1.get(&threads).unwrap(),
        t0.elapsed()
    );
    assert!(m1.get("stallwatch_threads{state=\"D\"}").unwrap() >= 3.0);
    assert_eq!(m1.get("stallwatch_stall_suspected"), Some(1.0));
    assert_eq!(
        m1.get("stallwatch_thread_walk_interval_seconds"),
        Some(1.0),
        "fast cadence while stalled"
    );
    let by_wchan: f64 = m1
        .series
        .iter()
        .filter(|(k, _)| k.starts_with("stallwatch_dstate_threads_by_wchan{"))
        .map(|(_, v)| v)
        .sum();
    assert!(by_wchan >= 3.0, "{}", m1.text);
    assert!(m1.get(&series("stallwatch_dstate_episodes_total")).unwrap() >= 3.0);

    // Still stuck two seconds later: the longest age grows and the integral advances.
    std::thread::sleep(Duration::from_secs(2));
    let m2 = agent.wait_for(Duration::from_secs(5), "D time to accumulate", |m| {
        m.get(&series("stallwatch_dstate_seconds_total"))
            .is_some_and(|s| s >= 3.0)
    });
    let longest1 = m1
        .get(&series("stallwatch_dstate_longest_seconds"))
        .unwrap();
    let longest2 = m2
        .get(&series("stallwatch_dstate_longest_seconds"))
        .unwrap();
    assert!(
        longest2 >= longest1 + 1.5,
        "longest D grew from {longest1} to {longest2}"
    );
    assert!(rig.d_threads_now() >= 1, "the rig is still stalled");

    // `stallwatch dstate --once --json` names the threads with their wait channel.
    let out = Command::new(BIN)
        .args(["dstate", "--once", "--json", "--stack", "--observe", "1s"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours: Vec<&serde_json::Value> = report["dstate"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["pid"].as_u64() == Some(rig.pid() as u64))
        .collect();
    assert!(ours.len() >= 3, "{report:#}");
    for t in &ours {
        assert_eq!(t["comm"], EXPECTED_GROUP);
        assert_eq!(t["group"], EXPECTED_GROUP);
        assert!(
            t["wchan"]
                .as_str()
                .is_some_and(|w| !w.is_empty() && w != "0"),
            "{t}"
        );
        assert!(t["cgroup"].as_str().is_some(), "{t}");
        assert!(
            t["seconds_in_d"].as_f64().unwrap() >= 0.9,
            "observed for 1 s: {t}"
        );
        assert!(rig.tids().contains(&(t["tid"].as_u64().unwrap() as u32)));
    }
    // The longest thread in D on the machine (ours, or another test's writer beside us).
    assert!(
        report["dstate"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["stack"].as_array().is_some_and(|s| !s.is_empty())),
        "--stack gives the longest thread's kernel stack: {report:#}"
    );
    // The human table too: one row per stuck thread with the escaped comm.
    let out = Command::new(BIN)
        .args(["dstate", "--once", "--observe", "200ms"])
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains(&rig.pid().to_string()) && table.contains("sw) S 0 ?"),
        "{table}"
    );
    assert!(
        !table.contains('\u{1b}'),
        "--once prints no terminal escapes"
    );

    // Lift the stall: the threads leave D; counters keep their totals, the gauge drops to 0.
    let total = m2.get(&series("stallwatch_dstate_seconds_total")).unwrap();
    rig.lift();
    let lifted = Instant::now();
    // (`lift` also stops the writes, so none is caught mid-write however busy the disk is.)
    let m3 = agent.wait_for(Duration::from_secs(10), "the threads to leave D", |m| {
        m.get(&threads) == Some(0.0)
    });
    eprintln!(
        "the agent saw them leave D {:?} after the lift",
        lifted.elapsed()
    );
    assert!(m3.get(&series("stallwatch_dstate_seconds_total")).unwrap() >= total);
    drop(rig);
}
