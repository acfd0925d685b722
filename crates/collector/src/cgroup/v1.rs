//! cgroup v1 counters of a container, each from its controller's hierarchy
//! (Documentation/admin-guide/cgroup-v1/). Samples from this machine (Debian 12, kernel 6.18,
//! a shell loop and two 400 KiB O_DIRECT `dd`s in a fresh cgroup):
//! ```text
//! cpuacct.stat        user 47                       (USER_HZ ticks)
//!                     system 0
//! cpuacct.usage       481777005                     (ns)
//! cpu.stat            nr_periods 0 / nr_throttled 0 / throttled_time 0 (ns) / nr_bursts 0 / burst_time 0
//! memory.usage_in_bytes  262144
//! memory.limit_in_bytes  9223372036854771712        (unlimited: PAGE_COUNTER_MAX pages)
//! memory.oom_control  oom_kill_disable 0 / under_oom 0 / oom_kill 0
//! blkio.throttle.io_service_bytes   254:0 Read 409600 / 254:0 Write 409600 / … / Total 819200
//! blkio.throttle.io_serviced        254:0 Read 100 / 254:0 Write 100 / … / Total 200
//! blkio.throttle.read_bps_device    7:0 1048576     (one line per limited device; empty
//! blkio.throttle.write_iops_device  7:0 300          when none: writing 0 removes a line)
//! pids.current        1
//! ```
//! `memory.stat`: the `total_*` keys include descendant cgroups (and equal the plain keys for
//! a leaf), as `memory.usage_in_bytes` does; they are preferred so that a container running
//! its own sub-cgroups (systemd inside) is counted whole. The plain keys are the fallback.
//!
//! Measured here: on kernel 6.18 the `blkio.throttle.*` counters stay at `Total 0` for a
//! cgroup's I/O to a device until blk-throttle is active on that device's queue, which a
//! throttle limit set on the device (for any cgroup) makes it; Docker sets none unless
//! `--device-*-bps/iops` is given. Once active it counts every cgroup's bios there: on this
//! host, after tests had set limits on `vda`, a fresh cgroup with no limit of its own counted
//! its 4 KiB O_DIRECT reads of vda. The files still exist, so the counters are reported (as
//! zeros, or no device rows), not absent.

use std::collections::BTreeMap;
use std::ffi::CStr;

use crate::cgroup::discover::Layout;
use crate::cgroup::files::{Dir, Files};
use crate::cgroup::{
    parse_dev, parse_keyed, parse_single_u64, ContainerStats, CpuStats, DeviceIo, IoLimit,
    StatError, Want,
};
use crate::error::{parse_u64, ParseError};

/// `cpuacct.stat`, in USER_HZ ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuacctStat {
    pub user_ticks: Option<u64>,
    pub system_ticks: Option<u64>,
}

pub fn parse_cpuacct_stat(text: &str) -> Result<CpuacctStat, ParseError> {
    let mut s = CpuacctStat::default();
    parse_keyed(text, |k, v| match k {
        "user" => s.user_ticks = Some(v),
        "system" => s.system_ticks = Some(v),
        _ => {}
    })?;
    Ok(s)
}

/// v1 `cpu.stat` (CFS bandwidth).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStat {
    pub nr_periods: Option<u64>,
    pub nr_throttled: Option<u64>,
    /// Nanoseconds.
    pub throttled_time_ns: Option<u64>,
}

pub fn parse_cpu_stat(text: &str) -> Result<CpuStat, ParseError> {
    let mut s = CpuStat::default();
    parse_keyed(text, |k, v| match k {
        "nr_periods" => s.nr_periods = Some(v),
        "nr_throttled" => s.nr_throttled = Some(v),
        "throttled_time" => s.throttled_time_ns = Some(v),
        _ => {}
    })?;
    Ok(s)
}

/// Limits at or above this are "no limit": the kernel prints `PAGE_COUNTER_MAX` pages in
/// bytes (9223372036854771712 on 4 KiB pages, other values with other page sizes).
pub const UNLIMITED: u64 = 1 << 62;

