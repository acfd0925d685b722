//! Containers, from the cgroup filesystem: who they are ([`identity`]), where they are
//! ([`discover`]) and what they use ([`v1`], [`v2`], combined by [`read_stats`]).
//!
//! Every counter is an `Option`: a controller that is not mounted or not enabled for a cgroup
//! has no file, and its metrics are absent rather than zero (on this hybrid host the v2 tree
//! has only `cpu.stat` and the `*.pressure` files; a pure-v2 host without the `io` controller
//! delegated to a slice has no `io.stat`).

pub mod discover;
pub(crate) mod files;
pub mod identity;
pub mod names;
pub mod pass;
pub mod v1;
pub mod v2;

use std::path::{Path, PathBuf};

use crate::error::{parse_u64, Error, ErrorKind, ParseError};
use crate::proc::pressure::Pressure;
use files::Files;

pub use discover::{detect, discover, Found, Layout};
pub use identity::{identify, Identity, Qos, Runtime};

/// CPU accounting of a container (counters since the cgroup was created).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuStats {
    /// User time, seconds (v1 `cpuacct.stat` user, USER_HZ ticks; v2 `cpu.stat` user_usec).
    pub user_seconds: Option<f64>,
    /// System time, seconds (v1 `cpuacct.stat` system; v2 system_usec).
    pub system_seconds: Option<f64>,
    /// Total CPU time, seconds (v1 `cpuacct.usage` ns; v2 usage_usec).
    pub usage_seconds: Option<f64>,
    /// CFS enforcement periods elapsed (`cpu.stat` nr_periods; 0 without a quota).
    pub nr_periods: Option<u64>,
    /// Periods in which the cgroup was throttled (`cpu.stat` nr_throttled).
    pub nr_throttled: Option<u64>,
    /// Time throttled, seconds (v1 `cpu.stat` throttled_time ns; v2 throttled_usec).
    pub throttled_seconds: Option<f64>,
}

/// Memory of a container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes charged now (v1 `memory.usage_in_bytes`; v2 `memory.current`).
    pub usage_bytes: Option<u64>,
    /// Hard limit, bytes; `None` when unlimited (v1 `memory.limit_in_bytes` ≥ 2^62; v2
    /// `memory.max` "max") or unknown.
    pub limit_bytes: Option<u64>,
    /// Anonymous memory, bytes (v1 `memory.stat` total_rss; v2 anon).
    pub rss_bytes: Option<u64>,
    /// Page cache, bytes (v1 total_cache; v2 file).
    pub cache_bytes: Option<u64>,
    /// Dirty page cache, bytes (v1 total_dirty; v2 file_dirty).
    pub dirty_bytes: Option<u64>,
    /// Page cache under writeback, bytes (v1 total_writeback; v2 file_writeback).
    pub writeback_bytes: Option<u64>,
    /// Major page faults, count (v1 total_pgmajfault; v2 pgmajfault).
    pub major_faults: Option<u64>,
    /// OOM kills in the cgroup, count (v1 `memory.oom_control` oom_kill, kernel ≥ 4.13; v2
    /// `memory.events` oom_kill).
    pub oom_kills: Option<u64>,
}

/// Block I/O of a container on one device, counters since the cgroup was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeviceIo {
    pub major: u32,
    pub minor: u32,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
}

/// A container's I/O limits on one device (v1 `blkio.throttle.{read,write}_{bps,iops}_device`,
/// v2 `io.max`): what blk-throttle holds it to. `None`: no limit of that kind. Only devices
/// with at least one limit are listed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct IoLimit {
    pub major: u32,
    pub minor: u32,
    /// Bytes per second read.
    pub read_bps: Option<u64>,
    /// Bytes per second written.
    pub write_bps: Option<u64>,
    /// Read operations per second.
    pub read_iops: Option<u64>,
    /// Write operations per second.
    pub write_iops: Option<u64>,
}

impl IoLimit {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.read_bps.is_some()
            || self.write_bps.is_some()
            || self.read_iops.is_some()
            || self.write_iops.is_some()
    }
}

