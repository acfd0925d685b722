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
use std::path::Path;

use crate::cgroup::discover::Layout;
use crate::cgroup::{
    join, parse_dev, parse_keyed, parse_single_u64, ContainerStats, DeviceIo, IoLimit,
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
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        match f.as_slice() {
            [] => {}
            ["Total", v] => {
                parse_u64(v, n, "Total")?;
            }
            [dev, op, v] => {
                let dev = parse_dev(dev, n)?;
                let v = parse_u64(v, n, op)?;
                let e: &mut (u64, u64) = out.entry(dev).or_default();
                match *op {
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
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        match f.as_slice() {
            [] => {}
            [dev, v] => out.push((parse_dev(dev, n)?, parse_u64(v, n, "limit")?)),
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
    let mut s = ContainerStats::default();
    let e = &mut s.errors;
    let dir = |c: &str| layout.v1(c).map(|root| join(root, path));
    let user_hz = user_hz.max(1) as f64;

    if let Some(d) = dir("cpuacct") {
        if let Some(st) = super::read_file(&d.join("cpuacct.stat"), parse_cpuacct_stat, e) {
            s.cpu.user_seconds = st.user_ticks.map(|t| t as f64 / user_hz);
            s.cpu.system_seconds = st.system_ticks.map(|t| t as f64 / user_hz);
        }
        s.cpu.usage_seconds = super::read_file(&d.join("cpuacct.usage"), parse_single_u64, e)
            .map(|ns| ns as f64 / 1e9);
    }
    if let Some(d) = dir("cpu") {
        if let Some(st) = super::read_file(&d.join("cpu.stat"), parse_cpu_stat, e) {
            s.cpu.nr_periods = st.nr_periods;
            s.cpu.nr_throttled = st.nr_throttled;
            s.cpu.throttled_seconds = st.throttled_time_ns.map(|ns| ns as f64 / 1e9);
        }
    }
    if let Some(d) = dir("memory") {
        let m = &mut s.memory;
        m.usage_bytes = super::read_file(&d.join("memory.usage_in_bytes"), parse_single_u64, e);
        m.limit_bytes =
            super::read_file(&d.join("memory.limit_in_bytes"), parse_limit, e).flatten();
        if let Some(st) = super::read_file(&d.join("memory.stat"), parse_memory_stat, e) {
            m.rss_bytes = st.rss;
            m.cache_bytes = st.cache;
            m.dirty_bytes = st.dirty;
            m.writeback_bytes = st.writeback;
            m.major_faults = st.pgmajfault;
        }
        m.oom_kills =
            super::read_file(&d.join("memory.oom_control"), parse_oom_control, e).flatten();
    }
    if let Some(d) = dir("blkio") {
        let bytes = super::read_file(&d.join("blkio.throttle.io_service_bytes"), parse_blkio, e);
        let ops = super::read_file(&d.join("blkio.throttle.io_serviced"), parse_blkio, e);
        // Both or nothing: a row with the ops of one pass read as 0 would look like a
        // counter reset to Prometheus.
        if let (Some(b), Some(o)) = (bytes, ops) {
            s.io = Some(device_io(&b, &o));
        }
        let mut limit = |f: &str| {
            super::read_file(
                &d.join(format!("blkio.throttle.{f}_device")),
                parse_throttle,
                e,
            )
        };
        s.io_limits = io_limits([
            limit("read_bps"),
            limit("write_bps"),
            limit("read_iops"),
            limit("write_iops"),
        ]);
    }
    if let Some(d) = dir("pids") {
        s.pids = super::read_file(&d.join("pids.current"), parse_single_u64, e);
    }
    // A member pid, from the first hierarchy that has the container.
    for c in ["memory", "pids", "cpu", "cpuacct", "blkio"] {
        if let Some(d) = dir(c).filter(|d| Path::is_dir(d)) {
            s.first_pid = super::first_pid(&d, &mut s.errors);
            break;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// `memory.stat` of a fresh cgroup on this machine (kernel 6.18), after a shell loop and
    /// `cat /etc/passwd` ran in it.
    const MEMORY_STAT_DEBIAN12_6_18: &str = "cache 90112
rss 0
rss_huge 0
shmem 0
mapped_file 0
dirty 0
writeback 0
workingset_refault_anon 0
workingset_refault_file 22
swap 0
swapcached 0
pgpgin 85
pgpgout 63
pgfault 159
pgmajfault 1
inactive_anon 0
active_anon 0
inactive_file 86016
active_file 4096
unevictable 0
hierarchical_memory_limit 9223372036854771712
hierarchical_memsw_limit 9223372036854771712
total_cache 90112
total_rss 0
total_rss_huge 0
total_shmem 0
total_mapped_file 0
total_dirty 0
total_writeback 0
total_workingset_refault_anon 0
total_workingset_refault_file 22
total_swap 0
total_swapcached 0
total_pgpgin 85
total_pgpgout 63
total_pgfault 159
total_pgmajfault 1
total_inactive_anon 0
total_active_anon 0
total_inactive_file 86016
total_active_file 4096
total_unevictable 0
";

    const IO_SERVICE_BYTES_DEBIAN12_6_18: &str = "254:0 Read 409600
254:0 Write 409600
254:0 Sync 819200
254:0 Async 0
254:0 Discard 0
254:0 Total 819200
Total 819200
";

    const IO_SERVICED_DEBIAN12_6_18: &str = "254:0 Read 100
254:0 Write 100
254:0 Sync 200
254:0 Async 0
254:0 Discard 0
254:0 Total 200
Total 200
";

    #[test]
    fn cpuacct_and_cpu_stat_debian12_6_18() {
        let s = parse_cpuacct_stat("user 47\nsystem 0\n").unwrap();
        assert_eq!((s.user_ticks, s.system_ticks), (Some(47), Some(0)));
        let c = parse_cpu_stat(
            "nr_periods 0\nnr_throttled 0\nthrottled_time 0\nnr_bursts 0\nburst_time 0\n",
        )
        .unwrap();
        assert_eq!(c.nr_periods, Some(0));
        assert_eq!(c.throttled_time_ns, Some(0));
        assert_eq!(parse_single_u64("481777005\n").unwrap(), 481777005);
    }

    #[test]
    fn cpu_stat_throttled_container_kernel_4_14() {
        // A container with --cpus=0.5 under load (older kernels have no nr_bursts/burst_time).
        let c = parse_cpu_stat("nr_periods 3012\nnr_throttled 1488\nthrottled_time 74123456789\n")
            .unwrap();
        assert_eq!((c.nr_periods, c.nr_throttled), (Some(3012), Some(1488)));
        assert_eq!(c.throttled_time_ns, Some(74_123_456_789));
    }

    #[test]
    fn memory_stat_debian12_6_18_prefers_total() {
        let m = parse_memory_stat(MEMORY_STAT_DEBIAN12_6_18).unwrap();
        assert_eq!(m.cache, Some(90112));
        assert_eq!(m.rss, Some(0));
        assert_eq!(m.pgmajfault, Some(1));
        // a parent with children: total_ differs from the plain key
        let m =
            parse_memory_stat("rss 4096\ncache 0\ntotal_rss 8192\ntotal_cache 12288\n").unwrap();
        assert_eq!((m.rss, m.cache), (Some(8192), Some(12288)));
        // no total_ keys (use_hierarchy off on old kernels): plain keys
        let m = parse_memory_stat("rss 4096\ndirty 8192\n").unwrap();
        assert_eq!(
            (m.rss, m.dirty, m.writeback),
            (Some(4096), Some(8192), None)
        );
    }

    #[test]
    fn memory_limit_and_oom_control() {
        assert_eq!(parse_limit("9223372036854771712\n").unwrap(), None);
        // 64 KiB pages (arm64): PAGE_COUNTER_MAX * 65536
        assert_eq!(parse_limit("9223372036854710272\n").unwrap(), None);
        assert_eq!(parse_limit("536870912\n").unwrap(), Some(512 << 20));
        assert_eq!(
            parse_oom_control("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap(),
            Some(3)
        );
        // kernel < 4.13
        assert_eq!(
            parse_oom_control("oom_kill_disable 0\nunder_oom 0\n").unwrap(),
            None
        );
    }

    #[test]
    fn blkio_debian12_6_18() {
        let b = parse_blkio(IO_SERVICE_BYTES_DEBIAN12_6_18).unwrap();
        let o = parse_blkio(IO_SERVICED_DEBIAN12_6_18).unwrap();
        assert_eq!(
            device_io(&b, &o),
            vec![DeviceIo {
                major: 254,
                minor: 0,
                read_bytes: 409600,
                write_bytes: 409600,
                read_ops: 100,
                write_ops: 100
            }]
        );
        // no I/O yet (or no throttle limit set, see the module docs)
        assert!(parse_blkio("Total 0\n").unwrap().is_empty());
    }

    #[test]
    fn throttle_limits_debian12_6_18_joined_per_device() {
        // As this machine shows them after `echo "7:0 1048576" > read_bps_device`, etc.
        let f = |t: &str| Some(parse_throttle(t).unwrap());
        let l = io_limits([
            f("7:0 1048576\n"),
            f("254:0 2097152\n"),
            f(""),
            f("7:0 300\n"),
        ]);
        let l = l.unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(
            (l[0].major, l[0].read_bps, l[0].write_iops, l[0].write_bps),
            (7, Some(1048576), Some(300), None)
        );
        assert_eq!((l[1].major, l[1].write_bps), (254, Some(2097152)));
        assert_eq!(io_limits([f(""), f(""), f(""), f("")]), Some(vec![]));
        assert_eq!(io_limits([None, None, None, None]), None, "no blk-throttle");
        assert_eq!(parse_throttle("8:0 1\n8:0\n").unwrap_err().line, 2);
        assert!(parse_throttle("8:0 -5\n").is_err());
    }

    #[test]
    fn garbage_is_an_error_with_its_line() {
        assert_eq!(parse_blkio("8:0 Read 1\n8:0 Read\n").unwrap_err().line, 2);
        assert_eq!(parse_blkio("8-0 Read 1\n").unwrap_err().line, 1);
        assert_eq!(parse_blkio("Total x\n").unwrap_err().line, 1);
        assert!(parse_memory_stat("cache 1\nrss -1\n").is_err());
        assert!(parse_cpuacct_stat("user\n").is_err());
        assert!(parse_limit("-1\n").is_err());
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    #[test]
    fn read_from_fixture_hierarchies() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let id = "docker/3f2a";
        write(
            r,
            &format!("cpuacct/{id}/cpuacct.stat"),
            "user 47\nsystem 3\n",
        );
        write(r, &format!("cpuacct/{id}/cpuacct.usage"), "481777005\n");
        write(
            r,
            &format!("cpu/{id}/cpu.stat"),
            "nr_periods 10\nnr_throttled 2\nthrottled_time 1500000000\n",
        );
        write(r, &format!("memory/{id}/memory.usage_in_bytes"), "262144\n");
        write(
            r,
            &format!("memory/{id}/memory.limit_in_bytes"),
            "9223372036854771712\n",
        );
        write(
            r,
            &format!("memory/{id}/memory.stat"),
            MEMORY_STAT_DEBIAN12_6_18,
        );
        write(
            r,
            &format!("memory/{id}/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        );
        write(r, &format!("memory/{id}/cgroup.procs"), "1234\n1240\n");
        write(
            r,
            &format!("blkio/{id}/blkio.throttle.io_service_bytes"),
            IO_SERVICE_BYTES_DEBIAN12_6_18,
        );
        write(
            r,
            &format!("blkio/{id}/blkio.throttle.io_serviced"),
            "garbage\n",
        );
        write(
            r,
            &format!("blkio/{id}/blkio.throttle.write_iops_device"),
            "254:0 300\n",
        );
        // no pids hierarchy for this container
        let layout = Layout::V1 {
            controllers: ["cpu", "cpuacct", "memory", "blkio", "pids"]
                .iter()
                .map(|c| (c.to_string(), r.join(c)))
                .collect(),
        };
        let s = read_with_ticks(&layout, "/docker/3f2a", 100);
        assert_eq!(s.cpu.user_seconds, Some(0.47));
        assert_eq!(s.cpu.system_seconds, Some(0.03));
        assert_eq!(s.cpu.usage_seconds, Some(0.481777005));
        assert_eq!(s.cpu.nr_throttled, Some(2));
        assert_eq!(s.cpu.throttled_seconds, Some(1.5));
        assert_eq!(s.memory.usage_bytes, Some(262144));
        assert_eq!(s.memory.limit_bytes, None);
        assert_eq!(s.memory.cache_bytes, Some(90112));
        assert_eq!(s.memory.oom_kills, Some(0));
        assert_eq!(s.pids, None);
        assert_eq!(s.first_pid, Some(1234));
        // the bad ops file is one error, and no half rows
        assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
        assert!(s.errors[0].message.contains("io_serviced"));
        assert_eq!(s.errors[0].kind, crate::ErrorKind::Parse);
        assert_eq!(s.io, None);
        let want = IoLimit {
            major: 254,
            minor: 0,
            write_iops: Some(300),
            ..IoLimit::default()
        };
        assert_eq!(
            s.io_limits,
            Some(vec![want]),
            "the other 3 files are absent"
        );
        // a container that does not exist: everything absent, no errors
        let s = read_with_ticks(&layout, "/docker/gone", 100);
        assert_eq!(s, ContainerStats::default());
    }
}
