//! The v1 parsers on samples from this machine, and the reader on fixture hierarchies.

use super::*;
use std::fs;
use std::path::Path;

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
    let c =
        parse_cpu_stat("nr_periods 3012\nnr_throttled 1488\nthrottled_time 74123456789\n").unwrap();
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
    let m = parse_memory_stat("rss 4096\ncache 0\ntotal_rss 8192\ntotal_cache 12288\n").unwrap();
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
