//! The one periodic driver every source runs on: host files, the thread walk, the container
//! pass, probe writes and the cloud calls. A [`Sampler`] says *what* its sources are, when each
//! is due and what a reading means; the driver owns everything else, the same way for all:
//!
//! - **reader threads**: the sampler thread never touches a file. It asks idle readers for a
//!   reading and waits for answers up to a deadline. A read stuck in the kernel (a file on a
//!   hung disk sits in D and cannot be interrupted) stops only its own source, which keeps its
//!   last value; a stuck reader is never replaced by a new thread, so a long hang cannot pile
//!   up threads. An answer after the deadline is applied on a later tick.
//! - **lanes**: a source has its own reader thread, or shares one with the other sources of its
//!   [`SourceSpec::lane`] (DESIGN.md's "fast 1 s sources" class): one wake-up a tick reads
//!   them all in turn. Each thread wake-up costs 30–90 µs of CPU on this VM kind, more than a
//!   small procfs read, so eleven 1 s host sources on eleven threads cost ~0.09 % of a core and
//!   on one thread ~0.01 %. A lane keeps the isolation: when one member's read is stuck past its
//!   timeout, the members not being read move to a new thread (readers made again from their
//!   factories) and the stuck one keeps the old thread alone. Each split leaves one source
//!   alone on a thread, so a lane of n never holds more than n threads.
//! - **cadence and CPU budget**: a source's wanted interval is stretched so that its reader's
//!   CPU per interval stays under the sampler's budget ([`crate::sample::budget`]).
//! - **health**: one [`SourceStatus`] per source (duration, CPU, errors by kind, stuck, missing,
//!   age, interval in force), logged through one rate limiter ([`Limiter`]).
//! - **supervision**: a reader that panics is rebuilt from its factory and counted as an error
//!   of kind `panic`; a sampler that panics while applying or publishing is rebuilt from its
//!   factory (its between-scrape accumulators start again) and the panic is counted on each of
//!   its sources. Either way the thread lives on: no source dies silently.
//! - **publishing**: after every tick the sampler's snapshot is swapped in whole (`ArcSwap`) and
//!   an optional hook runs (the node view is joined there, once per publish, not per scrape).

use std::any::Any;
use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::{error, info, warn};

use crate::error::{Error, ErrorKind};
use crate::sample::budget;
use crate::sample::status::SourceStatus;

/// At most one log line per `every` for one kind of trouble of one source; what it holds back
/// is counted and said with the next line. The only rate limiter of the collector.
#[derive(Debug, Clone)]
pub struct Limiter {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl Limiter {
    pub const fn new(every: Duration) -> Self {
        Limiter {
            every,
            last: None,
            held: 0,
        }
    }

    /// Once a minute: a broken file must not flood the log at 1 Hz.
    pub const fn per_minute() -> Self {
        Limiter::new(Duration::from_secs(60))
    }

    /// `Some(held back since the last line)` when a line may be logged now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_none_or(|t| now.saturating_duration_since(t) >= self.every)
        {
            self.last = Some(now);
            Some(std::mem::take(&mut self.held))
        } else {
            self.held += 1;
            None
        }
    }
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::per_minute()
    }
}

/// One read of a source: a value, `None` when its file does not exist on this host (the
/// feature is off: its metrics are absent), or an error (its last value is kept).
pub type Read<R> = Box<dyn FnMut() -> Result<Option<R>, Error> + Send>;

/// Makes a source's reader; called once when the source starts and again after the reader
/// panicked (whatever state it kept may be broken).
pub type MakeRead<R> = Arc<dyn Fn() -> Read<R> + Send + Sync>;

/// Wraps a closure as a reader factory.
pub fn reader<R, F, M>(make: M) -> MakeRead<R>
where
    F: FnMut() -> Result<Option<R>, Error> + Send + 'static,
    M: Fn() -> F + Send + Sync + 'static,
{
    Arc::new(move || Box::new(make()) as Read<R>)
}

/// A source as a sampler declares it.
pub struct SourceSpec<K, R> {
    /// What the sampler calls it (an enum for a fixed set, a config for probes).
    pub key: K,
    /// The `source` label.
    pub name: Cow<'static, str>,
    pub make: MakeRead<R>,
    /// Sources with the same lane share one reader thread (named `sw-<lane>`); `None`: its
    /// own (named `sw-<name>`). Only for reads that cannot block on a disk (memory-only
    /// procfs and sysfs files): a shared thread is split at the first stuck read, but the
    /// members wait for the source timeout first.
    pub lane: Option<&'static str>,
}

