//! Which block devices are EBS volumes, from sysfs alone (no exec, no ioctl).
//!
//! On Nitro instances EBS volumes are NVMe namespaces whose controller reports the model
//! `Amazon Elastic Block Store` and the volume id, without its dash, as the serial
//! (`vol0123456789abcdef0`; EBS User Guide, "Map Amazon EBS volumes to NVMe device names").
//! Instance-store NVMe reports `Amazon EC2 NVMe Instance Storage` and a serial that is not a
//! volume id. Xen instances expose EBS as `xvd*` (older kernels `sd*`) with no volume id in sysfs;
//! those are returned without one, for the caller to map from DescribeVolumes attachments.
//!
//! `queue/io_timeout` is the block layer's request timeout **in milliseconds**
//! (`block/blk-sysfs.c`: `jiffies_to_msecs(q->rq_timeout)`), converted here to seconds. For NVMe
//! it comes from the `nvme_core.io_timeout` module parameter, which is in *seconds*: Amazon Linux
//! sets that to 4294967295 so that a stalled EBS volume never times I/O out (the AWS guide "NVMe
//! I/O operation timeout for Amazon EBS volumes"); the kernel's multiplication by HZ wraps, so the
//! file then shows a large millisecond value (weeks) rather than 4294967295 s. Either way: I/O to
//! a stalled volume waits in D instead of failing. The file is absent on older kernels and on
//! some drivers (loop, virtio here), giving `None`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// NVMe model of an EBS volume.
pub const EBS_MODEL: &str = "Amazon Elastic Block Store";
/// NVMe model of an EC2 instance-store volume.
pub const INSTANCE_STORE_MODEL: &str = "Amazon EC2 NVMe Instance Storage";

/// One whole-disk block device (partitions are skipped).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BlockDevice {
    /// Kernel name: `nvme1n1`, `xvdf`, `sda`.
    pub name: String,
    /// `device/model`, trimmed; `None` when absent or empty (Xen `xvd*` have none).
    pub model: Option<String>,
    /// `device/serial`, trimmed; `None` when absent or empty.
    pub serial: Option<String>,
    /// `vol-…` for EBS NVMe devices whose serial is a volume id.
    pub volume_id: Option<String>,
    /// `queue/io_timeout` (ms in sysfs) in seconds.
    pub io_timeout_seconds: Option<f64>,
    /// `queue/rotational`.
    pub rotational: Option<bool>,
}

impl BlockDevice {
    /// An NVMe device whose model is EBS's.
    pub fn is_ebs(&self) -> bool {
        self.model.as_deref() == Some(EBS_MODEL)
    }

