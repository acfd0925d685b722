//! Command line, in the Prometheus exporter habit: dotted long flags (`--web.listen-address`),
//! paths overridable so the agent can run in a container with the host's trees at `/host/*`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The default port. The Prometheus default-port allocation range (9100–9999) has been fully
/// allocated since 2023, so any port in it collides with some listed exporter; 10139 lies
/// outside it and is not used by common node software. See README.md ("Port").
pub const DEFAULT_PORT: u16 = 10139;

#[derive(Debug, Parser)]
#[command(
    name = "stallwatch",
    version,
    about = "Is this node stalled on I/O, who is stuck, and why."
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (the default when no subcommand is given).
    Run,
    /// Parse and validate the config file (and web config file), print the result, exit 0 or 2.
    CheckConfig,
    /// Who is stuck in D state right now: the `ps | grep " D "` loop done right.
    Dstate(DstateArgs),
    /// Check what this node gives the agent (procfs, PSI, delay accounting, capabilities,
    /// cgroups, EBS devices, IMDS, probe directories) and what it will miss; exit 1 when
    /// something is broken.
    Doctor,
    /// Ask the running agent: is this node stalled, since when, why, and who is stuck. Exit 0
    /// when not stalled, 3 when stalled, 1 when the agent cannot be asked.
    Why(WhyArgs),
    /// The running agent's recent incidents, or one incident's record (D threads with kernel
    /// stacks, containers, disks, EBS).
    Incidents(IncidentsArgs),
    /// Internal: check one probe directory in a child process that may hang on a stalled
    /// filesystem without hanging its parent (see config/check.rs).
    #[command(name = "__check-probe-dir", hide = true)]
    CheckProbeDir { path: PathBuf },
    /// Internal: write one incident record (JSON on stdin) into DIR, in a child process that
    /// may hang on a stalled disk without hanging the agent (see recorder/store.rs).
    #[command(name = "__incident-write", hide = true)]
    IncidentWrite {
        dir: PathBuf,
        max_files: usize,
        max_bytes: u64,
    },
    /// Internal: print the incident records of DIR as one JSON array (recorder/store.rs).
    #[command(name = "__incident-read", hide = true)]
    IncidentRead { dir: PathBuf },
}

/// The process exit status, one mapping for every subcommand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    /// Something failed at run time (cannot listen, `doctor` found a failure, a probe
    /// directory did not answer `check-config` in time).
    Failure = 1,
    /// The operator's input is wrong: the config file, the web config file or a flag.
    BadConfig = 2,
    /// `why`: the agent answered and the node is stalled (on I/O or not).
    Stalled = 3,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}

/// Context that marks an error as bad input (exit 2); a [`crate::config::ConfigError`]
/// anywhere in the chain does too.
#[derive(Debug, Clone, Copy)]
pub struct BadInput;

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bad config")
    }
}

