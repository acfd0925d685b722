//! `stallwatch doctor`: what this node gives the agent and what the agent will miss, before you
//! rely on it. One line per check — `[ OK ]`, `[WARN]` (works, with something missing and how
//! to get it), `[FAIL]` (the agent cannot do its job) — and exit status 1 when anything
//! failed. It reads what the samplers read, through the same `--path.*` roots, so it can be run
//! in the agent's container or unit to check *its* view.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stallwatch_cloud::config::Enabled;
use stallwatch_collector::bpf;
use stallwatch_collector::cgroup::discover::{self, Layout};
use stallwatch_collector::proc::pressure::{self, Resource};
use stallwatch_collector::proc::tasks::Walker;
use stallwatch_collector::proc::{diskstats, stat, sys_vm};

use crate::cli::{Common, Exit};
use crate::config::check::{check_dirs, DirState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Ok,
    Warn,
    Fail,
}

struct Report {
    lines: Vec<(Status, &'static str, String)>,
}

impl Report {
    fn add(&mut self, s: Status, what: &'static str, detail: impl Into<String>) {
        let detail = detail.into();
        let tag = match s {
            Status::Ok => "[ OK ]",
            Status::Warn => "[WARN]",
            Status::Fail => "[FAIL]",
        };
        println!("{tag} {what}: {detail}");
        self.lines.push((s, what, detail));
    }
}

/// Effective capabilities of this very process: `CapEff` of the running kernel's
/// `/proc/self/status`, never under `--path.procfs` (a fixture tree's or the host's `self` is
/// some other process).
fn cap_eff() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;

/// The eBPF episode source: whether it can run here, tried for real (the programs are loaded,
/// attached and detached again), and whether wait channels and stacks get names.
fn bpf_lines(r: &mut Report, roots: &stallwatch_collector::Roots, b: &bpf::BpfConfig) {
    if b.enabled == bpf::Enabled::Off {
        r.add(
            Status::Ok,
            "eBPF episodes",
            "off ([bpf] enabled = false): D states come from the thread walk",
        );
        return;
    }
    let missing = if b.enabled == bpf::Enabled::On {
        Status::Fail
    } else {
        Status::Warn
    };
    if let Err(why) = bpf::availability(roots, bpf::cap_eff()) {
        r.add(
            missing,
            "eBPF episodes",
            format!("off: {why}; D states come from the thread walk (short episodes between walks are not seen)"),
        );
        return;
    }
    let syms = bpf::symbols::Symbols::open(roots.proc("kallsyms"));
    let t = Instant::now();
    let sizes = bpf::kernel::Sizes {
        in_flight: b.max_in_flight,
        keys: b.max_keys,
        ring_bytes: b.ring_bytes,
    };
    match bpf::kernel::Kernel::load(
        &roots.sys("kernel/btf/vmlinux"),
        sizes,
        b.long_episode,
        syms.bounds.sched,
        syms.bounds.lock,
    ) {
        Ok(k) => {
            drop(k);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if syms.bounds.known() {
                r.add(
                    Status::Ok,
                    "eBPF episodes",
                    format!("attached in {ms:.0} ms: every D episode is counted, with wait channels and stacks"),
                );
            } else {
                r.add(
                    Status::Warn,
                    "eBPF episodes",
                    format!("attached in {ms:.0} ms, but kernel addresses are hidden (no CAP_SYSLOG): wait channels are \"unknown\" and stacks have no names"),
                );
            }
        }
        Err(why) => r.add(
            missing,
            "eBPF episodes",
            format!("cannot load: {why}; D states come from the thread walk"),
        ),
    }
}

pub fn main(common: &Common) -> anyhow::Result<Exit> {
    let roots = common.roots();
    let mut r = Report { lines: Vec::new() };

    // Config first: everything else is reported even when it is bad.
    let cfg = match &common.config_file {
        None => {
            r.add(Status::Ok, "config", "no --config.file: defaults");
            Some(crate::config::Config::default())
        }
        Some(p) => match crate::config::load(p) {
            Ok(c) => {
                r.add(Status::Ok, "config", format!("{} is valid", p.display()));
                Some(c)
            }
            Err(e) => {
                r.add(Status::Fail, "config", e.to_string());
                None
            }
        },
    };

    match stat::read(&roots) {
        Ok(Some(s)) => r.add(
            Status::Ok,
            "procfs",
            format!(
                "{}: {} tasks blocked on I/O now",
                roots.procfs.display(),
                s.procs_blocked.unwrap_or(0)
            ),
        ),
        Ok(None) => r.add(
            Status::Fail,
            "procfs",
            format!(
                "{}/stat does not exist: is --path.procfs right?",
                roots.procfs.display()
            ),
        ),
        Err(e) => r.add(Status::Fail, "procfs", e.to_string()),
    }

    // cpu, io and memory are the stall signals; irq pressure exists only on kernels ≥ 6.1 with
    // CONFIG_IRQ_TIME_ACCOUNTING and is exported when present, never missed otherwise.
    let readable = |res: Resource| matches!(pressure::read(&roots, res), Ok(Some(_)));
    let psi: Vec<&str> = Resource::ALL
        .iter()
        .filter(|res| **res != Resource::Irq && readable(**res))
        .map(|res| res.as_str())
        .collect();
    let irq = if readable(Resource::Irq) {
        "; irq too"
    } else {
        ""
    };
    if psi.len() == 3 {
        r.add(
            Status::Ok,
            "PSI",
            format!("cpu, io and memory pressure available{irq}"),
        );
    } else {
        r.add(
            Status::Warn,
            "PSI",
            format!(
                "only [{}] of cpu, io and memory in /proc/pressure readable: the missing pressure metrics are absent (kernel ≥ 4.20 with CONFIG_PSI; some distributions need the boot parameter psi=1)",
                psi.join(", ")
            ),
        );
    }

    // Said as it is: the agent does not export per-task block I/O delay either way
    // (docs/metrics.md, "Not exported"), so neither state is a warning.
    match std::fs::read_to_string(roots.procfs.join("sys/kernel/task_delayacct")) {
        Ok(v) if v.trim() == "1" => r.add(
            Status::Ok,
            "delay accounting",
            "on: the kernel accounts per-task block I/O delay (stallwatch does not export it yet)",
        ),
        Ok(_) => r.add(
            Status::Ok,
            "delay accounting",
            "off (kernel.task_delayacct=0): per-task block I/O delay is not accounted; stallwatch does not export it either way",
        ),
        Err(_) => r.add(
            Status::Ok,
            "delay accounting",
            "kernel.task_delayacct not present (kernel < 5.14 or no CONFIG_TASK_DELAY_ACCT); stallwatch does not export per-task I/O delay either way",
        ),
    }

    // The thread walk, with the agent's own walker: the same count the agent's
    // stallwatch_threads reports, and what one walk costs here.
    let t = Instant::now();
    match Walker::new().walk(&roots) {
        Ok(w) => r.add(
            Status::Ok,
            "threads",
            format!(
                "{} threads walked in {:.1} ms",
                w.total,
                t.elapsed().as_secs_f64() * 1e3
            ),
        ),
        Err(e) => r.add(Status::Fail, "threads", format!("cannot walk: {e}")),
    }

    bpf_lines(
        &mut r,
        &roots,
        &cfg.as_ref()
            .map(|c| c.threads.bpf.clone())
            .unwrap_or_default(),
    );

    let caps = cap_eff().unwrap_or(0);
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_PTRACE) && has(CAP_DAC_READ_SEARCH) {
        r.add(
            Status::Ok,
            "capabilities",
            "CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH: every thread's wait channel and cgroup are readable",
        );
    } else {
        r.add(
            Status::Warn,
            "capabilities",
            format!(
                "missing{}{}: wait channels of more privileged processes read as 0 (wchan=\"unknown\") and some /proc files are unreadable",
                if has(CAP_SYS_PTRACE) { "" } else { " CAP_SYS_PTRACE" },
                if has(CAP_DAC_READ_SEARCH) { "" } else { " CAP_DAC_READ_SEARCH" }
            ),
        );
    }

