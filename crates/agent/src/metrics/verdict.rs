//! The verdict as metrics: `stallwatch_stalled`, `stallwatch_verdict{cause}` (every cause
//! always present, 0 or 1), `stallwatch_verdict_seconds_total{cause}`,
//! `stallwatch_incidents_total{cause}`, and the recorder's own `stallwatch_incident_records`
//! and `stallwatch_incident_writes_total{outcome}`. Bounded: 8 causes, 4 outcomes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use super::table::{family, single, NONE, SECONDS};
use crate::recorder::{active, Analysis};
use crate::verdict::Cause;

#[derive(Debug)]
pub struct VerdictCollector {
    pub analysis: Arc<Analysis>,
}

impl Collector for VerdictCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let p = self.analysis.published();
        let e = &mut e;
        single(
            e,
            "stalled",
            "1 while the node is stalled (any verdict cause active), else 0.",
            NONE,
            MetricType::Gauge,
            if p.verdict.stalled { 1.0 } else { 0.0 },
        )?;
        let by_cause = |f: &dyn Fn(Cause) -> f64| {
            Cause::ALL
                .iter()
                .map(|c| ([("cause", c.as_str())], f(*c)))
                .collect::<Vec<_>>()
        };
        family(
            e,
            "verdict",
            "1 for each cause active in the verdict now (cause=\"none\" while not stalled), else 0; every cause is always present.",
            NONE,
            MetricType::Gauge,
            by_cause(&|c| if active(&p, c) { 1.0 } else { 0.0 }),
        )?;
        family(
            e,
            "verdict",
            "Seconds spent with each cause active (cause=\"none\": not stalled); causes overlap, so they may sum to more than the time elapsed.",
            SECONDS,
            MetricType::Counter,
            by_cause(&|c| p.seconds[c.index()]),
        )?;
        family(
            e,
            "incidents",
            "Incident records opened (stalls that lasted incident.min_duration), by the cause that began them.",
            NONE,
            MetricType::Counter,
            Cause::DETECTED
                .iter()
                .map(|c| ([("cause", c.as_str())], p.incidents[c.index()] as f64)),
        )?;
        single(
            e,
            "incident_records",
            "Incident records in memory now (at most incident.keep closed ones plus the open one).",
            NONE,
            MetricType::Gauge,
            p.records as f64,
        )?;
        let a = &self.analysis;
        single(
            e,
            "verdict_evaluations",
            "Verdict evaluations run (one per host tick).",
            NONE,
            MetricType::Counter,
            a.evaluations.load(Ordering::Relaxed) as f64,
        )?;
        single(
            e,
            "verdict_cpu",
            "CPU time of the verdict and the flight recorder (evaluate, record, publish), on the host sampler's thread.",
            SECONDS,
            MetricType::Counter,
            f64::from_bits(a.cpu_seconds.load(Ordering::Relaxed)),
        )?;
        let w = &self.analysis.writes;
        family(
            e,
            "incident_writes",
            "Incident records written to incident.dir, by outcome: ok, failed, dropped (a previous writer still stuck on the disk, or the queue full) and timeout (the writer did not finish within 10 s).",
            NONE,
            MetricType::Counter,
            w.by_outcome()
                .into_iter()
                .map(|(o, n)| ([("outcome", o)], n as f64)),
        )?;
        Ok(())
    }
}
