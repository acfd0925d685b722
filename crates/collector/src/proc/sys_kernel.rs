//! `/proc/sys/kernel/*`: the running kernel's identity and its hung-task detector. Sample
//! (Debian 12, 6.18):
//! ```text
//! /proc/sys/kernel/osrelease                 6.18.44-fc-v1252
//! /proc/sys/kernel/hung_task_detect_count    3
//! /proc/sys/kernel/hung_task_timeout_secs    120
//! ```
//! The release cannot change under a running agent: read once at start. The hung-task files
//! are two small reads, done every host tick (kernel docs: admin-guide/sysctl/kernel.rst).

use crate::error::{parse_u64, Error, ParseError};
use crate::proc::read_with;
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

/// The kernel's hung-task detector (`CONFIG_DETECT_HUNG_TASK`): khungtaskd wakes every
/// `hung_task_check_interval_secs` (default: the timeout) and reports every task that has been
/// in D without being scheduled for longer than `hung_task_timeout_secs` ("task blocked for
/// more than 120 seconds" in the kernel log).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HungTasks {
    /// Hung-task detections since boot (`hung_task_detect_count`, kernel ≥ 6.13; `None` on
    /// older kernels). A task stuck for several check intervals is counted at each check, so
    /// this counts detections, not distinct tasks: any increase means a task is in D for
    /// longer than the timeout right now.
    pub detect_count: Option<u64>,
    /// Seconds in D after which a task is reported (`hung_task_timeout_secs`); 0 turns the
    /// detector off.
    pub timeout_seconds: Option<u64>,
}

/// Pure: one unsigned integer and a newline, as every numeric sysctl file is.
pub fn parse_number(text: &str) -> Result<u64, ParseError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(ParseError::new(1, "empty"));
    }
    parse_u64(t, 1, "value")
}

/// Thin: `<procfs>/sys/kernel/hung_task_{detect_count,timeout_secs}`. A file that does not
/// exist is `None` (a kernel before 6.13 has no detect count; one without
/// `CONFIG_DETECT_HUNG_TASK` has neither, and then the reading is `Ok(None)`).
pub fn read_hung_tasks(roots: &Roots) -> Result<Option<HungTasks>, Error> {
    let h = HungTasks {
        detect_count: read_with(
            &roots.proc("sys/kernel/hung_task_detect_count"),
            parse_number,
        )?,
        timeout_seconds: read_with(
            &roots.proc("sys/kernel/hung_task_timeout_secs"),
            parse_number,
        )?,
    };
    Ok((h != HungTasks::default()).then_some(h))
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

    #[test]
    fn hung_tasks_kernel_6_18_and_5_4_and_none() {
        let t = tempfile::tempdir().unwrap();
        let k = t.path().join("sys/kernel");
        std::fs::create_dir_all(&k).unwrap();
        let roots = Roots {
            procfs: t.path().to_path_buf(),
            ..Roots::default()
        };
        // No hung-task detector at all.
        assert_eq!(read_hung_tasks(&roots).unwrap(), None);
        // 5.4: the timeout, no detect count.
        std::fs::write(k.join("hung_task_timeout_secs"), "120\n").unwrap();
        assert_eq!(
            read_hung_tasks(&roots).unwrap(),
            Some(HungTasks {
                detect_count: None,
                timeout_seconds: Some(120)
            })
        );
        // 6.18: both.
        std::fs::write(k.join("hung_task_detect_count"), "3\n").unwrap();
        assert_eq!(
            read_hung_tasks(&roots).unwrap(),
            Some(HungTasks {
                detect_count: Some(3),
                timeout_seconds: Some(120)
            })
        );
        // Garbage is an error naming the file, not a zero.
        std::fs::write(k.join("hung_task_detect_count"), "lots\n").unwrap();
        let e = read_hung_tasks(&roots).unwrap_err().to_string();
        assert!(e.contains("hung_task_detect_count"), "{e}");
        assert!(parse_number("").is_err());
        assert!(parse_number("-1\n").is_err());
        assert_eq!(parse_number(" 0\n").unwrap(), 0);
    }

    proptest::proptest! {
        #[test]
        fn parse_number_never_panics(b in proptest::prelude::any::<Vec<u8>>()) {
            let _ = parse_number(&String::from_utf8_lossy(&b));
        }
    }

    #[test]
    fn hung_tasks_of_this_kernel() {
        let h = read_hung_tasks(&Roots::default()).unwrap();
        let h = h.expect("this kernel has CONFIG_DETECT_HUNG_TASK");
        assert!(h.timeout_seconds.is_some());
        let release = read_release(&Roots::default()).unwrap().unwrap();
        let mut v = release
            .split(['.', '-'])
            .map(|x| x.parse::<u32>().unwrap_or(0));
        let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
        assert_eq!(
            h.detect_count.is_some(),
            (major, minor) >= (6, 13),
            "hung_task_detect_count exists from 6.13 on; this is {release}"
        );
    }
}
