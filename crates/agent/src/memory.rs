//! Keeping the agent's resident memory to what it uses (issue 16: ≤ 15 MB at 10k threads and
//! 200 containers). glibc's malloc holds on to freed memory: measured on this machine, a
//! running agent had 18.5 MB of anonymous RSS of which 14.5 MB was free heap (one
//! `malloc_trim(0)` gave it back), left by the start-up (the eBPF loader parses the kernel's
//! ~6 MB BTF), kallsyms passes and the walks, and spread over one arena per thread that ever
//! allocated (~30 threads). Two remedies, both glibc-only (musl and others keep no arenas):
//! - one arena ([`ARENAS`]): a daemon whose threads mostly sleep gains nothing from one per
//!   thread (measured at 10k threads with the agent's defaults, after trims: 4.2 MB of
//!   anonymous RSS with one arena, 7.5 MB with two); `MALLOC_ARENA_MAX` in the environment
//!   still wins; and
//! - a `malloc_trim(0)` every [`TRIM_EVERY`] on its own thread, which returns free pages of
//!   every arena to the kernel (tens to hundreds of microseconds a call here); and
//! - a fixed mmap threshold ([`MMAP_THRESHOLD`]): a scrape's body (~1 MB at 200 containers,
//!   grown by doubling) is mapped on its own and unmapped when the response is sent. With
//!   glibc's default the threshold rises to the size of the first large block freed, after
//!   which every scrape's buffers came from the heap and stayed there until the next trim.

use std::time::Duration;

/// Arenas glibc may create.
pub const ARENAS: i32 = 1;
/// Allocations this large or larger get their own mapping, given back when freed.
pub const MMAP_THRESHOLD: i32 = 256 * 1024;
/// Time between two trims.
pub const TRIM_EVERY: Duration = Duration::from_secs(30);
/// The first trims, counted from the trimmer's start: the start-up's garbage (17 MB after the
/// eBPF loader's BTF parse, in the first second here) goes back within seconds, not after the
/// first [`TRIM_EVERY`].
pub const FIRST_TRIMS: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(8)];

/// Caps the number of malloc arenas and fixes the mmap threshold, unless `MALLOC_ARENA_MAX` or
/// `MALLOC_MMAP_THRESHOLD_` is set. Call first thing, before any thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: mallopt only sets a tunable of the allocator; no pointer is involved.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, ARENAS);
            }
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // SAFETY: as above. Setting it also stops glibc's dynamic raising of it.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            }
        }
    }
}

/// Returns free heap pages to the kernel now.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and is thread-safe (it locks each arena).
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A thread that trims after each of [`FIRST_TRIMS`], then every [`TRIM_EVERY`] for the life
/// of the process. It never touches a file, so a hung disk cannot hold it.
pub fn spawn_trimmer() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("sw-trim".into())
        .stack_size(64 * 1024)
        .spawn(|| {
            let mut slept = Duration::ZERO;
            for at in FIRST_TRIMS {
                std::thread::sleep(at.saturating_sub(slept));
                slept = at;
                trim();
            }
            loop {
                std::thread::sleep(TRIM_EVERY);
                trim();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "Cannot start the memory trimmer; the agent runs without it.");
    }
}

#[cfg(test)]
mod tests {
    /// With the threshold fixed, a large block freed after an even larger one (glibc would
    /// have raised its threshold to that one's size and served this from the heap) is
    /// unmapped at once: RssAnon falls back without a trim.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_large_block_goes_back_when_freed() {
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
            eprintln!("SKIPPED a_large_block_goes_back_when_freed: MALLOC_MMAP_THRESHOLD_ is set");
            return;
        }
        super::limit_arenas();
        let big = vec![1u8; 4 << 20];
        assert_eq!(big[123], 1);
        drop(big);
        let before = rss_anon_kb();
        let block = vec![2u8; 1 << 20];
        let during = rss_anon_kb();
        assert_eq!(block[4567], 2);
        drop(block);
        let after = rss_anon_kb();
        assert!(
            during >= before + 900,
            "{before} → {during} kB: 1 MiB touched"
        );
        assert!(
            after + 900 <= during,
            "RssAnon {before} → {during} → {after} kB: the freed 1 MiB stayed"
        );
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn rss_anon_kb() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    }

    /// A trim after freeing a large, fragmented allocation gives pages back: the process's
    /// anonymous RSS falls (read from /proc/self/status).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn trim_returns_freed_heap_to_the_kernel() {
        // 32 MB in 64 KiB blocks (under the mmap threshold, so they live in the heap), every
        // other one kept so that the freed half cannot simply shrink the top of the heap.
        let mut blocks: Vec<Vec<u8>> = (0..512).map(|i| vec![i as u8; 64 * 1024]).collect();
        let keep: Vec<Vec<u8>> = blocks
            .drain(..)
            .enumerate()
            .filter_map(|(i, b)| (i % 2 == 0).then_some(b))
            .collect();
        let before = rss_anon_kb();
        super::trim();
        let after = rss_anon_kb();
        assert!(
            after + 8 * 1024 < before,
            "RssAnon {before} kB → {after} kB: the 16 MB freed was not returned"
        );
        assert_eq!(keep.len(), 256);
        assert!(keep.iter().enumerate().all(|(i, b)| b[0] == (2 * i) as u8));
    }
}
