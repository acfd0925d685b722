//! One pass over the containers: detect the cgroup layout, discover the container cgroups
//! ([`crate::cgroup::discover`]), read each one's counters ([`crate::cgroup::read_stats`]), the
//! interfaces of its network namespace through a member process (`/proc/<pid>/net/dev`, the
//! namespace's inode from `/proc/<pid>/ns/net`: [`crate::proc::net_dev`]) and its name from
//! the runtime's state ([`crate::cgroup::names`]). Bounded: at most `max_containers` are read
//! (in path order, so the same ones each time); the others are counted. [`PassState`] says
//! what a pass reads every time and what it keeps from the previous ones.

use std::collections::{HashMap, HashSet};

use crate::cgroup::discover::{self, DEFAULT_MAX_DEPTH, DEFAULT_MAX_DIRS};
use crate::cgroup::files::Files;
use crate::cgroup::names::Names;
use crate::cgroup::{read_stats_with, ContainerStats, Identity, IoLimit, Runtime, Want};
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
    pass_named(roots, max_containers, None, None, &mut PassState::default())
}

/// What a pass keeps for the next: container names, and per container what cannot change
/// from one pass to the next (or, for settings, rarely does).
///
/// What is read every pass and what is not (all of it is exported; docs/metrics.md):
/// - Every pass: the counters and levels (cpu, memory usage and stat, OOM kills, blkio/io
///   counters, pids, PSI), a member pid, and the interfaces of its network namespace.
/// - Settings, every [`REFRESH_EVERY`]th pass of a container (its first pass included, and
///   every pass until it has a process: runc writes the limits before it starts the
///   container's process, so a pass that met the cgroup first could have read them unset):
///   `memory.limit_in_bytes`/`memory.max` and the four `blkio.throttle.*_device`/`io.max`.
///   They change only when someone changes them (`docker update`), and nothing can tell us
///   when: a write to a cgroup file moves neither the directory's nor (without `O_TRUNC`,
///   which runc does not use) the file's mtime, measured on this kernel. So a changed limit
///   is seen within `REFRESH_EVERY` passes (a minute at the 10 s default), and the five
///   files are read for a sixth of the containers per pass (spread over the passes by id,
///   not all at once).
/// - The network namespace of the member pid: resolved again only when the pid changed (or
///   on the settings schedule); a pid still first in the container's `cgroup.procs` is the
///   same process, or one that took its number inside the same container. Its `net/dev` is
///   not read for the host's namespace nor for one already read in this pass, and read only
///   at the container's turn once it has had nothing but `lo` for [`LO_READS`] passes.
/// - The member pid (`cgroup.procs`) only when its namespace may be read this pass: not
///   between turns for a container whose namespace, as last resolved, is the host's, one an
///   earlier container of this pass read (a pod's containers share the sandbox's), or one
///   with only `lo`. A new member in another namespace is then found at the turn.
/// - The OOM kill count (`memory.oom_control`/`memory.events`): at the container's first pass
///   and turn, and whenever the host's `oom_kill` in `/proc/vmstat` moved since the last pass
///   (read once per pass): a container's count cannot move without it.
/// - Names: docker's cached per id, containers/storage's re-parsed when the file changes.
#[derive(Debug, Default)]
pub struct PassState {
    pub(crate) names: Names,
    files: Files,
    known: HashMap<String, Known>,
    passes: u64,
    /// The host's `oom_kill` (vmstat) at the last pass.
    oom_kill: Option<u64>,
}

/// Settings are read again every this many passes of a container.
pub const REFRESH_EVERY: u64 = 6;

/// A network namespace found with only `lo` this many passes in a row is read again only at
/// its container's turn (every [`REFRESH_EVERY`]th pass) or when the member pid changes.
const LO_READS: u8 = 3;

#[derive(Debug, Default)]
struct Known {
    /// Memory limit and I/O limits as last read.
    settings: Option<(Option<u64>, Option<Vec<IoLimit>>)>,
    /// (member pid, its network namespace's inode) as last resolved.
    netns: Option<(u32, u64)>,
    /// Reads in a row of the namespace that found no interface but `lo`.
    lo_reads: u8,
    /// The OOM kill count as last read (`None`: not read yet).
    oom: Option<Option<u64>>,
    /// The pass that last met this container.
    pass: u64,
}

