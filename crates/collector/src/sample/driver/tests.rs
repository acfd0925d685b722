//! The driver with a test sampler whose readers are told what to do through shared state:
//! answer, block (a read stuck in the kernel), fail, panic, or say "no such file".

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::*;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Answer(u64),
    Block,
    Fail,
    Panic,
    Absent,
}

/// What each reader does next, and a gate that blocked readers wait on.
#[derive(Default)]
struct Script {
    acts: Mutex<HashMap<&'static str, Act>>,
    gate: Mutex<bool>,
    made: Mutex<HashMap<&'static str, u32>>,
}

struct Cfg {
    sources: Vec<&'static str>,
    every: Duration,
    timeout: Duration,
    /// apply() panics when it sees this value.
    panic_on: Option<u64>,
    /// Every source in this lane, or each on its own thread.
    lane: Option<&'static str>,
}

#[derive(Debug, Default, Clone)]
struct Snap {
    values: HashMap<String, Option<u64>>,
    /// Every reading applied, in order.
    seen: Vec<(String, Option<u64>)>,
    statuses: Vec<SourceStatus>,
}

struct TestSampler {
    script: Arc<Script>,
    values: HashMap<String, Option<u64>>,
    seen: Vec<(String, Option<u64>)>,
}

impl Sampler for TestSampler {
    type Key = &'static str;
    type Reading = u64;
    type Config = Cfg;
    type Snapshot = Snap;

    fn sources(&mut self, cfg: &Cfg) -> Vec<SourceSpec<&'static str, u64>> {
        cfg.sources
            .iter()
            .map(|&name| {
                let script = Arc::clone(&self.script);
                SourceSpec {
                    key: name,
                    name: Cow::Borrowed(name),
                    make: reader(move || {
                        *script.made.lock().unwrap().entry(name).or_insert(0) += 1;
                        let script = Arc::clone(&script);
                        move || {
                            let act = script.acts.lock().unwrap().get(name).copied();
                            match act.unwrap_or(Act::Answer(1)) {
                                Act::Answer(v) => Ok(Some(v)),
                                Act::Absent => Ok(None),
                                Act::Fail => Err(Error::Io {
                                    path: PathBuf::from(name),
                                    source: std::io::Error::from_raw_os_error(libc::EACCES),
                                }),
                                Act::Panic => panic!("reader {name} panics on purpose"),
                                Act::Block => {
                                    while !*script.gate.lock().unwrap() {
                                        std::thread::sleep(Duration::from_millis(5));
                                    }
                                    Ok(Some(99))
                                }
                            }
                        }
                    }),
                    lane: cfg.lane,
                }
            })
            .collect()
    }

    fn tick(&self, _: &Cfg) -> Duration {
        Duration::from_millis(20)
    }

    fn wait(&self, _: &Cfg) -> Duration {
        Duration::from_millis(15)
    }

    fn schedule(&mut self, _: &&'static str, cfg: &Cfg, _: Instant) -> Option<Schedule> {
        Some(Schedule {
            every: cfg.every,
            max_cpu: 0.0,
            timeout: cfg.timeout,
        })
    }

    fn apply(
        &mut self,
        key: &&'static str,
        _: Instant,
        reading: Option<u64>,
        _: &mut SourceStatus,
        cfg: &Cfg,
    ) {
        if reading.is_some() && reading == cfg.panic_on {
            panic!("apply panics on purpose");
        }
        self.values.insert(key.to_string(), reading);
        self.seen.push((key.to_string(), reading));
    }

    fn publish(&mut self, sources: &[SourceStatus], _: Instant, _: &Cfg) -> Snap {
        Snap {
            values: self.values.clone(),
            seen: self.seen.clone(),
            statuses: sources.to_vec(),
        }
    }
}

struct Rig {
    script: Arc<Script>,
    cfg: Arc<ArcSwap<Cfg>>,
    out: Arc<ArcSwap<Snap>>,
    driver: Option<Driver>,
}

