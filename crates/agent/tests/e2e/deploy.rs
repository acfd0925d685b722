//! The deployment files in `deploy/` (issue 8), checked with real tools offline:
//! - Kubernetes manifests: `kubernetes-validate --strict` (PyPI; bundles the API schemas) for
//!   everything with a bundled schema; the ServiceMonitor (a CRD, no bundled schema) checked
//!   structurally here against the Service it selects; the DaemonSet's flags run through the
//!   real binary's `check-config` with the ConfigMap's own config.
//! - The plain Prometheus scrape config: Debian's promtool is built without Kubernetes
//!   discovery, so the file is checked with its `kubernetes_sd_configs` swapped for a static
//!   target (relabelling, rule files, alerting are promtool's) and the SD block structurally.
//! - The IAM policy: exactly the AWS actions the cloud crate's source calls.
//! - The systemd unit: `systemd-analyze verify` with no warnings (and with the NVMe drop-in);
//!   its capability set is enough to name the wait channels of real D-state threads, and the
//!   set without CAP_SYS_PTRACE is not (so the capability is needed, not decoration).
//! - The Dockerfile: its offline `prebuilt` stage built by a private dockerd on a base imported
//!   from the libraries `ldd` lists, then run: `--version`, `check-config`, a scrape.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_yaml_ng::Value;

use crate::docker::Dockerd;
use crate::dstate_rig::DStateRig;
use crate::harness::{get, repo, require_root, write, Metrics, BIN};
use crate::rules::{out_text, run};

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn s(v: &Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| serde_yaml_ng::to_string(v).unwrap().trim().to_string())
}

fn kind<'a>(all: &'a [Value], k: &str) -> &'a Value {
    all.iter()
        .find(|d| d["kind"].as_str() == Some(k))
        .unwrap_or_else(|| panic!("no {k} in the manifests"))
}

fn kubernetes_validate(files: &[&Path]) -> std::process::Output {
    run(
        Command::new("kubernetes-validate")
            .arg("--strict")
            .args(files),
        "kubernetes-validate (PyPI kubernetes-validate)",
    )
}

