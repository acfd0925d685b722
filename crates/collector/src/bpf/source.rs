//! The `bpf` source's reader: loads the programs on its first read (on the reader thread: the
//! verifier takes tens of milliseconds), then each read drains the maps and resolves what it
//! drained: comm bytes to labels, tgids to their cgroup and container (`/proc/<tgid>/stat` and
//! `/proc/<tgid>/cgroup`, cached a few seconds per tgid, as the walk caches per process),
//! addresses to names. Everything here reads files, so it runs on the reader thread; the
//! sampler only adds up what it gets.
//!
//! Seeds (threads the walk saw in D, whose episodes began before the programs attached) come
//! from the sampler through a mailbox, and are put in flight with `BPF_NOEXIST` (an episode the
//! tracepoint started wins); a seeded thread that is not in D any more by then is taken out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cgroup::{identify, Identity};
use crate::error::{Error, ParseError};
use crate::proc::{pid_cgroup, task_stat};
use crate::roots::Roots;

use super::episodes::{hist_of, Hist};
use super::kernel::{self, Counters, Episode, Kernel, Sizes, MAX_FRAMES, SEEDED};
use super::symbols::Symbols;

/// How long a tgid's placement is trusted (pid reuse within it would misattribute).
const PLACE_TTL: Duration = Duration::from_secs(10);
const MAX_PLACES: usize = 4096;
/// Aggregates held back until their wait channel is named (at most one kallsyms pass later).
const MAX_PEN: usize = 4096;
/// Episodes in flight given their stack, longest first (as `threads.stacks_max`'s default).
const MAX_STACKS: usize = 64;
/// Wait channels of seeded episodes: small numbers stand for names (kernel text is far above).
const MAX_SEEDS: usize = 4096;
/// Long episodes held back until their frames are named (the next kallsyms pass, at most
/// [`super::symbols::PASS_EVERY`] away for them), at most this long and this many: an incident
/// record wants `ext4_sync_file+0x1a`, not `0xffffffff8143e21a`.
const LONG_HOLD: Duration = Duration::from_secs(5);
const MAX_LONG_PEN: usize = 256;

/// What a reader is loaded with; a change reloads the programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub sizes: Sizes,
    pub long: Duration,
}

/// A thread in D the walk saw, to be put in flight.
#[derive(Debug, Clone)]
pub struct Seed {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub wchan: Option<String>,
    pub since: Instant,
    /// Its kernel stack as the walk read it (`/proc/<pid>/task/<tid>/stack`), if it did.
    pub stack: Option<Arc<str>>,
}

/// Where seeds wait for the reader's next read.
pub type Mailbox = Arc<Mutex<Vec<Seed>>>;

#[derive(Debug, Clone)]
pub struct Place {
    pub kernel_thread: bool,
    pub cgroup: Option<Arc<str>>,
    pub container: Option<Arc<Identity>>,
}

/// Aggregates that ended, resolved.
#[derive(Debug, Clone)]
pub struct Ended {
    pub comm: String,
    pub place: Place,
    pub wchan: Option<Arc<str>>,
    pub hist: Hist,
}

/// An episode running, resolved.
#[derive(Debug, Clone)]
pub struct Running {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub place: Place,
    pub wchan: Option<Arc<str>>,
    pub since: Instant,
    pub seeded: bool,
    pub stack: Option<Arc<str>>,
}

/// A long episode that ended, resolved.
#[derive(Debug, Clone)]
pub struct Long {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub place: Place,
    pub wchan: Option<Arc<str>>,
    pub seconds: f64,
    pub ended_unix: f64,
    pub stack: Option<Arc<str>>,
}

/// One read of the source.
#[derive(Debug)]
pub enum Reading {
    /// The programs cannot be loaded here: why. The sampler turns the source off.
    Off(String),
    Drain(Batch),
}

