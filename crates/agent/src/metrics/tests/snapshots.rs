//! Synthetic snapshots for the encoder goldens: every optional field present, values chosen
//! so that each sample is distinguishable.

use std::time::{Duration, Instant, SystemTime};

use stallwatch_collector::cgroup::{
    ContainerStats, CpuStats, DeviceIo, Identity, IoLimit, MemoryStats, Qos, Runtime,
};
use stallwatch_collector::proc::diskstats::{DiscardStat, DiskStat, FlushStat};
use stallwatch_collector::proc::loadavg::LoadAvg;
use stallwatch_collector::proc::meminfo::Meminfo;
use stallwatch_collector::proc::net_dev::NetDev;
use stallwatch_collector::proc::overlays::OverlayDevice;
use stallwatch_collector::proc::pressure::{Pressure, Record};
use stallwatch_collector::proc::stat::{CpuTicks, Stat};
use stallwatch_collector::proc::sys_kernel::HungTasks;
use stallwatch_collector::proc::sys_vm::VmTunables;
use stallwatch_collector::proc::vmstat::Vmstat;
use stallwatch_collector::sample::containers::{ContainerRow, ContainerSnapshot};
use stallwatch_collector::sample::dstate::{DThread, GroupRow};
use stallwatch_collector::sample::host::{DiskStall, Integrals, Peaks};
use stallwatch_collector::sample::probe::{ProbeSnapshot, BUCKETS, REASONS};
use stallwatch_collector::sample::{HostSnapshot, SourceStatus, ThreadSnapshot};
use stallwatch_collector::sys::bdi::Bdi;
use stallwatch_collector::sys::block::Disk;
use stallwatch_collector::ErrorKind;

fn rec(x: f64, total_us: u64) -> Record {
    Record {
        avg10: x,
        avg60: x / 2.0,
        avg300: x / 4.0,
        total_us,
    }
}

fn disk(major: u32, minor: u32, name: &str, base: u64, newer: bool) -> DiskStat {
    DiskStat {
        major,
        minor,
        name: name.into(),
        reads_completed: base + 1,
        reads_merged: base + 2,
        sectors_read: base + 3,
        read_time_ms: base + 4,
        writes_completed: base + 5,
        writes_merged: base + 6,
        sectors_written: base + 7,
        write_time_ms: base + 8,
        in_progress: base + 9,
        io_time_ms: base + 10,
        weighted_io_time_ms: base + 11,
        discard: newer.then_some(DiscardStat {
            completed: base + 12,
            merged: base + 13,
            sectors: base + 14,
            time_ms: base + 15,
        }),
        flush: newer.then_some(FlushStat {
            completed: base + 16,
            time_ms: base + 17,
        }),
    }
}

pub fn status(name: &'static str, now: Instant) -> SourceStatus {
    let mut s = SourceStatus::new(name);
    s.last_success = Some(now);
    s.last_duration = Some(Duration::from_millis(3));
    s.cpu = Duration::from_micros(1500);
    s.reads = 7;
    s.count_error(ErrorKind::Parse);
    s.count_error(ErrorKind::Panic);
    s
}

