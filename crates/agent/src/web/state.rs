//! What the handlers share: the registry, the joined node, the live host config and the
//! verdict (its own module so that the route modules, `app.rs` and `api.rs`, depend on it and
//! not on each other).

use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use stallwatch_collector::sample::HostConfig;

use crate::node::Node;

pub struct AppState {
    pub registry: Registry,
    pub telemetry_path: String,
    pub node: Arc<ArcSwap<Node>>,
    pub host_config: Arc<ArcSwap<HostConfig>>,
    /// The verdict and the flight recorder (`/api/v1/*`).
    pub analysis: Arc<crate::recorder::Analysis>,
}
