//! Every collector encoded over a synthetic snapshot in which every optional field is present
//! (`snapshots.rs`), compared with `testdata/<collector>.prom` (`UPDATE_GOLDEN=1` rewrites
//! them). The fixture goldens (`tests/golden/`) only reach the host rows a fixture tree can
//! give; these reach the container, cloud, thread and probe rows too, so a refactor of the
//! encoders that changes one byte of any family shows here.

mod snapshots;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::registry::Registry;
use stallwatch_cloud::CloudSnapshot;
use stallwatch_collector::sample::containers::ContainerSnapshot;
use stallwatch_collector::sample::probe::ProbeSnapshot;
use stallwatch_collector::sample::{HostSnapshot, ThreadSnapshot};

use super::cloud::CloudCollector;
use super::containers::ContainersCollector;
use super::host::HostCollector;
use super::selfmon::{ReloadStatus, SelfCollector};
use super::threads::ThreadsCollector;
use snapshots::{cloud_snapshot, containers_snapshot, host_snapshot, threads_snapshot};

/// Families whose values are ages measured at scrape time (or the build's identity).
const VOLATILE: &[&str] = &[
    "stallwatch_build_info",
    "stallwatch_dstate_longest_seconds",
    "stallwatch_snapshot_age_seconds",
];

fn mask(text: &str) -> String {
    text.lines()
        .map(|l| {
            let volatile = VOLATILE
                .iter()
                .any(|v| l.starts_with(v) && l[v.len()..].starts_with(['{', ' ']));
            match l.rsplit_once(' ') {
                Some((series, _)) if volatile => format!("{series} <volatile>\n"),
                _ => format!("{l}\n"),
            }
        })
        .collect()
}

fn registry() -> Registry {
    Registry::with_prefix("stallwatch")
}

fn text(r: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, r).unwrap();
    mask(&super::exposition::fix_infinities(out))
}

fn scrape(c: impl Collector) -> String {
    let mut r = registry();
    r.register_collector(Box::new(c));
    text(&r)
}

fn check(name: &str, got: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/metrics/testdata")
        .join(format!("{name}.prom"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    if got != want {
        let w: Vec<&str> = want.lines().collect();
        let g: Vec<&str> = got.lines().collect();
        let first = w.iter().zip(&g).position(|(a, b)| a != b);
        panic!(
            "{name}: encoding differs from {} (first differing line {first:?}: want {:?}, got {:?}; {} vs {} lines)",
            path.display(),
            first.map(|i| w[i]),
            first.map(|i| g[i]),
            w.len(),
            g.len()
        );
    }
}

fn snap<T>(t: T) -> Arc<ArcSwap<T>> {
    Arc::new(ArcSwap::from_pointee(t))
}

#[test]
fn host_rows() {
    let now = Instant::now();
    check(
        "host",
        &scrape(HostCollector {
            snap: snap(host_snapshot(now)),
        }),
    );
}

#[test]
fn container_rows() {
    let now = Instant::now();
    check(
        "containers",
        &scrape(ContainersCollector {
            snap: snap(containers_snapshot(now)),
            threads: snap(threads_snapshot(now)),
            host: snap(host_snapshot(now)),
            cloud: snap(cloud_snapshot()),
        }),
    );
}

#[test]
fn thread_rows() {
    let now = Instant::now();
    check(
        "threads",
        &scrape(ThreadsCollector {
            snap: snap(threads_snapshot(now)),
        }),
    );
}

#[test]
fn cloud_rows() {
    check(
        "cloud",
        &scrape(CloudCollector {
            snap: snap(cloud_snapshot()),
        }),
    );
}

#[test]
fn self_rows() {
    let now = Instant::now();
    let reload = ReloadStatus::new();
    reload.mark(false);
    reload.last_success.store(
        1_700_000_000f64.to_bits(),
        std::sync::atomic::Ordering::Relaxed,
    );
    check(
        "self",
        &scrape(SelfCollector {
            host: snap(host_snapshot(now)),
            threads: snap(threads_snapshot(now)),
            containers: snap(containers_snapshot(now)),
            reload: Arc::new(reload),
            start_time: 1_700_000_000.0,
        }),
    );
}

/// The probe encoder over fixed snapshots (the collector itself holds live probe threads).
#[derive(Debug)]
struct FixedProbes(Mutex<Vec<ProbeSnapshot>>, Instant);

impl Collector for FixedProbes {
    fn encode(
        &self,
        mut e: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        super::probe::encode_probes(&mut e, &self.0.lock().unwrap(), self.1)
    }
}

#[test]
fn probe_rows() {
    let now = Instant::now();
    let mut failures: Vec<(&'static str, u64)> = stallwatch_collector::sample::probe::REASONS
        .iter()
        .map(|r| (*r, 0))
        .collect();
    failures[0].1 = 2;
    failures[2].1 = 1;
    // Per bucket: one write under each of 0.01, 0.1, 1 and 10 s, two slower than 60 s.
    let mut per_bucket = [0u64; 16];
    for i in [3, 6, 9, 12] {
        per_bucket[i] = 1;
    }
    per_bucket[15] = 2;
    let bounds = || {
        stallwatch_collector::sample::probe::BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
    };
    let probes = vec![
        ProbeSnapshot {
            path: "/var/lib/docker".into(),
            buckets: bounds().zip(per_bucket).collect(),
            sum: 12.75,
            count: 6,
            in_flight_since: Some(now - Duration::from_secs(5)),
            failures,
            last_duration: Some(Duration::from_millis(40)),
            last_success: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
        },
        ProbeSnapshot {
            path: "/data".into(),
            buckets: bounds().map(|le| (le, 0)).collect(),
            sum: 0.0,
            count: 0,
            in_flight_since: None,
            failures: stallwatch_collector::sample::probe::REASONS
                .iter()
                .map(|r| (*r, 0))
                .collect(),
            last_duration: None,
            last_success: None,
        },
    ];
    check("probe", &scrape(FixedProbes(Mutex::new(probes), now)));
}

/// Empty snapshots, every collector in one registry: only the rows that are always there.
#[test]
fn nothing_present_encodes_only_the_always_present_rows() {
    let mut r = registry();
    r.register_collector(Box::new(HostCollector {
        snap: snap(HostSnapshot::default()),
    }));
    r.register_collector(Box::new(ThreadsCollector {
        snap: snap(ThreadSnapshot::default()),
    }));
    r.register_collector(Box::new(ContainersCollector {
        snap: snap(ContainerSnapshot::default()),
        threads: snap(ThreadSnapshot::default()),
        host: snap(HostSnapshot::default()),
        cloud: snap(CloudSnapshot::default()),
    }));
    r.register_collector(Box::new(CloudCollector {
        snap: snap(CloudSnapshot::default()),
    }));
    check("empty", &text(&r));
}
