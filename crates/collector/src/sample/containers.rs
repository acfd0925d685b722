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
use crate::sample::budget;
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
    /// containers/storage's root (CRI-O and podman, rootful), for their container names
    /// (`<root>/overlay-containers/{,volatile-}containers.json`); `None`:
    /// `/var/lib/containers/storage` under `--path.rootfs`.
    pub storage_root: Option<std::path::PathBuf>,
    /// CPU budget of the pass, as a share of one core: a pass that cost `c` seconds of CPU
    /// waits at least `c / max_cpu` before the next ([`crate::sample::budget`]); 0 disables.
    /// `make bench` measured a pass over 200 containers at ~96 ms here: just inside 1 % at
    /// the 10 s default, so the default budget only stretches bigger hosts.
    pub max_cpu: f64,
}

impl Default for ContainersConfig {
    fn default() -> Self {
        ContainersConfig {
            enabled: true,
            interval: Duration::from_secs(10),
            max_containers: 1000,
            source_timeout: Duration::from_secs(5),
            docker_root: None,
            storage_root: None,
            max_cpu: 0.01,
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
    /// The pass interval in force: `interval`, stretched when the last pass's CPU would
    /// exceed `max_cpu` of one core at that cadence.
    pub current_interval: Duration,
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
            current_interval: Duration::ZERO,
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

/// Container names from the runtime's own state. Docker's are cached per id (a name never
/// changes for an id, except by `docker rename`, which a restart of the agent picks up);
/// containers/storage's (CRI-O, podman) come from one list per store, re-read when it changes.
#[derive(Debug, Default)]
pub struct Names {
    cache: std::collections::HashMap<String, Option<String>>,
    storage: Storage,
}

/// Longest name exported; docker allows any length.
const MAX_NAME: usize = 128;
/// Most entries kept from one containers/storage list.
const MAX_STORAGE_ENTRIES: usize = 100_000;

/// A runtime-given name made safe for a label value: control characters replaced, length
/// bounded.
fn label_safe(n: &str) -> String {
    n.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(MAX_NAME)
        .collect()
}

/// containers/storage's container lists, the state CRI-O and podman keep their names in
/// (`containers.go`: a JSON array of `{"id": "<64 hex>", "names": ["web"], "image": …,
/// "layer": …, "metadata": …, "created": …, "flags": …}`, written whole by an atomic
/// rename). `containers.json` holds the stable containers, `volatile-containers.json` those
/// made with a volatile store (`podman run --rm`). A store keeps its transient
/// (`transient_store = true`) list under the run root instead: those are not read.
///
/// Cheap by construction: one `stat` per file per pass (only when a CRI-O or podman container
/// is in the pass), and a parse only when the file's mtime, size or inode changed.
#[derive(Debug, Default)]
struct Storage {
    files: [StoreFile; 2],
    /// The files were stat'ed in this pass.
    checked: bool,
    /// Parses so far (a test checks that an unchanged file is not re-read).
    parses: u64,
}

const STORAGE_FILES: [&str; 2] = ["containers.json", "volatile-containers.json"];

#[derive(Debug, Default)]
struct StoreFile {
    /// (mtime, size, inode) of the file as last parsed; `None`: absent or not parsed yet.
    stamp: Option<(SystemTime, u64, u64)>,
    /// id → first name.
    names: std::collections::HashMap<String, String>,
}

/// Parses one containers/storage list into id → name, keeping entries whose id has the
/// shape of a container id and that have a non-empty first name.
fn parse_storage(bytes: &[u8]) -> Option<std::collections::HashMap<String, String>> {
    let v: Vec<serde_json::Value> = serde_json::from_slice(bytes).ok()?;
    Some(
        v.iter()
            .filter_map(|c| {
                let id = c.get("id")?.as_str()?;
                let ok = id.len() == 64
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                let name = c.get("names")?.as_array()?.first()?.as_str()?;
                (ok && !name.is_empty()).then(|| (id.to_string(), label_safe(name)))
            })
            .take(MAX_STORAGE_ENTRIES)
            .collect(),
    )
}

impl Storage {
    fn refresh(&mut self, dir: &std::path::Path) {
        use std::os::unix::fs::MetadataExt;
        for (f, name) in self.files.iter_mut().zip(STORAGE_FILES) {
            let path = dir.join(name);
            let Ok(md) = std::fs::metadata(&path) else {
                *f = StoreFile::default();
                continue;
            };
            let stamp = (
                md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                md.len(),
                md.ino(),
            );
            if f.stamp == Some(stamp) {
                continue;
            }
            self.parses += 1;
            // A file that does not parse keeps the names we had and is tried again next
            // pass (its stamp is not recorded).
            if let Some(names) = std::fs::read(&path).ok().and_then(|b| parse_storage(&b)) {
                *f = StoreFile {
                    stamp: Some(stamp),
                    names,
                };
            }
        }
    }
}

impl Names {
    /// Call once per pass: containers/storage lists are checked for changes at most once in
    /// each.
    pub fn begin_pass(&mut self) {
        self.storage.checked = false;
    }

    /// CRI-O and podman: the first of the container's `names` in containers/storage's lists
    /// under `storage_root`.
    fn storage(&mut self, storage_root: &std::path::Path, id: &str) -> Option<String> {
        if !self.storage.checked {
            self.storage.checked = true;
            self.storage
                .refresh(&storage_root.join("overlay-containers"));
        }
        self.storage
            .files
            .iter()
            .find_map(|f| f.names.get(id))
            .cloned()
    }

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
            .map(|n| label_safe(&n));
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
                crate::cgroup::Runtime::Docker => {
                    names.docker(docker_root, &f.identity.container_id)
                }
                crate::cgroup::Runtime::Crio | crate::cgroup::Runtime::Podman => {
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
                cfg.storage_root.as_deref(),
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
            let mut last_pass_cpu = Duration::ZERO;
            loop {
                let cfg = config.load_full();
                let now = Instant::now();
                snap.enabled = cfg.enabled;
                // Hundreds of containers make a pass expensive: stretch the cadence so the
                // passes stay under the CPU budget, as the thread walk does.
                let interval = budget::stretch(cfg.interval, last_pass_cpu, cfg.max_cpu);
                let due = last_request.is_none_or(|t| {
                    now.saturating_duration_since(t) + Duration::from_millis(20) >= interval
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
                    last_pass_cpu = o.cpu;
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
                // The interval the next pass waits for, from the cost of the one just done.
                let interval = budget::stretch(cfg.interval, last_pass_cpu, cfg.max_cpu);
                snap.current_interval = interval;
                snap.status.in_flight_since = worker.busy_since;
                snap.status.timeout = cfg.source_timeout;
                snap.status
                    .warn_if_stuck(Instant::now(), &mut last_stuck_log);
                out.store(Arc::new(snap.clone()));
                // Wake at least every second: a config change (enabled, interval) and a late
                // pass are picked up promptly.
                let next = last_request.map_or(interval, |t| {
                    (t + interval).saturating_duration_since(Instant::now())
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

    const PODMAN_ID: &str = "8d3fbbd0c8f6b2a1e3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081920";
    const CRIO_ID: &str = "1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d";
    const RM_ID: &str = "aaaabbbbccccddddeeeeffff0000111122223333444455556666777788889999";

    /// A `containers.json` with the fields of containers/storage's `Container` (values made
    /// up): a podman container named with a control character, a CRI-O container with the
    /// kubelet's name, one with no names, one whose id is not a container id.
    fn containers_json(podman_name: &str) -> String {
        format!(
            r#"[{{"id":"{PODMAN_ID}","names":["{podman_name}"],"image":"{CRIO_ID}","layer":"{RM_ID}","metadata":"{{\"image-name\":\"docker.io/library/nginx:latest\",\"name\":\"web\"}}","big-data-names":["volatile.json"],"big-data-sizes":{{"volatile.json":1043}},"created":"2026-11-23T21:00:00.123456789Z","flags":{{"MountLabel":"","ProcessLabel":""}}}},
{{"id":"{CRIO_ID}","names":["k8s_nginx_nginx-7c5b4_default_12ab34cd-56ef-7890-abcd-ef0123456789_0"],"image":"x","layer":"y","created":"2026-11-23T21:00:01Z"}},
{{"id":"{}","image":"x","layer":"y"}},
{{"id":"../../etc","names":["evil"],"image":"x","layer":"y"}}]"#,
            "0".repeat(64)
        )
    }

    fn store(root: &std::path::Path) -> std::path::PathBuf {
        let d = root.join("overlay-containers");
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn crio_and_podman_names_from_containers_storage_reread_only_on_change() {
        let root = tempfile::tempdir().unwrap();
        let dir = store(root.path());
        let stable = dir.join("containers.json");
        std::fs::write(&stable, containers_json("web\\tx")).unwrap();
        std::fs::write(
            dir.join("volatile-containers.json"),
            format!(r#"[{{"id":"{RM_ID}","names":["tmp-1"],"image":"x","layer":"y"}}]"#),
        )
        .unwrap();
        let r = root.path();
        let mut n = Names::default();
        n.begin_pass();
        assert_eq!(
            n.storage(r, PODMAN_ID).as_deref(),
            Some("web?x"),
            "label-safe"
        );
        assert_eq!(
            n.storage(r, CRIO_ID).as_deref(),
            Some("k8s_nginx_nginx-7c5b4_default_12ab34cd-56ef-7890-abcd-ef0123456789_0")
        );
        assert_eq!(
            n.storage(r, RM_ID).as_deref(),
            Some("tmp-1"),
            "volatile store"
        );
        assert_eq!(n.storage(r, &"0".repeat(64)), None, "no names");
        assert_eq!(n.storage(r, "../../etc"), None, "not an id");
        assert_eq!(n.storage(r, &"f".repeat(64)), None, "unknown");
        assert_eq!(n.storage.parses, 2, "each file parsed once in a pass");

        // Unchanged: the next passes stat the files but do not parse them.
        for _ in 0..3 {
            n.begin_pass();
            assert!(n.storage(r, PODMAN_ID).is_some());
        }
        assert_eq!(n.storage.parses, 2);

        // Rewritten in place with the same size and the old mtime put back: the stamp says
        // unchanged, so it is not re-read (the cache key is the stamp, not the content).
        let mtime = std::fs::metadata(&stable).unwrap().modified().unwrap();
        std::fs::write(&stable, containers_json("web\\ty")).unwrap();
        let f = std::fs::File::options().write(true).open(&stable).unwrap();
        f.set_modified(mtime).unwrap();
        n.begin_pass();
        assert_eq!(n.storage(r, PODMAN_ID).as_deref(), Some("web?x"));
        assert_eq!(n.storage.parses, 2);
        // Its mtime moves (as every write by containers/storage does): re-read.
        f.set_modified(mtime + Duration::from_secs(1)).unwrap();
        n.begin_pass();
        assert_eq!(n.storage(r, PODMAN_ID).as_deref(), Some("web?y"));
        assert_eq!(n.storage.parses, 3, "only the changed file");

        // A broken write keeps the names we had and is retried.
        std::fs::write(&stable, "[{\"id\":").unwrap();
        n.begin_pass();
        assert_eq!(n.storage(r, PODMAN_ID).as_deref(), Some("web?y"));
        n.begin_pass();
        assert_eq!(n.storage(r, PODMAN_ID).as_deref(), Some("web?y"));
        assert_eq!(n.storage.parses, 5, "retried each pass");

        // Gone: within the pass nothing is stat'ed again; from the next pass, no names.
        std::fs::remove_file(&stable).unwrap();
        assert!(n.storage(r, PODMAN_ID).is_some());
        n.begin_pass();
        assert_eq!(n.storage(r, PODMAN_ID), None);
        assert_eq!(
            n.storage(r, RM_ID).as_deref(),
            Some("tmp-1"),
            "the other list stays"
        );
    }

    /// A pass names CRI-O and podman containers from the store under `--path.rootfs`, and
    /// docker ones (with no docker state here) not at all.
    #[test]
    fn a_pass_names_crio_and_podman_containers_from_their_store() {
        let cg = tempfile::tempdir().unwrap();
        let c = cg.path();
        std::fs::write(c.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        let docker_id = "d".repeat(64);
        for rel in [
            format!("machine.slice/libpod-{PODMAN_ID}.scope"),
            format!(
                "kubepods.slice/kubepods-pod12ab34cd_56ef_7890_abcd_ef0123456789.slice/crio-{CRIO_ID}.scope"
            ),
            format!("docker/{docker_id}"),
        ] {
            std::fs::create_dir_all(c.join(rel)).unwrap();
        }
        let rootfs = tempfile::tempdir().unwrap();
        let dir = store(&rootfs.path().join("var/lib/containers/storage"));
        std::fs::write(dir.join("containers.json"), containers_json("web")).unwrap();
        let roots = Roots {
            cgroupfs: c.to_path_buf(),
            rootfs: rootfs.path().to_path_buf(),
            ..Roots::default()
        };
        let mut names = Names::default();
        let p = pass_named(&roots, 10, None, None, &mut names);
        let by_id = |id: &str| {
            p.rows
                .iter()
                .find(|r| r.identity.container_id == id)
                .unwrap()
                .name
                .clone()
        };
        assert_eq!(by_id(PODMAN_ID).as_deref(), Some("web"));
        assert!(by_id(CRIO_ID).is_some_and(|n| n.starts_with("k8s_nginx_")));
        assert_eq!(by_id(&docker_id), None);
        assert_eq!(names.storage.parses, 1, "one list, parsed once");
        pass_named(&roots, 10, None, None, &mut names);
        assert_eq!(names.storage.parses, 1, "not again while unchanged");
    }

    fn fixture_roots() -> Roots {
        let base = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/v2-nopsi-5.4"
        ));
        Roots {
            procfs: base.join("proc"),
            sysfs: base.join("sys"),
            cgroupfs: base.join("sys/fs/cgroup"),
            rootfs: base.to_path_buf(),
        }
    }

    /// Runs a sampler over the fixture until its first pass is published.
    fn first_pass(cfg: ContainersConfig) -> (ContainerSampler, Arc<ArcSwap<ContainerSnapshot>>) {
        let out = Arc::new(ArcSwap::from_pointee(ContainerSnapshot::default()));
        let s = ContainerSampler::spawn(
            Arc::new(fixture_roots()),
            Arc::new(ArcSwap::from_pointee(cfg)),
            out.clone(),
        )
        .unwrap();
        let t0 = Instant::now();
        while out.load().status.reads == 0 {
            assert!(t0.elapsed() < Duration::from_secs(10), "no pass");
            std::thread::sleep(Duration::from_millis(5));
        }
        (s, out)
    }

    /// A pass whose CPU would exceed the budget at the configured cadence stretches the
    /// interval to cpu / max_cpu, and the snapshot publishes it; the next pass waits for it.
    #[test]
    fn an_expensive_pass_stretches_the_interval_to_the_cpu_budget() {
        // A budget of one millionth of a core: the fixture pass (tens of µs of CPU at least)
        // costs far more than that per 50 ms.
        let (s, out) = first_pass(ContainersConfig {
            interval: Duration::from_millis(50),
            max_cpu: 1e-6,
            ..ContainersConfig::default()
        });
        // Thread CPU time is tick-sampled on some kernels, so a pass this small can measure 0
        // (then nothing stretches and passes keep coming): wait for the first pass the kernel
        // charged any CPU to.
        let t0 = Instant::now();
        let snap = loop {
            let snap = out.load_full();
            if snap.status.cpu > Duration::ZERO {
                break snap;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no pass was ever charged CPU"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let reads = snap.status.reads;
        let cpu = snap.status.cpu;
        assert_eq!(
            snap.current_interval,
            budget::stretch(Duration::from_millis(50), cpu, 1e-6)
        );
        assert!(
            snap.current_interval >= Duration::from_secs(1),
            "{cpu:?} of CPU at 1e-6 of a core: {:?}",
            snap.current_interval
        );
        // Twenty unstretched intervals later, still one pass.
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(
            out.load().status.reads,
            reads,
            "the stretched interval is in force"
        );
        s.stop();

        // No budget: the configured cadence, and passes keep coming.
        let (s, out) = first_pass(ContainersConfig {
            interval: Duration::from_millis(50),
            max_cpu: 0.0,
            ..ContainersConfig::default()
        });
        assert_eq!(out.load().current_interval, Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(500));
        assert!(out.load().status.reads >= 3, "{}", out.load().status.reads);
        s.stop();
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
