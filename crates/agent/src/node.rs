//! The node as the agent serves it: the collector's joined [`NodeView`] plus the cloud side,
//! joined again by exact ids (device name → EBS volume id), once per publish of any sampler
//! (the cloud sampler's included).
//! `/metrics`, `/healthz` and (soon) the API and the verdict read the one `ArcSwap<Node>`;
//! nothing joins on the scrape path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use stallwatch_cloud::CloudSnapshot;
use stallwatch_collector::node::NodeView;
use stallwatch_collector::sample::containers::ContainerSnapshot;
use stallwatch_collector::sample::driver::Hook;
use stallwatch_collector::sample::probe::Probes;
use stallwatch_collector::sample::{HostSnapshot, SourceStatus, ThreadSnapshot};

/// Everything the agent knows about the node, as of one join. Immutable.
#[derive(Debug, Default)]
pub struct Node {
    pub view: NodeView,
    pub cloud: Arc<CloudSnapshot>,
    /// EBS volume id by kernel device name, for every device the cloud side has mapped (NVMe
    /// serial, Xen attachment or `[[cloud.volume]]`): one lookup for `disk_info` and for
    /// container I/O.
    pub volumes: HashMap<String, String>,
}

impl Node {
    fn join(view: NodeView, cloud: Arc<CloudSnapshot>) -> Node {
        let mut volumes = HashMap::new();
        let names = cloud
            .disks
            .iter()
            .map(|d| d.name.as_str())
            .chain(view.devices.values().map(|d| d.name.as_str()))
            .chain(cloud.volumes.iter().filter_map(|v| v.device.as_deref()));
        for name in names {
            if let Some(id) = cloud.volume_of_device(name) {
                volumes.insert(name.to_string(), id.to_string());
            }
        }
        Node {
            view,
            cloud,
            volumes,
        }
    }

    /// A node that knows only a host snapshot (tests of the web layer).
    #[cfg(test)]
    pub fn of_host(host: HostSnapshot) -> Node {
        let view = NodeView::join(
            Arc::new(host),
            Arc::default(),
            Arc::default(),
            Arc::default(),
        );
        Node::join(view, Arc::default())
    }

    /// A node joined from these parts (tests of the encoders).
    #[cfg(test)]
    pub fn of(view: NodeView, cloud: CloudSnapshot) -> Node {
        Node::join(view, Arc::new(cloud))
    }

    /// A node that knows only a cloud snapshot (tests of the cloud encoder).
    #[cfg(test)]
    pub fn of_cloud(cloud: CloudSnapshot) -> Node {
        Node::join(NodeView::default(), Arc::new(cloud))
    }

    /// The health of every source: the collector's (host, walk, container pass) and the cloud
    /// side's that are on (`cloud_describe`, `cloud_poll`, `cloud_nvme`, and `cloud_imds`
    /// while discovery is pending).
    pub fn sources(&self) -> Vec<&SourceStatus> {
        let mut all = self.view.sources();
        all.extend(self.cloud.sources.iter());
        all
    }

    /// The EBS volume behind a kernel device name.
    pub fn volume_of(&self, device: &str) -> Option<&str> {
        self.volumes.get(device).map(String::as_str)
    }
}

/// What the samplers publish, and the joined node.
pub struct Parts {
    pub host: Arc<ArcSwap<HostSnapshot>>,
    pub threads: Arc<ArcSwap<ThreadSnapshot>>,
    pub containers: Arc<ArcSwap<ContainerSnapshot>>,
    pub cloud: Arc<ArcSwap<CloudSnapshot>>,
    pub probes: Arc<Mutex<Probes>>,
    pub node: Arc<ArcSwap<Node>>,
    /// Serialises joins: two samplers publishing at once must not store an older join over a
    /// newer one. Held for the join only (no I/O, well under a millisecond).
    joining: Mutex<()>,
}

impl Parts {
    pub fn new(probes: Arc<Mutex<Probes>>) -> Arc<Parts> {
        Arc::new(Parts {
            host: Arc::new(ArcSwap::from_pointee(HostSnapshot::default())),
            threads: Arc::new(ArcSwap::from_pointee(ThreadSnapshot::default())),
            containers: Arc::new(ArcSwap::from_pointee(ContainerSnapshot::default())),
            cloud: Arc::new(ArcSwap::from_pointee(CloudSnapshot::default())),
            probes,
            node: Arc::new(ArcSwap::from_pointee(Node::default())),
            joining: Mutex::new(()),
        })
    }

    /// Joins the latest parts into a new node and publishes it.
    pub fn join(&self) {
        let _one = self.joining.lock().unwrap_or_else(|e| e.into_inner());
        // `snapshot` only loads what the probe sampler last published (it never waits on a
        // write); a reload reconciling the probes right now keeps those of the last join.
        let probes = match self.probes.try_lock() {
            Ok(p) => Arc::new(p.snapshot()),
            Err(_) => Arc::clone(&self.node.load().view.probes),
        };
        let view = NodeView::join(
            self.host.load_full(),
            self.threads.load_full(),
            self.containers.load_full(),
            probes,
        );
        self.node
            .store(Arc::new(Node::join(view, self.cloud.load_full())));
    }

    /// The hook a sampler runs after each publish.
    pub fn hook(self: &Arc<Parts>) -> Hook {
        let me = Arc::clone(self);
        Arc::new(move || me.join())
    }

    /// The host sampler's hook: the join, then `judge` over the joined node (the verdict and
    /// the flight recorder: pure, once per host tick), then `follow` (the cloud sampler's
    /// wake-up: its credit model advances from the reading just published, and joins again).
    pub fn host_hook(
        self: &Arc<Parts>,
        judge: impl Fn(&Node) + Send + Sync + 'static,
        follow: Hook,
    ) -> Hook {
        let me = Arc::clone(self);
        Arc::new(move || {
            me.join();
            judge(&me.node.load());
            follow();
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sources_are_the_collectors_then_the_clouds() {
        let host = HostSnapshot {
            sources: vec![SourceStatus::new("stat"), SourceStatus::new("meminfo")],
            ..HostSnapshot::default()
        };
        let mut node = Node::of_host(host);
        node.cloud = Arc::new(CloudSnapshot {
            sources: vec![SourceStatus::new("cloud_describe")],
            ..CloudSnapshot::default()
        });
        let names: Vec<&str> = node.sources().iter().map(|s| &*s.name).collect();
        assert_eq!(names, ["stat", "meminfo", "cloud_describe"]);
    }
}
