//! The joined view of the node: what the host sampler, the thread walk, the container pass
//! and the probes last published, joined by exact ids **once per publish** (each sampler's
//! driver runs the join in its publish hook), so that `/metrics`, the API, `stallwatch dstate`
//! and the verdict read one consistent view and nothing joins on the scrape path.
//!
//! The joins (exact ids only, never substrings):
//! - block devices by `major:minor`: kernel name, partition flag and bdi writeback settings
//!   (every device of the diskstats read, unfiltered, so container I/O on a device the
//!   `[disks]` filter hides is still named);
//! - threads in D by container: the walk identified each D thread's container from its
//!   cgroup path ([`crate::proc::tasks`]); counted here per container id;
//! - every source's health in one list.
//!
//! The cloud side (EBS volumes) is attached by the agent, which owns that crate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use crate::bpf::EpisodeSnapshot;
use crate::sample::containers::ContainerSnapshot;
use crate::sample::probe::ProbeSnapshot;
use crate::sample::{HostSnapshot, SourceStatus, ThreadSnapshot};
use crate::sys::bdi::Bdi;

/// A block device as the node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Kernel name (`nvme1n1`, `loop0`).
    pub name: String,
    pub partition: bool,
    /// Its writeback settings (`/sys/class/bdi/<major>:<minor>`), when it has a bdi.
    pub bdi: Option<Bdi>,
}

/// Everything the collector knows about the node, as of one publish. Immutable.
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    /// When this view was joined.
    pub joined: Option<SystemTime>,
    pub host: Arc<HostSnapshot>,
    pub threads: Arc<ThreadSnapshot>,
    pub containers: Arc<ContainerSnapshot>,
    pub probes: Arc<Vec<ProbeSnapshot>>,
    /// Block devices by `(major, minor)`.
    pub devices: HashMap<(u32, u32), Device>,
    /// Threads in D at the last walk, per container id (containers with none are absent).
    pub dstate_by_container: HashMap<String, u64>,
    /// The eBPF episode source (`crate::bpf`): long episodes with stacks, episodes in flight.
    pub episodes: Arc<EpisodeSnapshot>,
}

impl NodeView {
    /// Joins the parts. Pure and cheap (no I/O, linear in devices + D threads).
    pub fn join(
        host: Arc<HostSnapshot>,
        threads: Arc<ThreadSnapshot>,
        containers: Arc<ContainerSnapshot>,
        probes: Arc<Vec<ProbeSnapshot>>,
    ) -> NodeView {
        let bdi: HashMap<(u32, u32), &Bdi> =
            host.bdi.iter().map(|b| ((b.major, b.minor), b)).collect();
        let devices = host
            .all_disks
            .iter()
            .map(|d| {
                let key = (d.stat.major, d.stat.minor);
                let dev = Device {
                    name: d.stat.name.clone(),
                    partition: d.partition,
                    bdi: bdi.get(&key).map(|b| (*b).clone()),
                };
                (key, dev)
            })
            .collect();
        let mut dstate_by_container: HashMap<String, u64> = HashMap::new();
        for c in threads.stuck.iter().filter_map(|d| d.container.as_ref()) {
            *dstate_by_container
                .entry(c.container_id.clone())
                .or_insert(0) += 1;
        }
        NodeView {
            joined: Some(SystemTime::now()),
            episodes: Arc::clone(&threads.episodes),
            host,
            threads,
            containers,
            probes,
            devices,
            dstate_by_container,
        }
    }

    /// The kernel name of device `major:minor`.
    pub fn device_name(&self, major: u32, minor: u32) -> Option<&str> {
        self.devices.get(&(major, minor)).map(|d| d.name.as_str())
    }

    /// The container of the last pass with this id.
    pub fn container(&self, id: &str) -> Option<&crate::cgroup::pass::ContainerRow> {
        self.containers
            .containers
            .iter()
            .find(|r| r.identity.container_id == id)
    }

    /// Threads of the container in D at the last walk (0 when none).
    pub fn dstate_threads_of(&self, container_id: &str) -> u64 {
        self.dstate_by_container
            .get(container_id)
            .copied()
            .unwrap_or(0)
    }

