//! AWS on loopback for the cloud tests: tests/cloud/harness.py (moto behind a CBOR proxy, and an
//! IMDSv2 server), and the agent started as on a node with an instance role.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::harness::Agent;

/// The Python harness: moto + CBOR proxy + IMDSv2, killed on drop.
pub struct Aws {
    child: Child,
    pub proxy: String,
    pub imds: String,
    /// Where the agents of this test keep the credit model's state (restarts find it; tests
    /// running at the same time never share one).
    pub state: tempfile::TempDir,
}

impl Aws {
    pub fn start() -> Aws {
        let script = crate::harness::repo().join("tests/cloud/harness.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tests/cloud/harness.py (make test installs moto and cbor2)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("harness did not start ({e}): {line:?}"));
        Aws {
            proxy: v["proxy"].as_str().unwrap().to_string(),
            imds: v["imds"].as_str().unwrap().to_string(),
            child,
            state: tempfile::Builder::new()
                .prefix("stallwatch-cloud-state-")
                .tempdir()
                .expect("state dir"),
        }
    }

    pub fn call(&self, what: &str, body: serde_json::Value) -> serde_json::Value {
        let r = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap()
            .post(format!("{}/_harness/{what}", self.proxy))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        let status = r.status();
        let text = r.text().unwrap();
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("harness {what}: {status} {e}: {text}"));
        assert!(status.is_success(), "harness {what}: {status} {v}");
        v
    }

    /// Every request the proxy saw: `{api, op, queries, status, authorization?}`.
    pub fn calls(&self) -> Vec<serde_json::Value> {
        let t = crate::harness::get(&format!("{}/_harness/calls", self.proxy));
        serde_json::from_str::<serde_json::Value>(&t)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    pub fn metric_calls(&self) -> Vec<serde_json::Value> {
        self.calls()
            .into_iter()
            .filter(|c| c["op"] == "GetMetricData")
            .collect()
    }

    /// The agent config that points every AWS endpoint at this harness, and the model's state
    /// file into [`Aws::state`].
    pub fn config(&self, extra: &str) -> String {
        format!(
            "[cloud]\nenabled = true\nimds_endpoint = \"{imds}\"\nec2_endpoint = \"{p}\"\ncloudwatch_endpoint = \"{p}\"\nstate_file = \"{state}\"\n{extra}\n",
            imds = self.imds,
            p = self.proxy,
            state = self.state.path().join("cloud-model.json").display(),
        )
    }

    /// The volume ids of a `setup` answer.
    pub fn volumes(setup: &serde_json::Value) -> Vec<String> {
        setup["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .map(|v| v.as_str().expect("an id").to_string())
            .collect()
    }
}

impl Drop for Aws {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Starts the agent with no AWS credentials in its environment: the default chain must find
/// the harness IMDS's instance-role credentials, as on a real node.
pub fn start_agent(cfg_path: &std::path::Path) -> Agent {
    start_agent_with(cfg_path, &[])
}

/// [`start_agent`] with more flags (e.g. `--path.procfs` of a fixture root).
pub fn start_agent_with(cfg_path: &std::path::Path, extra: &[&str]) -> Agent {
    start_agent_env(cfg_path, extra, &[])
}

/// [`start_agent_with`] with environment variables set after the AWS ones were removed.
pub fn start_agent_env(cfg_path: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Agent {
    let mut args = vec![format!("--config.file={}", cfg_path.display())];
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::start_with(&args, |c| {
        for k in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        ] {
            c.env_remove(k);
        }
        // No profile files of the machine's user either.
        c.env("AWS_CONFIG_FILE", "/nonexistent/stallwatch-test-config");
        c.env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/stallwatch-test-credentials",
        );
        for (k, v) in env {
            c.env(k, v);
        }
    })
}
