//! One detector per cause. Each reads the tick (rates) and the node (who is in D, the EBS
//! state) and says whether its condition holds at the entry thresholds ([`Level::Enter`]),
//! only at the hold thresholds (`hold_ratio` × each, [`Level::Hold`]), or not at all; with
//! the evidence (signal, value, threshold) and who.

use stallwatch_collector::sample::dstate::DThread;

use super::tick::{DiskTick, Tick};
use super::wchan::WaitKind;
use super::who::{container, names, who_device, who_waits};
use super::{Cause, Evidence, Severity, VerdictConfig, Who, WhoDevice};
use crate::node::Node;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Hold,
    Enter,
}

/// What one detector found on one tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub cause: Cause,
    pub level: Level,
    pub severity: Severity,
    pub summary: String,
    pub evidence: Vec<Evidence>,
    pub who: Who,
}

/// The thresholds in force: the entry ones, or the hold ones (scaled by `hold_ratio`).
pub(super) struct Th<'a> {
    pub(super) c: &'a VerdictConfig,
    pub(super) k: f64,
}

impl Th<'_> {
    pub(super) fn x(&self, v: f64) -> f64 {
        v * self.k
    }
}

pub(super) fn ev(
    signal: &'static str,
    subject: Option<&str>,
    value: f64,
    threshold: f64,
    unit: &'static str,
) -> Evidence {
    Evidence {
        signal,
        subject: subject.map(str::to_string),
        value,
        threshold,
        unit,
    }
}

pub(super) fn pct(v: f64) -> String {
    format!("{:.0}%", v * 100.0)
}

pub(super) fn finding(
    cause: Cause,
    severity: Severity,
    summary: String,
    evidence: Vec<Evidence>,
    who: Who,
) -> Finding {
    Finding {
        cause,
        level: Level::Enter,
        severity,
        summary,
        evidence,
        who,
    }
}

/// The kernel's hung-task detector fired in the tick: a task in D for longer than
/// `hung_task_timeout_secs` (evidence for the causes that put tasks in D).
pub(super) fn hung(t: &Tick, e: &mut Vec<Evidence>) {
    if let Some(n) = t.hung_task_detections.filter(|n| *n > 0) {
        e.push(ev("hung_task_detections", None, n as f64, 0.0, "tasks"));
    }
}

/// Tasks wait on I/O: PSI io some or full over its threshold. The gate of the I/O causes
/// other than `disk_stalled` (which is a stall by itself).
pub(super) fn io_pressure(t: &Tick, th: &Th<'_>) -> Option<Vec<Evidence>> {
    let e = shares(
        t.psi[1],
        [("psi_io_some", th.c.io_some), ("psi_io_full", th.c.io_full)],
        th,
    );
    (!e.is_empty()).then_some(e)
}

