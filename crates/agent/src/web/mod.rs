//! The web layer: routes, the HTTP/1.1 server with its connection limits, TLS and basic auth.
//! It must never go dark while the node stalls: scrapes encode snapshots already in memory,
//! idle or slow clients cannot use up file descriptors, and a password flood cannot starve a
//! real scraper.
//!
//! - `app.rs`: the routes and handlers (`/metrics`, `/healthz`); `page.rs`: `/`, the node
//!   page (`page/`, embedded) for browsers and a plain-text index for `curl`.
//! - `server.rs`: the accept loop, HTTP/1.1 on each connection, graceful shutdown;
//!   `shutdown.rs`: SIGTERM/SIGINT and the exit deadline.
//! - `conns.rs`: the registry of open connections (cap, eviction, timeouts).
//! - `limits.rs`: the `--web.*` limit flags and the open-file limit.
//! - `config.rs`: `--web.config.file` (exporter-toolkit YAML); `tls.rs` and `auth.rs` build
//!   its TLS config and basic auth; `gate.rs` bounds bcrypt work.
//! - `stats.rs`: `stallwatch_http_*`.

mod api;
mod app;
mod auth;
mod config;
mod conns;
mod gate;
mod limits;
mod page;
mod server;
mod shutdown;
mod state;
mod stats;
mod tls;

pub use app::{app, AppState};
pub use config::WebConfig;
pub use conns::Conns;
pub use limits::{raise_nofile_limit, Limits, WebArgs};
pub use page::base64;
pub use server::{bind, serve};
pub use shutdown::on_signal;
pub use stats::WebCollector;
