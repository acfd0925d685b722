//! Every D episode, from the eBPF source (`stallwatch_collector::bpf`): per group, per
//! container and per wait channel, with the same bounded label sets as the walk's rows (top
//! groups and wait channels by time, the rest as `other`; containers as the container pass
//! exports them). Nothing is written while the source is off, except `stallwatch_bpf_active 0`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::{Counter, Gauge};
use stallwatch_collector::bpf::{EpisodeSnapshot, Hist};

use crate::node::Node;

use super::containers::base;
use super::table::{family, histograms, single, Labels, NONE, SECONDS};

#[derive(Debug)]
pub struct EpisodesCollector {
    pub node: Arc<ArcSwap<Node>>,
}

/// Exported bucket bounds: 2^k µs for k = 10, 14, 18, 22 (≈ 1 ms, 16 ms, 262 ms, 4.2 s), a
/// factor of 16 apart, each exactly a bound of the kernel's log2 histogram: few series per
/// row, and no episode counted in the wrong bucket.
pub const BOUNDS_LOG2: [usize; 4] = [10, 14, 18, 22];

/// Per-bucket (not cumulative) counts with their upper bounds in seconds, `+Inf` last.
pub fn buckets(h: &Hist) -> Vec<(f64, u64)> {
    let mut out = Vec::with_capacity(BOUNDS_LOG2.len() + 1);
    let mut below = 0;
    for k in BOUNDS_LOG2 {
        let c = h.below(k);
        out.push(((1u64 << k) as f64 / 1e6, c - below));
        below = c;
    }
    out.push((f64::INFINITY, h.count.saturating_sub(below)));
    out
}

/// A histogram row as `table::histograms` takes it: labels, sum, count, buckets.
type HistRow<'a> = (Labels<'a>, f64, u64, Cow<'a, [(f64, u64)]>);

fn hist_rows<'a>(items: impl IntoIterator<Item = (Labels<'a>, &'a Hist)>) -> Vec<HistRow<'a>> {
    items
        .into_iter()
        .map(|(l, h)| (l, h.seconds, h.count, Cow::Owned(buckets(h))))
        .collect()
}

impl Collector for EpisodesCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let node = self.node.load();
        let s: &EpisodeSnapshot = &node.view.episodes;
        let e = &mut e;
        single(
            e,
            "bpf_active",
            "1 while the eBPF episode source is attached and drained ([bpf]); 0 when it is off (stallwatch doctor and the log say why).",
            NONE,
            Gauge,
            if s.active { 1.0 } else { 0.0 },
        )?;
        if !s.active {
            return Ok(());
        }
        histograms(
            e,
            "dstate_episode",
            "Episodes of D state (uninterruptible sleep) that ended, by group, and how long each lasted: every episode, from the eBPF source.",
            SECONDS,
            hist_rows(
                s.groups
                    .iter()
                    .map(|(g, h)| (vec![("group", Cow::Borrowed(&**g))], h)),
            ),
        )?;
        // Containers as the container pass exports them (same labels), when episodes named them.
        let by_id: HashMap<&str, &Hist> = s
            .containers
            .iter()
            .map(|(i, h)| (i.container_id.as_str(), h))
            .collect();
        let containers = &node.view.containers;
        histograms(
            e,
            "container_dstate_episode",
            "Episodes of D state of the container's threads that ended, and how long each lasted (eBPF source).",
            SECONDS,
            hist_rows(containers.containers.iter().filter_map(|r| {
                by_id
                    .get(r.identity.container_id.as_str())
                    .map(|h| (base(r), *h))
            })),
        )?;
        family(
            e,
            "dstate_episode_wchan",
            "Seconds in D state of the episodes that ended, by kernel wait channel (top N; the rest as wchan=\"other\"; \"unknown\" without CAP_SYSLOG).",
            SECONDS,
            Counter,
            s.wchans.iter().map(|(w, h)| ([("wchan", &**w)], h.seconds)),
        )?;
        let c = &s.counters;
        family(
            e,
            "bpf_map_full",
            "Times an eBPF map was full: in_flight (an episode not tracked), aggregates (an episode counted without its labels, as group=\"other\"), long_episodes (a long episode's stack dropped).",
            NONE,
            Counter,
            [
                ("in_flight", c.in_flight_full),
                ("aggregates", c.aggregate_full),
                ("long_episodes", c.long_lost),
            ]
            .map(|(m, n)| ([("map", m)], n as f64)),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_exact_bounds_of_the_kernel_histogram() {
        let mut h = Hist::default();
        h.buckets[0] = 1; // < 2 µs
        h.buckets[9] = 2; // [512 µs, 1024 µs)
        h.buckets[10] = 3; // [1024 µs, 2048 µs)
        h.buckets[25] = 4; // ~ 33 s
        h.count = 10;
        let b = buckets(&h);
        assert_eq!(
            b,
            vec![
                (0.001024, 3),
                (0.016384, 3),
                (0.262144, 0),
                (4.194304, 0),
                (f64::INFINITY, 4)
            ]
        );
    }
}
