//! The committed object was built from the committed source: `build.sh` (what `make bpf` runs)
//! rebuilds it into a temp file with Debian's clang (`TEST_DEBS` installs it) and the bytes
//! must be the same. A different clang than the one recorded in `dstate.bpf.o.clang` is said
//! plainly (its bytes may differ without anything being wrong).

use std::path::Path;
use std::process::Command;

#[test]
fn the_committed_object_is_built_from_the_committed_source() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf");
    let Ok(v) = Command::new("clang").arg("--version").output() else {
        let msg = "clang is not installed (make test-deps installs Debian's): cannot rebuild dstate.bpf.o";
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("SKIPPED: {msg}");
        return;
    };
    let version = String::from_utf8_lossy(&v.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let recorded = std::fs::read_to_string(dir.join("dstate.bpf.o.clang")).unwrap();
    assert_eq!(
        version,
        recorded.trim(),
        "dstate.bpf.o was built with {:?}; this machine has {version:?}: the bytes cannot be compared",
        recorded.trim()
    );
    let out = tempfile::tempdir().unwrap();
    let rebuilt = out.path().join("dstate.bpf.o");
    let o = Command::new("bash")
        .arg(dir.join("build.sh"))
        .arg(&rebuilt)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "build.sh failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let committed = std::fs::read(dir.join("dstate.bpf.o")).unwrap();
    let fresh = std::fs::read(&rebuilt).unwrap();
    assert!(
        committed == fresh,
        "crates/collector/bpf/dstate.bpf.o is not what dstate.bpf.c builds to: run `make bpf` and commit the object"
    );
    assert_eq!(
        committed,
        super::kernel::OBJECT,
        "the embedded object is the committed one"
    );
}
