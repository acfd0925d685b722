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
use crate::cgroup::{read_stats_with, ContainerStats, Identity, IoLimit, Runtime};
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
///   same process, or one that took its number inside the same container.
/// - Names: docker's cached per id, containers/storage's re-parsed when the file changes.
#[derive(Debug, Default)]
pub struct PassState {
    pub(crate) names: Names,
    files: Files,
    known: HashMap<String, Known>,
    passes: u64,
}

/// Settings are read again every this many passes of a container.
pub const REFRESH_EVERY: u64 = 6;

#[derive(Debug, Default)]
struct Known {
    /// Memory limit and I/O limits as last read.
    settings: Option<(Option<u64>, Option<Vec<IoLimit>>)>,
    /// (member pid, its network namespace's inode) as last resolved.
    netns: Option<(u32, u64)>,
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
    let mut rows = Vec::with_capacity(d.found.len().min(max_containers));
    for f in d.found.into_iter().take(max_containers) {
        let id = &f.identity.container_id;
        let known = state.known.entry(id.clone()).or_default();
        known.pass = this;
        // Spread over the passes: each container's turn comes at its own pass.
        let turn = (this + stagger(id)) % REFRESH_EVERY == 0;
        let refresh = turn || known.settings.is_none();
        let mut stats = read_stats_with(&layout, &f.path, refresh, &mut state.files);
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
                _ => net_dev::netns_inode(roots, &pid.to_string())
                    .ok()
                    .flatten()?,
            };
            let devs = state.files.read_path(
                &roots.proc(&format!("{pid}/net/dev")),
                net_dev::parse,
                &mut Vec::new(),
            );
            known.netns = devs.as_ref().map(|_| (pid, inode));
            devs.filter(|_| inode != 0 && Some(inode) != host_netns && seen_netns.insert(inode))
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

