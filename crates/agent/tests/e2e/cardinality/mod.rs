//! The cardinality budget (issue 17, `docs/cardinality.md`): how many series one node exports,
//! counted from the real `/metrics` of the real binary pointed at generated fixture roots.
//!
//! A series count is deterministic given the node's shape, so this is not a timed test: each
//! shape (0, 50, 200, 500 containers × 1k and 10k threads) is built as a fixture root in a temp
//! dir (the `debian12-6.18` host files, plus a procfs with the threads and a pure cgroup v2
//! tree with the containers), the agent runs on it with the production defaults (cloud off,
//! one `[[probe]]`), and the series of its scrape are counted. The test fails when a shape
//! exports more than the budget `docs/cardinality.md` documents for it, and when the doc's
//! budgets disagree with the doc's own formula.
//!
//! The shapes are the worst case per container the agent knows: cgroup v2 with every
//! controller and PSI, each container in its own network namespace with one interface, I/O on
//! one device; four runtimes in rotation (docker systemd driver, containerd under the kubelet's
//! systemd driver, CRI-O in a guaranteed pod, podman). Threads: 31 groups and 31 wait channels
//! in D (more than the top-20 of each), so the fold into `other` is exercised; every other
//! thread sleeps, one runs.

mod fixture;

use fixture::mkdirs;
pub use fixture::{FixtureNode, Shape};

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::{repo, write, Agent, Metrics};

/// The metric family of a sample line (`_bucket`/`_sum`/`_count` of histograms folded).
fn family_of(series: &str) -> String {
    let name = series.split('{').next().unwrap_or(series);
    for suf in ["_bucket", "_sum", "_count"] {
        if let Some(b) = name.strip_suffix(suf) {
            if b.ends_with("_seconds") {
                return b.to_string();
            }
        }
    }
    name.to_string()
}

/// Series per family.
pub fn families(m: &Metrics) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (s, _) in &m.series {
        *out.entry(family_of(s)).or_insert(0) += 1;
    }
    out
}

/// The sum of a family's series (`name` or `name{…}`).
pub fn family_sum(m: &Metrics, name: &str) -> f64 {
    m.series
        .iter()
        .filter(|(k, _)| k == name || k.strip_prefix(name).is_some_and(|r| r.starts_with('{')))
        .map(|(_, v)| v)
        .sum()
}