#[test]
fn deploy_kubernetes_manifests_validate_strict() {
    let k8s = deploy().join("kubernetes");
    let ds = k8s.join("daemonset.yaml");
    let svc = k8s.join("service.yaml");
    let o = kubernetes_validate(&[&ds, &svc]);
    let text = out_text(&o);
    assert!(o.status.success(), "kubernetes-validate --strict:\n{text}");
    for r in [
        "namespace/stallwatch",
        "serviceaccount/stallwatch",
        "configmap/stallwatch",
        "daemonset/stallwatch",
        "service/stallwatch",
    ] {
        assert!(
            text.contains(&format!("passed for resource {r}")),
            "{r} not validated:\n{text}"
        );
    }
    assert!(!text.contains("WARN"), "{text}");

    // The validator is strict for real: an unknown field in the pod spec fails it.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let src = std::fs::read_to_string(&ds).unwrap();
    assert!(src.contains("      hostPID: false\n"));
    write(
        &bad,
        &src.replace(
            "      hostPID: false\n",
            "      hostPID: false\n      hostPIDs: true\n",
        ),
    );
    let o = kubernetes_validate(&[&bad]);
    assert!(
        !o.status.success(),
        "--strict accepted an unknown field:\n{}",
        out_text(&o)
    );

    // The ServiceMonitor: no bundled schema (a CRD). Structural check of the fields we use,
    // against the Service it must select.
    let sm_path = k8s.join("servicemonitor.yaml");
    let o = kubernetes_validate(&[&sm_path]);
    assert!(
        out_text(&o).contains("Couldn't find schema for kind ServiceMonitor"),
        "kubernetes-validate now knows ServiceMonitor? then validate it there:\n{}",
        out_text(&o)
    );
    let all: Vec<Value> = [&ds, &svc, &sm_path].iter().flat_map(|p| docs(p)).collect();
    let sm = kind(&all, "ServiceMonitor");
    let service = kind(&all, "Service");
    let daemonset = kind(&all, "DaemonSet");
    assert_eq!(s(&sm["apiVersion"]), "monitoring.coreos.com/v1");
    let allowed_spec: BTreeSet<&str> = [
        "jobLabel",
        "selector",
        "namespaceSelector",
        "endpoints",
        "targetLabels",
        "podTargetLabels",
    ]
    .into();
    for k in sm["spec"].as_mapping().unwrap().keys() {
        assert!(
            allowed_spec.contains(s(k).as_str()),
            "ServiceMonitor spec.{}: not a field we know",
            s(k)
        );
    }
    let svc_labels = service["metadata"]["labels"].as_mapping().unwrap();
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(
            svc_labels.get(k),
            Some(v),
            "ServiceMonitor selects {k:?}={v:?}, the Service is not labelled so"
        );
    }
    // jobLabel names a Service label whose value becomes the job: it must match the rules'
    // agent_job_regex (.*stallwatch.*).
    let job = svc_labels
        .get(sm["spec"]["jobLabel"].as_str().unwrap())
        .map(s)
        .expect("jobLabel is a label of the Service");
    assert!(job.contains("stallwatch"), "job would be {job}");
    let ns = s(&service["metadata"]["namespace"]);
    let names: Vec<String> = sm["spec"]["namespaceSelector"]["matchNames"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert!(names.contains(&ns), "namespaceSelector misses {ns}");
    let svc_ports: Vec<String> = service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| s(&p["name"]))
        .collect();
    let allowed_ep: BTreeSet<&str> = [
        "port",
        "path",
        "interval",
        "scrapeTimeout",
        "relabelings",
        "metricRelabelings",
        "scheme",
        "honorLabels",
    ]
    .into();
    for ep in sm["spec"]["endpoints"].as_sequence().unwrap() {
        for k in ep.as_mapping().unwrap().keys() {
            assert!(
                allowed_ep.contains(s(k).as_str()),
                "endpoint.{}: unknown",
                s(k)
            );
        }
        assert!(
            svc_ports.contains(&s(&ep["port"])),
            "endpoint port {:?} is not a Service port name",
            ep["port"]
        );
        for r in ep["relabelings"]
            .as_sequence()
            .map(|v| v.as_slice())
            .unwrap_or(&[])
        {
            for k in r.as_mapping().unwrap().keys() {
                assert!(
                    [
                        "sourceLabels",
                        "targetLabel",
                        "action",
                        "regex",
                        "replacement",
                        "separator"
                    ]
                    .contains(&s(k).as_str()),
                    "relabeling.{}: unknown (camelCase in the Operator's CRD)",
                    s(k)
                );
            }
        }
    }
    // The Service selects the DaemonSet's pods and its targetPort is a named container port.
    let pod = &daemonset["spec"]["template"];
    for (k, v) in service["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(pod["metadata"]["labels"].get(k), Some(v));
    }
    let c = &pod["spec"]["containers"][0];
    let cports: Vec<String> = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| s(&p["name"]))
        .collect();
    for p in service["spec"]["ports"].as_sequence().unwrap() {
        assert!(cports.contains(&s(&p["targetPort"])));
    }

    // The DaemonSet: every --path.* flag points at a read-only host mount of the right host
    // path, and the real binary accepts its flags and its ConfigMap's config.
    let args: Vec<String> = c["args"].as_sequence().unwrap().iter().map(s).collect();
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let volumes = pod["spec"]["volumes"].as_sequence().unwrap();
    for (flag, host) in [
        ("--path.procfs=", "/proc"),
        ("--path.sysfs=", "/sys"),
        ("--path.cgroupfs=", "/sys/fs/cgroup"),
        ("--path.rootfs=", "/"),
    ] {
        let at = args
            .iter()
            .find_map(|a| a.strip_prefix(flag))
            .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
        assert!(at.starts_with("/host/"), "{flag}{at}");
        let m = mounts
            .iter()
            .find(|m| s(&m["mountPath"]) == at)
            .unwrap_or_else(|| panic!("nothing mounted at {at}"));
        assert_eq!(
            m["readOnly"].as_bool(),
            Some(true),
            "{at} must be read-only"
        );
        assert_eq!(s(&m["recursiveReadOnly"]), "IfPossible", "{at}");
        let v = volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("no volume {:?}", m["name"]));
        assert_eq!(s(&v["hostPath"]["path"]), host, "{at}");
    }
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(s(&sc["capabilities"]["drop"][0]), "ALL");
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());

    let cm = kind(&all, "ConfigMap");
    let toml = s(&cm["data"]["stallwatch.toml"]);
    let probe_dir = tempfile::tempdir().unwrap();
    assert!(toml.contains("path = \"/var/lib/stallwatch\""));
    let cfg = dir.path().join("stallwatch.toml");
    write(
        &cfg,
        &toml.replace(
            "path = \"/var/lib/stallwatch\"",
            &format!("path = \"{}\"", probe_dir.path().display()),
        ),
    );
    let mut flags: Vec<String> = args
        .iter()
        .filter(|a| !a.starts_with("--config.file=") && !a.starts_with("--path."))
        .cloned()
        .collect();
    flags.push(format!("--config.file={}", cfg.display()));
    // The host paths themselves (the pod's /host/* exist only in the pod).
    flags.extend(
        [
            "--path.procfs=/proc",
            "--path.sysfs=/sys",
            "--path.rootfs=/",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let o = run(
        Command::new(BIN).arg("check-config").args(&flags),
        "stallwatch",
    );
    assert!(
        o.status.success(),
        "stallwatch check-config {flags:?}:\n{}",
        out_text(&o)
    );
}

#[test]
fn deploy_prometheus_scrape_config_passes_promtool() {
    let path = deploy().join("kubernetes/prometheus-scrape.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: Value = serde_yaml_ng::from_str(&text).unwrap();
    let jobs = doc["scrape_configs"].as_sequence().unwrap();
    let job = jobs
        .iter()
        .find(|j| s(&j["job_name"]) == "stallwatch")
        .expect("a job named stallwatch (the rules' agent_job_regex)");
    assert!(doc.get("podmonitor").is_none() && !text.contains("PodMonitor\n"));
    // kubernetes_sd_configs: Debian's promtool has no Kubernetes discovery; check the fields.
    let sd = job["kubernetes_sd_configs"]
        .as_sequence()
        .expect("kubernetes_sd_configs");
    for c in sd {
        assert!(["pod", "endpoints"].contains(&s(&c["role"]).as_str()));
        for k in c.as_mapping().unwrap().keys() {
            assert!(
                [
                    "role",
                    "namespaces",
                    "selectors",
                    "api_server",
                    "kubeconfig_file",
                    "attach_metadata"
                ]
                .contains(&s(k).as_str()),
                "kubernetes_sd_configs.{} unknown",
                s(k)
            );
        }
        for sel in c["selectors"]
            .as_sequence()
            .map(|v| v.as_slice())
            .unwrap_or(&[])
        {
            for k in sel.as_mapping().unwrap().keys() {
                assert!(["role", "label", "field"].contains(&s(k).as_str()));
            }
        }
    }
    // The rest with promtool: swap the SD block for a static target, keep everything else
    // (relabel_configs, rule_files relative to deploy/kubernetes, alerting).
    let mut doc2 = doc.clone();
    for j in doc2["scrape_configs"].as_sequence_mut().unwrap() {
        let m = j.as_mapping_mut().unwrap();
        if m.remove("kubernetes_sd_configs").is_some() {
            let st: Value = serde_yaml_ng::from_str("[{targets: ['127.0.0.1:10139']}]").unwrap();
            m.insert(Value::from("static_configs"), st);
        }
    }
    // Same layout as deploy/ so the relative rule_files path resolves to the real rules.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("kubernetes")).unwrap();
    std::fs::create_dir_all(dir.path().join("prometheus")).unwrap();
    std::fs::copy(
        deploy().join("prometheus/stallwatch.rules.yml"),
        dir.path().join("prometheus/stallwatch.rules.yml"),
    )
    .unwrap();
    let copy = dir.path().join("kubernetes/prometheus-scrape.yml");
    write(&copy, &serde_yaml_ng::to_string(&doc2).unwrap());
    let o = run(
        Command::new("promtool")
            .arg("check")
            .arg("config")
            .arg(&copy),
        "promtool",
    );
    let t = out_text(&o);
    assert!(o.status.success(), "promtool check config:\n{t}");
    assert!(
        t.contains("stallwatch.rules.yml") && t.contains("SUCCESS"),
        "the rules file was checked too:\n{t}"
    );
}

#[test]
fn deploy_iam_policy_has_exactly_the_cloud_crates_actions() {
    let p: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("aws/iam-policy.json")).unwrap(),
    )
    .expect("deploy/aws/iam-policy.json is JSON");
    assert_eq!(p["Version"], "2012-10-17");
    let mut actions = BTreeSet::new();
    for st in p["Statement"].as_array().unwrap() {
        assert_eq!(st["Effect"], "Allow");
        assert_eq!(
            st["Resource"], "*",
            "neither action supports resource-level permissions"
        );
        match &st["Action"] {
            serde_json::Value::String(a) => {
                actions.insert(a.clone());
            }
            serde_json::Value::Array(v) => {
                actions.extend(v.iter().map(|a| a.as_str().unwrap().to_string()))
            }
            other => panic!("Action {other}"),
        }
    }
    let expected: BTreeSet<String> = ["ec2:DescribeVolumes", "cloudwatch:GetMetricData"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(actions, expected);

    // Cross-check with the cloud crate's source: the EC2 Query actions it signs, and the
    // CloudWatch SDK operations it calls.
    let mut called = BTreeSet::new();
    let query = regex::Regex::new(r"Action=([A-Za-z]+)").unwrap();
    let sdk = regex::Regex::new(
        r"\.(get_metric_data|get_metric_statistics|list_metrics|describe_alarms|put_metric_data)\(",
    )
    .unwrap();
    for e in std::fs::read_dir(repo().join("crates/cloud/src")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "rs") {
            let t = std::fs::read_to_string(&p).unwrap();
            for c in query.captures_iter(&t) {
                called.insert(format!("ec2:{}", &c[1]));
            }
            for c in sdk.captures_iter(&t) {
                let op: String = c[1]
                    .split('_')
                    .map(|w| w[..1].to_uppercase() + &w[1..])
                    .collect();
                called.insert(format!("cloudwatch:{op}"));
            }
        }
    }
    // The crate is being written alongside: what it calls must be in the policy.
    for a in &called {
        assert!(
            actions.contains(a),
            "the cloud crate calls {a}, the policy lacks it"
        );
    }
}

