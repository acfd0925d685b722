//! Where the cgroup hierarchies are mounted ([`detect`]) and which cgroups are containers
//! ([`discover`]).
//!
//! Three layouts exist (this machine is hybrid):
//! ```text
//! pure v2   /sys/fs/cgroup/cgroup.controllers                   every controller in one tree
//! hybrid    /sys/fs/cgroup/unified/cgroup.controllers           v2 for PSI and cpu.stat only,
//!           /sys/fs/cgroup/{cpu,cpuacct,memory,blkio,pids,…}    v1 for the real controllers
//! v1        /sys/fs/cgroup/{cpu,cpuacct,memory,…}               `cpu,cpuacct` combined mounts
//!                                                               come with `cpu -> cpu,cpuacct`
//!                                                               symlinks (or not: we match
//!                                                               comma lists ourselves)
//! ```
//!
//! Discovery costs `read_dir` calls only, no file reads, on one reference hierarchy (every
//! container has a cgroup in each, so one is enough), and only descends into directories whose
//! names can lead to a container (`docker`, `kubepods*`, `*.slice`, pod and QoS dirs, …). It
//! stops at a container (a docker-in-docker's own containers are not ours to show) and is
//! bounded in depth and in directories visited, so a pathological tree (a CI job creating
//! 100k cgroups) costs a bounded walk, not an unbounded one.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use crate::cgroup::identity::{identify, Identity};
use crate::roots::Roots;

/// The v1 controllers the container view reads.
pub const V1_CONTROLLERS: [&str; 5] = ["cpu", "cpuacct", "memory", "blkio", "pids"];

/// How the cgroup hierarchies are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v1 only. `controllers`: controller name (`cpu`, `cpuacct`, `memory`, `blkio`,
    /// `pids`) → its hierarchy's mount dir (a combined `cpu,cpuacct` mount appears under both
    /// names).
    V1 {
        controllers: BTreeMap<String, PathBuf>,
    },
    /// cgroup v2 only, mounted at `root`.
    V2 { root: PathBuf },
    /// v1 controllers plus a v2 tree at `unified` (systemd's hybrid mode).
    Hybrid {
        controllers: BTreeMap<String, PathBuf>,
        unified: PathBuf,
    },
}

impl Layout {
    /// The mount dir of a v1 controller; `None` on pure v2 or when not mounted.
    pub fn v1(&self, controller: &str) -> Option<&Path> {
        match self {
            Layout::V1 { controllers } | Layout::Hybrid { controllers, .. } => {
                controllers.get(controller).map(PathBuf::as_path)
            }
            Layout::V2 { .. } => None,
        }
    }

    /// The v2 tree: the root on pure v2, `unified` on hybrid.
    pub fn v2(&self) -> Option<&Path> {
        match self {
            Layout::V2 { root } => Some(root),
            Layout::Hybrid { unified, .. } => Some(unified),
            Layout::V1 { .. } => None,
        }
    }

    /// The hierarchy discovery walks: v2 on pure v2; on v1 and hybrid the `memory` hierarchy,
    /// falling back to cpu, cpuacct, pids (and on hybrid finally the unified tree).
    pub fn reference(&self) -> Option<&Path> {
        match self {
            Layout::V2 { root } => Some(root),
            _ => ["memory", "cpu", "cpuacct", "pids"]
                .iter()
                .find_map(|c| self.v1(c))
                .or_else(|| self.v2()),
        }
    }
}

/// Detects the layout under `roots.cgroupfs` (a few `stat`s and one `read_dir`).
pub fn detect(roots: &Roots) -> Layout {
    let root = &roots.cgroupfs;
    if root.join("cgroup.controllers").exists() {
        return Layout::V2 { root: root.clone() };
    }
    let controllers = v1_controllers(root);
    let unified = root.join("unified");
    if unified.join("cgroup.controllers").exists() {
        return Layout::Hybrid {
            controllers,
            unified,
        };
    }
    Layout::V1 { controllers }
}

/// A directory is a mounted hierarchy when it has `cgroup.procs` (a bare dir on the tmpfs
/// does not).
fn is_hierarchy(dir: &Path) -> bool {
    dir.join("cgroup.procs").exists()
}

fn v1_controllers(root: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    // Mount dirs named by comma lists (`cpu,cpuacct`, `net_cls,net_prio`), for hosts without
    // the convenience symlinks.
    let combined: Vec<(String, PathBuf)> = std::fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
                .filter(|(n, _)| n.contains(','))
                .collect()
        })
        .unwrap_or_default();
    for c in V1_CONTROLLERS {
        let exact = root.join(c);
        let dir = if is_hierarchy(&exact) {
            Some(exact)
        } else {
            combined
                .iter()
                .find(|(n, p)| n.split(',').any(|x| x == c) && is_hierarchy(p))
                .map(|(_, p)| p.clone())
        };
        if let Some(d) = dir {
            out.insert(c.to_string(), d);
        }
    }
    out
}

