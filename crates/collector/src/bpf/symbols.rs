//! Kernel addresses → function names, from `/proc/kallsyms`. Sample (Debian 12, kernel 6.18):
//! ```text
//! ffffffff822467c0 T __sched_text_start
//! ffffffff82246800 T __schedule
//! ffffffffc0a01230 t ext4_file_write_iter<TAB>[ext4]
//! ```
//! The kernel shows the addresses only to a reader with `CAP_SYSLOG` (or with
//! `kernel.kptr_restrict=0` and `kernel.perf_event_paranoid<=1`); otherwise every address is 0 and
//! the episodes have no wait channel ("unknown") and stacks without names.
//!
//! Memory: the table has ~120k symbols (~5 MB as strings). It is never kept: one streaming pass
//! finds the scheduler and lock text bounds at load, and later passes resolve only the addresses
//! the episodes need (wait channels and long-episode stacks: tens to hundreds), at most one pass
//! per [`PASS_EVERY`], the names kept in a bounded cache (until then an address has no name:
//! a wait channel shows as `unknown`, an ended episode waits for its name).
//!
//! A pass reads only as far as it must: the kernel lists its own text symbols first, sorted by
//! address (the order `kallsyms_lookup`'s binary search needs), so when every wanted address is
//! in the kernel's text (`_stext`..`_etext`, not a module's) the pass stops at the first symbol
//! above the highest one. Most of a pass's cost is the kernel formatting lines as they are read
//! (~40 ms of ~55 ms for the 121k lines here), and the functions a stall waits in (mm, fs, block)
//! sit in the first two thirds of the text.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Minimum time between two passes over kallsyms. A pass is only made when an address outside
/// every function met so far shows up, and costs ~50-60 ms of CPU here (mostly the kernel
/// formatting kallsyms), so passes are also spaced to keep them under [`PASS_BUDGET`] of a core.
pub const PASS_EVERY: Duration = Duration::from_secs(2);
/// Share of one core that passes may use after [`LEARNING`]: the next pass waits at least
/// `cost / PASS_BUDGET`. A node's usual wait channels are named in the first [`LEARNING`], every
/// [`PASS_EVERY`]; after it a new one is rare, and waiting a minute or two for its name (its
/// episodes are counted meanwhile, under their name once known) keeps the source within issue
/// 16's 0.2 % of a core at rest (at 1 % passes were most of its cost). During a stall new wait
/// channels keep coming (the stall's own set-up and spread: the journal, writeback, other
/// writers), and the budget is what bounds the passes: at 0.1 % they took ~0.05 % of a core of
/// the 0.5 % the whole agent may spend then. 0.05 % since passes stop early: those of a stall
/// cost 10–31 ms here instead of ~55, so a new wait channel still waits ~20–60 s for its name.
pub const PASS_BUDGET: f64 = 0.0005;
pub const LEARNING: Duration = Duration::from_secs(60);
/// Functions (and addresses outside any) kept.
const MAX_NAMES: usize = 8192;

/// Where the scheduler's and the lock functions' text are: a wait channel is the first frame
/// outside both (the rule of the kernel's `get_wchan()`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bounds {
    pub sched: (u64, u64),
    pub lock: (u64, u64),
    /// The kernel's own text, `_stext`..`_etext` (0s when not found: every pass reads it all).
    pub text: (u64, u64),
}

impl Bounds {
    pub fn known(&self) -> bool {
        self.sched.1 > self.sched.0
    }

    /// Whether `ip` is in the kernel's own text, where a pass may stop early.
    fn in_text(&self, ip: u64) -> bool {
        self.text.0 <= ip && ip < self.text.1
    }
}

/// One line: (address, type letter, name without the module). Bytes, not `str`: a pass
/// parses ~120k lines, and allocating a `String` for each was most of its user time.
fn parse_line(line: &[u8]) -> Option<(u64, u8, &[u8])> {
    let mut it = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty());
    let addr = it.next()?.iter().try_fold(0u64, |a, &c| {
        let d = (c as char).to_digit(16)?;
        a.checked_mul(16)?.checked_add(u64::from(d))
    })?;
    let ty = *it.next()?.first()?;
    let name = it.next()?;
    Some((addr, ty, name))
}

/// Calls `f` with each line of `text` (one reused buffer).
fn each_line(mut text: impl BufRead, mut f: impl FnMut(&[u8]) -> bool) {
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        match text.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if !f(&buf) {
                    return;
                }
            }
        }
    }
}