/// Evidence for each PSI share (`[some, full]`) at or above its threshold.
fn shares(v: [Option<f64>; 2], named: [(&'static str, f64); 2], th: &Th<'_>) -> Vec<Evidence> {
    v.into_iter()
        .zip(named)
        .filter_map(|(v, (signal, limit))| {
            let limit = th.x(limit);
            v.filter(|v| *v >= limit)
                .map(|v| ev(signal, None, v, limit, "ratio"))
        })
        .collect()
}

pub(super) fn disk_stalled(t: &Tick, node: &Node, th: &Th<'_>) -> Option<Finding> {
    let after = th.x(th.c.stall_after.as_secs_f64());
    // Slack: stalled_seconds moves in ticks, and two early 1 s ticks make 1.999 s.
    let stalled: Vec<&DiskTick> = t
        .disks
        .iter()
        .filter(|d| d.in_flight > 0 && d.stalled_seconds + t.dt / 4.0 >= after)
        .collect();
    let first = stalled.first()?;
    let mut evidence: Vec<Evidence> = stalled
        .iter()
        .map(|d| {
            ev(
                "disk_stalled_seconds",
                Some(&d.name),
                d.stalled_seconds,
                after,
                "seconds",
            )
        })
        .collect();
    hung(t, &mut evidence);
    let mut who = who_waits(node, |d| {
        WaitKind::of(d.wchan.as_deref()) != WaitKind::Other
    });
    who.devices = stalled.iter().map(|d| who_device(d)).collect();
    let summary = format!(
        "{} has {} I/O in flight and completed nothing for {:.0} s{}",
        first.name,
        first.in_flight,
        first.stalled_seconds,
        if who.groups.is_empty() {
            String::new()
        } else {
            format!("; waiting: {}", names(&who.groups))
        }
    );
    Some(finding(
        Cause::DiskStalled,
        Severity::Critical,
        summary,
        evidence,
        who,
    ))
}

pub(super) fn memory(t: &Tick, node: &Node, th: &Th<'_>) -> Option<Finding> {
    let [some, full] = t.psi[2];
    let mut e = shares(
        t.psi[2],
        [
            ("psi_memory_some", th.c.memory_some),
            ("psi_memory_full", th.c.memory_full),
        ],
        th,
    );
    if e.is_empty() {
        return None;
    }
    for (signal, v, unit) in [
        ("major_faults_per_second", t.major_faults_per_second, "1/s"),
        (
            "direct_reclaim_stalls_per_second",
            t.allocstalls_per_second,
            "1/s",
        ),
        (
            "compaction_stalls_per_second",
            t.compact_stalls_per_second,
            "1/s",
        ),
        (
            "direct_scan_bytes_per_second",
            t.direct_scan_bytes_per_second,
            "bytes/s",
        ),
        ("refaults_per_second", t.refaults_per_second, "1/s"),
    ] {
        if let Some(v) = v.filter(|v| *v > 0.0) {
            e.push(ev(signal, None, v, 0.0, unit));
        }
    }
    let severity = if full.unwrap_or(0.0) >= th.c.memory_full * 4.0 {
        Severity::Critical
    } else {
        Severity::Warning
    };
    let rate = |v: Option<f64>, what: &str| {
        v.filter(|v| *v > 0.0)
            .map(|v| format!(", {v:.0} {what}/s"))
            .unwrap_or_default()
    };
    let mut summary = format!(
        "Not I/O at the root: tasks stall on memory {} of the time{}{}{}",
        pct(some.unwrap_or(0.0)),
        rate(t.refaults_per_second, "refaults"),
        rate(t.allocstalls_per_second, "direct reclaim stalls"),
        rate(t.major_faults_per_second, "major faults")
    );
    let who = super::memwho::who(node, th.c.limit_share, &mut summary, &mut e);
    Some(finding(Cause::Memory, severity, summary, e, who))
}

pub(super) fn writeback(t: &Tick, node: &Node, th: &Th<'_>) -> Option<Finding> {
    let mut e = io_pressure(t, th)?;
    let limit = th.x(th.c.writeback_bytes as f64);
    let level = t.writeback_bytes.unwrap_or(0.0);
    let written = t.written_bytes_per_second.unwrap_or(0.0) * t.dt;
    let waiting = node
        .view
        .threads
        .stuck
        .iter()
        .filter(|d| WaitKind::of(d.wchan.as_deref()) == WaitKind::Writeback)
        .count();
    if level < limit && written < limit {
        return None;
    }
    if level >= limit {
        e.push(ev("writeback_bytes", None, level, limit, "bytes"));
    }
    if written >= limit {
        e.push(ev("written_bytes_in_tick", None, written, limit, "bytes"));
    }
    if let Some(d) = t.dirty_bytes {
        e.push(ev("dirty_bytes", None, d, 0.0, "bytes"));
    }
    let mut who = who_waits(node, |d| {
        WaitKind::of(d.wchan.as_deref()) == WaitKind::Writeback
    });
    let mut busy: Vec<&DiskTick> = t
        .disks
        .iter()
        .filter(|d| d.bytes_per_second > 0.0)
        .collect();
    busy.sort_by(|a, b| b.bytes_per_second.total_cmp(&a.bytes_per_second));
    who.devices = busy.iter().take(3).map(|d| who_device(d)).collect();
    let summary = format!(
        "Flush storm: {:.0} MiB under writeback, {:.0} MiB/s written{}{}",
        level / 1048576.0,
        t.written_bytes_per_second.unwrap_or(0.0) / 1048576.0,
        busy.first()
            .map(|d| format!(" to {}", d.name))
            .unwrap_or_default(),
        if waiting > 0 {
            format!("; {waiting} threads wait for it: {}", names(&who.groups))
        } else {
            String::new()
        }
    );
    Some(finding(
        Cause::Writeback,
        Severity::Warning,
        summary,
        e,
        who,
    ))
}

pub(super) fn lock(t: &Tick, node: &Node, th: &Th<'_>) -> Option<Finding> {
    let after = std::time::Duration::from_secs_f64(th.x(th.c.lock_after.as_secs_f64()));
    let now = std::time::Instant::now();
    let on_lock = |d: &DThread| {
        WaitKind::of(d.wchan.as_deref()) == WaitKind::Lock
            && now.saturating_duration_since(d.since) >= after
    };
    let n = node
        .view
        .threads
        .stuck
        .iter()
        .filter(|d| on_lock(d))
        .count() as u64;
    let need = th.c.lock_threads.max(1);
    if n < need {
        return None;
    }
    let who = who_waits(node, on_lock);
    let mut e = vec![ev(
        "d_threads_on_lock",
        None,
        n as f64,
        need as f64,
        "threads",
    )];
    hung(t, &mut e);
    let summary = format!(
        "{n} threads in D on a lock, not on a device: {}",
        names(&who.groups)
    );
    Some(finding(Cause::Lock, Severity::Warning, summary, e, who))
}

pub(super) fn disk_saturated(t: &Tick, node: &Node, th: &Th<'_>) -> Option<Finding> {
    let mut e = io_pressure(t, th)?;
    let c = th.c;
    let mut devices: Vec<&DiskTick> = t
        .disks
        .iter()
        .filter(|d| {
            d.utilisation >= th.x(c.utilisation)
                && (d.queue >= th.x(c.queue)
                    || d.await_seconds.unwrap_or(0.0) >= th.x(c.await_threshold.as_secs_f64()))
        })
        .collect();
    devices.sort_by(|a, b| b.utilisation.total_cmp(&a.utilisation));
    let mut at_limit = Vec::new();
    for ci in &t.containers {
        for (kind, limit, r) in &ci.limits {
            if *limit > 0.0 && *r >= th.x(c.limit_share) * limit {
                at_limit.push((ci, *kind, *limit, *r));
            }
        }
    }
    let mut parts = Vec::new();
    let mut who = who_waits(node, |d| {
        WaitKind::of(d.wchan.as_deref()) == WaitKind::Device
    });
    if devices.is_empty() && at_limit.is_empty() {
        // Tasks wait on I/O, yet no device is at its limit and no container at a known limit:
        // the I/O is held back above the devices (a blkio/io.max throttle whose limit was not
        // read, a network filesystem) or spread thin. Still a stall on I/O; say so plainly,
        // with who waits, rather than "not stalled".
        // Stricter than a device at its limit, because nothing names the bottleneck: twice
        // the io `some` threshold, and every task stalled at once (io `full`) or at least two
        // threads waiting on a device. One compiler waiting on a quiet disk 20 % of a second
        // is not a stall.
        let some = t.psi[1][0].unwrap_or(0.0);
        let full = t.psi[1][1].unwrap_or(0.0);
        let waiting: u64 = who.groups.iter().map(|g| g.d_threads).sum();
        if some < 2.0 * th.x(c.io_some) || (full < th.x(c.io_full) && waiting < 2) {
            return None;
        }
        let busiest = t
            .disks
            .iter()
            .max_by(|a, b| a.utilisation.total_cmp(&b.utilisation));
        parts.push(format!(
            "tasks wait on I/O {} of the time but no device is at its limit{}: held back above the disks (a cgroup I/O throttle, a network filesystem)",
            pct(t.psi[1][0].unwrap_or(0.0)),
            busiest
                .map(|d| format!(" (busiest {} at {})", d.name, pct(d.utilisation)))
                .unwrap_or_default()
        ));
        if !who.groups.is_empty() {
            parts.push(format!("waiting: {}", names(&who.groups)));
        }
        return Some(finding(
            Cause::DiskSaturated,
            Severity::Warning,
            parts.join("; "),
            e,
            who,
        ));
    }
    for d in devices.iter().take(3) {
        e.push(ev(
            "disk_utilisation",
            Some(&d.name),
            d.utilisation,
            th.x(c.utilisation),
            "ratio",
        ));
        e.push(ev(
            "disk_queue",
            Some(&d.name),
            d.queue,
            th.x(c.queue),
            "requests",
        ));
        if let Some(a) = d.await_seconds {
            e.push(ev(
                "disk_await",
                Some(&d.name),
                a,
                th.x(c.await_threshold.as_secs_f64()),
                "seconds",
            ));
        }
        parts.push(format!(
            "{} at its limit: {} busy, queue {:.1}, await {:.0} ms, {:.0} IOPS",
            d.name,
            pct(d.utilisation),
            d.queue,
            d.await_seconds.unwrap_or(0.0) * 1000.0,
            d.iops
        ));
    }
    who.devices = devices.iter().map(|d| who_device(d)).collect();
    for (ci, kind, limit, r) in at_limit.iter().take(3) {
        let name = ci
            .name
            .clone()
            .unwrap_or_else(|| ci.id.chars().take(12).collect());
        let dev = node
            .view
            .device_name(ci.major, ci.minor)
            .map_or_else(|| format!("{}:{}", ci.major, ci.minor), str::to_string);
        e.push(ev(
            "container_io",
            Some(&format!("{name} {kind} {dev}")),
            *r,
            th.x(c.limit_share) * limit,
            if kind.ends_with("bps") {
                "bytes/s"
            } else {
                "1/s"
            },
        ));
        parts.push(format!(
            "container {name} at its {kind} limit on {dev}: {r:.0} of {limit:.0}/s"
        ));
        if !who.containers.iter().any(|w| w.id == ci.id) {
            let d = node.view.dstate_threads_of(&ci.id);
            who.containers.insert(0, container(node, &ci.id, d));
        }
        if !who
            .devices
            .iter()
            .any(|w| (w.major, w.minor) == (ci.major, ci.minor))
        {
            who.devices.push(WhoDevice {
                name: dev.clone(),
                major: ci.major,
                minor: ci.minor,
                volume_id: node.volume_of(&dev).map(str::to_string),
            });
        }
    }
    if !who.groups.is_empty() {
        parts.push(format!("waiting: {}", names(&who.groups)));
    }
    let full = t.psi[1][1].unwrap_or(0.0);
    let severity = if full >= c.io_full * 4.0 {
        Severity::Critical
    } else {
        Severity::Warning
    };
    Some(finding(
        Cause::DiskSaturated,
        severity,
        parts.join("; "),
        e,
        who,
    ))
}

pub(super) fn cpu(t: &Tick, node: &Node, th: &Th<'_>) -> Option<Finding> {
    let c = th.c;
    let some = t.psi[0][0]?;
    let running = t.procs_running? as f64;
    let per_cpu = running / t.cpus.max(1.0);
    if some < th.x(c.cpu_some) || per_cpu < th.x(c.run_queue_per_cpu) {
        return None;
    }
    let mut e = vec![
        ev("psi_cpu_some", None, some, th.x(c.cpu_some), "ratio"),
        ev(
            "run_queue_per_cpu",
            None,
            per_cpu,
            th.x(c.run_queue_per_cpu),
            "tasks",
        ),
    ];
    let starts = node.view.containers.starts;
    e.push(ev(
        "container_starts_total",
        None,
        starts as f64,
        0.0,
        "containers",
    ));
    let io = t.psi[1][0].unwrap_or(0.0);
    let summary = format!(
        "Not I/O: {running:.0} runnable tasks on {:.0} CPUs wait for a CPU {} of the time (I/O pressure {}){}",
        t.cpus,
        pct(some),
        pct(io),
        if node.view.containers.enabled {
            format!(", {starts} container starts so far")
        } else {
            String::new()
        }
    );
    Some(finding(
        Cause::Cpu,
        Severity::Warning,
        summary,
        e,
        Who::default(),
    ))
}
