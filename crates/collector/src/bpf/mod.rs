//! Every D episode, exactly: an eBPF source below the procfs floor.
//!
//! The thread walk samples: it sees who is in D at the instant it runs. The kernel sees every
//! episode: `tp_btf/sched_switch` starts one when a thread leaves the CPU in
//! `TASK_UNINTERRUPTIBLE` (not `TASK_NOLOAD`), `tp_btf/sched_wakeup` ends it, and the program
//! (`crates/collector/bpf/dstate.bpf.c`) adds it to an aggregate keyed by {tgid, wait channel,
//! comm}: count, nanoseconds, max and a log2 histogram. Episodes longer than
//! `bpf.long_episode` go to a ring buffer with the kernel stack they slept in. The cost grows
//! with context switches, not with threads.
//!
//! - [`kernel`]: the object, loaded and attached with aya; the lossless drain.
//! - [`source`]: the `bpf` source's reader (on the periodic driver, in the thread sampler): a
//!   drain, resolved to comms, containers (from `/proc/<tgid>/cgroup`, cached) and names.
//! - [`symbols`]: kernel addresses → names from `/proc/kallsyms` (needs `CAP_SYSLOG`).
//! - [`episodes`]: the pure accounting with bounded labels.
//!
//! On by default where it can be (`[bpf] enabled = "auto"`): BTF at
//! `<sysfs>/kernel/btf/vmlinux`, `CAP_BPF` and `CAP_PERFMON` (or `CAP_SYS_ADMIN`), and a kernel
//! ≥ 5.18 (`sched_switch` passes the previous state). Elsewhere the walk does everything as
//! before, and one log line and `stallwatch doctor` say why.

pub mod episodes;
pub mod kernel;
pub mod source;
pub mod state;
pub mod symbols;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cgroup::Identity;
use crate::roots::Roots;
use crate::sample::status::SourceStatus;

pub use episodes::{Hist, OTHER};
pub use kernel::Counters;

/// `[bpf] enabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Enabled {
    /// On where the kernel and the capabilities allow; the walk alone elsewhere.
    #[default]
    Auto,
    /// On; a node where it cannot load logs an error and runs on the walk.
    On,
    Off,
}

/// `[bpf]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BpfConfig {
    pub enabled: Enabled,
    /// How often the maps are drained.
    pub interval: Duration,
    /// A drain outstanding for longer marks the `bpf` source stuck.
    pub timeout: Duration,
    /// Episodes at least this long are sent with their stack.
    pub long_episode: Duration,
    /// Episodes in flight at once (threads in D); more are counted as lost.
    pub max_in_flight: u32,
    /// Distinct {tgid, wait channel, comm} per drain interval; more go to an unlabelled
    /// overflow entry (counted and timed, not lost).
    pub max_keys: u32,
    /// Ring buffer for long episodes, bytes (a power of two, at least a page).
    pub ring_bytes: u32,
    /// Walk cadence while the source runs: the walk then only refreshes the thread states and
    /// seeds episodes that began before the programs attached.
    pub walk_interval: Duration,
}

impl Default for BpfConfig {
    fn default() -> Self {
        BpfConfig {
            enabled: Enabled::Auto,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            long_episode: Duration::from_secs(1),
            max_in_flight: 8192,
            max_keys: 4096,
            ring_bytes: 256 * 1024,
            walk_interval: Duration::from_secs(300),
        }
    }
}

/// A long episode, with its stack: the last 256, newest first.
#[derive(Debug, Clone)]
pub struct LongEpisode {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub group: Arc<str>,
    pub container_id: Option<String>,
    pub wchan: Option<String>,
    pub seconds: f64,
    /// When it ended (wall clock, seconds since the epoch); `None` while it is still running.
    pub ended_unix: Option<f64>,
    /// The kernel stack it slept in, one frame per line, innermost first.
    pub stack: Option<Arc<str>>,
}

/// An episode running now.
#[derive(Debug, Clone)]
pub struct InFlight {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub group: Arc<str>,
    pub kernel_thread: bool,
    pub cgroup: Option<Arc<str>>,
    pub container: Option<Arc<Identity>>,
    pub wchan: Option<String>,
    /// When it began (exact; for a seeded episode, when the walk first saw it).
    pub since: Instant,
    /// Put in flight from the walk: it began before the programs attached.
    pub seeded: bool,
    /// The stack it went to sleep in, from the wait channel on (the 64 longest episodes).
    pub stack: Option<Arc<str>>,
}

