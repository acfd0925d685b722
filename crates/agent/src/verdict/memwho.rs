//! Who the `memory` cause names: the containers at their memory limit. A container whose
//! usage reaches its hard limit (v1 `memory.limit_in_bytes`, v2 `memory.max`) reclaims its
//! own page cache and refaults it, and its tasks stall on memory while the node has memory to
//! spare: the node-wide PSI says "memory", these say whose.
//!
//! A full limit alone is not a stall (on v1 a container's page cache fills it to its limit
//! harmlessly), so a container whose own PSI is known (cgroup v2, or the unified tree of a
//! hybrid host) and shows no memory stall in its last 10 s is left out. On pure v1 there is no
//! per-container PSI, and every container at its limit is named while the node stalls.

use super::{Evidence, Who, WhoContainer};
use crate::node::Node;

/// Below this `memory.pressure` some avg10 a container is not stalling on memory (the
/// kernel prints two decimals of a percent: 0.00 is "none in 10 s").
const NO_STALL: f64 = 0.0001;

/// Containers at `share` or more of their memory limit, fullest first (at most 5), with one
/// evidence item each: `container_memory_usage`, usage / limit against `share`.
pub fn at_limit(node: &Node, share: f64) -> Vec<(WhoContainer, Evidence)> {
    let mut out: Vec<(f64, WhoContainer, Evidence)> = Vec::new();
    for row in node.view.containers.containers.iter() {
        let m = &row.stats.memory;
        let (Some(usage), Some(limit)) = (m.usage_bytes, m.limit_bytes) else {
            continue;
        };
        if limit == 0 {
            continue;
        }
        let ratio = usage as f64 / limit as f64;
        let psi = row.stats.pressure[2].and_then(|p| p.some).map(|s| s.avg10);
        if ratio < share || psi.is_some_and(|p| p < NO_STALL) {
            continue;
        }
        let id = &row.identity.container_id;
        let name = row.name.clone();
        let shown = name
            .clone()
            .unwrap_or_else(|| id.chars().take(12).collect());
        out.push((
            ratio,
            WhoContainer {
                id: id.clone(),
                name,
                runtime: row.identity.runtime.as_str(),
                d_threads: node.view.dstate_threads_of(id),
            },
            Evidence {
                signal: "container_memory_usage",
                subject: Some(format!("{shown}: {} of {} MiB", usage >> 20, limit >> 20)),
                value: ratio,
                threshold: share,
                unit: "ratio",
            },
        ));
    }
    out.sort_by(|a, b| b.0.total_cmp(&a.0));
    out.truncate(5);
    out.into_iter().map(|(_, w, e)| (w, e)).collect()
}

/// The `memory` cause's who: the containers [at their limit](at_limit), each with its
/// evidence item, also named at the end of the summary.
pub fn who(node: &Node, share: f64, summary: &mut String, evidence: &mut Vec<Evidence>) -> Who {
    let full = at_limit(node, share);
    if !full.is_empty() {
        let names: Vec<&str> = full
            .iter()
            .filter_map(|(_, e)| e.subject.as_deref())
            .collect();
        summary.push_str(&format!("; at their memory limit: {}", names.join(", ")));
    }
    let (containers, items): (Vec<_>, Vec<_>) = full.into_iter().unzip();
    evidence.extend(items);
    Who {
        containers,
        ..Who::default()
    }
}
