//! Scenario 6: Garden's slow overlay unmounts. Four overlays share one upper filesystem (ext4
//! on a loop device limited to 8 MiB/s of writes, device-wide: rig::DeviceLimit); each has
//! 16 MiB dirty. Then all four are unmounted at once while two `sync -f` (syncfs) run on the
//! upper filesystem: each unmount's `ovl_sync_fs` syncs the whole upper filesystem, so they
//! all wait for the same 64 MiB flush — on writeback completions, and on the superblock's
//! `s_sync_lock` behind whichever one is waiting for the pages. The verdict must say
//! `writeback` and/or `lock`, with those threads and their wait channels.

use std::process::Command;
use std::time::{Duration, Instant};

use super::rig::DeviceLimit;
use super::{active, incident, now_unix, report, wait_verdict, who_groups};
use crate::harness::require_root;
use crate::writeback::LoopFs;

const OVERLAYS: usize = 4;
const DIRTY_MIB: usize = 16;
const BPS: u64 = 8 << 20;
/// The processes whose threads wait: what the D-state walk groups them as.
const WAITERS: [&str; 2] = ["umount", "sync"];

/// The cause's waiting groups that are ours (the writeback and lock detectors keep only
/// threads whose wait channel is of their kind: verdict/wchan.rs), with wait channels.
fn our_waits(c: &serde_json::Value) -> Vec<(String, Vec<String>)> {
    who_groups(c)
        .into_iter()
        .filter(|(g, w)| WAITERS.contains(&g.as_str()) && !w.is_empty())
        .collect()
}

#[test]
fn concurrent_overlay_unmounts_on_a_throttled_fs_are_writeback_or_lock() {
    if !require_root("concurrent_overlay_unmounts_on_a_throttled_fs_are_writeback_or_lock") {
        return;
    }
    let fs = LoopFs::new(512);
    let tmp = tempfile::tempdir().unwrap();
    let a = super::agent(tmp.path(), "");
    let base = fs.mount_point();
    let overlays = fs.overlays(&[false; OVERLAYS]);
    let merged = overlays.0.clone();
    // Limited before the data is dirtied: the flusher's background writeback is held too.
    let mut limit = DeviceLimit::set("write_bps_device", fs.major_minor, BPS);
    for (i, m) in merged.iter().enumerate() {
        LoopFs::dirty(&m.join(format!("layer{i}")), DIRTY_MIB);
    }

    let t0 = Instant::now();
    let start_unix = now_unix();
    for m in &merged {
        limit.own(Command::new("umount").arg(m).spawn().unwrap());
    }
    for _ in 0..2 {
        limit.own(Command::new("sync").arg("-f").arg(&base).spawn().unwrap());
    }

    // writeback naming our waiters and the flushed device (a tick in which blk-throttle
    // dispatched nothing to it names other busy devices only: the next one names it), or
    // lock naming our waiters.
    let dev = fs.device.clone();
    let ours = move |cause: &str, c: &serde_json::Value| {
        !our_waits(c).is_empty() && (cause == "lock" || super::who_devices(c).contains(&dev))
    };
    let found = wait_verdict(
        &a,
        t0,
        Duration::from_secs(20),
        "writeback or lock naming the unmounts/syncs with their wait channels",
        |v| {
            ["writeback", "lock"]
                .iter()
                .any(|c| active(v, c).is_some_and(|x| ours(c, x)))
        },
    );
    let v = &found.verdict;
    let cause = ["writeback", "lock"]
        .into_iter()
        .find(|c| active(v, c).is_some_and(|x| ours(c, x)))
        .unwrap();
    let c = active(v, cause).unwrap();
    let waits = our_waits(c);
    eprintln!("{cause}: waiting {waits:?}");
    // The D table shows the same threads, each with its wait channel.
    let rows: Vec<&serde_json::Value> = v["dstate"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| WAITERS.iter().any(|g| r["group"] == *g))
        .collect();
    assert!(
        !rows.is_empty() && rows.iter().all(|r| r["wchan"].is_string()),
        "the waiting unmounts/syncs in the D table with wait channels: {}",
        v["dstate"]
    );
    if cause == "writeback" {
        // At its entry or, once the flush is half through, its hold level.
        super::evidence(c, "writeback_bytes", None);
    }
    let rec = incident(&a, cause, start_unix, Duration::from_secs(15));
    let peak = rec["peaks"]["writeback_bytes"].as_f64().unwrap_or(0.0);
    assert!(
        peak >= (32 << 20) as f64,
        "the 64 MiB flush peaks over 32 MiB under writeback: {}",
        rec["peaks"]
    );
    let d = rec["dstate"].as_array().unwrap();
    assert!(
        d.iter()
            .any(|r| WAITERS.iter().any(|g| r["group"] == *g) && r["wchan"].is_string()),
        "the incident's D table has the waiting unmounts/syncs: {}",
        rec["dstate"]
    );
    report(
        "writeback/lock (concurrent overlay unmounts + syncfs)",
        Some(found.after),
        v,
        cause,
        Some(&rec),
    );
    // Lift the limit: everything flushes at once and the unmounts finish.
    limit.lift();
    drop(limit);
}