#[derive(Debug, Default)]
pub struct Batch {
    pub ended: Vec<Ended>,
    pub running: Vec<Running>,
    pub long: Vec<Long>,
    pub counters: Counters,
    pub symbols: bool,
    /// The first drain of programs just loaded (at start, or again after a `[bpf]` size
    /// changed on reload): their counters start at 0 and their in-flight map is empty, so
    /// what is in D now must be seeded again from a walk.
    pub attached: bool,
}

/// The reader's state, on its thread.
pub struct Source {
    roots: Arc<Roots>,
    settings: Settings,
    mailbox: Mailbox,
    kernel: Option<Kernel>,
    symbols: Option<Symbols>,
    places: HashMap<u32, (Instant, Place)>,
    pen: Vec<(Ended, u64)>,
    /// Long episodes waiting for names, with when they came.
    long_pen: Vec<(kernel::LongEvent, Instant)>,
    seed_names: Vec<Arc<str>>,
    /// The walk's stacks of seeded episodes, by tid, while they are in flight.
    seed_stacks: HashMap<u32, Arc<str>>,
    buf: Vec<u8>,
    /// A drain of these programs was handed out.
    drained: bool,
}

fn comm_of(b: &[u8; 16]) -> String {
    let n = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    task_stat::sanitize(&b[..n])
}

impl Source {
    pub fn new(roots: Arc<Roots>, settings: Settings, mailbox: Mailbox) -> Source {
        Source {
            roots,
            settings,
            mailbox,
            kernel: None,
            symbols: None,
            places: HashMap::new(),
            pen: Vec::new(),
            long_pen: Vec::new(),
            seed_names: Vec::new(),
            seed_stacks: HashMap::new(),
            buf: Vec::with_capacity(1024),
            drained: false,
        }
    }

    /// One read: load on the first, then drain.
    pub fn read(&mut self) -> Result<Option<Reading>, Error> {
        if self.kernel.is_none() {
            let symbols = Symbols::open(self.roots.proc("kallsyms"));
            let b = symbols.bounds;
            match Kernel::load(
                &self.roots.sys("kernel/btf/vmlinux"),
                self.settings.sizes,
                self.settings.long,
                b.sched,
                b.lock,
            ) {
                Ok(k) => self.kernel = Some(k),
                Err(why) => return Ok(Some(Reading::Off(clip(&why, 2000)))),
            }
            self.symbols = Some(symbols);
        }
        self.seed();
        let Some(k) = self.kernel.as_mut() else {
            return Ok(None);
        };
        let d = k.drain().map_err(|msg| Error::Parse {
            path: "bpf maps".into(),
            source: ParseError::new(0, msg),
        })?;
        let mut batch = self.resolve(d);
        batch.attached = !std::mem::replace(&mut self.drained, true);
        Ok(Some(Reading::Drain(batch)))
    }

    fn place(&mut self, tgid: u32, now: Instant) -> Place {
        if let Some((t, p)) = self.places.get(&tgid) {
            if now.saturating_duration_since(*t) < PLACE_TTL {
                return p.clone();
            }
        }
        if self.places.len() >= MAX_PLACES {
            self.places.clear();
        }
        let dir = self.roots.proc(&tgid.to_string());
        let kernel_thread = read_into(&dir.join("stat"), &mut self.buf)
            .then(|| {
                task_stat::parse(&self.buf)
                    .ok()
                    .map(|s| s.is_kernel_thread())
            })
            .flatten()
            .unwrap_or(false);
        let (cgroup, container) = if kernel_thread {
            (None, None)
        } else {
            match std::fs::read_to_string(dir.join("cgroup"))
                .ok()
                .and_then(|t| pid_cgroup::parse(&t).ok())
            {
                Some(lines) => {
                    let path = pid_cgroup::primary_path(&lines);
                    (Some(Arc::from(path)), identify(path).map(Arc::new))
                }
                None => (None, None),
            }
        };
        let p = Place {
            kernel_thread,
            cgroup,
            container,
        };
        self.places.insert(tgid, (now, p.clone()));
        p
    }

