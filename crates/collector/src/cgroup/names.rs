//! Container names from the runtimes' own state on the host: docker's
//! `<root>/containers/<id>/config.v2.json` (top-level `"Name": "/web"`), and containers/storage's
//! lists for CRI-O and podman. Names are chosen by whoever starts the container, not by what
//! runs inside it; they are still made label-safe (control characters, bidirectional
//! overrides, length).

use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

/// Container names from the runtime's own state. Docker's are cached per id (a name never
/// changes for an id, except by `docker rename`, which a restart of the agent picks up);
/// containers/storage's (CRI-O, podman) come from one list per store, re-read when it changes.
#[derive(Debug, Default)]
pub struct Names {
    cache: HashMap<String, Option<String>>,
    storage: Storage,
}

/// Longest name exported; docker allows any length.
const MAX_NAME: usize = 128;
/// Most entries kept from one containers/storage list.
const MAX_STORAGE_ENTRIES: usize = 100_000;

/// A runtime-given name made safe for a label value: control characters and bidirectional
/// overrides replaced, length bounded.
fn label_safe(n: &str) -> String {
    crate::text::safe(n, MAX_NAME)
}

/// containers/storage's container lists, the state CRI-O and podman keep their names in
/// (`containers.go`: a JSON array of `{"id": "<64 hex>", "names": ["web"], "image": …,
/// "layer": …, "metadata": …, "created": …, "flags": …}`, written whole by an atomic
/// rename). `containers.json` holds the stable containers, `volatile-containers.json` those
/// made with a volatile store (`podman run --rm`). A store keeps its transient
/// (`transient_store = true`) list under the run root instead: those are not read.
///
/// Cheap by construction: one `stat` per file per pass (only when a CRI-O or podman container
/// is in the pass), and a parse only when the file's mtime, size or inode changed.
#[derive(Debug, Default)]
struct Storage {
    files: [StoreFile; 2],
    /// The files were stat'ed in this pass.
    checked: bool,
    /// Parses so far (a test checks that an unchanged file is not re-read).
    parses: u64,
}

const STORAGE_FILES: [&str; 2] = ["containers.json", "volatile-containers.json"];

#[derive(Debug, Default)]
struct StoreFile {
    /// (mtime, size, inode) of the file as last parsed; `None`: absent or not parsed yet.
    stamp: Option<(SystemTime, u64, u64)>,
    /// id → first name.
    names: HashMap<String, String>,
}

/// Parses one containers/storage list into id → name, keeping entries whose id has the
/// shape of a container id and that have a non-empty first name.
fn parse_storage(bytes: &[u8]) -> Option<HashMap<String, String>> {
    let v: Vec<serde_json::Value> = serde_json::from_slice(bytes).ok()?;
    Some(
        v.iter()
            .filter_map(|c| {
                let id = c.get("id")?.as_str()?;
                let ok = id.len() == 64
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                let name = c.get("names")?.as_array()?.first()?.as_str()?;
                (ok && !name.is_empty()).then(|| (id.to_string(), label_safe(name)))
            })
            .take(MAX_STORAGE_ENTRIES)
            .collect(),
    )
}

impl Storage {
    fn refresh(&mut self, dir: &Path) {
        use std::os::unix::fs::MetadataExt;
        for (f, name) in self.files.iter_mut().zip(STORAGE_FILES) {
            let path = dir.join(name);
            let Ok(md) = std::fs::metadata(&path) else {
                *f = StoreFile::default();
                continue;
            };
            let stamp = (
                md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                md.len(),
                md.ino(),
            );
            if f.stamp == Some(stamp) {
                continue;
            }
            self.parses += 1;
            // A file that does not parse keeps the names we had and is tried again next
            // pass (its stamp is not recorded).
            if let Some(names) = std::fs::read(&path).ok().and_then(|b| parse_storage(&b)) {
                *f = StoreFile {
                    stamp: Some(stamp),
                    names,
                };
            }
        }
    }
}

impl Names {
    /// Call once per pass: containers/storage lists are checked for changes at most once in
    /// each.
    pub fn begin_pass(&mut self) {
        self.storage.checked = false;
    }

    /// CRI-O and podman: the first of the container's `names` in containers/storage's lists
    /// under `storage_root`.
    pub fn storage(&mut self, storage_root: &Path, id: &str) -> Option<String> {
        if !self.storage.checked {
            self.storage.checked = true;
            self.storage
                .refresh(&storage_root.join("overlay-containers"));
        }
        self.storage
            .files
            .iter()
            .find_map(|f| f.names.get(id))
            .cloned()
    }

