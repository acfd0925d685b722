//! `stallwatch why` and `stallwatch incidents` against the real agent: idle, down, frozen,
//! behind TLS and basic auth (and the page behind the same guard).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::browser::Browser;
use super::RENDERED;
use crate::harness::{write, Agent, BIN};
use crate::hung::{run_bounded, Ran};

/// Far above the CLI's own 2 s timeout: a CLI that hangs never finishes at all.
const LIMIT: Duration = Duration::from_secs(30);

fn cli(args: &[&str], env: &[(&str, &str)]) -> Ran {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("STALLWATCH_AGENT_URL")
        .env_remove("STALLWATCH_AGENT_USER")
        .env_remove("STALLWATCH_AGENT_PASSWORD");
    for (k, v) in env {
        c.env(k, v);
    }
    run_bounded(&mut c, LIMIT)
}

fn url_flag(agent: &Agent) -> String {
    format!("--agent.url=http://{}", agent.addr)
}

#[test]
fn why_on_an_idle_node_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&[&super::idle_config(dir.path())]);
    let url = url_flag(&agent);
    // The agent's first verdict needs two host ticks.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let r = cli(&["why", &url], &[]);
        if !r.stdout.contains("No verdict yet") || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        text.code,
        Some(0),
        "not stalled exits 0:\n{}{}",
        text.stdout,
        text.stderr
    );
    assert!(
        text.stdout
            .starts_with("NOT STALLED. Not stalled: I/O pressure "),
        "{}",
        text.stdout
    );
    assert!(text.stderr.is_empty(), "{}", text.stderr);

    let j = cli(&["why", "--json", &url], &[]);
    let v: Value = serde_json::from_str(&j.stdout)
        .unwrap_or_else(|e| panic!("why --json prints the API's JSON ({e}):\n{}", j.stdout));
    eprintln!("why: {}why --json: {v}", text.stdout);
    let code = if v["stalled"] == json!(true) { 3 } else { 0 };
    assert_eq!(j.code, Some(code), "--json exits like the text view");
    for key in ["stalled", "io", "cause", "summary", "causes", "dstate"] {
        assert!(v.get(key).is_some(), "no {key:?} in {v}");
    }
}

#[test]
fn why_and_incidents_when_the_agent_is_down_or_frozen() {
    // Nobody listens: a clear message at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("--agent.url=http://127.0.0.1:{port}");
    for args in [vec!["why"], vec!["why", "--json"], vec!["incidents"]] {
        let r = cli(&[&args[..], &[url.as_str()]].concat(), &[]);
        eprintln!(
            "{args:?} with nobody listening: {:?} in {:?}: {}",
            r.code, r.took, r.stderr
        );
        assert_eq!(r.code, Some(1), "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(&format!(
                "the agent does not answer at http://127.0.0.1:{port}/api/v1/"
            )) && r.stderr.contains("is `stallwatch` running there?"),
            "{}",
            r.stderr
        );
        assert!(r.stdout.is_empty(), "{}", r.stdout);
    }

    // Listening but frozen (SIGSTOP): the connection is accepted by the kernel, no answer comes.
    let agent = Agent::start(&[]);
    agent.signal(libc::SIGSTOP);
    let r = cli(&["why", &url_flag(&agent), "--agent.timeout=1s"], &[]);
    agent.signal(libc::SIGCONT);
    eprintln!(
        "why with the agent frozen: {:?} in {:?}: {}",
        r.code, r.took, r.stderr
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "the agent at http://{}/api/v1/verdict did not answer within 1s",
            agent.addr
        )),
        "{}",
        r.stderr
    );
    // It gave up on its own timeout, not on the test's LIMIT.
    assert!(r.took < Duration::from_secs(10), "{:?}", r.took);
}

#[test]
fn incidents_list_json_and_unknown_id() {
    let agent = Agent::start(&[]);
    let url = url_flag(&agent);
    let list = cli(&["incidents", &url], &[]);
    assert_eq!(list.code, Some(0), "{}", list.stderr);
    assert!(
        list.stdout == "No incident recorded since the agent started.\n"
            || list.stdout.starts_with("ID "),
        "{}",
        list.stdout
    );
    let j = cli(&["incidents", "--json", &url], &[]);
    assert_eq!(j.code, Some(0), "{}", j.stderr);
    let v: Value = serde_json::from_str(&j.stdout).unwrap();
    assert!(v["incidents"].is_array(), "{v}");

    let none = cli(&["incidents", "19700101T000000Z", &url], &[]);
    assert_eq!(none.code, Some(1), "{}{}", none.stdout, none.stderr);
    assert!(
        none.stderr.contains("no incident 19700101T000000Z"),
        "{}",
        none.stderr
    );
    let bad = cli(&["incidents", "../metrics", &url], &[]);
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
    assert!(
        bad.stderr.contains("is not an incident id"),
        "{}",
        bad.stderr
    );
}