/// The bounds, from kallsyms text.
pub fn bounds(text: impl BufRead) -> Bounds {
    let mut b = Bounds::default();
    each_line(text, |line| {
        let Some((addr, _, name)) = parse_line(line) else {
            return true;
        };
        match name {
            b"__sched_text_start" => b.sched.0 = addr,
            b"__sched_text_end" => b.sched.1 = addr,
            b"__lock_text_start" => b.lock.0 = addr,
            b"__lock_text_end" => b.lock.1 = addr,
            b"_stext" => b.text.0 = addr,
            b"_etext" => b.text.1 = addr,
            _ => return true,
        }
        let all = [b.sched, b.lock, b.text];
        !all.iter().all(|&(start, end)| start != 0 && end != 0)
    });
    if b.text.1 <= b.text.0 {
        b.text = (0, 0);
    }
    b
}

/// For each address (sorted, distinct), the text symbol at or below it and where the next one
/// begins: `(name, start, end)`, so that later addresses inside the same function need no pass.
/// One pass; memory is per wanted address, not per symbol. With `early`, the caller knows every
/// wanted address is in the kernel's own text: the pass ends at the first text symbol above the
/// highest, as long as every line before it came in address order (else it reads on to the end).
/// It trusts the kernel's order from there on: `kallsyms_lookup` binary-searches that table.
pub fn resolve(text: impl BufRead, wanted: &[u64], early: bool) -> Vec<Option<(String, u64, u64)>> {
    // Slot j holds the symbols in (wanted[j-1], wanted[j]] (slot len: above them all). The
    // function of wanted[k] is the highest symbol of slots 0..=k; where it ends, the lowest of
    // slots k+1... Names are copied into each slot's own buffer (in the sorted run of vmlinux
    // every line improves its slot: no allocation per line).
    let n = wanted.len();
    let mut high: Vec<u64> = vec![0; n];
    let mut low: Vec<u64> = vec![u64::MAX; n + 1];
    let mut names: Vec<Vec<u8>> = vec![Vec::new(); n];
    let highest = wanted.last().copied().unwrap_or(0);
    let (mut sorted, mut last) = (early, 0u64);
    each_line(text, |line| {
        let Some((addr, ty, name)) = parse_line(line) else {
            return true;
        };
        sorted &= addr >= last;
        last = addr;
        if !matches!(ty, b't' | b'T' | b'w' | b'W') || addr == 0 {
            return true;
        }
        let j = wanted.partition_point(|&w| w < addr);
        low[j] = low[j].min(addr);
        if j < n && high[j] < addr {
            high[j] = addr;
            names[j].clear();
            names[j].extend_from_slice(name);
        }
        // Every symbol at or below `highest` came before this one.
        !(sorted && addr > highest)
    });
    for j in (0..n).rev() {
        low[j] = low[j].min(low[j + 1]);
    }
    let mut best: Option<usize> = None;
    (0..n)
        .map(|k| {
            if high[k] != 0 && best.is_none_or(|b| high[b] < high[k]) {
                best = Some(k);
            }
            best.map(|b| {
                (
                    String::from_utf8_lossy(&names[b]).into_owned(),
                    high[b],
                    low[k + 1],
                )
            })
        })
        .collect()
}

/// Names of addresses, resolved lazily in batches.
pub struct Symbols {
    path: PathBuf,
    pub bounds: Bounds,
    /// Functions met so far: start → (end, name). An address inside one needs no pass.
    funcs: BTreeMap<u64, (u64, Arc<str>)>,
    /// Addresses no text symbol covers: not asked again.
    nowhere: HashSet<u64>,
    pending: BTreeSet<u64>,
    /// When the next pass may run.
    next_pass: Option<Instant>,
    /// When the last pass ran.
    last_pass: Option<Instant>,
    /// Something pending belongs to a long episode (a stall's stack or wait channel): it is
    /// named at the next [`PASS_EVERY`], not after the budget's wait.
    urgent: bool,
    opened: Instant,
}

impl Symbols {
    /// Reads the bounds from `path` (`<procfs>/kallsyms`).
    pub fn open(path: PathBuf) -> Symbols {
        let b = std::fs::File::open(&path)
            .map(|f| bounds(std::io::BufReader::new(f)))
            .unwrap_or_default();
        Symbols {
            path,
            bounds: b,
            funcs: BTreeMap::new(),
            nowhere: HashSet::new(),
            pending: BTreeSet::new(),
            next_pass: None,
            last_pass: None,
            urgent: false,
            opened: Instant::now(),
        }
    }

