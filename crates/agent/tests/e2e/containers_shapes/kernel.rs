//! What the kernel's own files say, and what the agent's scrape says, per container.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::rig::BURN_SECONDS;
use crate::harness::Metrics;

/// The perl workload: allocate and touch `anon_mib` MiB, write `dirty_mib` MiB to `file`
/// (buffered), burn [`BURN_SECONDS`] of user CPU, then sleep without waking.
pub(super) fn workload(anon_mib: u64, file: Option<&Path>, dirty_mib: u64) -> String {
    let f = file.map_or(String::new(), |p| p.display().to_string());
    format!(
        "exec perl -e 'my $x = \"a\" x ({anon_mib} * 1048576); \
         if (length \"{f}\") {{ open(my $f, \">\", \"{f}\") or die; print $f (\"b\" x 1048576) for 1..{dirty_mib}; close $f or die; }} \
         my $end = (times)[0] + {BURN_SECONDS}; while ((times)[0] < $end) {{ for (my $i = 0; $i < 200000; $i++) {{}} }} sleep 600'"
    )
}

pub(super) fn read(path: impl AsRef<Path>) -> String {
    let p = path.as_ref();
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

pub(super) fn read_u64(path: impl AsRef<Path>) -> u64 {
    let p = path.as_ref();
    read(p)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A `key value` file.
pub(super) fn keyed(path: impl AsRef<Path>) -> BTreeMap<String, u64> {
    read(path)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// `some avg10=… total=N` lines of a pressure file: kind → (avg10, total µs).
pub(super) fn pressure(path: impl AsRef<Path>) -> BTreeMap<String, (f64, u64)> {
    read(path)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let kind = it.next()?.to_string();
            let (mut avg10, mut total) = (None, None);
            for kv in it {
                match kv.split_once('=')? {
                    ("avg10", v) => avg10 = v.parse::<f64>().ok(),
                    ("total", v) => total = v.parse::<u64>().ok(),
                    _ => {}
                }
            }
            Some((kind, (avg10?, total?)))
        })
        .collect()
}

pub(super) fn user_hz() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as f64
    } else {
        100.0
    }
}

/// Every series of the container with this id: `family{labels}` → value, the family without
/// the `stallwatch_container_` prefix and extra labels kept in the key.
pub(super) fn series_of(m: &Metrics, id: &str) -> BTreeMap<String, f64> {
    let needle = format!("container_id=\"{id}\"");
    m.series
        .iter()
        .filter(|(k, _)| k.contains(&needle))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

pub(super) fn families_of(m: &Metrics, id: &str) -> BTreeSet<String> {
    series_of(m, id)
        .keys()
        .map(|k| {
            k.split('{')
                .next()
                .unwrap()
                .trim_start_matches("stallwatch_container_")
                .to_string()
        })
        .collect()
}
