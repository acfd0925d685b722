//! Which container a cgroup path belongs to, from the path alone (pure; no file is read).
//! Paths are relative to a hierarchy root, as `/proc/<pid>/cgroup` and the discovery walk
//! spell them. Shapes seen in the wild (ids shortened here; real ones are 64 hex):
//! ```text
//! /docker/3f2a…                                                  docker, cgroupfs driver
//! /system.slice/docker-3f2a….scope                               docker, systemd driver
//! /kubepods/burstable/pod12ab-34cd-…/3f2a…                       kubelet cgroupfs (any runtime)
//! /kubepods/pod12ab-34cd-…/3f2a…                                 … guaranteed pod: no QoS dir
//! /kubepods.slice/kubepods-burstable.slice/
//!     kubepods-burstable-pod12ab_34cd_….slice/cri-containerd-3f2a….scope   kubelet systemd
//! /kubepods.slice/kubepods-pod12ab_34cd_….slice/crio-3f2a….scope           … guaranteed, CRI-O
//! /machine.slice/libpod-3f2a….scope                              podman (root, systemd)
//! /libpod_parent/libpod-3f2a…                                    podman, cgroupfs manager
//! ```
//! Not containers: `crio-conmon-<id>.scope` and `libpod-conmon-<id>.scope` (the monitor
//! processes next to a container), the pod and QoS cgroups themselves.
//!
//! Why so strict: every field of an [`Identity`] becomes a label value. Anyone who can create a
//! cgroup (rootless podman, a delegated systemd subtree) picks its name, so a name only counts
//! when it has one of the shapes above and the id is lowercase hex of the runtime's length —
//! never free text that could invent label values or blow up cardinality with long strings.

/// The container runtime, as far as the path tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Runtime {
    Docker,
    Containerd,
    Crio,
    Podman,
    /// A bare id under a kubelet pod cgroup (cgroupfs driver): the kubelet's layout is the same
    /// for every runtime.
    Unknown,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::Crio => "crio",
            Runtime::Podman => "podman",
            Runtime::Unknown => "unknown",
        }
    }
}

/// Kubernetes pod QoS class, from the kubelet's cgroup layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub fn as_str(self) -> &'static str {
        match self {
            Qos::Guaranteed => "guaranteed",
            Qos::Burstable => "burstable",
            Qos::BestEffort => "besteffort",
        }
    }
}

/// Who a container cgroup belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Full id: 64 lowercase hex for docker, containerd, CRI-O and podman; 12..=64 hex for
    /// [`Runtime::Unknown`].
    pub container_id: String,
    pub runtime: Runtime,
    /// The pod's UID with dashes (`12ab34cd-…`; the systemd driver spells it with `_`).
    pub pod_uid: Option<String>,
    pub qos: Option<Qos>,
}

/// Leaf prefixes naming the runtime (`<prefix><id>.scope` with systemd, `<prefix><id>` with
/// cgroupfs drivers of CRI-O and podman).
const PREFIXES: [(&str, Runtime); 4] = [
    ("docker-", Runtime::Docker),
    ("cri-containerd-", Runtime::Containerd),
    ("crio-", Runtime::Crio),
    ("libpod-", Runtime::Podman),
];

/// Container ids of the named runtimes are sha256 hex.
const FULL_ID_LEN: usize = 64;
/// The shortest bare id accepted under a pod cgroup (docker's short id length).
const MIN_UNKNOWN_ID_LEN: usize = 12;

fn is_lower_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_full_id(s: &str) -> bool {
    s.len() == FULL_ID_LEN && is_lower_hex(s)
}

/// A pod UID: a UUID for API pods, a 32-hex hash for static pods. Hex and dashes only, and
/// bounded, as it becomes a label value.
fn pod_uid(raw: &str) -> Option<String> {
    let uid = raw.replace('_', "-");
    let ok = (8..=64).contains(&uid.len())
        && uid
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && uid.bytes().any(|b| b != b'-');
    ok.then_some(uid)
}

