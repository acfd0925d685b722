//! Real container cgroups in the docker (cgroupfs) and kubelet (cgroupfs) shapes, made with
//! cgroups-rs in every v1 hierarchy of this host (plus the unified v2 directory, where PSI
//! lives), with real processes burning CPU and dirtying page cache. The agent must find them,
//! label them from the path, agree with the kernel's own counters, and drop them from the next
//! scrape once the cgroup is removed.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cgroups_rs::fs::blkio::BlkIoController;
use cgroups_rs::fs::hierarchies::V1;
use cgroups_rs::fs::Cgroup;
use cgroups_rs::CgroupPid;

use crate::harness::{require_root, write, Agent};

/// A cgroup in every v1 hierarchy and in the unified tree, with one process in it; the process
/// is killed and every directory removed on drop.
struct FakeContainer {
    cg: Option<Cgroup>,
    unified: PathBuf,
    child: Child,
    /// Ancestor directories, in any hierarchy (v1 controllers and unified), that did not exist
    /// before: removed again, deepest first. Recorded per hierarchy, so that a parent that
    /// existed in one hierarchy but not another (another test's, dockerd's) is neither leaked
    /// where we made it nor removed where we did not.
    created_parents: Vec<PathBuf>,
}

impl FakeContainer {
    /// Runs `script` in the new cgroup: the shell waits on stdin until it has been moved, so
    /// everything it starts (and every page it dirties) is charged to the container.
    fn start(rel: &str, script: &str) -> FakeContainer {
        let mut created_parents = Vec::new();
        let parents: Vec<&str> = rel
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|(_, p)| p.to_vec())
            .unwrap_or_default();
        let hierarchies: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.join("cgroup.procs").exists())
            .collect();
        for h in &hierarchies {
            let mut d = h.clone();
            for part in &parents {
                d.push(part);
                if !d.exists() {
                    created_parents.push(d.clone());
                }
            }
        }
        let cg =
            Cgroup::new(Box::new(V1::new()), rel).unwrap_or_else(|e| panic!("create {rel}: {e}"));
        let unified = PathBuf::from("/sys/fs/cgroup/unified").join(rel);
        std::fs::create_dir_all(&unified).unwrap();
        let child = Command::new("sh")
            .args(["-c", &format!("read go; {script}")])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut c = FakeContainer {
            cg: Some(cg),
            unified,
            child,
            created_parents,
        };
        c.cg.as_ref()
            .unwrap()
            .add_task_by_tgid(CgroupPid::from(pid as u64))
            .unwrap();
        std::fs::write(c.unified.join("cgroup.procs"), pid.to_string()).unwrap();
        c.child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        c
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn remove(&mut self) {
        self.kill();
        if let Some(cg) = self.cg.take() {
            for _ in 0..50 {
                if cg.delete().is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = std::fs::remove_dir(&self.unified);
        // Parents we created, deepest first.
        for parent in self.created_parents.iter().rev() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

impl Drop for FakeContainer {
    fn drop(&mut self) {
        self.remove();
    }
}

fn hex_id(seed: u64) -> String {
    (0..4)
        .map(|i| {
            format!(
                "{:016x}",
                seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(i * 13) | 1
            )
        })
        .collect()
}

#[test]
fn real_container_cgroups_are_found_labelled_counted_and_gone_after_rmdir() {
    if !require_root("real_container_cgroups_are_found_labelled_counted_and_gone_after_rmdir") {
        return;
    }
    let seed = std::process::id() as u64 * 7919 + 17;
    let id = hex_id(seed);
    let pod_id = hex_id(seed + 1);
    let uid = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let file = dir.path().join("dirty.bin");
    let mut docker = FakeContainer::start(
        &format!("docker/{id}"),
        &format!(
            "dd if=/dev/zero of={} bs=1M count=64 2>/dev/null; while :; do :; done",
            file.display()
        ),
    );
    let mut pod = FakeContainer::start(
        &format!("kubepods/burstable/pod{uid}/{pod_id}"),
        "exec sleep 600",
    );
    // blk-throttle limits on the disk under the target dir (issue 14: which container is at
    // its limit); they go with the cgroup.
    let (disk, mm) = crate::docker::disk_of(dir.path());
    let (ma, mi) = mm.split_once(':').unwrap();
    let (ma, mi): (u64, u64) = (ma.parse().unwrap(), mi.parse().unwrap());
    let blkio: &BlkIoController = docker.cg.as_ref().unwrap().controller_of().unwrap();
    blkio.throttle_write_iops_for_device(ma, mi, 300).unwrap();
    blkio.throttle_read_bps_for_device(ma, mi, 1 << 20).unwrap();

    let cfg = dir.path().join("cfg.toml");
    write(&cfg, "[containers]\ninterval = \"1s\"\n");
    let agent = Agent::start(&[&format!("--config.file={}", cfg.display())]);
    let d = format!("container_id=\"{id}\",runtime=\"docker\"");
    let p = format!(
        "container_id=\"{pod_id}\",runtime=\"unknown\",pod_uid=\"{uid}\",qos=\"burstable\""
    );
    let cpu = format!("stallwatch_container_cpu_usage_seconds_total{{{d}}}");
    let m = agent.wait_for(
        Duration::from_secs(15),
        "both containers, the busy one with CPU and cache",
        |m| {
            m.get(&cpu).is_some_and(|c| c >= 0.5)
                && m.get(&format!("stallwatch_container_memory_cache_bytes{{{d}}}"))
                    .is_some_and(|c| c >= 32.0 * 1048576.0)
                && m.get(&format!("stallwatch_container_pids{{{p}}}")) == Some(1.0)
        },
    );
    // Agreement with the kernel's own counter, read right after the scrape: the agent's value
    // is at most one pass (1 s of one busy core, plus scheduling slack) behind.
    let kernel_ns: f64 =
        std::fs::read_to_string(format!("/sys/fs/cgroup/cpuacct/docker/{id}/cpuacct.usage"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    let agent_cpu = m.get(&cpu).unwrap();
    assert!(
        agent_cpu <= kernel_ns / 1e9 + 0.01 && agent_cpu >= kernel_ns / 1e9 - 2.5,
        "agent {agent_cpu} s vs kernel {} s",
        kernel_ns / 1e9
    );
    assert_eq!(
        m.get(&format!("stallwatch_container_pids{{{d}}}")),
        Some(1.0)
    );
    assert!(m.get("stallwatch_containers{runtime=\"docker\"}").unwrap() >= 1.0);
    assert!(m.get("stallwatch_container_starts_total").unwrap() >= 2.0);
    let limit = |kind: &str| {
        m.get(&format!(
            "stallwatch_container_io_limit{{{d},device=\"{disk}\",kind=\"{kind}\"}}"
        ))
    };
    assert_eq!(limit("write_iops"), Some(300.0), "{}", m.text);
    assert_eq!(limit("read_bps"), Some(1048576.0));
    assert_eq!(
        limit("write_bps"),
        None,
        "no row for a kind without a limit"
    );
    assert!(
        !m.text
            .contains(&format!("stallwatch_container_io_limit{{{p}")),
        "no rows for a container without limits"
    );
    // PSI comes from the unified directory of the same path.
    assert!(m.get(&format!("stallwatch_container_pressure_stall_seconds_total{{{d},resource=\"cpu\",kind=\"some\"}}")).is_some(), "{}", m.text);

    // rmdir: gone from the next pass's scrape, and counted as a stop.
    let stops0 = m.get("stallwatch_container_stops_total").unwrap();
    docker.remove();
    let m2 = agent.wait_for(Duration::from_secs(10), "the removed container gone", |m| {
        m.get(&cpu).is_none()
    });
    assert!(
        !m2.text.contains(&id),
        "no series of the removed container remain"
    );
    assert!(m2.get("stallwatch_container_stops_total").unwrap() >= stops0 + 1.0);
    assert!(
        m2.get(&format!("stallwatch_container_pids{{{p}}}"))
            .is_some(),
        "the other one stays"
    );
    pod.remove();
}

/// A network namespace with one end of a veth pair in it and the other on the host, removed
/// on drop. Addresses are link-local and live only on this pair: the traffic never leaves the
/// machine.
struct NetNs {
    name: String,
    host_if: String,
}

impl NetNs {
    fn new(tag: u32) -> NetNs {
        let name = format!("swtest{tag}");
        let host_if = format!("swh{tag}");
        let ctr_if = format!("swc{tag}");
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ns = NetNs {
            name: name.clone(),
            host_if: host_if.clone(),
        };
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ctr_if,
        ]);
        ip(&["link", "set", &ctr_if, "netns", &name]);
        ip(&["addr", "add", "169.254.77.1/30", "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            "169.254.77.2/30",
            "dev",
            &ctr_if,
        ]);
        ip(&["-n", &name, "link", "set", &ctr_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

#[test]
fn container_network_counters_come_from_its_namespace() {
    if !require_root("container_network_counters_come_from_its_namespace") {
        return;
    }
    let tag = std::process::id() % 100_000;
    let ns = NetNs::new(tag);
    let id = hex_id(tag as u64 * 31 + 5);
    let mut c = FakeContainer::start(
        &format!("docker/{id}"),
        &format!("exec ip netns exec {} sleep 600", ns.name),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg.toml");
    write(&cfg, "[containers]\ninterval = \"1s\"\n");
    let agent = Agent::start(&[&format!("--config.file={}", cfg.display())]);
    let ctr_if = format!("swc{tag}");
    let l = format!("container_id=\"{id}\",runtime=\"docker\",interface=\"{ctr_if}\"");
    let rx = format!("stallwatch_container_network_receive_packets_total{{{l}}}");
    agent.wait_for(Duration::from_secs(10), "the container's interface", |m| {
        m.get(&rx).is_some()
    });

    // 30 UDP datagrams from the host end to the container's address (no listener: the
    // container's kernel answers with ICMP port-unreachable, so its transmit side grows too).
    let sock = std::net::UdpSocket::bind("169.254.77.1:0").unwrap();
    for i in 0..30u8 {
        sock.send_to(&[i; 64], "169.254.77.2:9").unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    let m = agent.wait_for(Duration::from_secs(10), "30 packets received", |m| {
        m.get(&rx).is_some_and(|n| n >= 30.0)
    });
    // Agreement with the kernel's view from inside the namespace, read after the scrape.
    let text = std::fs::read_to_string(format!("/proc/{}/net/dev", c.child.id())).unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{ctr_if}:")))
        .unwrap();
    let kernel_rx: f64 = line
        .split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let agent_rx = m.get(&rx).unwrap();
    assert!(
        agent_rx <= kernel_rx && agent_rx >= kernel_rx - 5.0,
        "agent {agent_rx} vs kernel {kernel_rx}"
    );
    assert!(
        m.get(&format!(
            "stallwatch_container_network_transmit_packets_total{{{l}}}"
        ))
        .unwrap()
            >= 1.0
    );
    assert!(
        !m.text.contains(&format!(
            "container_id=\"{id}\",runtime=\"docker\",interface=\"lo\""
        )),
        "loopback is not reported"
    );
    c.remove();
    drop(ns);
}
