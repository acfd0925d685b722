//! cgroup v2 counters of a container, all from its one directory
//! (Documentation/admin-guide/cgroup-v2.rst). Samples from a pure-v2 host (kernel 6.1, a
//! docker container with `--cpus 0.5 --memory 512m` after a `dd` and an OOM):
//! ```text
//! cpu.stat        usage_usec 2368843 / user_usec 1685433 / system_usec 683410 /
//!                 nr_periods 41 / nr_throttled 12 / throttled_usec 812345 / nr_bursts 0 / …
//! memory.current  11288576
//! memory.max      536870912                         ("max" when unlimited)
//! memory.stat     anon 1658880 / file 9043968 / … / file_dirty 12288 / file_writeback 4096 /
//!                 … / pgmajfault 95 / …
//! memory.events   low 0 / high 0 / max 27 / oom 2 / oom_kill 2 / oom_group_kill 0
//! io.stat         259:0 rbytes=9019392 wbytes=417792 rios=376 wios=58 dbytes=0 dios=0
//! io.max          259:0 rbps=max wbps=10485760 riops=max wiops=300   (limited devices only)
//! pids.current    3
//! {cpu,io,memory}.pressure   as /proc/pressure/*
//! ```
//! Which files exist depends on the controllers enabled in the parent's
//! `cgroup.subtree_control`: `cpu.stat` always has the usage keys (the `nr_*`/throttled keys
//! only with the cpu controller), the `*.pressure` files exist whenever PSI is on. On this
//! hybrid machine the unified tree enables only hugetlb, so a container's v2 dir has just
//! `cpu.stat` and PSI:
//! ```text
//! cpu.stat        usage_usec 481777 / user_usec 475033 / system_usec 6743 / nice_usec 0
//! cpu.pressure    some avg10=0.00 avg60=0.00 avg300=0.00 total=20648
//!                 full avg10=0.00 avg60=0.00 avg300=0.00 total=20494
//! ```

use std::ffi::CStr;
use std::path::Path;

use crate::cgroup::files::{Dir, Files};
use crate::cgroup::{parse_dev, parse_keyed, parse_single_u64, ContainerStats, DeviceIo, IoLimit};
use crate::error::{parse_u64, ParseError};
use crate::proc::pressure;

/// v2 `cpu.stat`, microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStat {
    pub usage_usec: Option<u64>,
    pub user_usec: Option<u64>,
    pub system_usec: Option<u64>,
    pub nr_periods: Option<u64>,
    pub nr_throttled: Option<u64>,
    pub throttled_usec: Option<u64>,
}

pub fn parse_cpu_stat(text: &str) -> Result<CpuStat, ParseError> {
    let mut s = CpuStat::default();
    parse_keyed(text, |k, v| match k {
        "usage_usec" => s.usage_usec = Some(v),
        "user_usec" => s.user_usec = Some(v),
        "system_usec" => s.system_usec = Some(v),
        "nr_periods" => s.nr_periods = Some(v),
        "nr_throttled" => s.nr_throttled = Some(v),
        "throttled_usec" => s.throttled_usec = Some(v),
        _ => {}
    })?;
    Ok(s)
}

/// `memory.max` (and other `max`-or-number files): `None` for "max".
pub fn parse_max(text: &str) -> Result<Option<u64>, ParseError> {
    if text.trim() == "max" {
        return Ok(None);
    }
    parse_single_u64(text).map(Some)
}

/// The v2 `memory.stat` keys we export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStat {
    pub anon: Option<u64>,
    pub file: Option<u64>,
    pub file_dirty: Option<u64>,
    pub file_writeback: Option<u64>,
    pub pgmajfault: Option<u64>,
}

