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
//!
//! And one for the binary's own pages: the code is unmapped after the start-up and then every
//! [`CODE_EVERY`] ([`code`]).

use std::time::Duration;

mod code;
pub use code::unmap_idle_code;

/// Arenas glibc may create.
pub const ARENAS: i32 = 1;
/// Allocations this large or larger get their own mapping, given back when freed.
pub const MMAP_THRESHOLD: i32 = 256 * 1024;
/// After the start-up: when the start-up's code is unmapped ([`unmap_idle_code`]). Off
/// EC2, cloud discovery gives up within its 1 s IMDS timeout; the eBPF programs load in the
/// first second.
pub const START_UP: Duration = Duration::from_secs(20);
/// Then the code is unmapped this often: what runs maps back within a second (a few hundred
/// minor faults, tens of microseconds each here); what ran once goes.
pub const CODE_EVERY: Duration = Duration::from_secs(600);
/// Time between two trims.
pub const TRIM_EVERY: Duration = Duration::from_secs(30);
/// After a scrape ([`trim_soon`]): the trim waits this long, so that the response is sent and
/// its buffers freed first; and trims asked for this way are at least a second apart.
pub const AFTER_SCRAPE: Duration = Duration::from_millis(200);

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

/// The trimmer's thread, to wake it early ([`trim_soon`]).
static TRIMMER: std::sync::OnceLock<std::thread::Thread> = std::sync::OnceLock::new();
/// A trim was asked for since the trimmer's last one.
static ASKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Asks the trimmer for a trim now (after [`AFTER_SCRAPE`]): a scrape leaves ~1 MB of small
/// freed blocks (label sets, lines) in the heap, which the periodic trim returned up to 30 s
/// later, so the RSS a scrape reads (the next one's `process_resident_memory_bytes`, or `ps`)
/// swung by a megabyte with the phase of the two. Never blocks: it sets a flag and unparks.
pub fn trim_soon() {
    ASKED.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(t) = TRIMMER.get() {
        t.unpark();
    }
}

/// Sleeps until `deadline`, or until [`trim_soon`] asks (then [`AFTER_SCRAPE`] more, and not
/// sooner than a second after the last asked-for trim) and trims. Returns at the deadline.
fn sleep_trimming_on_request(
    deadline: std::time::Instant,
    last_asked: &mut Option<std::time::Instant>,
) {
    use std::sync::atomic::Ordering;
    use std::time::Instant;
    loop {
        let now = Instant::now();
        if now >= deadline {
            // The caller trims now: that answers a request too.
            ASKED.store(false, Ordering::Relaxed);
            return;
        }
        if ASKED.load(Ordering::Relaxed) {
            let at = last_asked
                .map_or(now, |t| t + Duration::from_secs(1))
                .max(now + AFTER_SCRAPE);
            if at < deadline {
                std::thread::sleep(at - now);
                ASKED.store(false, Ordering::Relaxed);
                trim();
                *last_asked = Some(Instant::now());
                continue;
            }
        }
        std::thread::park_timeout(deadline - now);
    }
}

/// A thread that trims after each of [`FIRST_TRIMS`], then every [`TRIM_EVERY`] for the life
/// of the process and shortly after a scrape ([`trim_soon`]), and unmaps the binary's code at
/// [`START_UP`] and every [`CODE_EVERY`]. It never touches a file, so a hung disk cannot hold
/// it.
pub fn spawn_trimmer() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("sw-trim".into())
        .stack_size(64 * 1024)
        .spawn(|| {
            let _ = TRIMMER.set(std::thread::current());
            let start = std::time::Instant::now();
            let mut last_asked = None;
            for at in FIRST_TRIMS {
                sleep_trimming_on_request(start + at, &mut last_asked);
                trim();
            }
            sleep_trimming_on_request(start + START_UP, &mut last_asked);
            let unmap = || match unmap_idle_code() {
                Ok(kib) => tracing::debug!(kib, "Unmapped the binary's code pages."),
                Err(e) => tracing::debug!(error = %e, "Cannot unmap the binary's code pages."),
            };
            unmap();
            let mut code_at = Duration::ZERO;
            loop {
                sleep_trimming_on_request(std::time::Instant::now() + TRIM_EVERY, &mut last_asked);
                trim();
                code_at += TRIM_EVERY;
                if code_at >= CODE_EVERY {
                    code_at = Duration::ZERO;
                    unmap();
                }
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

    /// 16 MB freed in 64 KiB heap blocks, every other one kept: RssAnon before, and the kept half.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn fragment_16_mb() -> (u64, Vec<Vec<u8>>) {
        let blocks: Vec<Vec<u8>> = (0..512).map(|i| vec![i as u8; 64 * 1024]).collect();
        let keep: Vec<Vec<u8>> = blocks
            .into_iter()
            .enumerate()
            .filter_map(|(i, b)| (i % 2 == 0).then_some(b))
            .collect();
        (rss_anon_kb(), keep)
    }

    /// A scrape's `trim_soon` wakes the trimmer, which trims within a second; nothing trims
    /// before it asks (the trimmer here waits for a 30 s deadline).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn trim_soon_trims_within_a_second_and_only_when_asked() {
        use std::time::{Duration, Instant};
        super::limit_arenas();
        let waiter = std::thread::spawn(|| {
            let _ = super::TRIMMER.set(std::thread::current());
            let mut last = None;
            super::sleep_trimming_on_request(Instant::now() + Duration::from_secs(30), &mut last);
        });
        while super::TRIMMER.get().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (before, keep) = fragment_16_mb();
        std::thread::sleep(Duration::from_millis(600));
        let idle = rss_anon_kb();
        assert!(
            idle + 4 * 1024 > before,
            "RssAnon {before} → {idle} kB with nobody asking for a trim"
        );
        let asked = Instant::now();
        super::trim_soon();
        let after = loop {
            let now = rss_anon_kb();
            if now + 8 * 1024 < before || asked.elapsed() > Duration::from_secs(5) {
                break now;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        eprintln!(
            "RssAnon {before} kB → {after} kB {:?} after trim_soon",
            asked.elapsed()
        );
        assert!(
            after + 8 * 1024 < before,
            "RssAnon {before} kB → {after} kB: trim_soon did not return the freed 16 MB"
        );
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "the trim came {:?} after it was asked for",
            asked.elapsed()
        );
        assert_eq!(keep.len(), 256);
        drop(waiter);
    }

    /// A trim after freeing a large, fragmented allocation gives pages back: the process's
    /// anonymous RSS falls (read from /proc/self/status).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn trim_returns_freed_heap_to_the_kernel() {
        let (before, keep) = fragment_16_mb();
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
