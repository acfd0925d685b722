//! Process-wide constants from `sysconf(3)`, read once at first use and passed down: clock
//! ticks per second (`USER_HZ`, the unit of `/proc/stat`, `/proc/<pid>/stat` and cgroup v1
//! `cpuacct.stat` times) and the page size (the unit of `/proc/vmstat` page counts). This is
//! the bottom of the crate: readers and samplers both depend on it, it depends on nothing.

use std::sync::OnceLock;

/// The constants, as read once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sysconf {
    /// Clock ticks per second (`_SC_CLK_TCK`); 100 when sysconf cannot say, the value on every
    /// mainstream Linux architecture.
    pub clock_ticks: u64,
    /// Page size in bytes (`_SC_PAGESIZE`); 4096 when sysconf cannot say.
    pub page_size: u64,
}

/// The constants of this process, read on first call and cached.
pub fn get() -> Sysconf {
    static ONCE: OnceLock<Sysconf> = OnceLock::new();
    *ONCE.get_or_init(|| Sysconf {
        clock_ticks: read(libc::_SC_CLK_TCK, 100),
        page_size: read(libc::_SC_PAGESIZE, 4096),
    })
}

/// Clock ticks per second (`USER_HZ`).
pub fn clock_ticks() -> u64 {
    get().clock_ticks
}

/// The page size in bytes.
pub fn page_size() -> u64 {
    get().page_size
}

fn read(name: libc::c_int, fallback: u64) -> u64 {
    // SAFETY: sysconf has no preconditions and only reads process-wide constants.
    let v = unsafe { libc::sysconf(name) };
    if v > 0 {
        v as u64
    } else {
        fallback
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_machine_has_the_usual_constants() {
        let s = super::get();
        assert_eq!(s.clock_ticks, 100, "USER_HZ on x86_64 and arm64");
        assert!(s.page_size >= 4096 && s.page_size.is_power_of_two());
        assert_eq!(super::get(), s, "read once");
    }
}
