//! `stallwatch dstate`: the `ps -eLo stat,... | grep " D "` loop done right. Lists threads in
//! uninterruptible sleep now with their process, group, cgroup, kernel wait channel and how
//! long they have been stuck (tracked across walks by thread id + start time), optionally with
//! the kernel stacks of the longest-stuck ones. Same walker and grouping as the agent.
//!
//! `--stack` uses the eBPF episode source where it can run (`stallwatch_collector::bpf`): the
//! stack each thread went to sleep in, captured by `sched_switch` (no `/proc/<pid>/stack`, which
//! needs `CAP_SYS_ADMIN`), and the long episodes (≥ 100 ms) that *ended* while it watched, with
//! their stacks: what sleepingBeauties.stp did by hand. Elsewhere it reads
//! `/proc/<pid>/task/<tid>/stack`.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use stallwatch_collector::bpf::kernel::Sizes;
use stallwatch_collector::bpf::source::{Batch, Long, Reading, Settings, Source};
use stallwatch_collector::bpf::{self, BpfConfig};
use stallwatch_collector::proc::tasks::{Walk, Walker};
use stallwatch_collector::proc::{pressure, stat};
use stallwatch_collector::sample::dstate::{DThread, DTracker};
use stallwatch_collector::sample::threads::ThreadsConfig;
use stallwatch_collector::Roots;

use crate::cli::{Common, DstateArgs, Exit};

/// One walk applied to the tracker: the walk, threads in D now, D threads per group.
type Observed = (Walk, Vec<DThread>, HashMap<std::sync::Arc<str>, u64>);

#[derive(Serialize)]
struct Report<'a> {
    time: String,
    threads_total: u64,
    threads_in_d: usize,
    procs_blocked: Option<u64>,
    io_pressure_some_avg10: Option<f64>,
    groups: Vec<GroupOut>,
    dstate: Vec<ThreadOut<'a>>,
    /// With --stack and the eBPF source: episodes of at least 100 ms that ended while watching,
    /// newest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    long_episodes: Option<Vec<LongOut>>,
}

#[derive(Serialize)]
struct LongOut {
    pid: u32,
    tid: u32,
    comm: String,
    wchan: Option<String>,
    container_id: Option<String>,
    seconds: f64,
    stack: Option<Vec<String>>,
}

/// The eBPF source for `--stack`: loaded once, drained at each refresh.
struct Tracer {
    src: Source,
    /// Stacks of the episodes in flight, by tid.
    stacks: HashMap<u32, Vec<String>>,
    long: Vec<Long>,
}

/// Episodes at least this long are listed with their stacks when they end.
const TRACE_LONG: Duration = Duration::from_millis(100);

impl Tracer {
    fn start(roots: &Roots) -> Option<Tracer> {
        bpf::availability(roots, bpf::cap_eff()).ok()?;
        let d = BpfConfig::default();
        let settings = Settings {
            sizes: Sizes {
                in_flight: d.max_in_flight,
                keys: d.max_keys,
                ring_bytes: d.ring_bytes,
            },
            long: TRACE_LONG,
        };
        let mut src = Source::new(
            std::sync::Arc::new(roots.clone()),
            settings,
            Default::default(),
        );
        match src.read() {
            Ok(Some(Reading::Drain(_))) => Some(Tracer {
                src,
                stacks: HashMap::new(),
                long: Vec::new(),
            }),
            Ok(Some(Reading::Off(why))) => {
                eprintln!("stallwatch: eBPF source off ({why}); stacks from /proc");
                None
            }
            _ => None,
        }
    }

    /// Drains: the stacks of what is in D now, and the long episodes that ended.
    fn refresh(&mut self) {
        if let Ok(Some(Reading::Drain(b))) = self.src.read() {
            let Batch { running, long, .. } = b;
            self.stacks = running
                .into_iter()
                .filter_map(|r| Some((r.tid, lines(r.stack.as_deref()?))))
                .collect();
            self.long.extend(long);
            let n = self.long.len().saturating_sub(256);
            self.long.drain(..n);
        }
    }
}

fn lines(s: &str) -> Vec<String> {
    s.lines().map(str::to_string).collect()
}

#[derive(Serialize)]
struct GroupOut {
    group: String,
    threads: u64,
}

#[derive(Serialize)]
struct ThreadOut<'a> {
    pid: u32,
    tid: u32,
    comm: &'a str,
    group: &'a str,
    wchan: Option<&'a str>,
    cgroup: Option<&'a str>,
    /// The container the thread belongs to, from its cgroup path's shape.
    container_id: Option<String>,
    runtime: Option<&'static str>,
    pod_uid: Option<String>,
    /// Kubernetes QoS class (guaranteed, burstable, besteffort) when the path says it.
    qos: Option<&'static str>,
    kernel_thread: bool,
    /// Lower bound: time since the first walk that saw it in D.
    seconds_in_d: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    stack: Option<Vec<String>>,
}

