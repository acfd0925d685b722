//! Host metrics from the [`HostSnapshot`]: `/proc/stat` and `/proc/loadavg` here, then PSI
//! (`pressure.rs`), memory and writeback (`memory.rs`) and disks (`disks.rs`), in that order.
//! Names and meanings are listed in docs/metrics.md.

use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use stallwatch_collector::proc::loadavg::LoadAvg;
use stallwatch_collector::proc::stat::Stat;
use stallwatch_collector::proc::sys_kernel::HungTasks;
use stallwatch_collector::sample::HostSnapshot;

use crate::node::Node;

use super::table::{counter, family, gauge, num, rows, Row, NONE, SECONDS};
use super::{disks, memory, pressure};

#[derive(Debug)]
pub struct HostCollector {
    pub node: Arc<ArcSwap<Node>>,
}

/// `/proc/stat` (`collector/src/proc/stat.rs`); CPU time by mode is [`cpu`].
pub const STAT: &[Row<Stat>] = &[
    gauge(
        "procs_blocked",
        "Tasks blocked on I/O now (procs_blocked of /proc/stat).",
        NONE,
        |s| num(s.procs_blocked),
    ),
    gauge(
        "procs_running",
        "Tasks runnable now (procs_running of /proc/stat).",
        NONE,
        |s| num(s.procs_running),
    ),
    counter(
        "context_switches",
        "Context switches since boot.",
        NONE,
        |s| num(s.ctxt),
    ),
    counter(
        "forks",
        "Processes and threads created since boot.",
        NONE,
        |s| num(s.forks),
    ),
    gauge(
        "boot_time",
        "Boot time, seconds since the epoch.",
        SECONDS,
        |s| num(s.btime),
    ),
];

/// What the sampler keeps of `procs_blocked` between scrapes (`collector/src/sample/host.rs`).
pub const BLOCKED: &[Row<HostSnapshot>] = &[
    gauge(
        "procs_blocked_peak",
        "Maximum procs_blocked seen over the peak window.",
        NONE,
        |s| s.peaks.procs_blocked,
    ),
    counter(
        "procs_blocked",
        "Integral of procs_blocked over time: blocked-task-seconds, sampled every interval.",
        SECONDS,
        |s| {
            let blocked = s.stat.as_ref()?.procs_blocked;
            blocked.map(|_| s.integrals.procs_blocked_seconds)
        },
    ),
];

/// `/proc/loadavg` (`collector/src/proc/loadavg.rs`).
pub const LOADAVG: &[Row<LoadAvg>] = &[
    gauge(
        "load1",
        "1-minute load average (runnable plus D-state tasks).",
        NONE,
        |l| Some(l.load1),
    ),
    gauge("load5", "5-minute load average.", NONE, |l| Some(l.load5)),
    gauge("load15", "15-minute load average.", NONE, |l| {
        Some(l.load15)
    }),
    gauge(
        "sched_runnable_entities",
        "Runnable scheduling entities now (loadavg).",
        NONE,
        |l| Some(l.runnable as f64),
    ),
    gauge(
        "sched_entities",
        "Scheduling entities that exist now (loadavg).",
        NONE,
        |l| Some(l.entities as f64),
    ),
];

/// The kernel's hung-task detector (`collector/src/proc/sys_kernel.rs`).
pub const HUNG: &[Row<HungTasks>] = &[
    counter(
        "hung_tasks_detected",
        "Tasks the kernel found in D longer than hung_task_timeout_secs, counted at every check (hung_task_detect_count, kernel >= 6.13).",
        NONE,
        |h| num(h.detect_count),
    ),
    gauge(
        "hung_task_timeout",
        "Time in D after which the kernel reports a task as hung; 0 when the detector is off (hung_task_timeout_secs).",
        SECONDS,
        |h| num(h.timeout_seconds),
    ),
];

/// CPU time of all CPUs by mode: one family, a sample per mode, ticks turned into seconds.
fn cpu(e: &mut DescriptorEncoder<'_>, st: &Stat, clock_ticks: u64) -> std::fmt::Result {
    let Some(cpu) = st.cpu else { return Ok(()) };
    let hz = clock_ticks.max(1) as f64;
    family(
        e,
        "cpu",
        "CPU time of all CPUs by mode (iowait and steal included).",
        SECONDS,
        MetricType::Counter,
        cpu.modes().map(|(m, t)| ([("mode", m)], t as f64 / hz)),
    )
}

impl Collector for HostCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let node = self.node.load();
        let s: &HostSnapshot = &node.view.host;
        let e = &mut e;
        if let Some(st) = &s.stat {
            rows(e, STAT, st)?;
            cpu(e, st, s.clock_ticks)?;
        }
        rows(e, BLOCKED, s)?;
        if let Some(l) = &s.loadavg {
            rows(e, LOADAVG, l)?;
        }
        if let Some(h) = &s.hung_tasks {
            rows(e, HUNG, h)?;
        }
        pressure::encode_host(e, s)?;
        memory::encode(e, s)?;
        disks::encode(e, &node.view)
    }
}
