//! The kernel half, loaded: `crates/collector/bpf/dstate.bpf.c` (built ahead into
//! `dstate.bpf.o`, embedded here) attached to `tp_btf/sched_switch` and `tp_btf/sched_wakeup`, and
//! the drain that empties its maps on the reader thread of the `bpf` source.
//!
//! Why aya and not libbpf-rs: aya is Rust all the way down (ELF and BTF parsing, CO-RE relocation,
//! the bpf(2) calls), so building the agent needs no C compiler, no libelf and no zlib, and a
//! fresh Debian with only Rust still builds with `make run`. libbpf-rs would build libbpf (and,
//! statically, libelf and zlib) from C on every clean build. The program uses nothing aya lacks:
//! BTF-style maps, a ring buffer, one CO-RE field read, two `tp_btf` programs.
//!
//! Layouts below mirror the C structs field for field (`#[repr(C)]`, no implicit padding).

use std::path::Path;
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::BtfTracePoint;
use aya::{Btf, Ebpf, EbpfLoader, Endianness};

/// The object, built from `crates/collector/bpf/dstate.bpf.c` by `make bpf`; 8-byte aligned,
/// as the ELF parser needs (`include_bytes!` alone is byte-aligned).
pub const OBJECT: &[u8] = aya::include_bytes_aligned!("../../bpf/dstate.bpf.o");

pub const MAX_FRAMES: usize = 24;
pub const NBUCKETS: usize = 32;
/// `Episode::flags` bit 0: put in `inflight` by the agent from a walk, not by the tracepoint
/// (bits 8-15: the index of the wait channel's frame in `stack`).
pub const SEEDED: u32 = 1;

const CFG_LONG_NS: u32 = 0;
const CFG_SCHED_START: u32 = 1;
const CFG_LOCK_START: u32 = 3;

const STAT_INFLIGHT_FULL: u32 = 0;
const STAT_AGG_OVERFLOW: u32 = 1;
const STAT_LONG_LOST: u32 = 2;
const STAT_ENTERED0: u32 = 4;
const STAT_LEFT0: u32 = 6;
const STAT_STARTED: u32 = 8;
const STAT_ENDED: u32 = 9;

/// `struct episode`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Episode {
    /// CLOCK_MONOTONIC nanoseconds (the clock of [`Instant`]).
    pub start_ns: u64,
    pub wchan: u64,
    pub tid: u32,
    pub tgid: u32,
    pub flags: u32,
    pub nframes: u32,
    pub comm: [u8; 16],
    pub stack: [u64; MAX_FRAMES],
}

/// `struct agg_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AggKey {
    pub tgid: u32,
    pub pad: u32,
    pub wchan: u64,
    pub comm: [u8; 16],
}

/// The key every aggregate map keeps for episodes that found their map full.
pub const OVERFLOW: AggKey = AggKey {
    tgid: 0,
    pad: 0,
    wchan: 0,
    comm: [0xff; 16],
};

/// `struct agg_val`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AggVal {
    pub count: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
    /// Bucket k: [2^k, 2^(k+1)) microseconds; bucket 0 also holds < 1 µs.
    pub hist: [u64; NBUCKETS],
}

/// `struct long_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LongEvent {
    pub start_ns: u64,
    pub dur_ns: u64,
    pub wchan: u64,
    pub tid: u32,
    pub tgid: u32,
    pub flags: u32,
    pub nframes: u32,
    pub comm: [u8; 16],
    pub stack: [u64; MAX_FRAMES],
}

// SAFETY: plain `repr(C)` structs of integers and byte arrays without padding (sizes asserted
// below): every bit pattern is a valid value.
unsafe impl aya::Pod for Episode {}
unsafe impl aya::Pod for AggKey {}
unsafe impl aya::Pod for AggVal {}
const _: () = assert!(std::mem::size_of::<Episode>() == 48 + 8 * MAX_FRAMES);
const _: () = assert!(std::mem::size_of::<AggKey>() == 32);
const _: () = assert!(std::mem::size_of::<AggVal>() == 24 + 8 * NBUCKETS);
const _: () = assert!(std::mem::size_of::<LongEvent>() == 56 + 8 * MAX_FRAMES);

impl LongEvent {
    /// Reads a ring buffer record (`None` when it is not one of ours).
    fn from_bytes(b: &[u8]) -> Option<LongEvent> {
        if b.len() < std::mem::size_of::<LongEvent>() {
            return None;
        }
        // SAFETY: the length is checked; every bit pattern is valid; unaligned read.
        Some(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<LongEvent>()) })
    }
}

/// Map sizes and the long-episode threshold, as loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub in_flight: u32,
    pub keys: u32,
    /// Ring buffer bytes: a power of two, at least a page.
    pub ring_bytes: u32,
}

