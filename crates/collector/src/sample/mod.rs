//! Samplers: background threads that read sources on a schedule, with deadlines, and publish
//! immutable snapshots for the agent to encode. What happens *between* scrapes (a 5-second
//! writeback burst, a pile-up of blocked tasks) is kept as sliding-window peaks and as counters
//! that only ever grow, so a 60 s scrape and an HA pair scraping twice both see it.

pub mod budget;
pub mod containers;
pub mod host;
pub mod probe;
pub mod status;
pub mod threads;
pub mod window;
pub mod worker;

pub use host::{HostConfig, HostSampler, HostSnapshot};
pub use status::SourceStatus;
pub use threads::{ThreadSampler, ThreadSnapshot, ThreadsConfig};

/// Clock ticks per second for `/proc/stat` and `/proc/<pid>/stat` times (`USER_HZ`). Read
/// once at start; falls back to 100, the value on every mainstream Linux architecture.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions and only reads process-wide constants.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as u64
    } else {
        100
    }
}

/// The page size in bytes, read once at start; falls back to 4096.
pub fn page_size() -> u64 {
    // SAFETY: as above.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 {
        v as u64
    } else {
        4096
    }
}
