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
mod tests {
    use super::*;

    const KALLSYMS: &str = "\
ffffffff81000000 T _stext
ffffffff822467c0 T __sched_text_start
ffffffff82246800 T __schedule
ffffffff82247000 T schedule
ffffffff8224f4e2 T __sched_text_end
ffffffff8224f4f0 T __lock_text_start
ffffffff82250f71 T __lock_text_end
ffffffff81400000 t __iomap_dio_rw
ffffffff81400900 t iomap_dio_rw
ffffffff82300000 d some_data
ffffffffc0a01230 t ext4_file_write_iter\t[ext4]
";

    #[test]
    fn bounds_of_this_machines_kallsyms_shape() {
        let b = bounds(KALLSYMS.as_bytes());
        assert_eq!(b.sched, (0xffffffff822467c0, 0xffffffff8224f4e2));
        assert_eq!(b.lock, (0xffffffff8224f4f0, 0xffffffff82250f71));
        assert!(b.known());
        let hidden: String = KALLSYMS
            .lines()
            .map(|l| format!("0000000000000000{}\n", &l[16..]))
            .collect();
        assert!(
            !bounds(hidden.as_bytes()).known(),
            "addresses hidden: zeros"
        );
    }

    #[test]
    fn resolves_each_address_to_the_text_symbol_below_it_in_one_pass() {
        let wanted = [
            0xffffffff81400042, // in __iomap_dio_rw
            0xffffffff81400901, // iomap_dio_rw+1
            0xffffffff82246810, // __schedule
            0xffffffff82300010, // past some_data (data is skipped): the text symbol below
            0xffffffffc0a01240, // a module function
            0x10,               // below everything
        ];
        let mut sorted = wanted.to_vec();
        sorted.sort_unstable();
        let got = resolve(KALLSYMS.as_bytes(), &sorted, false);
        let of = |ip: u64| got[sorted.iter().position(|&w| w == ip).unwrap()].clone();
        let f = |name: &str, start: u64, end: u64| Some((name.to_string(), start, end));
        assert_eq!(
            of(0xffffffff81400042),
            f("__iomap_dio_rw", 0xffffffff81400000, 0xffffffff81400900),
            "its function, and where the next begins"
        );
        assert_eq!(
            of(0xffffffff81400901),
            f("iomap_dio_rw", 0xffffffff81400900, 0xffffffff822467c0)
        );
        assert_eq!(
            of(0xffffffff82246810),
            f("__schedule", 0xffffffff82246800, 0xffffffff82247000)
        );
        assert_eq!(of(0xffffffffc0a01240).unwrap().0, "ext4_file_write_iter");
        assert_eq!(
            of(0xffffffffc0a01240).unwrap().2,
            u64::MAX,
            "the last symbol"
        );
        assert_eq!(of(0x10), None);
        assert_eq!(of(0xffffffff82300010).unwrap().0, "__lock_text_end");
    }