/// Runs the agent on `node` and returns its scrape once every source has been read, the
/// container pass and thread walk have seen the whole shape, a probe write has completed, and
/// two scrapes a second apart have the same series.
fn measure(shape: Shape, node: &FixtureNode, cfg: &Path) -> Metrics {
    let mut args = node.path_args();
    args.push(format!("--config.file={}", cfg.display()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(&args);
    let want_containers = shape.containers as f64;
    let want_threads = shape.threads as f64;
    agent.wait_for(Duration::from_secs(60), "the whole shape read", |m| {
        let containers = family_sum(m, "stallwatch_containers");
        let threads = family_sum(m, "stallwatch_threads");
        containers == want_containers
            && threads == want_threads
            && m.get("stallwatch_snapshot_age_seconds{source=\"containers\"}")
                .is_some()
            && m.series
                .iter()
                .any(|(k, v)| k.starts_with("stallwatch_probe_write_seconds_count") && *v >= 1.0)
            && m.series
                .iter()
                .any(|(k, _)| k.starts_with("stallwatch_dstate_threads{group=\"other\""))
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = Metrics::parse(&agent.scrape());
    loop {
        std::thread::sleep(Duration::from_millis(1100));
        let m = Metrics::parse(&agent.scrape());
        if m.series.len() == last.series.len() {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "series count does not settle: {} vs {}",
            m.series.len(),
            last.series.len()
        );
        last = m;
    }
}

/// The shapes of the budget table.
pub const SHAPES: [Shape; 8] = [
    Shape {
        containers: 0,
        threads: 1_000,
    },
    Shape {
        containers: 50,
        threads: 1_000,
    },
    Shape {
        containers: 200,
        threads: 1_000,
    },
    Shape {
        containers: 500,
        threads: 1_000,
    },
    Shape {
        containers: 0,
        threads: 10_000,
    },
    Shape {
        containers: 50,
        threads: 10_000,
    },
    Shape {
        containers: 200,
        threads: 10_000,
    },
    Shape {
        containers: 500,
        threads: 10_000,
    },
];

/// `| 50 | 1000 | 2345 |` rows of the doc's budget table: (containers, threads) → budget.
fn documented_budgets(doc: &str) -> BTreeMap<(usize, usize), usize> {
    let mut out = BTreeMap::new();
    let mut inside = false;
    for line in doc.lines() {
        if line.starts_with("<!-- budget-table -->") {
            inside = true;
            continue;
        }
        if line.starts_with("<!-- /budget-table -->") {
            break;
        }
        if !inside {
            continue;
        }
        let cells: Vec<String> = line
            .split('|')
            .map(|c| c.trim().replace([',', '`'], ""))
            .collect();
        if cells.len() < 5 {
            continue;
        }
        if let (Ok(c), Ok(t), Ok(b)) = (cells[1].parse(), cells[2].parse(), cells[3].parse()) {
            out.insert((c, t), b);
        }
    }
    out
}

/// `| `NAME` | 123 |` rows of the doc's constants table.
fn documented_constants(doc: &str) -> BTreeMap<String, usize> {
    let re = regex::Regex::new(r"^\| `([A-Za-z_0-9]+)` \| ([0-9,]+) \|").unwrap();
    doc.lines()
        .filter_map(|l| re.captures(l))
        .map(|c| (c[1].to_string(), c[2].replace(',', "").parse().unwrap()))
        .collect()
}

/// What the fixture host has besides its containers: one exported disk (`vda`; the loop, ram
/// and zram devices are filtered by default), overlay mounts on two upper devices, one probe,
/// three thread states (R, S, D) and more D groups and wait channels than the top-20 of each.
const FIXTURE_DISKS: usize = 1;
const FIXTURE_OVERLAY_DEVICES: usize = 2;
const FIXTURE_PROBES: usize = 1;
const FIXTURE_STATES: usize = 3;

/// The doc's formula for the fixture shapes (one I/O device and one interface per container;
/// the thread count does not appear: no series is per thread).
fn formula(k: &BTreeMap<String, usize>, shape: Shape) -> usize {
    let get = |n: &str| {
        *k.get(n)
            .unwrap_or_else(|| panic!("docs/cardinality.md has no constant `{n}`"))
    };
    let per_container =
        get("CONTAINER") + get("CONTAINER_PSI") + get("CONTAINER_IO") + get("CONTAINER_NET");
    get("HOST")
        + get("DISK") * FIXTURE_DISKS
        + get("OVERLAY") * FIXTURE_OVERLAY_DEVICES
        + get("PROBE") * FIXTURE_PROBES
        + FIXTURE_STATES
        + get("DSTATE_FOLDED")
        + shape.containers.min(get("RUNTIMES"))
        + shape.containers * per_container
}

#[test]
fn cardinality_every_shape_stays_within_the_documented_budget() {
    let doc_path = repo().join("docs/cardinality.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    let budgets = documented_budgets(&doc);
    let constants = documented_constants(&doc);
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let probe = tmp.path().join("probe");
    mkdirs(&probe);
    let cfg = tmp.path().join("cfg.toml");
    write(
        &cfg,
        &format!(
            "# Production defaults, except: no cloud (hermetic) and one sync-write probe.\n\
             [cloud]\nenabled = false\n\n[[probe]]\npath = \"{}\"\nsize = \"4KiB\"\ninterval = \"1s\"\n",
            probe.display()
        ),
    );
    let mut table = String::new();
    let mut problems = Vec::new();
    let mut by_family: Vec<(Shape, BTreeMap<String, usize>)> = Vec::new();
    for (n, shape) in SHAPES.iter().copied().enumerate() {
        let t0 = Instant::now();
        let node = FixtureNode::build(shape, 8.75, 17 + n as u64);
        let built = t0.elapsed();
        let m = measure(shape, &node, &cfg);
        let got = m.series.len();
        eprintln!(
            "cardinality: {shape:?}: {got} series (fixture built in {built:?}, measured in {:?})",
            t0.elapsed() - built
        );
        let _ = writeln!(
            table,
            "| {} | {} | {} |",
            shape.containers, shape.threads, got
        );
        let fam = families(&m);
        by_family.push((shape, fam));
        match budgets.get(&(shape.containers, shape.threads)) {
            None => problems.push(format!("{shape:?}: no budget row in docs/cardinality.md")),
            Some(&b) if got > b => problems.push(format!(
                "{shape:?}: {got} series, over the documented budget of {b}: a change added series per node; \
                 if that is intended, update the constants and budgets in docs/cardinality.md"
            )),
            Some(&b) => {
                if got < b {
                    eprintln!("cardinality: note: {shape:?} exports {got} < budget {b}: the budget can be lowered");
                }
                let f = formula(&constants, shape);
                if f != b {
                    problems.push(format!("{shape:?}: the documented budget {b} is not the doc's formula ({f})"));
                }
            }
        }
    }
    // The per-family breakdown of the largest shape, to update the doc from.
    if let Some((s, fam)) = by_family.last() {
        eprintln!("cardinality: series per family at {s:?}:");
        for (f, n) in fam {
            eprintln!("  {n:6}  {f}");
        }
    }
    // No series is per thread: 1k and 10k threads export the same set.
    for c in [0, 50, 200, 500] {
        let at = |t: usize| {
            by_family
                .iter()
                .find(|(s, _)| s.containers == c && s.threads == t)
                .map(|(_, f)| f.clone())
        };
        if at(1_000) != at(10_000) {
            problems.push(format!(
                "{c} containers: 1k and 10k threads export different series"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\nmeasured (containers | threads | series):\n{table}",
        problems.join("\n")
    );
}

/// `PathBuf` of the generated root's cgroup tree (used by the fleet test's agents too).
#[allow(dead_code)]
pub fn cgroup_root(node: &FixtureNode) -> PathBuf {
    node.root().join("sys/fs/cgroup")
}
