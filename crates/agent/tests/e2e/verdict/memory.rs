//! Scenario 5: memory thrashing. A container with a 32 MiB memory limit (v1
//! `memory.limit_in_bytes`) runs three readers that re-read a 48 MiB file on a loop device:
//! the file does not fit, so every pass reclaims the container's own page cache and reads it
//! back. 1.5 × the limit on purpose: a refault within the working set's distance is
//! activated and then counted as thrashing (PSI memory), where a file many times the limit
//! would only be streamed (measured here: 4 × gave ~5–10 % memory pressure, 1.5 × gave
//! 20–30 %). The verdict must say `memory` (not I/O at the root) and name the container.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::rig::direct_file;
use super::{
    agent_and_container, evidence, incident, now_unix, report, wait_cause, who_containers,
};
use crate::harness::require_root;
use crate::writeback::LoopFs;

const LIMIT: u64 = 32 << 20;
const FILE_MIB: u64 = 48;
const READERS: usize = 3;

#[test]
fn rereading_a_file_larger_than_a_memory_limit_is_memory() {
    if !require_root("rereading_a_file_larger_than_a_memory_limit_is_memory") {
        return;
    }
    let fs = LoopFs::new(256);
    let file = fs.mount_point().join("data");
    direct_file(&file, FILE_MIB);
    let tmp = tempfile::tempdir().unwrap();
    let (a, c, id) = agent_and_container(tmp.path(), "cache");
    c.memory_limit(LIMIT);
    let t0 = Instant::now();
    let start_unix = now_unix();
    for _ in 0..READERS {
        let mut cmd = Command::new("timeout");
        cmd.args(["40", "sh", "-c"])
            .arg(format!(
                "while :; do cat '{}' > /dev/null; done",
                file.display()
            ))
            .stdin(Stdio::null());
        c.spawn(&mut cmd);
    }

    let found = wait_cause(&a, t0, Duration::from_secs(20), "memory", |m| {
        who_containers(m).contains(&id)
    });
    let m = found.cause("memory");
    assert_eq!(m["io"], false, "memory is not I/O at the root");
    // The cause enters on either PSI memory share over its own threshold (`some` 10 %, `full`
    // 5 %): a tick with `full` at 6 % and `some` at 9 % is memory too. `evidence` asserts the
    // value it finds is at or over the threshold it carries.
    let psi = ["psi_memory_some", "psi_memory_full"];
    let signal = psi
        .into_iter()
        .find(|s| {
            m["evidence"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["signal"] == *s)
        })
        .unwrap_or_else(|| panic!("memory without PSI memory evidence: {}", m["evidence"]));
    evidence(m, signal, None);
    let w = m["who"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == id.as_str())
        .unwrap();
    assert_eq!(w["name"], "cache", "{w}");
    assert!(
        m["summary"].as_str().unwrap().contains("cache"),
        "the summary names the container: {}",
        m["summary"]
    );
    evidence(m, "container_memory_usage", Some("cache"));
    let rec = incident(&a, "memory", start_unix, Duration::from_secs(15));
    // The readers wait in D for their refaults: the record has them, in the container.
    let ours = |r: &serde_json::Value| r["container"]["id"] == id.as_str();
    assert!(
        rec["dstate"].as_array().unwrap().iter().any(ours)
            || rec["containers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["id"] == id.as_str()),
        "the container in the incident: {} {}",
        rec["dstate"],
        rec["containers"]
    );
    report(
        "memory (re-reading a file larger than the limit)",
        Some(found.after),
        &found.verdict,
        "memory",
        Some(&rec),
    );
    c.stop();
}