/// The page and the CLI behind the web config's TLS and basic auth, like `/metrics`.
#[test]
fn page_and_cli_behind_tls_and_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let ca = dir.path().join("server.crt");
    write(&ca, &ck.cert.pem());
    write(&dir.path().join("server.key"), &ck.key_pair.serialize_pem());
    let password = "page pass";
    let hash = bcrypt::hash(password, 4).unwrap();
    let web = dir.path().join("web.yml");
    write(
        &web,
        &format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  alice: {hash}\n"),
    );
    let agent = Agent::start(&[&format!("--web.config.file={}", web.display())]);
    let port = agent.addr.rsplit_once(':').unwrap().1.to_string();
    let https = format!("https://127.0.0.1:{port}");

    // The page is guarded like /metrics.
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", agent.addr.parse().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let page = format!("https://localhost:{port}/");
    let html = "text/html,application/xhtml+xml,*/*;q=0.8";
    let anon = client.get(&page).header("accept", html).send().unwrap();
    assert_eq!(anon.status(), 401, "the page needs the password");
    let ok = client
        .get(&page)
        .header("accept", html)
        .basic_auth("alice", Some(password))
        .send()
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.text().unwrap().contains("<title>stallwatch</title>"));

    // Chromium, logged in (the header a browser sends after the password prompt).
    let mut b = Browser::start();
    b.call(
        None,
        "Security.setIgnoreCertificateErrors",
        json!({"ignore": true}),
    );
    let auth = format!(
        "Basic {}",
        encode_base64(format!("alice:{password}").as_bytes())
    );
    let tab = b.open(&page, 1024, 768, false, json!({ "Authorization": auth }));
    tab.wait(
        &mut b,
        Duration::from_secs(30),
        "the page over TLS with basic auth to show a verdict",
        RENDERED,
    );

    // The CLI: https with the agent's CA, checked against the certificate's name.
    let tls = [
        "why",
        &format!("--agent.url={https}"),
        &format!("--agent.ca-file={}", ca.display()),
        "--agent.server-name=localhost",
    ]
    .map(String::from);
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    let pass = [("STALLWATCH_AGENT_PASSWORD", password)];
    let ok = cli(&[&tls[..], &["--agent.user=alice"]].concat(), &pass);
    assert!(
        matches!(ok.code, Some(0 | 3)),
        "why over TLS with the password: {:?}\n{}{}",
        ok.code,
        ok.stdout,
        ok.stderr
    );
    assert!(ok.stdout.contains("STALLED"), "{}", ok.stdout);

    let no_user = cli(&tls, &[]);
    assert_eq!(no_user.code, Some(1), "{}", no_user.stderr);
    assert!(
        no_user.stderr.contains("wants a user and password (401)"),
        "{}",
        no_user.stderr
    );
    let wrong = cli(
        &[&tls[..], &["--agent.user=alice"]].concat(),
        &[("STALLWATCH_AGENT_PASSWORD", "wrong")],
    );
    assert_eq!(wrong.code, Some(1), "{}", wrong.stderr);
    assert!(
        wrong
            .stderr
            .contains("refused the password of user \"alice\""),
        "{}",
        wrong.stderr
    );
    let no_password = cli(&[&tls[..], &["--agent.user=alice"]].concat(), &[]);
    assert_eq!(no_password.code, Some(2), "{}", no_password.stderr);
    assert!(
        no_password.stderr.contains("needs a password"),
        "{}",
        no_password.stderr
    );
    // The certificate is for "localhost": 127.0.0.1 without --agent.server-name is refused.
    let wrong_name = cli(&[&tls[..3], &["--agent.user=alice"]].concat(), &pass);
    assert_eq!(wrong_name.code, Some(1), "{}", wrong_name.stderr);
    assert!(
        wrong_name.stderr.contains("certificate"),
        "{}",
        wrong_name.stderr
    );
}

fn encode_base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() {
                char::from(A[(n >> (18 - 6 * i)) as usize & 63])
            } else {
                '='
            });
        }
    }
    out
}
