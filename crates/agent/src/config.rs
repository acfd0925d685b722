//! The TOML config file: every key optional, unknown keys rejected, values validated while
//! parsing so every error names the file, the line and the key.
//!
//! Parse (serde, `deny_unknown_fields`) → validate (cross-field checks) → a typed [`Config`]
//! the samplers use. On reload a failed parse keeps the running config (see `reload.rs`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use stallwatch_cloud::config::{CloudConfig, Enabled, VolumeOverride};
use stallwatch_collector::sample::containers::ContainersConfig;
use stallwatch_collector::sample::dstate::GroupRule;
use stallwatch_collector::sample::host::{HostConfig, Threshold};
use stallwatch_collector::sample::probe::{self, ProbeConfig};
use stallwatch_collector::sample::threads::ThreadsConfig;
use stallwatch_collector::sys::block::DiskFilter;

/// What the file says, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub sampler: SamplerSection,
    pub disks: DisksSection,
    pub writeback: WritebackSection,
    pub threads: ThreadsSection,
    /// `[[probe]]`: sync-write probes, one per directory.
    pub probe: Vec<ProbeSection>,
    pub containers: ContainersSection,
    pub cloud: CloudSection,
}

/// `enabled = "auto"` (default), `true` or `false`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EnabledSpec(pub Enabled);

impl<'de> Deserialize<'de> for EnabledSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            B(bool),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::B(true) => Ok(EnabledSpec(Enabled::On)),
            Raw::B(false) => Ok(EnabledSpec(Enabled::Off)),
            Raw::S(s) if s == "auto" => Ok(EnabledSpec(Enabled::Auto)),
            Raw::S(s) => Err(de::Error::custom(format!(
                "expected true, false or \"auto\", got {s:?}"
            ))),
        }
    }
}

/// `[cloud]`: AWS discovery, EBS volumes, BurstBalance and the local credit model.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloudSection {
    pub enabled: EnabledSpec,
    pub region: Option<String>,
    pub instance_id: Option<String>,
    pub availability_zone: Option<String>,
    pub imds_endpoint: Option<String>,
    #[serde(deserialize_with = "positive_duration")]
    pub imds_timeout: Duration,
    pub ec2_endpoint: Option<String>,
    pub cloudwatch_endpoint: Option<String>,
    #[serde(deserialize_with = "positive_duration")]
    pub request_timeout: Duration,
    #[serde(deserialize_with = "positive_duration")]
    pub describe_interval: Duration,
    #[serde(deserialize_with = "positive_duration")]
    pub poll_interval: Duration,
    #[serde(deserialize_with = "positive_duration")]
    pub fast_poll_interval: Duration,
    /// Poll at `fast_poll_interval` while a balance is below this, e.g. "30%".
    pub fast_poll_below: PercentSpec,
    #[serde(deserialize_with = "positive_duration")]
    pub lookback: Duration,
    #[serde(deserialize_with = "positive_duration")]
    pub staleness: Duration,
    #[serde(deserialize_with = "positive_duration")]
    pub retry_min: Duration,
    #[serde(deserialize_with = "positive_duration")]
    pub model_interval: Duration,
    pub instance_balances: bool,
    pub nvme_stats: bool,
    pub dev_dir: PathBuf,
    /// `[[cloud.volume]]`: device → volume id, for devices the agent cannot map itself.
    pub volume: Vec<VolumeSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSection {
    pub device: String,
    pub volume_id: String,
}

impl Default for CloudSection {
    fn default() -> Self {
        let d = CloudConfig::default();
        CloudSection {
            enabled: EnabledSpec(d.enabled),
            region: d.region,
            instance_id: d.instance_id,
            availability_zone: d.availability_zone,
            imds_endpoint: d.imds_endpoint,
            imds_timeout: d.imds_timeout,
            ec2_endpoint: d.ec2_endpoint,
            cloudwatch_endpoint: d.cloudwatch_endpoint,
            request_timeout: d.request_timeout,
            describe_interval: d.describe_interval,
            poll_interval: d.poll_interval,
            fast_poll_interval: d.fast_poll_interval,
            fast_poll_below: PercentSpec(d.fast_poll_below_percent / 100.0),
            lookback: d.lookback,
            staleness: d.staleness,
            retry_min: d.retry_min,
            model_interval: d.model_interval,
            instance_balances: d.instance_balances,
            nvme_stats: d.nvme_stats,
            dev_dir: d.dev_dir,
            volume: Vec::new(),
        }
    }
}