    fn wchan(&mut self, ip: u64) -> Option<Arc<str>> {
        if ip == 0 {
            return None;
        }
        if ip <= MAX_SEEDS as u64 {
            return self.seed_names.get(ip as usize - 1).cloned();
        }
        self.symbols.as_mut()?.wchan(ip)
    }

    fn stack(&mut self, frames: &[u64]) -> Option<Arc<str>> {
        let s = self.symbols.as_mut()?;
        if frames.is_empty() {
            return None;
        }
        let lines: Vec<Arc<str>> = frames.iter().map(|&ip| s.frame(ip)).collect();
        Some(Arc::from(lines.join("\n")))
    }

    fn resolve(&mut self, d: kernel::Drained) -> Batch {
        let now = Instant::now();
        // Ask for every name this drain needs, then one kallsyms pass if one is due, so that
        // names are known in the same read whenever possible.
        let visible = self.symbols.as_ref().is_some_and(|s| s.bounds.known());
        // Stacks of the MAX_STACKS longest episodes in flight (the walk's default budget of
        // kernel stacks): "who is in D now, and where" without /proc/<pid>/stack. Only of those
        // in flight for at least the long-episode threshold: the stack of a thread in D for a
        // few milliseconds at the instant of the drain says nothing about a stall, and naming
        // its frames meant a kallsyms pass (~55 ms) whenever such a thread passed through a
        // function not met before (measured: 0.33 % of a core at rest, nearly all passes).
        let cutoff = {
            let mut starts: Vec<u64> = d.in_flight.iter().map(|e| e.start_ns).collect();
            starts.sort_unstable();
            let longest = starts.get(MAX_STACKS - 1).copied().unwrap_or(u64::MAX);
            longest.min(
                d.now_ns
                    .saturating_sub(kernel::duration_ns(self.settings.long)),
            )
        };
        if visible {
            let s = self.symbols.as_mut().expect("symbols with the kernel");
            for (k, _) in &d.ended {
                if k.wchan > MAX_SEEDS as u64 {
                    s.wchan(k.wchan);
                }
            }
            for e in &d.in_flight {
                if e.wchan > MAX_SEEDS as u64 {
                    if e.start_ns <= cutoff {
                        s.wchan_soon(e.wchan);
                    } else {
                        s.wchan(e.wchan);
                    }
                }
                if e.start_ns <= cutoff {
                    frames(e.nframes, e.flags, &e.stack).iter().for_each(|&ip| {
                        s.frame(ip);
                    });
                }
            }
            for l in &d.long {
                s.wchan_soon(l.wchan);
                frames(l.nframes, l.flags, &l.stack).iter().for_each(|&ip| {
                    s.frame(ip);
                });
            }
            if s.due(now) {
                s.pass(now);
            }
        }
        let mut b = Batch {
            counters: d.counters,
            symbols: visible,
            ..Batch::default()
        };
        // What waited for its wait channel's name, then what ended now.
        let pen = std::mem::take(&mut self.pen);
        for (mut e, ip) in pen {
            e.wchan = self.wchan(ip);
            if e.wchan.is_some() || self.pen.len() >= MAX_PEN {
                b.ended.push(e);
            } else {
                self.pen.push((e, ip));
            }
        }
        for (k, v) in &d.ended {
            let overflow = *k == kernel::OVERFLOW;
            let e = Ended {
                comm: if overflow {
                    super::OTHER.to_string()
                } else {
                    comm_of(&k.comm)
                },
                place: if overflow {
                    Place {
                        kernel_thread: false,
                        cgroup: None,
                        container: None,
                    }
                } else {
                    self.place(k.tgid, now)
                },
                wchan: self.wchan(k.wchan),
                hist: hist_of(v.count, v.sum_ns, v.max_ns, &v.hist),
            };
            if e.wchan.is_none()
                && visible
                && k.wchan > MAX_SEEDS as u64
                && self.pen.len() < MAX_PEN
            {
                self.pen.push((e, k.wchan));
            } else {
                b.ended.push(e);
            }
        }
        let seeded: std::collections::HashSet<u32> = d
            .in_flight
            .iter()
            .filter(|e| e.flags & SEEDED != 0)
            .map(|e| e.tid)
            .collect();
        self.seed_stacks.retain(|tid, _| seeded.contains(tid));
        for e in &d.in_flight {
            let age = Duration::from_nanos(d.now_ns.saturating_sub(e.start_ns));
            let stack = if e.flags & SEEDED != 0 {
                self.seed_stacks.get(&e.tid).cloned()
            } else if e.start_ns <= cutoff {
                self.stack(frames(e.nframes, e.flags, &e.stack))
            } else {
                None
            };
            b.running.push(Running {
                pid: e.tgid,
                tid: e.tid,
                comm: comm_of(&e.comm),
                place: self.place(e.tgid, now),
                wchan: self.wchan(e.wchan),
                since: now.checked_sub(age).unwrap_or(now),
                seeded: e.flags & SEEDED != 0,
                stack,
            });
        }
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let held = std::mem::take(&mut self.long_pen);
        for (l, came) in held.into_iter().chain(d.long.iter().map(|l| (*l, now))) {
            let named = !visible
                || self.symbols.as_ref().is_none_or(|s| {
                    // Small wait channels stand for a seeded episode's name.
                    (l.wchan <= MAX_SEEDS as u64 || s.named(l.wchan))
                        && frames(l.nframes, l.flags, &l.stack)
                            .iter()
                            .all(|&ip| s.named(ip))
                });
            if !named
                && now.saturating_duration_since(came) < LONG_HOLD
                && self.long_pen.len() < MAX_LONG_PEN
            {
                self.long_pen.push((l, came));
                continue;
            }
            let end_ns = l.start_ns.saturating_add(l.dur_ns);
            b.long.push(Long {
                pid: l.tgid,
                tid: l.tid,
                comm: comm_of(&l.comm),
                place: self.place(l.tgid, now),
                wchan: self.wchan(l.wchan),
                seconds: l.dur_ns as f64 / 1e9,
                ended_unix: unix_now - d.now_ns.saturating_sub(end_ns) as f64 / 1e9,
                stack: self.stack(frames(l.nframes, l.flags, &l.stack)),
            });
        }
        b
    }

