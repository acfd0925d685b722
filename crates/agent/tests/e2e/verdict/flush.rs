//! Scenario 2: a slow flush. A process writes 160 MiB to a file on a loop device (buffered:
//! it stays dirty in the page cache), then `fsync`s it through a 20 MiB/s write limit on that
//! device — the "Writeback" story: seconds of data under writeback while the syncer waits.
//!
//! The limit is set in the ROOT blkio cgroup for the test's loop device (rig::DeviceLimit), not
//! in a child cgroup: in cgroup v1 the flusher kworkers write dirty pages back from the root
//! group, and on a busy machine (global Dirty high) they start on our file before the fsync
//! does, so a child-group limit would hold only part of the flush (measured here: 26 of
//! 200 MiB). A device-wide limit is also what a volume's throughput cap is.
//!
//! This scenario shortens `verdict.clear_after` to 3 s so that the incident closes a few
//! seconds after the fsync returns, and checks the closed record.

use std::time::{Duration, Instant};

use super::rig::{python, wait_exit, DeviceLimit};
use super::{
    agent, d_rows, evidence, get_json, incident, now_unix, report, wait_cause, wait_verdict,
    who_devices, who_groups,
};
use crate::harness::require_root;
use crate::writeback::LoopFs;

const MIB: u64 = 160;
const BPS: u64 = 20 << 20;
/// The syncer's thread name (its D-state group).
pub const SYNCER: &str = "sw-fsync";

/// argv: file, MiB, comm. Writes, prints "written", fsyncs, prints "synced".
const FLUSH_PY: &str = r#"
import ctypes, os, sys
path, mib, name = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name), 0, 0, 0)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
chunk = b"\x5a" * (1 << 20)
for _ in range(mib):
    os.write(fd, chunk)
print("written", flush=True)
os.fsync(fd)
print("synced", flush=True)
"#;

#[test]
fn fsync_of_a_large_buffered_write_through_a_bps_limit_is_writeback() {
    if !require_root("fsync_of_a_large_buffered_write_through_a_bps_limit_is_writeback") {
        return;
    }
    let fs = LoopFs::new(512);
    let dev = fs.device.clone();
    let tmp = tempfile::tempdir().unwrap();
    let a = agent(tmp.path(), "[verdict]\nclear_after = \"3s\"\n");
    let file = fs.mount_point().join("big");
    let mut cmd = python(
        FLUSH_PY,
        &[file.to_str().unwrap(), &MIB.to_string(), SYNCER],
    );
    let mut limit = DeviceLimit::set("write_bps_device", fs.major_minor, BPS);
    let child = limit.own(cmd.spawn().unwrap());
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "written");
    // The stall begins with the fsync.
    let t0 = Instant::now();
    let start_unix = now_unix();

    // The syncer among the threads that wait for the flush (the detector keeps only
    // writeback waits: verdict/wchan.rs), with its wait channel.
    // ...and the flushed device among the busiest (a tick in which blk-throttle dispatched
    // nothing to it names other devices only).
    let found = wait_cause(&a, t0, Duration::from_secs(15), "writeback", |w| {
        who_groups(w)
            .iter()
            .any(|(g, ws)| g == SYNCER && !ws.is_empty())
            && who_devices(w).contains(&dev)
    });
    let w = found.cause("writeback");
    let e = evidence(w, "writeback_bytes", None);
    assert!(
        e["value"].as_f64().unwrap() >= (32 << 20) as f64,
        "tens of MiB under writeback: {e}"
    );
    evidence(w, "psi_io_some", None);
    assert_eq!(w["io"], true);
    let rows = d_rows(&found.verdict["dstate"], SYNCER);
    assert!(
        !rows.is_empty() && rows.iter().all(|r| r["wchan"].is_string()),
        "the syncer in the D table with its wait channel: {}",
        found.verdict["dstate"]
    );
    let open = incident(&a, "writeback", start_unix, Duration::from_secs(15));

    // The fsync returns once the 160 MiB are through (~8 s at 20 MiB/s)...
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "synced");
    let synced = Instant::now();
    eprintln!("fsync took {:.1} s", (synced - t0).as_secs_f64());
    assert!(wait_exit(child, Duration::from_secs(10)).is_some_and(|s| s.success()));
    limit.lift();
    // ...and writeback clears after clear_after (3 s here) without even its hold level.
    wait_verdict(
        &a,
        synced,
        Duration::from_secs(15),
        "writeback cleared",
        |v| super::active(v, "writeback").is_none(),
    );
    let id = open["id"].as_str().unwrap();
    let (rec, _) = get_json(&a, &format!("/api/v1/incidents/{id}"));
    if rec["open"] == false {
        // Closed (unless a neighbour's stall keeps the node stalled): an end, the peaks, the
        // syncer in its D table, the disk with what it did.
        assert!(rec["end_unix"].as_f64().unwrap() >= start_unix, "{rec}");
        let peak = rec["peaks"]["writeback_bytes"].as_f64().unwrap_or(0.0);
        assert!(
            peak >= (32 << 20) as f64,
            "peak writeback: {}",
            rec["peaks"]
        );
        assert!(rec["timeline"]["cause"]
            .as_array()
            .is_some_and(|c| c.iter().any(|x| x == "writeback")));
    } else {
        eprintln!("incident {id} still open: another stall on this machine keeps it open");
    }
    assert!(
        !d_rows(&rec["dstate"], SYNCER).is_empty(),
        "the incident's D table has the syncer: {}",
        rec["dstate"]
    );
    let disk = rec["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == dev.as_str())
        .unwrap_or_else(|| panic!("{dev} in the incident's disks: {}", rec["disks"]));
    assert!(disk["bytes_per_second"].as_f64().unwrap() > 0.0, "{disk}");
    report(
        "writeback (fsync through a bps limit)",
        Some(found.after),
        &found.verdict,
        "writeback",
        Some(&rec),
    );
}