/// A pod cgroup: `pod<uid>` (cgroupfs; QoS from the parents) or
/// `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd; QoS in the name).
/// Returns the UID and, for the systemd form, the QoS.
fn pod_dir(name: &str) -> Option<(String, Option<Qos>)> {
    if let Some(slice) = name.strip_suffix(".slice") {
        let rest = slice.strip_prefix("kubepods-")?;
        let (qos, rest) = if let Some(r) = rest.strip_prefix("burstable-") {
            (Qos::Burstable, r)
        } else if let Some(r) = rest.strip_prefix("besteffort-") {
            (Qos::BestEffort, r)
        } else {
            (Qos::Guaranteed, rest)
        };
        let uid = pod_uid(rest.strip_prefix("pod")?)?;
        return Some((uid, Some(qos)));
    }
    Some((pod_uid(name.strip_prefix("pod")?)?, None))
}

/// The pod context of a container whose parent directories are `parents` (root first):
/// `Some((uid, qos))` when the immediate parent is a kubelet pod cgroup in a kubelet layout.
fn pod_context(parents: &[&str]) -> Option<(String, Qos)> {
    let (&parent, above) = parents.split_last()?;
    let (uid, qos) = pod_dir(parent)?;
    if let Some(qos) = qos {
        // systemd: kubepods.slice/[kubepods-<qos>.slice/]kubepods-…-pod<uid>.slice
        return above.contains(&"kubepods.slice").then_some((uid, qos));
    }
    // cgroupfs: kubepods/[burstable|besteffort/]pod<uid>
    match above {
        [.., "kubepods", "burstable"] => Some((uid, Qos::Burstable)),
        [.., "kubepods", "besteffort"] => Some((uid, Qos::BestEffort)),
        [.., "kubepods"] => Some((uid, Qos::Guaranteed)),
        _ => None,
    }
}

/// `<prefix><64 hex>[.scope]` → runtime and id. `scope` says whether `.scope` must be there
/// (`Some(true)`), must not (`Some(false)`), or either (`None`).
fn prefixed(leaf: &str) -> Option<(Runtime, &str, bool)> {
    let (stem, scope) = match leaf.strip_suffix(".scope") {
        Some(s) => (s, true),
        None => (leaf, false),
    };
    PREFIXES.iter().find_map(|(p, rt)| {
        // `crio-conmon-<id>` / `libpod-conmon-<id>`: the rest is not hex, so no match.
        let id = stem.strip_prefix(p)?;
        is_full_id(id).then_some((*rt, id, scope))
    })
}

