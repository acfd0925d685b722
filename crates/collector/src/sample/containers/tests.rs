//! The container sampler on fixture trees and on real cgroups of this machine.

use super::*;
use crate::cgroup::{detect, discover, Identity, Runtime};
use crate::sample::budget;
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
        None,
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
fn real_cgroup_scenario(name: &str, rel: impl Fn(&str) -> String, check: impl Fn(&Identity, &str)) {
    // One scenario at a time: each sampler sees every container on the host, so a
    // parallel scenario's container vanishing would count in this one's stops.
    let _serial = REAL_CGROUPS.lock().unwrap_or_else(|e| e.into_inner());
    if !crate::testing::require_root(name, "create cgroups") {
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
    let sampler = ContainerSampler::spawn(Arc::new(roots), cfg, out.clone(), None).unwrap();
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
