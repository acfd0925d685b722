//! Validate: every value against its range (`bounds.rs`), then the cross-field rules, then the
//! typed [`Config`] the samplers use (ripgrep's LowArgs → HiArgs).
//!
//! Nothing here touches the filesystem of a probe: loading a config must never wait on the disk
//! the agent is there to watch (a `stat` of a directory on a hung filesystem blocks in D state
//! until the disk answers). A probe path is checked *as a string* — absolute, no `..`, not under
//! `/proc`, `/sys` or `/dev` — and against the mount table as the kernel reports it (reading
//! `/proc/self/mountinfo` asks no filesystem anything), so a pseudo-filesystem is rejected
//! wherever it is mounted. Whether the directory exists and is writable is the probe's own
//! business at run time: it shows as `stallwatch_probe_failures_total{reason}` for that probe,
//! and `stallwatch check-config` / `stallwatch doctor` look at it with a deadline.

use std::path::{Component, Path};
use std::time::Duration;

use stallwatch_cloud::config::{CloudConfig, Enabled, VolumeOverride};
use stallwatch_collector::bpf::{self, BpfConfig};
use stallwatch_collector::proc::mountinfo::{self, Mount};
use stallwatch_collector::sample::containers::ContainersConfig;
use stallwatch_collector::sample::dstate::GroupRule;
use stallwatch_collector::sample::host::{HostConfig, Threshold};
use stallwatch_collector::sample::probe::ProbeConfig;
use stallwatch_collector::sample::threads::ThreadsConfig;
use stallwatch_collector::sys::block::DiskFilter;

use super::bounds::{check, check_len, Value};
use super::error::{ConfigError, Locator};
use super::sections::{BpfSection, CloudSection, FileConfig, ThreadsSection};
use super::Config;

/// What validation may know about the machine: the mount table of this process, when
/// readable (`None`: the string checks alone).
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub mounts: Option<Vec<Mount>>,
}

impl Env {
    /// This process's own mount table: the namespace in which the probes will open their paths.
    pub fn this_process() -> Env {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|t| mountinfo::parse(&t).ok());
        Env { mounts }
    }
}

/// Filesystems that are not storage: a probe there measures nothing (or writes into the
/// kernel's own tables).
const PSEUDO_FS: &[&str] = &[
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devtmpfs",
    "devpts",
    "debugfs",
    "tracefs",
    "securityfs",
    "bpf",
    "configfs",
    "pstore",
    "efivarfs",
    "fusectl",
    "mqueue",
    "hugetlbfs",
    "binfmt_misc",
    "nsfs",
    "rpc_pipefs",
    "selinuxfs",
];

/// Directories that hold pseudo-filesystems on every Linux host, checked as strings so that
/// they are refused even when the mount table cannot be read.
const PSEUDO_DIRS: &[&str] = &["/proc", "/sys", "/dev"];

/// Checks a probe directory without touching it (see the module docs).
pub fn probe_path(path: &Path, mounts: Option<&[Mount]>) -> Result<(), String> {
    let shown = path.display();
    if !path.is_absolute() {
        return Err(format!("{shown:?} must be an absolute path"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{shown:?} must not contain \"..\""));
    }
    let s = path.to_string_lossy();
    if s.contains('\0') {
        return Err(format!("{shown:?} contains a NUL byte"));
    }
    if let Some(d) = PSEUDO_DIRS.iter().find(|d| path.starts_with(d)) {
        return Err(format!(
            "{shown} is under {d}, a pseudo-filesystem: a probe must write to real storage"
        ));
    }
    let normal: String = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(format!("/{}", n.to_string_lossy())),
            _ => None,
        })
        .collect();
    let normal = if normal.is_empty() {
        "/".into()
    } else {
        normal
    };
    if let Some(m) = mounts.and_then(|ms| mountinfo::mount_of(ms, &normal)) {
        if PSEUDO_FS.contains(&m.fs_type.as_str()) {
            return Err(format!(
                "{shown} is on a {} filesystem (mounted at {}): a probe must write to real storage",
                m.fs_type, m.mount_point
            ));
        }
    }
    Ok(())
}

