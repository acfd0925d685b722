//! The sync-write probe: `dd oflag=sync` as metrics. The latency histogram says how slow a
//! synchronous write is; the in-flight age says a write is hung *now*, before it returns (the
//! seed incident's `dd` never did).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use stallwatch_collector::sample::probe::ProbeSnapshot;

use super::table::{family, gauge, histograms, labelled, Labels, Row, NONE, SECONDS};
use crate::node::Node;

pub struct ProbeCollector {
    /// The joined node; its probe states were taken at the last join (at least every second,
    /// from the probe sampler's last publish, which never waits on a write).
    pub node: Arc<ArcSwap<Node>>,
}

impl std::fmt::Debug for ProbeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProbeCollector")
    }
}

impl Collector for ProbeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let node = self.node.load();
        encode_probes(&mut e, &node.view.probes, Instant::now())
    }
}

/// A probe as of the scrape: its ages are measured against the scrape's clock.
pub struct ProbeNow {
    /// Age of the running write; 0 when idle.
    pub in_flight_seconds: f64,
    /// Unix time of the last successful write.
    pub last_success: Option<f64>,
}

impl ProbeNow {
    fn of(s: &ProbeSnapshot, now: Instant) -> Self {
        ProbeNow {
            in_flight_seconds: s
                .in_flight_since
                .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64()),
            last_success: s
                .last_success
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64()),
        }
    }
}

/// `collector/src/sample/probe/sampler.rs`. The failures by reason sit between these two rows.
pub const IN_FLIGHT: Row<ProbeNow> = gauge(
    "probe_in_flight",
    "Age of the probe's running write; 0 when idle. A hung write keeps growing here while it hangs.",
    SECONDS,
    |p| Some(p.in_flight_seconds),
);

pub const LAST_SUCCESS: Row<ProbeNow> = gauge(
    "probe_last_success_timestamp",
    "When the probe's last write succeeded, seconds since the epoch.",
    SECONDS,
    |p| p.last_success,
);

fn path(s: &ProbeSnapshot) -> Labels<'_> {
    vec![("path", Cow::Borrowed(s.path.as_str()))]
}

/// The probe families for these snapshots; `now` dates the in-flight ages.
pub fn encode_probes(
    e: &mut DescriptorEncoder<'_>,
    snaps: &[ProbeSnapshot],
    now: Instant,
) -> std::fmt::Result {
    histograms(
        e,
        "probe_write",
        "Duration of the probe's O_DSYNC write of `size` bytes (every write that returned, failed or not).",
        SECONDS,
        snaps
            .iter()
            .map(|s| (path(s), s.sum, s.count, Cow::Borrowed(s.buckets.as_slice()))),
    )?;
    let ages: Vec<ProbeNow> = snaps.iter().map(|s| ProbeNow::of(s, now)).collect();
    let items: Vec<_> = snaps.iter().map(path).zip(&ages).collect();
    labelled(e, &[IN_FLIGHT], &items)?;
    family(
        e,
        "probe_failures",
        "Probe failures by reason: timeout (still running after the timeout), enospc, eio, permission, readonly, notfound, other.",
        NONE,
        MetricType::Counter,
        snaps.iter().flat_map(|s| {
            s.failures
                .iter()
                .map(move |(r, n)| ([("path", s.path.as_str()), ("reason", *r)], *n as f64))
        }),
    )?;
    labelled(e, &[LAST_SUCCESS], &items)
}
