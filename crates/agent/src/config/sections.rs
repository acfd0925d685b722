//! The file as written: one struct per `[section]`, every key optional with a named default
//! (`#[serde(default, deny_unknown_fields)]`), values in the forms of `values.rs`. Ranges and
//! cross-field rules are checked afterwards (`bounds.rs`, `validate.rs`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use stallwatch_cloud::config::{CloudConfig, Enabled};
use stallwatch_collector::bpf::BpfConfig;
use stallwatch_collector::sample::containers::ContainersConfig;
use stallwatch_collector::sample::host::Threshold;
use stallwatch_collector::sample::probe::ProbeConfig;
use stallwatch_collector::sample::threads::ThreadsConfig;

use super::values::{duration, EnabledSpec, PercentSpec, RegexSpec, SizeSpec, ThresholdSpec};

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
    pub verdict: super::verdict::VerdictSection,
    pub incident: super::verdict::IncidentSection,
    pub bpf: BpfSection,
}

/// `[bpf]`: the eBPF D-episode source (`stallwatch_collector::bpf`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BpfSection {
    /// `"auto"` (on where BTF, CAP_BPF and CAP_PERFMON are), `true` or `false`.
    pub enabled: EnabledSpec,
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Episodes at least this long are kept with their kernel stack.
    #[serde(deserialize_with = "duration")]
    pub long_episode: Duration,
    pub max_in_flight: u64,
    pub max_keys: u64,
    pub ring_buffer: SizeSpec,
    #[serde(deserialize_with = "duration")]
    pub walk_interval: Duration,
}

impl Default for BpfSection {
    fn default() -> Self {
        let d = BpfConfig::default();
        BpfSection {
            enabled: EnabledSpec(Enabled::Auto),
            interval: d.interval,
            timeout: d.timeout,
            long_episode: d.long_episode,
            max_in_flight: u64::from(d.max_in_flight),
            max_keys: u64::from(d.max_keys),
            ring_buffer: SizeSpec(u64::from(d.ring_bytes)),
            walk_interval: d.walk_interval,
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
    #[serde(deserialize_with = "duration")]
    pub imds_timeout: Duration,
    pub ec2_endpoint: Option<String>,
    pub cloudwatch_endpoint: Option<String>,
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub describe_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub poll_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub fast_poll_interval: Duration,
    /// Poll at `fast_poll_interval` while a balance is below this, e.g. "30%".
    pub fast_poll_below: PercentSpec,
    /// ... and while a bucket empties within this.
    #[serde(deserialize_with = "duration")]
    pub fast_poll_empty_within: Duration,
    #[serde(deserialize_with = "duration")]
    pub lookback: Duration,
    #[serde(deserialize_with = "duration")]
    pub staleness: Duration,
    #[serde(deserialize_with = "duration")]
    pub retry_min: Duration,
    #[serde(deserialize_with = "duration")]
    pub model_interval: Duration,
    pub instance_balances: bool,
    pub checks: bool,
    pub nvme_stats: bool,
    pub dev_dir: PathBuf,
    /// The credit model's state file for a restart; "" keeps none.
    pub state_file: PathBuf,
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
            fast_poll_empty_within: d.fast_poll_empty_within,
            lookback: d.lookback,
            staleness: d.staleness,
            retry_min: d.retry_min,
            model_interval: d.model_interval,
            instance_balances: d.instance_balances,
            checks: d.checks,
            nvme_stats: d.nvme_stats,
            dev_dir: d.dev_dir,
            state_file: d.state_file.unwrap_or_default(),
            volume: Vec::new(),
        }
    }
}

/// `[containers]`: the per-container view from the cgroup tree.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainersSection {
    pub enabled: bool,
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// Containers read per pass; more are counted in `stallwatch_containers_dropped`.
    pub max_containers: usize,
    #[serde(deserialize_with = "duration")]
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
    #[serde(default = "default_probe_interval", deserialize_with = "duration")]
    pub interval: Duration,
    #[serde(default = "default_probe_timeout", deserialize_with = "duration")]
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

/// `[threads]`: the D-state thread walk.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThreadsSection {
    pub enabled: bool,
    /// Walk cadence when nothing is suspicious.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// Walk cadence while a stall is suspected.
    #[serde(deserialize_with = "duration")]
    pub fast_interval: Duration,
    /// io PSI `some` avg10 above which a stall is suspected, e.g. "5%".
    pub stall_psi_threshold: PercentSpec,
    pub top_groups: usize,
    pub top_wchans: usize,
    /// A walk outstanding for longer marks the `threads` source stuck.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// `[[threads.group_rules]]`: `regex` over the comm → `group`; first match wins.
    pub group_rules: Vec<GroupRuleSpec>,
    /// CPU budget of the walk, share of one core ("5%"): the cadence stretches to keep under it.
    pub max_cpu: PercentSpec,
    /// Read the kernel stacks of threads in D (needs CAP_SYS_ADMIN).
    pub stacks: bool,
    /// At most this many stacks per walk.
    pub stacks_max: usize,
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
            stacks: d.stacks,
            stacks_max: d.stacks_max,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRuleSpec {
    pub regex: RegexSpec,
    pub group: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplerSection {
    /// How often the fast sources are read.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// Window of the `*_peak` gauges.
    #[serde(deserialize_with = "duration")]
    pub peak_window: Duration,
    /// A read outstanding for longer marks its source stuck.
    #[serde(deserialize_with = "duration")]
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

/// What `stallwatch dstate` reads: `[threads]` only. Other sections are not looked at (not
/// even for unknown keys), so an incident tool works with a config another section of which
/// is broken.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ThreadsOnly {
    pub threads: ThreadsSection,
}
