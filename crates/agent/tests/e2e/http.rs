//! The real binary on a real socket: exposition parsed by Debian's promtool, every metric
//! documented, TLS and basic auth, HTTP/1.1 only, bad config at start and on reload, graceful
//! shutdown.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::golden;
use crate::harness::{fixture, get, repo, write, Agent, BIN};

fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`, installed by `make test`)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Family names as a classic-text scrape declares them.
fn families(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(String::from)
        .collect()
}

#[test]
fn real_proc_scrape_passes_promtool_and_is_documented() {
    let agent = Agent::start(&[&format!(
        "--config.file={}",
        repo().join("config/stallwatch.example.toml").display()
    )]);
    let m = agent.wait_for(Duration::from_secs(10), "first snapshot", |m| {
        m.has_family("stallwatch_memory_dirty_bytes")
    });
    promtool_check(&m.text);
    for must in [
        "stallwatch_procs_blocked",
        "stallwatch_pressure_stall_seconds_total",
        "stallwatch_memory_dirty_peak_bytes",
        "stallwatch_vm_written_pages_total",
        "stallwatch_disk_written_bytes_total",
        "stallwatch_source_stuck",
        "stallwatch_build_info",
    ] {
        assert!(
            m.has_family(must),
            "{must} missing from a scrape of this machine:\n{}",
            m.text
        );
    }

    // Every family the agent exposes — here and over both fixtures — is in docs/metrics.md.
    let doc = std::fs::read_to_string(repo().join("docs/metrics.md")).unwrap();
    let mut names = families(&m.text);
    for fx in ["debian12-6.18", "v2-nopsi-5.4"] {
        let root = fixture(fx);
        let a = Agent::start(&[
            &format!("--path.procfs={}", root.join("proc").display()),
            &format!("--path.sysfs={}", root.join("sys").display()),
            "--config.file",
            &repo()
                .join("tests/golden/golden.toml")
                .display()
                .to_string(),
        ]);
        let fm = a.wait_for(Duration::from_secs(10), "fixture snapshot", |m| {
            m.has_family("stallwatch_memory_dirty_bytes")
        });
        promtool_check(&fm.text);
        names.extend(families(&fm.text));
    }
    names.sort();
    names.dedup();
    let missing: Vec<_> = names
        .iter()
        .filter(|n| !doc.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/metrics.md does not list: {missing:?}"
    );
    // ... each in a row that names the module reading it (a file that exists).
    let unread = golden::without_reader(&doc, &names);
    assert!(
        unread.is_empty(),
        "docs/metrics.md has no row with an existing reader module for: {unread:?}"
    );
}

#[test]
fn openmetrics_negotiated_by_accept() {
    let agent = Agent::start(&[]);
    agent.wait_for(Duration::from_secs(10), "first snapshot", |m| {
        m.has_family("stallwatch_load1")
    });
    let resp = reqwest::blocking::Client::new()
        .get(agent.url("/metrics"))
        .header(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .unwrap();
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let body = resp.text().unwrap();
    assert!(body.ends_with("# EOF\n"));
    assert!(body.contains("# UNIT stallwatch_memory_dirty_bytes bytes"));
}

/// Sends `request` on a new connection and returns everything the server answers until it
/// closes or goes quiet for a second.
fn raw_exchange(addr: &str, request: &[u8]) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[test]
fn plain_http_is_http1_only_and_varies_on_accept_and_encoding() {
    let agent = Agent::start(&[]);
    // HTTP/2 with prior knowledge: the connection preface, then an empty SETTINGS frame. An
    // h2 server answers with its own SETTINGS frame (type 0x4); we must not speak h2.
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let got = raw_exchange(&agent.addr, &preface);
    let h2_settings = got.len() >= 9 && got[3] == 4 && !got.starts_with(b"HTTP/");
    assert!(
        !h2_settings,
        "plain HTTP answered HTTP/2 prior knowledge: {:?}",
        &got[..got.len().min(32)]
    );
    // An h2c upgrade request is served as plain HTTP/1.1, not switched.
    let got = raw_exchange(
        &agent.addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    // The body depends on Accept (format) and Accept-Encoding (gzip): caches must know.
    let client = reqwest::blocking::Client::new();
    for gzip in [false, true] {
        let mut req = client.get(agent.url("/metrics"));
        if gzip {
            req = req.header("Accept-Encoding", "gzip");
        }
        let resp = req.send().unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_11);
        let vary: Vec<String> = resp
            .headers()
            .get_all("vary")
            .iter()
            .flat_map(|v| v.to_str().unwrap().split(','))
            .map(|v| v.trim().to_ascii_lowercase())
            .collect();
        assert!(
            vary.contains(&"accept".to_string()) && vary.contains(&"accept-encoding".to_string()),
            "gzip={gzip}: Vary {vary:?}"
        );
    }
}

#[test]
fn tls_negotiates_http1_even_when_the_client_prefers_h2() {
    let dir = tempfile::tempdir().unwrap();
    let ca_pem = tls_files(dir.path());
    let web = dir.path().join("web.yml");
    write(
        &web,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
    );
    let agent = Agent::start(&[&format!("--web.config.file={}", web.display())]);
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut conn =
        rustls::ClientConnection::new(Arc::new(cfg), "localhost".try_into().unwrap()).unwrap();
    let mut sock = std::net::TcpStream::connect(&agent.addr).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = tls.read_to_string(&mut answer);
    assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

fn tls_files(dir: &std::path::Path) -> String {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    write(&dir.join("server.crt"), &ck.cert.pem());
    write(&dir.join("server.key"), &ck.key_pair.serialize_pem());
    ck.cert.pem()
}

#[test]
fn tls_and_basic_auth_accept_and_reject() {
    let dir = tempfile::tempdir().unwrap();
    let ca_pem = tls_files(dir.path());
    let hash = bcrypt::hash("s3cret pass", 4).unwrap();
    let web = dir.path().join("web.yml");
    write(
        &web,
        &format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  alice: {hash}\n"),
    );
    let agent = Agent::start(&[&format!("--web.config.file={}", web.display())]);
    let addr: std::net::SocketAddr = agent.addr.parse().unwrap();
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .resolve("localhost", addr)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/metrics", addr.port());
    let ok = client
        .get(&url)
        .basic_auth("alice", Some("s3cret pass"))
        .send()
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.text().unwrap().contains("stallwatch_build_info"));
    let again = client
        .get(&url)
        .basic_auth("alice", Some("s3cret pass"))
        .send()
        .unwrap();
    assert_eq!(again.status(), 200, "cached credentials still accepted");

    let wrong = client
        .get(&url)
        .basic_auth("alice", Some("wrong"))
        .send()
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    assert_eq!(
        client
            .get(&url)
            .basic_auth("mallory", Some("s3cret pass"))
            .send()
            .unwrap()
            .status(),
        401
    );
    assert_eq!(client.get(&url).send().unwrap().status(), 401);
    // Plain HTTP to the TLS port is not served.
    let plain = reqwest::blocking::Client::new()
        .get(agent.url("/metrics"))
        .basic_auth("alice", Some("s3cret pass"))
        .send();
    assert!(
        plain.map(|r| !r.status().is_success()).unwrap_or(true),
        "plain HTTP must not get metrics"
    );
    // A client that does not trust the certificate is refused.
    let untrusting = reqwest::blocking::Client::builder()
        .resolve("localhost", addr)
        .build()
        .unwrap();
    assert!(untrusting.get(&url).send().is_err());
}

#[test]
fn bad_config_at_start_exits_2_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    write(&cfg, "[sampler]\ninterval = \"1s\"\nintervall = \"2s\"\n");
    for sub in [&[][..], &["check-config"][..]] {
        let out = Command::new(BIN)
            .args(sub)
            .arg(format!("--config.file={}", cfg.display()))
            .arg("--web.listen-address=127.0.0.1:0")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{sub:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{}:3: key `sampler.intervall`", cfg.display())),
            "{sub:?}: {err}"
        );
        assert!(err.contains("unknown field"), "{err}");
    }
    // A probe path on a pseudo-filesystem (/proc) is refused by the agent and check-config; one
    // that does not exist by check-config (the agent never touches probe paths while loading:
    // a missing directory shows as that probe's failures): exit 2 naming the path.
    for (bad, sub) in [
        ("/nonexistent/stallwatch-probe", &["check-config"][..]),
        ("/proc/sys", &[][..]),
        ("/proc/sys", &["check-config"][..]),
    ] {
        write(&cfg, &format!("\n[[probe]]\npath = \"{bad}\"\n"));
        let out = Command::new(BIN)
            .args(sub)
            .arg(format!("--config.file={}", cfg.display()))
            .arg("--web.listen-address=127.0.0.1:0")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{}:3: key `probe[0].path`", cfg.display())) && err.contains(bad),
            "{err}"
        );
    }
    // And a bad web config.
    let web = dir.path().join("web.yml");
    write(
        &web,
        "tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /nonexistent.key\n",
    );
    let out = Command::new(BIN)
        .arg(format!("--web.config.file={}", web.display()))
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonexistent.crt"));
    // The example config is valid.
    let out = Command::new(BIN)
        .arg(format!(
            "--config.file={}",
            repo().join("config/stallwatch.example.toml").display()
        ))
        .arg("check-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the binary with `args` and returns its exit code and stderr, or fails if it has not
/// ended within 20 s (it is killed then).
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("stallwatch {args:?} still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bcrypt_cost_31_fails_start_at_once_naming_user_and_file() {
    let dir = tempfile::tempdir().unwrap();
    // A cost-4 hash with its cost field set to 31 (2^31 rounds: years per login). Producing
    // a real one would take as long.
    let hash = bcrypt::hash("pw", 4).unwrap();
    let hash = format!("{}31{}", &hash[..4], &hash[6..]);
    let web = dir.path().join("web.yml");
    write(&web, &format!("basic_auth_users:\n  carol: {hash}\n"));
    let flag = format!("--web.config.file={}", web.display());
    for sub in [&[][..], &["check-config"][..]] {
        let mut args = vec![flag.as_str(), "--web.listen-address=127.0.0.1:0"];
        args.extend_from_slice(sub);
        let (code, err) = run_to_exit(&args);
        assert_eq!(code, Some(2), "{sub:?}: {err}");
        assert!(
            err.contains(&web.display().to_string())
                && err.contains("\"carol\"")
                && err.contains("bcrypt cost 31 is above the maximum 14"),
            "{sub:?}: {err}"
        );
    }
}

#[test]
fn reload_on_change_and_sighup_keeps_old_config_when_bad() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("stallwatch.toml");
    write(&cfg, "[writeback]\nburst_threshold = \"64MiB\"\n");
    let agent = Agent::start(&[&format!("--config.file={}", cfg.display())]);
    let threshold = "stallwatch_writeback_burst_threshold_bytes";
    agent.wait_for(Duration::from_secs(10), "initial config", |m| {
        m.get(threshold) == Some(64.0 * 1048576.0)
            && m.get("stallwatch_config_last_reload_successful") == Some(1.0)
    });

    // A good edit is picked up from the file change alone.
    write(&cfg, "[writeback]\nburst_threshold = \"32MiB\"\n");
    agent.wait_for(Duration::from_secs(10), "reload after a good edit", |m| {
        m.get(threshold) == Some(32.0 * 1048576.0)
    });

    // A bad edit: old config keeps running, the failure is visible and logged with line/key.
    write(
        &cfg,
        "[writeback]\nburst_threshold = \"32MiB\"\nburst_treshold = \"1MiB\"\n",
    );
    let m = agent.wait_for(Duration::from_secs(10), "failed reload", |m| {
        m.get("stallwatch_config_last_reload_successful") == Some(0.0)
    });
    assert_eq!(
        m.get(threshold),
        Some(32.0 * 1048576.0),
        "old config still in force"
    );
    assert!(
        m.has_family("stallwatch_memory_dirty_bytes"),
        "still sampling"
    );
    let log = agent.log();
    assert!(
        log.contains(&format!(
            "{}:3: key `writeback.burst_treshold`",
            cfg.display()
        )),
        "{log}"
    );

    // SIGHUP after fixing the file reloads it at once.
    write(&cfg, "[writeback]\nburst_threshold = \"8MiB\"\n");
    agent.signal(libc::SIGHUP);
    agent.wait_for(Duration::from_secs(10), "reload on SIGHUP", |m| {
        m.get(threshold) == Some(8.0 * 1048576.0)
            && m.get("stallwatch_config_last_reload_successful") == Some(1.0)
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while !agent.log().contains("trigger=SIGHUP") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(agent.log().contains("trigger=SIGHUP"), "{}", agent.log());
}

#[test]
fn sigterm_shuts_down_gracefully() {
    let mut agent = Agent::start(&[]);
    agent.wait_for(Duration::from_secs(10), "first snapshot", |m| {
        m.has_family("stallwatch_load1")
    });
    assert_eq!(get(&agent.url("/healthz")), "ok\n");
    agent.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = agent.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "did not exit after SIGTERM:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(agent.log().contains("signal=SIGTERM"), "{}", agent.log());
}

#[test]
fn golden_filter_keeps_help_and_drops_volatile_values() {
    let s = golden::stable("# HELP stallwatch_snapshot_age_seconds x\nstallwatch_snapshot_age_seconds{source=\"stat\"} 0.1\nstallwatch_load1 1\n");
    assert_eq!(
        s,
        "# HELP stallwatch_snapshot_age_seconds x\nstallwatch_load1 1\n"
    );
}
