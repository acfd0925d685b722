//! Pure accounting of ended episodes: per group, per container and per wait channel, each a
//! count, seconds, max and the kernel's log2 histogram, with bounded labels.
//!
//! Bounded labels, as the walk's tracker does it ([`crate::sample::dstate`]): groups and wait
//! channels are exported by name for the top N by seconds, the rest summed as `other`, which
//! only ever grows (what a name that is not exported accrues is added to it; a name that enters
//! the top N appears with its own total). At most [`MAX_TRACKED`] names are tracked; past that
//! the smallest not exported are dropped, their growth already in `other`. Containers are
//! tracked up to [`MAX_CONTAINERS`], the longest-idle dropped first (the encoder exports only
//! those the container pass knows, as every per-container series).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use crate::cgroup::Identity;

use super::kernel::NBUCKETS;

/// Names tracked per family.
pub const MAX_TRACKED: usize = 512;
/// Containers tracked.
pub const MAX_CONTAINERS: usize = 4096;
pub const OTHER: &str = "other";

/// Episodes: count, seconds, the longest and the log2 histogram of microseconds (bucket k holds
/// [2^k, 2^(k+1)) µs; bucket 0 also < 1 µs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hist {
    pub count: u64,
    pub seconds: f64,
    pub max_seconds: f64,
    pub buckets: [u64; NBUCKETS],
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            count: 0,
            seconds: 0.0,
            max_seconds: 0.0,
            buckets: [0; NBUCKETS],
        }
    }
}

impl Hist {
    pub fn add(&mut self, o: &Hist) {
        self.count += o.count;
        self.seconds += o.seconds;
        self.max_seconds = self.max_seconds.max(o.max_seconds);
        for (a, b) in self.buckets.iter_mut().zip(o.buckets) {
            *a += b;
        }
    }

    /// `self - o`, for monotonic parts (max is kept as is).
    fn minus(&self, o: &Hist) -> Hist {
        let mut d = *self;
        d.count = self.count.saturating_sub(o.count);
        d.seconds = (self.seconds - o.seconds).max(0.0);
        for (a, b) in d.buckets.iter_mut().zip(o.buckets) {
            *a = a.saturating_sub(b);
        }
        d
    }

    /// Cumulative count of episodes shorter than 2^k µs, for k = `bound_log2`.
    pub fn below(&self, bound_log2: usize) -> u64 {
        self.buckets.iter().take(bound_log2).sum()
    }
}

/// One exported row.
#[derive(Debug, Clone)]
pub struct Row<K> {
    pub key: K,
    pub hist: Hist,
}

#[derive(Debug, Default)]
struct Acc {
    total: Hist,
    /// The part of `total` already added to `other`.
    folded: Hist,
}

/// Per-name accumulators with a top-N fold into `other`.
#[derive(Debug)]
pub struct Fold<K> {
    accs: HashMap<K, Acc>,
    other: Hist,
    exported: Vec<K>,
}

impl<K> Default for Fold<K> {
    fn default() -> Self {
        Fold {
            accs: HashMap::new(),
            other: Hist::default(),
            exported: Vec::new(),
        }
    }
}

impl<K: Clone + Eq + Hash + Ord> Fold<K> {
    pub fn add(&mut self, k: &K, h: &Hist) {
        match self.accs.get_mut(k) {
            Some(a) => a.total.add(h),
            None => {
                let mut a = Acc::default();
                a.total.add(h);
                self.accs.insert(k.clone(), a);
            }
        }
    }

    /// Straight into `other` (the kernel's overflow entry; a process that calls itself
    /// `other`): one `group="other"` row, never two.
    pub fn add_other(&mut self, h: &Hist) {
        self.other.add(h);
    }

    /// The rows: the top `top` names by seconds with their totals, then `other` (`None` as its
    /// key) once anything was folded.
    pub fn rows(&mut self, top: usize) -> Vec<Row<Option<K>>> {
        let mut ranked: Vec<(&K, &Acc)> = self.accs.iter().collect();
        ranked.sort_by(|a, b| {
            b.1.total
                .seconds
                .total_cmp(&a.1.total.seconds)
                .then_with(|| a.0.cmp(b.0))
        });
        let exported: Vec<K> = ranked.iter().take(top).map(|(k, _)| (*k).clone()).collect();
        for (k, a) in self.accs.iter_mut() {
            if !exported.contains(k) {
                self.other.add(&a.total.minus(&a.folded));
                a.folded = a.total;
            }
        }
        if self.accs.len() > MAX_TRACKED {
            // Every name not exported has its growth in `other` already (just above).
            let mut small: Vec<(K, f64)> = self
                .accs
                .iter()
                .filter(|(k, _)| !exported.contains(k))
                .map(|(k, a)| (k.clone(), a.total.seconds))
                .collect();
            small.sort_by(|a, b| a.1.total_cmp(&b.1));
            let n = self.accs.len() - MAX_TRACKED;
            for (k, _) in small.into_iter().take(n) {
                self.accs.remove(&k);
            }
        }
        self.exported = exported;
        let mut rows: Vec<Row<Option<K>>> = self
            .exported
            .iter()
            .filter_map(|k| {
                self.accs.get(k).map(|a| Row {
                    key: Some(k.clone()),
                    hist: a.total,
                })
            })
            .collect();
        if self.other.count > 0 {
            rows.push(Row {
                key: None,
                hist: self.other,
            });
        }
        rows
    }
}

