//! Every collector encoded over a synthetic snapshot in which every optional field is present
//! (`snapshots.rs`), compared with `testdata/<collector>.prom` (`UPDATE_GOLDEN=1` rewrites
//! them). The fixture goldens (`tests/golden/`) only reach the host rows a fixture tree can
//! give; these reach the container, cloud, thread and probe rows too, so a refactor of the
//! encoders that changes one byte of any family shows here.

pub(super) mod snapshots;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::registry::Registry;
use stallwatch_collector::node::NodeView;
use stallwatch_collector::sample::probe::ProbeSnapshot;

use super::cloud::CloudCollector;
use super::containers::ContainersCollector;
use super::host::HostCollector;
use super::selfmon::{ReloadStatus, SelfCollector};
use super::threads::ThreadsCollector;
use crate::node::Node;
use snapshots::{
    cloud_snapshot, containers_snapshot, host_snapshot, probe_snapshots, threads_snapshot,
};

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

/// One collector's scrape, OpenMetrics with `+Inf` spelled right, volatile values masked.
pub(super) fn scrape(c: impl Collector) -> String {
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

/// Everything joined, as the agent's publish hook joins it.
fn node(now: Instant) -> Arc<ArcSwap<Node>> {
    let view = NodeView::join(
        Arc::new(host_snapshot(now)),
        Arc::new(threads_snapshot(now)),
        Arc::new(containers_snapshot(now)),
        Arc::new(probe_snapshots(now)),
    );
    snap(Node::of(view, cloud_snapshot()))
}

fn host() -> String {
    scrape(HostCollector {
        node: node(Instant::now()),
    })
}

fn containers() -> String {
    scrape(ContainersCollector {
        node: node(Instant::now()),
    })
}

fn threads() -> String {
    scrape(ThreadsCollector {
        node: node(Instant::now()),
    })
}

fn cloud() -> String {
    scrape(CloudCollector {
        node: node(Instant::now()),
    })
}

fn agent() -> String {
    let reload = ReloadStatus::new();
    reload.mark(false);
    reload.last_success.store(
        1_700_000_000f64.to_bits(),
        std::sync::atomic::Ordering::Relaxed,
    );
    scrape(SelfCollector {
        node: node(Instant::now()),
        reload: Arc::new(reload),
        start_time: 1_700_000_000.0,
    })
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

fn probes() -> String {
    let now = Instant::now();
    scrape(FixedProbes(Mutex::new(probe_snapshots(now)), now))
}

#[test]
fn host_rows() {
    check("host", &host());
}

#[test]
fn container_rows() {
    check("containers", &containers());
}

#[test]
fn thread_rows() {
    check("threads", &threads());
}

#[test]
fn cloud_rows() {
    check("cloud", &cloud());
}

#[test]
fn self_rows() {
    check("self", &agent());
}

#[test]
fn probe_rows() {
    check("probe", &probes());
}

/// Every family the full snapshots give is listed in docs/metrics.md. (The e2e test checks
/// the families of real and fixture scrapes; these also reach the cloud, container and probe
/// families that a test machine does not have.)
#[test]
fn every_family_is_documented() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/metrics.md"),
    )
    .unwrap();
    let all = [host(), containers(), threads(), cloud(), agent(), probes()].concat();
    let classic = super::exposition::openmetrics_to_text(&all);
    let missing: Vec<&str> = classic
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .filter(|n| !doc.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/metrics.md does not list {missing:?}"
    );
}

/// Empty snapshots, every collector in one registry: only the rows that are always there.
#[test]
fn nothing_present_encodes_only_the_always_present_rows() {
    let mut r = registry();
    let node = snap(Node::default());
    r.register_collector(Box::new(HostCollector { node: node.clone() }));
    r.register_collector(Box::new(ThreadsCollector { node: node.clone() }));
    r.register_collector(Box::new(ContainersCollector { node: node.clone() }));
    r.register_collector(Box::new(CloudCollector { node }));
    check("empty", &text(&r));
}
