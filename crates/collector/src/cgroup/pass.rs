//! One pass over the containers: detect the cgroup layout, discover the container cgroups
//! ([`crate::cgroup::discover`]), read each one's counters ([`crate::cgroup::read_stats`]), the
//! interfaces of its network namespace through a member process
//! ([`crate::proc::net_dev::read_for_pid`]) and its name from the runtime's state
//! ([`crate::cgroup::names`]). Bounded: at most `max_containers` are read (in path order, so the
//! same ones each time); the others are counted.

use std::collections::HashSet;

use crate::cgroup::discover::{self, DEFAULT_MAX_DEPTH, DEFAULT_MAX_DIRS};
use crate::cgroup::names::Names;
use crate::cgroup::{read_stats, ContainerStats, Identity, Runtime};
use crate::proc::net_dev::{self, NetDev};
use crate::roots::Roots;

/// One container as published.
#[derive(Debug, Clone)]
pub struct ContainerRow {
    pub identity: Identity,
    /// Cgroup path relative to the hierarchy roots, e.g. `/docker/<id>`.
    pub path: String,
    pub stats: ContainerStats,
    /// Interfaces of the container's network namespace, read through a member process; `None`
    /// when no member could be read, or when an earlier container of this pass already
    /// reported the same namespace (a pod's containers share one: counted once).
    pub network: Option<Vec<NetDev>>,
    /// The name the runtime gave the container (docker's `--name`), when its state on the host
    /// says so. Chosen by whoever starts the container, not by what runs inside it.
    pub name: Option<String>,
}

/// What one pass of the worker found.
#[derive(Debug, Clone, Default)]
pub struct Pass {
    pub rows: Vec<ContainerRow>,
    /// Every container id discovered (read or dropped).
    pub ids: Vec<String>,
    pub dropped: usize,
    pub truncated: bool,
    /// No cgroup hierarchy to walk (no cgroupfs under the root).
    pub no_hierarchy: bool,
}

/// One pass: detect the layout, discover, read up to `max_containers`.
pub fn pass(roots: &Roots, max_containers: usize) -> Pass {
    pass_named(roots, max_containers, None, None, &mut Names::default())
}

/// [`pass`], plus container names from the runtimes' state (cached in `names`): docker's under
/// `docker_root`, CRI-O's and podman's under `storage_root` (`None`: their default places
/// under `roots.rootfs`).
pub fn pass_named(
    roots: &Roots,
    max_containers: usize,
    docker_root: Option<&std::path::Path>,
    storage_root: Option<&std::path::Path>,
    names: &mut Names,
) -> Pass {
    let default_root = roots.root("var/lib/docker");
    let docker_root = docker_root.unwrap_or(&default_root);
    let default_storage = roots.root("var/lib/containers/storage");
    let storage_root = storage_root.unwrap_or(&default_storage);
    names.begin_pass();
    let layout = discover::detect(roots);
    let d = discover::discover_bounded(&layout, DEFAULT_MAX_DEPTH, DEFAULT_MAX_DIRS);
    let ids = d
        .found
        .iter()
        .map(|f| f.identity.container_id.clone())
        .collect();
    let dropped = d.found.len().saturating_sub(max_containers);
    let mut seen_netns: HashSet<u64> = HashSet::new();
    // The host's (init's) namespace: `--network host` containers are not the container's to
    // report. Read once per pass, not once per container.
    let host_netns = host_netns(roots);
    let rows = d
        .found
        .into_iter()
        .take(max_containers)
        .map(|f| {
            let stats = read_stats(&layout, &f.path);
            let network = stats
                .first_pid
                .and_then(|pid| net_dev::read_for_pid(roots, pid).ok().flatten())
                .filter(|(inode, _)| {
                    *inode != 0 && Some(*inode) != host_netns && seen_netns.insert(*inode)
                })
                .map(|(_, devs)| devs);
            let name = match f.identity.runtime {
                Runtime::Docker => names.docker(docker_root, &f.identity.container_id),
                Runtime::Crio | Runtime::Podman => {
                    names.storage(storage_root, &f.identity.container_id)
                }
                _ => None,
            };
            ContainerRow {
                stats,
                identity: f.identity,
                path: f.path,
                network,
                name,
            }
        })
        .collect();
    Pass {
        rows,
        ids,
        dropped,
        truncated: d.truncated,
        no_hierarchy: layout.reference().is_none(),
    }
}

/// The host's network namespace: PID 1's. Reading PID 1's `ns/net` link needs ptrace access to
/// it, which a hardened host or a sandbox can refuse even to root (`EACCES`, measured on this
/// machine); then the agent's own namespace is the best guess, as the agent runs with the
/// host's network. Without either, every host-network container would report the host's
/// interfaces as its own.
fn host_netns(roots: &Roots) -> Option<u64> {
    match net_dev::netns_inode(roots, "1") {
        Ok(Some(i)) => Some(i),
        _ => net_dev::netns_inode(roots, "self").ok().flatten(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pure-v2 fixture has two containers: a cap of one reads one and drops one, and the
    /// ids of both are still known (for start/stop accounting).
    #[test]
    fn cap_reads_at_most_max_containers_and_counts_the_rest() {
        let base = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/v2-nopsi-5.4"
        ));
        let roots = Roots {
            procfs: base.join("proc"),
            sysfs: base.join("sys"),
            cgroupfs: base.join("sys/fs/cgroup"),
            rootfs: base.to_path_buf(),
        };
        let all = pass(&roots, 1000);
        assert_eq!(all.rows.len(), 2);
        let capped = pass(&roots, 1);
        assert_eq!(
            (capped.rows.len(), capped.dropped, capped.ids.len()),
            (1, 1, 2)
        );
    }

    const ID: &str = "3f2a9c1b7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b";

    #[test]
    fn pass_over_a_pure_v2_fixture_caps_and_counts_dropped() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::write(r.join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
        for i in 0..3 {
            let d = r.join(format!("system.slice/docker-{}{i}.scope", &ID[..63]));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("pids.current"), format!("{}\n", i + 1)).unwrap();
        }
        let roots = Roots {
            cgroupfs: r.to_path_buf(),
            ..Roots::default()
        };
        let p = pass(&roots, 2);
        assert_eq!(p.ids.len(), 3);
        assert_eq!(p.dropped, 1);
        assert_eq!(p.rows.len(), 2);
        assert_eq!(p.rows[0].stats.pids, Some(1));
        assert_eq!(p.rows[1].stats.pids, Some(2));
        assert!(!p.no_hierarchy);
        let empty = tempfile::tempdir().unwrap();
        assert!(
            pass(
                &Roots {
                    cgroupfs: empty.path().to_path_buf(),
                    ..Roots::default()
                },
                10
            )
            .no_hierarchy
        );
    }
}
