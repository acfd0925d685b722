//! The TOML config file: every key optional, unknown keys rejected, every value in a documented
//! range, and every error naming the file, the line and the key.
//!
//! read (bounded: `read.rs`) → parse (serde, `deny_unknown_fields`: `sections.rs`, value forms in
//! `values.rs`) → validate (ranges from the one table in `bounds.rs`, then cross-field rules:
//! `validate.rs`) → a typed [`Config`] the samplers use. Lines come from the document's own
//! spans (`error.rs`). Loading never touches a probe directory (see `validate.rs`); on reload a
//! failed load keeps the running config (`reload.rs`).

mod bounds;
pub mod check;
mod error;
mod read;
mod sections;
mod validate;
mod values;
mod verdict;

use std::path::{Path, PathBuf};

use stallwatch_cloud::config::CloudConfig;
use stallwatch_collector::sample::containers::ContainersConfig;
use stallwatch_collector::sample::host::HostConfig;
use stallwatch_collector::sample::probe::ProbeConfig;
use stallwatch_collector::sample::threads::ThreadsConfig;

pub use error::ConfigError;
pub use read::read_bounded;
pub use validate::Env;

use error::Locator;
use sections::{FileConfig, ThreadsOnly};

/// The validated configuration the agent runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: HostConfig,
    pub threads: ThreadsConfig,
    pub probes: Vec<ProbeConfig>,
    pub containers: ContainersConfig,
    pub cloud: CloudConfig,
    pub verdict: crate::verdict::VerdictConfig,
    pub incident: crate::recorder::incident::IncidentConfig,
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        parse("<defaults>", "").unwrap_or_else(|_| Config {
            host: HostConfig::default(),
            threads: ThreadsConfig::default(),
            probes: Vec::new(),
            containers: ContainersConfig::default(),
            cloud: CloudConfig::default(),
            verdict: Default::default(),
            incident: Default::default(),
            source: None,
        })
    }
}

/// Deserializes `text`, turning toml's error span into a line and a dotted key.
fn deserialize<'a, T: serde::Deserialize<'a>>(
    loc: &Locator<'_>,
    file: &str,
    text: &'a str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (line, key) = match e.span() {
            Some(span) => (Some(loc.line_of(span.start)), loc.key_at(span.start)),
            None => (None, None),
        };
        ConfigError {
            file: file.to_string(),
            line,
            key,
            msg: e.message().trim().to_string(),
        }
    })
}

/// Parses config text without looking at the machine; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
    parse_in(file, text, &Env::default())
}

/// Parses config text, checking probe paths against `env`'s mount table.
pub fn parse_in(file: &str, text: &str, env: &Env) -> Result<Config, ConfigError> {
    let loc = Locator::new(file, text);
    let fc: FileConfig = deserialize(&loc, file, text)?;
    fc.validate(&loc, env)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    read_bounded(path).map_err(|msg| ConfigError {
        file: path.display().to_string(),
        line: None,
        key: None,
        msg,
    })
}

/// Loads and validates a config file (bounded read; probe paths checked against this process's
/// mount table, never touched).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read(path)?;
    let mut c = parse_in(&path.display().to_string(), &text, &Env::this_process())?;
    c.source = Some(path.to_path_buf());
    Ok(c)
}

/// `[threads]` of a config file alone, for `stallwatch dstate`: the other sections are not
/// parsed, so a mistake elsewhere does not keep the incident tool from running.
pub fn load_threads(path: &Path) -> Result<ThreadsConfig, ConfigError> {
    let text = read(path)?;
    let file = path.display().to_string();
    let loc = Locator::new(&file, &text);
    let t: ThreadsOnly = deserialize(&loc, &file, &text)?;
    validate::threads(&t.threads, &loc)
}

#[cfg(test)]
mod tests;
