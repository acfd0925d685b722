//! Who is stuck: thread states and D-state threads by group and wait channel, from the
//! [`ThreadSnapshot`]. Ages are computed at scrape time from when each thread was first seen in
//! D, so `dstate_longest_seconds` keeps growing between walks while the thread stays stuck.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::{Counter, Gauge};
use prometheus_client::registry::Unit;
use stallwatch_collector::sample::ThreadSnapshot;

use crate::node::Node;

use super::{family, single, Labels};

#[derive(Debug)]
pub struct ThreadsCollector {
    pub node: Arc<ArcSwap<Node>>,
}

impl Collector for ThreadsCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let node = self.node.load();
        let s: &ThreadSnapshot = &node.view.threads;
        if !s.enabled || s.status.last_success.is_none() {
            return Ok(());
        }
        let secs = Some(&Unit::Seconds);
        let now = Instant::now();
        // The state letter is one byte of a kernel-formatted field: a bounded label set.
        family(&mut e, "threads", "Threads by state letter (R running, S sleeping, D uninterruptible, Z zombie, T stopped, I idle …) at the last walk.", None, Gauge,
            s.states.iter().map(|(c, n)| (vec![("state", Cow::Owned(c.to_string()))], *n as f64)))?;
        fn grp(n: &str) -> Labels<'_> {
            vec![("group", Cow::Borrowed(n))]
        }
        family(&mut e, "dstate_threads", "Threads in D state at the last walk, by group (top groups by D time; the rest as group=\"other\").", None, Gauge,
            s.groups.iter().map(|g| (grp(&g.name), g.d_now as f64)))?;
        family(&mut e, "dstate", "D-state thread-seconds, integrated across walks: rate() is the average number of threads in D.", secs, Counter,
            s.groups.iter().map(|g| (grp(&g.name), g.d_seconds)))?;
        family(&mut e, "dstate_longest", "Longest current uninterrupted D state of any thread of the group (a lower bound: first walk that saw it); 0 when none is in D.", secs, Gauge,
            s.groups.iter().map(|g| (grp(&g.name), g.longest_since.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64()))))?;
        family(
            &mut e,
            "dstate_episodes",
            "Threads that entered D state (a new thread id + start time seen in D), by group.",
            None,
            Counter,
            s.groups.iter().map(|g| (grp(&g.name), g.episodes as f64)),
        )?;
        family(
            &mut e,
            "dstate_threads_by_wchan",
            "Threads in D state by kernel wait channel (top N; the rest as wchan=\"other\").",
            None,
            Gauge,
            s.wchans
                .iter()
                .map(|(w, n)| (vec![("wchan", Cow::Borrowed(w.as_str()))], *n as f64)),
        )?;
        single(&mut e, "thread_walk_interval", "Cadence of the thread walk in force: threads.interval, or threads.fast_interval while a stall is suspected.", secs, Gauge, s.current_interval.as_secs_f64())?;
        single(&mut e, "stall_suspected", "1 while a stall is suspected (procs_blocked > 0, io PSI above threads.stall_psi_threshold, or D threads on the last walk).", None, Gauge, if s.suspected { 1.0 } else { 0.0 })?;
        Ok(())
    }
}
