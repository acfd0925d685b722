//! The sync-write probe: `dd oflag=sync` as metrics. The latency histogram says how slow a
//! synchronous write is; the in-flight age says a write is hung *now*, before it returns (the
//! seed incident's `dd` never did).

use std::borrow::Cow;
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use stallwatch_collector::sample::probe::BUCKETS;

use crate::node::Node;

use super::{family, Labels};

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
        let snaps: &[_] = &node.view.probes;
        if snaps.is_empty() {
            return Ok(());
        }
        let secs = Unit::Seconds;
        let now = Instant::now();
        let mut m = e.encode_descriptor(
            "probe_write",
            "Duration of the probe's O_DSYNC write of `size` bytes (every write that returned, failed or not).",
            Some(&secs),
            MetricType::Histogram,
        )?;
        for s in snaps {
            let labels: Labels<'_> = vec![("path", Cow::Borrowed(s.path.as_str()))];
            // The snapshot's counts are cumulative; the encoder wants per-bucket counts.
            let mut prev = 0;
            let mut buckets: Vec<(f64, u64)> = BUCKETS
                .iter()
                .zip(&s.bucket_counts)
                .map(|(le, c)| {
                    let d = c.saturating_sub(prev);
                    prev = *c;
                    (*le, d)
                })
                .collect();
            buckets.push((f64::INFINITY, s.count.saturating_sub(prev)));
            m.encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(s.sum, s.count, &buckets, None)?;
        }
        family(
            &mut e,
            "probe_in_flight",
            "Age of the probe's running write; 0 when idle. A hung write keeps growing here while it hangs.",
            Some(&secs),
            MetricType::Gauge,
            snaps.iter().map(|s| {
                let age = s.in_flight_since.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
                (vec![("path", Cow::Borrowed(s.path.as_str()))], age)
            }),
        )?;
        family(
            &mut e,
            "probe_failures",
            "Probe failures by reason: timeout (still running after the timeout), enospc, eio, permission, readonly, notfound, other.",
            None,
            MetricType::Counter,
            snaps.iter().flat_map(|s| {
                s.failures.iter().map(move |(r, n)| {
                    (vec![("path", Cow::Borrowed(s.path.as_str())), ("reason", Cow::Borrowed(*r))], *n as f64)
                })
            }),
        )?;
        family(
            &mut e,
            "probe_last_success_timestamp",
            "When the probe's last write succeeded, seconds since the epoch.",
            Some(&secs),
            MetricType::Gauge,
            snaps.iter().filter_map(|s| {
                let t = s.last_success?.duration_since(std::time::UNIX_EPOCH).ok()?;
                Some((
                    vec![("path", Cow::Borrowed(s.path.as_str()))],
                    t.as_secs_f64(),
                ))
            }),
        )?;
        Ok(())
    }
}