pub fn parse_memory_stat(text: &str) -> Result<MemoryStat, ParseError> {
    let mut s = MemoryStat::default();
    parse_keyed(text, |k, v| match k {
        "anon" => s.anon = Some(v),
        "file" => s.file = Some(v),
        "file_dirty" => s.file_dirty = Some(v),
        "file_writeback" => s.file_writeback = Some(v),
        "pgmajfault" => s.pgmajfault = Some(v),
        _ => {}
    })?;
    Ok(s)
}

/// `memory.events`: the `oom_kill` count (hierarchical: includes descendants).
pub fn parse_memory_events(text: &str) -> Result<Option<u64>, ParseError> {
    let mut n = None;
    parse_keyed(text, |k, v| {
        if k == "oom_kill" {
            n = Some(v)
        }
    })?;
    Ok(n)
}

/// `io.stat`: one line per device, `maj:min key=value …`. Unknown keys (`dbytes`, `dios`,
/// iocost's `cost.vrate=…` floats, iolatency's `use_delay`) are skipped without parsing their
/// values; a device without a key we know reads as zeros for it.
pub fn parse_io_stat(text: &str) -> Result<Vec<DeviceIo>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let mut d = DeviceIo::default();
        let found = dev_pairs(line, n, |(major, minor), k, v| {
            (d.major, d.minor) = (major, minor);
            let Some(k) = k else { return Ok(()) };
            let dst = match k {
                "rbytes" => &mut d.read_bytes,
                "wbytes" => &mut d.write_bytes,
                "rios" => &mut d.read_ops,
                "wios" => &mut d.write_ops,
                _ => return Ok(()),
            };
            *dst = parse_u64(v, n, k)?;
            Ok(())
        })?;
        if found {
            out.push(d);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// One `maj:min key=value …` line of `io.stat` or `io.max`: `f(device, None, "")` once, then
/// `f(device, Some(key), value)` per pair, values unparsed. `false` for a blank line.
fn dev_pairs(
    line: &str,
    n: usize,
    mut f: impl FnMut((u32, u32), Option<&str>, &str) -> Result<(), ParseError>,
) -> Result<bool, ParseError> {
    let mut it = line.split_ascii_whitespace();
    let Some(dev) = it.next() else {
        return Ok(false);
    };
    let dev = parse_dev(dev, n)?;
    f(dev, None, "")?;
    for kv in it {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| ParseError::new(n, format!("expected key=value, got {kv:?}")))?;
        f(dev, Some(k), v)?;
    }
    Ok(true)
}

/// `io.max`: `maj:min rbps=… wbps=… riops=… wiops=…` per device with a limit, `max` for none
/// (admin-guide/cgroup-v2.rst, "IO Interface Files"). Unknown keys are skipped; a device whose
/// keys are all `max` is left out.
pub fn parse_io_max(text: &str) -> Result<Vec<IoLimit>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let mut l = IoLimit::default();
        dev_pairs(line, n, |(major, minor), k, v| {
            (l.major, l.minor) = (major, minor);
            let Some(k) = k else { return Ok(()) };
            let dst = match k {
                "rbps" => &mut l.read_bps,
                "wbps" => &mut l.write_bps,
                "riops" => &mut l.read_iops,
                "wiops" => &mut l.write_iops,
                _ => return Ok(()),
            };
            *dst = if v == "max" {
                None
            } else {
                Some(parse_u64(v, n, k)?)
            };
            Ok(())
        })?;
        if l.any() {
            out.push(l);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Which groups of a v2 directory's files to read. On a pure-v2 host all of them; on a hybrid
/// host only what the v1 controllers did not give (a controller is bound to one hierarchy:
/// with `memory` mounted on v1 the unified tree has no `memory.*` files), which here is the
/// PSI files alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parts {
    /// `cpu.stat`.
    pub cpu: bool,
    /// `memory.current`, `memory.stat`, `memory.events` (and `memory.max` with `settings`).
    pub memory: bool,
    /// `io.stat` (and `io.max` with `settings`).
    pub io: bool,
    /// `pids.current`.
    pub pids: bool,
    /// `cgroup.procs` (a member pid).
    pub procs: bool,
    /// The limits: `memory.max`, `io.max`.
    pub settings: bool,
    /// `memory.events` (the OOM kill count), with `memory`.
    pub oom: bool,
}

