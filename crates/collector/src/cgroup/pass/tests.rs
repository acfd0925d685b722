//! The pass over fixtures, and the kernel facts its shortcuts rest on.

use super::*;
use crate::cgroup::discover;

/// The pure-v2 fixture has two containers: a cap of one reads one and drops one, and the
/// ids of both are still known (for start/stop accounting).
#[test]
fn cap_reads_at_most_max_containers_and_counts_the_rest() {
    let base = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/v2-nopsi-5.4"
    ));
    let roots = Roots {
        procfs: base.join("proc"),
        sysfs: base.join("sys"),
        cgroupfs: base.join("sys/fs/cgroup"),
        rootfs: base.to_path_buf(),
    };
    let all = pass(&roots, 1000);
    assert_eq!(all.rows.len(), 2);
    let capped = pass(&roots, 1);
    assert_eq!(
        (capped.rows.len(), capped.dropped, capped.ids.len()),
        (1, 1, 2)
    );
}

const ID: &str = "3f2a9c1b7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b";

#[test]
fn pass_over_a_pure_v2_fixture_caps_and_counts_dropped() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    std::fs::write(r.join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
    for i in 0..3 {
        let d = r.join(format!("system.slice/docker-{}{i}.scope", &ID[..63]));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("pids.current"), format!("{}\n", i + 1)).unwrap();
    }
    let roots = Roots {
        cgroupfs: r.to_path_buf(),
        ..Roots::default()
    };
    let p = pass(&roots, 2);
    assert_eq!(p.ids.len(), 3);
    assert_eq!(p.dropped, 1);
    assert_eq!(p.rows.len(), 2);
    assert_eq!(p.rows[0].stats.pids, Some(1));
    assert_eq!(p.rows[1].stats.pids, Some(2));
    assert!(!p.no_hierarchy);
    let empty = tempfile::tempdir().unwrap();
    assert!(
        pass(
            &Roots {
                cgroupfs: empty.path().to_path_buf(),
                ..Roots::default()
            },
            10
        )
        .no_hierarchy
    );
}