    #[test]
    fn lazy_names_come_after_a_pass() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kallsyms");
        std::fs::write(&p, KALLSYMS).unwrap();
        let mut s = Symbols::open(p);
        let t = Instant::now();
        assert_eq!(s.wchan(0xffffffff81400042), None, "queued");
        assert_eq!(&*s.frame(0xffffffff81400042), "0xffffffff81400042");
        assert!(s.due(t));
        s.pass(t);
        assert!(!s.due(t));
        assert_eq!(
            s.wchan(0xffffffff81400042).as_deref(),
            Some("__iomap_dio_rw")
        );
        assert_eq!(&*s.frame(0xffffffff81400042), "__iomap_dio_rw+0x42");
        // Another address in a function already met needs no pass.
        assert_eq!(&*s.frame(0xffffffff814000a0), "__iomap_dio_rw+0xa0");
        assert!(!s.due(t + PASS_EVERY));
        // Something new waits for the next pass, PASS_EVERY later.
        assert_eq!(s.wchan(0xffffffff82246810), None);
        assert!(!s.due(t + Duration::from_secs(1)));
        assert!(s.due(t + PASS_EVERY));
        s.pass(t + PASS_EVERY);
        assert_eq!(s.wchan(0xffffffff82246810).as_deref(), Some("__schedule"));
        // An address no text symbol covers is unknown, and never asked again.
        assert_eq!(s.wchan(0x10), None);
        s.pass(t + PASS_EVERY * 2);
        assert_eq!(s.wchan(0x10).as_deref(), Some("unknown"));
        assert!(!s.due(t + PASS_EVERY * 3));
    }

    /// After a costly pass, a new wait channel of a short episode waits for the budget, while a
    /// long episode's frame or wait channel is named at the next PASS_EVERY.
    #[test]
    fn a_long_episode_does_not_wait_for_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kallsyms");
        std::fs::write(&p, KALLSYMS).unwrap();
        let mut s = Symbols::open(p);
        let t = Instant::now();
        s.wchan(0xffffffff81400042);
        s.pass(t);
        // As if that pass had cost 55 ms at a 0.1 % budget.
        s.next_pass = Some(t + Duration::from_secs(55));
        assert_eq!(s.wchan(0xffffffff82246810), None);
        assert!(!s.due(t + PASS_EVERY), "a short episode's name waits");
        assert!(s.due(t + Duration::from_secs(55)));
        assert_eq!(s.wchan_soon(0xffffffff81400900), None);
        assert!(
            !s.due(t + Duration::from_secs(1)),
            "never closer than PASS_EVERY"
        );
        assert!(s.due(t + PASS_EVERY), "a long episode's name comes soon");
        s.pass(t + PASS_EVERY);
        assert_eq!(s.wchan(0xffffffff81400900).as_deref(), Some("iomap_dio_rw"));
        assert_eq!(s.wchan(0xffffffff82246810).as_deref(), Some("__schedule"));
        assert_eq!(&*s.frame(0xffffffff81400901), "iomap_dio_rw+0x1");
    }

    /// Bytes a pass read, one at a time (so nothing is read ahead of what it used).
    struct Counted<'a>(&'a [u8], std::rc::Rc<std::cell::Cell<usize>>);
    impl std::io::Read for Counted<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1.set(self.1.get() + n);
            Ok(n)
        }
    }
    fn counted(text: &str) -> (impl BufRead + '_, std::rc::Rc<std::cell::Cell<usize>>) {
        let read = std::rc::Rc::new(std::cell::Cell::new(0));
        let r = std::io::BufReader::with_capacity(1, Counted(text.as_bytes(), read.clone()));
        (r, read)
    }

    /// The shape of this machine's kallsyms: the kernel's text in address order, then data,
    /// then modules and trampolines above it.
    const SORTED: &str = "\
ffffffff81000000 T _stext
ffffffff81000080 T entry_SYSCALL_64
ffffffff815a5390 t folio_wait_bit_common
ffffffff815b4af0 T folio_wait_writeback
ffffffff81790590 T __iomap_dio_rw
ffffffff81790f00 T iomap_dio_rw
ffffffff81b51ff0 T blk_mq_get_tag
ffffffff822467c0 T __sched_text_start
ffffffff82247880 T io_schedule
ffffffff8224f4e2 T __sched_text_end
ffffffff8224f4f0 T __lock_text_start
ffffffff82250f71 T __lock_text_end
ffffffff82258780 T _etext
ffffffff82400000 D __start_rodata
ffffffffc0a01230 t ext4_file_write_iter\t[ext4]
ffffffffc0201000 t ftrace_trampoline\t[__builtin__ftrace]
";

    #[test]
    fn a_pass_over_the_kernels_own_text_stops_above_the_highest_address() {
        let b = bounds(SORTED.as_bytes());
        assert_eq!(b.text, (0xffffffff81000000, 0xffffffff82258780));
        let wanted = [0xffffffff815a53a0, 0xffffffff815b4b00];
        let (r, read) = counted(SORTED);
        let got = resolve(r, &wanted, true);
        let stop = SORTED.find("ffffffff81790590").unwrap();
        let through = stop + SORTED[stop..].find('\n').unwrap() + 1;
        assert_eq!(
            read.get(),
            through,
            "read through __iomap_dio_rw, the first symbol above the highest, and no further"
        );
        let full = resolve(SORTED.as_bytes(), &wanted, false);
        assert_eq!(got, full, "the same names and ends as a whole pass");
        assert_eq!(
            got[1],
            Some((
                "folio_wait_writeback".to_string(),
                0xffffffff815b4af0,
                0xffffffff81790590
            ))
        );

        // Out of order before the stop (not what a kernel lists: its binary search needs the
        // order): the order is not trusted, the pass reads it all.
        let shuffled = SORTED.replace(
            "ffffffff81000080 T entry_SYSCALL_64\n",
            "ffffffff815a0000 T moved_up\nffffffff81000080 T entry_SYSCALL_64\n",
        );
        let (r, read) = counted(&shuffled);
        let got = resolve(r, &wanted, true);
        assert_eq!(
            read.get(),
            shuffled.len(),
            "an unsorted run is read to its end"
        );
        assert_eq!(got, resolve(shuffled.as_bytes(), &wanted, false));
    }

    #[test]
    fn a_module_address_makes_the_pass_read_everything() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kallsyms");
        std::fs::write(&p, SORTED).unwrap();
        let mut s = Symbols::open(p);
        let t = Instant::now();
        s.wchan(0xffffffff815a53a0);
        s.wchan(0xffffffffc0a01240);
        s.pass(t);
        assert_eq!(
            s.wchan(0xffffffffc0a01240).as_deref(),
            Some("ext4_file_write_iter"),
            "the module's function, listed after the kernel's text"
        );
        assert_eq!(
            s.wchan(0xffffffff815a53a0).as_deref(),
            Some("folio_wait_bit_common")
        );
    }

    /// On this machine's own kallsyms: for addresses across the kernel's text, a pass that stops
    /// early names each exactly as a whole pass does, and reads less of the file.
    #[test]
    fn early_passes_agree_with_whole_ones_on_this_kernel() {
        let Ok(text) = std::fs::read_to_string("/proc/kallsyms") else {
            eprintln!("SKIPPED: /proc/kallsyms unreadable here");
            return;
        };
        let b = bounds(text.as_bytes());
        if b.text == (0, 0) || text.starts_with("0000000000000000") {
            eprintln!("SKIPPED: kallsyms hides its addresses or has no _stext/_etext here");
            return;
        }
        // Some function starts and some addresses inside functions, spread over the text.
        let starts: Vec<u64> = text
            .lines()
            .filter_map(|l| parse_line(l.as_bytes()))
            .filter(|&(a, ty, _)| matches!(ty, b't' | b'T') && b.in_text(a))
            .map(|(a, _, _)| a)
            .collect();
        assert!(starts.len() > 1000, "{} text symbols", starts.len());
        for fifth in 1..=5 {
            let hi = starts.len() * fifth / 5 - 1;
            let mut wanted: Vec<u64> = (0..8).map(|k| starts[hi * k / 8] + 3).collect();
            wanted.push(starts[hi]);
            wanted.sort_unstable();
            wanted.dedup();
            let read = std::rc::Rc::new(std::cell::Cell::new(0));
            let r = std::io::BufReader::new(Counted(text.as_bytes(), read.clone()));
            let early = resolve(r, &wanted, true);
            assert_eq!(
                early,
                resolve(text.as_bytes(), &wanted, false),
                "wanted up to {fifth}/5 of the text"
            );
            eprintln!(
                "up to {fifth}/5 of the text: read {} of {} bytes",
                read.get(),
                text.len()
            );
            if fifth < 5 {
                assert!(read.get() < text.len(), "stopped early");
            }
            assert!(early.iter().all(Option::is_some));
        }
    }
}
