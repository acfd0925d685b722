//! The one periodic driver every source runs on: host files, the thread walk, the container
//! pass, probe writes and the cloud calls. A [`Sampler`] says *what* its sources are, when each
//! is due and what a reading means; the driver owns everything else, the same way for all:
//!
//! - **a reader thread per source**: the sampler thread never touches a file. It asks idle
//!   readers for a reading and waits for answers up to a deadline. A read stuck in the kernel
//!   (a file on a hung disk sits in D and cannot be interrupted) stops only its own source,
//!   which keeps its last value; a stuck reader is never replaced by a new thread, so a long
//!   hang cannot pile up threads. An answer after the deadline is applied on a later tick.
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
    wake: Sender<()>,
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
        let (wake, wake_rx) = mpsc::channel();
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
        let _ = self.wake.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Why a read failed.
enum Fail {
    Error(Error),
    Panic(String),
}

/// What a reader thread sends back after one read.
struct Outcome<R> {
    /// The reader's id (not its place: sources come and go with the config).
    id: u64,
    started: Instant,
    finished: Instant,
    cpu: Duration,
    result: Result<Option<R>, Fail>,
}

/// The driver's handle on one source.
struct Slot<K> {
    key: K,
    id: u64,
    req: SyncSender<()>,
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
    slots: Vec<Slot<S::Key>>,
    results: Receiver<Outcome<S::Reading>>,
    results_tx: Sender<Outcome<S::Reading>>,
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
        while let Ok(o) = self.results.try_recv() {
            self.handle(sampler, o, cfg);
        }
        for slot in &mut self.slots {
            slot.schedule = sampler.schedule(&slot.key, cfg, t);
            let Some(sch) = slot.schedule else {
                continue;
            };
            let cadence = budget::stretch(sch.every, slot.last_cpu, sch.max_cpu);
            slot.status.timeout = sch.timeout;
            // 20 ms of slack: a tick that starts a hair early must not skip a whole interval.
            let due = slot.last_request.is_none_or(|r| {
                t.saturating_duration_since(r) + Duration::from_millis(20) >= cadence
            });
            if due && slot.busy_since.is_none() && slot.req.try_send(()).is_ok() {
                slot.busy_since = Some(t);
                slot.last_request = Some(t);
            }
        }
        let deadline = after(t, sampler.wait(cfg));
        while self.slots.iter().any(|s| s.busy_since.is_some()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.results.recv_timeout(left) {
                Ok(o) => self.handle(sampler, o, cfg),
                Err(_) => break,
            }
        }
        let now = Instant::now();
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

    /// Matches the sampler's sources for this config with the running ones: unchanged keys
    /// keep their reader and status, new ones get a reader thread, removed ones are dropped
    /// (their thread ends when its current read returns).
    fn reconcile(&mut self, sampler: &mut S, cfg: &S::Config) {
        let mut old = std::mem::take(&mut self.slots);
        for spec in sampler.sources(cfg) {
            if let Some(i) = old.iter().position(|s| s.key == spec.key) {
                let mut slot = old.swap_remove(i);
                slot.status.name = spec.name;
                self.slots.push(slot);
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            match spawn_reader(&spec.name, id, spec.make, self.results_tx.clone()) {
                Ok(req) => self.slots.push(Slot {
                    key: spec.key,
                    id,
                    req,
                    status: SourceStatus::new(spec.name),
                    busy_since: None,
                    last_request: None,
                    last_cpu: Duration::ZERO,
                    schedule: None,
                    error_log: Limiter::per_minute(),
                    stuck_log: Limiter::per_minute(),
                }),
                Err(e) => {
                    error!(sampler = %self.name, source = %spec.name, error = %e,
                        "Cannot start a reader thread; the source is off.");
                }
            }
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

fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Starts a source's reader thread: one read per request, results to `results`. The thread
/// ends when its request channel closes, or, when stuck in a read, when that read returns.
fn spawn_reader<R: Send + 'static>(
    name: &str,
    id: u64,
    make: MakeRead<R>,
    results: Sender<Outcome<R>>,
) -> std::io::Result<SyncSender<()>> {
    let (req, rx) = mpsc::sync_channel::<()>(1);
    thread::Builder::new()
        .name(format!("sw-{name}"))
        // Readers parse small files: a small stack keeps RSS low with a dozen of them.
        .stack_size(256 * 1024)
        .spawn(move || {
            let mut read = make();
            while rx.recv().is_ok() {
                let started = Instant::now();
                let cpu0 = thread_cpu();
                let result = match catch_unwind(AssertUnwindSafe(&mut read)) {
                    Ok(r) => r.map_err(Fail::Error),
                    Err(p) => {
                        read = make();
                        Err(Fail::Panic(panic_message(&*p)))
                    }
                };
                let cpu = thread_cpu().saturating_sub(cpu0);
                let o = Outcome {
                    id,
                    started,
                    finished: Instant::now(),
                    cpu,
                    result,
                };
                if results.send(o).is_err() {
                    break;
                }
            }
        })?;
    Ok(req)
}

/// CPU time (user + system) of the calling thread so far.
pub fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass; RUSAGE_THREAD is Linux-only,
    // which this crate is.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv =
        |t: libc::timeval| Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.max(0) as u32) * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[cfg(test)]
mod tests;