/// When a source is due.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// The wanted interval between reads.
    pub every: Duration,
    /// CPU budget as a share of one core; the interval is stretched to keep the reader's CPU
    /// under it. 0 disables the budget.
    pub max_cpu: f64,
    /// A read outstanding for longer is stuck.
    pub timeout: Duration,
}

/// What a sampler tells the driver, and what the driver hands back.
pub trait Sampler: Send + 'static {
    type Key: Clone + PartialEq + Send + 'static;
    type Reading: Send + 'static;
    type Config: Send + Sync + 'static;
    type Snapshot: Send + Sync + 'static;

    /// The sources for this config; asked at start and after every config change. A source
    /// whose key is unchanged keeps its reader, its status and its counters.
    fn sources(&mut self, cfg: &Self::Config) -> Vec<SourceSpec<Self::Key, Self::Reading>>;

    /// How long the driver sleeps between ticks.
    fn tick(&self, cfg: &Self::Config) -> Duration;

    /// How long a tick waits for the readings it asked for before publishing without them.
    fn wait(&self, cfg: &Self::Config) -> Duration;

    /// The source's schedule now; `None` while it is off (not asked, not stuck, not aged).
    fn schedule(&mut self, key: &Self::Key, cfg: &Self::Config, now: Instant) -> Option<Schedule>;

    /// A reading that completed at `at`: `Some(value)`, or `None` when the source's file does
    /// not exist. `status` is the source's own, for errors found inside a reading (a walk over
    /// many files counts what it met).
    fn apply(
        &mut self,
        key: &Self::Key,
        at: Instant,
        reading: Option<Self::Reading>,
        status: &mut SourceStatus,
        cfg: &Self::Config,
    );

    /// The snapshot after a tick, with every source's health.
    fn publish(
        &mut self,
        sources: &[SourceStatus],
        now: Instant,
        cfg: &Self::Config,
    ) -> Self::Snapshot;
}

/// Runs after every publish (the agent joins the node view there). Must not block.
pub type Hook = Arc<dyn Fn() + Send + Sync>;