    /// The health of every source: the host's, the walk's and the container pass's (when
    /// enabled), and each configured probe's.
    pub fn sources(&self) -> Vec<&SourceStatus> {
        let mut all: Vec<&SourceStatus> = self.host.sources.iter().collect();
        if self.threads.enabled {
            all.push(&self.threads.status);
        }
        if let Some(s) = &self.episodes.status {
            all.push(s);
        }
        if self.containers.enabled {
            all.push(&self.containers.status);
        }
        all.extend(self.probes.iter().map(|p| &p.status));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::{Identity, Runtime};
    use crate::proc::diskstats::DiskStat;
    use crate::sample::dstate::DThread;
    use crate::sys::block::Disk;
    use std::time::Instant;

    fn disk(name: &str, major: u32, minor: u32, partition: bool) -> Disk {
        Disk {
            stat: DiskStat {
                name: name.into(),
                major,
                minor,
                ..DiskStat::default()
            },
            partition,
        }
    }

    fn d_thread(tid: u32, container: Option<&str>, cgroup: &str) -> DThread {
        DThread {
            pid: tid,
            tid,
            comm: "dd".into(),
            group: Arc::from("dd"),
            wchan: None,
            cgroup: Some(Arc::from(cgroup)),
            container: container.map(|id| {
                Arc::new(Identity {
                    container_id: id.into(),
                    runtime: Runtime::Docker,
                    pod_uid: None,
                    qos: None,
                })
            }),
            kernel_thread: false,
            since: Instant::now(),
            stack: None,
        }
    }

    #[test]
    fn joins_devices_by_number_and_d_threads_by_exact_container_id() {
        let a = "a".repeat(64);
        // A second container whose id *contains* nothing of a's, but whose cgroup path
        // contains a's id as a substring: a substring join would count it for `a`.
        let b = "b".repeat(64);
        let host = HostSnapshot {
            all_disks: Arc::new(vec![
                disk("vda", 254, 0, false),
                disk("vda1", 254, 1, true),
                disk("loop0", 7, 0, false),
            ]),
            bdi: vec![Bdi {
                major: 254,
                minor: 0,
                max_ratio: Some(100),
                ..Bdi::default()
            }],
            ..HostSnapshot::default()
        };
        let threads = ThreadSnapshot {
            stuck: vec![
                d_thread(1, Some(&a), &format!("/docker/{a}")),
                d_thread(2, Some(&a), &format!("/docker/{a}")),
                d_thread(3, Some(&b), &format!("/docker/{b}/{a}")),
                d_thread(4, None, "/system.slice/x.service"),
            ],
            ..ThreadSnapshot::default()
        };
        let v = NodeView::join(
            Arc::new(host),
            Arc::new(threads),
            Arc::default(),
            Arc::default(),
        );
        assert_eq!(v.device_name(254, 1), Some("vda1"));
        assert_eq!(v.device_name(7, 0), Some("loop0"), "unfiltered");
        assert_eq!(v.device_name(8, 0), None);
        assert_eq!(
            v.devices[&(254, 0)].bdi.as_ref().and_then(|b| b.max_ratio),
            Some(100)
        );
        assert!(v.devices[&(7, 0)].bdi.is_none());
        assert_eq!(v.dstate_threads_of(&a), 2);
        assert_eq!(v.dstate_threads_of(&b), 1);
        assert_eq!(v.dstate_threads_of("c"), 0);
        assert_eq!(
            v.dstate_by_container.len(),
            2,
            "the host service is no container"
        );
    }

    #[test]
    fn every_probe_is_a_source() {
        let probe = |dir: &str| ProbeSnapshot {
            path: dir.into(),
            buckets: Vec::new(),
            sum: 0.0,
            count: 0,
            in_flight_since: None,
            failures: Vec::new(),
            last_duration: None,
            last_success: None,
            status: SourceStatus::new(crate::sample::probe::source_name(dir.as_ref())),
        };
        let v = NodeView::join(
            Arc::default(),
            Arc::default(),
            Arc::default(),
            Arc::new(vec![probe("/data"), probe("/var/lib/docker")]),
        );
        let names: Vec<&str> = v.sources().iter().map(|s| s.name.as_ref()).collect();
        assert!(
            names.ends_with(&["probe:/data", "probe:/var/lib/docker"]),
            "{names:?}"
        );
    }
}