impl Rig {
    fn new(sources: &[&'static str]) -> Rig {
        Rig::start(sources, None, Duration::from_millis(100))
    }

    /// All sources on one shared thread, named `sw-lane`.
    fn lane(sources: &[&'static str]) -> Rig {
        Rig::start(sources, Some("lane"), Duration::from_millis(100))
    }

    fn start(sources: &[&'static str], lane: Option<&'static str>, timeout: Duration) -> Rig {
        let script = Arc::new(Script::default());
        let cfg = Arc::new(ArcSwap::from_pointee(Cfg {
            sources: sources.to_vec(),
            every: Duration::from_millis(20),
            timeout,
            panic_on: None,
            lane,
        }));
        let out = Arc::new(ArcSwap::from_pointee(Snap::default()));
        let s = Arc::clone(&script);
        let driver = Driver::spawn(
            "test",
            move || TestSampler {
                script: Arc::clone(&s),
                values: HashMap::new(),
                seen: Vec::new(),
            },
            Arc::clone(&cfg),
            Arc::clone(&out),
            None,
        )
        .unwrap();
        Rig {
            script,
            cfg,
            out,
            driver: Some(driver),
        }
    }

    fn act(&self, name: &'static str, a: Act) {
        self.script.acts.lock().unwrap().insert(name, a);
    }

    fn status(&self, name: &str) -> Option<SourceStatus> {
        self.out
            .load()
            .statuses
            .iter()
            .find(|s| s.name == name)
            .cloned()
    }

    fn value(&self, name: &str) -> Option<Option<u64>> {
        self.out.load().values.get(name).copied()
    }

    /// Opens the gate of a blocked reader `name`, whose next reads answer 3; waits for one of
    /// them and returns every value applied for `name`, in order.
    fn release(&self, name: &'static str) -> Vec<Option<u64>> {
        self.act(name, Act::Answer(3));
        *self.script.gate.lock().unwrap() = true;
        self.wait_until("new reads after the release", |r| {
            r.value(name) == Some(Some(3))
        });
        self.out
            .load()
            .seen
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| *v)
            .collect()
    }

    fn made(&self, name: &str) -> u32 {
        self.script
            .made
            .lock()
            .unwrap()
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    fn wait_until(&self, what: &str, mut f: impl FnMut(&Rig) -> bool) {
        let t0 = Instant::now();
        while !f(self) {
            assert!(t0.elapsed() < Duration::from_secs(10), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        *self.script.gate.lock().unwrap() = true;
        if let Some(d) = self.driver.take() {
            d.stop();
        }
    }
}

#[test]
fn every_source_is_read_and_published_with_its_health() {
    let r = Rig::new(&["a", "b"]);
    r.act("a", Act::Answer(7));
    r.wait_until("both read", |r| {
        r.value("a") == Some(Some(7)) && r.value("b") == Some(Some(1))
    });
    r.wait_until("several reads", |r| {
        r.status("a").is_some_and(|s| s.reads >= 3)
    });
    let a = r.status("a").unwrap();
    assert!(a.last_success.is_some() && a.last_duration.is_some());
    assert_eq!(a.errors.total(), 0);
    assert_eq!(a.interval, Some(Duration::from_millis(20)));
    assert!(!a.missing);
}

#[test]
fn a_stuck_reader_stops_only_its_own_source_and_its_late_answer_is_applied() {
    let r = Rig::new(&["hung", "fine"]);
    r.act("hung", Act::Block);
    r.wait_until("hung is stuck", |r| {
        r.status("hung").is_some_and(|s| s.stuck(Instant::now()))
    });
    let fine_reads = r.status("fine").unwrap().reads;
    r.wait_until("fine keeps being read", |r| {
        r.status("fine").unwrap().reads >= fine_reads + 5
    });
    assert_eq!(r.value("hung"), None, "no value yet");
    assert_eq!(r.status("hung").unwrap().reads, 0);
    let seen = r.release("hung");
    assert_eq!(
        seen[0],
        Some(99),
        "the blocked read's own answer came first: {seen:?}"
    );
    assert!(!r.status("hung").unwrap().stuck(Instant::now()));
    assert_eq!(
        *r.script.made.lock().unwrap().get("hung").unwrap(),
        1,
        "a stuck reader is waited for, never replaced"
    );
}

#[test]
fn errors_keep_the_last_value_and_count_by_kind() {
    let r = Rig::new(&["a"]);
    r.act("a", Act::Answer(5));
    r.wait_until("read", |r| r.value("a") == Some(Some(5)));
    r.act("a", Act::Fail);
    r.wait_until("errors", |r| {
        r.status("a")
            .is_some_and(|s| s.errors.get(ErrorKind::Permission) >= 2)
    });
    assert_eq!(r.value("a"), Some(Some(5)), "last value kept");
    r.act("a", Act::Absent);
    r.wait_until("missing", |r| r.status("a").is_some_and(|s| s.missing));
    assert_eq!(
        r.value("a"),
        Some(None),
        "the sampler was told the file is gone"
    );
}

#[test]
fn a_panicking_reader_is_rebuilt_counted_and_reads_again() {
    let r = Rig::new(&["p", "q"]);
    r.act("p", Act::Panic);
    r.wait_until("panics counted", |r| {
        r.status("p")
            .is_some_and(|s| s.errors.get(ErrorKind::Panic) >= 2)
    });
    assert!(r.status("p").unwrap().last_panic.is_some());
    assert!(
        *r.script.made.lock().unwrap().get("p").unwrap() >= 2,
        "rebuilt"
    );
    r.act("p", Act::Answer(4));
    r.wait_until("reads again", |r| r.value("p") == Some(Some(4)));
    assert_eq!(
        r.status("q").unwrap().errors.total(),
        0,
        "the other source is untouched"
    );
}

#[test]
fn a_panicking_sampler_is_rebuilt_and_publishing_goes_on() {
    let r = Rig::new(&["a"]);
    r.act("a", Act::Answer(7));
    r.wait_until("first publish", |r| r.value("a") == Some(Some(7)));
    r.cfg.store(Arc::new(Cfg {
        sources: vec!["a"],
        every: Duration::from_millis(20),
        timeout: Duration::from_millis(100),
        panic_on: Some(13),
        lane: None,
    }));
    r.act("a", Act::Answer(13));
    // While every tick panics nothing is published (the snapshot ages: /healthz sees that).
    std::thread::sleep(Duration::from_millis(200));
    r.act("a", Act::Answer(2));
    r.wait_until("publishing again", |r| r.value("a") == Some(Some(2)));
    assert!(r.status("a").unwrap().errors.get(ErrorKind::Panic) >= 1);
    assert!(
        !r.out.load().seen.iter().any(|(_, v)| *v == Some(7)),
        "the rebuilt sampler starts afresh: {:?}",
        r.out.load().seen
    );
    let reads = r.status("a").unwrap().reads;
    assert!(
        reads >= 2,
        "the source's status survived the sampler restart: {reads}"
    );
}

#[test]
fn a_config_change_adds_and_removes_sources_and_keeps_the_unchanged() {
    let r = Rig::new(&["keep", "gone"]);
    r.wait_until("read", |r| r.status("keep").is_some_and(|s| s.reads >= 3));
    r.cfg.store(Arc::new(Cfg {
        sources: vec!["keep", "new"],
        every: Duration::from_millis(20),
        timeout: Duration::from_millis(100),
        panic_on: None,
        lane: None,
    }));
    r.wait_until("new source", |r| {
        r.status("new").is_some_and(|s| s.reads >= 1)
    });
    assert!(r.status("gone").is_none());
    assert!(r.status("keep").unwrap().reads >= 3, "counters kept");
    assert_eq!(*r.script.made.lock().unwrap().get("keep").unwrap(), 1);
}

#[test]
fn the_limiter_lets_one_line_a_minute_and_counts_the_rest() {
    let t0 = Instant::now();
    let mut l = Limiter::per_minute();
    assert_eq!(l.allow(t0), Some(0));
    assert_eq!(l.allow(t0 + Duration::from_secs(1)), None);
    assert_eq!(l.allow(t0 + Duration::from_secs(59)), None);
    assert_eq!(l.allow(t0 + Duration::from_secs(60)), Some(2));
    assert_eq!(l.allow(t0 + Duration::from_secs(61)), None);
}

#[test]
fn absurd_durations_do_not_overflow() {
    let t = Instant::now();
    assert!(after(t, Duration::MAX) > t);
    assert!(after(t, Duration::MAX) <= t + Duration::from_secs(86_400));
}

/// A sampler with no sources that ticks once an hour on its own and counts its publishes.
struct Sleepy;

impl Sampler for Sleepy {
    type Key = ();
    type Reading = ();
    type Config = ();
    type Snapshot = u64;

    fn sources(&mut self, _: &()) -> Vec<SourceSpec<(), ()>> {
        Vec::new()
    }
    fn tick(&self, _: &()) -> Duration {
        Duration::from_secs(3600)
    }
    fn wait(&self, _: &()) -> Duration {
        Duration::ZERO
    }
    fn schedule(&mut self, _: &(), _: &(), _: Instant) -> Option<Schedule> {
        None
    }
    fn apply(&mut self, _: &(), _: Instant, _: Option<()>, _: &mut SourceStatus, _: &()) {}
    fn publish(&mut self, _: &[SourceStatus], _: Instant, _: &()) -> u64 {
        0
    }
}

#[test]
fn a_waker_makes_the_sampler_tick_now_and_is_harmless_after_stop() {
    use std::sync::atomic::AtomicBool;
    let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // While `hold` is set, the publish hook does not return: the sampler is busy in a tick,
    // the way a slow read keeps it busy, and wakes that come meanwhile must not queue up.
    let hold = Arc::new(AtomicBool::new(false));
    let (counted, held) = (Arc::clone(&ticks), Arc::clone(&hold));
    let hook: Hook = Arc::new(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        while held.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let out = Arc::new(ArcSwap::from_pointee(0u64));
    let d = Driver::spawn(
        "sleepy",
        || Sleepy,
        Arc::new(ArcSwap::from_pointee(())),
        out,
        Some(hook),
    )
    .unwrap();
    let wait_for = |n: u64| {
        let t0 = Instant::now();
        while ticks.load(Ordering::SeqCst) < n {
            assert!(t0.elapsed() < Duration::from_secs(10), "no tick {n}");
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    wait_for(1);
    let wake = d.waker();
    for n in 2..5 {
        wake();
        wait_for(n);
    }
    // Hold the sampler inside one tick, wake it a hundred times, let it go: the hundred wakes
    // are one more tick, not a backlog.
    hold.store(true, Ordering::SeqCst);
    let before = ticks.load(Ordering::SeqCst);
    wake();
    wait_for(before + 1);
    for _ in 0..100 {
        wake();
    }
    hold.store(false, Ordering::SeqCst);
    wait_for(before + 2);
    // An unbounded queue would go on ticking a hundred times; give it the time to show.
    std::thread::sleep(Duration::from_millis(200));
    let after = ticks.load(Ordering::SeqCst);
    assert_eq!(after, before + 2, "{before} → {after}: a backlog of wakes");
    d.stop();
    wake();
}

/// Threads of this process (nextest runs each test in its own) with this name.
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim_end() == name)
        .count()
}

#[test]
fn a_lanes_sources_share_one_thread_and_each_keeps_its_own_health() {
    let r = Rig::lane(&["a", "b", "c"]);
    r.act("b", Act::Answer(2));
    r.act("c", Act::Fail);
    r.wait_until("every member read several times", |r| {
        ["a", "b", "c"]
            .iter()
            .all(|n| r.status(n).is_some_and(|s| s.reads >= 3))
    });
    assert_eq!(threads_named("sw-lane"), 1, "one thread for the lane");
    let names: Vec<String> = r
        .out
        .load()
        .statuses
        .iter()
        .map(|s| s.name.to_string())
        .collect();
    assert_eq!(
        names,
        ["a", "b", "c"],
        "health in the order the sampler lists them"
    );
    assert_eq!(r.value("a"), Some(Some(1)));
    assert_eq!(r.value("b"), Some(Some(2)));
    assert_eq!(r.value("c"), None, "a failing member has no value");
    assert!(r.status("c").unwrap().errors.get(ErrorKind::Permission) >= 3);
    assert_eq!(r.status("a").unwrap().errors.total(), 0);
    assert_eq!(r.status("b").unwrap().errors.total(), 0);
}

#[test]
fn a_stuck_lane_member_keeps_its_thread_and_its_mates_move_to_a_new_one() {
    // "hung" is read between the two others: "a" was read in the same request before it.
    let r = Rig::lane(&["a", "hung", "b"]);
    r.wait_until("all read once", |r| {
        ["a", "hung", "b"]
            .iter()
            .all(|n| r.status(n).is_some_and(|s| s.reads >= 1))
    });
    r.act("hung", Act::Block);
    r.wait_until("hung is stuck", |r| {
        r.status("hung").is_some_and(|s| s.stuck(Instant::now()))
    });
    let before = r.status("a").unwrap().reads;
    r.wait_until("the mates keep being read", |r| {
        r.status("a").unwrap().reads >= before + 5 && r.status("b").unwrap().reads >= before + 5
    });
    let now = Instant::now();
    assert!(!r.status("a").unwrap().stuck(now) && !r.status("b").unwrap().stuck(now));
    assert_eq!(
        threads_named("sw-lane"),
        2,
        "the stuck thread and the mates' new one"
    );
    assert_eq!(
        (r.made("a"), r.made("b")),
        (2, 2),
        "the mates' readers made again"
    );
    assert_eq!(
        r.made("hung"),
        1,
        "a stuck reader is waited for, never replaced"
    );

    // The stuck read returns: its answer is applied, and it reads alone on its old thread.
    let seen = r.release("hung");
    assert!(
        seen.contains(&Some(99)),
        "the blocked read's own answer was applied: {seen:?}"
    );
    let a = r.status("a").unwrap().reads;
    r.wait_until("everyone is read", |r| {
        r.status("a").unwrap().reads >= a + 3
    });
    assert_eq!(threads_named("sw-lane"), 2, "no thread more after the hang");
    assert_eq!(r.made("a"), 2);
    assert_eq!(r.made("hung"), 1);
}

#[test]
fn a_panicking_lane_member_is_rebuilt_alone() {
    // A panic's backtrace can take longer to print than 100 ms: that read would be stuck, and
    // its mate moved (and made again) for that reason, not for the panic.
    let r = Rig::start(&["p", "q"], Some("lane"), Duration::from_secs(5));
    r.act("p", Act::Panic);
    r.wait_until("panics counted", |r| {
        r.status("p")
            .is_some_and(|s| s.errors.get(ErrorKind::Panic) >= 2)
    });
    r.act("p", Act::Answer(4));
    r.wait_until("reads again", |r| r.value("p") == Some(Some(4)));
    assert_eq!(r.made("q"), 1, "its mate's reader is untouched");
    assert_eq!(r.status("q").unwrap().errors.total(), 0);
    assert_eq!(threads_named("sw-lane"), 1);
}
