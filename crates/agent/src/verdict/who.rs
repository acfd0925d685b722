//! Who waits: the threads in D of the last walk, by group (with their wait channels) and by
//! container, for a cause's "who"; and the devices and containers it names.

use std::collections::BTreeMap;

use stallwatch_collector::sample::dstate::DThread;

use super::tick::DiskTick;
use super::{WchanCount, Who, WhoContainer, WhoDevice, WhoGroup};
use crate::node::Node;

pub fn who_device(d: &DiskTick) -> WhoDevice {
    WhoDevice {
        name: d.name.clone(),
        major: d.major,
        minor: d.minor,
        volume_id: d.volume_id.clone(),
    }
}

/// Who is in D at the last walk, by group (most threads first) and container, keeping the
/// threads `keep` selects.
pub fn who_waits(node: &Node, keep: impl Fn(&DThread) -> bool) -> Who {
    let mut groups: BTreeMap<&str, (u64, BTreeMap<&str, u64>)> = BTreeMap::new();
    let mut containers: BTreeMap<&str, u64> = BTreeMap::new();
    for d in node.view.threads.stuck.iter().filter(|d| keep(d)) {
        let g = groups.entry(&d.group).or_default();
        g.0 += 1;
        *g.1.entry(d.wchan.as_deref().unwrap_or("?")).or_default() += 1;
        if let Some(c) = &d.container {
            *containers.entry(&c.container_id).or_default() += 1;
        }
    }
    let mut groups: Vec<WhoGroup> = groups
        .into_iter()
        .map(|(g, (n, w))| {
            let mut wchans: Vec<WchanCount> = w
                .into_iter()
                .map(|(w, n)| WchanCount {
                    wchan: w.to_string(),
                    threads: n,
                })
                .collect();
            wchans.sort_by_key(|w| std::cmp::Reverse(w.threads));
            wchans.truncate(5);
            WhoGroup {
                group: g.to_string(),
                d_threads: n,
                wchans,
            }
        })
        .collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.d_threads));
    groups.truncate(5);
    let mut containers: Vec<WhoContainer> = containers
        .into_iter()
        .map(|(id, n)| container(node, id, n))
        .collect();
    containers.sort_by_key(|c| std::cmp::Reverse(c.d_threads));
    containers.truncate(5);
    Who {
        devices: Vec::new(),
        containers,
        groups,
    }
}

pub fn container(node: &Node, id: &str, d_threads: u64) -> WhoContainer {
    let row = node.view.container(id);
    WhoContainer {
        id: id.to_string(),
        name: row.and_then(|r| r.name.clone()),
        runtime: row.map_or("unknown", |r| r.identity.runtime.as_str()),
        d_threads,
    }
}

pub fn names(g: &[WhoGroup]) -> String {
    let v: Vec<String> = g
        .iter()
        .take(3)
        .map(|g| match g.wchans.first() {
            Some(w) => format!("{} ×{} in {}", g.group, g.d_threads, w.wchan),
            None => format!("{} ×{}", g.group, g.d_threads),
        })
        .collect();
    v.join(", ")
}
