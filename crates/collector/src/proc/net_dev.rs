//! `/proc/<pid>/net/dev`: per-interface counters of the network namespace `<pid>` lives in
//! (man 5 proc). Sample (Debian 12, kernel 6.18):
//! ```text
//! Inter-|   Receive                                                |  Transmit
//!  face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
//!     lo: 137818714   44927    0    0    0     0          0         0 137818714   44927    0    0    0     0       0          0
//!   eth0: 1520 12 0 1 0 0 0 0 980 9 0 0 0 0 0 0
//! ```
//! A container's traffic is read through a member process's view; containers sharing a network
//! namespace (a Kubernetes pod) must be counted once, keyed by the namespace inode
//! (`readlink /proc/<pid>/ns/net` → `net:[4026531840]`).

use crate::error::{parse_u64, ParseError};
use crate::Roots;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetDev {
    /// Interface name (kernel-controlled, but a container can rename its own interfaces: the
    /// agent bounds how many it exports).
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_drops: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_drops: u64,
}

/// Pure: two header lines, then `name: 16 numbers`. A line with fewer numbers is an error.
pub fn parse(text: &str) -> Result<Vec<NetDev>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        }; // headers
        if name.contains('|') {
            continue;
        }
        let v: Vec<u64> = rest
            .split_ascii_whitespace()
            .map(|f| parse_u64(f, n, name.trim()))
            .collect::<Result<_, _>>()?;
        if v.len() < 16 {
            return Err(ParseError::new(
                n,
                format!("{}: {} fields, expected 16", name.trim(), v.len()),
            ));
        }
        out.push(NetDev {
            name: name.trim().to_string(),
            rx_bytes: v[0],
            rx_packets: v[1],
            rx_errors: v[2],
            rx_drops: v[3],
            tx_bytes: v[8],
            tx_packets: v[9],
            tx_errors: v[10],
            tx_drops: v[11],
        });
    }
    Ok(out)
}

/// Reads the interfaces `pid` sees and the inode of its network namespace (for dedupe).
/// `Ok(None)` when the process is gone.
pub fn read_for_pid(roots: &Roots, pid: u32) -> Result<Option<(u64, Vec<NetDev>)>, crate::Error> {
    let Some(inode) = netns_inode(roots, &pid.to_string())? else {
        return Ok(None);
    };
    let path = roots.proc(&format!("{pid}/net/dev"));
    Ok(crate::proc::read_with(&path, parse)?.map(|d| (inode, d)))
}

/// The inode of `<procfs>/<who>/ns/net` (`net:[4026531840]` → 4026531840); `who` is a pid
/// or `self`. `Ok(None)` when the process is gone; 0 when the link has an unexpected form.
pub fn netns_inode(roots: &Roots, who: &str) -> Result<Option<u64>, crate::Error> {
    let path = roots.proc(&format!("{who}/ns/net"));
    let ns = match std::fs::read_link(&path) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(crate::Error::Io { path, source }),
    };
    Ok(Some(
        ns.to_str()
            .and_then(|s| s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok())
            .unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN12: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 137818714   44927    0    0    0     0          0         0 137818714   44927    0    0    0     0       0          0
  eth0: 1520 12 1 2 0 0 0 0 980 9 3 4 0 0 0 0
";

    #[test]
    fn net_dev_debian12() {
        let d = parse(DEBIAN12).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[1],
            NetDev {
                name: "eth0".into(),
                rx_bytes: 1520,
                rx_packets: 12,
                rx_errors: 1,
                rx_drops: 2,
                tx_bytes: 980,
                tx_packets: 9,
                tx_errors: 3,
                tx_drops: 4
            }
        );
    }

    #[test]
    fn net_dev_garbage() {
        assert!(parse("eth0: 1 2 3\n").is_err());
        assert!(parse("eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 x\n").is_err());
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn net_dev_of_ourselves() {
        let (inode, devs) = read_for_pid(&Roots::default(), std::process::id())
            .unwrap()
            .unwrap();
        assert!(inode > 0);
        assert!(devs.iter().any(|d| d.name == "lo"));
        assert!(read_for_pid(&Roots::default(), u32::MAX - 1)
            .unwrap()
            .is_none());
    }
}
