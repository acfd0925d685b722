//! Overlay mounts by the block device of their upper directory, from the host init's mount
//! table (`<procfs>/1/mountinfo`, which with a host `/proc` is the host's even from a
//! container; else our own `self/mountinfo`). That filesystem is what `syncfs` flushes when an
//! overlay unmounts (Garden's 10 s unmounts); see [`crate::proc::mountinfo`] for the format.

use std::collections::BTreeMap;

use crate::error::Error;
use crate::proc::mountinfo::{self, Mount};
use crate::roots::{read_optional, Roots};
use crate::sys::block;

/// Overlay mounts per device of their upper directory, sorted by device name (`loop0`, or the
/// filesystem type for an upper directory not on a block device, e.g. `tmpfs`, or `none`).
/// `Ok(None)` when no mount table can be read.
pub fn read(roots: &Roots) -> Result<Option<Vec<(String, u64)>>, Error> {
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
    let mut by_dev: BTreeMap<String, u64> = BTreeMap::new();
    for m in mounts.iter().filter(|m| m.fs_type == "overlay") {
        let dev = m
            .upperdir
            .as_deref()
            .and_then(|u| mountinfo::mount_of(&mounts, u))
            .map(|up| device_name(roots, up))
            .unwrap_or_else(|| "none".to_string());
        *by_dev.entry(dev).or_insert(0) += 1;
    }
    Ok(Some(by_dev.into_iter().collect()))
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