/// The unit with ExecStart pointing at the real binary (systemd-analyze checks it exists).
fn unit_copy(dir: &Path, with_nvme: bool) -> PathBuf {
    let mut unit = std::fs::read_to_string(deploy().join("systemd/stallwatch.service"))
        .unwrap()
        .replace("/usr/local/bin/stallwatch", BIN);
    if with_nvme {
        // Drop-in keys appended to [Service] (verify does not read drop-in directories).
        let dropin = std::fs::read_to_string(deploy().join("systemd/stallwatch-nvme.conf"))
            .unwrap()
            .replace("[Service]\n", "");
        unit = unit.replace("\n[Install]\n", &format!("\n{dropin}\n[Install]\n"));
    }
    let p = dir.join(if with_nvme {
        "stallwatch-nvme.service"
    } else {
        "stallwatch.service"
    });
    write(&p, &unit);
    p
}

fn unit_caps() -> Vec<String> {
    let unit = std::fs::read_to_string(deploy().join("systemd/stallwatch.service")).unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet=");
    line.split_whitespace().map(str::to_string).collect()
}

#[test]
fn deploy_systemd_unit_verifies_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    for nvme in [false, true] {
        let p = unit_copy(dir.path(), nvme);
        let o = run(
            Command::new("systemd-analyze").arg("verify").arg(&p),
            "systemd-analyze (Debian systemd)",
        );
        // verify exits 0 on unknown keys and bad values, but says so on stderr.
        assert!(
            o.status.success() && o.stderr.is_empty(),
            "systemd-analyze verify {}:\n{}",
            p.display(),
            out_text(&o)
        );
    }
    // ...and it does say so: a misspelt key is reported.
    let p = dir.path().join("bad.service");
    let unit = std::fs::read_to_string(unit_copy(dir.path(), false))
        .unwrap()
        .replace("ProtectSystem=strict", "ProtectSystem=strictest");
    write(&p, &unit);
    let o = run(
        Command::new("systemd-analyze").arg("verify").arg(&p),
        "systemd-analyze",
    );
    assert!(
        !o.stderr.is_empty(),
        "verify noticed nothing:\n{}",
        out_text(&o)
    );

    let caps = unit_caps();
    assert_eq!(
        caps.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        ["CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"].into(),
        "the README and deploy/README.md explain exactly these two"
    );
    let unit = std::fs::read_to_string(deploy().join("systemd/stallwatch.service")).unwrap();
    for must in [
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectControlGroups=yes",
    ] {
        assert!(unit.lines().any(|l| l == must), "{must} missing");
    }
    for never in [
        "ProtectProc=invisible",
        "ProcSubset=pid",
        "PrivateUsers=yes",
    ] {
        assert!(
            !unit.lines().any(|l| l == never),
            "{never} hides what the agent reads"
        );
    }
}

