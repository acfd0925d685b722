//! Every container cgroup shape the agent names, as real cgroups on this host, on each
//! hierarchy separately:
//! ```text
//! docker/<id>                                                      docker, cgroupfs driver
//! system.slice/docker-<id>.scope                                   docker, systemd driver
//! kubepods/besteffort/pod<uid>/<id>                                kubelet cgroupfs (runtime unknown)
//! kubepods.slice/kubepods-burstable.slice/
//!   kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope   containerd CRI, kubelet systemd
//! kubepods.slice/kubepods-pod<uid_>.slice/crio-<id>.scope          CRI-O, guaranteed pod
//! machine.slice/libpod-<id>.scope                                  podman
//! ```
//! plus `crio-conmon-…` and `libpod-conmon-…` monitor scopes with a process in them, which are
//! not containers.
//!
//! On the v1 controllers (`/sys/fs/cgroup/<controller>`, made with cgroups-rs) each container
//! runs a real process that allocates anonymous memory, dirties page cache and burns a fixed
//! amount of CPU, then sleeps. Once it sleeps the kernel's counters stop moving, so the agent's
//! values must *equal* the kernel's files (tolerances below, per metric), and the series
//! exported per container must be exactly the set that hierarchy provides.
//!
//! On the v2 tree (`/sys/fs/cgroup/unified`, the agent pointed at it with `--path.cgroupfs` as
//! on a pure-v2 host) no controller is enabled on this machine, so a container's directory has
//! only `cpu.stat` (usage/user/system) and the `*.pressure` files: the test asserts that the
//! agent exports exactly those and nothing else (no memory, pids, io or throttling series).
//!
//! cgroups-rs does not fit the v2 side here: its `V2` hierarchy is fixed at `/sys/fs/cgroup`
//! (a tmpfs on this hybrid host) and takes its controller list from
//! `/sys/fs/cgroup/cgroup.controllers`, which does not exist, so `add_task` fails with
//! `SubsystemsEmpty`. The unified directories are made with plain `mkdir` and `cgroup.procs`.

mod checks;
mod kernel;
mod rig;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::CgroupPid;

use crate::harness::{require_root, write, Metrics, BIN};
use checks::*;
use kernel::*;
use rig::*;

