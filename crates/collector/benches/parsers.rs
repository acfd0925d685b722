//! Parser and sampler-pass benchmarks.
//!
//! - `parse/<file>`: each pure parser over the real-machine fixture (`tests/fixtures/debian12-6.18`).
//! - `host_pass_real_proc`: `HostReaders::read_all` on the live `/proc` and `/sys`: one sampler
//!   pass, every fast host source read and parsed once, in sequence, with the readers' caches
//!   (sysfs partition flags) warm as in the running sampler. This is the "CPU per pass" figure.
//! - `host_pass_fixture_debian12`: the same pass on the fixture tree, which is on a regular filesystem.
//!
//! - `container_pass/{stallwatch,std_floor}` (root, cgroup v1 memory hierarchy): 200 container
//!   cgroups, half `/docker/<id>`, half `/kubepods/burstable/pod<uid>/<id>`, each holding one
//!   `sleep`, in every v1 hierarchy and the unified tree. `stallwatch` is one full container
//!   pass (discovery + every counter + network); `std_floor` is a plain loop that lists the same
//!   directories and reads the same files with `std::fs` and parses nothing: the floor the pass
//!   is compared against.
//!
//! Quick run: `cargo bench -p stallwatch-collector --bench parsers -- --quick`.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use stallwatch_collector::proc::{diskstats, loadavg, meminfo, pressure, stat, sys_vm, vmstat};
use stallwatch_collector::sample::host::{read_all, HostReaders};
use stallwatch_collector::Roots;

macro_rules! fixture {
    ($rel:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/debian12-6.18/",
            $rel
        ))
    };
}

const STAT: &str = fixture!("proc/stat");
const LOADAVG: &str = fixture!("proc/loadavg");
const PRESSURE_IO: &str = fixture!("proc/pressure/io");
const MEMINFO: &str = fixture!("proc/meminfo");
const VMSTAT: &str = fixture!("proc/vmstat");
const DISKSTATS: &str = fixture!("proc/diskstats");
const SYS_VM: &str = fixture!("proc/sys/vm/dirty_expire_centisecs");

/// Benchmarks one parser, after checking it accepts the input (an error path is not the hot path).
fn bench_parse<T, E: std::fmt::Debug>(
    c: &mut Criterion,
    name: &str,
    text: &'static str,
    parse: fn(&str) -> Result<T, E>,
) {
    if let Err(e) = parse(text) {
        panic!("{name}: fixture does not parse: {e:?}");
    }
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function(name, |b| b.iter(|| parse(black_box(text))));
    g.finish();
}

fn parsers(c: &mut Criterion) {
    bench_parse(c, "stat", STAT, stat::parse);
    bench_parse(c, "loadavg", LOADAVG, loadavg::parse);
    bench_parse(c, "pressure_io", PRESSURE_IO, pressure::parse);
    bench_parse(c, "meminfo", MEMINFO, meminfo::parse);
    bench_parse(c, "vmstat", VMSTAT, vmstat::parse);
    bench_parse(c, "diskstats", DISKSTATS, diskstats::parse);
    bench_parse(c, "sys_vm", SYS_VM, sys_vm::parse);
}

fn host_pass(c: &mut Criterion) {
    let live = Roots::default();
    for (name, r) in read_all(&live) {
        if let Err(e) = r {
            eprintln!("host_pass_real_proc: source {name} fails on this host: {e}");
        }
    }
    let mut readers = HostReaders::new();
    c.bench_function("host_pass_real_proc", |b| {
        b.iter(|| readers.read_all(black_box(&live)))
    });

    let base = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/debian12-6.18"
    ));
    let fixture = Roots {
        procfs: base.join("proc"),
        sysfs: base.join("sys"),
        cgroupfs: base.join("sys/fs/cgroup"),
        rootfs: base.to_path_buf(),
    };
    let mut readers = HostReaders::new();
    c.bench_function("host_pass_fixture_debian12", |b| {
        b.iter(|| readers.read_all(black_box(&fixture)))
    });
}

/// 200 fake containers (cgroup dirs + one `sleep` each), removed on drop.
struct Containers {
    dirs: Vec<std::path::PathBuf>,
    parents: Vec<std::path::PathBuf>,
    children: Vec<std::process::Child>,
}

