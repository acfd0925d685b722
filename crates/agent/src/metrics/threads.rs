//! Who is stuck: thread states and D-state threads by group and wait channel, from the
//! [`ThreadSnapshot`]. Ages are computed at scrape time from when each thread was first seen in
//! D, so `dstate_longest_seconds` keeps growing between walks while the thread stays stuck.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::Gauge;
use stallwatch_collector::sample::dstate::GroupRow;
use stallwatch_collector::sample::ThreadSnapshot;

use crate::node::Node;

use super::table::{counter, family, flag, gauge, labelled, rows, Row, NONE, SECONDS};

#[derive(Debug)]
pub struct ThreadsCollector {
    pub node: Arc<ArcSwap<Node>>,
}

/// A process group as of the scrape: the longest D is measured against the scrape's clock.
pub struct GroupNow {
    pub d_now: u64,
    pub d_seconds: f64,
    pub longest_seconds: f64,
    pub episodes: u64,
}

impl GroupNow {
    fn of(g: &GroupRow, now: Instant) -> Self {
        GroupNow {
            d_now: g.d_now,
            d_seconds: g.d_seconds,
            longest_seconds: g
                .longest_since
                .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64()),
            episodes: g.episodes,
        }
    }
}

/// D-state accounting per group (`collector/src/sample/threads.rs`).
pub const GROUP: &[Row<GroupNow>] = &[
    gauge(
        "dstate_threads",
        "Threads in D state at the last walk, by group (top groups by D time; the rest as group=\"other\").",
        NONE,
        |g| Some(g.d_now as f64),
    ),
    counter(
        "dstate",
        "D-state thread-seconds, integrated across walks: rate() is the average number of threads in D.",
        SECONDS,
        |g| Some(g.d_seconds),
    ),
    gauge(
        "dstate_longest",
        "Longest current uninterrupted D state of any thread of the group (a lower bound: first walk that saw it); 0 when none is in D.",
        SECONDS,
        |g| Some(g.longest_seconds),
    ),
    counter(
        "dstate_episodes",
        "Threads that entered D state (a new thread id + start time seen in D), by group.",
        NONE,
        |g| Some(g.episodes as f64),
    ),
];

/// The walk's own state.
pub const WALK: &[Row<ThreadSnapshot>] = &[
    gauge(
        "thread_walk_interval",
        "Cadence of the thread walk in force: threads.interval, or threads.fast_interval while a stall is suspected.",
        SECONDS,
        |s| Some(s.current_interval.as_secs_f64()),
    ),
    gauge(
        "stall_suspected",
        "1 while a stall is suspected (procs_blocked > 0, io PSI above threads.stall_psi_threshold, or D threads on the last walk).",
        NONE,
        |s| flag(s.suspected),
    ),
];

impl Collector for ThreadsCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let node = self.node.load();
        let s: &ThreadSnapshot = &node.view.threads;
        if !s.enabled || s.status.last_success.is_none() {
            return Ok(());
        }
        let e = &mut e;
        let now = Instant::now();
        // The state letter is one byte of a kernel-formatted field: a bounded label set.
        family(
            e,
            "threads",
            "Threads by state letter (R running, S sleeping, D uninterruptible, Z zombie, T stopped, I idle …) at the last walk.",
            NONE,
            Gauge,
            s.states
                .iter()
                .map(|(c, n)| (vec![("state", Cow::Owned(c.to_string()))], *n as f64)),
        )?;
        let groups: Vec<GroupNow> = s.groups.iter().map(|g| GroupNow::of(g, now)).collect();
        let items: Vec<_> = s
            .groups
            .iter()
            .map(|g| vec![("group", Cow::Borrowed(&*g.name))])
            .zip(&groups)
            .collect();
        labelled(e, GROUP, &items)?;
        family(
            e,
            "dstate_threads_by_wchan",
            "Threads in D state by kernel wait channel (top N; the rest as wchan=\"other\").",
            NONE,
            Gauge,
            s.wchans
                .iter()
                .map(|(w, n)| ([("wchan", w.as_str())], *n as f64)),
        )?;
        rows(e, WALK, s)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn longest_d_is_measured_at_the_scrape_and_zero_when_none_is_stuck() {
        let now = Instant::now();
        let stuck = GroupRow {
            name: "kworker".into(),
            longest_since: Some(now - Duration::from_secs(9)),
            ..GroupRow::default()
        };
        assert_eq!(GroupNow::of(&stuck, now).longest_seconds, 9.0);
        assert_eq!(GroupNow::of(&GroupRow::default(), now).longest_seconds, 0.0);
    }
}