    /// The function `ip` is in, and the offset, if known.
    fn find(&self, ip: u64) -> Option<(&Arc<str>, u64)> {
        let (start, (end, name)) = self.funcs.range(..=ip).next_back()?;
        (ip < *end).then_some((name, ip - start))
    }

    /// Whether `ip` needs no pass: inside a function met so far, known to be in none, or 0.
    pub fn named(&self, ip: u64) -> bool {
        ip == 0 || !self.bounds.known() || self.find(ip).is_some() || self.nowhere.contains(&ip)
    }

    /// Asks for `ip` at the next pass, unless it is known to be nowhere.
    fn want(&mut self, ip: u64, urgent: bool) {
        if self.bounds.known() && !self.nowhere.contains(&ip) {
            self.pending.insert(ip);
            self.urgent |= urgent;
        }
    }

    /// The name of a wait channel address (function only): `None` until a pass resolved it,
    /// `unknown` when no text symbol covers it.
    pub fn wchan(&mut self, ip: u64) -> Option<Arc<str>> {
        self.wchan_of(ip, false)
    }

    /// [`Symbols::wchan`] of a long episode's wait channel: named at the next [`PASS_EVERY`].
    pub fn wchan_soon(&mut self, ip: u64) -> Option<Arc<str>> {
        self.wchan_of(ip, true)
    }

    fn wchan_of(&mut self, ip: u64, urgent: bool) -> Option<Arc<str>> {
        if let Some((name, _)) = self.find(ip) {
            return Some(name.clone());
        }
        if self.nowhere.contains(&ip) {
            return Some(Arc::from("unknown"));
        }
        self.want(ip, urgent);
        None
    }

    /// A frame: `function+0xoff`, or the hex address until it is resolved. Only long episodes'
    /// stacks are named, so a frame is always wanted at the next [`PASS_EVERY`].
    pub fn frame(&mut self, ip: u64) -> Arc<str> {
        if let Some((name, off)) = self.find(ip) {
            return Arc::from(format!("{name}+{off:#x}"));
        }
        self.want(ip, true);
        Arc::from(format!("{ip:#x}"))
    }

    /// Whether a pass is due: there is something to resolve and the last pass is far enough
    /// behind ([`PASS_EVERY`], stretched to keep passes under [`PASS_BUDGET`], unless a long
    /// episode waits for a name).
    pub fn due(&self, now: Instant) -> bool {
        let soon = self.urgent
            && self
                .last_pass
                .is_none_or(|t| now >= t.checked_add(PASS_EVERY).unwrap_or(t));
        !self.pending.is_empty() && (soon || self.next_pass.is_none_or(|t| now >= t))
    }

    /// One pass over kallsyms for everything pending.
    pub fn pass(&mut self, now: Instant) {
        let urgent = std::mem::take(&mut self.urgent);
        let wanted = self.pending.len();
        self.last_pass = Some(now);
        let cpu0 = crate::sample::driver::thread_cpu();
        self.resolve_pending();
        let cost = crate::sample::driver::thread_cpu().saturating_sub(cpu0);
        let wait = if now.saturating_duration_since(self.opened) < LEARNING {
            PASS_EVERY
        } else {
            PASS_EVERY.max(cost.mul_f64(1.0 / PASS_BUDGET))
        };
        self.next_pass = now.checked_add(wait);
        tracing::debug!(
            wanted,
            urgent,
            cpu_ms = cost.as_secs_f64() * 1e3,
            next_budgeted_s = wait.as_secs(),
            "bpf: a kallsyms pass named the new kernel addresses"
        );
    }

    fn resolve_pending(&mut self) {
        let wanted: Vec<u64> = std::mem::take(&mut self.pending).into_iter().collect();
        let Ok(f) = std::fs::File::open(&self.path) else {
            return;
        };
        let early = wanted.iter().all(|&ip| self.bounds.in_text(ip));
        let found = resolve(std::io::BufReader::new(f), &wanted, early);
        if self.funcs.len() + wanted.len() > MAX_NAMES {
            self.funcs.clear();
        }
        if self.nowhere.len() + wanted.len() > MAX_NAMES {
            self.nowhere.clear();
        }
        for (ip, f) in wanted.into_iter().zip(found) {
            match f {
                Some((name, start, end)) => {
                    self.funcs.insert(start, (end, Arc::from(name)));
                }
                None => {
                    self.nowhere.insert(ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