/// Counters of the kernel side since load (summed over CPUs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub started: u64,
    pub ended: u64,
    /// Episodes not tracked: `inflight` was full.
    pub in_flight_full: u64,
    /// Episodes added to the overflow key: their aggregate map was full.
    pub aggregate_full: u64,
    /// Long episodes whose stack record was dropped: the ring buffer was full.
    pub long_lost: u64,
    /// Drains that gave up waiting for programs of the old epoch (should stay 0).
    pub drain_raced: u64,
}

impl Counters {
    /// The sum, field by field: what earlier loads of the programs counted plus this one's.
    pub fn plus(self, o: Counters) -> Counters {
        Counters {
            started: self.started + o.started,
            ended: self.ended + o.ended,
            in_flight_full: self.in_flight_full + o.in_flight_full,
            aggregate_full: self.aggregate_full + o.aggregate_full,
            long_lost: self.long_lost + o.long_lost,
            drain_raced: self.drain_raced + o.drain_raced,
        }
    }
}

/// One drain: what ended since the last one, what is running now, the long ones.
#[derive(Debug, Default)]
pub struct Drained {
    pub ended: Vec<(AggKey, AggVal)>,
    pub in_flight: Vec<Episode>,
    pub long: Vec<LongEvent>,
    pub counters: Counters,
    /// CLOCK_MONOTONIC nanoseconds when the in-flight map was read.
    pub now_ns: u64,
}

/// The loaded and attached programs and their maps. Dropping it detaches everything.
pub struct Kernel {
    ebpf: Ebpf,
    ring: RingBuf<MapData>,
    drain_raced: u64,
}

/// CLOCK_MONOTONIC now, in nanoseconds: `bpf_ktime_get_ns()`'s clock.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

impl Kernel {
    /// Loads the object against the BTF at `btf_path` (the running kernel's, normally
    /// `/sys/kernel/btf/vmlinux`), sizes its maps, and attaches both programs. `sched` and
    /// `lock` are the scheduler and lock text bounds (zero when the kernel hides addresses).
    pub fn load(
        btf_path: &Path,
        sizes: Sizes,
        long: Duration,
        sched: (u64, u64),
        lock: (u64, u64),
    ) -> Result<Kernel, String> {
        let btf = Btf::parse_file(btf_path, Endianness::default())
            .map_err(|e| err(&format!("reading BTF {}", btf_path.display()), e))?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .set_max_entries("inflight", sizes.in_flight)
            .set_max_entries("aggs0", sizes.keys)
            .set_max_entries("aggs1", sizes.keys)
            .set_max_entries("long_episodes", sizes.ring_bytes)
            .load(OBJECT)
            .map_err(|e| err("loading the eBPF object", error_chain(&e)))?;
        {
            let mut cfg: Array<_, u64> =
                Array::try_from(map(&mut ebpf, "cfg")?).map_err(|e| err("cfg map", e))?;
            for (i, v) in [
                (CFG_LONG_NS, duration_ns(long)),
                (CFG_SCHED_START, sched.0),
                (CFG_SCHED_START + 1, sched.1),
                (CFG_LOCK_START, lock.0),
                (CFG_LOCK_START + 1, lock.1),
            ] {
                cfg.set(i, v, 0).map_err(|e| err("setting cfg", e))?;
            }
        }
        for aggs in ["aggs0", "aggs1"] {
            let mut m: HashMap<_, AggKey, AggVal> =
                HashMap::try_from(map(&mut ebpf, aggs)?).map_err(|e| err(aggs, e))?;
            m.insert(OVERFLOW, zero_val(), 0)
                .map_err(|e| err("inserting the overflow key", e))?;
        }
        for (prog, tp) in [("on_switch", "sched_switch"), ("on_wakeup", "sched_wakeup")] {
            let p: &mut BtfTracePoint = ebpf
                .program_mut(prog)
                .ok_or_else(|| format!("the object has no program {prog}"))?
                .try_into()
                .map_err(|e| err(prog, e))?;
            p.load(tp, &btf)
                .map_err(|e| err(&format!("loading {prog} on tp_btf/{tp}"), error_chain(&e)))?;
            p.attach()
                .map_err(|e| err(&format!("attaching {prog} to tp_btf/{tp}"), e))?;
        }
        let ring = RingBuf::try_from(
            ebpf.take_map("long_episodes")
                .ok_or("the object has no long_episodes map")?,
        )
        .map_err(|e| err("long_episodes map", e))?;
        Ok(Kernel {
            ebpf,
            ring,
            drain_raced: 0,
        })
    }

    /// Sets the long-episode threshold (a reload changes it without reloading the programs).
    pub fn set_long(&mut self, long: Duration) -> Result<(), String> {
        let mut cfg: Array<_, u64> =
            Array::try_from(map(&mut self.ebpf, "cfg")?).map_err(|e| err("cfg map", e))?;
        cfg.set(CFG_LONG_NS, duration_ns(long), 0)
            .map_err(|e| err("setting cfg", e))
    }

