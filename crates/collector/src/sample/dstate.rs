//! The D-state tracker, pure: successive walks ([`crate::proc::tasks::Walk`]) become
//! per-thread ages (how long each thread has been stuck, from the first walk that saw it in D)
//! and per-group integrals (D thread-seconds, episodes), with bounded labels.
//!
//! Bounded labels: `group` is the comm with per-CPU/instance decorations removed (or a
//! configured rule); only the top `top_groups` groups by D time are exported by name, the rest
//! are summed as `group="other"`, which never decreases; wait channels likewise. A process can
//! invent any number of comms: at most `MAX_TRACKED_GROUPS` are tracked internally.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use regex::Regex;

use crate::cgroup::Identity;
use crate::proc::tasks::Walk;

/// A configured grouping rule: comms matching `regex` are grouped as `name`.
#[derive(Debug, Clone)]
pub struct GroupRule {
    pub regex: Regex,
    pub name: String,
}

/// The group of a thread whose comm is empty (`prctl(PR_SET_NAME, "")` makes one).
pub const EMPTY: &str = "(empty)";

/// The group a comm belongs to: the first matching rule, else the comm with decorations
/// removed. Everything after the first `/` is an instance (`kworker/u30:2`, `jbd2/sda1-8`,
/// `ksoftirqd/0`); kernel threads without a `/` lose a trailing number (`kswapd0`). User
/// comms are otherwise kept as they are: a name like `worker-3` may mean something, and the
/// top-N fold bounds the label set anyway.
pub fn group_of(comm: &str, kernel_thread: bool, rules: &[GroupRule]) -> String {
    if let Some(r) = rules.iter().find(|r| r.regex.is_match(comm)) {
        return r.name.clone();
    }
    let base = match comm.split_once('/') {
        Some((base, _instance)) => base,
        // `kswapd0`, `scsi_eh_0`: a kernel thread's trailing number is an instance.
        None if kernel_thread => comm
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .trim_end_matches(['_', '-']),
        None => comm,
    };
    if !base.is_empty() {
        base.to_string()
    } else if !comm.is_empty() {
        comm.to_string()
    } else {
        EMPTY.to_string()
    }
}

/// A thread in D now, as published.
#[derive(Debug, Clone)]
pub struct DThread {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub group: Arc<str>,
    pub wchan: Option<String>,
    pub cgroup: Option<Arc<str>>,
    /// The container of that cgroup, as the walk identified it (exact id, not a substring).
    pub container: Option<Arc<Identity>>,
    pub kernel_thread: bool,
    /// First walk that saw this thread (tid + start time) in D, in this uninterrupted episode.
    /// The age is a lower bound: the thread may have entered D up to one walk interval earlier.
    pub since: Instant,
    /// Kernel stack at the last walk (`threads.stacks`; at most 64 threads a walk, 4 KiB
    /// each); `None` when off, over the budget or unreadable (see `ThreadSnapshot::stacks_missing`).
    pub stack: Option<Arc<str>>,
}

/// Per-group D-state accounting, exported as one row.
#[derive(Debug, Clone, Default)]
pub struct GroupRow {
    pub name: Arc<str>,
    /// Threads of the group in D at the last walk.
    pub d_now: u64,
    /// D thread-seconds, integrated across walks (trapezoid rule); never decreases.
    pub d_seconds: f64,
    /// Threads that entered D (new tid + start time in D), total.
    pub episodes: u64,
    /// Start of the longest current uninterrupted D among the group's threads.
    pub longest_since: Option<Instant>,
}

pub const OTHER: &str = "other";

#[derive(Debug, Default)]
struct GroupAcc {
    d_seconds: f64,
    episodes: u64,
    last_d: Option<Instant>,
}

/// Turns successive walks into per-thread ages and per-group integrals, with bounded labels.
#[derive(Default)]
pub struct DTracker {
    live: HashMap<(u32, u64), (Instant, Arc<str>)>,
    groups: HashMap<Arc<str>, GroupAcc>,
    other: GroupAcc,
    exported: Vec<Arc<str>>,
    last: Option<(Instant, HashMap<Arc<str>, u64>)>,
    interned: HashMap<String, Arc<str>>,
}

/// Groups tracked internally (a process can invent comms; memory stays bounded).
const MAX_TRACKED_GROUPS: usize = 512;

impl DTracker {
    fn intern(&mut self, s: String) -> Arc<str> {
        if let Some(a) = self.interned.get(&s) {
            return a.clone();
        }
        if self.interned.len() > 4 * MAX_TRACKED_GROUPS {
            self.interned.retain(|_, v| Arc::strong_count(v) > 1);
        }
        let a: Arc<str> = Arc::from(s.as_str());
        self.interned.insert(s, a.clone());
        a
    }

