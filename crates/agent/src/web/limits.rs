//! The HTTP server's bounds: flags (`--web.max-connections` and the three timeouts, in the
//! exporter habit and named after Go's `http.Server` fields) and the open-file limit.
//!
//! Why: with no timeout and no cap, ~1,010 idle sockets used up the default soft limit of
//! 1,024 file descriptors; every scrape then timed out and every `/proc` read failed with
//! EMFILE, so the agent went dark exactly when asked to look. Now the soft limit is raised to
//! the hard limit at start (as Go does since 1.19), the connection cap always leaves
//! [`RESERVED_FDS`] descriptors for the readers, and a full server makes room by closing its
//! longest-idle connection (see `conns.rs`).

use std::time::Duration;

use clap::Args;

/// File descriptors kept for everything that is not an HTTP connection: sampler reads,
/// directory walks (a few `openat` handles deep), probe files, the cloud client's sockets, the
/// config watcher, the runtime. A few dozen are in use at any time; this leaves room.
pub const RESERVED_FDS: u64 = 128;

#[derive(Debug, Clone, Args)]
pub struct WebArgs {
    /// Most HTTP connections held at once. When full, the connection idle the longest (or
    /// still sending its request headers) is closed to make room; lowered at start to fit the
    /// open-file limit.
    #[arg(long = "web.max-connections", global = true, default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Time a client has to send a complete request header, from connecting (or from its
    /// first byte after an idle keep-alive period). Slow senders are closed after it.
    #[arg(long = "web.read-header-timeout", global = true, default_value = "10s",
          value_parser = parse_timeout)]
    pub read_header_timeout: Duration,

    /// How long a keep-alive connection may wait for its next request.
    #[arg(long = "web.idle-timeout", global = true, default_value = "2m",
          value_parser = parse_timeout)]
    pub idle_timeout: Duration,

    /// Time to deliver a response, from the end of the request header; also the longest a
    /// write may stay blocked on a client that does not read.
    #[arg(long = "web.write-timeout", global = true, default_value = "30s",
          value_parser = parse_timeout)]
    pub write_timeout: Duration,
}

/// A timeout flag: humantime (`"10s"`, `"2m"`), between 100 ms and one day.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(86_400) {
        return Err(format!("{s} is outside 100ms..24h"));
    }
    Ok(d)
}

/// What the connection registry enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub read_header_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
}

impl Limits {
    /// The flags, with the cap lowered to leave [`RESERVED_FDS`] of `nofile` (the soft limit
    /// in force) for everything else. Returns the limits and whether the cap was lowered.
    pub fn new(args: &WebArgs, nofile: u64) -> (Limits, bool) {
        let room = nofile.saturating_sub(RESERVED_FDS).max(1);
        let wanted = u64::from(args.max_connections);
        let max = wanted.min(room);
        let limits = Limits {
            max_connections: usize::try_from(max).unwrap_or(usize::MAX),
            read_header_timeout: args.read_header_timeout,
            idle_timeout: args.idle_timeout,
            write_timeout: args.write_timeout,
        };
        (limits, max < wanted)
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            read_header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// The `RLIMIT_NOFILE` in force after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFile {
    pub soft: u64,
    pub hard: u64,
    /// The soft limit before, when it was raised.
    pub raised_from: Option<u64>,
}

/// Raises the soft open-file limit to the hard one, as Go's runtime does: the soft default of
/// 1,024 exists for `select(2)`, which nothing here uses. Failure keeps the old limit.
pub fn raise_nofile_limit() -> std::io::Result<NoFile> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass. It fails (EPERM) when the hard limit is
        // above fs.nr_open, e.g. RLIM_INFINITY; then the old soft limit stays.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(NoFile {
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
        raised_from: (lim.rlim_cur != before).then_some(before),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        web: WebArgs,
    }

    #[test]
    fn defaults_and_bounds() {
        let t = T::try_parse_from(["t"]).unwrap();
        let (l, lowered) = Limits::new(&t.web, 1_048_576);
        assert_eq!(l, Limits::default());
        assert!(!lowered);
        let t = T::try_parse_from([
            "t",
            "--web.max-connections=5000",
            "--web.read-header-timeout=1s",
            "--web.idle-timeout=500ms",
            "--web.write-timeout=1h",
        ])
        .unwrap();
        let (l, lowered) = Limits::new(&t.web, 1024);
        assert_eq!(l.max_connections, 1024 - RESERVED_FDS as usize);
        assert!(lowered);
        assert_eq!(l.idle_timeout, Duration::from_millis(500));
        assert_eq!(Limits::new(&t.web, 10).0.max_connections, 1);
        for bad in [
            "--web.max-connections=0",
            "--web.read-header-timeout=0s",
            "--web.idle-timeout=10ms",
            "--web.write-timeout=18446744073709551615s",
            "--web.write-timeout=2days",
        ] {
            assert!(T::try_parse_from(["t", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn nofile_soft_limit_is_raised_to_the_hard_limit() {
        // Runs in the test process: raising the soft limit is harmless here.
        let got = raise_nofile_limit().unwrap();
        assert!(got.soft <= got.hard);
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(lim.rlim_cur, got.soft);
        if got.hard < 1 << 20 {
            assert_eq!(got.soft, got.hard, "a finite hard limit is reached");
        }
    }
}