    fn stat(&self, stats: &PerCpuArray<&MapData, u64>, i: u32) -> u64 {
        stats
            .get(&i, 0)
            .map(|v| v.iter().copied().fold(0u64, u64::wrapping_add))
            .unwrap_or(0)
    }

    /// Empties what ended since the last drain (lossless: see the C file's header), reads the
    /// episodes in flight and the long episodes.
    pub fn drain(&mut self) -> Result<Drained, String> {
        let old = {
            let mut epoch: Array<_, u32> =
                Array::try_from(map(&mut self.ebpf, "epoch")?).map_err(|e| err("epoch map", e))?;
            let old = epoch.get(&0, 0).map_err(|e| err("reading epoch", e))? & 1;
            epoch
                .set(0, old ^ 1, 0)
                .map_err(|e| err("flipping epoch", e))?;
            old
        };
        let counters = {
            let stats: PerCpuArray<_, u64> =
                PerCpuArray::try_from(self.ebpf.map("stats").ok_or("no stats map")?)
                    .map_err(|e| err("stats map", e))?;
            // Programs that read the old epoch finish in microseconds (preemption is off
            // around both tracepoints); wait for their entered/left counts to balance.
            let deadline = Instant::now() + Duration::from_millis(50);
            loop {
                let entered = self.stat(&stats, STAT_ENTERED0 + old);
                let left = self.stat(&stats, STAT_LEFT0 + old);
                if entered == left {
                    break;
                }
                if Instant::now() > deadline {
                    self.drain_raced += 1;
                    break;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            Counters {
                started: self.stat(&stats, STAT_STARTED),
                ended: self.stat(&stats, STAT_ENDED),
                in_flight_full: self.stat(&stats, STAT_INFLIGHT_FULL),
                aggregate_full: self.stat(&stats, STAT_AGG_OVERFLOW),
                long_lost: self.stat(&stats, STAT_LONG_LOST),
                drain_raced: self.drain_raced,
            }
        };
        let name = if old == 0 { "aggs0" } else { "aggs1" };
        let mut aggs: HashMap<_, AggKey, AggVal> =
            HashMap::try_from(map(&mut self.ebpf, name)?).map_err(|e| err(name, e))?;
        // Keys first, then each value and its removal: deleting while walking a hash map's
        // keys can skip some.
        let keys: Vec<AggKey> = aggs.keys().filter_map(Result::ok).collect();
        let mut ended = Vec::with_capacity(keys.len());
        for k in keys {
            if let Ok(v) = aggs.get(&k, 0) {
                if v.count > 0 {
                    ended.push((k, v));
                }
            }
            let _ = aggs.remove(&k);
        }
        aggs.insert(OVERFLOW, zero_val(), 0)
            .map_err(|e| err("inserting the overflow key", e))?;
        let now_ns = monotonic_ns();
        let inflight: HashMap<_, u32, Episode> =
            HashMap::try_from(self.ebpf.map("inflight").ok_or("no inflight map")?)
                .map_err(|e| err("inflight map", e))?;
        let in_flight: Vec<Episode> = inflight
            .iter()
            .filter_map(Result::ok)
            .map(|(_, e)| e)
            .collect();
        let mut long = Vec::new();
        while let Some(item) = self.ring.next() {
            if let Some(ev) = LongEvent::from_bytes(&item) {
                long.push(ev);
            }
        }
        Ok(Drained {
            ended,
            in_flight,
            long,
            counters,
            now_ns,
        })
    }

    /// Puts an episode the walk saw (a thread already in D when the programs attached) in
    /// flight, unless the tracepoint has one for that thread. Returns whether it was put.
    pub fn seed(&mut self, e: &Episode) -> Result<bool, String> {
        let mut inflight: HashMap<_, u32, Episode> =
            HashMap::try_from(map(&mut self.ebpf, "inflight")?)
                .map_err(|e| err("inflight map", e))?;
        // BPF_NOEXIST: a real episode wins.
        match inflight.insert(e.tid, *e, 1) {
            Ok(()) => Ok(true),
            Err(_) => Ok(false),
        }
    }

    /// Removes a seeded episode whose thread turned out not to be in D any more.
    pub fn unseed(&mut self, tid: u32) -> Result<(), String> {
        let mut inflight: HashMap<_, u32, Episode> =
            HashMap::try_from(map(&mut self.ebpf, "inflight")?)
                .map_err(|e| err("inflight map", e))?;
        if inflight.get(&tid, 0).is_ok_and(|e| e.flags & SEEDED != 0) {
            let _ = inflight.remove(&tid);
        }
        Ok(())
    }
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map, String> {
    ebpf.map_mut(name)
        .ok_or_else(|| format!("the object has no map {name}"))
}

fn zero_val() -> AggVal {
    AggVal {
        count: 0,
        sum_ns: 0,
        max_ns: 0,
        hist: [0; NBUCKETS],
    }
}

/// A duration in nanoseconds, saturating (the programs' clock unit).
pub(super) fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// An error with its sources, on one line (the verifier's complaint is in a source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