/// Per-container totals, bounded; the longest-idle container is dropped first.
#[derive(Debug, Default)]
pub struct Containers {
    by_id: HashMap<String, (Arc<Identity>, Hist, u64)>,
    tick: u64,
}

impl Containers {
    pub fn add(&mut self, id: &Arc<Identity>, h: &Hist) {
        self.tick += 1;
        let e = self
            .by_id
            .entry(id.container_id.clone())
            .or_insert_with(|| (Arc::clone(id), Hist::default(), 0));
        e.1.add(h);
        e.2 = self.tick;
        if self.by_id.len() > MAX_CONTAINERS {
            if let Some(oldest) = self
                .by_id
                .iter()
                .min_by_key(|(_, v)| v.2)
                .map(|(k, _)| k.clone())
            {
                self.by_id.remove(&oldest);
            }
        }
    }

    pub fn rows(&self) -> Vec<(Arc<Identity>, Hist)> {
        let mut v: Vec<(Arc<Identity>, Hist)> = self
            .by_id
            .values()
            .map(|(i, h, _)| (Arc::clone(i), *h))
            .collect();
        v.sort_by(|a, b| a.0.container_id.cmp(&b.0.container_id));
        v
    }
}

/// The histogram of one aggregate of the kernel (nanoseconds → seconds).
pub fn hist_of(count: u64, sum_ns: u64, max_ns: u64, buckets: &[u64; NBUCKETS]) -> Hist {
    Hist {
        count,
        seconds: sum_ns as f64 / 1e9,
        max_seconds: max_ns as f64 / 1e9,
        buckets: *buckets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(count: u64, seconds: f64) -> Hist {
        let mut b = [0; NBUCKETS];
        b[10] = count;
        Hist {
            count,
            seconds,
            max_seconds: seconds,
            buckets: b,
        }
    }

    #[test]
    fn top_n_by_seconds_and_a_monotonic_other() {
        let mut f: Fold<String> = Fold::default();
        f.add(&"a".into(), &h(1, 3.0));
        f.add(&"b".into(), &h(2, 2.0));
        f.add(&"c".into(), &h(5, 1.0));
        let rows = f.rows(2);
        let keys: Vec<Option<&str>> = rows.iter().map(|r| r.key.as_deref()).collect();
        assert_eq!(keys, [Some("a"), Some("b"), None]);
        assert_eq!(rows[2].hist.count, 5, "c is folded");
        // c grows past b: it is exported with its whole total; b's growth from now on is
        // folded, and other never goes down.
        f.add(&"c".into(), &h(1, 5.0));
        f.add(&"b".into(), &h(1, 0.5));
        let rows = f.rows(2);
        let keys: Vec<Option<&str>> = rows.iter().map(|r| r.key.as_deref()).collect();
        assert_eq!(keys, [Some("c"), Some("a"), None]);
        assert_eq!(rows[0].hist.count, 6);
        assert_eq!(rows[2].hist.count, 5 + 3, "other: c's old 5, then all of b");
        assert!((rows[2].hist.seconds - (1.0 + 2.5)).abs() < 1e-9);
        assert_eq!(rows[2].hist.below(11), 8, "buckets follow");
    }

    #[test]
    fn tracked_names_are_bounded_and_nothing_is_lost_from_other() {
        let mut f: Fold<u32> = Fold::default();
        let mut total = 0u64;
        for round in 0..3u32 {
            for i in 0..(MAX_TRACKED as u32 * 2) {
                f.add(&(round * 10_000 + i), &h(1, 1.0 + f64::from(i)));
                total += 1;
            }
            let rows = f.rows(5);
            assert!(f.accs.len() <= MAX_TRACKED);
            let sum: u64 = rows.iter().map(|r| r.hist.count).sum();
            assert!(sum <= total && rows.len() == 6);
            assert!(rows.last().unwrap().hist.count >= total - 5 * 3);
        }
    }

    #[test]
    fn containers_are_bounded_longest_idle_first() {
        let mut c = Containers::default();
        let id = |i: usize| {
            Arc::new(Identity {
                container_id: format!("{i:064x}"),
                runtime: crate::cgroup::Runtime::Docker,
                pod_uid: None,
                qos: None,
            })
        };
        let first = id(0);
        c.add(&first, &h(1, 1.0));
        for i in 1..=MAX_CONTAINERS {
            c.add(&id(i), &h(1, 1.0));
        }
        let rows = c.rows();
        assert_eq!(rows.len(), MAX_CONTAINERS);
        assert!(!rows
            .iter()
            .any(|(i, _)| i.container_id == first.container_id));
    }
}