/// `memory.limit_in_bytes`: `None` when unlimited.
pub fn parse_limit(text: &str) -> Result<Option<u64>, ParseError> {
    let v = parse_single_u64(text)?;
    Ok((v < UNLIMITED).then_some(v))
}

/// The `memory.stat` keys we export, `total_*` preferred (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStat {
    pub rss: Option<u64>,
    pub cache: Option<u64>,
    pub dirty: Option<u64>,
    pub writeback: Option<u64>,
    pub pgmajfault: Option<u64>,
}

pub fn parse_memory_stat(text: &str) -> Result<MemoryStat, ParseError> {
    let mut plain = MemoryStat::default();
    let mut total = MemoryStat::default();
    parse_keyed(text, |k, v| {
        let (dst, key) = match k.strip_prefix("total_") {
            Some(rest) => (&mut total, rest),
            None => (&mut plain, k),
        };
        match key {
            "rss" => dst.rss = Some(v),
            "cache" => dst.cache = Some(v),
            "dirty" => dst.dirty = Some(v),
            "writeback" => dst.writeback = Some(v),
            "pgmajfault" => dst.pgmajfault = Some(v),
            _ => {}
        }
    })?;
    Ok(MemoryStat {
        rss: total.rss.or(plain.rss),
        cache: total.cache.or(plain.cache),
        dirty: total.dirty.or(plain.dirty),
        writeback: total.writeback.or(plain.writeback),
        pgmajfault: total.pgmajfault.or(plain.pgmajfault),
    })
}

/// `memory.oom_control`: the `oom_kill` count (`None` before kernel 4.13).
pub fn parse_oom_control(text: &str) -> Result<Option<u64>, ParseError> {
    let mut n = None;
    parse_keyed(text, |k, v| {
        if k == "oom_kill" {
            n = Some(v)
        }
    })?;
    Ok(n)
}

/// (major, minor) → (read, write) of one blkio file.
pub type ReadWrite = BTreeMap<(u32, u32), (u64, u64)>;

/// `blkio.throttle.io_service_bytes` or `…io_serviced`: (major, minor) → (read, write).
/// Lines are `maj:min Op value`, with a `Total value` line at the end; Sync, Async, Discard and
/// per-device Total are ignored.
pub fn parse_blkio(text: &str) -> Result<ReadWrite, ParseError> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let mut f = line.split_ascii_whitespace();
        match (f.next(), f.next(), f.next(), f.next()) {
            (None, ..) => {}
            (Some("Total"), Some(v), None, _) => {
                parse_u64(v, n, "Total")?;
            }
            (Some(dev), Some(op), Some(v), None) => {
                let dev = parse_dev(dev, n)?;
                let v = parse_u64(v, n, op)?;
                let e: &mut (u64, u64) = out.entry(dev).or_default();
                match op {
                    "Read" => e.0 = v,
                    "Write" => e.1 = v,
                    _ => {}
                }
            }
            _ => {
                return Err(ParseError::new(
                    n,
                    format!("expected `maj:min Op value`, got {line:?}"),
                ))
            }
        }
    }
    Ok(out)
}

/// One throttle file: ((major, minor), limit) per limited device.
pub type Throttle = Vec<((u32, u32), u64)>;

/// `blkio.throttle.{read,write}_{bps,iops}_device`: `maj:min value` per limited device.
pub fn parse_throttle(text: &str) -> Result<Throttle, ParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let mut f = line.split_ascii_whitespace();
        match (f.next(), f.next(), f.next()) {
            (None, ..) => {}
            (Some(dev), Some(v), None) => out.push((parse_dev(dev, n)?, parse_u64(v, n, "limit")?)),
            _ => {
                return Err(ParseError::new(
                    n,
                    format!("expected `maj:min value`, got {line:?}"),
                ))
            }
        }
    }
    Ok(out)
}

