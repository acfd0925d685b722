//! A flood of wrong basic-auth passwords against the real binary (issue 13 item 5): a real
//! scraper's first login still succeeds well inside Prometheus' 10 s scrape timeout, and the
//! agent does not grow a thread per waiting login.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{write, Agent, Metrics};

const FLOODERS: usize = 300;
const PASSWORD: &str = "correct horse battery staple";

/// The agent's thread count; `None` once it has exited.
fn proc_status_threads(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

/// utime + stime of the process, in seconds.
fn proc_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after_comm.split(' ').collect();
    // Fields 14 and 15 of stat(5); after the comm they are the 12th and 13th.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[test]
fn wrong_password_flood_does_not_starve_a_real_scrapers_first_login() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    // Cost 10, the toolkit's documented example.
    let hash = bcrypt::hash(PASSWORD, 10).unwrap();
    let cost = t.elapsed();
    let web = dir.path().join("web.yml");
    write(&web, &format!("basic_auth_users:\n  alice: {hash}\n"));
    let agent = Agent::start(&[&format!("--web.config.file={}", web.display())]);
    let pid = agent.child.id();
    let threads_before = proc_status_threads(pid).unwrap();
    let cpu_before = proc_cpu(pid);

    // 300 clients from 127.0.0.1, each sending wrong passwords (a new one every request, so
    // no cache helps) as fast as it gets answers.
    let stop = Arc::new(AtomicBool::new(false));
    let statuses: Arc<Mutex<std::collections::BTreeMap<String, u64>>> = Arc::default();
    let sent = Arc::new(AtomicU64::new(0));
    let flood_client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let url = agent.url("/metrics");
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|n| {
            let (stop, statuses, sent, client, url) = (
                Arc::clone(&stop),
                Arc::clone(&statuses),
                Arc::clone(&sent),
                flood_client.clone(),
                url.clone(),
            );
            thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let user = if n % 3 == 0 { "mallory" } else { "alice" };
                        let got = client
                            .get(&url)
                            .basic_auth(user, Some(format!("guess-{n}-{i}")))
                            .send()
                            .map(|r| r.status().as_u16().to_string())
                            .unwrap_or_else(|_| "error".into());
                        sent.fetch_add(1, Ordering::Relaxed);
                        *statuses.lock().unwrap().entry(got).or_default() += 1;
                    }
                })
                .unwrap()
        })
        .collect();
    // Watch the agent's thread count while the flood runs.
    let max_threads = Arc::new(AtomicU64::new(threads_before));
    let watcher = {
        let (stop, max_threads) = (Arc::clone(&stop), Arc::clone(&max_threads));
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(n) = proc_status_threads(pid) {
                    max_threads.fetch_max(n, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let flood_start = Instant::now();
    thread::sleep(Duration::from_secs(2));

    // The real scraper, on another address, logging in for the first time during the flood.
    let scraper = reqwest::blocking::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let scrape = || {
        let t = Instant::now();
        let r = scraper
            .get(agent.url("/metrics"))
            .basic_auth("alice", Some(PASSWORD))
            .send();
        (t.elapsed(), r)
    };
    let (first, resp) = scrape();
    let resp = resp.unwrap_or_else(|e| panic!("first login during the flood failed: {e}"));
    assert_eq!(resp.status(), 200, "first login during the flood");
    let mut later = Vec::new();
    for _ in 0..5 {
        let (took, r) = scrape();
        assert_eq!(r.unwrap().status(), 200);
        later.push(took);
        thread::sleep(Duration::from_millis(200));
    }
    let wall = flood_start.elapsed();
    let cpu = proc_cpu(pid) - cpu_before;
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        let _ = f.join();
    }
    let _ = watcher.join();
    let m = Metrics::parse(
        &scraper
            .get(agent.url("/metrics"))
            .basic_auth("alice", Some(PASSWORD))
            .send()
            .unwrap()
            .text()
            .unwrap(),
    );
    let max_threads = max_threads.load(Ordering::Relaxed);
    eprintln!(
        "bcrypt cost 10 takes {cost:?} here; {} flood requests {:?}; agent threads {threads_before} → max {max_threads}; \
         agent CPU {cpu:.1} s over {wall:.1?}; real scraper: first login {first:?}, then {later:?}",
        sent.load(Ordering::Relaxed),
        statuses.lock().unwrap(),
    );
    let get = |s: &str| {
        m.get(s)
            .unwrap_or_else(|| panic!("{s} missing:\n{}", m.text))
    };
    eprintln!(
        "agent: {} bcrypt runs, rejected busy {} invalid {}, queue limit {}, connections evicted {}",
        get("stallwatch_http_auth_bcrypt_verifications_total"),
        get("stallwatch_http_auth_rejected_total{reason=\"busy\"}"),
        get("stallwatch_http_auth_rejected_total{reason=\"invalid\"}"),
        get("stallwatch_http_auth_queue_limit"),
        get("stallwatch_http_connections_closed_total{reason=\"evicted\"}"),
    );
    // Waiting logins hold no thread: the old design grew one blocking thread per login.
    assert!(
        max_threads <= threads_before + 4,
        "agent grew from {threads_before} to {max_threads} threads under the flood"
    );
    assert!(get("stallwatch_http_auth_rejected_total{reason=\"busy\"}") > 0.0);
    assert!(get("stallwatch_http_auth_rejected_total{reason=\"invalid\"}") > 0.0);
}