    /// An NVMe device whose model is EC2 instance storage.
    pub fn is_instance_store(&self) -> bool {
        self.model.as_deref() == Some(INSTANCE_STORE_MODEL)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    #[error("reading {path}: {source}", path = path.display())]
    ReadDir { path: PathBuf, source: io::Error },
}

/// Scans `<sysfs>/block` for whole-disk `nvme<N>n<M>`, `xvd<letters>`, `sd<letters>` and `vd<letters>`
/// devices, sorted by name. Only an unreadable `<sysfs>/block` is an error; a missing or
/// unreadable attribute of one device leaves that field `None`.
pub fn scan(sysfs: &Path) -> Result<Vec<BlockDevice>, DevicesError> {
    let dir = sysfs.join("block");
    let entries = fs::read_dir(&dir).map_err(|source| DevicesError::ReadDir {
        path: dir.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let path = entry.path();
        // `/sys/block` lists whole disks only, but a `partition` attribute is the kernel's own
        // mark of one, so check it rather than trust the name.
        if !is_candidate(&name) || path.join("partition").exists() {
            continue;
        }
        out.push(read_device(name, &path));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn read_device(name: String, path: &Path) -> BlockDevice {
    let model = read_trimmed(&path.join("device/model"));
    let serial = read_trimmed(&path.join("device/serial"));
    let volume_id = if name.starts_with("nvme") && model.as_deref() == Some(EBS_MODEL) {
        serial.as_deref().and_then(volume_id_from_serial)
    } else {
        None
    };
    let io_timeout_seconds = read_trimmed(&path.join("queue/io_timeout"))
        .and_then(|s| s.parse::<u64>().ok())
        .map(|ms| ms as f64 / 1000.0);
    let rotational = read_trimmed(&path.join("queue/rotational")).and_then(|s| match s.as_str() {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    });
    BlockDevice {
        name,
        model,
        serial,
        volume_id,
        io_timeout_seconds,
        rotational,
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    let s = fs::read_to_string(path).ok()?;
    let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!s.is_empty()).then(|| s.to_string())
}

/// `nvme<digits>n<digits>`, `xvd<letters>`, `sd<letters>`, `vd<letters>` (virtio: no EBS, but
/// `disk_info` and `io_timeout` describe every real disk, on any cloud).
fn is_candidate(name: &str) -> bool {
    let all = |s: &str, f: fn(char) -> bool| !s.is_empty() && s.chars().all(f);
    if let Some(rest) = name.strip_prefix("nvme") {
        return match rest.split_once('n') {
            Some((ctrl, ns)) => {
                all(ctrl, |c| c.is_ascii_digit()) && all(ns, |c| c.is_ascii_digit())
            }
            None => false,
        };
    }
    for prefix in ["xvd", "sd", "vd"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return all(rest, |c| c.is_ascii_lowercase());
        }
    }
    false
}

/// An EBS NVMe serial as a volume id: `vol0abc…` → `vol-0abc…`, `vol-0abc…` unchanged
/// (surrounding white space ignored). The id part must be 8 to 17 lowercase hex digits (old
/// 8-digit ids and current 17-digit ones); anything else is `None`.
pub fn volume_id_from_serial(serial: &str) -> Option<String> {
    let s = serial.trim();
    let rest = s.strip_prefix("vol")?;
    let hex = rest.strip_prefix('-').unwrap_or(rest);
    let ok = (8..=17).contains(&hex.len())
        && hex
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
    ok.then(|| format!("vol-{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("has a parent")).expect("mkdir");
        fs::write(p, content).expect("write");
    }

    #[test]
    fn serials_become_volume_ids() {
        assert_eq!(
            volume_id_from_serial("vol0123456789abcdef0"),
            Some("vol-0123456789abcdef0".into())
        );
        assert_eq!(
            volume_id_from_serial("  vol-0123456789abcdef0   "),
            Some("vol-0123456789abcdef0".into())
        );
        assert_eq!(
            volume_id_from_serial("vol1234abcd"),
            Some("vol-1234abcd".into())
        );
        assert_eq!(volume_id_from_serial("vol1234abc"), None); // too short
        assert_eq!(volume_id_from_serial("vol0123456789abcdef01"), None); // too long
        assert_eq!(volume_id_from_serial("vol0123456789ABCDEF0"), None); // not EC2's lowercase
        assert_eq!(volume_id_from_serial("AWS1A2B3C4D5E6F7G8"), None);
        assert_eq!(volume_id_from_serial("vol--0123456789abcdef0"), None);
        assert_eq!(volume_id_from_serial(""), None);
    }

    #[test]
    fn names() {
        for yes in [
            "nvme0n1", "nvme12n3", "xvda", "xvdba", "sda", "sdf", "vda", "vdb",
        ] {
            assert!(is_candidate(yes), "{yes}");
        }
        for no in [
            "nvme0n1p1",
            "nvme0",
            "nvme0c0n1",
            "nvmen1",
            "nvme0n",
            "xvda1",
            "sda1",
            "sd",
            "loop0",
            "zram0",
            "dm-0",
        ] {
            assert!(!is_candidate(no), "{no}");
        }
    }

    #[test]
    fn fixture_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        // EBS root volume: serial without the dash, padded like the real one.
        write(
            root,
            "block/nvme0n1/device/model",
            "Amazon Elastic Block Store              \n",
        );
        write(
            root,
            "block/nvme0n1/device/serial",
            "vol0123456789abcdef0\n",
        );
        write(root, "block/nvme0n1/queue/io_timeout", "4294966296\n");
        write(root, "block/nvme0n1/queue/rotational", "0\n");
        // A partition inside the disk's directory, as sysfs has it: not a /sys/block entry.
        write(root, "block/nvme0n1/nvme0n1p1/partition", "1\n");
        // EBS with the dash already in the serial and a 30 s timeout.
        write(
            root,
            "block/nvme1n1/device/model",
            "Amazon Elastic Block Store",
        );
        write(root, "block/nvme1n1/device/serial", "vol-0fedcba9876543210");
        write(root, "block/nvme1n1/queue/io_timeout", "30000");
        // Instance store: model and serial, no volume id.
        write(
            root,
            "block/nvme2n1/device/model",
            "Amazon EC2 NVMe Instance Storage\n",
        );
        write(
            root,
            "block/nvme2n1/device/serial",
            "AWS1A2B3C4D5E6F7G8H9\n",
        );
        write(root, "block/nvme2n1/queue/rotational", "0\n");
        // EBS model with a weird serial: EBS, but no id.
        write(
            root,
            "block/nvme3n1/device/model",
            "Amazon Elastic Block Store",
        );
        write(root, "block/nvme3n1/device/serial", "not-a-volume\n");
        write(root, "block/nvme3n1/queue/io_timeout", "garbage");
        write(root, "block/nvme3n1/queue/rotational", "2");
        // Files missing altogether.
        fs::create_dir_all(root.join("block/nvme4n1")).expect("mkdir");
        // A partition that somehow shows in block/: skipped by its `partition` attribute.
        write(root, "block/nvme5n1/partition", "1\n");
        write(
            root,
            "block/nvme5n1/device/model",
            "Amazon Elastic Block Store",
        );
        // A serial that looks like a volume on a non-EBS model: not an id.
        write(root, "block/nvme6n1/device/model", "Samsung SSD 980");
        write(root, "block/nvme6n1/device/serial", "vol0123456789abcdef0");
        // Xen and SCSI names, no ids; other devices ignored.
        write(root, "block/xvda/queue/rotational", "0\n");
        write(root, "block/sdf/device/model", "Virtual disk    ");
        write(root, "block/sdf/queue/rotational", "1\n");
        write(root, "block/loop0/queue/rotational", "0\n");
        write(root, "block/xvda1/partition", "1\n");
        write(
            root,
            "block/nvme0c0n1/device/model",
            "Amazon Elastic Block Store",
        );

        let got = scan(root).expect("scan");
        let names: Vec<&str> = got.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            ["nvme0n1", "nvme1n1", "nvme2n1", "nvme3n1", "nvme4n1", "nvme6n1", "sdf", "xvda"]
        );
        let by = |n: &str| got.iter().find(|d| d.name == n).expect("present").clone();

        assert_eq!(
            by("nvme0n1"),
            BlockDevice {
                name: "nvme0n1".into(),
                model: Some(EBS_MODEL.into()),
                serial: Some("vol0123456789abcdef0".into()),
                volume_id: Some("vol-0123456789abcdef0".into()),
                io_timeout_seconds: Some(4_294_966.296),
                rotational: Some(false),
            }
        );
        assert!(by("nvme0n1").is_ebs());
        let d = by("nvme1n1");
        assert_eq!(d.volume_id.as_deref(), Some("vol-0fedcba9876543210"));
        assert_eq!(d.io_timeout_seconds, Some(30.0));
        assert_eq!(d.rotational, None);
        let d = by("nvme2n1");
        assert!(d.is_instance_store() && !d.is_ebs());
        assert_eq!(d.serial.as_deref(), Some("AWS1A2B3C4D5E6F7G8H9"));
        assert_eq!(d.volume_id, None);
        let d = by("nvme3n1");
        assert!(d.is_ebs());
        assert_eq!(
            (d.volume_id, d.io_timeout_seconds, d.rotational),
            (None, None, None)
        );
        assert_eq!(
            by("nvme4n1"),
            BlockDevice {
                name: "nvme4n1".into(),
                model: None,
                serial: None,
                volume_id: None,
                io_timeout_seconds: None,
                rotational: None,
            }
        );
        assert_eq!(by("nvme6n1").volume_id, None);
        assert_eq!(by("sdf").model.as_deref(), Some("Virtual disk"));
        assert_eq!(by("sdf").rotational, Some(true));
        assert_eq!(by("xvda").volume_id, None);
        assert_eq!(by("xvda").rotational, Some(false));
    }

    #[test]
    fn missing_block_dir_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = scan(dir.path()).expect_err("no block/");
        assert!(err.to_string().contains("block"), "{err}");
    }

    #[test]
    fn this_machine_has_no_ebs_device() {
        let got = scan(Path::new("/sys")).expect("scan /sys");
        assert!(
            got.iter().all(|d| !d.is_ebs() && d.volume_id.is_none()),
            "{got:?}"
        );
        // Every real whole disk of a described kind is listed (this machine's is virtio).
        for e in std::fs::read_dir("/sys/block")
            .expect("/sys/block")
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_candidate(&name) {
                assert!(
                    got.iter().any(|d| d.name == name),
                    "{name} missing: {got:?}"
                );
            }
        }
    }
}