pub fn host_snapshot(now: Instant) -> HostSnapshot {
    let mut missing = SourceStatus::new("pressure_cpu");
    missing.missing = true;
    missing.last_success = Some(now);
    let mut stuck = SourceStatus::new("diskstats");
    stuck.in_flight_since = Some(now - Duration::from_secs(30));
    HostSnapshot {
        taken: Some(SystemTime::UNIX_EPOCH),
        stat: Some(Stat {
            cpu: Some(CpuTicks {
                user: 100,
                nice: 200,
                system: 300,
                idle: 400,
                iowait: 500,
                irq: 600,
                softirq: 700,
                steal: 800,
                present: 8,
            }),
            ctxt: Some(1000),
            btime: Some(1_700_000_000),
            forks: Some(42),
            procs_running: Some(3),
            procs_blocked: Some(2),
        }),
        loadavg: Some(LoadAvg {
            load1: 1.5,
            load5: 0.75,
            load15: 0.25,
            runnable: 3,
            entities: 88,
        }),
        pressure: [
            Some(Pressure {
                some: Some(rec(0.01, 1_000_000)),
                full: None,
            }),
            Some(Pressure {
                some: Some(rec(0.5, 2_500_000)),
                full: Some(rec(0.25, 1_250_000)),
            }),
            None,
            // irq (kernel >= 6.1): only `full`.
            Some(Pressure {
                some: None,
                full: Some(rec(0.001, 40_000)),
            }),
        ],
        meminfo: Some(Meminfo {
            mem_total: Some(1 << 30),
            mem_free: Some(2 << 20),
            mem_available: Some(3 << 20),
            buffers: Some(4 << 20),
            cached: Some(5 << 20),
            swap_cached: Some(6 << 20),
            dirty: Some(7 << 20),
            writeback: Some(8 << 20),
            writeback_tmp: Some(9 << 10),
            shmem: Some(10 << 20),
            swap_total: Some(11 << 20),
            swap_free: Some(12 << 20),
        }),
        vmstat: Some(Vmstat {
            nr_dirty: Some(1),
            nr_writeback: Some(2),
            nr_writeback_temp: Some(3),
            nr_dirtied: Some(4),
            nr_written: Some(5),
            nr_dirty_threshold: Some(6),
            nr_dirty_background_threshold: Some(7),
            pgfault: Some(8),
            pgmajfault: Some(9),
            pswpin: Some(10),
            pswpout: Some(11),
            oom_kill: Some(12),
            allocstall: Some(13),
            compact_stall: Some(14),
            pgscan_direct: Some(15),
            pgsteal_direct: Some(16),
            workingset_refault_anon: Some(17),
            workingset_refault_file: Some(18),
            pgpgin: Some(19),
            pgpgout: Some(20),
        }),
        disks: vec![disk(254, 0, "vda", 0, true), disk(8, 0, "sda", 100, false)],
        // Unfiltered: also a partition the [disks] filter hides.
        all_disks: std::sync::Arc::new(vec![
            Disk {
                stat: disk(254, 0, "vda", 0, true),
                partition: false,
            },
            Disk {
                stat: disk(254, 1, "vda1", 0, true),
                partition: true,
            },
            Disk {
                stat: disk(8, 0, "sda", 100, false),
                partition: false,
            },
        ]),
        // sda (exported) and vda1 (a partition, not exported) stalled now; vda never was.
        disk_stalls: vec![
            DiskStall {
                major: 8,
                minor: 0,
                name: "sda".into(),
                partition: false,
                in_flight: 100,
                since: now,
                seconds: 3.0,
            },
            DiskStall {
                major: 254,
                minor: 1,
                name: "vda1".into(),
                partition: true,
                in_flight: 1,
                since: now,
                seconds: 1.0,
            },
        ],
        disk_stalled_seconds: [((254, 0), 0.0), ((254, 1), 1.0), ((8, 0), 7.5)]
            .into_iter()
            .collect(),
        tunables: Some(VmTunables {
            dirty_background_bytes: Some(0),
            dirty_background_ratio: Some(10),
            dirty_bytes: Some(0),
            dirty_ratio: Some(20),
            dirty_expire_centisecs: Some(3000),
            dirty_writeback_centisecs: Some(500),
            dirtytime_expire_seconds: Some(43200),
        }),
        overlays: Some(vec![
            OverlayDevice {
                device: "vda".into(),
                mounts: 3,
                volatile: 1,
            },
            OverlayDevice {
                device: "tmpfs".into(),
                mounts: 1,
                volatile: 0,
            },
        ]),
        bdi: vec![
            Bdi {
                major: 254,
                minor: 0,
                min_ratio: Some(1),
                max_ratio: Some(100),
                max_bytes: Some(2438737920),
                strict_limit: Some(0),
                read_ahead_kb: Some(128),
            },
            // Not an exported disk: no rows.
            Bdi {
                major: 7,
                minor: 0,
                min_ratio: Some(0),
                ..Bdi::default()
            },
            Bdi {
                major: 8,
                minor: 0,
                max_ratio: Some(50),
                ..Bdi::default()
            },
        ],
        hung_tasks: Some(HungTasks {
            detect_count: Some(4),
            timeout_seconds: Some(120),
        }),
        peaks: Peaks {
            dirty_bytes: Some(9e6),
            writeback_bytes: Some(1e6),
            procs_blocked: Some(4.0),
            psi_avg10: [
                [Some(0.02), None],
                [Some(0.6), Some(0.3)],
                [None, None],
                [None, Some(0.004)],
            ],
        },
        integrals: Integrals {
            procs_blocked_seconds: 12.5,
            dirty_over_background_seconds: 3.25,
            writeback_burst_seconds: 1.5,
            writeback_bursts: 2,
        },
        burst_threshold_bytes: Some(16 << 20),
        page_size: 4096,
        clock_ticks: 100,
        sources: vec![status("stat", now), missing, stuck],
        ..HostSnapshot::default()
    }
}