    if let Ok(Some(v)) = sys_vm::read(&roots) {
        let expire = v
            .dirty_expire_centisecs
            .map_or("?".into(), |c| format!("{} s", c / 100));
        let limit = match (v.dirty_bytes, v.dirty_ratio) {
            (Some(b), _) if b > 0 => format!("{} MiB", b >> 20),
            (_, Some(p)) => format!("{p} % of available memory"),
            _ => "?".into(),
        };
        r.add(
            Status::Ok,
            "writeback",
            format!("dirty limit {limit}, dirty data written back after {expire}"),
        );
    }

    let layout = discover::detect(&roots);
    let (kind, refdir) = match &layout {
        Layout::V1 { controllers } => (
            format!(
                "cgroup v1 ({})",
                controllers.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            layout.reference(),
        ),
        Layout::V2 { root } => (
            format!("cgroup v2 at {}", root.display()),
            layout.reference(),
        ),
        Layout::Hybrid {
            controllers,
            unified,
        } => (
            format!(
                "hybrid: v1 ({}) + v2 at {}",
                controllers.keys().cloned().collect::<Vec<_>>().join(", "),
                unified.display()
            ),
            layout.reference(),
        ),
    };
    if refdir.is_none() {
        r.add(
            Status::Warn,
            "cgroups",
            format!("{kind}: no hierarchy to find containers in (is --path.cgroupfs right?)"),
        );
    } else {
        let d = discover::discover_bounded(
            &layout,
            discover::DEFAULT_MAX_DEPTH,
            discover::DEFAULT_MAX_DIRS,
        );
        let mut by: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &d.found {
            *by.entry(f.identity.runtime.as_str()).or_default() += 1;
        }
        let counts: Vec<String> = by.iter().map(|(k, v)| format!("{v} {k}")).collect();
        r.add(
            Status::Ok,
            "cgroups",
            format!(
                "{kind}; {} containers now{}{}",
                d.found.len(),
                if counts.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", counts.join(", "))
                },
                if d.truncated { "; walk truncated" } else { "" }
            ),
        );
    }