impl Containers {
    fn make(n: usize) -> Option<Containers> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !Path::new("/sys/fs/cgroup/memory").is_dir() {
            eprintln!("container_pass: needs root and a cgroup v1 memory hierarchy; skipped");
            return None;
        }
        let hierarchies: Vec<std::path::PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.join("cgroup.procs").exists() && !p.is_symlink())
            .collect();
        let mut c = Containers {
            dirs: Vec::new(),
            parents: Vec::new(),
            children: Vec::new(),
        };
        for i in 0..n {
            let id = format!("{:064x}", 0xbe4c_0000_u64 + i as u64);
            let rel = if i % 2 == 0 {
                format!("docker/{id}")
            } else {
                format!(
                    "kubepods/burstable/pod1b4e28ba-2fa1-11d2-883f-{:012x}/{id}",
                    i
                )
            };
            let child = std::process::Command::new("sleep")
                .arg("600")
                .spawn()
                .ok()?;
            for h in &hierarchies {
                let d = h.join(&rel);
                let mut p = d.parent().map(|p| p.to_path_buf());
                while let Some(pp) = p {
                    if pp == *h || pp.exists() {
                        break;
                    }
                    c.parents.push(pp.clone());
                    p = pp.parent().map(|x| x.to_path_buf());
                }
                if std::fs::create_dir_all(&d).is_ok() {
                    let _ = std::fs::write(d.join("cgroup.procs"), child.id().to_string());
                    c.dirs.push(d);
                }
            }
            c.children.push(child);
        }
        Some(c)
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        for ch in &mut self.children {
            let _ = ch.kill();
            let _ = ch.wait();
        }
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
        self.parents
            .sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        self.parents.dedup();
        for p in &self.parents {
            let _ = std::fs::remove_dir(p);
        }
    }
}

/// Lists the same directories and reads the same files a pass does, parsing nothing.
fn std_floor(reference: &Path, ids: &[(String, String)], buf: &mut Vec<u8>) -> usize {
    use std::io::Read;
    const V1: &[(&str, &str)] = &[
        ("cpuacct", "cpuacct.stat"),
        ("cpuacct", "cpuacct.usage"),
        ("cpu", "cpu.stat"),
        ("memory", "memory.usage_in_bytes"),
        ("memory", "memory.limit_in_bytes"),
        ("memory", "memory.stat"),
        ("memory", "memory.oom_control"),
        ("blkio", "blkio.throttle.io_service_bytes"),
        ("blkio", "blkio.throttle.io_serviced"),
        ("pids", "pids.current"),
        ("memory", "cgroup.procs"),
    ];
    const UNIFIED: &[&str] = &[
        "cpu.stat",
        "memory.current",
        "memory.max",
        "memory.stat",
        "memory.events",
        "io.stat",
        "pids.current",
        "cpu.pressure",
        "io.pressure",
        "memory.pressure",
    ];
    let mut n = 0;
    // Discovery: the directories holding containers, from the reference hierarchy.
    for d in ["", "docker", "kubepods", "kubepods/burstable"] {
        if let Ok(rd) = std::fs::read_dir(reference.join(d)) {
            for e in rd.flatten() {
                n += e.file_name().len();
                if d == "kubepods/burstable" {
                    if let Ok(rd2) = std::fs::read_dir(e.path()) {
                        n += rd2.count();
                    }
                }
            }
        }
    }
    fn read(p: std::path::PathBuf, buf: &mut Vec<u8>) -> usize {
        buf.clear();
        std::fs::File::open(p)
            .and_then(|mut f| f.read_to_end(buf))
            .unwrap_or(0)
    }
    for (rel, pid) in ids {
        for (ctl, file) in V1 {
            n += read(
                Path::new("/sys/fs/cgroup").join(ctl).join(rel).join(file),
                buf,
            );
        }
        for file in UNIFIED {
            n += read(
                Path::new("/sys/fs/cgroup/unified").join(rel).join(file),
                buf,
            );
        }
        n += read(Path::new("/proc").join(pid).join("net/dev"), buf);
        n += std::fs::read_link(Path::new("/proc").join(pid).join("ns/net"))
            .map(|l| l.as_os_str().len())
            .unwrap_or(0);
    }
    n
}

fn container_pass(c: &mut Criterion) {
    let Some(made) = Containers::make(200) else {
        return;
    };
    let roots = Roots::default();
    let pass = stallwatch_collector::cgroup::pass::pass(&roots, 1000);
    let ours: Vec<(String, String)> = pass
        .rows
        .iter()
        .filter(|r| r.identity.container_id.starts_with("00000000"))
        .map(|r| {
            (
                r.path.trim_start_matches('/').to_string(),
                r.stats.first_pid.unwrap_or(0).to_string(),
            )
        })
        .collect();
    eprintln!(
        "container_pass: {} containers in the pass, {} of them ours",
        pass.rows.len(),
        ours.len()
    );
    let reference = Path::new("/sys/fs/cgroup/memory");
    let mut buf = Vec::with_capacity(8192);
    let mut g = c.benchmark_group("container_pass");
    g.sample_size(20);
    g.bench_function("stallwatch", |b| {
        b.iter(|| stallwatch_collector::cgroup::pass::pass(black_box(&roots), 1000))
    });
    g.bench_function("std_floor", |b| {
        b.iter(|| std_floor(black_box(reference), &ours, &mut buf))
    });
    g.finish();
    drop(made);
}

criterion_group!(benches, parsers, host_pass, container_pass);
criterion_main!(benches);
