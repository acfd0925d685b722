//! Samplers: they schedule reads of sources on one periodic driver ([`driver`]), with
//! deadlines, and publish immutable snapshots for the agent to encode. What happens *between*
//! scrapes (a 5-second writeback burst, a pile-up of blocked tasks) is kept as sliding-window
//! peaks and as counters that only ever grow, so a 60 s scrape and an HA pair scraping twice
//! both see it. Samplers never parse bytes: the readers in `proc`, `sys` and `cgroup` do.

pub mod budget;
pub mod bursts;
pub mod containers;
pub mod disk_stall;
pub mod driver;
pub mod dstate;
pub mod host;
pub mod probe;
pub mod status;
pub mod threads;
pub mod window;

pub use host::{HostConfig, HostSampler, HostSnapshot};
pub use status::SourceStatus;
pub use threads::{ThreadSampler, ThreadSnapshot, ThreadsConfig};
