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
//! And one for the binary's own pages ([`unmap_idle_code`]): RSS counts every page of the
//! executable mapped since start, and the start-up maps most of it (clap, the config parser,
//! the eBPF loader's ELF and BTF parsing, cloud discovery's HTTP and TLS clients), which then
//! never runs again off EC2; later, code that runs once (a reload, an incident record) stays
//! mapped for the life of the process. The code is unmapped after the start-up and then every
//! [`CODE_EVERY`], so the binary's share of RSS is what ran since. Kernel 6.18 maps a whole large folio of page cache on a fault, so
//! a few functions map megabytes. Measured with the agent at rest here: 8.6 of 9.4 MB of text
//! resident; after unmapping, what runs maps back to ~4 MB within a few seconds and stays
//! there. The pages stay in the page cache (a new fault is a minor one, no disk read), and cold
//! code is no safer from reclaim for being mapped (the kernel keeps only *referenced*
//! executable pages active), so this changes what `ps` shows, not what can fault from a hung
//! root disk. Locking the code in memory would (it is not done: ~13 MB more RSS).

use std::time::Duration;

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
/// of the process and shortly after a scrape ([`trim_soon`]), and unmaps the binary's code at [`START_UP`] and every [`CODE_EVERY`]. It never touches a file, so a hung disk cannot hold it.
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

/// Unmaps this executable's pages that the file alone holds (mappings that are not writable
/// and hold no copied-on-write page: the code and read-only data, not the relocated RELRO
/// part), keeping them in the page cache: what runs next maps its pages again with minor
/// faults. Returns the KiB that were resident in what it unmapped. Reads `/proc/self/smaps`
/// only (memory; the executable is found as the file mapped at this function's address, not
/// by a `stat` that could wait on the disk the binary is on).
pub fn unmap_idle_code() -> std::io::Result<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let maps = mappings(&smaps);
    let here = unmap_idle_code as fn() -> std::io::Result<u64> as usize;
    let Some(exe) = maps.iter().find(|m| (m.start..m.end).contains(&here)) else {
        return Err(std::io::Error::other(
            "no mapping holds the agent's own code",
        ));
    };
    let (dev, ino) = (exe.dev, exe.inode);
    let mut unmapped = 0;
    for m in &maps {
        if m.inode != ino || m.dev != dev || !m.perms.ends_with('p') || m.perms.contains('w') {
            continue;
        }
        if m.anonymous_kib != Some(0) {
            continue;
        }
        // SAFETY: the range is a whole mapping of our own executable that is private,
        // read-only and has no anonymous (copied) page: discarding it drops only page table
        // entries of file pages, which the next access maps again with the same content.
        let r = unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_DONTNEED,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        unmapped += m.rss_kib;
    }
    Ok(unmapped)
}

/// One mapping of `/proc/<pid>/smaps`, the fields [`unmap_idle_code`] needs.
#[derive(Debug, PartialEq)]
struct Mapping<'a> {
    start: usize,
    end: usize,
    perms: &'a str,
    /// `st_dev` as the kernel encodes it (`major:minor` in hex in the file).
    dev: u64,
    inode: u64,
    rss_kib: u64,
    anonymous_kib: Option<u64>,
}

/// The mappings of an smaps text, in order; a header line that does not parse ends the list
/// (nothing after it can be trusted to belong to a mapping).
fn mappings(smaps: &str) -> Vec<Mapping<'_>> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut f = line.split_ascii_whitespace();
        let first = f.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            else {
                break;
            };
            let perms = f.next().unwrap_or("");
            let _offset = f.next();
            let dev = f.next().and_then(|d| {
                let (maj, min) = d.split_once(':')?;
                Some(libc::makedev(
                    u32::from_str_radix(maj, 16).ok()?,
                    u32::from_str_radix(min, 16).ok()?,
                ))
            });
            let inode = f.next().and_then(|i| i.parse().ok());
            let (Some(dev), Some(inode)) = (dev, inode) else {
                break;
            };
            out.push(Mapping {
                start,
                end,
                perms,
                dev,
                inode,
                rss_kib: 0,
                anonymous_kib: None,
            });
            continue;
        }
        let Some(m) = out.last_mut() else { continue };
        let mut kib = || f.next().and_then(|v| v.parse::<u64>().ok());
        match first {
            "Rss:" => m.rss_kib = kib().unwrap_or(0),
            "Anonymous:" => m.anonymous_kib = kib(),
            _ => {}
        }
    }
    out
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

    /// A smaps excerpt (this agent on kernel 6.18): the code, the RELRO part with its copied
    /// pages, and a header whose path has spaces.
    #[test]
    fn smaps_mappings_parse() {
        let text = "\
559afb85e000-559afc4f5000 r-xp 0042e000 fe:00 5409794                    /work/main/target/release/stallwatch
Size:              12892 kB
Rss:                9360 kB
Anonymous:             0 kB
559afc4f5000-559afc57c000 r--p 010c4000 fe:00 5409794                    /work/main/target/release/stallwatch
Rss:                 540 kB
Anonymous:           540 kB
7f00aa000000-7f00aa001000 rw-s 00000000 00:01 12                          /memfd:a name (deleted)
Rss:                   4 kB
";
        let m = super::mappings(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].start, 0x559afb85e000);
        assert_eq!(m[0].end, 0x559afc4f5000);
        assert_eq!(m[0].perms, "r-xp");
        assert_eq!(m[0].dev, libc::makedev(0xfe, 0));
        assert_eq!(m[0].inode, 5409794);
        assert_eq!((m[0].rss_kib, m[0].anonymous_kib), (9360, Some(0)));
        assert_eq!((m[1].rss_kib, m[1].anonymous_kib), (540, Some(540)));
        assert_eq!(
            (m[2].perms, m[2].inode, m[2].anonymous_kib),
            ("rw-s", 12, None)
        );
        assert!(super::mappings("garbage line\nRss: 4 kB\n").is_empty());
    }

    /// On this very test process: the executable's resident pages that the file alone holds
    /// go, those it copied (relocations) stay, and the code keeps running (it maps back what
    /// it runs).
    #[test]
    fn start_up_code_is_unmapped_and_maps_back_on_use() {
        let exe = |smaps: &str| -> (u64, u64) {
            use std::os::unix::fs::MetadataExt;
            let ino = std::fs::metadata("/proc/self/exe").unwrap().ino();
            super::mappings(smaps)
                .iter()
                .filter(|m| m.inode == ino)
                .fold((0, 0), |(r, a), m| {
                    (r + m.rss_kib, a + m.anonymous_kib.unwrap_or(0))
                })
        };
        let (rss0, anon0) = exe(&std::fs::read_to_string("/proc/self/smaps").unwrap());
        let gone = super::unmap_idle_code().unwrap();
        let (rss1, anon1) = exe(&std::fs::read_to_string("/proc/self/smaps").unwrap());
        assert!(gone >= 256, "{gone} KiB unmapped of {rss0} KiB resident");
        // What reads and parses smaps again maps back (whole large folios on this kernel).
        assert!(
            rss1 + 512 <= rss0,
            "the executable's RSS {rss0} → {rss1} KiB after unmapping {gone} KiB"
        );
        assert_eq!(anon1, anon0, "copied pages (relocations) stay");
        // Code that was unmapped runs again: formatting, hashing, a thread.
        let h: std::collections::HashMap<String, u64> =
            (0..100).map(|i| (format!("k{i:03}"), i)).collect();
        let t = std::thread::spawn(move || h.values().sum::<u64>());
        assert_eq!(t.join().unwrap(), 4950);
    }
}