impl Exit {
    /// The exit status for an error that ended a subcommand.
    pub fn of(e: &anyhow::Error) -> Exit {
        if e.downcast_ref::<BadInput>().is_some()
            || e.chain().any(|c| c.is::<crate::config::ConfigError>())
        {
            Exit::BadConfig
        } else {
            Exit::Failure
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct DstateArgs {
    /// Print one table (after observing for --observe) and exit.
    #[arg(long)]
    pub once: bool,
    /// Machine-readable output (one JSON document per refresh).
    #[arg(long)]
    pub json: bool,
    /// Also print the kernel stack of the longest-stuck threads (/proc/<pid>/task/<tid>/stack).
    #[arg(long)]
    pub stack: bool,
    /// How many stacks --stack prints (at most 1000).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub stacks: u16,
    /// Refresh interval of the live view (10ms to 1h).
    #[arg(long, default_value = "1s", value_parser = flag_duration)]
    pub interval: std::time::Duration,
    /// With --once: how long to watch before printing, so ages mean something (10ms to 1h).
    #[arg(long, default_value = "1s", value_parser = flag_duration)]
    pub observe: std::time::Duration,
    /// At most this many threads are listed, longest first (1 to 100000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub limit: u32,
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// TOML config file; every key is optional (see config/stallwatch.example.toml).
    #[arg(long = "config.file", global = true, env = "STALLWATCH_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,

    /// Address to listen on, `host:port` or `:port` (all interfaces).
    #[arg(long = "web.listen-address", global = true, default_value_t = format!(":{DEFAULT_PORT}"))]
    pub listen_address: String,

    /// Path under which to expose metrics.
    #[arg(long = "web.telemetry-path", global = true, default_value = "/metrics")]
    pub telemetry_path: String,

    /// Web config file (TLS and basic auth) in the Prometheus exporter-toolkit format.
    #[arg(long = "web.config.file", global = true)]
    pub web_config_file: Option<PathBuf>,

    /// Connection cap and timeouts of the HTTP server (`--web.max-connections`, ...).
    #[command(flatten)]
    pub web: crate::web::WebArgs,

    /// procfs mount point.
    #[arg(long = "path.procfs", global = true, default_value = "/proc")]
    pub procfs: PathBuf,

    /// sysfs mount point.
    #[arg(long = "path.sysfs", global = true, default_value = "/sys")]
    pub sysfs: PathBuf,

    /// cgroup filesystem root (default: `<path.sysfs>/fs/cgroup`).
    #[arg(long = "path.cgroupfs", global = true)]
    pub cgroupfs: Option<PathBuf>,

    /// The host's root filesystem (mount table, runtime state).
    #[arg(long = "path.rootfs", global = true, default_value = "/")]
    pub rootfs: PathBuf,

    /// Only log messages with the given severity or above.
    #[arg(long = "log.level", global = true, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// Output format of log messages.
    #[arg(long = "log.format", global = true, value_enum, default_value_t = LogFormat::Logfmt)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Logfmt,
    Json,
}

impl Common {
    pub fn roots(&self) -> stallwatch_collector::Roots {
        stallwatch_collector::Roots {
            procfs: self.procfs.clone(),
            sysfs: self.sysfs.clone(),
            cgroupfs: self
                .cgroupfs
                .clone()
                .unwrap_or_else(|| self.sysfs.join("fs/cgroup")),
            rootfs: self.rootfs.clone(),
        }
    }
}

/// A duration flag of `dstate`: 10 ms to 1 h, like the config's intervals.
fn flag_duration(s: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. \"1s\", \"500ms\")"))?;
    if !(Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&d) {
        return Err(format!("{s:?} is out of range: must be 10ms to 1h"));
    }
    Ok(d)
}

/// Parses `host:port`, `:port` (all interfaces, as Go exporters do) and `[v6]:port`.
pub fn parse_listen_address(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::{SocketAddr, ToSocketAddrs};
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    if let Ok(a) = full.parse::<SocketAddr>() {
        return Ok(a);
    }
    full.to_socket_addrs()
        .map_err(|e| format!("invalid --web.listen-address {s:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("invalid --web.listen-address {s:?}: no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_address_forms() {
        assert_eq!(
            parse_listen_address(":10139").unwrap().to_string(),
            "0.0.0.0:10139"
        );
        assert_eq!(parse_listen_address("127.0.0.1:0").unwrap().port(), 0);
        assert_eq!(
            parse_listen_address("[::1]:9").unwrap().to_string(),
            "[::1]:9"
        );
        assert!(parse_listen_address("nonsense").is_err());
    }

    #[test]
    fn flags_parse_with_dots() {
        let cli = Cli::try_parse_from([
            "stallwatch",
            "--web.listen-address=127.0.0.1:1",
            "--path.procfs=/host/proc",
            "--log.format=json",
            "check-config",
        ])
        .unwrap();
        assert_eq!(cli.common.procfs, PathBuf::from("/host/proc"));
        assert_eq!(cli.common.roots().cgroupfs, PathBuf::from("/sys/fs/cgroup"));
        assert!(matches!(cli.command, Some(Command::CheckConfig)));
    }

    #[test]
    fn dstate_flags_are_bounded() {
        let p = |args: &[&str]| {
            Cli::try_parse_from([&["stallwatch", "dstate"][..], args].concat()).map(|c| c.command)
        };
        assert!(p(&["--interval=500ms", "--limit=10"]).is_ok());
        for bad in [
            "--interval=18446744073709551615s",
            "--observe=0s",
            "--limit=0",
            "--stacks=100000",
        ] {
            assert!(p(&[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_exit_mapping() {
        use anyhow::Context;
        let bad: anyhow::Result<()> = Err(anyhow::anyhow!("cert missing")).context(BadInput);
        assert_eq!(Exit::of(&bad.unwrap_err()), Exit::BadConfig);
        let cfg = crate::config::parse("f", "x = 1").unwrap_err();
        let e = anyhow::Error::new(cfg).context("loading");
        assert_eq!(Exit::of(&e), Exit::BadConfig);
        assert_eq!(Exit::of(&anyhow::anyhow!("cannot listen")), Exit::Failure);
        assert_eq!(
            std::process::ExitCode::from(Exit::BadConfig),
            std::process::ExitCode::from(2)
        );
    }
}

/// `stallwatch why` / `stallwatch incidents`: how to reach the running agent (client/).
/// How to reach the running agent.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// The agent's address (a path prefix is kept, for an agent behind a proxy).
    #[arg(long = "agent.url", env = "STALLWATCH_AGENT_URL",
          default_value_t = format!("http://127.0.0.1:{}", DEFAULT_PORT))]
    pub url: String,
    /// Basic-auth user; the password comes from $STALLWATCH_AGENT_PASSWORD or
    /// --agent.password-file (never a flag: flags show in `ps`).
    #[arg(long = "agent.user", env = "STALLWATCH_AGENT_USER")]
    pub user: Option<String>,
    /// File holding the basic-auth password (one line).
    #[arg(long = "agent.password-file")]
    pub password_file: Option<PathBuf>,
    /// For https://: PEM file of the CA that signed the agent's certificate (default: the
    /// system bundle, /etc/ssl/certs/ca-certificates.crt).
    #[arg(long = "agent.ca-file")]
    pub ca_file: Option<PathBuf>,
    /// For https://: the name the agent's certificate must carry, when it is not the URL's
    /// host (e.g. the node name while connecting to 127.0.0.1).
    #[arg(long = "agent.server-name")]
    pub server_name: Option<String>,
    /// Give up on the agent after this long (connect, send and answer together; 100ms to 1m).
    #[arg(long = "agent.timeout", default_value = "2s", value_parser = timeout_flag)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct WhyArgs {
    /// Print the agent's JSON (`/api/v1/verdict`) as it is.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub agent: AgentArgs,
}

#[derive(Debug, Clone, Args)]
pub struct IncidentsArgs {
    /// One incident's full record (with D threads, stacks, containers, disks); without it, the list.
    pub id: Option<String>,
    /// Print the agent's JSON as it is.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub agent: AgentArgs,
}

fn timeout_flag(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. \"2s\", \"500ms\")"))?;
    if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&d) {
        return Err(format!("{s:?} is out of range: must be 100ms to 1m"));
    }
    Ok(d)
}