/// A cross-field rule: the duration `key` must not exceed `limit` (the error is on `key`'s line).
fn not_above(
    loc: &Locator<'_>,
    (key, v): (&str, Duration),
    (limit_key, limit): (&str, Duration),
) -> Result<(), ConfigError> {
    if v > limit {
        return Err(loc.err(
            key,
            format!("must not exceed {limit_key} ({limit:?}), is {v:?}"),
        ));
    }
    Ok(())
}

/// `[threads]` → the walker's config. Shared by the agent and `stallwatch dstate`.
pub fn threads(t: &ThreadsSection, loc: &Locator<'_>) -> Result<ThreadsConfig, ConfigError> {
    for (k, v) in [
        ("interval", Value::Duration(t.interval)),
        ("fast_interval", Value::Duration(t.fast_interval)),
        ("timeout", Value::Duration(t.timeout)),
        ("top_groups", Value::Count(t.top_groups as u64)),
        ("top_wchans", Value::Count(t.top_wchans as u64)),
        ("stacks_max", Value::Count(t.stacks_max as u64)),
        ("stall_psi_threshold", Value::Share(t.stall_psi_threshold.0)),
        ("max_cpu", Value::Share(t.max_cpu.0)),
    ] {
        let key = format!("threads.{k}");
        check(loc, &key, &key, v)?;
    }
    check_len(loc, "threads.group_rules", t.group_rules.len())?;
    for (i, r) in t.group_rules.iter().enumerate() {
        let g = &r.group;
        if g.trim().is_empty() || g.chars().any(char::is_control) || g.chars().count() > 128 {
            return Err(loc.err(
                &format!("threads.group_rules[{i}].group"),
                format!("group name {g:?} must be printable text of 1 to 128 characters"),
            ));
        }
    }
    not_above(
        loc,
        ("threads.fast_interval", t.fast_interval),
        ("threads.interval", t.interval),
    )?;
    Ok(ThreadsConfig {
        enabled: t.enabled,
        interval: t.interval,
        fast_interval: t.fast_interval,
        stall_psi_threshold: t.stall_psi_threshold.0,
        top_groups: t.top_groups,
        top_wchans: t.top_wchans,
        rules: t
            .group_rules
            .iter()
            .map(|r| GroupRule {
                regex: r.regex.0.clone(),
                name: r.group.clone(),
            })
            .collect(),
        source_timeout: t.timeout,
        max_cpu: t.max_cpu.0,
        stacks: t.stacks,
        stacks_max: t.stacks_max,
        // `[bpf]` is its own section (filled in by the whole file's validation).
        bpf: BpfConfig::default(),
    })
}

/// `[bpf]` → the episode source's config (it runs in the thread sampler).
fn bpf(b: &BpfSection, loc: &Locator<'_>) -> Result<BpfConfig, ConfigError> {
    for (k, v) in [
        ("interval", Value::Duration(b.interval)),
        ("timeout", Value::Duration(b.timeout)),
        ("long_episode", Value::Duration(b.long_episode)),
        ("max_in_flight", Value::Count(b.max_in_flight)),
        ("max_keys", Value::Count(b.max_keys)),
        ("ring_buffer", Value::Size(b.ring_buffer.0)),
        ("walk_interval", Value::Duration(b.walk_interval)),
    ] {
        let key = format!("bpf.{k}");
        check(loc, &key, &key, v)?;
    }
    if !b.ring_buffer.0.is_power_of_two() {
        return Err(loc.err(
            "bpf.ring_buffer",
            format!(
                "{} bytes is not a power of two (the kernel's ring buffers are)",
                b.ring_buffer.0
            ),
        ));
    }
    // In range, so they fit.
    let small = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    Ok(BpfConfig {
        enabled: match b.enabled.0 {
            Enabled::Auto => bpf::Enabled::Auto,
            Enabled::On => bpf::Enabled::On,
            Enabled::Off => bpf::Enabled::Off,
        },
        interval: b.interval,
        timeout: b.timeout,
        long_episode: b.long_episode,
        max_in_flight: small(b.max_in_flight),
        max_keys: small(b.max_keys),
        ring_bytes: small(b.ring_buffer.0),
        walk_interval: b.walk_interval,
    })
}