/// A container cgroup found by discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Relative to the hierarchy root, with a leading `/`: `/docker/<id>`.
    pub path: String,
    pub identity: Identity,
}

/// The result of a bounded walk.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    /// Sorted by path.
    pub found: Vec<Found>,
    /// Directories listed.
    pub visited: usize,
    /// The walk hit `max_dirs` and stopped early.
    pub truncated: bool,
}

/// Default depth bound: the kubelet's systemd layout puts containers at depth 4.
pub const DEFAULT_MAX_DEPTH: usize = 6;
/// Default bound on directories listed in one walk.
pub const DEFAULT_MAX_DIRS: usize = 20_000;

/// Whether a directory with this name can have containers below it. Anything else (a
/// service's cgroup, a session scope, a container's own children) is not listed.
fn may_lead(name: &str) -> bool {
    matches!(
        name,
        "docker"
            | "kubepods"
            | "burstable"
            | "besteffort"
            | "guaranteed"
            | "libpod_parent"
            | "machine"
            | "crio"
            | "containerd"
    ) || name.starts_with("kubepods")
        || name.starts_with("pod")
        || name.ends_with(".slice")
        // rootless podman/docker: user.slice/user-1000.slice/user@1000.service/user.slice/…
        || (name.starts_with("user@") && name.ends_with(".service"))
}

/// Container cgroups on the reference hierarchy, at most `max_depth` levels down, deduplicated
/// by container id, sorted by path.
pub fn discover(layout: &Layout, max_depth: usize) -> Vec<Found> {
    discover_bounded(layout, max_depth, DEFAULT_MAX_DIRS).found
}