    /// Puts the mailbox's seeds in flight (see the module docs).
    fn seed(&mut self) {
        let seeds = match self.mailbox.lock() {
            Ok(mut m) => std::mem::take(&mut *m),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        let Some(k) = self.kernel.as_mut() else {
            return;
        };
        let (now, now_ns) = (Instant::now(), kernel::monotonic_ns());
        for s in seeds {
            let wchan = match &s.wchan {
                Some(w) => {
                    let name: Arc<str> = Arc::from(w.as_str());
                    match self.seed_names.iter().position(|n| *n == name) {
                        Some(i) => i as u64 + 1,
                        None if self.seed_names.len() < MAX_SEEDS => {
                            self.seed_names.push(name);
                            self.seed_names.len() as u64
                        }
                        None => 0,
                    }
                }
                None => 0,
            };
            let mut comm = [0u8; 16];
            for (d, c) in comm.iter_mut().zip(s.comm.bytes().take(15)) {
                *d = c;
            }
            let age = now.saturating_duration_since(s.since).as_nanos() as u64;
            let e = Episode {
                start_ns: now_ns.saturating_sub(age),
                wchan,
                tid: s.tid,
                tgid: s.pid,
                flags: SEEDED,
                nframes: 0,
                comm,
                stack: [0; MAX_FRAMES],
            };
            if k.seed(&e).unwrap_or(false) {
                if let Some(st) = &s.stack {
                    if self.seed_stacks.len() < MAX_SEEDS {
                        self.seed_stacks.insert(s.tid, Arc::clone(st));
                    }
                }
                // Woken between the walk and now: its wakeup found nothing to end.
                let stat = self.roots.proc(&format!("{}/task/{}/stat", s.pid, s.tid));
                let in_d = read_into(&stat, &mut self.buf)
                    && task_stat::parse(&self.buf).is_ok_and(|t| t.state == b'D');
                if !in_d {
                    let _ = k.unseed(s.tid);
                }
            }
        }
    }
}

/// The frames from the wait channel's on (the program's, the tracepoint's and the scheduler's
/// own frames are left out, as `/proc/<pid>/stack` leaves them out).
fn frames(n: u32, flags: u32, stack: &[u64; MAX_FRAMES]) -> &[u64] {
    let end = (n as usize).min(MAX_FRAMES);
    let from = ((flags >> 8) & 0xff) as usize;
    &stack[from.min(end)..end]
}

fn read_into(path: &std::path::Path, buf: &mut Vec<u8>) -> bool {
    use std::io::Read;
    buf.clear();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(buf))
        .is_ok()
}