/// The container a cgroup path belongs to, or `None` when the path is not a container's own
/// cgroup (the root, a slice, a pod or QoS cgroup, a monitor, a child of a container, anything
/// unrecognised).
pub fn identify(path: &str) -> Option<Identity> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let (&leaf, parents) = comps.split_last()?;
    if comps.iter().any(|c| *c == "." || *c == "..") {
        return None;
    }
    let pod = pod_context(parents);
    let make = |id: &str, runtime: Runtime, pod: Option<(String, Qos)>| {
        let (pod_uid, qos) = match pod {
            Some((u, q)) => (Some(u), Some(q)),
            None => (None, None),
        };
        Some(Identity {
            container_id: id.to_string(),
            runtime,
            pod_uid,
            qos,
        })
    };
    if let Some((runtime, id, scope)) = prefixed(leaf) {
        // systemd scopes are valid anywhere (system.slice, machine.slice, user slices, pods);
        // unscoped prefixed names only where a cgroupfs driver puts them.
        let cgroupfs_place = pod.is_some()
            || (runtime == Runtime::Podman && parents.last() == Some(&"libpod_parent"));
        if scope || cgroupfs_place {
            return make(id, runtime, pod);
        }
        return None;
    }
    if !is_lower_hex(leaf) {
        return None;
    }
    if pod.is_some() {
        // The kubelet's cgroupfs layout is the same for every runtime (and for a docker
        // `--cgroup-parent /kubepods/…`): the path does not say which one.
        if (MIN_UNKNOWN_ID_LEN..=FULL_ID_LEN).contains(&leaf.len()) {
            return make(leaf, Runtime::Unknown, pod);
        }
        return None;
    }
    if parents.last() == Some(&"docker") && is_full_id(leaf) {
        return make(leaf, Runtime::Docker, None);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c1b7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b";
    const UID: &str = "12ab34cd-56ef-7890-abcd-ef0123456789";
    const UID_: &str = "12ab34cd_56ef_7890_abcd_ef0123456789";

    fn id(path: &str) -> Identity {
        identify(path).unwrap_or_else(|| panic!("{path} should be a container"))
    }

    fn plain(rt: Runtime) -> Identity {
        Identity {
            container_id: ID.into(),
            runtime: rt,
            pod_uid: None,
            qos: None,
        }
    }

    fn in_pod(rt: Runtime, qos: Qos) -> Identity {
        Identity {
            container_id: ID.into(),
            runtime: rt,
            pod_uid: Some(UID.into()),
            qos: Some(qos),
        }
    }

    #[test]
    fn docker_cgroupfs_driver() {
        assert_eq!(id(&format!("/docker/{ID}")), plain(Runtime::Docker));
        // without the leading slash too (joined paths, discovery output)
        assert_eq!(id(&format!("docker/{ID}")), plain(Runtime::Docker));
    }

    #[test]
    fn docker_systemd_driver() {
        assert_eq!(
            id(&format!("/system.slice/docker-{ID}.scope")),
            plain(Runtime::Docker)
        );
    }

    #[test]
    fn containerd_cri_systemd() {
        assert_eq!(
            id(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
            )),
            in_pod(Runtime::Containerd, Qos::Burstable)
        );
    }

    #[test]
    fn kubelet_cgroupfs_burstable_and_besteffort() {
        assert_eq!(
            id(&format!("/kubepods/burstable/pod{UID}/{ID}")),
            in_pod(Runtime::Unknown, Qos::Burstable)
        );
        assert_eq!(
            id(&format!("/kubepods/besteffort/pod{UID}/{ID}")),
            in_pod(Runtime::Unknown, Qos::BestEffort)
        );
    }

    #[test]
    fn kubelet_cgroupfs_guaranteed_has_no_qos_dir() {
        assert_eq!(
            id(&format!("/kubepods/pod{UID}/{ID}")),
            in_pod(Runtime::Unknown, Qos::Guaranteed)
        );
    }

    #[test]
    fn kubelet_cgroupfs_short_unknown_id() {
        let i = id(&format!("/kubepods/burstable/pod{UID}/3f2a9c1b7e6d"));
        assert_eq!(i.container_id, "3f2a9c1b7e6d");
        assert_eq!(i.runtime, Runtime::Unknown);
        assert!(identify(&format!("/kubepods/burstable/pod{UID}/3f2a9c1b7e6")).is_none());
    }

    #[test]
    fn kubelet_systemd_besteffort_and_guaranteed() {
        assert_eq!(
            id(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{ID}.scope"
            )),
            in_pod(Runtime::Docker, Qos::BestEffort)
        );
        assert_eq!(
            id(&format!(
                "/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"
            )),
            in_pod(Runtime::Containerd, Qos::Guaranteed)
        );
    }

    #[test]
    fn crio_systemd_and_cgroupfs() {
        assert_eq!(
            id(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope"
            )),
            in_pod(Runtime::Crio, Qos::Burstable)
        );
        assert_eq!(
            id(&format!("/kubepods/burstable/pod{UID}/crio-{ID}")),
            in_pod(Runtime::Crio, Qos::Burstable)
        );
    }

    #[test]
    fn crio_conmon_is_not_a_container() {
        assert!(identify(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{ID}.scope"
        ))
        .is_none());
    }

    #[test]
    fn podman_scopes_and_cgroupfs_manager() {
        assert_eq!(
            id(&format!("/machine.slice/libpod-{ID}.scope")),
            plain(Runtime::Podman)
        );
        assert_eq!(
            id(&format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
            )),
            plain(Runtime::Podman)
        );
        assert_eq!(
            id(&format!("/libpod_parent/libpod-{ID}")),
            plain(Runtime::Podman)
        );
        assert!(identify(&format!("/machine.slice/libpod-conmon-{ID}.scope")).is_none());
    }

    #[test]
    fn docker_cgroup_parent_kubepods_is_unknown_with_pod() {
        // `docker run --cgroup-parent /kubepods/burstable/pod<uid>` (the kubelet's cgroupfs
        // layout reproduced by hand): runtime not in the path.
        assert_eq!(
            id(&format!("/kubepods/burstable/pod{UID}/{ID}")).runtime,
            Runtime::Unknown
        );
        // … unless a `docker-` prefix says so.
        assert_eq!(
            id(&format!("/kubepods/burstable/pod{UID}/docker-{ID}.scope")),
            in_pod(Runtime::Docker, Qos::Burstable)
        );
    }

    #[test]
    fn static_pod_uid_is_a_hash() {
        let i = id(&format!(
            "/kubepods/pod0123456789abcdef0123456789abcdef/{ID}"
        ));
        assert_eq!(
            i.pod_uid.as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
    }

    #[test]
    fn not_containers() {
        for p in [
            "",
            "/",
            "/docker",
            "/system.slice",
            "/system.slice/docker.service",
            "/system.slice/containerd.service",
            "/user.slice/user-1000.slice/session-3.scope",
            "/kubepods",
            "/kubepods/burstable",
            &format!("/kubepods/burstable/pod{UID}"),
            "/kubepods.slice/kubepods-burstable.slice",
            &format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"),
            "/process_api/daea6acf5c56d9bc8046be6823682f0a",
            "/stallwatch-test-1234",
        ] {
            assert!(identify(p).is_none(), "{p:?}");
        }
    }

    #[test]
    fn ids_must_be_lowercase_hex_of_the_right_length() {
        let upper = ID.to_uppercase();
        let short = &ID[..63];
        let long = format!("{ID}0");
        let text = "not-a-container-id-but-some-text-a-process-chose-for-its-cgroup";
        for bad in [upper.as_str(), short, long.as_str(), text] {
            assert!(identify(&format!("/docker/{bad}")).is_none(), "{bad}");
            assert!(
                identify(&format!("/system.slice/docker-{bad}.scope")).is_none(),
                "{bad}"
            );
            if bad != short {
                assert!(
                    identify(&format!("/kubepods/burstable/pod{UID}/{bad}")).is_none(),
                    "{bad}"
                );
            }
        }
        // 12..=64 hex is fine for an unknown runtime under a pod.
        assert!(identify(&format!("/kubepods/burstable/pod{UID}/{short}")).is_some());
        // bare 64 hex outside `docker` or a pod: not ours to name.
        assert!(identify(&format!("/{ID}")).is_none());
        assert!(identify(&format!("/mystuff/{ID}")).is_none());
        // unscoped prefixed names only where a cgroupfs driver puts them.
        assert!(identify(&format!("/system.slice/docker-{ID}")).is_none());
        assert!(identify(&format!("/libpod-{ID}")).is_none());
    }

    #[test]
    fn pod_uids_are_validated_and_qos_dirs_must_be_kubelets() {
        // Not hex: a process cannot smuggle text in as a pod UID.
        assert!(identify(&format!("/kubepods/burstable/podhello-world-xyz/{ID}")).is_none());
        // A scope keeps its own (valid) id, but a bad pod slice gives no pod labels.
        assert!(identify(&format!(
            "/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope",
            "x".repeat(36)
        ))
        .is_some_and(|i| i.pod_uid.is_none() && i.qos.is_none()));
        // A pod dir outside kubepods, or under an unknown QoS dir.
        assert!(identify(&format!("/pod{UID}/{ID}")).is_none());
        assert!(identify(&format!("/kubepods/gold/pod{UID}/{ID}")).is_none());
        // systemd pod slice outside kubepods.slice
        assert!(
            identify(&format!("/kubepods-pod{UID_}.slice/crio-{ID}.scope"))
                .is_some_and(|i| i.pod_uid.is_none())
        );
    }

    #[test]
    fn children_of_containers_and_dot_dot_are_rejected() {
        assert!(identify(&format!("/docker/{ID}/init")).is_none());
        assert!(identify(&format!("/docker/../docker/{ID}")).is_none());
        // docker-in-docker: the inner one is a container of its own shape (discovery never
        // descends that far, but the path is well-formed).
        let inner = ID.replace('3', "4");
        assert_eq!(
            id(&format!("/docker/{ID}/docker/{inner}")).container_id,
            inner
        );
    }

    #[test]
    fn label_strings() {
        assert_eq!(Runtime::Containerd.as_str(), "containerd");
        assert_eq!(Runtime::Unknown.as_str(), "unknown");
        assert_eq!(Qos::BestEffort.as_str(), "besteffort");
    }
}
