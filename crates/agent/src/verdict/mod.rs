//! The verdict: is the node stalled now, since when, and why — "was it I/O?" in one answer.
//!
//! Pure: one evaluation per host tick over the joined [`Node`](crate::node::Node), no I/O.
//! - [`tick`] turns two consecutive nodes into the tick's rates (PSI shares from the `total`
//!   counters, per-device utilisation, latency and queue, writeback rates, container I/O
//!   against its limits, EBS state);
//! - [`causes`] holds one detector per cause: each says whether its condition holds at the
//!   entry thresholds, only at the (lower) hold thresholds, or not at all, with its evidence
//!   and "who";
//! - [`engine`] adds the hysteresis (enter after `enter_ticks` consecutive ticks, leave after
//!   `clear_after` without even the hold level) and assembles the [`Verdict`].
//!
//! The causes are a fixed set (bounded labels), ordered by how directly they explain a stall:
//! a device that completes nothing explains everything behind it; an empty EBS bucket explains
//! a saturated disk; memory thrashing explains the reads it causes; a flush explains the lock
//! waits behind it. The first active cause in [`Cause::ALL`] order is the verdict's `cause`.

mod causes;
mod config;
mod detect;
mod ebs;
mod engine;
mod memwho;
pub mod tick;
mod wchan;
mod who;

#[cfg(test)]
mod tests;

use serde::Serialize;

pub use config::VerdictConfig;
pub use engine::{Engine, Evaluation};

/// Why the node is stalled. Every cause is always exported (0/1), so the set is fixed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A device has I/O in flight and completes nothing for `stall_after`.
    DiskStalled,
    /// An EBS burst bucket (volume or instance) is empty, or the volume is over its
    /// provisioned IOPS/throughput (NVMe log page), while tasks wait on it.
    EbsCredits,
    /// Reclaim and thrashing: tasks stall on memory (PSI memory), with direct reclaim,
    /// compaction or refaults as evidence.
    Memory,
    /// A flush storm: much data under writeback (or written in a burst) while tasks wait on it.
    Writeback,
    /// Threads in D on a lock or wait queue rather than on a device (e.g. behind a `syncfs`).
    Lock,
    /// A device at its limit (utilisation with queueing or latency), or a container at its
    /// blkio/io.max limit.
    DiskSaturated,
    /// Run-queue saturation: tasks wait for a CPU. Not I/O.
    Cpu,
    None,
}

impl Cause {
    /// Every cause, in tie-break order (the first active one is the verdict's cause).
    pub const ALL: [Cause; 8] = [
        Cause::DiskStalled,
        Cause::EbsCredits,
        Cause::Memory,
        Cause::Writeback,
        Cause::Lock,
        Cause::DiskSaturated,
        Cause::Cpu,
        Cause::None,
    ];

    /// The causes a detector can find (all but `none`, which is last).
    pub const DETECTED: &'static [Cause] = Cause::ALL.split_at(7).0;

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::DiskStalled => "disk_stalled",
            Cause::EbsCredits => "ebs_credits",
            Cause::Memory => "memory",
            Cause::Writeback => "writeback",
            Cause::Lock => "lock",
            Cause::DiskSaturated => "disk_saturated",
            Cause::Cpu => "cpu",
            Cause::None => "none",
        }
    }

    /// Whether this cause is the storage's doing ("was it I/O?"). Memory thrashing causes
    /// reads, and lock waits may sit behind a flush, but the fix is elsewhere: not I/O.
    pub fn io(self) -> bool {
        matches!(
            self,
            Cause::DiskStalled | Cause::EbsCredits | Cause::Writeback | Cause::DiskSaturated
        )
    }

    /// Its position in [`Cause::ALL`] (the index of per-cause arrays).
    pub fn index(self) -> usize {
        Cause::ALL.iter().position(|c| *c == self).unwrap_or(7)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Tasks are slowed.
    Warning,
    /// Tasks are stopped: nothing completes, a bucket is empty, most time is stalled.
    Critical,
}

/// One signal that triggered a cause, with the threshold it crossed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    pub signal: &'static str,
    /// The device, container, volume or group the value is of; `None` for node-wide signals.
    pub subject: Option<String>,
    pub value: f64,
    pub threshold: f64,
    pub unit: &'static str,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Who {
    pub devices: Vec<WhoDevice>,
    pub containers: Vec<WhoContainer>,
    pub groups: Vec<WhoGroup>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WhoDevice {
    pub name: String,
    pub major: u32,
    pub minor: u32,
    pub volume_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WhoContainer {
    pub id: String,
    pub name: Option<String>,
    pub runtime: &'static str,
    pub d_threads: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WhoGroup {
    pub group: String,
    pub d_threads: u64,
    pub wchans: Vec<WchanCount>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WchanCount {
    pub wchan: String,
    pub threads: u64,
}

/// An active cause, as the verdict reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Active {
    pub cause: Cause,
    pub io: bool,
    pub severity: Severity,
    pub since: String,
    pub since_unix: f64,
    pub since_seconds: f64,
    pub summary: String,
    pub evidence: Vec<Evidence>,
    pub who: Who,
}

/// The answer at one tick.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub time: String,
    pub time_unix: f64,
    pub stalled: bool,
    /// Whether the stall is the storage's doing (the top cause's [`Cause::io`]); false when
    /// not stalled.
    pub io: bool,
    pub cause: Cause,
    pub since: Option<String>,
    pub since_unix: Option<f64>,
    pub since_seconds: Option<f64>,
    pub summary: String,
    /// Every active cause, the top one first.
    pub causes: Vec<Active>,
}

impl Default for Verdict {
    fn default() -> Self {
        Verdict {
            time: String::new(),
            time_unix: 0.0,
            stalled: false,
            io: false,
            cause: Cause::None,
            since: None,
            since_unix: None,
            since_seconds: None,
            summary: "No verdict yet: waiting for the second host tick.".into(),
            causes: Vec::new(),
        }
    }
}

/// RFC 3339, whole seconds, UTC.
pub fn rfc3339(unix: f64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(unix.max(0.0));
    humantime::format_rfc3339_seconds(t).to_string()
}
