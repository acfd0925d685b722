//! The deployment files in `deploy/` (issue 8), checked with real tools offline:
//! - Kubernetes manifests: `kubernetes-validate --strict` (PyPI; bundles the API schemas) for
//!   everything with a bundled schema; the ServiceMonitor (a CRD, no bundled schema) checked
//!   structurally here against the Service it selects; the DaemonSet's flags run through the
//!   real binary's `check-config` with the ConfigMap's own config.
//! - The plain Prometheus scrape config: Debian's promtool is built without Kubernetes
//!   discovery, so the file is checked with its `kubernetes_sd_configs` swapped for a static
//!   target (relabelling, rule files, alerting are promtool's) and the SD block structurally.
//! - The IAM policy: exactly the AWS actions the cloud crate's source calls.
//! - The systemd unit: `systemd-analyze verify` with no warnings (and with the NVMe drop-in);
//!   its capability set is enough to name the wait channels of real D-state threads, and the
//!   set without CAP_SYS_PTRACE is not (so the capability is needed, not decoration).
//! - The Dockerfile: its offline `prebuilt` stage built by a private dockerd on a base imported
//!   from the libraries `ldd` lists, then run: `--version`, `check-config`, a scrape.

mod image;
mod manifests;
mod systemd;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;

use crate::harness::repo;
use crate::rules::run;

pub(super) fn deploy() -> PathBuf {
    repo().join("deploy")
}

pub(super) fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

pub(super) fn s(v: &Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| serde_yaml_ng::to_string(v).unwrap().trim().to_string())
}

pub(super) fn kind<'a>(all: &'a [Value], k: &str) -> &'a Value {
    all.iter()
        .find(|d| d["kind"].as_str() == Some(k))
        .unwrap_or_else(|| panic!("no {k} in the manifests"))
}

pub(super) fn kubernetes_validate(files: &[&Path]) -> std::process::Output {
    run(
        Command::new("kubernetes-validate")
            .arg("--strict")
            .args(files),
        "kubernetes-validate (PyPI kubernetes-validate)",
    )
}
