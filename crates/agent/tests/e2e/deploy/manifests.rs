//! The Kubernetes manifests, the plain Prometheus scrape config and the IAM policy.

use std::collections::BTreeSet;
use std::process::Command;

use serde_yaml_ng::Value;

use crate::harness::{repo, write, BIN};
use crate::rules::{out_text, run};

use super::*;

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
    // Exactly the unit's capability set, whose need and sufficiency systemd.rs shows on the
    // real kernel.
    let mut added: Vec<String> = sc["capabilities"]["add"]
        .as_sequence()
        .expect("capabilities.add")
        .iter()
        .map(|c| format!("CAP_{}", s(c)))
        .collect();
    added.sort();
    let mut unit = super::systemd::unit_caps();
    unit.sort();
    assert_eq!(
        added, unit,
        "the DaemonSet and the systemd unit grant the same"
    );
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
    let expected: BTreeSet<String> = [
        "ec2:DescribeVolumes",
        "ec2:DescribeVolumeStatus",
        "ec2:DescribeVolumesModifications",
        "ec2:DescribeInstanceTypes",
        "cloudwatch:GetMetricData",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(actions, expected);

    // Cross-check with the cloud crate's source: the EC2 Query actions it signs, and the
    // CloudWatch SDK operations it calls.
    let mut called = BTreeSet::new();
    // An action is signed where its name is written: `Action=X` in a form, or the name given to
    // the paging Query call (`paged(creds, "X", ...)`).
    let query =
        regex::Regex::new(r#"Action=([A-Za-z]+)|paged\(\s*creds,\s*"([A-Za-z]+)""#).unwrap();
    let sdk = regex::Regex::new(
        r"\.(get_metric_data|get_metric_statistics|list_metrics|describe_alarms|put_metric_data)\(",
    )
    .unwrap();
    // Every source file of the crate, its submodules' included.
    let mut files = Vec::new();
    let mut dirs = vec![repo().join("crates/cloud/src")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    for p in files {
        if p.extension().is_some_and(|x| x == "rs") {
            let t = std::fs::read_to_string(&p).unwrap();
            for c in query.captures_iter(&t) {
                let name = c.get(1).or_else(|| c.get(2)).unwrap().as_str();
                called.insert(format!("ec2:{name}"));
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
    // The source walk must find the calls, or the cross-check says nothing.
    assert!(called.contains("ec2:DescribeVolumes"), "{called:?}");
    assert!(called.contains("cloudwatch:GetMetricData"), "{called:?}");
    for a in &called {
        assert!(
            actions.contains(a),
            "the cloud crate calls {a}, the policy lacks it"
        );
    }
}
