//! The agent's own health: build info, per-source read duration, errors, stuck flags and
//! snapshot ages, and config reload status. Bounded: one row per source (a fixed list).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use stallwatch_collector::sample::SourceStatus;

use crate::node::Node;

use super::table::{counter, family, flag, gauge, labelled, rows, Row, NONE, SECONDS};

/// Reload outcome, written by the reload task, read by scrapes.
#[derive(Debug)]
pub struct ReloadStatus {
    pub successful: AtomicBool,
    /// Seconds since the epoch of the last successful (re)load, as f64 bits.
    pub last_success: AtomicU64,
}

impl ReloadStatus {
    pub fn new() -> Self {
        let s = ReloadStatus {
            successful: AtomicBool::new(true),
            last_success: AtomicU64::new(0),
        };
        s.mark(true);
        s
    }

    pub fn mark(&self, ok: bool) {
        self.successful.store(ok, Ordering::Relaxed);
        if ok {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            self.last_success.store(now.to_bits(), Ordering::Relaxed);
        }
    }
}

impl Default for ReloadStatus {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug)]
pub struct SelfCollector {
    pub node: Arc<ArcSwap<Node>>,
    pub reload: Arc<ReloadStatus>,
    pub start_time: f64,
}

/// The agent's start and its configuration reloads (`agent/src/reload.rs`).
pub const AGENT: &[Row<SelfCollector>] = &[
    gauge(
        "start_time",
        "Start time of the agent, seconds since the epoch.",
        SECONDS,
        |c| Some(c.start_time),
    ),
    gauge(
        "config_last_reload_successful",
        "Whether the last configuration (re)load succeeded (1) or failed and the previous config is still running (0).",
        NONE,
        |c| flag(c.reload.successful.load(Ordering::Relaxed)),
    ),
    gauge(
        "config_last_reload_success_timestamp",
        "Time of the last successful configuration (re)load, seconds since the epoch.",
        SECONDS,
        |c| Some(f64::from_bits(c.reload.last_success.load(Ordering::Relaxed))),
    ),
];

/// A source's health as of the scrape: whether it is stuck and how old its value is are
/// measured against the scrape's clock.
pub struct SourceNow {
    pub duration: Option<f64>,
    pub stuck: bool,
    /// `None` before the first good read.
    pub available: Option<bool>,
    pub cpu: f64,
    pub reads: u64,
    pub age: Option<f64>,
}

impl SourceNow {
    fn of(s: &SourceStatus, now: Instant) -> Self {
        SourceNow {
            duration: s.last_duration.map(|d| d.as_secs_f64()),
            stuck: s.stuck(now),
            available: s.last_success.map(|_| !s.missing),
            cpu: s.cpu.as_secs_f64(),
            reads: s.reads,
            age: s.age(now).map(|a| a.as_secs_f64()),
        }
    }
}

/// `collector/src/sample/status.rs`. The errors by kind sit between this row and [`HEALTH`].
pub const DURATION: Row<SourceNow> = gauge(
    "source_duration",
    "Wall time of the source's last completed read.",
    SECONDS,
    |s| s.duration,
);

pub const HEALTH: &[Row<SourceNow>] = &[
    gauge(
        "source_stuck",
        "1 while a read of the source has been outstanding longer than its timeout (sampler.source_timeout, threads.timeout, containers.source_timeout, a probe's timeout).",
        NONE,
        |s| flag(s.stuck),
    ),
    gauge(
        "source_available",
        "0 when the source's file does not exist on this host (its metrics are absent).",
        NONE,
        |s| s.available.and_then(flag),
    ),
    counter(
        "source_cpu",
        "CPU time the source's reader thread spent in completed reads (RUSAGE_THREAD); divide by source_reads_total for CPU per read.",
        SECONDS,
        |s| Some(s.cpu),
    ),
    counter(
        "source_reads",
        "Completed reads of the source (successful or not).",
        NONE,
        |s| Some(s.reads as f64),
    ),
    gauge(
        "snapshot_age",
        "Age of the source's last completed read; keeps growing while the source is stuck.",
        SECONDS,
        |s| s.age,
    ),
];

impl Collector for SelfCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut e;
        let mut m = e.encode_descriptor(
            "build",
            "Build information; value is 1.",
            None,
            MetricType::Info,
        )?;
        let labels: [(&str, &str); 3] = [
            ("version", env!("CARGO_PKG_VERSION")),
            (
                "revision",
                option_env!("STALLWATCH_REVISION").unwrap_or("unknown"),
            ),
            ("target_os", std::env::consts::OS),
        ];
        m.encode_info(&labels)?;
        rows(e, AGENT, self)?;

        let node = self.node.load();
        let all: Vec<&SourceStatus> = node.sources();
        let now = Instant::now();
        let health: Vec<SourceNow> = all.iter().map(|s| SourceNow::of(s, now)).collect();
        let items: Vec<_> = all
            .iter()
            .map(|s| vec![("source", s.name.clone())])
            .zip(&health)
            .collect();
        labelled(e, &[DURATION], &items)?;
        family(
            e,
            "source_errors",
            "Failed reads of the source, by kind (parse, permission, io).",
            NONE,
            MetricType::Counter,
            all.iter().flat_map(|s| {
                s.errors
                    .iter()
                    .map(move |(k, n)| ([("source", &*s.name), ("kind", k.as_str())], n as f64))
            }),
        )?;
        labelled(e, HEALTH, &items)
    }
}