/// Every shape on the v1 controllers: labels, counters equal to the kernel's, exactly the v1
/// families, monitors ignored; an `rmdir`ed container is gone from the next scrape.
#[test]
fn v1_every_shape_agrees_with_the_kernel_and_vanishes_after_rmdir() {
    if !require_root("v1_every_shape_agrees_with_the_kernel_and_vanishes_after_rmdir") {
        return;
    }
    if !in_host_netns() {
        eprintln!("\n!!!!!!!!!! not in the host network namespace: the exact family sets are not checked (network series would appear) !!!!!!!!!!\n");
    }
    let (shapes, monitors) = shapes(1);
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut rig = Rig::default();
    let mut idx = Vec::new();
    for (i, s) in shapes.iter().enumerate() {
        let cg = rig.v1_cgroup(&s.rel);
        match s.tag {
            "crio" => cg
                .controller_of::<CpuController>()
                .unwrap()
                .set_cfs_quota_and_period(Some(CRIO_QUOTA_US), Some(100_000))
                .unwrap(),
            "podman" => cg
                .controller_of::<MemController>()
                .unwrap()
                .set_limit(PODMAN_LIMIT)
                .unwrap(),
            _ => {}
        }
        let file = tmp.path().join(format!("dirty-{i}"));
        idx.push(rig.start(Some(cg), None, &workload(ANON_MIB, Some(&file), DIRTY_MIB)));
    }
    for mon in &monitors {
        let cg = rig.v1_cgroup(mon);
        rig.start(Some(cg), None, "exec sleep 600");
    }

    let agent = agent_with(tmp.path(), "[containers]\ninterval = \"1s\"\n", &[]);
    let mut saw_dirty = BTreeSet::new();
    let m = converge(
        &agent,
        Duration::from_secs(30),
        "every v1 shape equal to its kernel files",
        |m| {
            for s in &shapes {
                if m.get(&s.series("memory_dirty_bytes")).unwrap_or(0.0) >= 1048576.0 {
                    saw_dirty.insert(s.tag);
                }
            }
            shapes.iter().try_for_each(|s| check_v1(m, s))
        },
    );
    for s in &shapes {
        let g = |f: &str| m.get(&s.series(f)).unwrap_or(f64::NAN);
        eprintln!(
            "{:<20} cpu {:.3} s (user {:.2}, system {:.2}), throttled {} periods, rss {:.1} MiB, \
             cache {:.1} MiB, dirty {:.1} MiB, pids {}, families {}",
            s.tag,
            g("cpu_usage_seconds_total"),
            g("cpu_user_seconds_total"),
            g("cpu_system_seconds_total"),
            g("cpu_throttled_periods_total"),
            g("memory_rss_bytes") / 1048576.0,
            g("memory_cache_bytes") / 1048576.0,
            g("memory_dirty_bytes") / 1048576.0,
            g("pids"),
            families_of(&m, &s.id).len()
        );
    }
    // Dirty page cache was seen while it was there (writeback takes 30 s by default).
    assert_eq!(
        saw_dirty.len(),
        shapes.len(),
        "dirty ≥ 1 MiB seen for {saw_dirty:?} only"
    );
    for s in &shapes {
        let pids: Vec<u32> = read(
            PathBuf::from(CGROUPFS)
                .join("memory")
                .join(&s.rel)
                .join("cgroup.procs"),
        )
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
        assert_eq!(pids.len(), 1, "{}: {pids:?}", s.tag);
    }
    for mon in &monitors {
        assert!(
            !m.text.contains(monitor_id(mon)),
            "a monitor scope is not a container: {mon}"
        );
    }
    let docker = m.get("stallwatch_containers{runtime=\"docker\"}").unwrap();
    assert!(docker >= 2.0, "both docker shapes counted: {docker}");
    for rt in ["containerd", "crio", "podman", "unknown"] {
        assert!(
            m.get(&format!("stallwatch_containers{{runtime=\"{rt}\"}}"))
                .is_some_and(|n| n >= 1.0),
            "{rt}"
        );
    }

    // rmdir one container: gone from the next pass's scrape, counted as a stop; the rest stay.
    remove_and_check_gone(&agent, &mut rig, &m, &shapes, &idx, 1, "pids");
}