pub fn main(common: &Common, args: &DstateArgs) -> anyhow::Result<Exit> {
    // `[threads]` only: nothing else of the config matters here, and nothing in it is looked
    // up on disk, so the tool runs during the stall it is for.
    let cfg = match &common.config_file {
        Some(p) => crate::config::load_threads(p)?,
        None => ThreadsConfig::default(),
    };
    let roots = common.roots();
    let mut walker = Walker::new();
    let mut tracker = DTracker::default();
    let mut walk_once = |tracker: &mut DTracker| -> Result<Observed, String> {
        let walk = walker.walk(&roots).map_err(|e| e.to_string())?;
        let (stuck, counts) =
            tracker.apply(&walk, Instant::now(), &cfg.rules, Duration::from_secs(3600));
        Ok((walk, stuck, counts))
    };
    let stdout = std::io::stdout();
    let mut tracer = if args.stack {
        Tracer::start(&roots)
    } else {
        None
    };
    if args.once {
        walk_once(&mut tracker).map_err(anyhow::Error::msg)?;
        std::thread::sleep(args.observe);
        let (walk, stuck, counts) = walk_once(&mut tracker).map_err(anyhow::Error::msg)?;
        if let Some(t) = &mut tracer {
            t.refresh();
        }
        let mut out = stdout.lock();
        let _ = print(
            &mut out,
            &roots,
            args,
            &walk,
            stuck,
            &counts,
            false,
            tracer.as_ref(),
        );
        return Ok(Exit::Ok);
    }
    loop {
        match walk_once(&mut tracker) {
            Ok((walk, stuck, counts)) => {
                if let Some(t) = &mut tracer {
                    t.refresh();
                }
                let mut out = stdout.lock();
                if print(
                    &mut out,
                    &roots,
                    args,
                    &walk,
                    stuck,
                    &counts,
                    !args.json,
                    tracer.as_ref(),
                )
                .is_err()
                {
                    return Ok(Exit::Ok); // stdout closed (piped into head)
                }
            }
            Err(e) => eprintln!("stallwatch: {e}"),
        }
        std::thread::sleep(args.interval);
    }
}

fn stack_of(roots: &Roots, d: &DThread) -> Option<Vec<String>> {
    let text =
        std::fs::read_to_string(roots.proc(&format!("{}/task/{}/stack", d.pid, d.tid))).ok()?;
    // "[<0>] io_schedule+0x46/0x70": the address is hidden (kptr_restrict) and noise.
    Some(
        text.lines()
            .map(|l| l.split_once("] ").map_or(l, |(_, f)| f).to_string())
            .collect(),
    )
}

