//! The container view: every `containers.interval` (10 s) a worker thread discovers the
//! container cgroups ([`crate::cgroup::discover`]) and reads each one's counters
//! ([`crate::cgroup::read_stats`]); the sampler publishes the result as a [`ContainerSnapshot`]
//! and counts containers that appeared and vanished between passes.
//!
//! Why a slow cadence and its own thread: a pass costs a few `read_dir`s plus ~15 small reads
//! per container (1000 containers ≈ 15k reads), cgroup files can block behind a busy cgroup
//! lock, and container counters are cumulative, so a 10 s pass loses nothing a scrape would
//! show. A pass that does not answer by `source_timeout` leaves the last snapshot in place and
//! marks the source stuck, like every other source.
//!
//! Bounded labels: at most `max_containers` containers are read per pass (in path order, so
//! the same ones each time); the others are counted in [`ContainerSnapshot::dropped`]. Starts
//! and stops are counted over every container discovered, capped or not.

use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tracing::warn;

use crate::cgroup::discover::{self, DEFAULT_MAX_DEPTH, DEFAULT_MAX_DIRS};
use crate::cgroup::{read_stats, ContainerStats, Identity, StatError};
use crate::proc::net_dev::{self, NetDev};
use crate::roots::Roots;
use crate::sample::status::SourceStatus;
use crate::sample::worker::{Background, Outcome, Worker};

#[derive(Debug, Clone)]
pub struct ContainersConfig {
    pub enabled: bool,
    /// Pass cadence.
    pub interval: Duration,
    /// Containers read per pass; the rest are counted as dropped.
    pub max_containers: usize,
    /// A pass outstanding longer than this marks the source stuck.
    pub source_timeout: Duration,
    /// Docker's data root, for container names (`<root>/containers/<id>/config.v2.json`);
    /// `None`: `/var/lib/docker` under `--path.rootfs`.
    pub docker_root: Option<std::path::PathBuf>,
}

impl Default for ContainersConfig {
    fn default() -> Self {
        ContainersConfig {
            enabled: true,
            interval: Duration::from_secs(10),
            max_containers: 1000,
            source_timeout: Duration::from_secs(5),
            docker_root: None,
        }
    }
}

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

#[derive(Debug, Clone)]
pub struct ContainerSnapshot {
    /// Wall time of the last pass applied (`None` before the first).
    pub taken: Option<SystemTime>,
    pub enabled: bool,
    /// Containers of the last pass, sorted by path.
    pub containers: Vec<ContainerRow>,
    /// Container ids that appeared, since start (the first pass counts every container).
    pub starts: u64,
    /// Container ids that vanished between passes, since start.
    pub stops: u64,
    /// Containers discovered by the last pass but not read (over `max_containers`).
    pub dropped: u64,
    /// Sum over all passes of the containers not read because of the cap (a counter).
    pub dropped_total: u64,
    /// The discovery walk hit its directory bound in the last pass.
    pub walk_truncated: bool,
    pub status: SourceStatus,
}

impl Default for ContainerSnapshot {
    fn default() -> Self {
        ContainerSnapshot {
            taken: None,
            enabled: false,
            containers: Vec::new(),
            starts: 0,
            stops: 0,
            dropped: 0,
            dropped_total: 0,
            walk_truncated: false,
            status: SourceStatus::new("containers"),
        }
    }
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

/// Container names from the runtime's own state, cached per id (a name never changes for an
/// id, except by `docker rename`, which a restart of the agent picks up).
#[derive(Debug, Default)]
pub struct Names {
    cache: std::collections::HashMap<String, Option<String>>,
}

/// Longest name exported; docker allows any length.
const MAX_NAME: usize = 128;

impl Names {
    /// Docker: `<root>/containers/<id>/config.v2.json`, top-level `"Name": "/web"`.
    fn docker(&mut self, docker_root: &std::path::Path, id: &str) -> Option<String> {
        if let Some(n) = self.cache.get(id) {
            return n.clone();
        }
        let path = docker_root
            .join("containers")
            .join(id)
            .join("config.v2.json");
        let name = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| {
                v.get("Name")?
                    .as_str()
                    .map(|s| s.trim_start_matches('/').to_string())
            })
            .filter(|n| !n.is_empty())
            .map(|n| {
                n.chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .take(MAX_NAME)
                    .collect::<String>()
            });
        // Only a found name is cached: the state file may be written just after the cgroup.
        if name.is_some() {
            if self.cache.len() > 10_000 {
                self.cache.clear();
            }
            self.cache.insert(id.to_string(), name.clone());
        }
        name
    }
}