/// A running driver; [`Driver::stop`] stops it (dropping it does not).
pub struct Driver {
    stop: Arc<AtomicBool>,
    /// Capacity one: wakes that come while one is pending are one wake (a tick reads the
    /// newest of everything anyway), and a waker never blocks.
    wake: SyncSender<()>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Driver {
    /// Starts the sampler's thread. `make` builds the sampler, at start and again after it
    /// panicked. The first snapshot is published after the first tick.
    pub fn spawn<S: Sampler>(
        name: &str,
        make: impl Fn() -> S + Send + 'static,
        config: Arc<ArcSwap<S::Config>>,
        out: Arc<ArcSwap<S::Snapshot>>,
        on_publish: Option<Hook>,
    ) -> std::io::Result<Driver> {
        let stop = Arc::new(AtomicBool::new(false));
        let (wake, wake_rx) = mpsc::sync_channel(1);
        let stopping = Arc::clone(&stop);
        let label = name.to_string();
        let thread = thread::Builder::new()
            .name(format!("sw-{name}"))
            .spawn(move || {
                let mut run = Run::<S>::new(label);
                let mut sampler = make();
                loop {
                    let cfg = config.load_full();
                    let t = Instant::now();
                    let ticked = catch_unwind(AssertUnwindSafe(|| run.tick(&mut sampler, &cfg, t)));
                    match ticked {
                        Ok(snap) => {
                            out.store(Arc::new(snap));
                            if let Some(h) = &on_publish {
                                if let Err(p) = catch_unwind(AssertUnwindSafe(|| h())) {
                                    run.hook_panicked(&*p, t);
                                }
                            }
                        }
                        Err(p) => {
                            run.sampler_panicked(&*p, t);
                            sampler = make();
                            // Ask for the sources again: the new sampler must learn them.
                            run.config_seen = None;
                        }
                    }
                    let left =
                        after(t, sampler.tick(&cfg)).saturating_duration_since(Instant::now());
                    let _ = wake_rx.recv_timeout(left);
                    if stopping.load(Ordering::Relaxed) {
                        break;
                    }
                }
            })?;
        Ok(Driver {
            stop,
            wake,
            thread: Some(thread),
        })
    }

    /// Stops the sampler thread and waits for it (it finishes its tick first; a tick waits on
    /// readers at most its deadline). Reader threads end when their current read returns; a
    /// reader stuck in the kernel is left behind, and the process exit reaps it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Full means a wake is pending: the thread wakes and sees the flag all the same.
        let _ = self.wake.try_send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Driver {
    /// A hook that makes the sampler tick now instead of when its own tick is due: for a
    /// sampler that follows what another one publishes (the cloud's credit model follows the
    /// host sampler's disk counters), so that it does not lag by up to a tick. Never blocks;
    /// does nothing once the driver has stopped.
    pub fn waker(&self) -> Hook {
        let wake = self.wake.clone();
        Arc::new(move || {
            let _ = wake.try_send(());
        })
    }
}

/// The driver's handle on one source.
struct Slot<K, R> {
    key: K,
    /// New on every move to another thread: an answer from the old one is not applied.
    id: u64,
    worker: Arc<Worker>,
    make: MakeRead<R>,
    status: SourceStatus,
    busy_since: Option<Instant>,
    last_request: Option<Instant>,
    last_cpu: Duration,
    /// The schedule of the last tick (`None`: off).
    schedule: Option<Schedule>,
    error_log: Limiter,
    stuck_log: Limiter,
}

/// The driver thread's state, kept across sampler restarts.
struct Run<S: Sampler> {
    name: String,
    slots: Vec<Slot<S::Key, S::Reading>>,
    results: Receiver<Vec<Outcome<S::Reading>>>,
    results_tx: Sender<Vec<Outcome<S::Reading>>>,
    next_id: u64,
    config_seen: Option<Arc<S::Config>>,
    panic_log: Limiter,
}

impl<S: Sampler> Run<S> {
    fn new(name: String) -> Self {
        let (results_tx, results) = mpsc::channel();
        Run {
            name,
            slots: Vec::new(),
            results,
            results_tx,
            next_id: 0,
            config_seen: None,
            panic_log: Limiter::per_minute(),
        }
    }

    fn tick(&mut self, sampler: &mut S, cfg: &Arc<S::Config>, t: Instant) -> S::Snapshot {
        if !self
            .config_seen
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, cfg))
        {
            self.reconcile(sampler, cfg);
            self.config_seen = Some(Arc::clone(cfg));
        }
        // Late answers from readers that were slow on earlier ticks.
        while let Ok(batch) = self.results.try_recv() {
            self.handle_all(sampler, batch, cfg);
        }
        self.split_stuck(t);
        let mut due = vec![false; self.slots.len()];
        for (slot, due) in self.slots.iter_mut().zip(&mut due) {
            slot.schedule = sampler.schedule(&slot.key, cfg, t);
            let Some(sch) = slot.schedule else {
                continue;
            };
            let cadence = budget::stretch(sch.every, slot.last_cpu, sch.max_cpu);
            slot.status.timeout = sch.timeout;
            // 20 ms of slack: a tick that starts a hair early must not skip a whole interval.
            *due = slot.last_request.is_none_or(|r| {
                t.saturating_duration_since(r) + Duration::from_millis(20) >= cadence
            });
        }
        self.request(&due, t);
        let deadline = after(t, sampler.wait(cfg));
        while self.slots.iter().any(|s| s.busy_since.is_some()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.results.recv_timeout(left) {
                Ok(batch) => self.handle_all(sampler, batch, cfg),
                Err(_) => break,
            }
        }
        let now = Instant::now();
        self.split_stuck(now);
        for slot in &mut self.slots {
            slot.status.in_flight_since = slot.busy_since;
            // The interval the next read waits for, from the cost of the last one.
            slot.status.interval = slot
                .schedule
                .map(|s| budget::stretch(s.every, slot.last_cpu, s.max_cpu));
            if slot.status.stuck(now) {
                if let Some(held) = slot.stuck_log.allow(now) {
                    warn!(source = %slot.status.name, timeout = ?slot.status.timeout, held,
                        "Source read is stuck; keeping its last value.");
                }
            }
        }
        let statuses: Vec<SourceStatus> = self.slots.iter().map(|s| s.status.clone()).collect();
        sampler.publish(&statuses, now, cfg)
    }

