//! `/proc/<pid>/mountinfo` (man 5 proc): one mount per line. Sample (Debian 12, an overlay
//! mount whose upper dir is on a loop-device ext4):
//! ```text
//! 22 27 0:21 / /proc rw,relatime - proc proc rw
//! 845 27 7:0 / /mnt/lower rw,relatime - ext4 /dev/loop0 rw
//! 851 27 0:61 / /mnt/merged rw,relatime - overlay overlay rw,lowerdir=/mnt/lower/l,upperdir=/mnt/lower/u,workdir=/mnt/lower/w
//! ```
//! Fields: id, parent, major:minor, root, mount point, options, optional fields up to `-`,
//! fs type, source, super options. Paths escape space, tab, newline and `\` as octal (`\040`).
//! We keep what overlay writeback attribution needs: every mount's device and mount point, and
//! each overlay's `upperdir` (whose filesystem `syncfs` flushes when the overlay unmounts) and
//! whether it is `volatile` (kernel ≥ 5.10: it never syncs, so its unmount flushes nothing;
//! shown as `volatile` by older kernels and as `fsync=volatile` by newer ones, 6.18 here).

use std::collections::HashMap;

use crate::error::ParseError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub major: u32,
    pub minor: u32,
    pub mount_point: String,
    pub fs_type: String,
    /// `upperdir=` of an overlay mount.
    pub upperdir: Option<String>,
    /// An overlay mounted with `volatile` (its syncfs and unmount skip the upper filesystem).
    pub volatile: bool,
}

/// Undoes the kernel's octal escapes (`\040` → space).
fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse(text: &str) -> Result<Vec<Mount>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let (pre, post) = line
            .split_once(" - ")
            .ok_or_else(|| ParseError::new(n, "no ' - ' separator"))?;
        let mut f = pre.split(' ');
        let (_id, _parent, dev, _root, mp) = (f.next(), f.next(), f.next(), f.next(), f.next());
        let (Some(dev), Some(mp)) = (dev, mp) else {
            return Err(ParseError::new(n, "too few fields"));
        };
        let (ma, mi) = dev
            .split_once(':')
            .ok_or_else(|| ParseError::new(n, format!("device {dev:?}")))?;
        let major = ma
            .parse()
            .map_err(|_| ParseError::new(n, format!("major {ma:?}")))?;
        let minor = mi
            .parse()
            .map_err(|_| ParseError::new(n, format!("minor {mi:?}")))?;
        let mut p = post.split(' ');
        let fs_type = p.next().unwrap_or("").to_string();
        let _source = p.next();
        let opts = p.next().unwrap_or("");
        let overlay = fs_type == "overlay";
        let upperdir = overlay
            .then(|| {
                opts.split(',')
                    .find_map(|o| o.strip_prefix("upperdir="))
                    .map(unescape)
            })
            .flatten();
        // `volatile` (5.10+) is shown as `fsync=volatile` by newer kernels (6.18 here).
        let volatile = overlay
            && opts
                .split(',')
                .any(|o| o == "volatile" || o == "fsync=volatile");
        out.push(Mount {
            major,
            minor,
            mount_point: unescape(mp),
            fs_type,
            upperdir,
            volatile,
        });
    }
    Ok(out)
}

/// The mount holding `path`: the longest mount point that is a path prefix of it (of equal
/// ones, the last listed: a mount stacked on the same point hides the earlier one). A scan of
/// every mount: for one lookup. Many lookups in one table go through [`MountIndex`].
pub fn mount_of<'a>(mounts: &'a [Mount], path: &str) -> Option<&'a Mount> {
    mounts
        .iter()
        .filter(|m| {
            let mp = m.mount_point.trim_end_matches('/');
            mp.is_empty()
                || path
                    .strip_prefix(mp)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .max_by_key(|m| m.mount_point.len())
}

/// A mount table indexed by mount point, for many [`mount_of`] lookups in one table (every
/// overlay's upper directory: with hundreds of overlays, a scan per lookup made the mount
/// table's handling quadratic). A lookup costs one hash probe per ancestor of the path.
pub struct MountIndex<'a> {
    /// Mount point without its trailing `/` (the root is `""`) → the last mount listed there.
    by_point: HashMap<&'a str, &'a Mount>,
}

impl<'a> MountIndex<'a> {
    pub fn new(mounts: &'a [Mount]) -> Self {
        // Later entries overwrite earlier ones: the last of a stack wins, as in `mount_of`.
        let by_point = mounts
            .iter()
            .map(|m| (m.mount_point.trim_end_matches('/'), m))
            .collect();
        MountIndex { by_point }
    }

