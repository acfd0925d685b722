//! The binary's own pages ([`unmap_idle_code`]): RSS counts every page of the
//! executable mapped since start, and the start-up maps most of it (clap, the config parser,
//! the eBPF loader's ELF and BTF parsing, cloud discovery's HTTP and TLS clients), which then
//! never runs again off EC2; later, code that runs once (a reload, an incident record) stays
//! mapped for the life of the process. The code is unmapped after the start-up and then every
//! [`super::CODE_EVERY`], so the binary's share of RSS is what ran since. Kernel 6.18 maps a
//! whole large folio of page cache on a fault, so a few functions map megabytes. Measured with the agent at rest here: 8.6 of 9.4 MB of text
//! resident; after unmapping, what runs maps back to ~4 MB within a few seconds and stays
//! there. The pages stay in the page cache (a new fault is a minor one, no disk read), and cold
//! code is no safer from reclaim for being mapped (the kernel keeps only *referenced*
//! executable pages active), so this changes what `ps` shows, not what can fault from a hung
//! root disk. Locking the code in memory would (it is not done: ~13 MB more RSS).

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
