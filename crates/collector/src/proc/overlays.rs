//! Overlay mounts by the block device of their upper directory, from the host init's mount
//! table (`<procfs>/1/mountinfo`, which with a host `/proc` is the host's even from a
//! container; else our own `self/mountinfo`). That filesystem is what `syncfs` flushes when an
//! overlay unmounts (Garden's 10 s unmounts), unless the overlay is `volatile`, the mitigation:
//! its syncfs and unmount skip the upper filesystem. See [`crate::proc::mountinfo`] for the
//! format.

use std::collections::BTreeMap;

use crate::error::Error;
use crate::proc::mountinfo::{self, Mount};
use crate::roots::{read_optional, Roots};
use crate::sys::block;

/// The overlay mounts whose upper directory is on one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayDevice {
    /// The upper directory's block device (`loop0`), `major:minor` when sysfs does not know
    /// it, the filesystem type when it is not on a block device (`tmpfs`), or `none`.
    pub device: String,
    /// Overlay mounts now.
    pub mounts: u64,
    /// Of those, mounted `volatile`: their unmount does not sync this device.
    pub volatile: u64,
}

/// Overlay mounts per device of their upper directory, sorted by device name. `Ok(None)` when
/// no mount table can be read.
pub fn read(roots: &Roots) -> Result<Option<Vec<OverlayDevice>>, Error> {
    let mut text = None;
    for who in ["1", "self"] {
        let p = roots.proc(&format!("{who}/mountinfo"));
        match read_optional(&p) {
            Ok(Some(t)) => {
                text = Some((p, t));
                break;
            }
            Ok(None) => {}
            Err(e) if who == "1" => {
                tracing::debug!(error = %e, "Cannot read init's mount table; using our own.");
            }
            Err(e) => return Err(e),
        }
    }
    let Some((path, text)) = text else {
        return Ok(None);
    };
    let mounts = mountinfo::parse(&text).map_err(|e| Error::Parse { path, source: e })?;
    Ok(Some(by_device(roots, &mounts)))
}

/// Pure but for the device names (sysfs): the overlays of `mounts` grouped by upper device.
fn by_device(roots: &Roots, mounts: &[Mount]) -> Vec<OverlayDevice> {
    let mut by_dev: BTreeMap<String, OverlayDevice> = BTreeMap::new();
    for m in mounts.iter().filter(|m| m.fs_type == "overlay") {
        let dev = m
            .upperdir
            .as_deref()
            .and_then(|u| mountinfo::mount_of(mounts, u))
            .map(|up| device_name(roots, up))
            .unwrap_or_else(|| "none".to_string());
        let e = by_dev.entry(dev).or_insert_with_key(|d| OverlayDevice {
            device: d.clone(),
            ..OverlayDevice::default()
        });
        e.mounts += 1;
        e.volatile += u64::from(m.volatile);
    }
    by_dev.into_values().collect()
}

/// A mount's block device name (`loop0`), `major:minor` when sysfs does not know it, or its
/// filesystem type for mounts that are not on a block device (`tmpfs`).
fn device_name(roots: &Roots, m: &Mount) -> String {
    if m.major != 0 {
        return block::name_of(roots, m.major, m.minor)
            .unwrap_or_else(|| format!("{}:{}", m.major, m.minor));
    }
    m.fs_type.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlays_by_upper_device_with_volatile_ones_counted() {
        let mounts = mountinfo::parse(
            "27 1 254:0 / / rw - ext4 /dev/vda rw
30 27 0:35 / /run rw - tmpfs tmpfs rw
845 27 7:0 / /var/lib/docker rw - ext4 /dev/loop0 rw
851 27 0:61 / /c1 rw - overlay overlay rw,lowerdir=/l,upperdir=/var/lib/docker/o/1/diff,workdir=/w
852 27 0:62 / /c2 rw - overlay overlay rw,lowerdir=/l,upperdir=/var/lib/docker/o/2/diff,workdir=/w,uuid=on,fsync=volatile
853 27 0:63 / /c3 rw - overlay overlay rw,lowerdir=/l,upperdir=/run/o/3,workdir=/w,volatile
854 27 0:64 / /c4 rw - overlay overlay rw,lowerdir=/l
",
        )
        .unwrap();
        // No sysfs here: block devices are named by number.
        let roots = Roots {
            sysfs: "/nonexistent-sysfs".into(),
            ..Roots::default()
        };
        let got = by_device(&roots, &mounts);
        let want = [("7:0", 2, 1), ("none", 1, 0), ("tmpfs", 1, 1)];
        let got: Vec<(&str, u64, u64)> = got
            .iter()
            .map(|o| (o.device.as_str(), o.mounts, o.volatile))
            .collect();
        assert_eq!(got, want);
    }
}