/// `[containers]`: the per-container view from the cgroup tree.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainersSection {
    pub enabled: bool,
    #[serde(deserialize_with = "positive_duration")]
    pub interval: Duration,
    /// Containers read per pass; more are counted in `stallwatch_containers_dropped`.
    pub max_containers: usize,
    #[serde(deserialize_with = "positive_duration")]
    pub timeout: Duration,
    /// Docker's data root, for container names (default `/var/lib/docker` under
    /// `--path.rootfs`).
    pub docker_root: Option<PathBuf>,
    /// containers/storage's root, for CRI-O and podman container names (default
    /// `/var/lib/containers/storage` under `--path.rootfs`).
    pub storage_root: Option<PathBuf>,
    /// CPU budget of a pass, share of one core ("1%"): the interval stretches to keep under it.
    pub max_cpu: PercentSpec,
}

impl Default for ContainersSection {
    fn default() -> Self {
        let d = ContainersConfig::default();
        ContainersSection {
            enabled: d.enabled,
            interval: d.interval,
            max_containers: d.max_containers,
            timeout: d.source_timeout,
            docker_root: None,
            storage_root: None,
            max_cpu: PercentSpec(d.max_cpu),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSection {
    /// A directory on the filesystem to probe (the probe owns `<path>/.stallwatch-probe`).
    pub path: PathBuf,
    #[serde(default = "default_probe_size")]
    pub size: SizeSpec,
    #[serde(
        default = "default_probe_interval",
        deserialize_with = "positive_duration"
    )]
    pub interval: Duration,
    #[serde(
        default = "default_probe_timeout",
        deserialize_with = "positive_duration"
    )]
    pub timeout: Duration,
}

fn default_probe_size() -> SizeSpec {
    SizeSpec(ProbeConfig::default().size)
}
fn default_probe_interval() -> Duration {
    ProbeConfig::default().interval
}
fn default_probe_timeout() -> Duration {
    ProbeConfig::default().timeout
}

/// A size like `"1MiB"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SizeSpec(pub u64);

impl<'de> Deserialize<'de> for SizeSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_size(&s).map(SizeSpec).map_err(de::Error::custom)
    }
}

/// `[threads]`: the D-state thread walk.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThreadsSection {
    pub enabled: bool,
    /// Walk cadence when nothing is suspicious.
    #[serde(deserialize_with = "positive_duration")]
    pub interval: Duration,
    /// Walk cadence while a stall is suspected.
    #[serde(deserialize_with = "positive_duration")]
    pub fast_interval: Duration,
    /// io PSI `some` avg10 above which a stall is suspected, e.g. "5%".
    pub stall_psi_threshold: PercentSpec,
    pub top_groups: usize,
    pub top_wchans: usize,
    /// A walk outstanding for longer marks the `threads` source stuck.
    #[serde(deserialize_with = "positive_duration")]
    pub timeout: Duration,
    /// `[[threads.group_rules]]`: `regex` over the comm → `group`; first match wins.
    pub group_rules: Vec<GroupRuleSpec>,
    /// CPU budget of the walk, share of one core ("5%"): the cadence stretches to keep under it.
    pub max_cpu: PercentSpec,
}