    /// Docker: `<root>/containers/<id>/config.v2.json`, top-level `"Name": "/web"`.
    pub fn docker(&mut self, docker_root: &Path, id: &str) -> Option<String> {
        if let Some(n) = self.cache.get(id) {
            return n.clone();
        }
        let path = docker_root
            .join("containers")
            .join(id)
            .join("config.v2.json");
        let name = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| {
                v.get("Name")?
                    .as_str()
                    .map(|s| s.trim_start_matches('/').to_string())
            })
            .filter(|n| !n.is_empty())
            .map(|n| label_safe(&n));
        // Only a found name is cached: the state file may be written just after the cgroup.
        if name.is_some() {
            if self.cache.len() > 10_000 {
                self.cache.clear();
            }
            self.cache.insert(id.to_string(), name.clone());
        }
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::pass::{pass_named, PassState};
    use crate::roots::Roots;
    use std::time::Duration;

    #[test]
    fn docker_names_from_config_v2_json_are_label_safe_and_cached() {
        let root = tempfile::tempdir().unwrap();
        let id = "ab".repeat(32);
        let dir = root.path().join("containers").join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.v2.json"),
            r#"{"ID":"x","Config":{"Name":"inner"},"Name":"/web\n1"}"#,
        )
        .unwrap();
        let mut n = Names::default();
        assert_eq!(
            n.docker(root.path(), &id).as_deref(),
            Some("web?1"),
            "top-level Name, control chars made safe"
        );
        std::fs::remove_dir_all(root.path().join("containers")).unwrap();
        assert_eq!(
            n.docker(root.path(), &id).as_deref(),
            Some("web?1"),
            "cached"
        );
        assert_eq!(
            n.docker(root.path(), &"cd".repeat(32)),
            None,
            "no state: no name"
        );
    }

    const PODMAN_ID: &str = "8d3fbbd0c8f6b2a1e3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081920";
    const CRIO_ID: &str = "1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d";
    const RM_ID: &str = "aaaabbbbccccddddeeeeffff0000111122223333444455556666777788889999";

    /// A `containers.json` with the fields of containers/storage's `Container` (values made
    /// up): a podman container named with a control character, a CRI-O container with the
    /// kubelet's name, one with no names, one whose id is not a container id.
    fn containers_json(podman_name: &str) -> String {
        format!(
            r#"[{{"id":"{PODMAN_ID}","names":["{podman_name}"],"image":"{CRIO_ID}","layer":"{RM_ID}","metadata":"{{\"image-name\":\"docker.io/library/nginx:latest\",\"name\":\"web\"}}","big-data-names":["volatile.json"],"big-data-sizes":{{"volatile.json":1043}},"created":"2026-11-23T21:00:00.123456789Z","flags":{{"MountLabel":"","ProcessLabel":""}}}},
{{"id":"{CRIO_ID}","names":["k8s_nginx_nginx-7c5b4_default_12ab34cd-56ef-7890-abcd-ef0123456789_0"],"image":"x","layer":"y","created":"2026-11-23T21:00:01Z"}},
{{"id":"{}","image":"x","layer":"y"}},
{{"id":"../../etc","names":["evil"],"image":"x","layer":"y"}}]"#,
            "0".repeat(64)
        )
    }

    fn store(root: &std::path::Path) -> std::path::PathBuf {
        let d = root.join("overlay-containers");
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn crio_and_podman_names_from_containers_storage_reread_only_on_change() {
        let root = tempfile::tempdir().unwrap();
        let dir = store(root.path());
        let stable = dir.join("containers.json");
        std::fs::write(&stable, containers_json("web\\tx")).unwrap();
        std::fs::write(
            dir.join("volatile-containers.json"),
            format!(r#"[{{"id":"{RM_ID}","names":["tmp-1"],"image":"x","layer":"y"}}]"#),
        )
        .unwrap();
        let r = root.path();
        let mut n = Names::default();
        n.begin_pass();
        assert_eq!(
            n.storage(r, PODMAN_ID).as_deref(),
            Some("web?x"),
            "label-safe"
        );
        assert_eq!(
            n.storage(r, CRIO_ID).as_deref(),
            Some("k8s_nginx_nginx-7c5b4_default_12ab34cd-56ef-7890-abcd-ef0123456789_0")
        );
        assert_eq!(
            n.storage(r, RM_ID).as_deref(),
            Some("tmp-1"),
            "volatile store"
        );
        assert_eq!(n.storage(r, &"0".repeat(64)), None, "no names");
        assert_eq!(n.storage(r, "../../etc"), None, "not an id");
        assert_eq!(n.storage(r, &"f".repeat(64)), None, "unknown");
        assert_eq!(n.storage.parses, 2, "each file parsed once in a pass");

        // Unchanged: the next passes stat the files but do not parse them.
        for _ in 0..3 {
            n.begin_pass();
            assert!(n.storage(r, PODMAN_ID).is_some());
        }
        assert_eq!(n.storage.parses, 2);

        // Rewritten in place with the same size and the old mtime put back: the stamp says
        // unchanged, so it is not re-read (the cache key is the stamp, not the content).
        let mtime = std::fs::metadata(&stable).unwrap().modified().unwrap();
        std::fs::write(&stable, containers_json("web\\ty")).unwrap();
        let f = std::fs::File::options().write(true).open(&stable).unwrap();
        f.set_modified(mtime).unwrap();
        n.begin_pass();
        assert_eq!(n.storage(r, PODMAN_ID).as_deref(), Some("web?x"));
        assert_eq!(n.storage.parses, 2);
        // Its mtime moves (as every write by containers/storage does): re-read.
        f.set_modified(mtime + Duration::from_secs(1)).unwrap();
        n.begin_pass();
        assert_eq!(n.storage(r, PODMAN_ID).as_deref(), Some("web?y"));
        assert_eq!(n.storage.parses, 3, "only the changed file");

        // A broken write keeps the names we had and is retried.
        std::fs::write(&stable, "[{\"id\":").unwrap();
        n.begin_pass();
        assert_eq!(n.storage(r, PODMAN_ID).as_deref(), Some("web?y"));
        n.begin_pass();
        assert_eq!(n.storage(r, PODMAN_ID).as_deref(), Some("web?y"));
        assert_eq!(n.storage.parses, 5, "retried each pass");

        // Gone: within the pass nothing is stat'ed again; from the next pass, no names.
        std::fs::remove_file(&stable).unwrap();
        assert!(n.storage(r, PODMAN_ID).is_some());
        n.begin_pass();
        assert_eq!(n.storage(r, PODMAN_ID), None);
        assert_eq!(
            n.storage(r, RM_ID).as_deref(),
            Some("tmp-1"),
            "the other list stays"
        );
    }

    /// A pass names CRI-O and podman containers from the store under `--path.rootfs`, and
    /// docker ones (with no docker state here) not at all.
    #[test]
    fn a_pass_names_crio_and_podman_containers_from_their_store() {
        let cg = tempfile::tempdir().unwrap();
        let c = cg.path();
        std::fs::write(c.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        let docker_id = "d".repeat(64);
        for rel in [
            format!("machine.slice/libpod-{PODMAN_ID}.scope"),
            format!(
                "kubepods.slice/kubepods-pod12ab34cd_56ef_7890_abcd_ef0123456789.slice/crio-{CRIO_ID}.scope"
            ),
            format!("docker/{docker_id}"),
        ] {
            std::fs::create_dir_all(c.join(rel)).unwrap();
        }
        let rootfs = tempfile::tempdir().unwrap();
        let dir = store(&rootfs.path().join("var/lib/containers/storage"));
        std::fs::write(dir.join("containers.json"), containers_json("web")).unwrap();
        let roots = Roots {
            cgroupfs: c.to_path_buf(),
            rootfs: rootfs.path().to_path_buf(),
            ..Roots::default()
        };
        let mut state = PassState::default();
        let p = pass_named(&roots, 10, None, None, &mut state);
        let by_id = |id: &str| {
            p.rows
                .iter()
                .find(|r| r.identity.container_id == id)
                .unwrap()
                .name
                .clone()
        };
        assert_eq!(by_id(PODMAN_ID).as_deref(), Some("web"));
        assert!(by_id(CRIO_ID).is_some_and(|n| n.starts_with("k8s_nginx_")));
        assert_eq!(by_id(&docker_id), None);
        assert_eq!(state.names.storage.parses, 1, "one list, parsed once");
        pass_named(&roots, 10, None, None, &mut state);
        assert_eq!(state.names.storage.parses, 1, "not again while unchanged");
    }
}