    match diskstats::read(&roots) {
        Ok(Some(ds)) => r.add(
            Status::Ok,
            "diskstats",
            format!("{} block devices", ds.len()),
        ),
        _ => r.add(Status::Warn, "diskstats", "unreadable: no disk metrics"),
    }
    let disks = stallwatch_cloud::devices::scan(&roots.sysfs).unwrap_or_default();
    let ebs: Vec<&stallwatch_cloud::devices::BlockDevice> =
        disks.iter().filter(|d| d.volume_id.is_some()).collect();
    if ebs.is_empty() {
        r.add(
            Status::Ok,
            "EBS devices",
            format!(
                "none among {} disks ({})",
                disks.len(),
                disks
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    } else {
        for d in &ebs {
            let t = d
                .io_timeout_seconds
                .map_or("unknown".into(), |t| format!("{t:.0} s"));
            r.add(
                Status::Ok,
                "EBS devices",
                format!(
                    "{} is {} (io_timeout {t})",
                    d.name,
                    d.volume_id.as_deref().unwrap_or("?")
                ),
            );
        }
        let dev_dir = cfg
            .as_ref()
            .map_or(Path::new("/dev").to_path_buf(), |c| c.cloud.dev_dir.clone());
        match stallwatch_cloud::nvme::read_log_page(&dev_dir.join(&ebs[0].name)) {
            Ok(_) => r.add(Status::Ok, "EBS NVMe stats", "log page 0xD0 readable"),
            Err(e) => r.add(
                Status::Warn,
                "EBS NVMe stats",
                format!("{e}: the exceeded-limit counters are absent (needs CAP_SYS_ADMIN and the device node)"),
            ),
        }
    }
    if !has(CAP_SYS_ADMIN) && !ebs.is_empty() {
        r.add(
            Status::Warn,
            "capabilities",
            "no CAP_SYS_ADMIN: the EBS NVMe log page cannot be read (deploy/systemd/stallwatch-nvme.conf)",
        );
    }

    // Cloud discovery, as the agent does it (same timeout; off EC2 this is quick).
    if let Some(c) = &cfg {
        if c.cloud.enabled == Enabled::Off {
            r.add(Status::Ok, "cloud", "off ([cloud] enabled = false)");
        } else if let (Some(id), Some(region)) = (&c.cloud.instance_id, &c.cloud.region) {
            r.add(
                Status::Ok,
                "cloud",
                format!("configured: {id} in {region} (IMDS not asked)"),
            );
        } else {
            let res = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|rt| {
                    rt.block_on(stallwatch_cloud::imds::probe(
                        c.cloud.imds_endpoint.as_deref(),
                        c.cloud.imds_timeout,
                    ))
                    .map_err(|e| e.to_string())
                });
            match res {
                Ok(i) => r.add(
                    Status::Ok,
                    "cloud",
                    format!(
                        "on EC2: {} ({}) in {}; needs ec2:DescribeVolumes and cloudwatch:GetMetricData (deploy/aws/iam-policy.json)",
                        i.instance_id, i.instance_type, i.availability_zone
                    ),
                ),
                Err(e) if c.cloud.enabled == Enabled::Auto => r.add(
                    Status::Ok,
                    "cloud",
                    format!("not on EC2 ({e}): the cloud features will be off"),
                ),
                Err(e) => r.add(
                    Status::Fail,
                    "cloud",
                    format!("[cloud] enabled = true but IMDS does not answer: {e}"),
                ),
            }
        }
    }

    // Probe directories: each checked in a child process within its probe's timeout, so a
    // directory on a hung filesystem is reported instead of hanging doctor.
    if let Some(c) = &cfg {
        let dirs: Vec<(PathBuf, Duration)> = c
            .probes
            .iter()
            .map(|p| (p.path.clone(), p.timeout))
            .collect();
        for ((path, _), state) in dirs.iter().zip(check_dirs(&dirs)) {
            let ok = state == DirState::Usable;
            r.add(
                if ok { Status::Ok } else { Status::Fail },
                "probe",
                state.describe(path),
            );
        }
    }

    let worst = r
        .lines
        .iter()
        .map(|(s, _, _)| *s)
        .max()
        .unwrap_or(Status::Ok);
    let n = |s: Status| r.lines.iter().filter(|(x, _, _)| *x == s).count();
    println!(
        "{} ok, {} warnings, {} failures",
        n(Status::Ok),
        n(Status::Warn),
        n(Status::Fail)
    );
    Ok(if worst == Status::Fail {
        Exit::Failure
    } else {
        Exit::Ok
    })
}
