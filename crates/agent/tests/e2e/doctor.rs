//! `stallwatch doctor` on this machine and on a fixture host: what it finds must be what the
//! kernel files say, and a broken setup must fail with exit status 1.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::{fixture, write, Agent, BIN};
use crate::stuck::copy_tree;

fn doctor(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("doctor")
        .output()
        .expect("run stallwatch doctor");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), text)
}

fn line<'a>(text: &'a str, what: &str) -> &'a str {
    text.lines()
        .find(|l| l[6..].trim_start().starts_with(&format!("{what}:")))
        .unwrap_or_else(|| panic!("no {what} line in:\n{text}"))
}

#[test]
fn doctor_on_this_machine_reports_what_the_kernel_files_say() {
    let (code, text) = doctor(&[]);
    assert_eq!(code, 0, "{text}");
    // PSI: OK exactly when all three files exist.
    let psi_all = ["cpu", "io", "memory"]
        .iter()
        .all(|r| std::path::Path::new(&format!("/proc/pressure/{r}")).exists());
    assert_eq!(line(&text, "PSI").starts_with("[ OK ]"), psi_all, "{text}");
    // Delay accounting: said as the sysctl has it, and never "exported" (docs/metrics.md:
    // the agent does not export per-task block I/O delay either way).
    let delayacct = std::fs::read_to_string("/proc/sys/kernel/task_delayacct")
        .map(|v| v.trim() == "1")
        .unwrap_or(false);
    let d = line(&text, "delay accounting");
    assert_eq!(d.contains(": on"), delayacct, "{d}");
    assert!(
        d.contains("does not export") && !d.contains("is exported"),
        "{d}"
    );
    // This host's layout: v1 controllers plus a unified tree.
    if std::path::Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
        assert!(line(&text, "cgroups").contains("hybrid"), "{text}");
    }
    assert!(line(&text, "EBS devices").contains("none"), "{text}");
    assert!(text.trim_end().ends_with("0 failures"), "{text}");
}

#[test]
fn doctor_on_a_pure_v2_host_without_psi_warns_and_finds_its_containers() {
    let root = fixture("v2-nopsi-5.4");
    let (code, text) = doctor(&[
        &format!("--path.procfs={}", root.join("proc").display()),
        &format!("--path.sysfs={}", root.join("sys").display()),
        &format!("--path.rootfs={}", root.display()),
    ]);
    assert_eq!(code, 0, "warnings are not failures:\n{text}");
    assert!(line(&text, "PSI").starts_with("[WARN]"), "{text}");
    let cg = line(&text, "cgroups");
    assert!(cg.contains("cgroup v2"), "{cg}");
    // The fixture's tree has kubepods and docker containers in it.
    let n: usize = cg
        .split("; ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no container count in {cg}"));
    assert!(n > 0, "{cg}");
}

#[test]
fn doctor_fails_on_a_bad_config_or_a_wrong_procfs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    write(&cfg, "[threads]\ntop_groups = \"many\"\n");
    let (code, text) = doctor(&[&format!("--config.file={}", cfg.display())]);
    assert_eq!(code, 1, "{text}");
    let l = line(&text, "config");
    assert!(
        l.starts_with("[FAIL]") && l.contains("bad.toml:2") && l.contains("threads.top_groups"),
        "{l}"
    );
    let (code, text) = doctor(&[&format!("--path.procfs={}", dir.path().display())]);
    assert_eq!(code, 1, "{text}");
    assert!(line(&text, "procfs").starts_with("[FAIL]"), "{text}");
}

/// A procfs tree of a multi-threaded process (tasks 10, 11 under `task/`) and a
/// single-threaded one without a `task/` directory, with stat lines made from a real one.
fn tree_with_a_process_without_task_dir(root: &Path) {
    let real = std::fs::read_to_string("/proc/self/stat").unwrap();
    let (head, rest) = real.rsplit_once(')').unwrap();
    let _ = head;
    let stat = |pid: u32, comm: &str, threads: u32| {
        let mut f: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
        f[0] = "S".into();
        f[17] = threads.to_string(); // num_threads, field 20
        format!("{pid} ({comm}) {}\n", f.join(" "))
    };
    let p10 = root.join("10");
    std::fs::create_dir_all(p10.join("task/10")).unwrap();
    std::fs::create_dir_all(p10.join("task/11")).unwrap();
    write(&p10.join("stat"), &stat(10, "multi", 2));
    write(&p10.join("task/10/stat"), &stat(10, "multi", 2));
    write(&p10.join("task/11/stat"), &stat(11, "multi", 2));
    std::fs::create_dir_all(root.join("20")).unwrap();
    write(&root.join("20/stat"), &stat(20, "single", 1));
}

/// Issue 12 item 7: doctor read capabilities from `<path.procfs>/self` (a fixture's, or no
/// file at all) and counted threads by listing `task/` dirs, disagreeing with the agent's walk
/// on a tree where a process has none.
#[test]
fn doctor_on_a_fixture_root_reports_its_own_capabilities_and_the_agents_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let proc = dir.path().join("proc");
    copy_tree(&fixture("debian12-6.18").join("proc"), &proc);
    tree_with_a_process_without_task_dir(&proc);
    // A fixture "self" that claims no capabilities at all.
    write(
        &proc.join("self/status"),
        "Name:\tfixture\nCapEff:\t0000000000000000\n",
    );
    let sys = fixture("debian12-6.18").join("sys");
    let args = [
        format!("--path.procfs={}", proc.display()),
        format!("--path.sysfs={}", sys.display()),
    ];
    let (_, text) = doctor(&[&args[0], &args[1]]);
    let caps = line(&text, "capabilities");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert!(
            caps.starts_with("[ OK ]"),
            "root has them, whatever the fixture says: {caps}"
        );
    }
    let threads = line(&text, "threads");
    let n: u64 = threads
        .split_once("threads: ")
        .and_then(|(_, t)| t.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{threads}"));
    assert_eq!(n, 3, "{threads}");
    let agent = Agent::start(&[&args[0], &args[1]]);
    let m = agent.wait_for(Duration::from_secs(15), "a thread walk", |m| {
        m.has_family("stallwatch_threads")
    });
    let walked: f64 = m
        .series
        .iter()
        .filter(|(k, _)| k.starts_with("stallwatch_threads{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(walked as u64, n, "doctor and the agent agree:\n{}", m.text);
}