    /// Applies one walk taken at `at`. `max_gap`: longer gaps between walks (a stuck walk) are
    /// not integrated.
    pub fn apply(
        &mut self,
        walk: &Walk,
        at: Instant,
        rules: &[GroupRule],
        max_gap: Duration,
    ) -> (Vec<DThread>, HashMap<Arc<str>, u64>) {
        let mut counts: HashMap<Arc<str>, u64> = HashMap::new();
        let mut live = HashMap::with_capacity(walk.d.len());
        let mut stuck = Vec::with_capacity(walk.d.len());
        for d in &walk.d {
            let key = (d.tid, d.starttime);
            let (since, group) = match self.live.remove(&key) {
                Some(v) => v,
                None => {
                    let g = self.intern(group_of(&d.comm, d.kernel_thread, rules));
                    self.groups.entry(g.clone()).or_default().episodes += 1;
                    (at, g)
                }
            };
            *counts.entry(group.clone()).or_insert(0) += 1;
            stuck.push(DThread {
                pid: d.pid,
                tid: d.tid,
                comm: d.comm.clone(),
                group: group.clone(),
                wchan: d.wchan.clone(),
                cgroup: d.cgroup.clone(),
                container: d.container.clone(),
                kernel_thread: d.kernel_thread,
                since,
                stack: d.stack.clone(),
            });
            live.insert(key, (since, group));
        }
        self.live = live;

        // Integrate D thread-seconds per group over the gap since the last walk (trapezoid:
        // a thread seen in D at both ends counts the whole gap, at one end half of it).
        if let Some((t0, prev)) = &self.last {
            let dt = at.saturating_duration_since(*t0);
            if dt <= max_gap {
                let dt = dt.as_secs_f64();
                let mut keys: Vec<&Arc<str>> = prev.keys().chain(counts.keys()).collect();
                keys.sort();
                keys.dedup();
                for g in keys {
                    let n = (prev.get(g).copied().unwrap_or(0)
                        + counts.get(g).copied().unwrap_or(0)) as f64
                        / 2.0;
                    self.groups.entry(g.clone()).or_default().d_seconds += n * dt;
                }
            }
        }
        for (g, _) in counts.iter() {
            self.groups.entry(g.clone()).or_default().last_d = Some(at);
        }
        self.last = Some((at, counts.clone()));
        (stuck, counts)
    }

    /// Chooses the exported groups (top-N by D time) and folds the rest into `other`. `other`
    /// only ever grows: what a non-exported group accrues since the previous call is added to
    /// it; a group that enters the top-N appears with its own total.
    pub fn rows(
        &mut self,
        counts: &HashMap<Arc<str>, u64>,
        stuck: &[DThread],
        top: usize,
        prev_totals: &mut HashMap<Arc<str>, (f64, u64)>,
    ) -> Vec<GroupRow> {
        // Bound the internal table: drop the smallest groups not in D now.
        if self.groups.len() > MAX_TRACKED_GROUPS {
            let mut v: Vec<(Arc<str>, f64)> = self
                .groups
                .iter()
                .filter(|(g, _)| !counts.contains_key(*g))
                .map(|(g, a)| (g.clone(), a.d_seconds))
                .collect();
            v.sort_by(|a, b| a.1.total_cmp(&b.1));
            for (g, _) in v.into_iter().take(self.groups.len() - MAX_TRACKED_GROUPS) {
                if let Some(a) = self.groups.remove(&g) {
                    // Its history is no longer tracked by name: keep it in `other` if it was
                    // never exported, so `other` stays monotonic and complete.
                    if !self.exported.contains(&g) {
                        let (s0, e0) = prev_totals.remove(&g).unwrap_or((0.0, 0));
                        self.other.d_seconds += a.d_seconds - s0;
                        self.other.episodes += a.episodes - e0;
                    }
                }
            }
        }
        let mut ranked: Vec<(&Arc<str>, &GroupAcc)> = self.groups.iter().collect();
        ranked.sort_by(|a, b| {
            b.1.d_seconds
                .total_cmp(&a.1.d_seconds)
                .then_with(|| {
                    counts
                        .get(b.0)
                        .unwrap_or(&0)
                        .cmp(counts.get(a.0).unwrap_or(&0))
                })
                .then_with(|| a.0.cmp(b.0))
        });
        let exported: Vec<Arc<str>> = ranked.iter().take(top).map(|(g, _)| (*g).clone()).collect();
        // Accrue non-exported groups' growth into `other`.
        for (g, a) in &self.groups {
            let (s0, e0) = prev_totals.get(g).copied().unwrap_or((0.0, 0));
            if !exported.contains(g) {
                self.other.d_seconds += (a.d_seconds - s0).max(0.0);
                self.other.episodes += a.episodes.saturating_sub(e0);
            }
        }
        prev_totals.clear();
        for (g, a) in &self.groups {
            prev_totals.insert(g.clone(), (a.d_seconds, a.episodes));
        }
        self.exported = exported;
        let longest = |g: &str| {
            stuck
                .iter()
                .filter(|d| &*d.group == g)
                .map(|d| d.since)
                .min()
        };
        let mut rows: Vec<GroupRow> = self
            .exported
            .iter()
            .filter_map(|g| {
                let a = self.groups.get(g)?;
                Some(GroupRow {
                    name: g.clone(),
                    d_now: counts.get(g).copied().unwrap_or(0),
                    d_seconds: a.d_seconds,
                    episodes: a.episodes,
                    longest_since: longest(g),
                })
            })
            .collect();
        let other_now: u64 = counts
            .iter()
            .filter(|(g, _)| !self.exported.contains(g))
            .map(|(_, n)| n)
            .sum();
        if other_now > 0 || self.other.episodes > 0 {
            rows.push(GroupRow {
                name: Arc::from(OTHER),
                d_now: other_now,
                d_seconds: self.other.d_seconds,
                episodes: self.other.episodes,
                longest_since: stuck
                    .iter()
                    .filter(|d| !self.exported.contains(&d.group))
                    .map(|d| d.since)
                    .min(),
            });
        }
        rows
    }
}