    /// What [`mount_of`] answers: the nearest ancestor of `path` (itself included) that is a
    /// mount point.
    pub fn mount_of(&self, path: &str) -> Option<&'a Mount> {
        let mut p = path;
        loop {
            if let Some(m) = self.by_point.get(p) {
                return Some(m);
            }
            if p.is_empty() {
                return None;
            }
            // "/a/b" → "/a" → "" (the root's key); "/a/b/" → "/a/b" first.
            p = &p[..p.rfind('/').unwrap_or(0)];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN12_OVERLAY_ON_LOOP: &str = "22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
845 27 7:0 / /mnt/lo\\040op rw,relatime - ext4 /dev/loop0 rw
851 27 0:61 / /mnt/merged rw,relatime shared:1 - overlay overlay rw,lowerdir=/mnt/lo\\040op/l,upperdir=/mnt/lo\\040op/u,workdir=/mnt/lo\\040op/w
";

    #[test]
    fn mountinfo_overlay_upper_on_loop_device() {
        let m = parse(DEBIAN12_OVERLAY_ON_LOOP).unwrap();
        assert_eq!(m.len(), 4);
        let ov = &m[3];
        assert_eq!(ov.fs_type, "overlay");
        assert_eq!(ov.upperdir.as_deref(), Some("/mnt/lo op/u"));
        let upper = mount_of(&m, ov.upperdir.as_deref().unwrap()).unwrap();
        assert_eq!((upper.major, upper.minor), (7, 0));
        assert_eq!(mount_of(&m, "/etc/passwd").unwrap().major, 254);
        assert_eq!(m[2].mount_point, "/mnt/lo op");
    }

    #[test]
    fn mountinfo_volatile_overlays_kernel_5_10_and_6_18() {
        let m = parse(
            "48 27 0:40 / /tmp/ovl/m rw,relatime - overlay overlay rw,lowerdir=/tmp/ovl/l,upperdir=/tmp/ovl/u,workdir=/tmp/ovl/w,uuid=on,fsync=volatile
49 27 0:41 / /tmp/old/m rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w,volatile
50 27 0:42 / /tmp/safe/m rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
51 27 0:43 / /tmp/x rw,relatime - tmpfs volatile rw,volatile
",
        )
        .unwrap();
        let v: Vec<bool> = m.iter().map(|m| m.volatile).collect();
        assert_eq!(v, [true, true, false, false], "only overlays are volatile");
        assert_eq!(m[0].upperdir.as_deref(), Some("/tmp/ovl/u"));
    }

    #[test]
    fn mountinfo_index_agrees_with_the_scan_on_stacks_and_edges() {
        let m = parse(
            "27 1 254:0 / / rw - ext4 /dev/vda rw
30 27 0:35 / /run rw - tmpfs tmpfs rw
31 27 0:36 / /run rw - tmpfs tmpfs rw
40 30 7:1 / /run/a\\040b rw - ext4 /dev/loop1 rw
41 27 7:2 / /runner rw - ext4 /dev/loop2 rw
",
        )
        .unwrap();
        let idx = MountIndex::new(&m);
        for (path, want) in [
            ("/", (254, 0)),
            ("/run", (0, 36)),
            ("/run/", (0, 36)),
            ("/run/x/y", (0, 36)),
            ("/runx", (254, 0)),
            ("/runner/u", (7, 2)),
            ("/run/a b/u", (7, 1)),
            ("/run/a b", (7, 1)),
            ("/run//x", (0, 36)),
            ("relative/path", (254, 0)),
            ("", (254, 0)),
        ] {
            let scan = mount_of(&m, path).map(|m| (m.major, m.minor));
            let got = idx.mount_of(path).map(|m| (m.major, m.minor));
            assert_eq!(got, scan, "{path:?}");
            assert_eq!(got, Some(want), "{path:?}");
        }
        assert!(MountIndex::new(&[]).mount_of("/x").is_none());
    }

    proptest::proptest! {
        /// The index and the scan agree on any table of mount points and any path made of the
        /// same few components.
        #[test]
        fn mountinfo_index_is_the_scan(
            // Mount points as the kernel prints them: absolute, no trailing `/` but the root's.
            points in proptest::collection::vec("(/[ab]{1,2}){0,3}", 0..8),
            path in "(/?[ab]{0,2}){0,4}/?",
        ) {
            let mounts: Vec<Mount> = points.iter().enumerate().map(|(i, p)| Mount {
                major: 0,
                minor: i as u32,
                mount_point: if p.is_empty() { "/".into() } else { p.clone() },
                fs_type: "tmpfs".into(),
                upperdir: None,
                volatile: false,
            }).collect();
            let scan = mount_of(&mounts, &path).map(|m| m.minor);
            proptest::prop_assert_eq!(MountIndex::new(&mounts).mount_of(&path).map(|m| m.minor), scan);
        }
    }

    #[test]
    fn mountinfo_garbage() {
        assert!(parse("").unwrap().is_empty());
        assert!(parse("22 27 0:21 / /proc rw\n").is_err());
        assert!(parse("22 27 x / /proc rw - proc proc rw\n").is_err());
        assert_eq!(unescape("a\\134b\\"), "a\\b\\");
    }
}
