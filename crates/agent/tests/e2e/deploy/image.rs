//! The Dockerfile's offline `prebuilt` stage, built and run by a private dockerd.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::docker::Dockerd;
use crate::harness::{repo, require_root, Metrics, BIN};
use crate::rules::{out_text, run};

use super::*;

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
