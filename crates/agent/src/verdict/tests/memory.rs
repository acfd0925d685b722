//! The memory cause names whose limit it is (measured on the e2e memory scenario).

use stallwatch_collector::cgroup::identity::{Identity, Runtime};
use stallwatch_collector::cgroup::pass::ContainerRow;
use stallwatch_collector::cgroup::ContainerStats;
use stallwatch_collector::proc::pressure::{Pressure, Record};

use super::*;

/// A docker container with this memory usage and limit (MiB) and memory PSI some avg10.
fn mem_container(id: char, usage: u64, limit: Option<u64>, psi: Option<f64>) -> ContainerRow {
    let mut stats = ContainerStats::default();
    stats.memory.usage_bytes = Some(usage << 20);
    stats.memory.limit_bytes = limit.map(|l| l << 20);
    stats.pressure[2] = psi.map(|avg10| Pressure {
        some: Some(Record {
            avg10,
            ..Record::default()
        }),
        full: None,
    });
    ContainerRow {
        identity: Identity {
            container_id: id.to_string().repeat(64),
            runtime: Runtime::Docker,
            pod_uid: None,
            qos: None,
        },
        path: format!("/docker/{}", id.to_string().repeat(64)),
        stats,
        network: None,
        name: Some(id.to_string()),
    }
}

/// Measured on the e2e memory scenario: a container re-reading a file larger than its memory
/// limit makes the node stall on memory; the verdict must say whose limit it is — and not
/// name a container whose page cache merely fills its limit without stalling.
#[test]
fn memory_names_the_containers_at_their_limit_that_stall() {
    let (mut e, mut s, t0) = (engine(), Scene::default(), Instant::now());
    s.containers.taken = Some(SystemTime::now());
    s.containers.containers = std::sync::Arc::new(vec![
        mem_container('a', 31, Some(32), Some(0.15)), // thrashing at its limit
        mem_container('b', 31, Some(32), Some(0.0)),  // full of cache, not stalling
        mem_container('c', 10, Some(32), Some(0.20)), // stalling, far from its limit
        mem_container('d', 900, None, None),          // no limit
        mem_container('e', 63, Some(64), None),       // at its limit, v1: no PSI to ask
    ]);
    let v = run(&mut e, &mut s, t0, 4, |s| {
        s.advance([[0.05, 0.0], [0.3, 0.0], [0.3, 0.1]]);
    });
    let last = v.last().unwrap();
    let m = last
        .causes
        .iter()
        .find(|c| c.cause == Cause::Memory)
        .expect("memory");
    let named: Vec<&str> = m
        .who
        .containers
        .iter()
        .filter_map(|c| c.name.as_deref())
        .collect();
    assert_eq!(named, ["e", "a"], "fullest first; b and c, d left out");
    let ev: Vec<&Evidence> = m
        .evidence
        .iter()
        .filter(|e| e.signal == "container_memory_usage")
        .collect();
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[1].subject.as_deref(), Some("a: 31 of 32 MiB"));
    assert!((ev[1].value - 31.0 / 32.0).abs() < 1e-9 && ev[1].threshold == 0.9);
    assert!(
        m.summary
            .contains("at their memory limit: e: 63 of 64 MiB, a: 31 of 32 MiB"),
        "{}",
        m.summary
    );
    assert!(!m.io);
}