/// A failed read of one file, kept (cloneable) with the stats for the sampler to count and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatError {
    pub kind: ErrorKind,
    pub message: String,
}

impl From<Error> for StatError {
    fn from(e: Error) -> Self {
        StatError {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

/// Everything read for one container in one pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerStats {
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    /// Per device, sorted by (major, minor); `None` when no blkio/io file exists.
    pub io: Option<Vec<DeviceIo>>,
    /// I/O limits per limited device, sorted by (major, minor); `None` when no limit file
    /// exists (no blkio/io controller, or a kernel without blk-throttle), `Some(empty)` when
    /// the container has no limit.
    pub io_limits: Option<Vec<IoLimit>>,
    /// PSI of the cgroup, indexed like [`crate::proc::pressure::Resource::CGROUP`] (v2 only).
    pub pressure: [Option<Pressure>; 3],
    /// Tasks in the cgroup (`pids.current`).
    pub pids: Option<u64>,
    /// The first process listed in `cgroup.procs`, whose `/proc/<pid>/net/dev` shows the
    /// container's network namespace.
    pub first_pid: Option<u32>,
    /// Files that failed to read or parse (absent files are not errors).
    pub errors: Vec<StatError>,
}

macro_rules! fill {
    ($dst:expr, $src:expr, $($f:ident),+) => { $( if $dst.$f.is_none() { $dst.$f = $src.$f; } )+ };
}

impl ContainerStats {
    /// Fills the fields this one lacks from `other` (hybrid hosts: v1 first, then unified).
    pub fn fill_missing(&mut self, other: ContainerStats) {
        fill!(
            self.cpu,
            other.cpu,
            user_seconds,
            system_seconds,
            usage_seconds,
            nr_periods,
            nr_throttled,
            throttled_seconds
        );
        fill!(
            self.memory,
            other.memory,
            usage_bytes,
            limit_bytes,
            rss_bytes,
            cache_bytes,
            dirty_bytes,
            writeback_bytes,
            major_faults,
            oom_kills
        );
        fill!(self, other, io, io_limits, pids, first_pid);
        for (a, b) in self.pressure.iter_mut().zip(other.pressure) {
            if a.is_none() {
                *a = b;
            }
        }
        self.errors.extend(other.errors);
    }
}

/// Reads a container's counters. `path` is relative to the hierarchy roots (`/docker/<id>`).
/// v1 controllers are read from their own hierarchies; on hybrid hosts what v1 lacks (PSI,
/// and cpu times when no cpuacct hierarchy exists) comes from the unified tree.
pub fn read_stats(layout: &Layout, path: &str) -> ContainerStats {
    read_stats_with(layout, path, Want::ALL, &mut Files::default())
}

/// [`read_stats`] in a pass: with the pass's reading context, and the settings (memory and
/// I/O limits) only when `settings` (else they stay `None`).
/// What a pass reads of a container besides the counters it reads every time
/// ([`crate::cgroup::pass::PassState`] says when).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Want {
    /// The limits: `memory.limit_in_bytes`/`memory.max`, the blkio throttles/`io.max`.
    pub settings: bool,
    /// The OOM kill count: `memory.oom_control`/`memory.events`.
    pub oom: bool,
    /// A member pid: `cgroup.procs`.
    pub procs: bool,
    /// The v1 cpu usage files (`cpuacct.usage`, `cpuacct.stat`): a hybrid host reads the
    /// unified directory's `cpu.stat` instead, and these only when it has no usage.
    pub cpuacct: bool,
}

impl Want {
    pub const ALL: Want = Want {
        settings: true,
        oom: true,
        procs: true,
        cpuacct: true,
    };
}

pub(crate) fn read_stats_with(
    layout: &Layout,
    path: &str,
    want: Want,
    files: &mut Files,
) -> ContainerStats {
    if path.split('/').any(|c| c == "..") {
        return ContainerStats {
            errors: vec![StatError {
                kind: ErrorKind::Parse,
                message: format!("cgroup path {path:?} leaves the hierarchy"),
            }],
            ..ContainerStats::default()
        };
    }
    let ticks = crate::sysconf::clock_ticks();
    match layout {
        Layout::V2 { root } => {
            let mut s = ContainerStats::default();
            if let Some(d) = files.dir(root, path, &mut s.errors) {
                let parts = v2::Parts {
                    settings: want.settings,
                    oom: want.oom,
                    procs: want.procs,
                    ..v2::Parts::ALL
                };
                v2::read_parts(&d, parts, files, &mut s);
            }
            s
        }
        Layout::V1 { .. } => v1::read_parts(layout, path, ticks, want, files),
        Layout::Hybrid { unified, .. } => {
            // The unified directory's `cpu.stat` has usage, user and system time in one file
            // (to the microsecond: the kernel accounts every task's time to its unified cgroup
            // with or without a cpu controller there); cpuacct has them in two (user and
            // system in ticks). One open fewer per container per pass.
            let v1_want = Want {
                cpuacct: false,
                ..want
            };
            let mut s = v1::read_parts(layout, path, ticks, v1_want, files);
            let mut u = ContainerStats::default();
            if let Some(d) = files.dir(unified, path, &mut u.errors) {
                // Only what v1 did not give: a controller bound to a v1 hierarchy has no
                // files in the unified tree, so reading them there finds nothing (it cost 9
                // failed opens per container per pass here); `cpu.stat`'s usage keys are
                // there always, and wanted only when no cpuacct hierarchy gave them.
                let c = &s.cpu;
                let secs = [
                    c.user_seconds,
                    c.system_seconds,
                    c.usage_seconds,
                    c.throttled_seconds,
                ];
                let parts = v2::Parts {
                    cpu: secs.iter().any(Option::is_none)
                        || c.nr_periods.is_none()
                        || c.nr_throttled.is_none(),
                    memory: layout.v1("memory").is_none(),
                    io: layout.v1("blkio").is_none(),
                    pids: layout.v1("pids").is_none(),
                    procs: want.procs && s.first_pid.is_none(),
                    settings: want.settings,
                    oom: want.oom,
                };
                v2::read_parts(&d, parts, files, &mut u);
            }
            s.fill_missing(u);
            // No unified directory for the container (a runtime that makes none), or no
            // usage in it.
            v1::fill_cpuacct(layout, path, ticks, files, &mut s);
            s
        }
    }
}

/// `root` + a relative cgroup path (`Path::join` of `/docker/x` would replace the root).
pub(crate) fn join(root: &Path, rel: &str) -> PathBuf {
    root.join(rel.trim_start_matches('/'))
}

/// A file holding one unsigned integer (`cpuacct.usage`, `memory.current`, `pids.current`).
pub fn parse_single_u64(text: &str) -> Result<u64, ParseError> {
    parse_u64(text.trim(), 1, "value")
}

/// Flat keyed files (`key value` per line: `memory.stat`, `cpu.stat`, `memory.events`, …).
/// Every non-empty line must have that shape; `f` picks the keys it wants.
pub(crate) fn parse_keyed(text: &str, mut f: impl FnMut(&str, u64)) -> Result<(), ParseError> {
    for (i, line) in text.lines().enumerate() {
        let mut it = line.split_ascii_whitespace();
        let Some(k) = it.next() else {
            continue;
        };
        let (Some(v), None) = (it.next(), it.next()) else {
            return Err(ParseError::new(
                i + 1,
                format!("expected `key value`, got {line:?}"),
            ));
        };
        f(k, parse_u64(v, i + 1, k)?);
    }
    Ok(())
}

/// `major:minor`.
pub(crate) fn parse_dev(s: &str, line: usize) -> Result<(u32, u32), ParseError> {
    let bad = || ParseError::new(line, format!("expected major:minor, got {s:?}"));
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files_unknown_keys_and_garbage() {
        let mut got = Vec::new();
        parse_keyed("a 1\n\nb 2\nnew_key_from_a_newer_kernel 3\n", |k, v| {
            got.push((k.to_string(), v))
        })
        .unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(parse_keyed("a 1\nb\n", |_, _| {}).unwrap_err().line, 2);
        assert_eq!(parse_keyed("a 1 2\n", |_, _| {}).unwrap_err().line, 1);
        assert_eq!(parse_keyed("a x\n", |_, _| {}).unwrap_err().line, 1);
    }

    #[test]
    fn single_values_and_devices() {
        assert_eq!(parse_single_u64("481777005\n").unwrap(), 481777005);
        assert!(parse_single_u64("max\n").is_err());
        assert!(parse_single_u64("").is_err());
        assert_eq!(parse_dev("254:0", 1).unwrap(), (254, 0));
        assert!(parse_dev("254", 1).is_err());
        assert!(parse_dev("a:b", 1).is_err());
    }

    #[test]
    fn fill_missing_prefers_what_is_there() {
        let mut a = ContainerStats::default();
        a.cpu.user_seconds = Some(1.0);
        a.pids = Some(3);
        let mut b = ContainerStats::default();
        b.cpu.user_seconds = Some(2.0);
        b.cpu.throttled_seconds = Some(0.5);
        b.pids = Some(4);
        b.first_pid = Some(42);
        a.fill_missing(b);
        assert_eq!(a.cpu.user_seconds, Some(1.0));
        assert_eq!(a.cpu.throttled_seconds, Some(0.5));
        assert_eq!((a.pids, a.first_pid), (Some(3), Some(42)));
    }

    #[test]
    fn read_stats_refuses_dot_dot() {
        let l = Layout::V2 {
            root: PathBuf::from("/nonexistent"),
        };
        let s = read_stats(&l, "/docker/../../etc");
        assert_eq!(s.errors.len(), 1);
        assert_eq!(s.pids, None);
    }

    /// A hybrid host like this one: the v1 controllers give everything but PSI and the cpu
    /// usage, so of the unified directory the three `*.pressure` files and `cpu.stat` (usage,
    /// user and system in one file, where cpuacct needs two) are read; cpuacct only when the
    /// unified directory gives no usage.
    #[test]
    fn hybrid_reads_from_unified_only_what_v1_lacks() {
        // A pass between two turns: the counters and the OOM count, not the settings.
        const COUNTERS: Want = Want {
            settings: false,
            oom: true,
            procs: true,
            cpuacct: true,
        };
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let rel = "docker/3f2a";
        let put = |f: &str, text: &str| {
            let p = r.join(f.replace("{}", rel));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        let psi = "some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n";
        for (f, text) in [
            ("cpuacct/{}/cpuacct.stat", "user 47\nsystem 3\n"),
            ("cpuacct/{}/cpuacct.usage", "481777005\n"),
            (
                "cpu/{}/cpu.stat",
                "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n",
            ),
            ("memory/{}/memory.usage_in_bytes", "4096\n"),
            ("memory/{}/cgroup.procs", "4242\n"),
            ("pids/{}/pids.current", "1\n"),
            (
                "unified/{}/cpu.stat",
                "usage_usec 9\nuser_usec 9\nsystem_usec 0\n",
            ),
            // Cannot exist beside a v1 memory hierarchy: proves it is not read.
            ("unified/{}/memory.current", "1\n"),
            ("unified/{}/cpu.pressure", psi),
            ("unified/{}/io.pressure", psi),
            ("unified/{}/memory.pressure", psi),
        ] {
            put(f, text);
        }
        let v1 = |c: &str| (c.to_string(), r.join(c));
        let layout = Layout::Hybrid {
            controllers: ["cpu", "cpuacct", "memory", "blkio", "pids"]
                .map(v1)
                .into_iter()
                .collect(),
            unified: r.join("unified"),
        };
        let mut files = Files::default();
        let s = read_stats_with(&layout, rel, COUNTERS, &mut files);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(s.cpu.usage_seconds, Some(9e-6), "from the unified cpu.stat");
        assert_eq!(s.cpu.user_seconds, Some(9e-6), "from the unified cpu.stat");
        assert_eq!(s.cpu.nr_periods, Some(0), "v1's cpu.stat still");
        assert_eq!(s.memory.usage_bytes, Some(4096), "v1's");
        assert!(s.pressure.iter().all(Option::is_some));
        // v1: cpu.stat, 3 memory (no limit: settings not asked), 1 pids, cgroup.procs;
        // unified: cpu.stat and the 3 PSI files. No blkio directory for this container.
        assert_eq!(files.reads, 6 + 4);

        // A unified directory without cpu.stat usage: cpuacct's.
        put("unified/{}/cpu.stat", "nr_periods 0\n");
        let mut files = Files::default();
        let s = read_stats_with(&layout, rel, COUNTERS, &mut files);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(s.cpu.usage_seconds, Some(0.481777005), "cpuacct's");
        assert_eq!(s.cpu.user_seconds, Some(0.47), "cpuacct's, in ticks");
        assert_eq!(files.reads, 6 + 4 + 2);

        // No unified directory for the container at all: cpuacct's, and no error.
        std::fs::remove_dir_all(r.join("unified").join(rel)).unwrap();
        let mut files = Files::default();
        let s = read_stats_with(&layout, rel, COUNTERS, &mut files);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(s.cpu.usage_seconds, Some(0.481777005), "cpuacct's");
        assert!(s.pressure.iter().all(Option::is_none));
        assert_eq!(files.reads, 6 + 2);
    }

    /// The kernel fact the hybrid read rests on, on this machine's kernel: a process in a
    /// cpuacct cgroup and a unified one is charged the same CPU time in both (the unified
    /// `cpu.stat` keeps it with no cpu controller enabled there), so usage from the unified
    /// directory is cpuacct's usage. Not to the nanosecond: the shell joins cpuacct first, so
    /// the CPU its second join takes (a cgroup migration: tens of µs, more on a loaded CI
    /// machine, 65 µs seen) is cpuacct's alone. So cpuacct may lead by a little, never trail.
    #[test]
    fn hybrid_unified_cpu_usage_is_cpuaccts() {
        let name = "hybrid_unified_cpu_usage_is_cpuaccts";
        if !crate::testing::require_root(name, "create cgroups") {
            return;
        }
        let roots = crate::roots::Roots::default();
        let layout = discover::detect(&roots);
        let (Layout::Hybrid { unified, .. }, Some(acct)) = (&layout, layout.v1("cpuacct")) else {
            // CI here runs it: this machine is hybrid.
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{name}: this CI machine has a hybrid cgroup layout"
            );
            eprintln!("SKIPPED {name}: not a hybrid cgroup layout with cpuacct");
            return;
        };
        let rel = format!("sw-cpu-{}", std::process::id());
        let a = crate::testing::MadeDir::new(acct.join(&rel));
        let u = crate::testing::MadeDir::new(unified.join(&rel));
        // A shell that joins both and counts to 150,000 (about 0.3 s of CPU here: a fixed
        // amount of work, not of wall time, so a loaded machine still charges it all), then
        // exits.
        let spin = format!(
            "echo $$ > {}/cgroup.procs && echo $$ > {}/cgroup.procs && \
             i=0; while [ $i -lt 150000 ]; do i=$((i+1)); done",
            a.path().display(),
            u.path().display()
        );
        let st = std::process::Command::new("sh")
            .args(["-c", &spin])
            .status()
            .unwrap();
        assert!(st.success());
        let mut files = Files::default();
        let hybrid = read_stats_with(&layout, &rel, Want::ALL, &mut files);
        let v1 = v1::read(&layout, &rel);
        assert!(hybrid.errors.is_empty(), "{:?}", hybrid.errors);
        let (h, c) = (
            hybrid.cpu.usage_seconds.unwrap(),
            v1.cpu.usage_seconds.unwrap(),
        );
        eprintln!("usage: unified cpu.stat {h} s, cpuacct.usage {c} s");
        assert!(c >= 0.1, "the spin was charged to cpuacct: {c} s");
        assert!(
            h <= c + 1e-6 && c - h < 0.002,
            "unified {h} s vs cpuacct {c} s: cpuacct may lead by the second join's CPU only"
        );
        let (user, system) = (
            hybrid.cpu.user_seconds.unwrap(),
            hybrid.cpu.system_seconds.unwrap(),
        );
        assert!(
            (user + system - h).abs() < 0.01,
            "user {user} + system {system} vs {h}"
        );
    }
}