/// What the episode source knows, as of one publish. Immutable.
#[derive(Debug, Clone, Default)]
pub struct EpisodeSnapshot {
    /// The programs are attached and drained.
    pub active: bool,
    /// Why not, when configured (auto or on) but not active.
    pub off_reason: Option<String>,
    /// Exported groups (top N by seconds), then `other`.
    pub groups: Vec<(Arc<str>, Hist)>,
    /// Per container (those the episodes named; the encoder keeps the known ones).
    pub containers: Vec<(Arc<Identity>, Hist)>,
    /// Exported wait channels, then `other`.
    pub wchans: Vec<(Arc<str>, Hist)>,
    /// Everything since the programs attached.
    pub total: Hist,
    /// The last 256 long episodes, newest first.
    pub long: Vec<LongEpisode>,
    /// Episodes running now, longest first.
    pub in_flight: Vec<InFlight>,
    pub counters: Counters,
    pub long_threshold: Duration,
    /// Whether kernel addresses can be named (wait channels, stacks).
    pub symbols: bool,
    /// The `bpf` source's health, while it is on.
    pub status: Option<SourceStatus>,
}

/// Capabilities (bit numbers of `CapEff`).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capabilities of this process (never under `--path.procfs`: that is the host's).
pub fn cap_eff() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// `(major, minor)` of a kernel release like `6.18.44-fc-v1252`.
fn release_version(rel: &str) -> Option<(u32, u32)> {
    let mut it = rel.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Whether the source can run here, and if not, why (one sentence).
pub fn availability(roots: &Roots, caps: u64) -> Result<(), String> {
    let btf = roots.sys("kernel/btf/vmlinux");
    if !btf.exists() {
        return Err(format!(
            "no kernel BTF at {} (a kernel built without CONFIG_DEBUG_INFO_BTF)",
            btf.display()
        ));
    }
    let has = |c: u32| caps & (1u64 << c) != 0;
    if !(has(CAP_SYS_ADMIN) || has(CAP_BPF) && has(CAP_PERFMON)) {
        return Err(format!(
            "missing{}{} (deploy/systemd/stallwatch.service and the DaemonSet grant them)",
            if has(CAP_BPF) { "" } else { " CAP_BPF" },
            if has(CAP_PERFMON) { "" } else { " CAP_PERFMON" }
        ));
    }
    if let Ok(Some(rel)) = crate::proc::sys_kernel::read_release(roots) {
        if release_version(&rel).is_some_and(|v| v < (5, 18)) {
            return Err(format!(
                "kernel {rel} is older than 5.18 (sched_switch without the previous state)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod build_test;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_says_why_not() {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots {
            sysfs: dir.path().join("sys"),
            procfs: dir.path().join("proc"),
            ..Roots::default()
        };
        let all = (1 << CAP_BPF) | (1 << CAP_PERFMON);
        let e = availability(&roots, all).unwrap_err();
        assert!(e.contains("no kernel BTF"), "{e}");
        std::fs::create_dir_all(dir.path().join("sys/kernel/btf")).unwrap();
        std::fs::write(dir.path().join("sys/kernel/btf/vmlinux"), b"x").unwrap();
        assert_eq!(availability(&roots, all), Ok(()));
        assert_eq!(availability(&roots, 1 << CAP_SYS_ADMIN), Ok(()));
        let e = availability(&roots, 1 << CAP_BPF).unwrap_err();
        assert!(
            e.contains("missing CAP_PERFMON") && !e.contains("CAP_BPF"),
            "{e}"
        );
        std::fs::create_dir_all(dir.path().join("proc/sys/kernel")).unwrap();
        std::fs::write(
            dir.path().join("proc/sys/kernel/osrelease"),
            "5.15.0-91-generic\n",
        )
        .unwrap();
        let e = availability(&roots, all).unwrap_err();
        assert!(e.contains("older than 5.18"), "{e}");
        assert_eq!(release_version("6.18.44-fc-v1252"), Some((6, 18)));
    }
}
