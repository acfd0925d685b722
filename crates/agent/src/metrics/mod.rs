//! prometheus-client `Collector`s that *encode* the latest snapshots at scrape time. Nothing
//! here reads a file or takes a lock that a sampler holds: a scrape costs one `ArcSwap` load
//! per snapshot plus formatting, so it answers in milliseconds even while a disk is hung.
//! A row that is not in the snapshot (a disk that vanished) is simply not encoded.
//!
//! Each area is a set of metric tables ([`table::Row`]) walked by its collector: `host.rs`
//! (`/proc/stat`, loadavg), `pressure.rs`, `memory.rs` (meminfo, vmstat, `vm.dirty_*`),
//! `disks.rs` (diskstats, bdi, overlays), `threads.rs`, `containers.rs`, `cloud.rs`,
//! `probe.rs` and `selfmon.rs`. docs/metrics.md names the table and the reader of every family.

pub mod cloud;
pub mod containers;
pub mod disks;
pub mod episodes;
pub mod exposition;
pub mod host;
pub mod memory;
pub mod node_info;
pub mod pressure;
pub mod probe;
pub mod selfmon;
pub mod table;
pub mod threads;
pub mod verdict;

// The helpers for encoders outside this module (`web/stats.rs`).
pub use table::{family, single, Labels};

#[cfg(test)]
mod tests;
