//! Hysteresis and the verdict. Per cause: entered after its condition holds at the entry
//! thresholds on `enter_ticks` consecutive ticks; kept while it holds at least at the hold
//! thresholds (`hold_ratio` × each); left after `clear_after` without even that. The node is
//! stalled while any cause is active; one stall is one incident however its causes change.

use super::causes::{Finding, Level};
use super::detect::detect;
use super::tick::{Memory, Tick};
use super::{rfc3339, Active, Cause, Verdict, VerdictConfig};
use crate::node::Node;

#[derive(Debug, Default, Clone)]
struct State {
    /// Consecutive ticks at the entry level while not active.
    entering: u32,
    /// Active since (unix seconds).
    since: Option<f64>,
    /// Seconds without the hold level while active.
    quiet: f64,
    /// The last finding while active (kept through quiet ticks, so the verdict still says why).
    last: Option<Finding>,
}

/// Counters the metrics export.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Seconds spent with each cause active (`none`: not stalled), indexed like [`Cause::ALL`].
    pub seconds: [f64; 8],
    /// Stalls begun, by the cause that began them.
    pub stalls: [u64; 8],
}

/// One evaluation: the tick's rates and the verdict after it.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub tick: Tick,
    pub verdict: Verdict,
    /// The stall began on this tick (with this cause).
    pub began: Option<Cause>,
    /// The stall ended on this tick.
    pub ended: bool,
    /// Some active cause's condition held this tick (it is not merely easing).
    pub hot: bool,
}

pub struct Engine {
    config: VerdictConfig,
    cpus: f64,
    memory: Memory,
    states: [State; 7],
    stalled_since: Option<f64>,
    pub totals: Totals,
}

impl Engine {
    pub fn new(config: VerdictConfig, cpus: f64) -> Engine {
        Engine {
            config,
            cpus,
            memory: Memory::default(),
            states: Default::default(),
            stalled_since: None,
            totals: Totals::default(),
        }
    }

    pub fn set_config(&mut self, config: VerdictConfig) {
        self.config = config;
    }

    /// Evaluates the node if the host published a new snapshot since the last call.
    pub fn evaluate(&mut self, node: &Node) -> Option<Evaluation> {
        let tick = self.memory.tick(node, self.cpus)?;
        Some(self.step(tick, node))
    }

    /// One step of the hysteresis over the tick's findings.
    pub fn step(&mut self, tick: Tick, node: &Node) -> Evaluation {
        let findings = detect(&tick, node, &self.config);
        let now = tick.t_unix;
        let dt = tick.dt;
        let clear = self.config.clear_after.as_secs_f64();
        for (i, &cause) in Cause::DETECTED.iter().enumerate() {
            let f = findings.iter().find(|f| f.cause == cause);
            let s = &mut self.states[i];
            match (s.since, f) {
                (None, Some(f)) if f.level == Level::Enter => {
                    s.entering += 1;
                    // disk_stalled and lock carry their own duration (stall_after,
                    // lock_after): a second tick on top would only delay them.
                    let need = match cause {
                        Cause::DiskStalled | Cause::Lock => 1,
                        _ => self.config.enter_ticks.max(1),
                    };
                    if s.entering >= need {
                        // Since the first tick at the entry level: that is when it began.
                        let back = dt * f64::from(s.entering.saturating_sub(1));
                        s.since = Some(now - back);
                        s.quiet = 0.0;
                        s.last = Some(f.clone());
                    }
                }
                (None, _) => s.entering = 0,
                (Some(_), Some(f)) => {
                    s.quiet = 0.0;
                    s.last = Some(f.clone());
                }
                (Some(_), None) => {
                    s.quiet += dt;
                    if s.quiet >= clear {
                        *s = State::default();
                    }
                }
            }
        }
        let hot = self
            .states
            .iter()
            .any(|s| s.since.is_some() && s.quiet == 0.0);
        let mut causes: Vec<Active> = Vec::new();
        for (i, &cause) in Cause::DETECTED.iter().enumerate() {
            let s = &self.states[i];
            let (Some(since), Some(f)) = (s.since, &s.last) else {
                continue;
            };
            self.totals.seconds[cause.index()] += dt;
            let mut summary = f.summary.clone();
            if s.quiet > 0.0 {
                summary = format!("{summary} (easing for {:.0} s)", s.quiet);
            }
            causes.push(Active {
                cause,
                io: cause.io(),
                severity: f.severity,
                since: rfc3339(since),
                since_unix: since,
                since_seconds: (now - since).max(0.0),
                summary,
                evidence: f.evidence.clone(),
                who: f.who.clone(),
            });
        }
        // In the order of Cause::ALL (root causes first), which is the detection order.
        let mut began = None;
        let mut ended = false;
        let stalled = !causes.is_empty();
        match (self.stalled_since, causes.first()) {
            (None, Some(top)) => {
                let since = causes
                    .iter()
                    .map(|c| c.since_unix)
                    .fold(top.since_unix, f64::min);
                self.stalled_since = Some(since);
                began = Some(top.cause);
                self.totals.stalls[top.cause.index()] += 1;
            }
            (Some(_), None) => {
                self.stalled_since = None;
                ended = true;
            }
            _ => {}
        }
        if !stalled {
            self.totals.seconds[Cause::None.index()] += dt;
        }
        let verdict = match causes.first() {
            Some(top) => {
                let since = self.stalled_since.unwrap_or(top.since_unix);
                Verdict {
                    time: rfc3339(now),
                    time_unix: now,
                    stalled: true,
                    io: top.io,
                    cause: top.cause,
                    since: Some(rfc3339(since)),
                    since_unix: Some(since),
                    since_seconds: Some((now - since).max(0.0)),
                    summary: headline(&causes),
                    causes,
                }
            }
            None => Verdict {
                time: rfc3339(now),
                time_unix: now,
                summary: calm(&tick),
                ..Verdict::default()
            },
        };
        Evaluation {
            tick,
            verdict,
            began,
            ended,
            hot,
        }
    }
}

fn headline(causes: &[Active]) -> String {
    let top = &causes[0];
    let io = if top.io { "I/O" } else { "not I/O" };
    let mut s = format!("Stalled ({io}, {}): {}", top.cause.as_str(), top.summary);
    let rest: Vec<&str> = causes[1..].iter().map(|c| c.cause.as_str()).collect();
    if !rest.is_empty() {
        s.push_str(&format!(" [also: {}]", rest.join(", ")));
    }
    s
}

fn calm(t: &Tick) -> String {
    let p = |v: Option<f64>| format!("{:.1}%", v.unwrap_or(0.0) * 100.0);
    format!(
        "Not stalled: I/O pressure {}, CPU {}, memory {}; {} threads in D",
        p(t.psi[1][0]),
        p(t.psi[0][0]),
        p(t.psi[2][0]),
        t.d_threads
    )
}