/// The four throttle files (read bps, write bps, read iops, write iops; `None` where a file
/// is absent) as one limit per device; `None` when all four are absent.
pub fn io_limits(files: [Option<Throttle>; 4]) -> Option<Vec<IoLimit>> {
    if files.iter().all(Option::is_none) {
        return None;
    }
    let mut by_dev: BTreeMap<(u32, u32), IoLimit> = BTreeMap::new();
    for (k, f) in files.into_iter().enumerate() {
        for ((major, minor), v) in f.into_iter().flatten() {
            let l = by_dev.entry((major, minor)).or_insert(IoLimit {
                major,
                minor,
                ..IoLimit::default()
            });
            let slot = match k {
                0 => &mut l.read_bps,
                1 => &mut l.write_bps,
                2 => &mut l.read_iops,
                _ => &mut l.write_iops,
            };
            *slot = (v > 0).then_some(v);
        }
    }
    Some(by_dev.into_values().filter(IoLimit::any).collect())
}

/// Joins the bytes and ops files into per-device rows.
pub fn device_io(bytes: &ReadWrite, ops: &ReadWrite) -> Vec<DeviceIo> {
    let mut devs: Vec<(u32, u32)> = bytes.keys().chain(ops.keys()).copied().collect();
    devs.sort_unstable();
    devs.dedup();
    devs.into_iter()
        .map(|d| {
            let (rb, wb) = bytes.get(&d).copied().unwrap_or_default();
            let (ro, wo) = ops.get(&d).copied().unwrap_or_default();
            DeviceIo {
                major: d.0,
                minor: d.1,
                read_bytes: rb,
                write_bytes: wb,
                read_ops: ro,
                write_ops: wo,
            }
        })
        .collect()
}

/// Reads the v1 counters of the container at `path` (relative) from each mounted controller.
pub fn read(layout: &Layout, path: &str) -> ContainerStats {
    read_with_ticks(layout, path, crate::sysconf::clock_ticks())
}

/// [`read`] with an explicit USER_HZ (tests).
pub fn read_with_ticks(layout: &Layout, path: &str, user_hz: u64) -> ContainerStats {
    read_parts(layout, path, user_hz, Want::ALL, &mut Files::default())
}

/// The cpuacct hierarchy's usage, user and system time of the container at `path` into `s`,
/// where `s` has no usage yet (a hybrid host reads them from the unified `cpu.stat` first).
pub(crate) fn fill_cpuacct(
    layout: &Layout,
    path: &str,
    user_hz: u64,
    files: &mut Files,
    s: &mut ContainerStats,
) {
    if s.cpu.usage_seconds.is_some() {
        return;
    }
    let Some(root) = layout.v1("cpuacct") else {
        return;
    };
    if let Some(d) = files.dir(root, path, &mut s.errors) {
        read_cpuacct(&d, user_hz.max(1) as f64, files, &mut s.cpu, &mut s.errors);
    }
}

fn read_cpuacct(
    d: &Dir,
    user_hz: f64,
    files: &mut Files,
    cpu: &mut CpuStats,
    e: &mut Vec<StatError>,
) {
    if let Some(st) = files.read(d, c"cpuacct.stat", parse_cpuacct_stat, e) {
        cpu.user_seconds = st.user_ticks.map(|t| t as f64 / user_hz);
        cpu.system_seconds = st.system_ticks.map(|t| t as f64 / user_hz);
    }
    cpu.usage_seconds = files
        .read(d, c"cpuacct.usage", parse_single_u64, e)
        .map(|ns| ns as f64 / 1e9);
}

