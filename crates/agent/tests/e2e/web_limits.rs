//! The web layer under idle, slow and stuck clients, against the real binary on a real socket:
//! file descriptors are never used up (issue 13 item 2), each connection phase has its own
//! timeout, and SIGTERM ends the process within the README's 5 s (item 6).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{require_root, write, Agent, Metrics};

/// Raises this test process's own open-file limit so it can hold the sockets it opens.
fn raise_own_nofile(need: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on our own process with structs we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    assert!(
        lim.rlim_max >= need,
        "the test needs {need} file descriptors, hard limit is {}",
        lim.rlim_max
    );
}

/// Starts the agent with `RLIMIT_NOFILE` soft/hard as given (systemd's default soft limit is
/// 1,024; here a smaller soft limit shows that the agent raises it).
fn agent_with_nofile(soft: u64, hard: u64, args: &[&str]) -> Agent {
    Agent::start_with(args, move |cmd| {
        // SAFETY: setrlimit is async-signal-safe; it runs in the child between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
}

fn addr(agent: &Agent) -> SocketAddr {
    agent.addr.parse().unwrap()
}

/// A connection that never sends a byte.
fn idle(a: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&a, Duration::from_secs(10)).unwrap()
}

/// Slowloris: starts a request header and sends one more byte every `every`, never ending the
/// header. Stops when `stop` is set or the server closes the connection; returns when it
/// noticed the close (`None`: still open at stop).
fn slowloris(a: SocketAddr, every: Duration, stop: Arc<AtomicBool>) -> Option<Instant> {
    let mut s = TcpStream::connect_timeout(&a, Duration::from_secs(10)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .ok()?;
    while !stop.load(Ordering::Relaxed) {
        thread::sleep(every);
        if s.write_all(b"a").is_err() {
            return Some(Instant::now());
        }
        // A closed connection also shows up as EOF on a non-blocking peek.
        s.set_nonblocking(true).ok()?;
        let mut b = [0u8; 1];
        let closed = matches!(s.peek(&mut b), Ok(0));
        s.set_nonblocking(false).ok()?;
        if closed {
            return Some(Instant::now());
        }
    }
    None
}

/// Five [`slowloris`] senders on their own threads, and the flag that stops them.
fn slowloris_senders(
    a: SocketAddr,
    every: Duration,
) -> (Arc<AtomicBool>, Vec<thread::JoinHandle<Option<Instant>>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let senders = (0..5)
        .map(|_| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || slowloris(a, every, stop))
        })
        .collect();
    (stop, senders)
}

/// A client that asks for many responses and reads none, through a tiny receive buffer: the
/// agent's writes block (the "stuck reader").
fn stuck_reader(a: SocketAddr) -> TcpStream {
    // SAFETY: a fresh socket fd, configured and then owned by the TcpStream.
    let s = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let small: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&small as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let SocketAddr::V4(v4) = a else {
            panic!("IPv4 only")
        };
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let r = libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    };
    let mut w = &s;
    let req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(300);
    w.write_all(&req).unwrap();
    s
}

/// One scrape on a new connection, with Prometheus' default 10 s timeout.
fn timed_scrape(agent: &Agent) -> Result<(Duration, String), String> {
    let t = Instant::now();
    let resp = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
        .get(agent.url("/metrics"))
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.text())
        .map_err(|e| e.to_string())?;
    Ok((t.elapsed(), resp))
}