impl Default for ThreadsSection {
    fn default() -> Self {
        let d = ThreadsConfig::default();
        ThreadsSection {
            enabled: d.enabled,
            interval: d.interval,
            fast_interval: d.fast_interval,
            stall_psi_threshold: PercentSpec(d.stall_psi_threshold),
            top_groups: d.top_groups,
            top_wchans: d.top_wchans,
            timeout: d.source_timeout,
            group_rules: Vec::new(),
            max_cpu: PercentSpec(d.max_cpu),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRuleSpec {
    pub regex: RegexSpec,
    pub group: String,
}

/// `"5%"` → 0.05.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PercentSpec(pub f64);

impl<'de> Deserialize<'de> for PercentSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let v: f64 = s
            .trim()
            .strip_suffix('%')
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| {
                de::Error::custom(format!("expected a percentage like \"5%\", got {s:?}"))
            })?;
        if !(0.0..=100.0).contains(&v) {
            return Err(de::Error::custom(format!(
                "percentage {s:?} out of range [0, 100]"
            )));
        }
        Ok(PercentSpec(v / 100.0))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplerSection {
    /// How often the fast sources are read.
    #[serde(deserialize_with = "positive_duration")]
    pub interval: Duration,
    /// Window of the `*_peak` gauges.
    #[serde(deserialize_with = "positive_duration")]
    pub peak_window: Duration,
    /// A read outstanding for longer marks its source stuck.
    #[serde(deserialize_with = "positive_duration")]
    pub source_timeout: Duration,
}

fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_peak_window() -> Duration {
    Duration::from_secs(60)
}
fn default_source_timeout() -> Duration {
    Duration::from_secs(2)
}

impl Default for SamplerSection {
    fn default() -> Self {
        SamplerSection {
            interval: default_interval(),
            peak_window: default_peak_window(),
            source_timeout: default_source_timeout(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DisksSection {
    pub include_partitions: bool,
    pub include_loop: bool,
    pub include_ram: bool,
    pub device_exclude: Option<RegexSpec>,
    pub device_include: Option<RegexSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WritebackSection {
    /// `Writeback` above this is a burst: bytes ("64MiB") or a share of the kernel's dirty
    /// background threshold ("25%").
    pub burst_threshold: ThresholdSpec,
}

impl Default for WritebackSection {
    fn default() -> Self {
        WritebackSection {
            burst_threshold: ThresholdSpec(Threshold::Bytes(64 << 20)),
        }
    }
}

/// A regex compiled while parsing, so a bad one is reported with its line.
#[derive(Debug, Clone)]
pub struct RegexSpec(pub Regex);

impl<'de> Deserialize<'de> for RegexSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Regex::new(&s)
            .map(RegexSpec)
            .map_err(|e| de::Error::custom(format!("invalid regex: {e}")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThresholdSpec(pub Threshold);

impl<'de> Deserialize<'de> for ThresholdSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Some(p) = s.trim().strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| de::Error::custom(format!("invalid percentage {s:?}")))?;
            if !(v > 0.0 && v <= 1000.0) {
                return Err(de::Error::custom(format!(
                    "percentage {s:?} out of range (0, 1000]"
                )));
            }
            return Ok(ThresholdSpec(Threshold::OfBackground(v / 100.0)));
        }
        parse_size(&s)
            .map(|b| ThresholdSpec(Threshold::Bytes(b)))
            .map_err(de::Error::custom)
    }
}

/// Parses sizes like `64MiB`, `1 GiB`, `512k`, `4096` (bytes). Binary units for `Ki`/`K`/`k`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. \"64MiB\""))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "K" | "KB" | "KiB" => 1 << 10,
        "M" | "MB" | "MiB" => 1 << 20,
        "G" | "GB" | "GiB" => 1 << 30,
        "T" | "TB" | "TiB" => 1 << 40,
        u => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {u:?} (use B, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    let v = n * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(format!("invalid size {s:?}: out of range"));
    }
    Ok(v as u64)
}

fn positive_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    let v = humantime::parse_duration(&s).map_err(|e| {
        de::Error::custom(format!(
            "invalid duration {s:?}: {e} (e.g. \"1s\", \"500ms\")"
        ))
    })?;
    if v.is_zero() {
        return Err(de::Error::custom("duration must be greater than zero"));
    }
    Ok(v)
}

/// The validated configuration the agent runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: HostConfig,
    pub threads: ThreadsConfig,
    pub probes: Vec<ProbeConfig>,
    pub containers: ContainersConfig,
    pub cloud: CloudConfig,
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        FileConfig::default()
            .validate("<defaults>", "")
            .unwrap_or_else(|_| Config {
                host: HostConfig::default(),
                threads: ThreadsConfig::default(),
                probes: Vec::new(),
                containers: ContainersConfig::default(),
                cloud: CloudConfig::default(),
                source: None,
            })
    }
}

/// A config error that names the file, line and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub msg: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if let Some(k) = &self.key {
            write!(f, ": key `{k}`")?;
        }
        write!(f, ": {}", self.msg)
    }
}