fn clip(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const KALLSYMS: &str = "\
ffffffff822467c0 T __sched_text_start
ffffffff82246800 T __schedule
ffffffff8224f4e2 T __sched_text_end
ffffffff8224f4f0 T __lock_text_start
ffffffff82250f71 T __lock_text_end
ffffffff81400000 t __iomap_dio_rw
ffffffff81400900 t iomap_dio_rw
ffffffff81500000 T ext4_sync_file
ffffffff81500400 T vfs_fsync_range
";

    fn long(wchan: u64, frames: &[u64]) -> kernel::LongEvent {
        let mut stack = [0; MAX_FRAMES];
        stack[..frames.len()].copy_from_slice(frames);
        kernel::LongEvent {
            start_ns: 1,
            dur_ns: 2_000_000_000,
            wchan,
            tid: 7,
            tgid: 7,
            flags: 0,
            nframes: frames.len() as u32,
            comm: *b"writer\0\0\0\0\0\0\0\0\0\0",
            stack,
        }
    }

    fn drained(long: Vec<kernel::LongEvent>) -> kernel::Drained {
        kernel::Drained {
            long,
            now_ns: 3_000_000_000,
            ..kernel::Drained::default()
        }
    }

    /// A long episode through a function met for the first time, right after a pass, waits
    /// for the next pass (at most PASS_EVERY) rather than coming out with bare addresses.
    #[test]
    fn long_episodes_wait_for_the_names_of_their_frames() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kallsyms"), KALLSYMS).unwrap();
        let mut src = Source::new(
            Arc::new(Roots {
                procfs: dir.path().to_path_buf(),
                ..Roots::default()
            }),
            Settings {
                sizes: Sizes {
                    in_flight: 16,
                    keys: 16,
                    ring_bytes: 4096,
                },
                long: Duration::from_secs(1),
            },
            Mailbox::default(),
        );
        src.symbols = Some(Symbols::open(dir.path().join("kallsyms")));
        // The first pass is due at once: named in the same read.
        let b = src.resolve(drained(vec![long(
            0xffffffff81400042,
            &[0xffffffff81400042],
        )]));
        assert_eq!(b.long.len(), 1);
        assert_eq!(b.long[0].wchan.as_deref(), Some("__iomap_dio_rw"));
        assert_eq!(b.long[0].stack.as_deref(), Some("__iomap_dio_rw+0x42"));
        // New functions just after that pass: held back, not published with addresses.
        let b = src.resolve(drained(vec![long(
            0xffffffff81500010,
            &[0xffffffff81500010, 0xffffffff81500420],
        )]));
        assert!(b.long.is_empty(), "held: {:?}", b.long);
        std::thread::sleep(super::super::symbols::PASS_EVERY + Duration::from_millis(100));
        let b = src.resolve(drained(Vec::new()));
        assert_eq!(b.long.len(), 1, "released after the next pass");
        assert_eq!(b.long[0].wchan.as_deref(), Some("ext4_sync_file"));
        assert_eq!(
            b.long[0].stack.as_deref(),
            Some("ext4_sync_file+0x10\nvfs_fsync_range+0x20")
        );
    }
}
