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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::{fixture, repo, write, Agent, Metrics};

/// D-state threads of the fixture: distinct user comms and wait channels (more than the
/// agent's default top-20 of each) plus two kworkers.
pub const D_WORKERS: usize = 30;

/// Threads per worker process.
const THREADS_PER_PROCESS: usize = 100;

/// PID of container `i`'s member process.
fn member_pid(i: usize) -> u32 {
    200_000 + i as u32
}

/// A node's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub containers: usize,
    /// Threads in the whole procfs (init, container members and workers).
    pub threads: usize,
}

/// A generated fixture root (removed on drop).
pub struct FixtureNode {
    pub dir: tempfile::TempDir,
    /// Set to stop the thread of [`FixtureNode::keep_io_stalled`].
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for FixtureNode {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A 64-hex id, distinct per (salt, i).
fn hex_id(salt: u64, i: usize) -> String {
    let mut x = salt ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..4)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            format!("{x:016x}")
        })
        .collect()
}

/// A pod UID (with dashes) from an id.
fn uid_of(id: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &id[0..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..32]
    )
}

/// Container `i`'s cgroup directory, relative to the v2 root, in one of four runtime shapes.
fn container_rel(i: usize, id: &str) -> String {
    let uid_ = uid_of(id).replace('-', "_");
    match i % 4 {
        0 => format!("system.slice/docker-{id}.scope"),
        1 => format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope"
        ),
        2 => format!("kubepods.slice/kubepods-pod{uid_}.slice/crio-{id}.scope"),
        _ => format!("machine.slice/libpod-{id}.scope"),
    }
}

/// One `/proc/<pid>/stat` line (man 5 proc; 52 fields).
fn stat_line(
    pid: u32,
    comm: &str,
    state: char,
    kthread: bool,
    threads: usize,
    start: u64,
) -> String {
    let flags = if kthread { 0x0020_8040u32 } else { 0x0040_0100 };
    let mut s = format!(
        "{pid} ({comm}) {state} 1 {pid} {pid} 0 -1 {flags} 10 0 0 0 5 3 0 0 20 0 {threads} 0 {start} 1000000 100"
    );
    for _ in 0..30 {
        s.push_str(" 0");
    }
    s.push('\n');
    s
}

fn mkdirs(p: &Path) {
    std::fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
}