fn sum_family(m: &Metrics, name: &str) -> f64 {
    m.series
        .iter()
        .filter(|(k, _)| k == name || k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn idle_sockets_and_slowloris_do_not_starve_scrapes_or_proc_reads() {
    const IDLE: usize = 1_100;
    raise_own_nofile(IDLE as u64 + 200);
    // Soft 256, hard 1,024: the agent must raise its soft limit, and 1,100 idle sockets are
    // more than the whole hard limit.
    let agent = agent_with_nofile(256, 1024, &[]);
    let before = agent.wait_for(Duration::from_secs(20), "first snapshot", |m| {
        m.has_family("stallwatch_memory_dirty_bytes") && m.has_family("stallwatch_threads")
    });
    let errors_before = sum_family(&before, "stallwatch_source_errors_total");

    let a = addr(&agent);
    let (stop, loris) = slowloris_senders(a, Duration::from_millis(300));
    let t = Instant::now();
    // A connect only fails if the agent stopped accepting (its backlog is full): then the
    // scrapes below show what that means.
    let mut sockets = Vec::with_capacity(IDLE);
    while sockets.len() < IDLE {
        match TcpStream::connect_timeout(&a, Duration::from_secs(3)) {
            Ok(s) => sockets.push(s),
            Err(e) => {
                eprintln!("connect #{} failed: {e}", sockets.len() + 1);
                break;
            }
        }
    }
    eprintln!("opened {} idle sockets in {:?}", sockets.len(), t.elapsed());

    // Real scrapes while all of that is open: each on a new connection.
    let mut worst = Duration::ZERO;
    let mut last = String::new();
    for i in 0..5 {
        let (took, body) = timed_scrape(&agent)
            .unwrap_or_else(|e| panic!("scrape {i} failed: {e}\n{}", agent.log()));
        worst = worst.max(took);
        last = body;
        thread::sleep(Duration::from_millis(300));
    }
    eprintln!("scrapes with {IDLE} idle sockets and 5 slowloris senders: worst {worst:?}");
    assert_eq!(sockets.len(), IDLE, "the agent kept accepting");
    let m = Metrics::parse(&last);
    assert_eq!(
        m.get("stallwatch_process_max_fds"),
        Some(1024.0),
        "soft limit raised to the hard limit"
    );
    let limit = m.get("stallwatch_http_connections_limit").unwrap();
    assert!(
        limit <= 1024.0 - 128.0,
        "cap {limit} leaves fds for readers"
    );
    assert!(
        m.get("stallwatch_http_connections").unwrap() <= limit,
        "{}",
        m.text
    );
    assert!(
        m.get("stallwatch_http_connections_closed_total{reason=\"evicted\"}")
            .unwrap()
            >= (IDLE as f64 - limit),
        "old idle sockets made room:\n{}",
        m.text
    );
    // The readers kept working: fresh snapshots, no new read errors (EMFILE would count).
    // "Who is in D" comes from the walk, or from the eBPF source where it runs (the walk is
    // then rare); the host sampler reads /proc every second either way.
    let fresh = |m: &Metrics, source: &str| {
        m.get(&format!(
            "stallwatch_snapshot_age_seconds{{source=\"{source}\"}}"
        ))
        .is_some_and(|a| a < 5.0)
    };
    let after = agent.wait_for(
        Duration::from_secs(10),
        "fresh host and D-state readings",
        |m| fresh(m, "stat") && (fresh(m, "threads") || fresh(m, "bpf")),
    );
    assert_eq!(
        sum_family(&after, "stallwatch_source_errors_total"),
        errors_before,
        "sources failed while the sockets were open:\n{}",
        after.text
    );
    assert_eq!(after.get("stallwatch_http_accept_errors_total"), Some(0.0));
    stop.store(true, Ordering::Relaxed);
    loris.into_iter().for_each(|l| drop(l.join()));
    drop(sockets);
}

#[test]
fn each_connection_phase_has_its_own_timeout() {
    let agent = Agent::start(&["--web.read-header-timeout=1s", "--web.idle-timeout=3s"]);
    let a = addr(&agent);
    let opened = Instant::now();

    // Never sends a byte: closed after the header timeout.
    let mut silent = idle(a);
    // Slowloris: closed after the header timeout too, bytes or not.
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let loris = thread::spawn(move || slowloris(a, Duration::from_millis(100), stop2));
    // A keep-alive client: one request, then quiet. The header timeout does not apply to it.
    let mut keep = idle(a);
    keep.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = keep.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 "), "{:?}", &buf[..n]);
    let answered = Instant::now();

    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(
        silent.read(&mut buf).unwrap_or(0),
        0,
        "silent socket closed"
    );
    let silent_closed = opened.elapsed();
    let loris_closed = loris.join().unwrap().map(|t| t - opened);
    stop.store(true, Ordering::Relaxed);
    eprintln!("closed after: silent {silent_closed:?}, slowloris {loris_closed:?}");
    assert!(
        silent_closed >= Duration::from_millis(900),
        "{silent_closed:?}"
    );
    assert!(loris_closed.is_some(), "slowloris connection was closed");

    // The keep-alive connection outlives the header timeout (1 s) and goes at the idle one.
    thread::sleep(
        (answered + Duration::from_millis(1500)).saturating_duration_since(Instant::now()),
    );
    keep.set_nonblocking(true).unwrap();
    assert!(
        matches!(keep.peek(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "keep-alive connection still open after {:?}",
        answered.elapsed()
    );
    keep.set_nonblocking(false).unwrap();
    keep.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(keep.read(&mut buf).unwrap_or(0), 0);
    let idle_closed = answered.elapsed();
    eprintln!("keep-alive closed after {idle_closed:?}");
    assert!(
        idle_closed >= Duration::from_millis(2900),
        "{idle_closed:?}"
    );

    let m = Metrics::parse(&agent.scrape());
    let closed = |r: &str| {
        m.get(&format!(
            "stallwatch_http_connections_closed_total{{reason=\"{r}\"}}"
        ))
        .unwrap()
    };
    assert!(closed("header_timeout") >= 2.0, "{}", m.text);
    assert!(closed("idle_timeout") >= 1.0, "{}", m.text);
}

/// Sends SIGTERM and returns how long the agent took to exit; fails unless it exited
/// successfully within the README's 5 s.
fn sigterm_and_wait(agent: &mut Agent) -> Duration {
    let t = Instant::now();
    agent.signal(libc::SIGTERM);
    let status = loop {
        if let Some(s) = agent.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no exit after SIGTERM:\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(20));
    };
    let took = t.elapsed();
    assert!(status.success(), "{status:?}\n{}", agent.log());
    assert!(
        took < Duration::from_secs(5),
        "the README promises an exit within 5 s of SIGTERM; took {took:?}\n{}",
        agent.log()
    );
    took
}

#[test]
fn sigterm_ends_the_process_within_5s_despite_idle_slow_and_stuck_clients() {
    raise_own_nofile(600);
    let mut agent = Agent::start(&[]);
    agent.wait_for(Duration::from_secs(20), "first snapshot", |m| {
        m.has_family("stallwatch_load1")
    });
    let a = addr(&agent);
    let idle: Vec<TcpStream> = (0..200).map(|_| idle(a)).collect();
    let (stop, loris) = slowloris_senders(a, Duration::from_millis(200));
    let stuck: Vec<TcpStream> = (0..5).map(|_| stuck_reader(a)).collect();
    // Let the stuck readers' responses fill every buffer on the way.
    thread::sleep(Duration::from_secs(2));

    let took = sigterm_and_wait(&mut agent);
    eprintln!("SIGTERM to exit with 200 idle, 5 slowloris, 5 stuck readers: {took:?}");
    stop.store(true, Ordering::Relaxed);
    loris.into_iter().for_each(|l| drop(l.join()));
    drop((idle, stuck));
}

/// A v2 cgroup directory tree of our own under `/sys/fs/cgroup/unified`, removed on drop
/// (deepest first; the cgroups hold no process).
struct CgroupTree(Vec<std::path::PathBuf>);

impl Drop for CgroupTree {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[test]
fn sigterm_ends_the_process_within_5s_with_a_stuck_reader_and_stuck_clients() {
    if !require_root("sigterm_ends_the_process_within_5s_with_a_stuck_reader_and_stuck_clients") {
        return;
    }
    // A docker-shaped container whose name file is a FIFO nobody writes: the container pass
    // blocks in open(2) like a read of a file on a hung disk, and stays there.
    let root = std::path::PathBuf::from(format!(
        "/sys/fs/cgroup/unified/stallwatch-web-stop-{}",
        std::process::id()
    ));
    let id = format!("{:0>64}", format!("{:x}", std::process::id()));
    let leaf = root.join("docker").join(&id);
    let tree = CgroupTree(vec![root.clone(), root.join("docker"), leaf.clone()]);
    for d in &tree.0 {
        std::fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
    }
    let dir = tempfile::tempdir().unwrap();
    let names = dir.path().join("docker");
    std::fs::create_dir_all(names.join("containers").join(&id)).unwrap();
    let fifo = names.join("containers").join(&id).join("config.v2.json");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let cfg = dir.path().join("stallwatch.toml");
    write(
        &cfg,
        &format!("[containers]\ndocker_root = \"{}\"\n", names.display()),
    );
    let mut agent = Agent::start(&[
        &format!("--config.file={}", cfg.display()),
        &format!("--path.cgroupfs={}", root.display()),
    ]);
    agent.wait_for(Duration::from_secs(30), "the container pass stuck", |m| {
        m.get("stallwatch_source_stuck{source=\"containers\"}") == Some(1.0)
    });
    let a = addr(&agent);
    let stuck: Vec<TcpStream> = (0..5).map(|_| stuck_reader(a)).collect();
    thread::sleep(Duration::from_secs(1));

    let took = sigterm_and_wait(&mut agent);
    eprintln!("SIGTERM to exit with the container reader stuck and 5 stuck clients: {took:?}");
    drop(stuck);
    drop(tree);
}
