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

/// The mount holding `path`: the longest mount point that is a path prefix of it.
pub fn mount_of<'a>(mounts: &'a [Mount], path: &str) -> Option<&'a Mount> {
    mounts
        .iter()
        .filter(|m| {
            let mp = m.mount_point.trim_end_matches('/');
            path == mp || path.starts_with(&format!("{mp}/")) || mp.is_empty()
        })
        .max_by_key(|m| m.mount_point.len())
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
    fn mountinfo_garbage() {
        assert!(parse("").unwrap().is_empty());
        assert!(parse("22 27 0:21 / /proc rw\n").is_err());
        assert!(parse("22 27 x / /proc rw - proc proc rw\n").is_err());
        assert_eq!(unescape("a\\134b\\"), "a\\b\\");
    }
}