/// Every shape on this host's v2 tree, the agent pointed at it as at a pure-v2 host.
#[test]
fn v2_every_shape_exports_exactly_what_the_unified_tree_has() {
    if !require_root("v2_every_shape_exports_exactly_what_the_unified_tree_has") {
        return;
    }
    let unified = Path::new(UNIFIED);
    if !unified.join("cgroup.controllers").exists() {
        panic!("no cgroup v2 tree at {UNIFIED}: this test is written for this hybrid host");
    }
    if !in_host_netns() {
        eprintln!("\n!!!!!!!!!! not in the host network namespace: the exact family sets are not checked (network series would appear) !!!!!!!!!!\n");
    }
    let (mut shapes, monitors) = shapes(2);
    let tmp = tempfile::tempdir().unwrap();
    // CRI-O's and podman's names, from a containers/storage list as they write it.
    let storage = tmp.path().join("storage");
    std::fs::create_dir_all(storage.join("overlay-containers")).unwrap();
    let mut entries = Vec::new();
    for s in shapes.iter_mut() {
        let name = match s.tag {
            "crio" => format!(
                "k8s_app_app-{}_default_{}_0",
                &s.id[..5],
                s.pod_uid.as_deref().unwrap()
            ),
            "podman" => format!("web-{}", &s.id[..6]),
            _ => continue,
        };
        entries.push(format!(
            r#"{{"id":"{}","names":["{name}"],"image":"{}","layer":"{}","created":"2026-11-24T10:00:00Z"}}"#,
            s.id,
            "1".repeat(64),
            "2".repeat(64)
        ));
        s.name = Some(name);
    }
    write(
        &storage.join("overlay-containers/containers.json"),
        &format!("[{}]", entries.join(",")),
    );
    let mut rig = Rig::default();
    let mut leaves = Vec::new();
    let mut idx = Vec::new();
    for s in &shapes {
        let leaf = rig.v2_dir(unified, &s.rel);
        leaves.push(leaf.clone());
        idx.push(rig.start(None, Some(leaf), &workload(0, None, 0)));
    }
    for mon in &monitors {
        let leaf = rig.v2_dir(unified, mon);
        rig.start(None, Some(leaf), "exec sleep 600");
    }
    let agent = agent_with(
        tmp.path(),
        &format!(
            "[containers]\ninterval = \"1s\"\nstorage_root = \"{}\"\n",
            storage.display()
        ),
        &[&format!("--path.cgroupfs={UNIFIED}")],
    );
    let m = converge(
        &agent,
        Duration::from_secs(30),
        "every v2 shape equal to its kernel files",
        |m| {
            shapes
                .iter()
                .zip(&leaves)
                .try_for_each(|(s, leaf)| check_v2(m, s, leaf))
        },
    );
    for s in &shapes {
        let psi = series_of(&m, &s.id)
            .into_iter()
            .filter(|(k, _)| k.contains("pressure_stall"))
            .map(|(k, v)| format!("{}={v}", k.rsplit_once("resource=").unwrap().1))
            .collect::<Vec<_>>()
            .join(" ");
        eprintln!(
            "{:<20} cpu {:.3} s, families {:?}, PSI totals {psi}",
            s.tag,
            m.get(&s.series("cpu_usage_seconds_total"))
                .unwrap_or(f64::NAN),
            families_of(&m, &s.id)
        );
    }
    for mon in &monitors {
        assert!(!m.text.contains(monitor_id(mon)), "{mon}");
    }
    // rmdir: gone from the next scrape.
    remove_and_check_gone(
        &agent,
        &mut rig,
        &m,
        &shapes,
        &idx,
        4,
        "cpu_usage_seconds_total",
    );
}