/// [`discover`] with an explicit bound on directories listed, and walk statistics.
pub fn discover_bounded(layout: &Layout, max_depth: usize, max_dirs: usize) -> Discovery {
    let mut d = Discovery::default();
    let Some(root) = layout.reference() else {
        return d;
    };
    let mut seen: HashSet<String> = HashSet::new();
    // (relative path without trailing slash, depth of its children)
    let mut stack: Vec<(String, usize)> = vec![(String::new(), 1)];
    while let Some((rel, depth)) = stack.pop() {
        if d.visited >= max_dirs {
            d.truncated = true;
            break;
        }
        d.visited += 1;
        let dir = root.join(rel.trim_start_matches('/'));
        // A cgroup removed while we walk is churn, not an error.
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.filter_map(Result::ok) {
            // d_type from the directory listing: no stat, no file read.
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            let child = format!("{rel}/{name}");
            if let Some(identity) = identify(&child) {
                if seen.insert(identity.container_id.clone()) {
                    d.found.push(Found {
                        path: child,
                        identity,
                    });
                }
                // A container's children (docker-in-docker, systemd inside) are its own.
                continue;
            }
            if depth < max_depth && may_lead(&name) {
                stack.push((child, depth + 1));
            }
        }
    }
    d.found.sort_by(|a, b| a.path.cmp(&b.path));
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::identity::Runtime;
    use std::fs;

    const ID: &str = "3f2a9c1b7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b";
    const ID2: &str = "0000000000000000000000000000000000000000000000000000000000000abc";
    const UID_: &str = "12ab34cd_56ef_7890_abcd_ef0123456789";

    fn mk(root: &Path, rel: &str) {
        fs::create_dir_all(root.join(rel.trim_start_matches('/'))).unwrap();
    }

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, "").unwrap();
    }

    fn roots(cg: &Path) -> Roots {
        Roots {
            cgroupfs: cg.to_path_buf(),
            ..Roots::default()
        }
    }

    #[test]
    fn detect_hybrid_like_this_machine() {
        let t = tempfile::tempdir().unwrap();
        for c in ["cpu", "cpuacct", "memory", "blkio", "pids", "systemd"] {
            touch(t.path(), &format!("{c}/cgroup.procs"));
        }
        touch(t.path(), "unified/cgroup.controllers");
        let l = detect(&roots(t.path()));
        let Layout::Hybrid {
            controllers,
            unified,
        } = &l
        else {
            panic!("{l:?}");
        };
        assert_eq!(unified, &t.path().join("unified"));
        assert_eq!(
            controllers.keys().collect::<Vec<_>>(),
            ["blkio", "cpu", "cpuacct", "memory", "pids"]
        );
        assert_eq!(l.reference(), Some(t.path().join("memory").as_path()));
    }

    #[test]
    fn detect_pure_v2() {
        let t = tempfile::tempdir().unwrap();
        touch(t.path(), "cgroup.controllers");
        touch(t.path(), "cgroup.procs");
        let l = detect(&roots(t.path()));
        assert_eq!(
            l,
            Layout::V2 {
                root: t.path().to_path_buf()
            }
        );
        assert_eq!(l.v1("memory"), None);
        assert_eq!(l.reference(), Some(t.path()));
    }

    #[test]
    fn detect_v1_combined_mounts_without_symlinks() {
        let t = tempfile::tempdir().unwrap();
        touch(t.path(), "cpu,cpuacct/cgroup.procs");
        touch(t.path(), "pids/cgroup.procs");
        mk(t.path(), "memory"); // a bare dir on the tmpfs: not mounted
        let l = detect(&roots(t.path()));
        assert!(matches!(l, Layout::V1 { .. }), "{l:?}");
        assert_eq!(l.v1("cpu"), Some(t.path().join("cpu,cpuacct").as_path()));
        assert_eq!(l.v1("cpuacct"), l.v1("cpu"));
        assert_eq!(l.v1("memory"), None);
        // no memory hierarchy: discovery walks cpu
        assert_eq!(l.reference(), l.v1("cpu"));
    }

    #[test]
    fn detect_nothing_mounted() {
        let t = tempfile::tempdir().unwrap();
        let l = detect(&roots(t.path()));
        assert_eq!(l.reference(), None);
        assert!(discover(&l, 6).is_empty());
    }

    fn v2(root: &Path) -> Layout {
        Layout::V2 {
            root: root.to_path_buf(),
        }
    }

    #[test]
    fn discover_every_shape_in_one_tree() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let uid = UID_.replace('_', "-");
        let shapes = [
            format!("/docker/{ID}"),
            format!("/system.slice/docker-{ID2}.scope"),
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{}.scope", ID.replace('3', "5")),
            format!("/kubepods/besteffort/pod{uid}/{}", ID.replace('3', "6")),
            format!("/kubepods/pod{uid}/{}", ID.replace('3', "7")),
            format!("/machine.slice/libpod-{}.scope", ID.replace('3', "8")),
        ];
        for s in &shapes {
            mk(r, s);
        }
        // Noise that must not be listed or reported.
        mk(r, "/system.slice/ssh.service/child");
        mk(
            r,
            format!("/machine.slice/libpod-conmon-{ID}.scope").as_str(),
        );
        mk(r, format!("/docker/{ID}/docker/{ID2}").as_str()); // docker-in-docker
        mk(r, "/user.slice/user-0.slice/session-1.scope");
        let d = discover_bounded(&v2(r), DEFAULT_MAX_DEPTH, DEFAULT_MAX_DIRS);
        let mut want: Vec<&str> = shapes.iter().map(String::as_str).collect();
        want.sort();
        assert_eq!(
            d.found.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
            want
        );
        assert!(!d.truncated);
        // listed: root, docker, system.slice, kubepods.slice, its qos slice and pod slice,
        // kubepods, besteffort, two pod dirs, machine.slice, user.slice, user-0.slice
        assert_eq!(d.visited, 13, "no container, service or scope was listed");
        let docker = d
            .found
            .iter()
            .find(|f| f.path.starts_with("/docker/"))
            .unwrap();
        assert_eq!(docker.identity.runtime, Runtime::Docker);
    }

    #[test]
    fn discover_dedupes_by_id() {
        let t = tempfile::tempdir().unwrap();
        // the same container reachable under two names (a runtime moved it)
        mk(t.path(), &format!("/docker/{ID}"));
        mk(t.path(), &format!("/system.slice/docker-{ID}.scope"));
        assert_eq!(discover(&v2(t.path()), 6).len(), 1);
    }

    #[test]
    fn discover_is_bounded_in_depth_and_dirs() {
        let t = tempfile::tempdir().unwrap();
        let deep = format!("/a.slice/b.slice/c.slice/d.slice/e.slice/f.slice/docker-{ID}.scope");
        mk(t.path(), &deep);
        assert!(discover(&v2(t.path()), 6).is_empty(), "depth 7 is too deep");
        assert_eq!(discover(&v2(t.path()), 7).len(), 1);
        for i in 0..50 {
            mk(t.path(), &format!("/x{i}.slice"));
        }
        let d = discover_bounded(&v2(t.path()), 7, 10);
        assert!(d.truncated);
        assert_eq!(d.visited, 10);
    }

    #[test]
    fn discover_on_hybrid_walks_memory() {
        let t = tempfile::tempdir().unwrap();
        for c in ["cpu", "cpuacct", "memory", "pids"] {
            touch(t.path(), &format!("{c}/cgroup.procs"));
        }
        touch(t.path(), "unified/cgroup.controllers");
        mk(t.path(), &format!("memory/docker/{ID}"));
        mk(t.path(), &format!("cpu/docker/{ID2}")); // not on the reference hierarchy
        let found = discover(&detect(&roots(t.path())), 6);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, format!("/docker/{ID}"));
    }
}