const DOCKER_ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const K8S_ID: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

fn net(name: &str, b: u64) -> NetDev {
    NetDev {
        name: name.into(),
        rx_bytes: b + 1,
        rx_packets: b + 2,
        rx_errors: b + 3,
        rx_drops: b + 4,
        tx_bytes: b + 5,
        tx_packets: b + 6,
        tx_errors: b + 7,
        tx_drops: b + 8,
    }
}

pub fn containers_snapshot(now: Instant) -> ContainerSnapshot {
    let docker = ContainerRow {
        identity: docker_identity(),
        path: format!("/docker/{DOCKER_ID}"),
        stats: ContainerStats {
            cpu: CpuStats {
                user_seconds: Some(1.5),
                system_seconds: Some(0.5),
                usage_seconds: Some(2.25),
                nr_periods: Some(10),
                nr_throttled: Some(3),
                throttled_seconds: Some(0.125),
            },
            memory: MemoryStats {
                usage_bytes: Some(100 << 20),
                limit_bytes: Some(1 << 30),
                rss_bytes: Some(60 << 20),
                cache_bytes: Some(40 << 20),
                dirty_bytes: Some(1 << 20),
                writeback_bytes: Some(2 << 20),
                major_faults: Some(17),
                oom_kills: Some(1),
            },
            io: Some(vec![
                DeviceIo {
                    major: 254,
                    minor: 0,
                    read_bytes: 4096,
                    write_bytes: 8192,
                    read_ops: 1,
                    write_ops: 2,
                },
                // Not in diskstats: named major:minor.
                DeviceIo {
                    major: 259,
                    minor: 3,
                    read_bytes: 512,
                    write_bytes: 1024,
                    read_ops: 3,
                    write_ops: 4,
                },
            ]),
            io_limits: Some(vec![
                IoLimit {
                    major: 254,
                    minor: 0,
                    write_bps: Some(10 << 20),
                    write_iops: Some(300),
                    ..IoLimit::default()
                },
                // Not in diskstats: named major:minor.
                IoLimit {
                    major: 259,
                    minor: 3,
                    read_iops: Some(1000),
                    ..IoLimit::default()
                },
            ]),
            pids: Some(5),
            first_pid: Some(1234),
            ..ContainerStats::default()
        },
        network: Some(vec![net("lo", 0), net("eth0", 100), net("eth1", 200)]),
        name: Some("web".into()),
    };
    let k8s = ContainerRow {
        identity: Identity {
            container_id: K8S_ID.into(),
            runtime: Runtime::Containerd,
            pod_uid: Some("12ab34cd-0000-1111-2222-333344445555".into()),
            qos: Some(Qos::Burstable),
        },
        path: format!("/kubepods/burstable/pod12ab34cd-0000-1111-2222-333344445555/{K8S_ID}"),
        stats: ContainerStats {
            cpu: CpuStats {
                user_seconds: Some(7.0),
                ..CpuStats::default()
            },
            pressure: [
                None,
                Some(Pressure {
                    some: Some(rec(0.125, 3_000_000)),
                    full: Some(rec(0.0625, 1_500_000)),
                }),
                Some(Pressure {
                    some: Some(rec(0.0, 0)),
                    full: None,
                }),
            ],
            ..ContainerStats::default()
        },
        network: None,
        name: None,
    };
    let mut s = ContainerSnapshot {
        taken: Some(SystemTime::UNIX_EPOCH),
        enabled: true,
        containers: std::sync::Arc::new(vec![docker, k8s]),
        starts: 5,
        stops: 3,
        dropped: 1,
        dropped_total: 4,
        current_interval: Duration::from_millis(12_500),
        ..ContainerSnapshot::default()
    };
    s.status = status("containers", now);
    s
}

