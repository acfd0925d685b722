//! The verdict engine and the flight recorder, run once per host tick (in the host sampler's
//! publish hook, after the join): evaluate the joined node, push the tick into the ring,
//! follow the incident, and publish what the API, the page and `/metrics` read.
//!
//! Cost: the evaluation is pure (no I/O, linear in devices + D threads + containers); the
//! lock below is held for it only, and by API readers only to copy a timeline or a record.
//! Nothing here waits on a disk: records go to disk through [`store`]'s child processes.

pub mod incident;
pub mod ring;
pub mod store;

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::node::Node;
use crate::verdict::{Cause, Engine, Verdict, VerdictConfig};
use incident::{d_rows, DRow, Head, IncidentConfig, Incidents, Record};
use ring::{Point, Ring, Timeline};
use store::{Store, Writes};

/// 15 minutes at the default 1 s host tick (at a slower tick the ring covers longer).
pub const RING_POINTS: usize = 900;

/// What the API and `/metrics` read: the last verdict with its D table and signals.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Published {
    #[serde(flatten)]
    pub verdict: Verdict,
    /// The open incident's id, if any.
    pub incident: Option<String>,
    pub dstate: Vec<DRow>,
    /// The busiest containers now: by I/O rate over the last container pass, then those with
    /// threads in D (at most 10).
    pub containers: Vec<incident::ContainerLine>,
    pub signals: serde_json::Map<String, serde_json::Value>,
    #[serde(skip)]
    pub seconds: [f64; 8],
    #[serde(skip)]
    pub incidents: [u64; 8],
    /// Incident records in memory now.
    #[serde(skip)]
    pub records: usize,
}

struct Inner {
    engine: Engine,
    ring: Ring,
    incidents: Incidents,
}

pub struct Analysis {
    inner: Mutex<Inner>,
    published: ArcSwap<Published>,
    store: Mutex<Option<Store>>,
    pub writes: Arc<Writes>,
    /// Evaluations run, and the CPU they took (evaluate, record, publish; this thread's CPU
    /// clock), as f64 seconds in bits: `stallwatch_verdict_cpu_seconds_total`.
    pub evaluations: std::sync::atomic::AtomicU64,
    pub cpu_seconds: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Analysis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Analysis")
    }
}

fn cpus() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

impl Analysis {
    pub fn new(verdict: VerdictConfig, incidents: IncidentConfig) -> Arc<Analysis> {
        Arc::new(Analysis {
            inner: Mutex::new(Inner {
                engine: Engine::new(verdict, cpus()),
                ring: Ring::new(RING_POINTS),
                incidents: Incidents::new(incidents),
            }),
            published: ArcSwap::from_pointee(Published::default()),
            store: Mutex::new(None),
            writes: Arc::default(),
            evaluations: Default::default(),
            cpu_seconds: Default::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts persisting to the configured directory (if any) and reads its records back;
    /// the read is bounded by a deadline (a hung directory costs at most that, once).
    pub fn start_store(&self) {
        let config = self.lock().incidents.config.clone();
        let Some(dir) = config.dir.clone() else {
            return;
        };
        let past = store::load(&dir, store::READ_DEADLINE);
        let records: Vec<Record> = past;
        self.lock().incidents.restore(records);
        let target = store::Target {
            dir,
            max_files: config.max_files,
            max_bytes: config.max_bytes,
        };
        match Store::start(target, Arc::clone(&self.writes)) {
            Ok(s) => *self.store.lock().unwrap_or_else(|e| e.into_inner()) = Some(s),
            Err(error) => {
                tracing::warn!(%error, "Cannot start the incident store; records stay in memory.")
            }
        }
    }

    /// New thresholds (a reload); the running state is kept.
    pub fn set_config(&self, verdict: VerdictConfig, incidents: IncidentConfig) {
        let mut g = self.lock();
        g.engine.set_config(verdict);
        let dir_changed = g.incidents.config.dir != incidents.dir;
        g.incidents.config = incidents;
        drop(g);
        if dir_changed {
            tracing::info!("incident.dir changed: it takes effect at the next start.");
        }
    }

    /// One host tick: evaluate, record, publish; its CPU is counted.
    pub fn on_node(&self, node: &Node) {
        use std::sync::atomic::Ordering::Relaxed;
        let t0 = stallwatch_collector::sample::driver::thread_cpu();
        if self.evaluate(node) {
            let took = stallwatch_collector::sample::driver::thread_cpu().saturating_sub(t0);
            self.evaluations.fetch_add(1, Relaxed);
            let total = f64::from_bits(self.cpu_seconds.load(Relaxed)) + took.as_secs_f64();
            self.cpu_seconds.store(total.to_bits(), Relaxed);
        }
    }

    /// Returns whether there was a new host tick to evaluate.
    fn evaluate(&self, node: &Node) -> bool {
        let mut g = self.lock();
        let Inner {
            engine,
            ring,
            incidents,
        } = &mut *g;
        let Some(ev) = engine.evaluate(node) else {
            return false;
        };
        if ev.began.is_some() {
            tracing::warn!(cause = ev.verdict.cause.as_str(), "{}", ev.verdict.summary);
        }
        if ev.ended {
            tracing::info!("Not stalled any more: {}", ev.verdict.summary);
        }
        let point = Point::of(&ev.tick, &ev.verdict);
        ring.push(point);
        let save = incidents.follow(&ev, node, ring);
        let open = incidents.list().into_iter().find(|h| h.open).map(|h| h.id);
        let containers = incident::top_containers(&ev, node);
        let published = Published {
            verdict: ev.verdict,
            incident: open,
            dstate: d_rows(node, 50, false),
            containers,
            signals: point.named(),
            seconds: engine.totals.seconds,
            incidents: incidents.opened,
            records: incidents.list().len(),
        };
        drop(g);
        self.published.store(Arc::new(published));
        if let Some(rec) = save {
            if let Some(s) = self
                .store
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                s.save(rec);
            }
        }
        true
    }

    pub fn published(&self) -> Arc<Published> {
        self.published.load_full()
    }

    /// The last `seconds` of the ring.
    pub fn timeline(&self, seconds: f64) -> Timeline {
        let g = self.lock();
        let now = g.ring.last().map_or(0.0, |p| p.t_unix);
        g.ring.timeline(now - seconds, now, 1.0)
    }

    pub fn incidents(&self) -> Vec<Head> {
        self.lock().incidents.list()
    }

    pub fn incident(&self, id: &str) -> Option<Record> {
        let g = self.lock();
        g.incidents.get(id, &g.ring)
    }
}

/// Whether this cause is among those the published verdict holds.
pub fn active(p: &Published, cause: Cause) -> bool {
    match cause {
        Cause::None => !p.verdict.stalled,
        c => p.verdict.causes.iter().any(|a| a.cause == c),
    }
}