/// Copies a fixture tree (files, directories and symlinks as symlinks).
fn copy_tree(from: &Path, to: &Path) {
    mkdirs(to);
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ft = e.file_type().unwrap();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if ft.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

fn pressure(some10: f64, full10: f64) -> String {
    format!(
        "some avg10={some10:.2} avg60=1.00 avg300=0.50 total=123456\nfull avg10={full10:.2} avg60=0.80 avg300=0.40 total=65432\n"
    )
}

impl FixtureNode {
    /// Keeps the fixture's `/proc/pressure/io` totals growing as a node stalled on I/O would
    /// (`some` and `full` stall microseconds per second), so the agent's verdict, which reads
    /// the totals' rate, sees a stall; until the node is dropped.
    pub fn keep_io_stalled(&self, some: f64, full: f64) {
        let path = self.dir.path().join("proc/pressure/io");
        let tmp = self.dir.path().join("proc/pressure/.io.tmp");
        let stop = self.stop.clone();
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let us = start.elapsed().as_micros() as f64;
                let text = format!(
                    "some avg10={:.2} avg60=1.00 avg300=0.50 total={}\nfull avg10={:.2} avg60=0.80 avg300=0.40 total={}\n",
                    some * 100.0,
                    123_456 + (us * some) as u64,
                    full * 100.0,
                    65_432 + (us * full) as u64
                );
                // Whole files only: a reader never sees half a write.
                if std::fs::write(&tmp, text).is_ok() {
                    let _ = std::fs::rename(&tmp, &path);
                }
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
        });
    }

    /// Builds the root for `shape`. `io_full_avg10` (percent) goes into `/proc/pressure/io`, so
    /// the fleet test can make a node look stalled.
    pub fn build(shape: Shape, io_full_avg10: f64, salt: u64) -> FixtureNode {
        // tmpfs when there is one: 10k thread directories cost ~30 s on a busy disk, well
        // under a second in memory.
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm
        } else {
            Path::new(env!("CARGO_TARGET_TMPDIR"))
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("stallwatch-card-{}-", std::process::id()))
            .tempdir_in(base)
            .unwrap();
        let root = dir.path();
        let host = fixture("debian12-6.18");
        copy_tree(&host.join("proc"), &root.join("proc"));
        copy_tree(&host.join("sys"), &root.join("sys"));
        let proc_ = root.join("proc");
        mkdirs(&proc_.join("sys/kernel"));
        write(&proc_.join("sys/kernel/osrelease"), "6.18.44-fixture\n");
        write(
            &proc_.join("pressure/io"),
            &pressure(io_full_avg10 + 2.0, io_full_avg10),
        );
        let host_netns = "net:[4026531840]";

        let proc_dir = |pid: u32| {
            let d = proc_.join(pid.to_string());
            mkdirs(&d);
            d
        };
        // init
        let d = proc_dir(1);
        write(&d.join("stat"), &stat_line(1, "systemd", 'S', false, 1, 1));
        write(&d.join("cgroup"), "0::/init.scope\n");
        mkdirs(&d.join("ns"));
        std::os::unix::fs::symlink(host_netns, d.join("ns/net")).unwrap();

        // Containers: a pure v2 tree with every controller enabled.
        let cg = root.join("sys/fs/cgroup");
        mkdirs(&cg);
        write(
            &cg.join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        );
        write(
            &cg.join("cgroup.subtree_control"),
            "cpuset cpu io memory pids\n",
        );
        write(&cg.join("cgroup.procs"), "1\n");
        for i in 0..shape.containers {
            let id = hex_id(salt, i);
            let leaf = cg.join(container_rel(i, &id));
            mkdirs(&leaf);
            let pid = member_pid(i);
            let files: [(&str, String); 11] = [
                ("cgroup.procs", format!("{pid}\n")),
                ("cpu.stat", format!("usage_usec {}\nuser_usec 600000\nsystem_usec 400000\nnr_periods 10\nnr_throttled 2\nthrottled_usec 5000\n", 1_000_000 + i)),
                ("memory.current", "10485760\n".into()),
                ("memory.max", "536870912\n".into()),
                ("memory.stat", "anon 4194304\nfile 6291456\nfile_dirty 4096\nfile_writeback 0\npgmajfault 3\n".into()),
                ("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n".into()),
                ("io.stat", "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n".into()),
                ("pids.current", "1\n".into()),
                ("cpu.pressure", pressure(0.5, 0.0)),
                ("io.pressure", pressure(1.0, 0.5)),
                ("memory.pressure", pressure(0.0, 0.0)),
            ];
            for (f, text) in files {
                write(&leaf.join(f), &text);
            }
            // Its member process: in D for the first three containers (a container's threads
            // in D are attributed to it).
            let d = proc_dir(pid);
            let in_d = i < 3;
            write(
                &d.join("stat"),
                &stat_line(
                    pid,
                    "postgres",
                    if in_d { 'D' } else { 'S' },
                    false,
                    1,
                    100 + i as u64,
                ),
            );
            if in_d {
                write(&d.join("wchan"), "jbd2_log_wait_commit");
            }
            write(
                &d.join("cgroup"),
                &format!("0::/{}\n", container_rel(i, &id)),
            );
            mkdirs(&d.join("net"));
            write(
                &d.join("net/dev"),
                "Inter-|   Receive                                                |  Transmit\n \
                 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
                 lo: 100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n  \
                 eth0: 1520 12 1 2 0 0 0 0 980 9 3 4 0 0 0 0\n",
            );
            mkdirs(&d.join("ns"));
            std::os::unix::fs::symlink(
                format!("net:[{}]", 4_026_600_000u64 + i as u64),
                d.join("ns/net"),
            )
            .unwrap();
        }

        // Workers: processes of up to 100 threads until the node has `threads` threads.
        let mut left = shape.threads.saturating_sub(1 + shape.containers);
        let mut pid = 10_000u32;
        let mut d_left = D_WORKERS;
        let mut kworkers = 2usize;
        while left > 0 {
            let n = left.min(THREADS_PER_PROCESS);
            let d = proc_dir(pid);
            write(
                &d.join("stat"),
                &stat_line(pid, "worker", 'S', false, n, 500),
            );
            write(&d.join("cgroup"), "0::/system.slice/worker.service\n");
            for j in 0..n {
                let tid = pid + j as u32;
                let t = d.join("task").join(tid.to_string());
                mkdirs(&t);
                let (comm, state, kthread, wchan) = if d_left > 0 {
                    d_left -= 1;
                    let k = D_WORKERS - 1 - d_left;
                    (
                        format!("dworker-{k:02}"),
                        'D',
                        false,
                        Some(format!("fixture_wait_{k:02}")),
                    )
                } else if kworkers > 0 && pid == 10_000 && j >= n - 2 {
                    kworkers -= 1;
                    let name = if kworkers == 1 {
                        "kworker/0:1"
                    } else {
                        "kworker/u8:2"
                    };
                    (name.to_string(), 'D', true, Some("io_schedule".to_string()))
                } else if j == 1 {
                    ("worker".to_string(), 'R', false, None)
                } else {
                    ("worker".to_string(), 'S', false, None)
                };
                write(
                    &t.join("stat"),
                    &stat_line(tid, &comm, state, kthread, n, 500 + j as u64),
                );
                if let Some(w) = wchan {
                    write(&t.join("wchan"), &w);
                }
            }
            left -= n;
            pid += THREADS_PER_PROCESS as u32;
        }
        FixtureNode {
            dir,
            stop: Default::default(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The agent's path flags for this root.
    pub fn path_args(&self) -> Vec<String> {
        let r = self.root();
        vec![
            format!("--path.procfs={}", r.join("proc").display()),
            format!("--path.sysfs={}", r.join("sys").display()),
            format!("--path.rootfs={}", r.display()),
        ]
    }
}

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