impl FileConfig {
    /// Ranges, cross-field checks, then the typed config.
    pub fn validate(self, loc: &Locator<'_>, env: &Env) -> Result<Config, ConfigError> {
        let one = |key: &str, v: Value| check(loc, key, key, v);
        let s = &self.sampler;
        one("sampler.interval", Value::Duration(s.interval))?;
        one("sampler.peak_window", Value::Duration(s.peak_window))?;
        one("sampler.source_timeout", Value::Duration(s.source_timeout))?;
        if let Threshold::Bytes(b) = self.writeback.burst_threshold.0 {
            one("writeback.burst_threshold", Value::Size(b))?;
        }
        if s.peak_window < s.interval {
            return Err(loc.err(
                "sampler.peak_window",
                format!(
                    "must be at least sampler.interval ({:?}), is {:?}",
                    s.interval, s.peak_window
                ),
            ));
        }
        if s.peak_window.as_secs_f64() > 100_000.0 * s.interval.as_secs_f64() {
            return Err(loc.err(
                "sampler.peak_window",
                format!(
                    "must be at most 100000 × sampler.interval ({:?}), is {:?}",
                    s.interval, s.peak_window
                ),
            ));
        }
        let mut threads = threads(&self.threads, loc)?;
        threads.bpf = bpf(&self.bpf, loc)?;

        check_len(loc, "probe", self.probe.len())?;
        let mut probes: Vec<ProbeConfig> = Vec::new();
        for (i, p) in self.probe.iter().enumerate() {
            let key = |k: &str| format!("probe[{i}].{k}");
            probe_path(&p.path, env.mounts.as_deref()).map_err(|m| loc.err(&key("path"), m))?;
            if probes.iter().any(|q| q.path == p.path) {
                return Err(loc.err(
                    &key("path"),
                    format!("{} is probed twice", p.path.display()),
                ));
            }
            check(loc, "probe.size", &key("size"), Value::Size(p.size.0))?;
            check(
                loc,
                "probe.interval",
                &key("interval"),
                Value::Duration(p.interval),
            )?;
            check(
                loc,
                "probe.timeout",
                &key("timeout"),
                Value::Duration(p.timeout),
            )?;
            probes.push(ProbeConfig {
                path: p.path.clone(),
                size: p.size.0,
                interval: p.interval,
                timeout: p.timeout,
            });
        }

        let c = &self.containers;
        one("containers.interval", Value::Duration(c.interval))?;
        one("containers.timeout", Value::Duration(c.timeout))?;
        one(
            "containers.max_containers",
            Value::Count(c.max_containers as u64),
        )?;
        one("containers.max_cpu", Value::Share(c.max_cpu.0))?;
        let containers = ContainersConfig {
            enabled: c.enabled,
            interval: c.interval,
            max_containers: c.max_containers,
            source_timeout: c.timeout,
            docker_root: c.docker_root.clone(),
            storage_root: c.storage_root.clone(),
            max_cpu: c.max_cpu.0,
        };
        let cloud = self.cloud.validate(loc)?;
        let verdict = self.verdict.validate(loc)?;
        let incident = self.incident.validate(loc)?;
        let d = self.disks;
        Ok(Config {
            verdict,
            incident,
            threads,
            probes,
            containers,
            cloud,
            host: HostConfig {
                interval: s.interval,
                peak_window: s.peak_window,
                source_timeout: s.source_timeout,
                disks: DiskFilter {
                    include_partitions: d.include_partitions,
                    include_loop: d.include_loop,
                    include_ram: d.include_ram,
                    exclude: d.device_exclude.map(|r| r.0),
                    include: d.device_include.map(|r| r.0),
                },
                writeback_burst_threshold: self.writeback.burst_threshold.0,
            },
            source: None,
        })
    }
}

