//! Reading cgroup files relative to directory handles, and keeping the handles across passes.

use super::*;

#[test]
fn files_read_relative_to_a_dir_with_absent_garbage_and_big_files() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("a"), "42\n").unwrap();
    std::fs::write(t.path().join("bad"), "x\n").unwrap();
    // Bigger than the buffer: read whole over several reads.
    let big: String = (0..10_000).map(|i| format!("k{i} {i}\n")).collect();
    std::fs::write(t.path().join("big"), &big).unwrap();
    let mut errors = Vec::new();
    let mut f = Files::default();
    let d = Dir::open(t.path().to_path_buf(), &mut errors).unwrap();
    let num = |s: &str| crate::cgroup::parse_single_u64(s);
    assert_eq!(f.read(&d, c"a", num, &mut errors), Some(42));
    assert_eq!(f.read(&d, c"absent", num, &mut errors), None);
    assert!(errors.is_empty());
    assert_eq!(f.read(&d, c"bad", num, &mut errors), None);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].message.contains("bad"), "{:?}", errors[0]);
    let len = f.read(&d, c"big", |s| Ok(s.len()), &mut errors);
    assert_eq!(len, Some(big.len()));
    assert_eq!(f.read_path(&t.path().join("a"), num, &mut errors), Some(42));
    assert!(Dir::open(t.path().join("gone"), &mut errors).is_none());
    assert_eq!(errors.len(), 1, "an absent directory is not an error");
    // Relative to a hierarchy root, as a pass opens containers' directories.
    std::fs::create_dir_all(t.path().join("docker/c1")).unwrap();
    std::fs::write(t.path().join("docker/c1/pids.current"), "3\n").unwrap();
    let c1 = f.dir(t.path(), "/docker/c1", &mut errors).unwrap();
    assert_eq!(f.read(&c1, c"pids.current", num, &mut errors), Some(3));
    assert!(f.dir(t.path(), "/docker/c2", &mut errors).is_none());
    std::fs::write(t.path().join("docker/c1/bad"), "x\n").unwrap();
    assert_eq!(f.read(&c1, c"bad", num, &mut errors), None);
    let msg = &errors.last().unwrap().message;
    assert!(msg.contains("docker/c1/bad"), "the full path: {msg}");
    assert_eq!(errors.len(), 2);
}

/// Kept handles on a real cgroup (kernfs): used across passes without opening the
/// directory again; a cgroup removed and made again at the same path (a container
/// restarted) is found anew at the first file not found through the old handle; a
/// handle no pass used is closed.
#[test]
fn kept_directories_follow_a_cgroup_made_again_at_the_same_path() {
    let name = "kept_directories_follow_a_cgroup_made_again_at_the_same_path";
    if !crate::testing::require_root(name, "create cgroups") {
        return;
    }
    let layout = crate::cgroup::discover::detect(&crate::roots::Roots::default());
    let Some(root) = layout.v1("memory").or(layout.v2()).map(Path::to_path_buf) else {
        eprintln!("SKIPPED {name}: no memory hierarchy");
        return;
    };
    let rel = format!("/sw-kept-{}", std::process::id());
    let made = crate::testing::MadeDir::new(crate::cgroup::join(&root, &rel));
    let dir = made.path();
    let mut errors = Vec::new();
    let mut f = Files::default();
    let num = |s: &str| crate::cgroup::parse_single_u64(s);
    let usage = if layout.v1("memory").is_some() {
        c"memory.usage_in_bytes"
    } else {
        c"memory.current"
    };

    f.begin_pass();
    let d = f.dir(&root, &rel, &mut errors).unwrap();
    assert!(f.read(&d, usage, num, &mut errors).is_some(), "{errors:?}");
    assert_eq!(f.first_pid(&d, &mut errors), None, "empty");
    assert_eq!(f.dir_opens, 1);
    f.begin_pass();
    let d = f.dir(&root, &rel, &mut errors).unwrap();
    assert!(f.read(&d, usage, num, &mut errors).is_some());
    assert_eq!(f.dir_opens, 1, "kept: not opened again");

    // Made again at the same path, with a process in it this time.
    std::fs::remove_dir(dir).unwrap();
    std::fs::create_dir(dir).unwrap();
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
    f.begin_pass();
    let d = f.dir(&root, &rel, &mut errors).unwrap();
    let pid = f.first_pid(&d, &mut errors);
    assert!(f.read(&d, usage, num, &mut errors).is_some(), "{errors:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(pid, Some(child.id()), "read from the new cgroup");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(f.dir_opens, 2, "the path opened again once");
    // Through the old handle, in the same pass: the new one, not opened again.
    assert!(f.read(&d, usage, num, &mut errors).is_some(), "{errors:?}");
    assert_eq!(f.dir_opens, 2);
    // A file absent from a live kept directory: the path is checked once per pass.
    f.begin_pass();
    let d = f.dir(&root, &rel, &mut errors).unwrap();
    assert_eq!(f.read(&d, c"no.such.file", num, &mut errors), None);
    assert_eq!(f.read(&d, c"no.such.file", num, &mut errors), None);
    assert_eq!(f.dir_opens, 3);
    assert!(errors.is_empty(), "{errors:?}");

    // A pass that does not use it closes it.
    f.begin_pass();
    assert_eq!(f.kept.len(), 1);
    f.begin_pass();
    assert!(f.kept.is_empty());
}

#[test]
fn first_pid_of_a_fixture_and_of_nothing() {
    let t = tempfile::tempdir().unwrap();
    let mut errors = Vec::new();
    let mut f = Files::default();
    let d = Dir::open(t.path().to_path_buf(), &mut errors).unwrap();
    assert_eq!(f.first_pid(&d, &mut errors), None);
    std::fs::write(t.path().join("cgroup.procs"), "").unwrap();
    assert_eq!(f.first_pid(&d, &mut errors), None);
    std::fs::write(t.path().join("cgroup.procs"), "4242\n4243\n").unwrap();
    assert_eq!(f.first_pid(&d, &mut errors), Some(4242));
    assert!(errors.is_empty());
    std::fs::write(t.path().join("cgroup.procs"), "x\n").unwrap();
    assert_eq!(f.first_pid(&d, &mut errors), None);
    assert_eq!(errors.len(), 1);
}

#[test]
fn hierarchies_reached_by_two_names_are_one() {
    let t = tempfile::tempdir().unwrap();
    let both = t.path().join("cpu,cpuacct");
    std::fs::create_dir(&both).unwrap();
    std::os::unix::fs::symlink(&both, t.path().join("cpu")).unwrap();
    std::fs::create_dir(t.path().join("memory")).unwrap();
    let mut f = Files::default();
    assert!(f.same_hierarchy(&t.path().join("cpu"), &both));
    assert!(!f.same_hierarchy(&t.path().join("cpu"), &t.path().join("memory")));
    assert!(!f.same_hierarchy(&t.path().join("x"), &t.path().join("y")));
}
