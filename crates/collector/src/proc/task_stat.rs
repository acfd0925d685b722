//! `/proc/<pid>/stat` and `/proc/<pid>/task/<tid>/stat` (man 5 proc). Sample (Debian 12, 6.18):
//! ```text
//! 4679 (cat) R 4666 4666 1039 0 -1 4194304 95 0 0 0 0 0 0 0 20 0 1 0 244052 3133440 382 ...
//! ```
//! The comm (field 2) is attacker-controlled: up to 15 bytes of anything but NUL, including
//! spaces, `)`, newlines and bytes that are not UTF-8. It is everything between the first `(`
//! and the *last* `)`; the fields after it are fixed-format numbers. We parse from bytes and
//! borrow the comm, so a walk over 10k threads allocates nothing per thread (procfs-core's
//! `Stat` owns a lossy `String` comm, which is both an allocation and a mangled name).

use crate::error::ParseError;

/// `PF_KTHREAD` in the `flags` field: a kernel thread.
pub const PF_KTHREAD: u32 = 0x0020_0000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskStat<'a> {
    pub pid: u32,
    /// Raw comm bytes (not necessarily UTF-8).
    pub comm: &'a [u8],
    /// State letter: R, S, D, Z, T, t, X, I, P, W, K …
    pub state: u8,
    pub ppid: u32,
    /// `PF_*` flags.
    pub flags: u32,
    /// Threads in the thread group (meaningful in `/proc/<pid>/stat`).
    pub num_threads: u32,
    /// Start time after boot, in clock ticks: with the tid it identifies a thread across walks
    /// even when tids are reused.
    pub starttime: u64,
    /// Aggregated block I/O delay, clock ticks (delay accounting; 0 when it is off).
    pub blkio_ticks: Option<u64>,
}

impl TaskStat<'_> {
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }
}

fn num<T: std::str::FromStr>(f: Option<&[u8]>, what: &str) -> Result<T, ParseError> {
    let f = f.ok_or_else(|| ParseError::new(1, format!("missing {what}")))?;
    std::str::from_utf8(f)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            ParseError::new(
                1,
                format!("{what}: not a number: {:?}", String::from_utf8_lossy(f)),
            )
        })
}

/// Pure: parses one stat line from bytes.
pub fn parse(buf: &[u8]) -> Result<TaskStat<'_>, ParseError> {
    let open = buf
        .iter()
        .position(|&b| b == b'(')
        .ok_or_else(|| ParseError::new(1, "no '('"))?;
    let close = buf
        .iter()
        .rposition(|&b| b == b')')
        .ok_or_else(|| ParseError::new(1, "no ')'"))?;
    if close < open {
        return Err(ParseError::new(1, "')' before '('"));
    }
    let pid = num::<u32>(Some(trim(&buf[..open])), "pid")?;
    let comm = &buf[open + 1..close];
    let mut f = buf[close + 1..]
        .split(|b| b.is_ascii_whitespace())
        .filter(|s| !s.is_empty());
    let state = match f.next() {
        Some([c]) => *c,
        Some(other) => {
            return Err(ParseError::new(
                1,
                format!("state: {:?}", String::from_utf8_lossy(other)),
            ))
        }
        None => return Err(ParseError::new(1, "missing state")),
    };
    // Fields after the state, 0-based: 0 ppid, 5 flags, 16 num_threads, 18 starttime,
    // 38 delayacct_blkio_ticks (field 42 of man 5 proc).
    let ppid = num::<u32>(f.next(), "ppid")?;
    let mut f = f.skip(4);
    let flags = num::<u32>(f.next(), "flags")?;
    let mut f = f.skip(10);
    let num_threads = num::<u32>(f.next(), "num_threads")?;
    let mut f = f.skip(1);
    let starttime = num::<u64>(f.next(), "starttime")?;
    let blkio_ticks = f
        .nth(19)
        .and_then(|b| std::str::from_utf8(b).ok()?.parse().ok());
    Ok(TaskStat {
        pid,
        comm,
        state,
        ppid,
        flags,
        num_threads,
        starttime,
        blkio_ticks,
    })
}

fn trim(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |e| e + 1);
    &b[s..e.max(s)]
}

/// Turns a comm into a label-safe, display-safe string: bytes that are not UTF-8 become
/// U+FFFD, control characters (newline, tab, escape …) and bidirectional overrides become `?`
/// ([`crate::text::safe`]). A comm is at most 15 bytes (`TASK_COMM_LEN`).
pub fn sanitize(comm: &[u8]) -> String {
    crate::text::safe(&String::from_utf8_lossy(comm), 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_stat_debian12_cat() {
        let s = parse(b"4679 (cat) R 4666 4666 1039 0 -1 4194304 95 0 0 0 0 0 0 0 20 0 1 0 244052 3133440 382 18446744073709551615 94201479528448 94201479548329 140720667540880 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 94201479564336 94201479565952 94201569083392 140720667544288 140720667544308 140720667544308 140720667545579 0\n").unwrap();
        assert_eq!(
            (s.pid, s.comm, s.state, s.ppid),
            (4679, &b"cat"[..], b'R', 4666)
        );
        assert_eq!((s.num_threads, s.starttime, s.flags), (1, 244052, 4194304));
        assert_eq!(s.blkio_ticks, Some(0));
        assert!(!s.is_kernel_thread());
    }

    #[test]
    fn task_stat_kworker_is_kernel_thread() {
        let s = parse(b"57 (kworker/u8:3-flush-254:0) D 2 0 0 0 -1 69238880 0 0 0 0 0 5 0 0 20 0 1 0 13 0 0 18446744073709551615 0 0 0 0 0 0 0 2147483647 0 0 0 0 17 1 0 0 7 0 0 0 0 0 0 0 0 0 0").unwrap();
        assert_eq!(s.comm, b"kworker/u8:3-flush-254:0");
        assert_eq!(s.state, b'D');
        assert!(s.is_kernel_thread());
        assert_eq!(s.blkio_ticks, Some(7));
    }

    #[test]
    fn task_stat_hostile_comm() {
        let line = b"99 (sw )\n\xffwr) D) D 1 99 99 0 -1 4194368 0 0 0 0 0 0 0 0 20 0 5 0 777 0 0";
        let s = parse(line).unwrap();
        assert_eq!(s.comm, b"sw )\n\xffwr) D");
        assert_eq!((s.state, s.num_threads, s.starttime), (b'D', 5, 777));
        assert_eq!(s.blkio_ticks, None, "older kernels lack the field");
        assert_eq!(sanitize(s.comm), "sw )?\u{FFFD}wr) D");
    }

    #[test]
    fn task_stat_truncated_or_garbage() {
        assert!(parse(b"").is_err());
        assert!(parse(b"12 (x").is_err());
        assert!(parse(b"12 x) R 1").is_err());
        assert!(parse(b"12 (x) R 1 2 3").is_err());
        assert!(parse(b"12 (x) RR 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20").is_err());
        assert!(parse(b"a (x) R 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20").is_err());
    }
}
