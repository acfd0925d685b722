//! `/proc/sys/kernel/*`: the running kernel's identity. Sample (Debian 12):
//! ```text
//! /proc/sys/kernel/osrelease   6.1.0-18-cloud-amd64
//! ```
//! The release cannot change under a running agent: read once at start.

use crate::error::Error;
use crate::roots::{read_optional, Roots};

/// Longest kernel release kept (Linux's `UTS_LEN` is 64).
pub const MAX_RELEASE_LEN: usize = 64;

/// Pure: the first line, trimmed, printable ASCII only (a fixture or a broken procfs must not
/// put control bytes into a label), at most 64 bytes.
pub fn parse_release(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or("")
        .trim()
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(MAX_RELEASE_LEN)
        .collect()
}

/// Thin: `<procfs>/sys/kernel/osrelease`; `Ok(None)` when absent (a fixture root without it).
pub fn read_release(roots: &Roots) -> Result<Option<String>, Error> {
    Ok(read_optional(&roots.proc("sys/kernel/osrelease"))?.map(|t| parse_release(&t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_debian12_and_amazon_linux_2023() {
        assert_eq!(
            parse_release("6.1.0-18-cloud-amd64\n"),
            "6.1.0-18-cloud-amd64"
        );
        assert_eq!(
            parse_release("6.1.79-99.164.amzn2023.x86_64\n"),
            "6.1.79-99.164.amzn2023.x86_64"
        );
    }

    #[test]
    fn release_garbage_is_bounded_and_printable() {
        assert_eq!(parse_release(""), "");
        assert_eq!(parse_release("5.4\u{7}x\tq\nsecond line"), "5.4xq");
        assert_eq!(parse_release(&"9".repeat(500)).len(), MAX_RELEASE_LEN);
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("sys/kernel")).unwrap();
        std::fs::write(
            t.path().join("sys/kernel/osrelease"),
            b"6.18.4\xff\xfe-foo\n",
        )
        .unwrap();
        let roots = Roots {
            procfs: t.path().to_path_buf(),
            ..Roots::default()
        };
        assert_eq!(read_release(&roots).unwrap().as_deref(), Some("6.18.4-foo"));
        let empty = Roots {
            procfs: t.path().join("nowhere"),
            ..Roots::default()
        };
        assert_eq!(read_release(&empty).unwrap(), None);
    }

    #[test]
    fn this_machine_has_a_release() {
        let r = read_release(&Roots::default()).unwrap().unwrap();
        assert!(r.chars().next().is_some_and(|c| c.is_ascii_digit()), "{r}");
    }
}