impl Parts {
    pub const ALL: Parts = Parts {
        cpu: true,
        memory: true,
        io: true,
        pids: true,
        procs: true,
        settings: true,
        oom: true,
    };
}

/// Reads the v2 counters of the container whose cgroup directory is `dir`.
pub fn read(dir: &Path) -> ContainerStats {
    let mut s = ContainerStats::default();
    if let Some(d) = Dir::open(dir.to_path_buf(), &mut s.errors) {
        read_parts(&d, Parts::ALL, &mut Files::default(), &mut s);
    }
    s
}

/// Reads `parts` of the v2 directory `dir` into `s`, over what is there.
pub(crate) fn read_parts(dir: &Dir, parts: Parts, files: &mut Files, s: &mut ContainerStats) {
    let e = &mut s.errors;
    if parts.cpu {
        if let Some(c) = files.read(dir, c"cpu.stat", parse_cpu_stat, e) {
            let secs = |us: Option<u64>| us.map(|v| v as f64 / 1e6);
            s.cpu.usage_seconds = secs(c.usage_usec);
            s.cpu.user_seconds = secs(c.user_usec);
            s.cpu.system_seconds = secs(c.system_usec);
            s.cpu.nr_periods = c.nr_periods;
            s.cpu.nr_throttled = c.nr_throttled;
            s.cpu.throttled_seconds = secs(c.throttled_usec);
        }
    }
    if parts.memory {
        let m = &mut s.memory;
        m.usage_bytes = files.read(dir, c"memory.current", parse_single_u64, e);
        if parts.settings {
            m.limit_bytes = files.read(dir, c"memory.max", parse_max, e).flatten();
        }
        if let Some(st) = files.read(dir, c"memory.stat", parse_memory_stat, e) {
            m.rss_bytes = st.anon;
            m.cache_bytes = st.file;
            m.dirty_bytes = st.file_dirty;
            m.writeback_bytes = st.file_writeback;
            m.major_faults = st.pgmajfault;
        }
        if parts.oom {
            m.oom_kills = files
                .read(dir, c"memory.events", parse_memory_events, e)
                .flatten();
        }
    }
    if parts.io {
        s.io = files.read(dir, c"io.stat", parse_io_stat, e);
        if parts.settings {
            s.io_limits = files.read(dir, c"io.max", parse_io_max, e);
        }
    }
    const PRESSURE: [&CStr; 3] = [c"cpu.pressure", c"io.pressure", c"memory.pressure"];
    for (i, f) in PRESSURE.into_iter().enumerate() {
        s.pressure[i] = files.read(dir, f, pressure::parse, e);
    }
    if parts.pids {
        s.pids = files.read(dir, c"pids.current", parse_single_u64, e);
    }
    if parts.procs {
        s.first_pid = files.first_pid(dir, e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const CPU_STAT_PURE_V2_6_1: &str = "usage_usec 2368843
user_usec 1685433
system_usec 683410
core_sched.force_idle_usec 0
nr_periods 41
nr_throttled 12
throttled_usec 812345
nr_bursts 0
burst_usec 0
";

    /// This machine's unified tree (hybrid, only hugetlb enabled): no cpu controller keys.
    const CPU_STAT_HYBRID_DEBIAN12_6_18: &str =
        "usage_usec 481777\nuser_usec 475033\nsystem_usec 6743\nnice_usec 0\n";

    const MEMORY_STAT_PURE_V2_6_1: &str = "anon 1658880
file 9043968
kernel 704512
kernel_stack 32768
pagetables 61440
sec_pagetables 0
percpu 480
sock 0
vmalloc 0
shmem 0
zswap 0
zswapped 0
file_mapped 4325376
file_dirty 12288
file_writeback 4096
swapcached 0
anon_thp 0
file_thp 0
shmem_thp 0
inactive_anon 1646592
active_anon 12288
inactive_file 6066176
active_file 2977792
unevictable 0
slab_reclaimable 316784
slab_unreclaimable 232736
slab 549520
workingset_refault_anon 0
workingset_refault_file 0
pgscan 0
pgsteal 0
pgfault 3894
pgmajfault 95
pgrefill 0
thp_fault_alloc 0
";

    const IO_STAT_PURE_V2_6_1: &str =
        "259:0 rbytes=9019392 wbytes=417792 rios=376 wios=58 dbytes=0 dios=0
253:0 rbytes=0 wbytes=4096 rios=0 wios=1 dbytes=0 dios=0
";

    #[test]
    fn cpu_stat_pure_v2_and_hybrid() {
        let c = parse_cpu_stat(CPU_STAT_PURE_V2_6_1).unwrap();
        assert_eq!(c.usage_usec, Some(2368843));
        assert_eq!((c.nr_periods, c.nr_throttled), (Some(41), Some(12)));
        assert_eq!(c.throttled_usec, Some(812345));
        let c = parse_cpu_stat(CPU_STAT_HYBRID_DEBIAN12_6_18).unwrap();
        assert_eq!(c.user_usec, Some(475033));
        assert_eq!(c.nr_periods, None);
    }

    #[test]
    fn memory_pure_v2() {
        let m = parse_memory_stat(MEMORY_STAT_PURE_V2_6_1).unwrap();
        assert_eq!(
            m,
            MemoryStat {
                anon: Some(1658880),
                file: Some(9043968),
                file_dirty: Some(12288),
                file_writeback: Some(4096),
                pgmajfault: Some(95),
            }
        );
        assert_eq!(parse_max("max\n").unwrap(), None);
        assert_eq!(parse_max("536870912\n").unwrap(), Some(536870912));
        assert_eq!(
            parse_memory_events("low 0\nhigh 0\nmax 27\noom 2\noom_kill 2\noom_group_kill 0\n")
                .unwrap(),
            Some(2)
        );
    }

    #[test]
    fn io_stat_pure_v2_sorted_and_unknown_keys() {
        let io = parse_io_stat(IO_STAT_PURE_V2_6_1).unwrap();
        assert_eq!(io.len(), 2);
        assert_eq!((io[0].major, io[0].write_ops), (253, 1));
        assert_eq!(
            io[1],
            DeviceIo {
                major: 259,
                minor: 0,
                read_bytes: 9019392,
                write_bytes: 417792,
                read_ops: 376,
                write_ops: 58
            }
        );
        // iocost adds float-valued keys; a device line may carry only some keys
        let io = parse_io_stat("8:0 rbytes=1 cost.vrate=100.00 cost.usage=12\n8:16\n").unwrap();
        assert_eq!((io[0].read_bytes, io[0].write_bytes), (1, 0));
        assert_eq!(io[1].minor, 16);
        assert!(parse_io_stat("").unwrap().is_empty());
    }

    #[test]
    fn io_max_limits_and_unlimited_devices() {
        // cgroup-v2.rst's example, a device set back to max on every key, and a future key.
        let l = parse_io_max(
            "8:16 rbps=2097152 wbps=max riops=max wiops=120\n\
             8:0 rbps=max wbps=max riops=max wiops=max\n\
             259:0 rbps=max wbps=10485760 riops=max wiops=max zzz=1\n",
        )
        .unwrap();
        assert_eq!(l.len(), 2, "8:0 has no limit: left out");
        assert_eq!(
            l[0],
            IoLimit {
                major: 8,
                minor: 16,
                read_bps: Some(2097152),
                write_bps: None,
                read_iops: None,
                write_iops: Some(120)
            }
        );
        assert_eq!((l[1].major, l[1].write_bps), (259, Some(10485760)));
        assert!(parse_io_max("").unwrap().is_empty());
        assert!(parse_io_max("8:0 wiops=lots\n").is_err());
        assert_eq!(
            parse_io_max("8:0 wiops=1\n8:0 wiops\n").unwrap_err().line,
            2
        );
    }

    proptest::proptest! {
        /// The limit parsers (here and v1's) on any bytes: an error, never a panic.
        #[test]
        fn limit_parsers_never_panic(b in proptest::prelude::any::<Vec<u8>>()) {
            let t = String::from_utf8_lossy(&b);
            let _ = parse_io_max(&t);
            let _ = crate::cgroup::v1::parse_throttle(&t);
        }
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_io_stat("8:0 rbytes=x\n").is_err());
        assert!(parse_io_stat("8:0 rbytes\n").is_err());
        assert_eq!(
            parse_io_stat("8:0 rbytes=1\nsda rbytes=1\n")
                .unwrap_err()
                .line,
            2
        );
        assert!(parse_max("unlimited\n").is_err());
        assert!(parse_cpu_stat("usage_usec 1.5\n").is_err());
    }

    #[test]
    fn read_pure_v2_fixture() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        for (f, text) in [
            ("cpu.stat", CPU_STAT_PURE_V2_6_1),
            ("memory.current", "11288576\n"),
            ("memory.max", "536870912\n"),
            ("memory.stat", MEMORY_STAT_PURE_V2_6_1),
            ("memory.events", "low 0\nhigh 0\nmax 27\noom 2\noom_kill 2\noom_group_kill 0\n"),
            ("io.stat", IO_STAT_PURE_V2_6_1),
            ("io.max", "259:0 rbps=max wbps=max riops=max wiops=300\n"),
            ("pids.current", "3\n"),
            ("cgroup.procs", "5150\n5190\n5191\n"),
            (
                "io.pressure",
                "some avg10=1.50 avg60=0.20 avg300=0.05 total=1234567\nfull avg10=1.20 avg60=0.10 avg300=0.01 total=1000000\n",
            ),
            ("memory.pressure", "some avg10=x\n"),
        ] {
            fs::write(d.join(f), text).unwrap();
        }
        let s = read(d);
        assert_eq!(s.cpu.usage_seconds, Some(2.368843));
        assert_eq!(s.cpu.throttled_seconds, Some(0.812345));
        assert_eq!(s.memory.limit_bytes, Some(512 << 20));
        assert_eq!(s.memory.rss_bytes, Some(1658880));
        assert_eq!(s.memory.oom_kills, Some(2));
        assert_eq!(s.io.as_ref().map(Vec::len), Some(2));
        let l = s.io_limits.as_deref().unwrap();
        assert_eq!((l.len(), l[0].minor, l[0].write_iops), (1, 0, Some(300)));
        assert_eq!(s.pids, Some(3));
        assert_eq!(s.first_pid, Some(5150));
        assert!(s.pressure[0].is_none(), "no cpu.pressure file");
        assert_eq!(
            s.pressure[1].and_then(|p| p.full).map(|r| r.total_us),
            Some(1000000)
        );
        assert!(s.pressure[2].is_none(), "garbage memory.pressure");
        assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
        assert!(s.errors[0].message.contains("memory.pressure"));
    }

    #[test]
    fn read_hybrid_unified_dir_like_this_machine() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        fs::write(d.join("cpu.stat"), CPU_STAT_HYBRID_DEBIAN12_6_18).unwrap();
        fs::write(
            d.join("cpu.pressure"),
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=20648\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=20494\n",
        )
        .unwrap();
        let s = read(d);
        assert_eq!(s.cpu.user_seconds, Some(0.475033));
        assert_eq!(s.cpu.nr_periods, None);
        assert_eq!(s.memory, crate::cgroup::MemoryStats::default());
        assert_eq!(s.io, None);
        assert_eq!(s.io_limits, None, "no io controller: no io.max");
        assert!(s.pressure[0].is_some());
        assert!(s.errors.is_empty());
    }
}
