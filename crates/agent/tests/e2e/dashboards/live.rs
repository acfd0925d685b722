//! The live check: every panel query against the real Prometheus scraping the real agent.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::dstate_rig::DStateRig;
use crate::harness::{require_root, write};
use crate::promstack::Prometheus;

use super::*;

/// A cgroup in the docker cgroupfs shape (`/docker/<64 hex>`) in every v1 hierarchy and the
/// unified tree, with a CPU quota, a memory limit, a blkio throttle rule (so v1 counts its
/// direct I/O) and one process in its own network namespace (a veth pair inside it) that does
/// some direct I/O and UDP, then burns CPU. Killed and removed on drop.
struct DockerShaped {
    id: String,
    cg: Option<cgroups_rs::fs::Cgroup>,
    unified: PathBuf,
    child: Child,
    created_parents: Vec<String>,
}

impl DockerShaped {
    fn start(dir: &Path) -> DockerShaped {
        use cgroups_rs::fs::hierarchies::V1;
        let seed = u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let id: String = (0..4u32)
            .map(|i| format!("{:016x}", seed.rotate_left(i * 17)))
            .collect();
        let rel = format!("docker/{id}");
        let created_parents = if Path::new("/sys/fs/cgroup/memory/docker").exists() {
            vec![]
        } else {
            vec!["docker".to_string()]
        };
        let cg = cgroups_rs::fs::Cgroup::new(Box::new(V1::new()), &rel)
            .unwrap_or_else(|e| panic!("create cgroup {rel}: {e}"));
        let unified = PathBuf::from("/sys/fs/cgroup/unified").join(&rel);
        std::fs::create_dir_all(&unified).unwrap();
        let disk = whole_disk_of(dir);
        let script = format!(
            "read go; \
             ip link add swa0 type veth peer name swb0 && ip link set swa0 up && ip link set swb0 up \
             && ip addr add 169.254.99.1/30 dev swa0 && ip addr add 169.254.99.2/30 dev swb0; \
             python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
             [s.sendto(b\"x\" * 100, (\"169.254.99.2\", 9)) for _ in range(20)]'; \
             dd if=/dev/zero of={out} bs=4k count=64 oflag=direct 2>/dev/null; \
             dd if={out} of=/dev/null bs=4k iflag=direct 2>/dev/null; \
             while :; do :; done",
            out = dir.join("io.bin").display()
        );
        let child = Command::new("unshare")
            .args(["--net", "sh", "-c", &script])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let mut c = DockerShaped {
            id,
            cg: Some(cg),
            unified,
            child,
            created_parents,
        };
        let v1 = |ctrl: &str, file: &str, value: &str| {
            let p = PathBuf::from("/sys/fs/cgroup")
                .join(ctrl)
                .join(&rel)
                .join(file);
            std::fs::write(&p, value)
                .unwrap_or_else(|e| panic!("write {value:?} to {}: {e}", p.display()));
        };
        let devnum = std::fs::read_to_string(format!("/sys/block/{disk}/dev")).unwrap();
        let devnum = devnum.trim();
        v1(
            "blkio",
            "blkio.throttle.read_bps_device",
            &format!("{devnum} 10000000000"),
        );
        v1(
            "blkio",
            "blkio.throttle.write_bps_device",
            &format!("{devnum} 10000000000"),
        );
        v1("cpu", "cpu.cfs_quota_us", "20000");
        v1("memory", "memory.limit_in_bytes", "536870912");
        let pid = c.child.id();
        c.cg.as_ref()
            .unwrap()
            .add_task_by_tgid(cgroups_rs::CgroupPid::from(u64::from(pid)))
            .unwrap();
        std::fs::write(c.unified.join("cgroup.procs"), pid.to_string()).unwrap();
        c.child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        c
    }
}

impl Drop for DockerShaped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(cg) = self.cg.take() {
            for _ in 0..50 {
                if cg.delete().is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = std::fs::remove_dir(&self.unified);
        for parent in self.created_parents.iter().rev() {
            if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
                for h in rd.filter_map(|e| e.ok()) {
                    let _ = std::fs::remove_dir(h.path().join(parent));
                }
            }
        }
    }
}

/// The whole disk (e.g. `vda`) holding `path`: v1 throttle rules are per whole disk.
fn whole_disk_of(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).unwrap().dev();
    let (maj, min) = (libc::major(dev), libc::minor(dev));
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{maj}:{min}")).unwrap();
    let disk = if sys.join("partition").exists() {
        sys.parent().unwrap().to_path_buf()
    } else {
        sys
    };
    disk.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn dashboards_every_panel_query_returns_data_from_real_prometheus() {
    if !require_root("dashboards_every_panel_query_returns_data_from_real_prometheus") {
        return;
    }
    let t0 = Instant::now();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let probe_dir = dir.path().join("probe");
    std::fs::create_dir(&probe_dir).unwrap();
    // Real threads in D (so the D-state panels have groups, ages and wait channels) and a
    // container with a process in it.
    let rig = DStateRig::start(2, 4);
    let ctr = DockerShaped::start(dir.path());
    // Docker's state for the `name` label, in a private docker_root.
    let docker_root = dir.path().join("docker");
    let state = docker_root.join("containers").join(&ctr.id);
    std::fs::create_dir_all(&state).unwrap();
    write(
        &state.join("config.v2.json"),
        &format!("{{\"ID\": \"{}\", \"Name\": \"/{NAME}\"}}", ctr.id),
    );
    // The cloud side on loopback (moto + IMDSv2, tests/cloud/harness.py): one 1 GiB gp2 volume
    // with a CloudWatch history, mapped to the disk under the test's temp dir, so the EBS
    // panels have a volume, a BurstBalance, a local estimate and cloud request counters.
    let aws = crate::cloud::Aws::start();
    let setup = aws.call(
        "setup",
        serde_json::json!({"volumes": [{"type": "gp2", "size": 1}]}),
    );
    let vol = setup["volumes"][0].as_str().unwrap().to_string();
    let m0 = (crate::cloud::now() / 60.0).floor() * 60.0;
    aws.call(
        "put",
        serde_json::json!({"volume_id": vol, "points": [[m0 - 180.0, 90.0], [m0 - 120.0, 88.0], [m0 - 60.0, 87.0]]}),
    );
    // The instance's own EBS buckets (AWS/EC2), for the instance-burst panel.
    let iid = setup["instance_id"].as_str().unwrap();
    for (metric, v) in [("EBSIOBalance%", 93.0), ("EBSByteBalance%", 97.0)] {
        aws.call(
            "put",
            serde_json::json!({"instance_id": iid, "metric": metric, "points": [[m0 - 120.0, v], [m0 - 60.0, v]]}),
        );
    }
    // The status, checks and modification panels: the volume is still initializing and being
    // resized, its checks are published under {InstanceId, VolumeId}, the instance's too.
    aws.call(
        "status",
        serde_json::json!({"volume_id": vol, "init_progress": 60, "init_eta": 300}),
    );
    let checks = [
        ("AWS/EBS", "VolumeStalledIOCheck", true),
        ("AWS/EBS", "VolumeIOPSExceededCheck", true),
        ("AWS/EBS", "VolumeThroughputExceededCheck", true),
        ("AWS/EC2", "InstanceEBSIOPSExceededCheck", false),
        ("AWS/EC2", "InstanceEBSThroughputExceededCheck", false),
    ];
    for (ns, metric, per_volume) in checks {
        let mut dims = vec![serde_json::json!(["InstanceId", iid])];
        if per_volume {
            dims.push(serde_json::json!(["VolumeId", vol]));
        }
        aws.call(
            "put",
            serde_json::json!({"namespace": ns, "metric": metric, "dimensions": dims, "unit": "Count",
                "points": [[m0 - 120.0, 0.0], [m0 - 60.0, 0.0]]}),
        );
    }
    aws.call(
        "modify",
        serde_json::json!({"volume_id": vol, "size": 2, "state": "optimizing", "progress": 50}),
    );
    let disk = whole_disk_of(dir.path());
    let cfg = dir.path().join("cfg.toml");
    write(
        &cfg,
        &format!(
            "{}\n[threads]\ninterval = \"1s\"\nfast_interval = \"1s\"\n\n\
             [containers]\ninterval = \"1s\"\ndocker_root = \"{}\"\n\n\
             [[probe]]\npath = \"{}\"\nsize = \"64KiB\"\ninterval = \"1s\"\ntimeout = \"5s\"\n",
            aws.config(&format!(
                "poll_interval = \"3s\"\nfast_poll_interval = \"3s\"\ndescribe_interval = \"3s\"\n\
                 retry_min = \"1s\"\n\n[[cloud.volume]]\ndevice = \"{disk}\"\nvolume_id = \"{vol}\"\n"
            )),
            docker_root.display(),
            probe_dir.display()
        ),
    );
    let agent = crate::cloud::start_agent(&cfg);
    let prom = Prometheus::start(
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: stallwatch\n    static_configs:\n      - targets: ['{}']\n",
            agent.addr
        ),
        &[],
    );
    let cid = &ctr.id;
    // Enough scrapes for every rate() window, with the container, the D threads and a few
    // probe writes in them.
    prom.wait_for(
        Duration::from_secs(30),
        "8 scrapes",
        "count_over_time(up{job=\"stallwatch\"}[1m])",
        |n| n >= 8.0,
    );
    prom.wait_for(Duration::from_secs(30), "the container's CPU counter for 6 s", &format!("count_over_time(stallwatch_container_cpu_usage_seconds_total{{container_id=\"{cid}\"}}[1m])"), |n| n >= 6.0);
    for dir in ["read", "written"] {
        prom.wait_for(
            Duration::from_secs(30),
            &format!("container I/O {dir}"),
            &format!("sum(stallwatch_container_io_{dir}_bytes_total{{container_id=\"{cid}\"}})"),
            |n| n >= 64.0 * 4096.0,
        );
    }
    prom.wait_for(
        Duration::from_secs(30),
        "threads in D",
        "sum(stallwatch_dstate_threads)",
        |n| n >= 1.0,
    );
    prom.wait_for(
        Duration::from_secs(30),
        "probe writes",
        "sum(stallwatch_probe_write_seconds_count)",
        |n| n >= 3.0,
    );
    prom.wait_for(
        Duration::from_secs(30),
        "the volume's CloudWatch value and local estimate",
        &format!("stallwatch_ebs_burst_balance_percent{{volume_id=\"{vol}\"}} + on (volume_id) count_over_time(stallwatch_ebs_burst_balance_estimate_percent{{volume_id=\"{vol}\"}}[1m])"),
        |n| n >= 87.0 + 5.0,
    );
    eprintln!("dashboards: stack ready after {:?}", t0.elapsed());