/// The agent under `setpriv` with exactly `caps` (bounding set; root gets no others).
struct CappedAgent {
    child: Child,
    addr: String,
}

impl CappedAgent {
    fn start(caps: &[String], cfg: &Path) -> CappedAgent {
        let bounding = std::iter::once("-all".to_string())
            .chain(
                caps.iter()
                    .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())),
            )
            .collect::<Vec<_>>()
            .join(",");
        let mut child = Command::new("setpriv")
            .args(["--bounding-set", &bounding, "--inh-caps", "-all", "--"])
            .arg(BIN)
            .arg("--web.listen-address=127.0.0.1:0")
            .arg(format!("--config.file={}", cfg.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn setpriv (util-linux)");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(a) = line
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("address="))
                {
                    if line.contains("msg=Listening.") {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(a.to_string());
                        }
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("stallwatch under setpriv {bounding} did not start");
            }
        };
        CappedAgent { child, addr }
    }

    fn scrape(&self) -> Metrics {
        Metrics::parse(&get(&format!("http://{}/metrics", self.addr)))
    }

    /// Wait channels of the threads in D, until at least `n` threads are seen.
    fn wchans(&self, n: f64) -> Vec<(String, f64)> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let m = self.scrape();
            let w: Vec<(String, f64)> = m
                .series
                .iter()
                .filter_map(|(k, v)| {
                    let l = k.strip_prefix("stallwatch_dstate_threads_by_wchan{wchan=\"")?;
                    Some((l.trim_end_matches("\"}").to_string(), *v))
                })
                .collect();
            if w.iter().map(|(_, v)| v).sum::<f64>() >= n {
                return w;
            }
            assert!(
                Instant::now() < deadline,
                "no {n} D threads by wchan:\n{}",
                m.text
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for CappedAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The unit's capability set is enough, and CAP_SYS_PTRACE in it is needed: real D-state
/// threads (the loop-device rig) are named by wait channel with the unit's set, and only as
/// "unknown" without CAP_SYS_PTRACE. No permission errors with the unit's set. (In the serial
/// host-I/O test group: `dstate` prefix in .config/nextest.toml.)
#[test]
fn dstate_systemd_unit_capabilities_name_wait_channels() {
    if !require_root("dstate_systemd_unit_capabilities_name_wait_channels") {
        return;
    }
    let rig = DStateRig::start(3, 3);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg.toml");
    write(
        &cfg,
        "[threads]\ninterval = \"1s\"\nfast_interval = \"1s\"\n[containers]\ninterval = \"1s\"\n",
    );
    let caps = unit_caps();
    let agent = CappedAgent::start(&caps, &cfg);
    let w = agent.wchans(2.0);
    eprintln!("with {caps:?}: D threads by wchan {w:?}");
    assert!(
        w.iter().any(|(k, v)| k != "unknown" && *v >= 1.0),
        "with {caps:?} the wait channels should be readable: {w:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let m = agent.scrape();
    for (k, v) in &m.series {
        if k.starts_with("stallwatch_source_errors_total{") && k.contains("kind=\"permission\"") {
            assert_eq!(*v, 0.0, "{k} with the unit's capabilities");
        }
    }
    drop(agent);

    let without: Vec<String> = caps
        .iter()
        .filter(|c| *c != "CAP_SYS_PTRACE")
        .cloned()
        .collect();
    let agent = CappedAgent::start(&without, &cfg);
    let w = agent.wchans(2.0);
    eprintln!("with {without:?}: D threads by wchan {w:?}");
    assert!(
        w.iter().all(|(k, _)| k == "unknown"),
        "without CAP_SYS_PTRACE the rig's wait channels should be hidden (else the unit \
         asks for a capability it does not need): {w:?}"
    );
    assert!(
        rig.d_threads_now() >= 1,
        "the rig stayed stalled throughout"
    );
    drop(agent);
    drop(rig);
}

/// The Dockerfile's offline mode, for real: a base imported from the libraries the binary
/// links (what distroless/cc provides), `docker build --target prebuilt`, then the image runs.
/// (In the serial host-I/O group with the other Docker test: `docker_` prefix in
/// .config/nextest.toml.)
#[test]
fn docker_image_builds_offline_and_serves_metrics() {
    if !require_root("docker_image_builds_offline_and_serves_metrics") {
        return;
    }
    let mut d = Dockerd::start();
    let ctx = d.root.join("ctx");
    let base = d.root.join("base");
    std::fs::create_dir_all(&ctx).unwrap();
    // The binary, stripped (the debug build carries ~250 MB of debug info).
    let o = run(
        Command::new("strip")
            .arg("-o")
            .arg(ctx.join("stallwatch"))
            .arg(BIN),
        "strip (binutils)",
    );
    assert!(o.status.success(), "{}", out_text(&o));
    // The base: every library `ldd` lists, at the same paths, plus CA certificates.
    let o = run(Command::new("ldd").arg(BIN), "ldd");
    assert!(o.status.success(), "{}", out_text(&o));
    let ldd = String::from_utf8_lossy(&o.stdout).to_string();
    let mut libs = vec![];
    for l in ldd.lines() {
        let path = l
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(str::to_string);
        if let Some(p) = path {
            libs.push(p);
        }
    }
    assert!(
        libs.iter().any(|l| l.contains("libc.so")) && libs.iter().any(|l| l.contains("ld-linux")),
        "ldd: {ldd}"
    );
    for lib in libs.iter().chain(std::iter::once(
        &"/etc/ssl/certs/ca-certificates.crt".to_string(),
    )) {
        let real = std::fs::canonicalize(lib).unwrap();
        let to = base.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&real, &to).unwrap_or_else(|e| panic!("copy {lib}: {e}"));
    }
    // /lib64 and /lib are symlinks on merged-/usr hosts: the loader path must resolve.
    std::fs::create_dir_all(base.join("tmp")).unwrap();
    let tar = d.root.join("base.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&base)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let base_image = "stallwatch-test-base:1";
    d.must(&["import", tar.to_str().unwrap(), base_image]);
    let dockerfile = deploy().join("Dockerfile");
    let image = "stallwatch-test-image:1";
    let built = d.docker(
        &[
            "build",
            "-f",
            dockerfile.to_str().unwrap(),
            "--target",
            "prebuilt",
            "--build-arg",
            &format!("BASE={base_image}"),
            "--build-arg",
            "BIN=stallwatch",
            "-t",
            image,
            ctx.to_str().unwrap(),
        ],
        300,
    );
    if let Err(e) = built {
        panic!("docker build failed: {e}\ndockerd log:\n{}", d.log_tail());
    }
    let size: f64 = d
        .must(&["image", "inspect", "-f", "{{.Size}}", image])
        .parse()
        .unwrap();
    let bin_size = std::fs::metadata(ctx.join("stallwatch")).unwrap().len() as f64;
    eprintln!("image {} MB (binary {} MB)", size / 1e6, bin_size / 1e6);
    assert!(
        size < bin_size + 20e6,
        "image {size} B: more than 20 MB on top of the binary"
    );
    let v = d.must(&["run", "--rm", image, "--version"]);
    assert!(v.starts_with("stallwatch "), "{v}");
    // check-config with a config file mounted read-only.
    let cfgdir = d.root.join("cfg");
    std::fs::create_dir_all(&cfgdir).unwrap();
    std::fs::copy(
        repo().join("config/stallwatch.example.toml"),
        cfgdir.join("stallwatch.toml"),
    )
    .unwrap();
    let mount = format!("{}:/etc/stallwatch:ro", cfgdir.display());
    let ok = d.must(&[
        "run",
        "--rm",
        "-v",
        &mount,
        image,
        "check-config",
        "--config.file=/etc/stallwatch/stallwatch.toml",
    ]);
    eprintln!("check-config in the image: {ok}");
    // The agent as deploy/Dockerfile's header says to run it, on a free loopback port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let id = d.must(&[
        "run",
        "-d",
        "--network=host",
        "--read-only",
        "--cap-drop=ALL",
        "--cap-add=SYS_PTRACE",
        "--cap-add=DAC_READ_SEARCH",
        "-v",
        "/proc:/host/proc:ro",
        "-v",
        "/sys:/host/sys:ro",
        "-v",
        &mount,
        image,
        "--config.file=/etc/stallwatch/stallwatch.toml",
        &format!("--web.listen-address=127.0.0.1:{port}"),
        "--path.procfs=/host/proc",
        "--path.sysfs=/host/sys",
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let r = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send();
        let mut last = String::new();
        if let Ok(r) = r {
            if r.status().is_success() {
                last = r.text().unwrap();
                // The first thread walk (host threads, through /host/proc) has landed.
                if Metrics::parse(&last).has_family("stallwatch_threads") {
                    break last;
                }
            }
        }
        if Instant::now() > deadline {
            let logs = d.docker(&["logs", &id], 10).unwrap_or_default();
            panic!(
                "the container did not serve /metrics with threads in 30 s; last scrape:\n\
                 {last}\nlogs:\n{logs}"
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let m = Metrics::parse(&text);
    assert!(m.has_family("stallwatch_build_info"), "{text}");
    assert!(m.has_family("stallwatch_procs_blocked"), "{text}");
    assert!(
        m.has_family("stallwatch_threads"),
        "host threads seen: {text}"
    );
    d.must(&["rm", "-f", &id]);
}
