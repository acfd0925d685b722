//! Real Docker containers (Debian's docker.io: dockerd, containerd, runc) with a busybox image
//! built locally (no registry needed): the agent must find them by the cgroupfs path dockerd
//! gives them (`/docker/<id>` in every v1 hierarchy and in the unified tree), label them with
//! the full id Docker printed, agree with the kernel's counters and with `docker stats`/`docker
//! top`, count the packets another container sent them, and drop them after `docker rm -f`.
//!
//! The daemon is always a PRIVATE one that this test starts and stops: its own socket,
//! `--data-root` and `--exec-root` in a tempdir under `CARGO_TARGET_TMPDIR`, its own containerd
//! (dockerd supervises one under the exec root when no system containerd is running; the
//! containerd namespaces are private too, in case one is), so it never touches a dockerd the
//! machine may already run. What was checked on the test host (Debian 12, hybrid cgroups, no
//! systemd as PID 1) to pick the networking flags:
//! - `--bridge=none`: the daemon does not create or adopt `docker0` (another daemon may own it;
//!   dockerd can only create a bridge with the default name). The containers that need a
//!   network get a user-defined bridge network instead, whose Linux bridge has a private name
//!   (`swt<pid>`) and is removed with the network (and by `ip link del` on drop if it is left).
//! - `--iptables=false --ip-forward=false --ip-masq=false`: the test only pings between two
//!   containers on the same bridge (plain L2), so the daemon need not touch host-wide firewall
//!   rules or sysctls. (dockerd warns "IPv4 forwarding is disabled"; that is expected.)
//!
//! Cleanup (`Drop`) runs even when the test panics: every container is removed, the network,
//! then dockerd is stopped by PID (SIGTERM, up to 10 s, then SIGKILL), its containerd too if it
//! outlived it, any mount left under the tempdir is detached and the tempdir removed. What it
//! cannot cover is the test process itself being SIGKILLed (e.g. a nextest timeout): then check
//! `pgrep -a dockerd`, `ip -br link | grep swt` and `ls /sys/fs/cgroup/memory/docker`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{require_root, write, Agent, Metrics};

/// Debian's CLI, by absolute path: another `docker` may come earlier on PATH.
const DOCKER: &str = "/usr/bin/docker";
const DOCKERD: &str = "/usr/sbin/dockerd";
const IMAGE: &str = "stallwatch-test-busybox:1";

/// A private dockerd with a private bridge network; everything is torn down on drop.
pub(crate) struct Dockerd {
    dir: Option<tempfile::TempDir>,
    pub(crate) root: PathBuf,
    host: String,
    child: Option<Child>,
    bridge: String,
    network: Option<String>,
    seq: usize,
}