#[allow(clippy::too_many_arguments)]
fn print(
    out: &mut impl Write,
    roots: &Roots,
    args: &DstateArgs,
    walk: &Walk,
    mut stuck: Vec<DThread>,
    counts: &HashMap<std::sync::Arc<str>, u64>,
    clear: bool,
    tracer: Option<&Tracer>,
) -> std::io::Result<()> {
    let now = Instant::now();
    stuck.sort_by_key(|d| d.since);
    let total_d = stuck.len();
    stuck.truncate(args.limit as usize);
    let blocked = stat::read(roots)
        .ok()
        .flatten()
        .and_then(|s| s.procs_blocked);
    let psi = pressure::read(roots, pressure::Resource::Io)
        .ok()
        .flatten()
        .and_then(|p| p.some)
        .map(|r| r.avg10);
    let mut groups: Vec<GroupOut> = counts
        .iter()
        .map(|(g, n)| GroupOut {
            group: g.to_string(),
            threads: *n,
        })
        .collect();
    groups.sort_by(|a, b| {
        b.threads
            .cmp(&a.threads)
            .then_with(|| a.group.cmp(&b.group))
    });
    let stacks: Vec<Option<Vec<String>>> = stuck
        .iter()
        .enumerate()
        .map(|(i, d)| {
            (args.stack && i < usize::from(args.stacks))
                .then(|| {
                    tracer
                        .and_then(|t| t.stacks.get(&d.tid).cloned())
                        .or_else(|| stack_of(roots, d))
                })
                .flatten()
        })
        .collect();
    let time = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let long: Option<Vec<LongOut>> = tracer.map(|t| {
        t.long
            .iter()
            .rev()
            .take(usize::from(args.stacks))
            .map(|l| LongOut {
                pid: l.pid,
                tid: l.tid,
                comm: l.comm.clone(),
                wchan: l.wchan.as_deref().map(str::to_string),
                container_id: l.place.container.as_ref().map(|c| c.container_id.clone()),
                seconds: l.seconds,
                stack: l.stack.as_deref().map(lines),
            })
            .collect()
    });
    if args.json {
        let report = Report {
            time,
            threads_total: walk.total,
            threads_in_d: total_d,
            procs_blocked: blocked,
            io_pressure_some_avg10: psi,
            groups,
            dstate: stuck
                .iter()
                .zip(stacks)
                .map(|(d, stack)| (d, stack, container_of(d)))
                .map(|(d, stack, ctr)| ThreadOut {
                    pid: d.pid,
                    tid: d.tid,
                    comm: &d.comm,
                    group: &d.group,
                    wchan: d.wchan.as_deref(),
                    cgroup: d.cgroup.as_deref(),
                    runtime: ctr.as_ref().map(|i| i.runtime.as_str()),
                    pod_uid: ctr.as_ref().and_then(|i| i.pod_uid.clone()),
                    qos: ctr.as_ref().and_then(|i| i.qos).map(|q| q.as_str()),
                    container_id: ctr.map(|i| i.container_id.clone()),
                    kernel_thread: d.kernel_thread,
                    seconds_in_d: now.saturating_duration_since(d.since).as_secs_f64(),
                    stack,
                })
                .collect(),
            long_episodes: long,
        };
        serde_json::to_writer(&mut *out, &report).map_err(std::io::Error::other)?;
        writeln!(out)?;
        return out.flush();
    }
    if clear {
        write!(out, "\x1b[H\x1b[2J")?;
    }
    writeln!(
        out,
        "{time}  threads in D: {total_d} of {}  procs_blocked: {}  io PSI some avg10: {}",
        walk.total,
        blocked.map_or("-".into(), |b| b.to_string()),
        psi.map_or("-".into(), |p| format!("{:.1}%", p * 100.0)),
    )?;
    if !groups.is_empty() {
        let g: Vec<String> = groups
            .iter()
            .take(8)
            .map(|g| format!("{}×{}", g.threads, g.group))
            .collect();
        writeln!(out, "groups: {}", g.join("  "))?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:>8} {:>8} {:>8}  {:<16} {:<16} {:<24} {:<13} CGROUP",
        "IN D", "PID", "TID", "GROUP", "COMM", "WCHAN", "CONTAINER"
    )?;
    for (d, stack) in stuck.iter().zip(stacks) {
        let age = now.saturating_duration_since(d.since).as_secs_f64();
        writeln!(
            out,
            "{:>7.1}s {:>8} {:>8}  {:<16} {:<16} {:<24} {:<13} {}",
            age,
            d.pid,
            d.tid,
            clip(&d.group, 16),
            clip(&d.comm, 16),
            clip(d.wchan.as_deref().unwrap_or("-"), 24),
            // Docker's short form: the first 12 hex digits of the id.
            container_of(d).map_or("-".to_string(), |i| i
                .container_id
                .chars()
                .take(12)
                .collect()),
            d.cgroup.as_deref().unwrap_or(if d.kernel_thread {
                "(kernel thread)"
            } else {
                "-"
            }),
        )?;
        if let Some(frames) = stack {
            for f in frames {
                writeln!(out, "{:>30}{f}", "")?;
            }
        }
    }
    if total_d > stuck.len() {
        writeln!(out, "… {} more", total_d - stuck.len())?;
    }
    if total_d == 0 {
        writeln!(out, "(no thread is in D state)")?;
    }
    if let Some(long) = long.filter(|l| !l.is_empty()) {
        writeln!(out)?;
        writeln!(out, "Episodes of D state of at least {TRACE_LONG:?} that ended while watching (eBPF), newest first:")?;
        for l in long {
            writeln!(
                out,
                "{:>7.3}s {:>8} {:>8}  {:<16} {:<24}",
                l.seconds,
                l.pid,
                l.tid,
                clip(&l.comm, 16),
                clip(l.wchan.as_deref().unwrap_or("-"), 24)
            )?;
            for f in l.stack.into_iter().flatten() {
                writeln!(out, "{:>30}{f}", "")?;
            }
        }
    }
    out.flush()
}

/// The container the walk identified for the thread (the same exact id `/metrics` uses).
fn container_of(d: &DThread) -> Option<&stallwatch_collector::cgroup::Identity> {
    d.container.as_deref()
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}