/// `stallwatch dstate` and the agent name the container of a real D-state thread in every
/// shape, on the v1 controllers (the thread's v1 path) and on the v2 tree (its v2 path).
#[test]
fn dstate_names_the_container_of_a_d_thread_in_every_shape() {
    if !require_root("dstate_names_the_container_of_a_d_thread_in_every_shape") {
        return;
    }
    let (v1_shapes, _) = shapes(3);
    let (v2_shapes, _) = shapes(4);
    let unified = Path::new(UNIFIED);
    let mut rig = Rig::default();
    let mut by_pid: BTreeMap<u32, Shape> = BTreeMap::new();
    for s in &v1_shapes {
        let cg = rig.v1_cgroup(&s.rel);
        let d = DProc::spawn(|pid| {
            cg.add_task_by_tgid(CgroupPid::from(pid as u64))
                .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", s.rel))
        });
        by_pid.insert(d.pid as u32, s.clone());
        rig.dprocs.push(d);
        rig.members.push(Member {
            child: None,
            v1: Some(cg),
            v2_leaf: None,
        });
    }
    for s in &v2_shapes {
        let leaf = rig.v2_dir(unified, &s.rel);
        let d = DProc::spawn(|pid| write(&leaf.join("cgroup.procs"), &pid.to_string()));
        by_pid.insert(d.pid as u32, s.clone());
        rig.dprocs.push(d);
        rig.members.push(Member {
            child: None,
            v1: None,
            v2_leaf: Some(leaf),
        });
    }

    let out = Command::new(BIN)
        .args(["dstate", "--once", "--json", "--limit", "10000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let rows = doc["dstate"].as_array().unwrap();
    for (pid, s) in &by_pid {
        let row = rows
            .iter()
            .find(|r| r["pid"].as_u64() == Some(*pid as u64))
            .unwrap_or_else(|| panic!("{} (pid {pid}) not listed in D: {doc:#}", s.tag));
        assert_eq!(
            row["container_id"].as_str(),
            Some(s.id.as_str()),
            "{}: {row}",
            s.tag
        );
        assert_eq!(row["runtime"].as_str(), Some(s.runtime), "{}: {row}", s.tag);
        assert_eq!(
            row["pod_uid"].as_str(),
            s.pod_uid.as_deref(),
            "{}: {row}",
            s.tag
        );
        assert_eq!(row["qos"].as_str(), s.qos, "{}: {row}", s.tag);
        assert_eq!(
            row["cgroup"].as_str(),
            Some(format!("/{}", s.rel).as_str()),
            "{row}"
        );
    }
    // The table names the container too (its short id).
    let table = Command::new(BIN)
        .args(["dstate", "--once", "--limit", "10000"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    for (pid, s) in &by_pid {
        let line = table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(pid.to_string().as_str()))
            .unwrap_or_else(|| panic!("pid {pid} not in the table:\n{table}"));
        assert!(line.contains(&s.id[..12]), "{}: {line}", s.tag);
    }

    // The agent's per-container D gauge: v1 containers on the hybrid view, v2 ones on the
    // unified tree.
    let tmp = tempfile::tempdir().unwrap();
    let toml = "[containers]\ninterval = \"1s\"\n[threads]\nfast_interval = \"1s\"\n";
    let a1 = agent_with(tmp.path(), toml, &[]);
    let d2 = tmp.path().join("v2");
    std::fs::create_dir(&d2).unwrap();
    let a2 = agent_with(&d2, toml, &[&format!("--path.cgroupfs={UNIFIED}")]);
    for (agent, shapes) in [(&a1, &v1_shapes), (&a2, &v2_shapes)] {
        converge(
            agent,
            Duration::from_secs(20),
            "one D thread per container",
            |m| {
                for s in shapes {
                    near(s.tag, m.get(&s.series("dstate_threads")), 1.0, 0.0)?;
                }
                Ok(())
            },
        );
    }
}

/// The cap through the agent, on a v2 subtree of its own (`--path.cgroupfs` at a cgroup, as
/// an agent in a cgroup namespace sees it), so that no other test's container changes the
/// counts: 7 real containers, a cap of 3.
#[test]
fn the_cap_bounds_exported_series_and_counts_what_it_dropped() {
    if !require_root("the_cap_bounds_exported_series_and_counts_what_it_dropped") {
        return;
    }
    let unified = Path::new(UNIFIED);
    let mut rig = Rig::default();
    let sub = format!("stallwatch-cap-{}", &unique_hex(9)[..16]);
    let root = rig.v2_dir(unified, &sub);
    let mut docker: Vec<String> = (0..3).map(|i| unique_hex(10 + i)).collect();
    docker.sort();
    let others: Vec<(String, &str)> = (0..2)
        .map(|i| {
            let id = unique_hex(20 + i);
            let uid = uuid(30 + i).replace('-', "_");
            (
                format!("kubepods.slice/kubepods-pod{uid}.slice/crio-{id}.scope"),
                "crio",
            )
        })
        .chain((0..2).map(|i| {
            (
                format!("machine.slice/libpod-{}.scope", unique_hex(40 + i)),
                "podman",
            )
        }))
        .collect();
    let mut idx = BTreeMap::new();
    for id in &docker {
        let leaf = rig.v2_dir(&root, &format!("docker/{id}"));
        idx.insert(id.clone(), rig.start(None, Some(leaf), "exec sleep 600"));
    }
    for (rel, _) in &others {
        let leaf = rig.v2_dir(&root, rel);
        rig.start(None, Some(leaf), "exec sleep 600");
    }
    let tmp = tempfile::tempdir().unwrap();
    let agent = agent_with(
        tmp.path(),
        "[containers]\ninterval = \"1s\"\nmax_containers = 3\n",
        &[&format!("--path.cgroupfs={}", root.display())],
    );
    let ids_in = |m: &Metrics| -> BTreeSet<String> {
        m.series
            .iter()
            .filter_map(|(k, _)| {
                let rest = k.split("container_id=\"").nth(1)?;
                Some(rest.split('"').next()?.to_string())
            })
            .collect()
    };
    // Paths sort /docker/… < /kubepods.slice/… < /machine.slice/…: the three docker ones are
    // read, the other four dropped.
    let want: BTreeSet<String> = docker.iter().cloned().collect();
    let m = converge(&agent, Duration::from_secs(15), "3 read, 4 dropped", |m| {
        let got = ids_in(m);
        if got != want {
            return Err(format!("exported ids {got:?}, want {want:?}"));
        }
        near("dropped", m.get("stallwatch_containers_dropped"), 4.0, 0.0)?;
        near(
            "starts",
            m.get("stallwatch_container_starts_total"),
            7.0,
            0.0,
        )?;
        Ok(())
    });
    let runtimes: Vec<&(String, f64)> = m
        .series
        .iter()
        .filter(|(k, _)| k.starts_with("stallwatch_containers{"))
        .collect();
    assert_eq!(
        runtimes,
        vec![&("stallwatch_containers{runtime=\"docker\"}".to_string(), 3.0)],
        "only what was read is counted per runtime"
    );
    // Bounded: every container series belongs to one of the three, and each of the three has
    // the same (fixed) number of series.
    let per: Vec<usize> = docker.iter().map(|id| series_of(&m, id).len()).collect();
    let total = m
        .series
        .iter()
        .filter(|(k, _)| k.contains("container_id=\""))
        .count();
    assert!(per.iter().all(|n| *n > 0), "{per:?}");
    assert_eq!(total, per.iter().sum::<usize>(), "no series beyond the cap");
    if in_host_netns() {
        assert!(per.iter().all(|n| *n == per[0]), "{per:?}");
    }
    let d1 = m.get("stallwatch_container_reads_dropped_total").unwrap();
    assert!(d1 >= 4.0 && d1 % 4.0 == 0.0, "4 per pass: {d1}");
    let m = converge(&agent, Duration::from_secs(10), "another pass", |m| {
        let d = m
            .get("stallwatch_container_reads_dropped_total")
            .unwrap_or(0.0);
        if d > d1 && d % 4.0 == 0.0 {
            Ok(())
        } else {
            Err(format!("reads dropped {d} after {d1}"))
        }
    });
    assert_eq!(m.get("stallwatch_container_stops_total"), Some(0.0));

    // Two docker containers gone: the third is read with the two CRI-O ones (by path order),
    // the podman ones are dropped.
    for id in &docker[..2] {
        rig.remove(idx[id]);
    }
    let crio: BTreeSet<String> = others
        .iter()
        .filter(|(_, r)| *r == "crio")
        .map(|(rel, _)| monitor_id(rel).to_string())
        .collect();
    let mut want: BTreeSet<String> = crio;
    want.insert(docker[2].clone());
    converge(
        &agent,
        Duration::from_secs(10),
        "the next three read",
        |m| {
            let got = ids_in(m);
            if got != want {
                return Err(format!("exported ids {got:?}, want {want:?}"));
            }
            near("dropped", m.get("stallwatch_containers_dropped"), 2.0, 0.0)?;
            near("stops", m.get("stallwatch_container_stops_total"), 2.0, 0.0)?;
            near(
                "docker",
                m.get("stallwatch_containers{runtime=\"docker\"}"),
                1.0,
                0.0,
            )?;
            near(
                "crio",
                m.get("stallwatch_containers{runtime=\"crio\"}"),
                2.0,
                0.0,
            )?;
            Ok(())
        },
    );
}