impl Dockerd {
    pub(crate) fn start() -> Dockerd {
        for bin in [DOCKER, DOCKERD, "/bin/busybox"] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: install the Debian packages docker.io and busybox-static \
                 (`make test-deps`)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("swdocker-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("create tempdir");
        let root = dir.path().to_path_buf();
        let sock = root.join("docker.sock");
        // containerd's socket ends up deepest: exec/containerd/containerd.sock.ttrpc.
        assert!(
            root.join("exec/containerd/containerd.sock.ttrpc")
                .as_os_str()
                .len()
                < 100,
            "tempdir path too long for unix sockets: {}",
            root.display()
        );
        let pid = std::process::id();
        let mut d = Dockerd {
            host: format!("unix://{}", sock.display()),
            bridge: format!("swt{pid}"),
            root: root.clone(),
            dir: Some(dir),
            child: None,
            network: None,
            seq: 0,
        };
        let log = File::create(root.join("dockerd.log")).expect("create dockerd.log");
        let child = Command::new(DOCKERD)
            .arg(format!("--data-root={}", root.join("data").display()))
            .arg(format!("--exec-root={}", root.join("exec").display()))
            .arg(format!("--pidfile={}", root.join("d.pid").display()))
            .arg(format!("--host={}", d.host))
            .args([
                "--exec-opt=native.cgroupdriver=cgroupfs",
                "--bridge=none",
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
            ])
            .arg(format!("--containerd-namespace=stallwatch-test-{pid}"))
            .arg(format!(
                "--containerd-plugins-namespace=stallwatch-test-{pid}-plugins"
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        d.child = Some(child);

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if d.docker(&["info", "--format", "{{.ServerVersion}}"], 10)
                .is_ok()
            {
                break;
            }
            if let Some(Ok(Some(st))) = d.child.as_mut().map(|c| c.try_wait()) {
                panic!("dockerd exited ({st}); log:\n{}", d.log_tail());
            }
            if Instant::now() > deadline {
                panic!("dockerd did not answer within 30 s; log:\n{}", d.log_tail());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let net = format!("swtest-{pid}");
        d.must(&[
            "network",
            "create",
            "--driver=bridge",
            &format!("--opt=com.docker.network.bridge.name={}", d.bridge),
            &net,
        ]);
        d.network = Some(net);
        d
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.root.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Runs `docker -H <ours> args`, killing it after `secs`; stdout (trimmed) or an error
    /// with the exit status and stderr. Output goes through files, so nothing can block on a
    /// full pipe.
    pub(crate) fn docker(&mut self, args: &[&str], secs: u64) -> Result<String, String> {
        self.seq += 1;
        let out_p = self.root.join(format!("cli{}.out", self.seq));
        let err_p = self.root.join(format!("cli{}.err", self.seq));
        let res = (|| {
            let mut child = Command::new(DOCKER)
                .arg("-H")
                .arg(&self.host)
                .args(args)
                .stdin(Stdio::null())
                .stdout(File::create(&out_p).map_err(|e| e.to_string())?)
                .stderr(File::create(&err_p).map_err(|e| e.to_string())?)
                .spawn()
                .map_err(|e| format!("spawn {DOCKER}: {e}"))?;
            let deadline = Instant::now() + Duration::from_secs(secs);
            let status = loop {
                match child.try_wait() {
                    Ok(Some(st)) => break st,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(format!("docker {args:?}: no answer within {secs} s"));
                    }
                }
            };
            let out = std::fs::read_to_string(&out_p).unwrap_or_default();
            let err = std::fs::read_to_string(&err_p).unwrap_or_default();
            if status.success() {
                Ok(out.trim().to_string())
            } else {
                Err(format!("docker {args:?}: {status}; stderr: {}", err.trim()))
            }
        })();
        let _ = std::fs::remove_file(&out_p);
        let _ = std::fs::remove_file(&err_p);
        res
    }

    pub(crate) fn must(&mut self, args: &[&str]) -> String {
        match self.docker(args, 60) {
            Ok(s) => s,
            Err(e) => panic!("{e}\ndockerd log:\n{}", self.log_tail()),
        }
    }

    /// The busybox image: a rootfs with the static busybox and the applets we call, imported
    /// from a tarball (there is no registry to pull from).
    fn build_image(&mut self) {
        let rootfs = self.root.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::create_dir_all(rootfs.join("tmp")).unwrap();
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy /bin/busybox");
        for applet in ["sh", "dd", "sleep", "ping", "cat"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let tar = self.root.join("rootfs.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("spawn tar");
        assert!(st.success(), "tar: {st}");
        let tar = tar.to_str().unwrap().to_string();
        self.must(&["import", &tar, IMAGE]);
    }

    fn teardown(&mut self) {
        // Every container of this private daemon is ours.
        if let Ok(ids) = self.docker(&["ps", "-aq"], 30) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.docker(&args, 60);
            }
        }
        if let Some(net) = self.network.take() {
            let _ = self.docker(&["network", "rm", &net], 30);
        }
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as i32;
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // The containerd dockerd started, if it outlived dockerd (it normally stops with it).
        if let Ok(p) = std::fs::read_to_string(self.root.join("exec/containerd/containerd.pid")) {
            if let Ok(pid) = p.trim().parse::<i32>() {
                let is_ours = || {
                    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| c.contains(self.root.to_str().unwrap_or("\0")))
                };
                for sig in [libc::SIGTERM, libc::SIGKILL] {
                    if !is_ours() {
                        break;
                    }
                    // SAFETY: kill(2); the cmdline check makes sure the pid is our containerd.
                    unsafe { libc::kill(pid, sig) };
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while is_ours() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        }
        // containerd-shim-runc-v2 processes (daemonized, so children of init, not ours) name
        // our containerd socket on their command line; they exit once their container is gone.
        // Wait for that (a zombie has an empty cmdline: init reaps it), kill any that linger.
        let ours = || -> Vec<i32> {
            let root = self.root.to_string_lossy().to_string();
            std::fs::read_dir("/proc")
                .map(|rd| {
                    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                        .filter(|pid| {
                            std::fs::read(format!("/proc/{pid}/cmdline"))
                                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&root))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ours().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        for pid in ours() {
            // SAFETY: kill(2) on a process whose command line names our private tempdir.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if Path::new("/sys/class/net").join(&self.bridge).exists() {
            let _ = Command::new("ip")
                .args(["link", "del", &self.bridge])
                .stderr(Stdio::null())
                .status();
        }
        // Mounts dockerd left under the tempdir (overlay2 layers, netns), deepest first.
        let root = self.root.to_string_lossy().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
            .filter(|m| m.starts_with(&root))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: a valid NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        drop(self.dir.take()); // removes the tempdir, ignoring errors
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// "1.23MiB / 23.5GiB" (docker stats' MemUsage) → bytes of the first part.
fn parse_docker_size(s: &str) -> f64 {
    let first = s.split('/').next().unwrap().trim();
    let split = first
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or_else(|| panic!("no unit in {s:?}"));
    let (num, unit) = first.split_at(split);
    let num: f64 = num
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("bad number in {s:?}: {e}"));
    let mult = match unit {
        "B" => 1.0,
        "KiB" | "kB" => 1024.0,
        "MiB" | "MB" => 1048576.0,
        "GiB" | "GB" => 1073741824.0,
        _ => panic!("unknown unit in {s:?}"),
    };
    num * mult
}

fn read_num(path: &str) -> f64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("parse {path}: {e}"))
}

/// The whole disk under `path` as (name, "major:minor"): blk-throttle limits apply to whole
/// disks, so a partition is mapped to its parent.
pub fn disk_of(path: &Path) -> (String, String) {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).unwrap().dev();
    let (ma, mi) = (libc::major(dev), libc::minor(dev));
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{ma}:{mi}")).unwrap_or_else(|e| {
        panic!(
            "{} is on {ma}:{mi}, not a block device: {e}",
            path.display()
        )
    });
    let disk = if sys.join("partition").exists() {
        sys.parent().unwrap().to_path_buf()
    } else {
        sys
    };
    let name = disk.file_name().unwrap().to_string_lossy().to_string();
    let mm = std::fs::read_to_string(disk.join("dev"))
        .unwrap()
        .trim()
        .to_string();
    (name, mm)
}

#[test]
fn real_docker_containers_match_docker_stats() {
    if !require_root("real_docker_containers_match_docker_stats") {
        return;
    }
    let t0 = Instant::now();
    let mut d = Dockerd::start();
    d.build_image();
    eprintln!("dockerd up and image built in {:?}", t0.elapsed());
    let pid = std::process::id();
    let net = d.network.clone().unwrap();

    // A busy container on the bridge network (it also receives the pings).
    let cpu_id = d.must(&[
        "run",
        "-d",
        &format!("--name=swtest-cpu-{pid}"),
        &format!("--network={net}"),
        IMAGE,
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    // A container doing real O_DIRECT writes (charged to its own blkio cgroup, unlike buffered
    // writeback) into its overlay rootfs, under a write-iops limit on the disk below it.
    let (disk, disk_mm) = disk_of(&d.root);
    let io_id = d.must(&[
        "run",
        "-d",
        &format!("--name=swtest-io-{pid}"),
        "--network=none",
        &format!("--device-write-iops=/dev/{disk}:20"),
        IMAGE,
        "sh",
        "-c",
        "while :; do dd if=/dev/zero of=/tmp/f bs=4k count=16 oflag=direct 2>/dev/null; done",
    ]);
    for id in [&cpu_id, &io_id] {
        assert!(
            id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "docker run printed {id:?}"
        );
        for h in ["cpuacct", "memory", "pids", "blkio", "unified"] {
            let p = format!("/sys/fs/cgroup/{h}/docker/{id}");
            assert!(
                Path::new(&p).is_dir(),
                "{p} missing: not the cgroupfs layout?"
            );
        }
    }
    let ip = d.must(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &cpu_id,
    ]);
    // 20 pings from a third, short-lived container on the same bridge.
    let ping = d.must(&[
        "run",
        "--rm",
        &format!("--network={net}"),
        IMAGE,
        "ping",
        "-c",
        "20",
        "-A",
        "-W",
        "10",
        &ip,
    ]);
    assert!(ping.contains("20 packets received"), "ping: {ping}");
    eprintln!("containers up, pinged, at {:?}", t0.elapsed());

    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let cfg = dir.path().join("cfg.toml");
    // Names come from this daemon's own state (its private data root).
    write(
        &cfg,
        &format!(
            "[containers]\ninterval = \"1s\"\ndocker_root = \"{}\"\n",
            d.root.join("data").display()
        ),
    );
    let agent = Agent::start(&[&format!("--config.file={}", cfg.display())]);

    let c = format!("container_id=\"{cpu_id}\",runtime=\"docker\",name=\"swtest-cpu-{pid}\"");
    let i = format!("container_id=\"{io_id}\",runtime=\"docker\",name=\"swtest-io-{pid}\"");
    let cpu = format!("stallwatch_container_cpu_usage_seconds_total{{{c}}}");
    let pids = format!("stallwatch_container_pids{{{c}}}");
    let mem = format!("stallwatch_container_memory_usage_bytes{{{c}}}");
    let rx =
        format!("stallwatch_container_network_receive_packets_total{{{c},interface=\"eth0\"}}");
    let io_prefix = format!("stallwatch_container_io_writes_total{{{i},device=");
    let io_writes = |m: &Metrics| -> Option<f64> {
        m.series
            .iter()
            .find(|(k, _)| {
                k == &format!("{io_prefix}\"{disk}\"}}")
                    || k == &format!("{io_prefix}\"{disk_mm}\"}}")
            })
            .map(|(_, v)| *v)
    };
    let m = agent.wait_for(
        Duration::from_secs(20),
        "both docker containers with CPU, memory, pids, packets and writes",
        |m| {
            m.get(&cpu).is_some_and(|v| v >= 0.5)
                && m.get(&pids).is_some()
                && m.get(&mem).is_some()
                && m.get(&rx).is_some_and(|v| v >= 20.0)
                && io_writes(m).is_some_and(|v| v > 0.0)
        },
    );
    // CPU: at most one pass (1 s of one busy core, plus scheduling slack) behind the kernel.
    let kernel_s = read_num(&format!(
        "/sys/fs/cgroup/cpuacct/docker/{cpu_id}/cpuacct.usage"
    )) / 1e9;
    let agent_cpu = m.get(&cpu).unwrap();
    assert!(
        agent_cpu <= kernel_s + 0.01 && agent_cpu >= kernel_s - 2.5,
        "cpu: agent {agent_cpu} s vs kernel {kernel_s} s"
    );
    // Writes: never ahead of the kernel's throttle counter.
    let serviced = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/blkio/docker/{io_id}/blkio.throttle.io_serviced"
    ))
    .unwrap();
    let kernel_writes: f64 = serviced
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{disk_mm} Write ")))
        .unwrap_or_else(|| panic!("no {disk_mm} Write in io_serviced:\n{serviced}"))
        .trim()
        .parse()
        .unwrap();
    // Its --device-write-iops limit, as the agent exports it (issue 14: a container at its
    // limit).
    let limit = m.series.iter().find(|(k, _)| {
        k.starts_with(&format!("stallwatch_container_io_limit{{{i},device="))
            && k.ends_with(",kind=\"write_iops\"}")
    });
    assert_eq!(limit.map(|(_, v)| *v), Some(20.0), "{}", m.text);
    let agent_writes = io_writes(&m).unwrap();
    assert!(
        agent_writes <= kernel_writes,
        "writes: agent {agent_writes} vs kernel {kernel_writes}"
    );
    // Pids: docker top's process count, or the cgroup's own pids.current (within 1).
    let agent_pids = m.get(&pids).unwrap();
    let top = d.must(&["top", &cpu_id]);
    let top_n = top.lines().count().saturating_sub(1) as f64;
    let kernel_pids = read_num(&format!("/sys/fs/cgroup/pids/docker/{cpu_id}/pids.current"));
    assert!(
        (agent_pids - top_n).abs() <= 1.0 || (agent_pids - kernel_pids).abs() <= 1.0,
        "pids: agent {agent_pids}, docker top {top_n}, pids.current {kernel_pids}\n{top}"
    );
    // Memory: docker stats subtracts inactive page cache; within 20 % or 4 MiB.
    let stats = d.must(&["stats", "--no-stream", "--format", "{{.MemUsage}}", &cpu_id]);
    let docker_mem = parse_docker_size(&stats);
    let agent_mem = Metrics::parse(&agent.scrape()).get(&mem).unwrap();
    assert!(
        (agent_mem - docker_mem).abs() <= (0.2 * docker_mem).max(4.0 * 1048576.0),
        "memory: agent {agent_mem} B vs docker stats {stats:?} = {docker_mem} B"
    );
    assert!(m.get("stallwatch_containers{runtime=\"docker\"}").unwrap() >= 2.0);
    eprintln!(
        "agent agreed at {:?}: cpu {agent_cpu:.2}/{kernel_s:.2} s, writes {agent_writes}/{kernel_writes}, \
         pids {agent_pids}, mem {agent_mem}/{docker_mem} B, rx {:?}",
        t0.elapsed(),
        m.get(&rx)
    );

    // docker rm -f: gone from the next pass's scrape, and counted as a stop.
    let stops0 = m.get("stallwatch_container_stops_total").unwrap();
    d.must(&["rm", "-f", &cpu_id]);
    let m2 = agent.wait_for(Duration::from_secs(10), "the removed container gone", |m| {
        m.get(&cpu).is_none()
    });
    assert!(
        !m2.text.contains(&cpu_id),
        "no series of the removed container remain"
    );
    assert!(m2.get("stallwatch_container_stops_total").unwrap() >= stops0 + 1.0);
    assert!(io_writes(&m2).is_some(), "the other container stays");
    for h in ["cpuacct", "memory", "pids", "unified"] {
        let p = format!("/sys/fs/cgroup/{h}/docker/{cpu_id}");
        assert!(!Path::new(&p).exists(), "{p} left after docker rm -f");
    }
    drop(agent);
    drop(d);
    eprintln!("done, torn down, in {:?}", t0.elapsed());
}
