//! `stallwatch_node_info`: one series per node, value 1, carrying the labels fleet queries join
//! on (`* on (cluster, job, instance) group_left (availability_zone, instance_type)
//! stallwatch_node_info`): the EC2 instance id, instance type, availability zone and region from
//! the cloud snapshot (empty off EC2 or until discovery answers), and the kernel release.
//!
//! The kernel release is `<procfs>/sys/kernel/osrelease`, read once when the agent starts (the
//! running kernel cannot change under a running agent), never on the scrape path. It honours
//! `--path.procfs`, so a fixture root or a container's `/host/proc` gives its own release.
//!
//! No `cluster` label: a node does not know which cluster it belongs to, the scraper does.
//! The convention is Prometheus's `external_labels: {cluster: …}` on the agent-mode Prometheus
//! (or vmagent) of each cluster, which puts `cluster` on *every* series, so fleet queries
//! aggregate `by (cluster)` without a join. A `cluster` set in the agent's config too would
//! collide with it: the scrape would rename ours to `exported_cluster` (or, with
//! `honor_labels`, let a node claim any cluster). See docs/fleet.md.
//!
//! Cardinality: one series per node. The label values change only when the agent restarts on
//! a new kernel or when cloud discovery completes (empty → filled, once, seconds after start).

use std::borrow::Cow;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use stallwatch_collector::proc::sys_kernel;
use stallwatch_collector::Roots;
use tracing::warn;

use super::Labels;
use crate::node::Node;

/// Reads the kernel release ([`sys_kernel::read_release`]); empty when it is absent (a
/// fixture root without it) or unreadable (logged once: this runs once, at start-up).
pub fn read_kernel_release(roots: &Roots) -> String {
    match sys_kernel::read_release(roots) {
        Ok(r) => r.unwrap_or_default(),
        Err(error) => {
            warn!(%error, "Cannot read the kernel release; stallwatch_node_info has kernel_release=\"\".");
            String::new()
        }
    }
}

#[derive(Debug)]
pub struct NodeInfoCollector {
    kernel_release: String,
    node: Arc<ArcSwap<Node>>,
}

impl NodeInfoCollector {
    /// Reads the kernel release now (once); the cloud labels are taken from the joined node
    /// at each scrape (an `ArcSwap` load, no I/O).
    pub fn new(roots: &Roots, node: Arc<ArcSwap<Node>>) -> Self {
        NodeInfoCollector {
            kernel_release: read_kernel_release(roots),
            node,
        }
    }
}

impl Collector for NodeInfoCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let node = self.node.load();
        let i = node.cloud.instance.as_ref();
        let v = |f: fn(&stallwatch_cloud::snapshot::Instance) -> &str| {
            Cow::Owned(i.map_or("", f).to_string())
        };
        let labels: Labels<'_> = vec![
            ("instance_id", v(|i| &i.instance_id)),
            ("instance_type", v(|i| &i.instance_type)),
            ("availability_zone", v(|i| &i.availability_zone)),
            ("region", v(|i| &i.region)),
            (
                "kernel_release",
                Cow::Borrowed(self.kernel_release.as_str()),
            ),
        ];
        let mut m = e.encode_descriptor(
            "node",
            "The node, value 1, with the labels fleet queries join on: EC2 instance id and type, availability zone, region (empty off EC2) and kernel release.",
            None,
            MetricType::Info,
        )?;
        m.encode_info(&labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use stallwatch_cloud::snapshot::Instance;
    use stallwatch_cloud::CloudSnapshot;

    fn scrape(c: NodeInfoCollector) -> String {
        let mut r = Registry::with_prefix("stallwatch");
        r.register_collector(Box::new(c));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        crate::metrics::exposition::openmetrics_to_text(&out)
    }

    fn root_with_release(text: Option<&[u8]>) -> (tempfile::TempDir, Roots) {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("proc/sys/kernel");
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(text) = text {
            std::fs::write(dir.join("osrelease"), text).unwrap();
        }
        let roots = Roots {
            procfs: t.path().join("proc"),
            ..Roots::default()
        };
        (t, roots)
    }

    #[test]
    fn the_release_is_read_through_the_collector_reader() {
        let (_t, roots) = root_with_release(Some(b"6.18.4\xff\xfe-foo\n"));
        assert_eq!(read_kernel_release(&roots), "6.18.4-foo");
        let (_t, roots) = root_with_release(None);
        assert_eq!(read_kernel_release(&roots), "");
    }

    #[test]
    fn off_ec2_the_instance_labels_are_empty_and_the_release_is_read_once() {
        let (t, roots) = root_with_release(Some(b"6.18.44-test\n"));
        let c = NodeInfoCollector::new(&roots, Arc::new(ArcSwap::from_pointee(Node::default())));
        // Read at construction: removing the file afterwards changes nothing.
        std::fs::remove_file(t.path().join("proc/sys/kernel/osrelease")).unwrap();
        let text = scrape(c);
        assert!(
            text.contains(
                "stallwatch_node_info{instance_id=\"\",instance_type=\"\",availability_zone=\"\",region=\"\",kernel_release=\"6.18.44-test\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE stallwatch_node_info gauge"), "{text}");
    }

    #[test]
    fn on_ec2_the_instance_labels_follow_the_cloud_snapshot() {
        let (_t, roots) = root_with_release(None);
        let node = Arc::new(ArcSwap::from_pointee(Node::default()));
        let c = NodeInfoCollector::new(&roots, node.clone());
        node.store(Arc::new(Node::of_cloud(CloudSnapshot {
            enabled: true,
            instance: Some(Instance {
                instance_id: "i-0abc".into(),
                region: "eu-west-1".into(),
                availability_zone: "eu-west-1b".into(),
                instance_type: "m5.large".into(),
            }),
            ..CloudSnapshot::default()
        })));
        let text = scrape(c);
        assert!(
            text.contains(
                "stallwatch_node_info{instance_id=\"i-0abc\",instance_type=\"m5.large\",availability_zone=\"eu-west-1b\",region=\"eu-west-1\",kernel_release=\"\"} 1\n"
            ),
            "{text}"
        );
        assert_eq!(text.matches("stallwatch_node_info{").count(), 1);
    }
}