/// The counters of the container at `path`, its settings (`memory.limit_in_bytes`, the four
/// `blkio.throttle.*_device` limits) when `want.settings`, its OOM kill count when
/// `want.oom`, a member pid when `want.procs` and the cpuacct files when `want.cpuacct`; without, those stay `None` for the caller to
/// fill from what it read before ([`crate::cgroup::pass`] says when).
pub(crate) fn read_parts(
    layout: &Layout,
    path: &str,
    user_hz: u64,
    want: Want,
    files: &mut Files,
) -> ContainerStats {
    let settings = want.settings;
    let mut s = ContainerStats::default();
    let e = &mut s.errors;
    let user_hz = user_hz.max(1) as f64;
    // The container's directory in each hierarchy, opened once (a `cpu,cpuacct` mount once
    // for both names).
    let open = |c: &str, files: &mut Files, e: &mut Vec<StatError>| {
        layout.v1(c).and_then(|root| files.dir(root, path, e))
    };
    let cpuacct = open("cpuacct", files, e);
    // One directory for both names when they reach one `cpu,cpuacct` mount.
    let shared = match (layout.v1("cpu"), layout.v1("cpuacct")) {
        (Some(a), Some(b)) => files.same_hierarchy(a, b),
        _ => false,
    };
    let cpu_own = if shared { None } else { open("cpu", files, e) };
    let cpu = if shared {
        cpuacct.as_ref()
    } else {
        cpu_own.as_ref()
    };
    let memory = open("memory", files, e);
    let blkio = open("blkio", files, e);
    let pids = open("pids", files, e);

    if let Some(d) = cpuacct.as_ref().filter(|_| want.cpuacct) {
        read_cpuacct(d, user_hz, files, &mut s.cpu, e);
    }
    if let Some(d) = cpu {
        if let Some(st) = files.read(d, c"cpu.stat", parse_cpu_stat, e) {
            s.cpu.nr_periods = st.nr_periods;
            s.cpu.nr_throttled = st.nr_throttled;
            s.cpu.throttled_seconds = st.throttled_time_ns.map(|ns| ns as f64 / 1e9);
        }
    }
    if let Some(d) = &memory {
        let m = &mut s.memory;
        m.usage_bytes = files.read(d, c"memory.usage_in_bytes", parse_single_u64, e);
        if settings {
            m.limit_bytes = files
                .read(d, c"memory.limit_in_bytes", parse_limit, e)
                .flatten();
        }
        if let Some(st) = files.read(d, c"memory.stat", parse_memory_stat, e) {
            m.rss_bytes = st.rss;
            m.cache_bytes = st.cache;
            m.dirty_bytes = st.dirty;
            m.writeback_bytes = st.writeback;
            m.major_faults = st.pgmajfault;
        }
        if want.oom {
            m.oom_kills = files
                .read(d, c"memory.oom_control", parse_oom_control, e)
                .flatten();
        }
    }
    if let Some(d) = &blkio {
        let bytes = files.read(d, c"blkio.throttle.io_service_bytes", parse_blkio, e);
        let ops = files.read(d, c"blkio.throttle.io_serviced", parse_blkio, e);
        // Both or nothing: a row with the ops of one pass read as 0 would look like a
        // counter reset to Prometheus.
        if let (Some(b), Some(o)) = (bytes, ops) {
            s.io = Some(device_io(&b, &o));
        }
        if settings {
            let mut limit = |f: &CStr| files.read(d, f, parse_throttle, e);
            s.io_limits = io_limits([
                limit(c"blkio.throttle.read_bps_device"),
                limit(c"blkio.throttle.write_bps_device"),
                limit(c"blkio.throttle.read_iops_device"),
                limit(c"blkio.throttle.write_iops_device"),
            ]);
        }
    }
    if let Some(d) = &pids {
        s.pids = files.read(d, c"pids.current", parse_single_u64, e);
    }
    // A member pid, from the first hierarchy that has the container.
    let member = [
        memory.as_ref(),
        pids.as_ref(),
        cpu,
        cpuacct.as_ref(),
        blkio.as_ref(),
    ]
    .into_iter()
    .flatten()
    .next();
    if let Some(d) = member.filter(|_| want.procs) {
        s.first_pid = files.first_pid(d, &mut s.errors);
    }
    s
}

#[cfg(test)]
mod tests;
