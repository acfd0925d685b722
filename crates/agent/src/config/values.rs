//! The value forms of the config file: durations (`"30s"`, humantime), sizes (`"64MiB"`),
//! percentages (`"5%"`), regexes (compiled while parsing), a writeback threshold (bytes or a
//! share of the kernel's background threshold) and `enabled = true | false | "auto"`.
//!
//! These only parse: whether a value is in range for its key is `bounds.rs`'s business, so that
//! one table says every key's range.

use std::time::Duration;

use regex::Regex;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use stallwatch_cloud::config::Enabled;
use stallwatch_collector::sample::host::Threshold;

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

/// A size like `"1MiB"`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SizeSpec(pub u64);

impl<'de> Deserialize<'de> for SizeSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_size(&s).map(SizeSpec).map_err(de::Error::custom)
    }
}

/// `"5%"` → 0.05. Any finite percentage parses; the key's range is checked in `bounds.rs`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PercentSpec(pub f64);

impl<'de> Deserialize<'de> for PercentSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let v: f64 = s
            .trim()
            .strip_suffix('%')
            .and_then(|p| p.trim().parse().ok())
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| {
                de::Error::custom(format!("expected a percentage like \"5%\", got {s:?}"))
            })?;
        Ok(PercentSpec(v / 100.0))
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

/// `burst_threshold`: bytes (`"64MiB"`) or a share of the dirty background threshold (`"25%"`).
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
                    "percentage {s:?} out of range (0%, 1000%]"
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
    if !v.is_finite() || v < 0.0 || v >= u64::MAX as f64 {
        return Err(format!("invalid size {s:?}: out of range"));
    }
    Ok(v as u64)
}

/// A duration like `"30s"` or `"500ms"` (humantime). Zero and huge values parse; `bounds.rs`
/// rejects them with the key's range.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        de::Error::custom(format!(
            "invalid duration {s:?}: {e} (e.g. \"1s\", \"500ms\")"
        ))
    })
}