    fn write(p: &std::path::Path, text: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn netns(proc_root: &std::path::Path, pid: u32, inode: u64) {
        let l = proc_root.join(format!("{pid}/ns/net"));
        std::fs::create_dir_all(l.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&l);
        std::os::unix::fs::symlink(format!("net:[{inode}]"), l).unwrap();
    }

    /// A cgroup v1 tree with one docker container whose process (pid 4242) has its own
    /// network namespace, in a procfs fixture where init's namespace is another.
    fn v1_fixture(t: &std::path::Path) -> (Roots, impl Fn(&str) -> std::path::PathBuf) {
        let cg = t.join("cg");
        for c in ["cpu", "cpuacct", "memory", "blkio", "pids"] {
            write(&cg.join(c).join("cgroup.procs"), "");
        }
        let proc_root = t.join("proc");
        netns(&proc_root, 1, 4026531840);
        netns(&proc_root, 4242, 4026532001);
        write(
            &proc_root.join("4242/net/dev"),
            "Inter-| Receive | Transmit\n face |bytes packets|bytes packets\n\
             eth0: 1520 12 0 1 0 0 0 0 980 9 0 0 0 0 0 0\n",
        );
        let dir = move |c: &str| cg.join(c).join(format!("docker/{ID}"));
        write(&dir("memory").join("memory.usage_in_bytes"), "4096\n");
        write(&dir("memory").join("memory.limit_in_bytes"), "536870912\n");
        write(&dir("memory").join("cgroup.procs"), "4242\n");
        for (f, v) in [("read_bps", ""), ("write_bps", ""), ("read_iops", "")] {
            write(&dir("blkio").join(format!("blkio.throttle.{f}_device")), v);
        }
        write(
            &dir("blkio").join("blkio.throttle.write_iops_device"),
            "7:0 300\n",
        );
        let roots = Roots {
            cgroupfs: t.join("cg"),
            procfs: proc_root,
            rootfs: t.to_path_buf(),
            ..Roots::default()
        };
        (roots, dir)
    }

    /// (memory usage, memory limit, write IOPS limit, has network) of the one container.
    fn seen(p: &Pass) -> (Option<u64>, Option<u64>, Option<u64>, bool) {
        let r = &p.rows[0];
        let io = r
            .stats
            .io_limits
            .as_ref()
            .and_then(|l| l.first()?.write_iops);
        let m = &r.stats.memory;
        (m.usage_bytes, m.limit_bytes, io, r.network.is_some())
    }

    /// Counters are read every pass; the settings at a container's first pass and then at its
    /// turn, every `REFRESH_EVERY` passes (five files fewer in the passes between); the
    /// network namespace is resolved again only when the member pid changed or at the turn.
    #[test]
    fn settings_and_netns_are_read_again_only_at_the_containers_turn() {
        let t = tempfile::tempdir().unwrap();
        let (roots, dir) = v1_fixture(t.path());
        let mut st = PassState::default();
        let reads = |st: &PassState| st.files.reads;
        let p = pass_named(&roots, 10, None, None, &mut st);
        assert_eq!(seen(&p), (Some(4096), Some(512 << 20), Some(300), true));
        assert!(
            p.rows[0].stats.errors.is_empty(),
            "{:?}",
            p.rows[0].stats.errors
        );
        let first = reads(&st);

        // A new limit, a new usage, and the process moved to init's network namespace.
        write(&dir("memory").join("memory.limit_in_bytes"), "1073741824\n");
        write(
            &dir("blkio").join("blkio.throttle.write_iops_device"),
            "7:0 100\n",
        );
        write(&dir("memory").join("memory.usage_in_bytes"), "8192\n");
        netns(&roots.procfs, 4242, 4026531840);
        let turn = (2..2 + REFRESH_EVERY)
            .find(|n| (n + stagger(ID)) % REFRESH_EVERY == 0)
            .unwrap();
        let mut before = reads(&st);
        for n in 2..2 + REFRESH_EVERY {
            let p = pass_named(&roots, 10, None, None, &mut st);
            let (read, b) = (reads(&st) - before, before);
            before = reads(&st);
            if n == turn {
                assert_eq!(
                    seen(&p),
                    (Some(8192), Some(1 << 30), Some(100), false),
                    "pass {n}"
                );
                assert_eq!(read, first, "pass {n}: every file, as at the first");
            } else if n < turn {
                assert_eq!(
                    seen(&p),
                    (Some(8192), Some(512 << 20), Some(300), true),
                    "pass {n}"
                );
                assert_eq!(read + 5, first, "pass {n}: no settings read ({b})");
            } else {
                assert_eq!(
                    seen(&p),
                    (Some(8192), Some(1 << 30), Some(100), false),
                    "pass {n}"
                );
            }
        }

        // Another member pid: its namespace is resolved at the next pass.
        netns(&roots.procfs, 4243, 4026532002);
        write(
            &roots.procfs.join("4243/net/dev"),
            "h\nh\neth1: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n",
        );
        write(&dir("memory").join("cgroup.procs"), "4243\n");
        let p = pass_named(&roots, 10, None, None, &mut st);
        let net = p.rows[0].network.as_deref().unwrap();
        assert_eq!(net[0].name, "eth1");
    }

    /// A container without a process yet (runc writes its limits before it starts it) has
    /// its settings read at every pass until it has one.
    #[test]
    fn settings_are_read_every_pass_until_the_container_has_a_process() {
        let t = tempfile::tempdir().unwrap();
        let (roots, dir) = v1_fixture(t.path());
        write(&dir("memory").join("cgroup.procs"), "");
        write(
            &dir("memory").join("memory.limit_in_bytes"),
            "9223372036854771712\n",
        );
        let mut st = PassState::default();
        assert_eq!(seen(&pass_named(&roots, 10, None, None, &mut st)).1, None);
        write(&dir("memory").join("memory.limit_in_bytes"), "536870912\n");
        let not_turn = (2..4)
            .find(|n| (n + stagger(ID)) % REFRESH_EVERY != 0)
            .unwrap();
        for _ in 2..=not_turn {
            pass_named(&roots, 10, None, None, &mut st);
        }
        let p = pass_named(&roots, 10, None, None, &mut st);
        assert_eq!(seen(&p).1, Some(512 << 20), "read although not its turn");
        // Gone from the tree, forgotten by the state.
        std::fs::remove_dir_all(t.path().join("cg/memory/docker")).unwrap();
        let p = pass_named(&roots, 10, None, None, &mut st);
        assert!(p.rows.is_empty());
        assert!(st.known.is_empty());
    }
}
