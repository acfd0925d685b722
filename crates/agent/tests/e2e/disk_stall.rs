//! "I/O in flight and nothing completing" (issue 14 item 6, the `disk_stalled` signal) and the
//! kernel's hung-task count, on a REAL hung device: the FUSE rig of `hung.rs` (ext4 on a loop
//! device whose backing file is served by a FUSE daemon we `SIGSTOP`). Needs root.
//!
//! The hung-task part lowers `kernel.hung_task_timeout_secs` for a few seconds (a global
//! sysctl: the kernel may then log other tests' D threads as hung too, which is harmless with
//! `hung_task_panic = 0`, checked first) and puts it and `hung_task_warnings` back on drop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::{require_root, write, Agent, Metrics};
use crate::hung::HungDisk;

/// A sysctl set for the test and put back on drop (also after a panic).
struct Sysctl {
    path: PathBuf,
    old: String,
}

impl Sysctl {
    fn set(name: &str, value: &str) -> Sysctl {
        let path = Path::new("/proc/sys/kernel").join(name);
        let old = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        write(&path, value);
        Sysctl { path, old }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.path, self.old.trim());
    }
}

fn read_sysctl(name: &str) -> Option<u64> {
    std::fs::read_to_string(Path::new("/proc/sys/kernel").join(name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[test]
fn a_hung_loop_device_is_stalled_and_its_waiters_are_hung_tasks() {
    if !require_root("a_hung_loop_device_is_stalled_and_its_waiters_are_hung_tasks") {
        return;
    }
    let rig = HungDisk::start(&[]);
    let dev = rig.loop_device();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sw.toml");
    write(
        &cfg,
        &format!(
            "[disks]\ninclude_loop = true\ndevice_include = \"^{dev}$\"\n\n[cloud]\nenabled = false\n"
        ),
    );
    let agent = Agent::start(&[&format!("--config.file={}", cfg.display())]);
    // Declared after the agent: dropped first, so nothing waits on the hung disk at the end.
    let _resume = rig.resume_on_drop();
    let gauge = format!("stallwatch_disk_stall_seconds{{device=\"{dev}\"}}");
    let counter = format!("stallwatch_disk_stalled_seconds_total{{device=\"{dev}\"}}");
    let hung = "stallwatch_hung_tasks_detected_total";

    // Healthy: the rows exist and say nothing is stalled.
    let m = agent.wait_for(
        Duration::from_secs(10),
        "the loop device's stall rows",
        |m| m.get(&gauge) == Some(0.0) && m.get(&counter) == Some(0.0),
    );
    assert_eq!(
        m.get("stallwatch_hung_task_timeout_seconds"),
        read_sysctl("hung_task_timeout_secs").map(|v| v as f64)
    );

    // Hung: an O_DIRECT write waits in D with its request in flight on the loop device.
    rig.hang();
    let m = agent.wait_for(Duration::from_secs(15), "a stall of 2 s or more", |m| {
        m.get(&gauge).is_some_and(|s| s >= 2.0) && m.get(&counter).is_some_and(|s| s >= 2.0)
    });
    let in_flight = format!("stallwatch_disk_io_in_progress{{device=\"{dev}\"}}");
    assert!(m.get(&in_flight).is_some_and(|n| n >= 1.0), "{}", m.text);
    let (run, total) = (m.get(&gauge).unwrap(), m.get(&counter).unwrap());
    assert!(
        (run - total).abs() <= 1.0,
        "one run so far: the counter ({total}) and the run ({run}) agree to one interval"
    );

    // The kernel's hung-task detector sees the waiter once its timeout is below its wait
    // (kernel >= 6.13 counts detections; older kernels have no counter to test).
    if read_sysctl("hung_task_detect_count").is_some() {
        assert_eq!(
            read_sysctl("hung_task_panic"),
            Some(0),
            "hung_task_panic is on: lowering the timeout would panic the machine"
        );
        let before = m
            .get(hung)
            .expect("detect count exported on kernel >= 6.13");
        let _warnings = Sysctl::set("hung_task_warnings", "0");
        let _timeout = Sysctl::set("hung_task_timeout_secs", "1");
        agent.wait_for(
            Duration::from_secs(15),
            "a hung-task detection",
            |m: &Metrics| {
                m.get(hung).is_some_and(|n| n > before)
                    && m.get("stallwatch_hung_task_timeout_seconds") == Some(1.0)
            },
        );
    } else {
        eprintln!("note: kernel < 6.13, no hung_task_detect_count: that half is not tested here");
    }

    // Resumed: the run ends, the counter keeps what it counted.
    rig.resume();
    let m = agent.wait_for(Duration::from_secs(15), "the stall to end", |m| {
        m.get(&gauge) == Some(0.0)
    });
    assert!(
        m.get(&counter).is_some_and(|t| t >= total),
        "counter went back"
    );
}