impl std::error::Error for ConfigError {}

impl FileConfig {
    /// Cross-field checks, then the typed config.
    pub fn validate(self, file: &str, text: &str) -> Result<Config, ConfigError> {
        let s = &self.sampler;
        let err = |key: &str, msg: String| {
            let (section, k) = key.split_once('.').unwrap_or(("", key));
            ConfigError {
                file: file.to_string(),
                line: find_key_line(text, section, k),
                key: Some(key.to_string()),
                msg,
            }
        };
        if s.peak_window < s.interval {
            return Err(err(
                "sampler.peak_window",
                format!(
                    "must be at least sampler.interval ({:?}), is {:?}",
                    s.interval, s.peak_window
                ),
            ));
        }
        if s.interval > Duration::from_secs(3600) {
            return Err(err(
                "sampler.interval",
                format!("{:?} is longer than an hour", s.interval),
            ));
        }
        let t = &self.threads;
        if t.fast_interval > t.interval {
            return Err(err(
                "threads.fast_interval",
                format!(
                    "must not exceed threads.interval ({:?}), is {:?}",
                    t.interval, t.fast_interval
                ),
            ));
        }
        if t.top_groups == 0 || t.top_groups > 1000 {
            return Err(err(
                "threads.top_groups",
                format!("must be 1..=1000, is {}", t.top_groups),
            ));
        }
        if t.top_wchans == 0 || t.top_wchans > 1000 {
            return Err(err(
                "threads.top_wchans",
                format!("must be 1..=1000, is {}", t.top_wchans),
            ));
        }
        if let Some(r) = t
            .group_rules
            .iter()
            .find(|r| r.group.trim().is_empty() || r.group.chars().any(char::is_control))
        {
            return Err(err(
                "threads.group",
                format!("group name {:?} must be non-empty printable text", r.group),
            ));
        }
        let threads = ThreadsConfig {
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
        };
        // Probes: each path must be a writable directory on a writable filesystem, once.
        let mut probes: Vec<ProbeConfig> = Vec::new();
        for (i, p) in self.probe.iter().enumerate() {
            let line = find_nth_table_line(text, "probe", i);
            let perr = |key: &str, msg: String| ConfigError {
                file: file.to_string(),
                line,
                key: Some(format!("probe[{i}].{key}")),
                msg,
            };
            if let Err(e) = probe::validate(&p.path) {
                return Err(perr("path", e));
            }
            if probes.iter().any(|q| q.path == p.path) {
                return Err(perr(
                    "path",
                    format!("{} is probed twice", p.path.display()),
                ));
            }
            if p.size.0 == 0 || p.size.0 > (1 << 30) {
                return Err(perr(
                    "size",
                    format!("must be between 1 byte and 1GiB, is {}", p.size.0),
                ));
            }
            probes.push(ProbeConfig {
                path: p.path.clone(),
                size: p.size.0,
                interval: p.interval,
                timeout: p.timeout,
            });
        }
        let c = &self.containers;
        if c.max_containers == 0 || c.max_containers > 100_000 {
            return Err(err(
                "containers.max_containers",
                format!("must be 1..=100000, is {}", c.max_containers),
            ));
        }
        let containers = ContainersConfig {
            enabled: c.enabled,
            interval: c.interval,
            max_containers: c.max_containers,
            source_timeout: c.timeout,
            docker_root: c.docker_root.clone(),
            storage_root: c.storage_root.clone(),
            max_cpu: c.max_cpu.0,
        };
        let cloud = self.cloud.validate(&err)?;
        let d = self.disks;
        Ok(Config {
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
    fn validate(
        self,
        err: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<CloudConfig, ConfigError> {
        for (key, v) in [
            ("cloud.imds_endpoint", &self.imds_endpoint),
            ("cloud.ec2_endpoint", &self.ec2_endpoint),
            ("cloud.cloudwatch_endpoint", &self.cloudwatch_endpoint),
        ] {
            if let Some(u) = v {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(err(
                        key,
                        format!("must be an http:// or https:// URL, is {u:?}"),
                    ));
                }
            }
        }
        if self.instance_id.is_some() && self.region.is_none() {
            return Err(err(
                "cloud.instance_id",
                "needs cloud.region too (with both set, IMDS is not asked)".into(),
            ));
        }
        if self.fast_poll_interval > self.poll_interval {
            return Err(err(
                "cloud.fast_poll_interval",
                format!(
                    "must not exceed cloud.poll_interval ({:?}), is {:?}",
                    self.poll_interval, self.fast_poll_interval
                ),
            ));
        }
        for v in &self.volume {
            if !v.volume_id.starts_with("vol-") {
                return Err(err(
                    "cloud.volume_id",
                    format!("{:?} is not a volume id (vol-…)", v.volume_id),
                ));
            }
            if v.device.is_empty() || v.device.contains('/') {
                return Err(err(
                    "cloud.device",
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
            lookback: self.lookback,
            staleness: self.staleness,
            retry_min: self.retry_min,
            model_interval: self.model_interval,
            instance_balances: self.instance_balances,
            nvme_stats: self.nvme_stats,
            dev_dir: self.dev_dir,
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

/// Parses config text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
    let fc: FileConfig = toml::from_str(text).map_err(|e| {
        let (line, key) = match e.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                (Some(line), key_at_line(text, line))
            }
            None => (None, None),
        };
        ConfigError {
            file: file.to_string(),
            line,
            key,
            msg: e.message().trim().to_string(),
        }
    })?;
    fc.validate(file, text)
}

/// Loads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        line: None,
        key: None,
        msg: format!("cannot read: {e}"),
    })?;
    let mut c = parse(&file, &text)?;
    c.source = Some(path.to_path_buf());
    Ok(c)
}

/// `section.key` for the key assigned on `line` (1-based), from the text itself: toml's error
/// spans point at the value or key, and an operator wants the dotted name.
fn key_at_line(text: &str, line: usize) -> Option<String> {
    let mut section = String::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') {
            section = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
        if i + 1 == line {
            let (k, _) = t.split_once('=')?;
            let k = k.trim().trim_matches('"');
            return Some(if section.is_empty() {
                k.to_string()
            } else {
                format!("{section}.{k}")
            });
        }
    }
    None
}

/// The line (1-based) of the `n`th (0-based) `[[table]]` header.
fn find_nth_table_line(text: &str, table: &str, n: usize) -> Option<usize> {
    let header = format!("[[{table}]]");
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim().replace(' ', "") == header)
        .nth(n)
        .map(|(i, _)| i + 1)
}

/// The line (1-based) where `key` is assigned inside `[section]`.
fn find_key_line(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut cur = String::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') {
            cur = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        } else if cur == section && t.split_once('=').is_some_and(|(k, _)| k.trim() == key) {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("x.toml", "").unwrap();
        assert_eq!(c.host.interval, Duration::from_secs(1));
        assert_eq!(c.host.peak_window, Duration::from_secs(60));
        assert_eq!(c.host.writeback_burst_threshold, Threshold::Bytes(64 << 20));
    }

