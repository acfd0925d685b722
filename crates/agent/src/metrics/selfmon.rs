//! The agent's own health: build info, per-source read duration, errors, stuck flags and
//! snapshot ages, and config reload status. Bounded: one row per source (a fixed list).

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::{self, Counter, Gauge};
use prometheus_client::registry::Unit;
use stallwatch_collector::sample::SourceStatus;

use crate::node::Node;

use super::{family, single, Labels};

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

impl Collector for SelfCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let secs = Some(&Unit::Seconds);
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
        single(
            &mut e,
            "start_time",
            "Start time of the agent, seconds since the epoch.",
            secs,
            Gauge,
            self.start_time,
        )?;
        single(
            &mut e,
            "config_last_reload_successful",
            "Whether the last configuration (re)load succeeded (1) or failed and the previous config is still running (0).",
            None,
            Gauge,
            if self.reload.successful.load(Ordering::Relaxed) { 1.0 } else { 0.0 },
        )?;
        single(
            &mut e,
            "config_last_reload_success_timestamp",
            "Time of the last successful configuration (re)load, seconds since the epoch.",
            secs,
            Gauge,
            f64::from_bits(self.reload.last_success.load(Ordering::Relaxed)),
        )?;

        let node = self.node.load();
        let all: Vec<&SourceStatus> = node.view.sources();
        let now = Instant::now();
        let src = |name: &Cow<'static, str>| -> Labels<'static> { vec![("source", name.clone())] };
        family(
            &mut e,
            "source_duration",
            "Wall time of the source's last completed read.",
            secs,
            Gauge,
            all.iter()
                .filter_map(|s| s.last_duration.map(|d| (src(&s.name), d.as_secs_f64()))),
        )?;
        family(
            &mut e,
            "source_errors",
            "Failed reads of the source, by kind (parse, permission, io).",
            None,
            Counter,
            all.iter().flat_map(|s| {
                s.errors.iter().map(move |(k, n)| {
                    (
                        vec![
                            ("source", s.name.clone()),
                            ("kind", Cow::Borrowed(k.as_str())),
                        ],
                        n as f64,
                    )
                })
            }),
        )?;
        family(
            &mut e,
            "source_stuck",
            "1 while a read of the source has been outstanding longer than its timeout (sampler.source_timeout, threads.timeout).",
            None,
            Gauge,
            all
                .iter()
                .map(|s| (src(&s.name), if s.stuck(now) { 1.0 } else { 0.0 })),
        )?;
        family(
            &mut e,
            "source_available",
            "0 when the source's file does not exist on this host (its metrics are absent).",
            None,
            Gauge,
            all.iter()
                .filter(|s| s.last_success.is_some())
                .map(|s| (src(&s.name), if s.missing { 0.0 } else { 1.0 })),
        )?;
        family(
            &mut e,
            "source_cpu",
            "CPU time the source's reader thread spent in completed reads (RUSAGE_THREAD); divide by source_reads_total for CPU per read.",
            secs,
            Counter,
            all.iter().map(|s| (src(&s.name), s.cpu.as_secs_f64())),
        )?;
        family(
            &mut e,
            "source_reads",
            "Completed reads of the source (successful or not).",
            None,
            Counter,
            all.iter().map(|s| (src(&s.name), s.reads as f64)),
        )?;
        family(
            &mut e,
            "snapshot_age",
            "Age of the source's last completed read; keeps growing while the source is stuck.",
            secs,
            Gauge,
            all.iter()
                .filter_map(|s| s.age(now).map(|a| (src(&s.name), a.as_secs_f64()))),
        )?;
        Ok(())
    }
}