    let vars: HashMap<&str, String> = [
        ("job", "stallwatch".to_string()),
        ("instance", agent.addr.clone()),
        ("name", NAME.to_string()),
        ("container", cid.clone()),
        ("volume", vol.clone()),
        ("__rate_interval", "4s".to_string()),
        ("__interval", "1s".to_string()),
        ("__range", "1m".to_string()),
    ]
    .into_iter()
    .collect();

    let mut failures = Vec::new();
    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for f in FILES {
        let d = load(f);
        // Variable queries, as Grafana's Prometheus datasource runs label_values(): the
        // series API's label values for the substituted selector.
        for v in d["templating"]["list"].as_array().unwrap() {
            if v["type"] != "query" {
                continue;
            }
            let name = v["name"].as_str().unwrap();
            let (sel, label) = parse_label_values(variable_query(v).unwrap());
            let sel = substitute(&sel, &vars);
            let r = prom.api(
                &format!("/api/v1/label/{label}/values"),
                &[("match[]", &sel)],
            );
            let values = r["data"].as_array().cloned().unwrap_or_default();
            let allowed = ALLOWED_EMPTY_VARS
                .iter()
                .any(|(af, an, _)| *af == f && *an == name);
            if r["status"] != "success" {
                failures.push(format!("{f} variable {name}: {sel}: {r}"));
            } else if values.is_empty() && !allowed {
                failures.push(format!(
                    "{f} variable {name}: no values for {label} of {sel}"
                ));
            }
            // The test's own choices must be among the values a user could pick.
            let want = match name {
                "job" => Some("stallwatch".to_string()),
                "instance" => Some(agent.addr.clone()),
                "container" => Some(cid.clone()),
                "name" => Some(NAME.to_string()),
                "volume" => Some(vol.clone()),
                _ => None,
            };
            if let Some(w) = want {
                if !values.iter().any(|x| x == &Value::String(w.clone())) {
                    failures.push(format!("{f} variable {name}: {w} not among {values:?}"));
                }
            }
        }
        for t in targets(&d) {
            let expr = substitute(t.expr, &vars);
            let r = prom.query(&expr);
            let c = counts.entry(f).or_default();
            c.0 += 1;
            let what = format!("{f} {:?} {}: {expr}", t.panel, t.ref_id);
            if r["status"] != "success" {
                failures.push(format!("{what}\n    does not run: {}", r["error"]));
                continue;
            }
            let result = r["data"]["result"].as_array().cloned().unwrap_or_default();
            let allowed = ALLOWED_EMPTY.iter().any(|(af, ap, refs, _)| {
                *af == f && *ap == t.panel && (*refs == "*" || refs.contains(t.ref_id))
            });
            if result.is_empty() {
                if !allowed {
                    failures.push(format!("{what}\n    returned no data"));
                }
                continue;
            }
            c.1 += 1;
            if allowed {
                eprintln!("dashboards: note: allowed-empty {what} returned data now");
            }
            // Every label the legend names is on every series (else Grafana prints it empty).
            for series in &result {
                for l in legend_labels(t.legend) {
                    if series["metric"][&l].is_null()
                        && !OPTIONAL_LEGEND_LABELS.contains(&l.as_str())
                    {
                        failures.push(format!(
                            "{what}\n    legend {:?} names {l}, missing from {}",
                            t.legend, series["metric"]
                        ));
                    }
                }
            }
        }
    }
    eprintln!(
        "dashboards: (targets, with data) per file: {counts:?}; {:?} in all",
        t0.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} dashboard queries failed against the real Prometheus:\n{}\nPrometheus targets: {}",
        failures.len(),
        failures.join("\n"),
        prom.api("/api/v1/targets", &[])
    );
    // The container panels had the container, the D-state panels the rig's threads.
    assert!(prom
        .value(&format!(
            "sum(stallwatch_container_cpu_usage_seconds_total{{container_id=\"{cid}\"}})"
        ))
        .is_some_and(|v| v > 0.0));
    drop(prom);
    drop(agent);
    drop(ctr);
    drop(rig);
}