fn write(p: &std::path::Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn netns(proc_root: &std::path::Path, pid: u32, inode: u64) {
    let l = proc_root.join(format!("{pid}/ns/net"));
    std::fs::create_dir_all(l.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&l);
    std::os::unix::fs::symlink(format!("net:[{inode}]"), l).unwrap();
}

/// A cgroup v1 tree with one docker container whose process (pid 4242) has its own
/// network namespace, in a procfs fixture where init's namespace is another.
fn v1_fixture(t: &std::path::Path) -> (Roots, impl Fn(&str) -> std::path::PathBuf) {
    let cg = t.join("cg");
    for c in ["cpu", "cpuacct", "memory", "blkio", "pids"] {
        write(&cg.join(c).join("cgroup.procs"), "");
    }
    let proc_root = t.join("proc");
    netns(&proc_root, 1, 4026531840);
    netns(&proc_root, 4242, 4026532001);
    write(
        &proc_root.join("4242/net/dev"),
        "Inter-| Receive | Transmit\n face |bytes packets|bytes packets\n\
         eth0: 1520 12 0 1 0 0 0 0 980 9 0 0 0 0 0 0\n",
    );
    let dir = move |c: &str| cg.join(c).join(format!("docker/{ID}"));
    write(&dir("memory").join("memory.usage_in_bytes"), "4096\n");
    write(&dir("memory").join("memory.limit_in_bytes"), "536870912\n");
    write(&dir("memory").join("cgroup.procs"), "4242\n");
    for (f, v) in [("read_bps", ""), ("write_bps", ""), ("read_iops", "")] {
        write(&dir("blkio").join(format!("blkio.throttle.{f}_device")), v);
    }
    write(
        &dir("blkio").join("blkio.throttle.write_iops_device"),
        "7:0 300\n",
    );
    let roots = Roots {
        cgroupfs: t.join("cg"),
        procfs: proc_root,
        rootfs: t.to_path_buf(),
        ..Roots::default()
    };
    (roots, dir)
}

/// (memory usage, memory limit, write IOPS limit, has network) of the one container.
fn seen(p: &Pass) -> (Option<u64>, Option<u64>, Option<u64>, bool) {
    let r = &p.rows[0];
    let io = r
        .stats
        .io_limits
        .as_ref()
        .and_then(|l| l.first()?.write_iops);
    let m = &r.stats.memory;
    (m.usage_bytes, m.limit_bytes, io, r.network.is_some())
}

/// Counters are read every pass; the settings at a container's first pass and then at its
/// turn, every `REFRESH_EVERY` passes (five files fewer in the passes between); the
/// network namespace is resolved again only when the member pid changed or at the turn.
#[test]
fn settings_and_netns_are_read_again_only_at_the_containers_turn() {
    let t = tempfile::tempdir().unwrap();
    let (roots, dir) = v1_fixture(t.path());
    let mut st = PassState::default();
    let reads = |st: &PassState| st.files.reads;
    let p = pass_named(&roots, 10, None, None, &mut st);
    assert_eq!(seen(&p), (Some(4096), Some(512 << 20), Some(300), true));
    assert!(
        p.rows[0].stats.errors.is_empty(),
        "{:?}",
        p.rows[0].stats.errors
    );
    let first = reads(&st);

    // A new limit, a new usage, and the process moved to init's network namespace.
    write(&dir("memory").join("memory.limit_in_bytes"), "1073741824\n");
    write(
        &dir("blkio").join("blkio.throttle.write_iops_device"),
        "7:0 100\n",
    );
    write(&dir("memory").join("memory.usage_in_bytes"), "8192\n");
    netns(&roots.procfs, 4242, 4026531840);
    let turn = (2..2 + REFRESH_EVERY)
        .find(|n| (n + stagger(ID)) % REFRESH_EVERY == 0)
        .unwrap();
    let mut before = reads(&st);
    for n in 2..2 + REFRESH_EVERY {
        let p = pass_named(&roots, 10, None, None, &mut st);
        let (read, b) = (reads(&st) - before, before);
        before = reads(&st);
        if n == turn {
            assert_eq!(
                seen(&p),
                (Some(8192), Some(1 << 30), Some(100), false),
                "pass {n}"
            );
            // Every file, as at the first, but `net/dev`: the host's namespace is not
            // the container's to report, so it is not read.
            assert_eq!(read + 1, first, "pass {n}: every file but net/dev");
        } else if n < turn {
            assert_eq!(
                seen(&p),
                (Some(8192), Some(512 << 20), Some(300), true),
                "pass {n}"
            );
            assert_eq!(read + 5, first, "pass {n}: no settings read ({b})");
        } else {
            assert_eq!(
                seen(&p),
                (Some(8192), Some(1 << 30), Some(100), false),
                "pass {n}"
            );
            // In the host's namespace now: neither its member pid nor net/dev is read.
            assert_eq!(
                read + 7,
                first,
                "pass {n}: no settings, cgroup.procs, net/dev"
            );
        }
    }

    // Another member pid, in a namespace of its own: found at the container's turn (its
    // namespace as last known is the host's, so the pid is not looked up between turns).
    netns(&roots.procfs, 4243, 4026532002);
    write(
        &roots.procfs.join("4243/net/dev"),
        "h\nh\neth1: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n",
    );
    write(&dir("memory").join("cgroup.procs"), "4243\n");
    let first_n = 2 + REFRESH_EVERY;
    let found = (first_n..first_n + REFRESH_EVERY).find(|_| {
        let p = pass_named(&roots, 10, None, None, &mut st);
        p.rows[0]
            .network
            .as_deref()
            .is_some_and(|n| n.iter().any(|d| d.name == "eth1"))
    });
    let n = found.expect("eth1 within REFRESH_EVERY passes");
    assert_eq!(
        (n + stagger(ID)) % REFRESH_EVERY,
        0,
        "at the turn (pass {n})"
    );
    // From then on its namespace is its own: the pid and net/dev are read every pass.
    let p = pass_named(&roots, 10, None, None, &mut st);
    assert_eq!(p.rows[0].network.as_deref().unwrap()[0].name, "eth1");
    assert_eq!(p.rows[0].stats.first_pid, Some(4243));
}

/// A namespace with only `lo` is read LO_READS passes in a row, then only at the
/// container's turn: an interface added meanwhile shows at the turn, and is then read
/// every pass again.
#[test]
fn a_namespace_with_only_lo_is_read_at_the_turn_once_known() {
    let t = tempfile::tempdir().unwrap();
    let (roots, _dir) = v1_fixture(t.path());
    let dev = roots.procfs.join("4242/net/dev");
    write(&dev, "h\nh\n    lo: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n");
    let mut st = PassState::default();
    let reads = |st: &PassState| st.files.reads;
    // Pass 1 reads the settings; other passes do only at a turn. Passes 1..=LO_READS read
    // net/dev; the non-turn passes after them do not: one file fewer.
    let turn_of = |n: u64| (n + stagger(ID)) % REFRESH_EVERY == 0;
    let last = LO_READS as u64 + REFRESH_EVERY - 1;
    let mut counts = vec![0];
    for _ in 1..=last {
        let b = reads(&st);
        let p = pass_named(&roots, 10, None, None, &mut st);
        let net = p.rows[0].network.as_deref().unwrap();
        assert!(net.iter().all(|d| d.name == "lo"), "{net:?}");
        counts.push(reads(&st) - b);
    }
    let plain = |n: u64| n > 1 && !turn_of(n);
    let before = (2..=LO_READS as u64).find(|n| plain(*n)).unwrap();
    let after: Vec<u64> = (LO_READS as u64 + 1..=last).filter(|n| plain(*n)).collect();
    assert!(!after.is_empty());
    for n in after {
        assert_eq!(
            counts[n as usize] + 2,
            counts[before as usize],
            "pass {n}: neither net/dev nor cgroup.procs read once lo alone was seen \
             {LO_READS} times: {counts:?}"
        );
    }
    // An interface appears: it is seen at the container's next turn at the latest.
    write(
        &dev,
        "h\nh\n    lo: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n  eth0: 5 1 0 0 0 0 0 0 7 1 0 0 0 0 0 0\n",
    );
    let mut found = None;
    for n in last + 1..=last + REFRESH_EVERY {
        let p = pass_named(&roots, 10, None, None, &mut st);
        let net = p.rows[0].network.clone().unwrap_or_default();
        if net.iter().any(|d| d.name == "eth0") {
            found = Some(n);
            break;
        }
    }
    let n = found.expect("eth0 within REFRESH_EVERY passes");
    assert!(turn_of(n), "seen at the container's turn (pass {n})");
    // From then on it is read every pass.
    let b = reads(&st);
    pass_named(&roots, 10, None, None, &mut st);
    let a = reads(&st) - b;
    let b = reads(&st);
    pass_named(&roots, 10, None, None, &mut st);
    assert_eq!(reads(&st) - b, a);
}

/// The OOM kill count is read at the first pass and the turns, and at any pass where the
/// host's `oom_kill` moved; else the last count stands (one file fewer per container).
#[test]
fn oom_kills_are_read_when_the_hosts_count_moves() {
    let t = tempfile::tempdir().unwrap();
    let (roots, dir) = v1_fixture(t.path());
    let oom = dir("memory").join("memory.oom_control");
    write(&oom, "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n");
    let vmstat = roots.procfs.join("vmstat");
    write(&vmstat, "nr_dirty 1\noom_kill 7\n");
    let mut st = PassState::default();
    let turn_of = |n: u64| (n + stagger(ID)) % REFRESH_EVERY == 0;
    let kills = |p: &Pass| p.rows[0].stats.memory.oom_kills;
    let mut reads = Vec::new();
    let mut got = Vec::new();
    for n in 1..=REFRESH_EVERY + 2 {
        if n == 4 {
            // A kill in the container: its file and the host's count move together.
            write(&oom, "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n");
            write(&vmstat, "nr_dirty 1\noom_kill 8\n");
        }
        let b = st.files.reads;
        let p = pass_named(&roots, 10, None, None, &mut st);
        reads.push((n, st.files.reads - b, turn_of(n)));
        got.push(kills(&p));
    }
    assert_eq!(got[..3], [Some(2); 3], "{got:?}");
    assert!(got[3..].iter().all(|k| *k == Some(3)), "{got:?}");
    // Passes that are not a turn: the one after the host's count moved reads one file
    // more than the ones where it stood still.
    let plain: Vec<_> = reads
        .iter()
        .filter(|(n, _, turn)| *n > 1 && !turn)
        .collect();
    let moved = plain.iter().find(|(n, ..)| *n == 4).map(|r| r.1);
    let still: Vec<u64> = plain
        .iter()
        .filter(|(n, ..)| *n != 4)
        .map(|r| r.1)
        .collect();
    assert!(still.len() >= 3, "{reads:?}");
    assert!(still.windows(2).all(|w| w[0] == w[1]), "{reads:?}");
    if let Some(m) = moved {
        assert_eq!(m, still[0] + 1, "{reads:?}");
    }
    // Without a readable vmstat every pass reads it.
    std::fs::remove_file(&vmstat).unwrap();
    write(&oom, "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n");
    let p = pass_named(&roots, 10, None, None, &mut st);
    assert_eq!(kills(&p), Some(4));
}

/// What the OOM gate rests on, on this kernel: a kill by a memory cgroup's limit moves the
/// host's `oom_kill` in `/proc/vmstat` as it moves the cgroup's own count.
#[test]
fn a_cgroup_oom_kill_moves_the_hosts_oom_kill() {
    let name = "a_cgroup_oom_kill_moves_the_hosts_oom_kill";
    if !crate::testing::require_root(name, "create cgroups") {
        return;
    }
    let roots = Roots::default();
    let layout = discover::detect(&roots);
    let (dir, events) = match (layout.v1("memory"), layout.v2()) {
        (Some(m), _) => (
            m.join(format!("sw-oom-{}", std::process::id())),
            "memory.oom_control",
        ),
        (None, Some(u)) => (
            u.join(format!("sw-oom-{}", std::process::id())),
            "memory.events",
        ),
        _ => {
            eprintln!("SKIPPED {name}: no memory cgroup");
            return;
        }
    };
    let v1 = events == "memory.oom_control";
    let made = crate::testing::MadeDir::new(dir);
    let dir = made.path();
    let limit = if v1 {
        "memory.limit_in_bytes"
    } else {
        "memory.max"
    };
    std::fs::write(dir.join(limit), "16777216").unwrap();
    let kills = || {
        let text = std::fs::read_to_string(dir.join(events)).unwrap();
        let mut n = None;
        crate::cgroup::parse_keyed(&text, |k, v| {
            if k == "oom_kill" {
                n = Some(v)
            }
        })
        .unwrap();
        n.unwrap()
    };
    let host = || {
        crate::proc::vmstat::read(&roots)
            .unwrap()
            .unwrap()
            .oom_kill
            .unwrap()
    };
    let (c0, h0) = (kills(), host());
    // `tail` keeps the "line" it reads from /dev/zero: it grows until the limit kills it.
    let mut child = std::process::Command::new("sh")
        .args(["-c", "read _; exec tail /dev/zero"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > std::time::Duration::from_secs(20) {
            let _ = child.kill();
            panic!("tail was not killed by its 16 MiB limit in 20 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    let (c1, h1) = (kills(), host());
    assert_eq!(c1, c0 + 1, "the cgroup's count");
    assert!(h1 > h0, "the host's count moved with it: {h0} -> {h1}");
}

/// A container without a process yet (runc writes its limits before it starts it) has
/// its settings read at every pass until it has one.
#[test]
fn settings_are_read_every_pass_until_the_container_has_a_process() {
    let t = tempfile::tempdir().unwrap();
    let (roots, dir) = v1_fixture(t.path());
    write(&dir("memory").join("cgroup.procs"), "");
    write(
        &dir("memory").join("memory.limit_in_bytes"),
        "9223372036854771712\n",
    );
    let mut st = PassState::default();
    assert_eq!(seen(&pass_named(&roots, 10, None, None, &mut st)).1, None);
    write(&dir("memory").join("memory.limit_in_bytes"), "536870912\n");
    let not_turn = (2..4)
        .find(|n| (n + stagger(ID)) % REFRESH_EVERY != 0)
        .unwrap();
    for _ in 2..=not_turn {
        pass_named(&roots, 10, None, None, &mut st);
    }
    let p = pass_named(&roots, 10, None, None, &mut st);
    assert_eq!(seen(&p).1, Some(512 << 20), "read although not its turn");
    // Gone from the tree, forgotten by the state.
    std::fs::remove_dir_all(t.path().join("cg/memory/docker")).unwrap();
    let p = pass_named(&roots, 10, None, None, &mut st);
    assert!(p.rows.is_empty());
    assert!(st.known.is_empty());
}
