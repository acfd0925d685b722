//! Parser and sampler-pass benchmarks.
//!
//! - `parse/<file>`: each pure parser over the real-machine fixture (`tests/fixtures/debian12-6.18`).
//! - `host_pass_real_proc`: `HostReaders::read_all` on the live `/proc` and `/sys`: one sampler
//!   pass, every fast host source read and parsed once, in sequence, with the readers' caches
//!   (sysfs partition flags) warm as in the running sampler. This is the "CPU per pass" figure.
//! - `host_pass_fixture_debian12`: the same pass on the fixture tree, which is on a regular filesystem.
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

criterion_group!(benches, parsers, host_pass);
criterion_main!(benches);