    /// Asks each thread for its due members that are not in flight, in one request, when
    /// none of its members is in flight (a request queued behind a slow read would show its
    /// members in flight before they start).
    fn request(&mut self, due: &[bool], t: Instant) {
        for i in 0..self.slots.len() {
            let worker = &self.slots[i].worker;
            // Each thread once, from its first member.
            if self.slots[..i]
                .iter()
                .any(|s| Arc::ptr_eq(&s.worker, worker))
            {
                continue;
            }
            let members =
                || (i..self.slots.len()).filter(|&j| Arc::ptr_eq(&self.slots[j].worker, worker));
            if members().any(|j| self.slots[j].busy_since.is_some()) {
                continue;
            }
            let ask: Vec<usize> = members().filter(|&j| due[j]).collect();
            if ask.is_empty() {
                continue;
            }
            let ids = ask.iter().map(|&j| self.slots[j].id).collect();
            if self.slots[i].worker.req.try_send(ids).is_ok() {
                for j in ask {
                    self.slots[j].busy_since = Some(t);
                    self.slots[j].last_request = Some(t);
                }
            }
        }
    }

    /// A shared thread whose current read is stuck past its source's timeout: the other
    /// members move to a new thread (new ids, readers made again; what the old thread still
    /// reads for them is not applied) and the stuck one stays alone on the old thread.
    fn split_stuck(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            let worker = Arc::clone(&self.slots[i].worker);
            let current = worker.reading.load(Ordering::Acquire);
            let slot = &self.slots[i];
            let stuck = slot
                .busy_since
                .is_some_and(|b| now.saturating_duration_since(b) > slot.status.timeout);
            if !stuck || slot.id != current || worker.solo.load(Ordering::Relaxed) != IDLE {
                continue;
            }
            let mates: Vec<usize> = (0..self.slots.len())
                .filter(|&j| j != i && Arc::ptr_eq(&self.slots[j].worker, &worker))
                .collect();
            if mates.is_empty() {
                continue;
            }
            let members: Vec<(u64, MakeRead<S::Reading>)> = mates
                .iter()
                .map(|&j| {
                    self.next_id += 1;
                    (self.next_id, Arc::clone(&self.slots[j].make))
                })
                .collect();
            match spawn_worker(&worker.thread, members.clone(), self.results_tx.clone()) {
                Ok(moved) => {
                    worker.solo.store(current, Ordering::Relaxed);
                    for (&j, (id, _)) in mates.iter().zip(&members) {
                        let mate = &mut self.slots[j];
                        mate.id = *id;
                        mate.worker = Arc::clone(&moved);
                        mate.busy_since = None;
                    }
                    warn!(sampler = %self.name, source = %self.slots[i].status.name,
                        moved = mates.len(), thread = %worker.thread,
                        "Source read is stuck; the sources that shared its thread read on a new one.");
                }
                Err(e) => {
                    error!(sampler = %self.name, thread = %worker.thread, error = %e,
                        "Cannot start a reader thread; the sources behind a stuck read wait for it.");
                }
            }
        }
    }

    /// Matches the sampler's sources for this config with the running ones: unchanged keys
    /// keep their reader and status, new ones get reader threads (one per lane among them),
    /// removed ones are dropped (a thread ends when its current read returns and no source
    /// uses it any more).
    fn reconcile(&mut self, sampler: &mut S, cfg: &S::Config) {
        let mut old = std::mem::take(&mut self.slots);
        let mut new: Vec<SourceSpec<S::Key, S::Reading>> = Vec::new();
        let specs = sampler.sources(cfg);
        // The health rows keep the order the sampler lists its sources in, lanes or not.
        let order: Vec<S::Key> = specs.iter().map(|s| s.key.clone()).collect();
        for spec in specs {
            if let Some(i) = old.iter().position(|s| s.key == spec.key) {
                let mut slot = old.swap_remove(i);
                slot.status.name = spec.name;
                self.slots.push(slot);
            } else {
                new.push(spec);
            }
        }
        while !new.is_empty() {
            let lane = new[0].lane;
            let (group, rest): (Vec<_>, Vec<_>) = new
                .into_iter()
                .partition(|s| lane.is_some() && s.lane == lane);
            new = rest;
            // A source of no lane is a group of one.
            let group = if group.is_empty() {
                vec![new.remove(0)]
            } else {
                group
            };
            let thread = format!("sw-{}", lane.map_or(&*group[0].name, |l| l));
            let members: Vec<(u64, MakeRead<S::Reading>)> = group
                .iter()
                .map(|s| {
                    self.next_id += 1;
                    (self.next_id, Arc::clone(&s.make))
                })
                .collect();
            match spawn_worker(&thread, members.clone(), self.results_tx.clone()) {
                Ok(worker) => {
                    for (spec, (id, _)) in group.into_iter().zip(members) {
                        self.slots.push(Slot {
                            key: spec.key,
                            id,
                            worker: Arc::clone(&worker),
                            make: spec.make,
                            status: SourceStatus::new(spec.name),
                            busy_since: None,
                            last_request: None,
                            last_cpu: Duration::ZERO,
                            schedule: None,
                            error_log: Limiter::per_minute(),
                            stuck_log: Limiter::per_minute(),
                        });
                    }
                }
                Err(e) => {
                    for spec in group {
                        error!(sampler = %self.name, source = %spec.name, error = %e,
                            "Cannot start a reader thread; the source is off.");
                    }
                }
            }
        }
        self.slots
            .sort_by_key(|s| order.iter().position(|k| *k == s.key));
    }

    fn handle_all(&mut self, sampler: &mut S, batch: Vec<Outcome<S::Reading>>, cfg: &S::Config) {
        for o in batch {
            self.handle(sampler, o, cfg);
        }
    }

    fn handle(&mut self, sampler: &mut S, o: Outcome<S::Reading>, cfg: &S::Config) {
        // A reader of a source removed by a reload: nobody wants its answer.
        let Some(slot) = self.slots.iter_mut().find(|s| s.id == o.id) else {
            return;
        };
        slot.busy_since = None;
        slot.last_cpu = o.cpu;
        let s = &mut slot.status;
        s.last_duration = Some(o.finished.saturating_duration_since(o.started));
        s.cpu += o.cpu;
        s.reads += 1;
        match o.result {
            Ok(reading) => {
                s.last_success = Some(o.finished);
                match (&reading, s.missing) {
                    (Some(_), true) => info!(source = %s.name, "Source is available again."),
                    (None, false) => info!(
                        source = %s.name,
                        "Source file does not exist on this host; its metrics are absent."
                    ),
                    _ => {}
                }
                s.missing = reading.is_none();
                sampler.apply(&slot.key, o.finished, reading, s, cfg);
            }
            Err(Fail::Error(e)) => {
                s.count_error(e.kind());
                if let Some(held) = slot.error_log.allow(o.finished) {
                    warn!(source = %s.name, error = %e, held,
                        "Cannot read source; keeping its last value.");
                }
            }
            Err(Fail::Panic(msg)) => {
                s.count_error(ErrorKind::Panic);
                s.last_panic = Some(o.finished);
                if let Some(held) = slot.error_log.allow(o.finished) {
                    error!(source = %s.name, panic = %msg, held,
                        "Source reader panicked; restarted it, keeping the last value.");
                }
            }
        }
    }

    fn hook_panicked(&mut self, p: &(dyn Any + Send), at: Instant) {
        if let Some(held) = self.panic_log.allow(at) {
            error!(sampler = %self.name, panic = %panic_message(p), held,
                "The publish hook panicked; the snapshot was published.");
        }
    }

    fn sampler_panicked(&mut self, p: &(dyn Any + Send), at: Instant) {
        for slot in &mut self.slots {
            slot.status.count_error(ErrorKind::Panic);
            slot.status.last_panic = Some(at);
        }
        if let Some(held) = self.panic_log.allow(at) {
            error!(sampler = %self.name, panic = %panic_message(p), held,
                "Sampler panicked; restarted it (its peaks and integrals start again).");
        }
    }
}

/// `t + d`, with `d` capped at a day: config bounds keep intervals sane, and the driver must
/// not be the place where an absurd one overflows an `Instant` and panics.
fn after(t: Instant, d: Duration) -> Instant {
    let d = d.min(Duration::from_secs(86_400));
    t.checked_add(d).unwrap_or(t)
}

mod worker;

pub use worker::thread_cpu;
use worker::{panic_message, spawn_worker, Fail, Outcome, Worker, IDLE};

#[cfg(test)]
mod tests;