fn dthread(cgroup: Option<String>, container: Option<Identity>, now: Instant) -> DThread {
    DThread {
        pid: 1,
        tid: 1,
        comm: "dd".into(),
        group: "dd".into(),
        wchan: Some("io_schedule".into()),
        cgroup: cgroup.map(Into::into),
        container: container.map(Into::into),
        kernel_thread: false,
        since: now,
        stack: Some("[<0>] __iomap_dio_rw+0x4b0/0x8d0\n".into()),
    }
}

fn docker_identity() -> Identity {
    Identity {
        container_id: DOCKER_ID.into(),
        runtime: Runtime::Docker,
        pod_uid: None,
        qos: None,
    }
}

pub fn threads_snapshot(now: Instant) -> ThreadSnapshot {
    ThreadSnapshot {
        taken: Some(SystemTime::UNIX_EPOCH),
        enabled: true,
        states: vec![('D', 3), ('R', 2), ('S', 90)],
        total_threads: 95,
        groups: vec![
            GroupRow {
                name: "kworker".into(),
                d_now: 2,
                d_seconds: 12.5,
                episodes: 4,
                longest_since: Some(now - Duration::from_secs(9)),
            },
            GroupRow {
                name: "other".into(),
                d_now: 0,
                d_seconds: 1.0,
                episodes: 1,
                longest_since: None,
            },
        ],
        wchans: vec![("io_schedule".into(), 2), ("other".into(), 1)],
        stuck: vec![
            dthread(
                Some(format!("/docker/{DOCKER_ID}")),
                Some(docker_identity()),
                now,
            ),
            dthread(
                Some(format!("/docker/{DOCKER_ID}")),
                Some(docker_identity()),
                now,
            ),
            dthread(Some("/system.slice/ssh.service".into()), None, now),
            dthread(None, None, now),
        ],
        status: status("threads", now),
        current_interval: Duration::from_secs(1),
        suspected: true,
        stacks_missing: None,
        ..ThreadSnapshot::default()
    }
}

pub fn probe_snapshots(now: Instant) -> Vec<ProbeSnapshot> {
    let mut failures: Vec<(&'static str, u64)> = REASONS.iter().map(|r| (*r, 0)).collect();
    failures[0].1 = 2;
    failures[2].1 = 1;
    // Per bucket: one write under each of 0.01, 0.1, 1 and 10 s, two slower than 60 s.
    let mut per_bucket = [0u64; 16];
    for i in [3, 6, 9, 12] {
        per_bucket[i] = 1;
    }
    per_bucket[15] = 2;
    let bounds = || BUCKETS.iter().copied().chain([f64::INFINITY]);
    vec![
        ProbeSnapshot {
            path: "/var/lib/docker".into(),
            buckets: bounds().zip(per_bucket).collect(),
            sum: 12.75,
            count: 6,
            in_flight_since: Some(now - Duration::from_secs(5)),
            failures,
            last_duration: Some(Duration::from_millis(40)),
            last_success: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            // Its write hung past a 1 s timeout: the probe's source is stuck.
            status: SourceStatus {
                in_flight_since: Some(now - Duration::from_secs(5)),
                timeout: Duration::from_secs(1),
                ..SourceStatus::new("probe:/var/lib/docker")
            },
        },
        ProbeSnapshot {
            path: "/data".into(),
            buckets: bounds().map(|le| (le, 0)).collect(),
            sum: 0.0,
            count: 0,
            in_flight_since: None,
            failures: REASONS.iter().map(|r| (*r, 0)).collect(),
            last_duration: None,
            last_success: None,
            status: SourceStatus::new("probe:/data"),
        },
    ]
}

mod cloud;
pub use cloud::cloud_snapshot;