/// [`pass`], plus container names from the runtimes' state (cached in `state`): docker's under
/// `docker_root`, CRI-O's and podman's under `storage_root` (`None`: their default places
/// under `roots.rootfs`).
pub fn pass_named(
    roots: &Roots,
    max_containers: usize,
    docker_root: Option<&std::path::Path>,
    storage_root: Option<&std::path::Path>,
    state: &mut PassState,
) -> Pass {
    let default_root = roots.root("var/lib/docker");
    let docker_root = docker_root.unwrap_or(&default_root);
    let default_storage = roots.root("var/lib/containers/storage");
    let storage_root = storage_root.unwrap_or(&default_storage);
    state.names.begin_pass();
    state.files.begin_pass();
    state.passes += 1;
    let this = state.passes;
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
    // Every OOM kill counts in the host's `oom_kill` (vmstat) as it counts in the victim's
    // memory cgroup and its ancestors (mm/oom_kill.c, `__oom_kill_process`): while the host's
    // count stands still no container's can move, and their files are not read.
    let oom_now = crate::proc::vmstat::read(roots)
        .ok()
        .flatten()
        .and_then(|v| v.oom_kill);
    let oom_moved = oom_now.is_none() || oom_now != state.oom_kill;
    state.oom_kill = oom_now;
    let mut rows = Vec::with_capacity(d.found.len().min(max_containers));
    for f in d.found.into_iter().take(max_containers) {
        let id = &f.identity.container_id;
        let known = state.known.entry(id.clone()).or_default();
        known.pass = this;
        // Spread over the passes: each container's turn comes at its own pass.
        let turn = (this + stagger(id)) % REFRESH_EVERY == 0;
        let refresh = turn || known.settings.is_none();
        let oom = refresh || oom_moved || known.oom.is_none();
        // What `net/dev` decision the namespace as last resolved leads to, without the pid.
        let procs = refresh
            || known.netns.is_none_or(|(_, inode)| {
                inode != 0
                    && Some(inode) != host_netns
                    && !seen_netns.contains(&inode)
                    && known.lo_reads < LO_READS
            });
        let want = Want {
            settings: refresh,
            oom,
            procs,
            cpuacct: true,
        };
        let mut stats = read_stats_with(&layout, &f.path, want, &mut state.files);
        if !procs {
            // As last read: it leads to the same decision below, without a read.
            stats.first_pid = known.netns.map(|(pid, _)| pid);
        }
        if oom {
            known.oom = Some(stats.memory.oom_kills);
        } else if let Some(n) = known.oom {
            stats.memory.oom_kills = n;
        }
        if refresh {
            let settled = stats.first_pid.is_some() && stats.errors.is_empty();
            known.settings = settled.then(|| (stats.memory.limit_bytes, stats.io_limits.clone()));
        } else if let Some((limit, io)) = &known.settings {
            stats.memory.limit_bytes = *limit;
            stats.io_limits = io.clone();
        }
        let network = stats.first_pid.and_then(|pid| {
            let inode = match known.netns {
                Some((p, inode)) if p == pid && !turn => inode,
                _ => {
                    if known.netns.is_none_or(|(p, _)| p != pid) {
                        known.lo_reads = 0;
                    }
                    net_dev::netns_inode(roots, &pid.to_string())
                        .ok()
                        .flatten()?
                }
            };
            known.netns = Some((pid, inode));
            // Decided before reading, not after: the host's namespace (a `--network host`
            // container: on a Kubernetes node that file lists every pod's veth) and one an
            // earlier container of this pass reported (a pod's containers share one) are not
            // read at all.
            if inode == 0 || Some(inode) == host_netns || !seen_netns.insert(inode) {
                return None;
            }
            // A namespace with only `lo` has nothing exported (`lo` is skipped). After
            // LO_READS such reads in a row (a pod sandbox gets its interface from the CNI
            // plugin within seconds of being made; `--network none` never does) it is read
            // only at the container's turn or with a new member: an interface added later
            // shows within REFRESH_EVERY passes.
            if known.lo_reads >= LO_READS && !turn {
                return Some(Vec::new());
            }
            let devs = state.files.read_path(
                &roots.proc(&format!("{pid}/net/dev")),
                net_dev::parse,
                &mut Vec::new(),
            );
            let lo_only = devs
                .as_ref()
                .is_some_and(|d| d.iter().all(|i| i.name == "lo"));
            known.lo_reads = if lo_only {
                known.lo_reads.saturating_add(1)
            } else {
                0
            };
            if devs.is_none() {
                known.netns = None;
            }
            devs
        });
        let name = match f.identity.runtime {
            Runtime::Docker => state.names.docker(docker_root, id),
            Runtime::Crio | Runtime::Podman => state.names.storage(storage_root, id),
            _ => None,
        };
        rows.push(ContainerRow {
            stats,
            identity: f.identity,
            path: f.path,
            network,
            name,
        });
    }
    state.known.retain(|_, k| k.pass == this);
    Pass {
        rows,
        ids,
        dropped,
        truncated: d.truncated,
        no_hierarchy: layout.reference().is_none(),
    }
}

/// A container's place in the settings schedule, from its id (hex: any byte will do).
fn stagger(id: &str) -> u64 {
    id.bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
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
mod tests;