    #[test]
    fn example_config_loads() {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/stallwatch.example.toml"
        );
        let c = load(Path::new(p)).unwrap();
        assert_eq!(c.host.interval, Duration::from_secs(1));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse(
            "/etc/sw.toml",
            "[sampler]\ninterval = \"1s\"\nintervall = \"2s\"\n",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(3));
        assert_eq!(e.key.as_deref(), Some("sampler.intervall"));
        let s = e.to_string();
        assert!(
            s.starts_with("/etc/sw.toml:3: key `sampler.intervall`"),
            "{s}"
        );
        assert!(s.contains("unknown field"), "{s}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = parse("f", "[disks]\ninclude_loop = \"yes\"\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(2), Some("disks.include_loop"))
        );
        let e = parse("f", "[sampler]\n\ninterval = \"0s\"\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(3), Some("sampler.interval"))
        );
        let e = parse("f", "[disks]\ndevice_exclude = \"(\"\n").unwrap_err();
        assert!(e.msg.contains("invalid regex"), "{e}");
        let e = parse("f", "[writeback]\nburst_threshold = \"64 parsecs\"\n").unwrap_err();
        assert!(e.msg.contains("unknown unit"), "{e}");
        let e = parse("f", "[sampler]\ninterval = \"10s\"\npeak_window = \"5s\"\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(3), Some("sampler.peak_window"))
        );
        assert!(parse("f", "[sampler\n").is_err());
    }

    #[test]
    fn threads_section_and_group_rules() {
        let c = parse(
            "f",
            "[threads]\ninterval = \"5s\"\nstall_psi_threshold = \"2.5%\"\n\n[[threads.group_rules]]\nregex = \"^(dockerd|containerd)\"\ngroup = \"docker\"\n",
        )
        .unwrap();
        assert_eq!(c.threads.interval, Duration::from_secs(5));
        assert!((c.threads.stall_psi_threshold - 0.025).abs() < 1e-12);
        assert_eq!(c.threads.rules.len(), 1);
        assert_eq!(c.threads.rules[0].name, "docker");
        let e = parse(
            "f",
            "[threads]\ninterval = \"1s\"\nfast_interval = \"2s\"\n",
        )
        .unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(3), Some("threads.fast_interval"))
        );
        let e = parse(
            "f",
            "[[threads.group_rules]]\nregex = \"(\"\ngroup = \"x\"\n",
        )
        .unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(2), Some("threads.group_rules.regex"))
        );
        assert!(e.msg.contains("invalid regex"), "{e}");
        let e = parse("f", "[threads]\nstall_psi_threshold = \"120%\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("threads.stall_psi_threshold"));
    }

    #[test]
    fn probes_are_validated_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let ok = format!(
            "[[probe]]\npath = \"{}\"\nsize = \"64KiB\"\ntimeout = \"2s\"\n",
            dir.path().display()
        );
        let c = parse("f", &ok).unwrap();
        assert_eq!(c.probes.len(), 1);
        assert_eq!(
            (c.probes[0].size, c.probes[0].timeout),
            (64 << 10, Duration::from_secs(2))
        );
        assert_eq!(c.probes[0].interval, Duration::from_secs(30));
        let missing = "\n[[probe]]\npath = \"/nonexistent/stallwatch\"\n";
        let e = parse("f", missing).unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("probe[0].path")));
        assert!(e.msg.contains("/nonexistent/stallwatch"), "{e}");
        let twice = format!("{ok}{ok}");
        let e = parse("f", &twice).unwrap_err();
        assert!(e.msg.contains("twice"), "{e}");
        assert_eq!(e.line, Some(5));
        let e = parse(
            "f",
            &format!(
                "[[probe]]\npath = \"{}\"\nsize = \"0\"\n",
                dir.path().display()
            ),
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("probe[0].size"));
        let e = parse("f", "[[probe]]\nsize = \"1MiB\"\n").unwrap_err();
        assert!(e.msg.contains("path"), "missing path: {e}");
    }

    #[test]
    fn thresholds_and_sizes() {
        let c = parse("f", "[writeback]\nburst_threshold = \"25%\"\n").unwrap();
        assert_eq!(
            c.host.writeback_burst_threshold,
            Threshold::OfBackground(0.25)
        );
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1.5 GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("-1").is_err());
        assert!(parse_size("").is_err());
    }
}