impl CloudSection {
    fn validate(self, loc: &Locator<'_>) -> Result<CloudConfig, ConfigError> {
        let one = |key: &str, v: Value| check(loc, key, key, v);
        for (key, v) in [
            ("cloud.imds_timeout", self.imds_timeout),
            ("cloud.request_timeout", self.request_timeout),
            ("cloud.describe_interval", self.describe_interval),
            ("cloud.poll_interval", self.poll_interval),
            ("cloud.fast_poll_interval", self.fast_poll_interval),
            ("cloud.fast_poll_empty_within", self.fast_poll_empty_within),
            ("cloud.lookback", self.lookback),
            ("cloud.staleness", self.staleness),
            ("cloud.retry_min", self.retry_min),
            ("cloud.model_interval", self.model_interval),
        ] {
            one(key, Value::Duration(v))?;
        }
        one(
            "cloud.fast_poll_below",
            Value::Share(self.fast_poll_below.0),
        )?;
        check_len(loc, "cloud.volume", self.volume.len())?;
        for (key, v) in [
            ("cloud.imds_endpoint", &self.imds_endpoint),
            ("cloud.ec2_endpoint", &self.ec2_endpoint),
            ("cloud.cloudwatch_endpoint", &self.cloudwatch_endpoint),
        ] {
            if let Some(u) = v {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(
                        loc.err(key, format!("must be an http:// or https:// URL, is {u:?}"))
                    );
                }
            }
        }
        if self.instance_id.is_some() && self.region.is_none() {
            return Err(loc.err(
                "cloud.instance_id",
                "needs cloud.region too (with both set, IMDS is not asked)",
            ));
        }
        not_above(
            loc,
            ("cloud.fast_poll_interval", self.fast_poll_interval),
            ("cloud.poll_interval", self.poll_interval),
        )?;
        for (i, v) in self.volume.iter().enumerate() {
            if !v.volume_id.starts_with("vol-") {
                return Err(loc.err(
                    &format!("cloud.volume[{i}].volume_id"),
                    format!("{:?} is not a volume id (vol-…)", v.volume_id),
                ));
            }
            if v.device.is_empty() || v.device.contains('/') {
                return Err(loc.err(
                    &format!("cloud.volume[{i}].device"),
                    format!(
                        "{:?} must be a kernel device name like nvme1n1 or xvdf",
                        v.device
                    ),
                ));
            }
        }
        Ok(CloudConfig {
            enabled: self.enabled.0,
            region: self.region,
            instance_id: self.instance_id,
            availability_zone: self.availability_zone,
            imds_endpoint: self.imds_endpoint,
            imds_timeout: self.imds_timeout,
            ec2_endpoint: self.ec2_endpoint,
            cloudwatch_endpoint: self.cloudwatch_endpoint,
            request_timeout: self.request_timeout,
            describe_interval: self.describe_interval,
            poll_interval: self.poll_interval,
            fast_poll_interval: self.fast_poll_interval,
            fast_poll_below_percent: self.fast_poll_below.0 * 100.0,
            fast_poll_empty_within: self.fast_poll_empty_within,
            lookback: self.lookback,
            staleness: self.staleness,
            retry_min: self.retry_min,
            model_interval: self.model_interval,
            instance_balances: self.instance_balances,
            checks: self.checks,
            nvme_stats: self.nvme_stats,
            dev_dir: self.dev_dir,
            state_file: (!self.state_file.as_os_str().is_empty()).then_some(self.state_file),
            volumes: self
                .volume
                .into_iter()
                .map(|v| VolumeOverride {
                    device: v.device,
                    volume_id: v.volume_id,
                })
                .collect(),
        })
    }
}