/// Top-N wait channels by current count, the rest summed as `other`.
pub fn wchan_rows(stuck: &[DThread], top: usize) -> Vec<(String, u64)> {
    let mut m: HashMap<&str, u64> = HashMap::new();
    for d in stuck {
        *m.entry(d.wchan.as_deref().unwrap_or("unknown"))
            .or_insert(0) += 1;
    }
    let mut v: Vec<(&str, u64)> = m.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let mut out: Vec<(String, u64)> = v
        .iter()
        .take(top)
        .map(|(w, n)| (w.to_string(), *n))
        .collect();
    let rest: u64 = v.iter().skip(top).map(|(_, n)| n).sum();
    if rest > 0 {
        out.push((OTHER.to_string(), rest));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc::tasks::RawD;
    use regex::Regex;

    fn g(comm: &str, k: bool) -> String {
        group_of(comm, k, &[])
    }

    #[test]
    fn groups_of_kernel_threads_from_this_machine_and_the_seed_incident() {
        assert_eq!(g("kworker/7:0", true), "kworker");
        assert_eq!(g("kworker/u30:2", true), "kworker");
        assert_eq!(g("kworker/0:1H-kblockd", true), "kworker");
        assert_eq!(g("kworker/u8:3-flush-254:0", true), "kworker");
        assert_eq!(g("jbd2/sda1-8", true), "jbd2");
        assert_eq!(g("ksoftirqd/1", true), "ksoftirqd");
        assert_eq!(g("migration/0", true), "migration");
        assert_eq!(g("scsi_eh_0", true), "scsi_eh");
        assert_eq!(g("kswapd0", true), "kswapd");
        assert_eq!(g("xfsaild/dm-0", true), "xfsaild");
        assert_eq!(g("rcu_preempt", true), "rcu_preempt");
        assert_eq!(g("systemd-udevd", false), "systemd-udevd");
        assert_eq!(g("(udev-worker)", false), "(udev-worker)");
        assert_eq!(
            g("worker-3", false),
            "worker-3",
            "user comms keep their digits"
        );
        assert_eq!(g("/", false), "/", "never an empty group");
        assert_eq!(
            g("", false),
            EMPTY,
            "an empty comm (prctl PR_SET_NAME \"\") has a name"
        );
        assert_eq!(g("", true), EMPTY);
    }

    #[test]
    fn configured_rules_win_in_order() {
        let rules = vec![
            GroupRule {
                regex: Regex::new("^(dockerd|containerd)").unwrap(),
                name: "docker".into(),
            },
            GroupRule {
                regex: Regex::new("^kworker").unwrap(),
                name: "kernel-workers".into(),
            },
        ];
        assert_eq!(group_of("containerd-shim", false, &rules), "docker");
        assert_eq!(group_of("kworker/u30:2", true, &rules), "kernel-workers");
        assert_eq!(group_of("postgres", false, &rules), "postgres");
    }

    fn raw(tid: u32, comm: &str, wchan: &str) -> RawD {
        RawD {
            pid: tid,
            tid,
            starttime: 100 + tid as u64,
            comm: comm.into(),
            kernel_thread: false,
            wchan: Some(wchan.into()),
            cgroup: None,
            container: None,
            stack: None,
        }
    }

    #[test]
    fn ages_integrals_and_episodes_across_walks() {
        let rules: &[GroupRule] = &[];
        let mut t = DTracker::default();
        let mut prev = HashMap::new();
        let t0 = Instant::now();
        let gap = Duration::from_secs(30);
        let w1 = Walk {
            d: vec![raw(1, "dd", "io_schedule"), raw(2, "dd", "io_schedule")],
            ..Walk::default()
        };
        let (s, c) = t.apply(&w1, t0, rules, gap);
        let rows = t.rows(&c, &s, 20, &mut prev);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].d_now, rows[0].episodes, rows[0].d_seconds),
            (2, 2, 0.0)
        );
        // 2 s later thread 1 is still in D, thread 2 left, thread 3 entered.
        let w2 = Walk {
            d: vec![raw(1, "dd", "io_schedule"), raw(3, "dd", "rq_qos_wait")],
            ..Walk::default()
        };
        let (s, c) = t.apply(&w2, t0 + Duration::from_secs(2), rules, gap);
        let rows = t.rows(&c, &s, 20, &mut prev);
        assert_eq!((rows[0].d_now, rows[0].episodes), (2, 3));
        assert!(
            (rows[0].d_seconds - 4.0).abs() < 1e-9,
            "(2+2)/2 × 2 s = {}",
            rows[0].d_seconds
        );
        assert_eq!(
            rows[0].longest_since,
            Some(t0),
            "thread 1 has been in D since the first walk"
        );
        let w = wchan_rows(&s, 20);
        assert_eq!(
            w,
            vec![
                ("io_schedule".to_string(), 1),
                ("rq_qos_wait".to_string(), 1)
            ]
        );
        // Nobody in D: the integral finishes the gap, the group stays with d_now 0.
        let (s, c) = t.apply(&Walk::default(), t0 + Duration::from_secs(4), rules, gap);
        let rows = t.rows(&c, &s, 20, &mut prev);
        assert!((rows[0].d_seconds - 6.0).abs() < 1e-9);
        assert_eq!(rows[0].d_now, 0);
        assert_eq!(rows[0].longest_since, None);
    }

    #[test]
    fn top_n_folds_the_rest_into_other_which_never_decreases() {
        let rules: &[GroupRule] = &[];
        let mut t = DTracker::default();
        let mut prev = HashMap::new();
        let t0 = Instant::now();
        let gap = Duration::from_secs(30);
        let mut other_seen = 0.0;
        for step in 0..10u32 {
            // group "g{k}" has k threads in D; new groups keep appearing.
            let d: Vec<RawD> = (0..=step)
                .flat_map(|k| (0..k).map(move |i| raw(1000 * k + i, &format!("g{k}"), "w")))
                .collect();
            let (s, c) = t.apply(
                &Walk {
                    d,
                    ..Walk::default()
                },
                t0 + Duration::from_secs(step as u64),
                rules,
                gap,
            );
            let rows = t.rows(&c, &s, 3, &mut prev);
            assert!(rows.len() <= 4, "3 named groups + other");
            let names: Vec<&str> = rows.iter().map(|r| &*r.name).collect();
            if step >= 4 {
                assert_eq!(names.last(), Some(&OTHER), "{names:?}");
                let other = rows.last().unwrap().d_seconds;
                assert!(
                    other >= other_seen,
                    "other went down: {other} < {other_seen}"
                );
                other_seen = other;
            }
            // total D now is conserved across the named rows and other.
            let total_now: u64 = rows.iter().map(|r| r.d_now).sum();
            assert_eq!(total_now, s.len() as u64);
        }
        assert!(other_seen > 0.0);
        let w = wchan_rows(&[], 2);
        assert!(w.is_empty());
    }

    #[test]
    fn wchan_top_n_and_other() {
        let t0 = Instant::now();
        let mk = |w: &str| DThread {
            pid: 1,
            tid: 1,
            comm: "x".into(),
            group: Arc::from("x"),
            wchan: Some(w.into()),
            cgroup: None,
            container: None,
            kernel_thread: false,
            since: t0,
            stack: None,
        };
        let s = vec![mk("a"), mk("a"), mk("b"), mk("c"), mk("d")];
        assert_eq!(
            wchan_rows(&s, 2),
            vec![("a".into(), 2), ("b".into(), 1), (OTHER.into(), 2)]
        );
    }
}