/// One pass: detect the layout, discover, read up to `max_containers`.
pub fn pass(roots: &Roots, max_containers: usize) -> Pass {
    pass_named(roots, max_containers, None, &mut Names::default())
}

/// [`pass`], plus container names from the runtimes' state (cached in `names`).
pub fn pass_named(
    roots: &Roots,
    max_containers: usize,
    docker_root: Option<&std::path::Path>,
    names: &mut Names,
) -> Pass {
    let default_root = roots.root("var/lib/docker");
    let docker_root = docker_root.unwrap_or(&default_root);
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
    let host_netns = net_dev::netns_inode(roots, "1").ok().flatten();
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
                crate::cgroup::Runtime::Docker => {
                    names.docker(docker_root, &f.identity.container_id)
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

/// Counts ids that appear and vanish across passes.
#[derive(Debug, Default)]
pub struct Churn {
    known: HashSet<String>,
    pub starts: u64,
    pub stops: u64,
}

impl Churn {
    pub fn apply(&mut self, ids: &[String]) {
        let now: HashSet<String> = ids.iter().cloned().collect();
        self.starts += now.difference(&self.known).count() as u64;
        self.stops += self.known.difference(&now).count() as u64;
        self.known = now;
    }
}

/// Running container sampler.
pub struct ContainerSampler(Background);

impl ContainerSampler {
    pub fn spawn(
        roots: Arc<Roots>,
        config: Arc<ArcSwap<ContainersConfig>>,
        out: Arc<ArcSwap<ContainerSnapshot>>,
    ) -> std::io::Result<ContainerSampler> {
        let (res_tx, res_rx) = mpsc::channel::<Outcome<Pass>>();
        let wcfg = Arc::clone(&config);
        let mut names = Names::default();
        let mut worker = Worker::spawn("containers", 0, res_tx, move || {
            let cfg = wcfg.load();
            pass_named(
                &roots,
                cfg.max_containers,
                cfg.docker_root.as_deref(),
                &mut names,
            )
        })?;
        let bg = Background::spawn("sw-containers", move |sleeper| {
            let mut snap = ContainerSnapshot::default();
            let mut churn = Churn::default();
            let mut last_request: Option<Instant> = None;
            let mut last_err_log: Option<Instant> = None;
            let mut last_stuck_log: Option<Instant> = None;
            let mut missing_logged = false;
            loop {
                let cfg = config.load_full();
                let now = Instant::now();
                snap.enabled = cfg.enabled;
                let due = last_request.is_none_or(|t| {
                    now.saturating_duration_since(t) + Duration::from_millis(20) >= cfg.interval
                });
                let mut outcome = None;
                if cfg.enabled && due {
                    if worker.request(now) {
                        last_request = Some(now);
                    }
                    let wait = cfg.source_timeout.min(cfg.interval);
                    outcome = res_rx.recv_timeout(wait).ok();
                } else if let Ok(o) = res_rx.try_recv() {
                    // A late pass: its data is still the newest we have.
                    outcome = Some(o);
                }
                if let Some(o) = outcome {
                    worker.busy_since = None;
                    snap.status.record(&o);
                    let p = o.result;
                    let errors: Vec<StatError> = p
                        .rows
                        .iter()
                        .flat_map(|r| r.stats.errors.iter().cloned())
                        .collect();
                    for e in &errors {
                        snap.status.count_error(e.kind);
                    }
                    if let Some(e) = errors.first() {
                        if last_err_log.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                            warn!(source = "containers", error = %e.message, count = errors.len(),
                                "Reading container cgroups failed.");
                            last_err_log = Some(Instant::now());
                        }
                    }
                    if p.no_hierarchy && !missing_logged {
                        warn!(
                            source = "containers",
                            "No cgroup hierarchy found; container metrics are absent."
                        );
                        missing_logged = true;
                    }
                    snap.status.missing = p.no_hierarchy;
                    churn.apply(&p.ids);
                    snap.starts = churn.starts;
                    snap.stops = churn.stops;
                    snap.dropped = p.dropped as u64;
                    snap.dropped_total += p.dropped as u64;
                    snap.walk_truncated = p.truncated;
                    snap.containers = p.rows;
                    snap.status.last_success = Some(o.finished);
                    snap.taken = Some(SystemTime::now());
                }
                if !cfg.enabled {
                    snap.containers.clear();
                }
                snap.status.in_flight_since = worker.busy_since;
                snap.status.timeout = cfg.source_timeout;
                snap.status
                    .warn_if_stuck(Instant::now(), &mut last_stuck_log);
                out.store(Arc::new(snap.clone()));
                // Wake at least every second: a config change (enabled, interval) and a late
                // pass are picked up promptly.
                let next = last_request.map_or(cfg.interval, |t| {
                    (t + cfg.interval).saturating_duration_since(Instant::now())
                });
                if !sleeper.sleep(next.min(Duration::from_secs(1))) {
                    break;
                }
            }
        })?;
        Ok(ContainerSampler(bg))
    }

    pub fn stop(self) {
        self.0.stop();
    }
}

#[cfg(test)]
mod cap_tests {
    use super::*;

    #[test]
    fn docker_names_from_config_v2_json_are_label_safe_and_cached() {
        let root = tempfile::tempdir().unwrap();
        let id = "ab".repeat(32);
        let dir = root.path().join("containers").join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.v2.json"),
            r#"{"ID":"x","Config":{"Name":"inner"},"Name":"/web\n1"}"#,
        )
        .unwrap();
        let mut n = Names::default();
        assert_eq!(
            n.docker(root.path(), &id).as_deref(),
            Some("web?1"),
            "top-level Name, control chars made safe"
        );
        std::fs::remove_dir_all(root.path().join("containers")).unwrap();
        assert_eq!(
            n.docker(root.path(), &id).as_deref(),
            Some("web?1"),
            "cached"
        );
        assert_eq!(
            n.docker(root.path(), &"cd".repeat(32)),
            None,
            "no state: no name"
        );
    }

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::{detect, Runtime};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command};
    use std::thread;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn churn_counts_starts_and_stops() {
        let mut c = Churn::default();
        c.apply(&ids(&["a", "b"]));
        assert_eq!(
            (c.starts, c.stops),
            (2, 0),
            "the first pass counts as starts"
        );
        c.apply(&ids(&["a", "b"]));
        assert_eq!((c.starts, c.stops), (2, 0));
        c.apply(&ids(&["b", "c"]));
        assert_eq!((c.starts, c.stops), (3, 1));
        c.apply(&[]);
        assert_eq!((c.starts, c.stops), (3, 3));
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

    /// Real cgroups made by this test; removed (only what it created) even on panic.
    struct FakeContainer {
        /// Created directories, parents first.
        created: Vec<PathBuf>,
        leaves: Vec<PathBuf>,
        child: Option<Child>,
    }

    impl FakeContainer {
        fn kill(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }

        fn remove(&mut self) {
            self.kill();
            while let Some(d) = self.created.pop() {
                // A cgroup whose last task just exited can be busy for a moment.
                for _ in 0..50 {
                    match std::fs::remove_dir(&d) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            thread::sleep(Duration::from_millis(20))
                        }
                        _ => break,
                    }
                }
            }
        }
    }

    impl Drop for FakeContainer {
        fn drop(&mut self) {
            self.remove();
        }
    }

    fn wait_for(
        out: &ArcSwap<ContainerSnapshot>,
        what: &str,
        f: impl Fn(&ContainerSnapshot) -> bool,
    ) -> Arc<ContainerSnapshot> {
        let t0 = Instant::now();
        loop {
            let s = out.load_full();
            if f(&s) {
                return s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "timed out waiting for {what}: {s:#?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    static REAL_CGROUPS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Runs the real-cgroup scenario for a container at `rel(id)` (a path below every
    /// hierarchy root), checking the identity with `check`.
    fn real_cgroup_scenario(
        name: &str,
        rel: impl Fn(&str) -> String,
        check: impl Fn(&Identity, &str),
    ) {
        // One scenario at a time: each sampler sees every container on the host, so a
        // parallel scenario's container vanishing would count in this one's stops.
        let _serial = REAL_CGROUPS.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{name} needs root under CI=true"
            );
            eprintln!("SKIPPED {name}: needs root to create cgroups");
            return;
        }
        let roots = Roots::default();
        let layout = detect(&roots);
        if layout.reference().is_none() {
            eprintln!("SKIPPED {name}: no cgroup hierarchy mounted");
            return;
        }
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let id = format!("5757{:060x}", nanos ^ ((std::process::id() as u128) << 64));
        assert_eq!(id.len(), 64);
        let rel = rel(&id);
        // Every hierarchy the readers use (a combined cpu,cpuacct mount once).
        let mut dirs: Vec<PathBuf> = ["memory", "cpu", "cpuacct", "pids", "blkio"]
            .iter()
            .filter_map(|c| layout.v1(c))
            .chain(layout.v2())
            .filter_map(|p| std::fs::canonicalize(p).ok())
            .collect();
        dirs.sort();
        dirs.dedup();
        let mut fc = FakeContainer {
            created: Vec::new(),
            leaves: Vec::new(),
            child: None,
        };
        for h in &dirs {
            // Docker or a kubelet may own the parents already: create (and later remove)
            // only what does not exist.
            let mut d = h.clone();
            for comp in rel.split('/').filter(|c| !c.is_empty()) {
                d.push(comp);
                match std::fs::create_dir(&d) {
                    Ok(()) => fc.created.push(d.clone()),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => panic!("mkdir {}: {e}", d.display()),
                }
            }
            assert_eq!(
                fc.created.last(),
                Some(&d),
                "{} existed before",
                d.display()
            );
            fc.leaves.push(d);
        }
        let child = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let pid = child.id();
        fc.child = Some(child);
        for leaf in &fc.leaves {
            std::fs::write(leaf.join("cgroup.procs"), pid.to_string())
                .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", leaf.display()));
        }
        thread::sleep(Duration::from_millis(1100));

        let cfg = Arc::new(ArcSwap::from_pointee(ContainersConfig {
            interval: Duration::from_millis(200),
            ..ContainersConfig::default()
        }));
        let out = Arc::new(ArcSwap::from_pointee(ContainerSnapshot::default()));
        let sampler = ContainerSampler::spawn(Arc::new(roots), cfg, out.clone()).unwrap();
        let find = |s: &ContainerSnapshot| {
            s.containers
                .iter()
                .find(|r| r.identity.container_id == id)
                .cloned()
        };
        let s = wait_for(&out, "our container", |s| find(s).is_some());
        let row = find(&s).unwrap();
        let stops_before = s.stops;
        check(&row.identity, &id);
        assert_eq!(row.path, rel);
        let st = &row.stats;
        assert!(st.errors.is_empty(), "{:?}", st.errors);
        assert!(
            st.cpu.usage_seconds.is_some_and(|u| u > 0.3),
            "busy loop for ~1 s: {:?}",
            st.cpu
        );
        assert!(st.cpu.user_seconds.is_some_and(|u| u > 0.0), "{:?}", st.cpu);
        assert!(st.memory.usage_bytes.is_some(), "{:?}", st.memory);
        if layout.v1("pids").is_some() || matches!(layout, discover::Layout::V2 { .. }) {
            assert_eq!(st.pids, Some(1));
        }
        assert_eq!(st.first_pid, Some(pid));
        if matches!(layout, discover::Layout::Hybrid { .. }) {
            // merged from the unified tree
            assert!(st.pressure[0].is_some(), "cpu.pressure from unified");
        }
        assert!(s.starts >= 1);

        fc.remove();
        let s = wait_for(&out, "our container to vanish", |s| find(s).is_none());
        assert_eq!(s.stops - stops_before, 1, "{s:#?}");
        sampler.stop();
        assert!(dirs
            .iter()
            .all(|h| !Path::new(&h.join(rel.trim_start_matches('/'))).exists()));
    }

    #[test]
    fn real_docker_cgroupfs_container_on_this_machine() {
        real_cgroup_scenario(
            "real_docker_cgroupfs_container_on_this_machine",
            |id| format!("/docker/{id}"),
            |i, _| {
                assert_eq!(i.runtime, Runtime::Docker);
                assert_eq!((i.pod_uid.as_ref(), i.qos), (None, None));
            },
        );
    }

    #[test]
    fn real_kubelet_cgroupfs_burstable_container_on_this_machine() {
        let uid = format!("57570000-0000-4000-8000-{:012x}", std::process::id());
        let u = uid.clone();
        real_cgroup_scenario(
            "real_kubelet_cgroupfs_burstable_container_on_this_machine",
            move |id| format!("/kubepods/burstable/pod{u}/{id}"),
            move |i, _| {
                assert_eq!(i.runtime, Runtime::Unknown);
                assert_eq!(i.pod_uid.as_deref(), Some(uid.as_str()));
                assert_eq!(i.qos, Some(crate::cgroup::Qos::Burstable));
            },
        );
    }
}
