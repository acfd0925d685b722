#!/usr/bin/env python3
"""Benchmark stallwatch against Debian's prometheus-node-exporter, in one run on this machine.

For each agent (started here on 127.0.0.1, stopped by PID at the end):
  * idle CPU: share of one core used while nobody scrapes, measured over N windows
    (run time of all threads from /proc/<pid>/task/*/schedstat); stallwatch samples every 1 s;
  * RSS: VmRSS from /proc/<pid>/status, sampled once per window;
  * /metrics latency: N sequential scrapes over one keep-alive connection, p50/p99;
  * CPU per scrape: CPU time consumed during the scrape loop / number of scrapes;
  * stallwatch only: the verdict's CPU per host tick (its own counters,
    stallwatch_verdict_cpu_seconds_total / stallwatch_verdict_evaluations_total) and the share
    of a core that is at its tick rate; /api/v1/verdict, /api/v1/timeline and the node page
    (/ with Accept: text/html) latency p50/p99 over the same keep-alive connection.
Medians over windows and runs; this machine is noisy, compare the ratios, not the numbers.

BENCH_BASELINE=/path/to/an/older/stallwatch adds that binary as a third agent in the same run
(before/after a change, side by side with node_exporter); BENCH_BASELINE_CONFIG gives it the
example config of its own version when the config keys changed.
"""
import http.client
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WINDOWS = int(os.environ.get("BENCH_WINDOWS", "20"))
WINDOW_S = float(os.environ.get("BENCH_WINDOW_SECONDS", "3"))
SCRAPES = int(os.environ.get("BENCH_SCRAPES", "500"))


def cpu_seconds(pid):
    """CPU time of all threads, from /proc/<pid>/task/*/schedstat (nanoseconds; utime/stime
    tick at 10 ms, too coarse for an agent that uses a fraction of a millisecond a second)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # thread exited between listdir and open
    return total / 1e9


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/metrics")
            r = c.getresponse()
            r.read()
            if r.status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"nothing answered on port {port}")


def pct(values, p):
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


def measure(name, argv, port):
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        time.sleep(3)  # warm up: first ticks, lazy allocations
        idle, rss = [], []
        for _ in range(WINDOWS):
            c0, t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(WINDOW_S)
            c1, t1 = cpu_seconds(proc.pid), time.monotonic()
            idle.append(100.0 * (c1 - c0) / (t1 - t0))
            rss.append(rss_bytes(proc.pid))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        lat, size = [], 0
        c0 = cpu_seconds(proc.pid)
        for _ in range(SCRAPES):
            t = time.perf_counter()
            conn.request("GET", "/metrics", headers={"Accept": "text/plain;version=0.0.4"})
            r = conn.getresponse()
            body = r.read()
            lat.append((time.perf_counter() - t) * 1000.0)
            size = len(body)
        c1 = cpu_seconds(proc.pid)
        per_source = {}
        if name.startswith("stallwatch"):
            # CPU per read of each source, from the agent's own RUSAGE_THREAD accounting.
            cpu, reads = {}, {}
            for line in body.decode(errors="replace").splitlines():
                for metric, into in (("stallwatch_source_cpu_seconds_total{", cpu), ("stallwatch_source_reads_total{", reads)):
                    if line.startswith(metric):
                        src = line.split('source="', 1)[1].split('"', 1)[0]
                        into[src] = float(line.rsplit(" ", 1)[1])
            per_source = {k: 1000.0 * cpu[k] / reads[k] for k in cpu if reads.get(k)}
            start = next((float(l.rsplit(" ", 1)[1]) for l in body.decode(errors="replace").splitlines()
                          if l.startswith("stallwatch_start_time_seconds ")), None)
            if start:
                up = time.time() - start
                host = sum(v for k, v in cpu.items() if k not in ("threads", "containers"))
                per_source["__host_ms_per_s"] = 1000.0 * host / up
        series = sum(1 for l in body.decode(errors="replace").splitlines() if l and not l.startswith("#"))
        api = {}
        if name.startswith("stallwatch"):
            text = body.decode(errors="replace").splitlines()
            val = lambda m: next((float(l.rsplit(" ", 1)[1]) for l in text if l.startswith(m + " ")), None)
            evals, vcpu = val("stallwatch_verdict_evaluations_total"), val("stallwatch_verdict_cpu_seconds_total")
            if evals and vcpu is not None:
                api["verdict_us_per_tick"] = 1e6 * vcpu / evals
                start = val("stallwatch_start_time_seconds")
                if start:
                    api["verdict_core_pct"] = 100.0 * vcpu / (time.time() - start)
            for path, accept in (("/api/v1/verdict", "application/json"),
                                 ("/api/v1/timeline?seconds=900", "application/json"),
                                 ("/", "text/html")):
                lat_api, ok = [], True
                for _ in range(max(SCRAPES // 5, 20)):
                    t = time.perf_counter()
                    conn.request("GET", path, headers={"Accept": accept})
                    r = conn.getresponse()
                    r.read()
                    ok = ok and r.status == 200
                    lat_api.append((time.perf_counter() - t) * 1000.0)
                if ok:
                    api[path] = (pct(lat_api, 50), pct(lat_api, 99))
        return {
            "name": name,
            "idle_cpu_pct": statistics.median(idle),
            "rss_mib": statistics.median(rss) / 1048576.0,
            "p50_ms": pct(lat, 50),
            "p99_ms": pct(lat, 99),
            "cpu_ms_per_scrape": 1000.0 * (c1 - c0) / SCRAPES,
            "bytes": size,
            "series": series,
            "per_source_ms": per_source,
            "api": api,
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main():
    results = []
    sw = os.path.join(ROOT, "target/release/stallwatch")
    results.append(measure("stallwatch", [sw, "--config.file", os.path.join(ROOT, "config/stallwatch.example.toml"),
                                          "--web.listen-address=127.0.0.1:19139", "--log.level=warn"], 19139))
    base = os.environ.get("BENCH_BASELINE")
    if base:
        base_cfg = os.environ.get("BENCH_BASELINE_CONFIG", os.path.join(ROOT, "config/stallwatch.example.toml"))
        results.append(measure("stallwatch-base", [base, "--config.file", base_cfg,
                                                   "--web.listen-address=127.0.0.1:19140", "--log.level=warn"], 19140))
    ne = shutil.which("prometheus-node-exporter")
    if ne:
        results.append(measure("node_exporter", [ne, "--web.listen-address=127.0.0.1:19100", "--no-collector.systemd"], 19100))
    else:
        print("prometheus-node-exporter not installed: no peer column", file=sys.stderr)
    print(f"\n/metrics and idle cost, medians of {WINDOWS} windows of {WINDOW_S:g} s; {SCRAPES} sequential scrapes")
    hdr = f"{'agent':<14}{'idle CPU %':>11}{'RSS MiB':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/scrape':>15}{'series':>8}{'bytes':>9}"
    print(hdr)
    for r in results:
        print(f"{r['name']:<14}{r['idle_cpu_pct']:>11.3f}{r['rss_mib']:>9.1f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
              f"{r['cpu_ms_per_scrape']:>15.3f}{r['series']:>8}{r['bytes']:>9}")
    for r in results:
        if r["per_source_ms"]:
            print(f"\n{r['name']}: CPU ms per read, by source (mean since start, RUSAGE_THREAD)")
            for src, ms in sorted(r["per_source_ms"].items()):
                if not src.startswith("__"):
                    print(f"  {src:<16}{ms:>8.4f}")
            if "__host_ms_per_s" in r["per_source_ms"]:
                print(f"  host sampler CPU per second of uptime: {r['per_source_ms']['__host_ms_per_s']:.4f} ms "
                      "(all fast sources every 1 s, bdi every 30 s)")
    for r in results:
        a = r.get("api") or {}
        if a:
            print(f"\n{r['name']}: the verdict and its API")
            if "verdict_us_per_tick" in a:
                print(f"  verdict + recorder CPU per host tick: {a['verdict_us_per_tick']:.1f} us "
                      f"({a.get('verdict_core_pct', 0.0):.4f} % of a core since start); ring memory 64,800 bytes")
            for path in ("/api/v1/verdict", "/api/v1/timeline?seconds=900", "/"):
                if path in a:
                    print(f"  {path:<30} p50 {a[path][0]:.2f} ms, p99 {a[path][1]:.2f} ms")
    peer = next((r for r in results if r["name"] == "node_exporter"), None)
    for a in results:
        for b in [peer, next((r for r in results if r["name"] == "stallwatch-base"), None)]:
            if b is None or a is b or not a["name"].startswith("stallwatch") or a["name"] == "stallwatch-base" and b["name"] == "stallwatch-base":
                continue
            # node_exporter does nothing between scrapes: an idle-CPU ratio against ~0 means nothing.
            idle = (f"idle CPU {a['idle_cpu_pct'] / b['idle_cpu_pct']:.2f}, " if b['idle_cpu_pct'] > 0.01 else "")
            print(f"ratios {a['name']}/{b['name']}: {idle}"
                  f"p50 {a['p50_ms'] / b['p50_ms']:.2f}, p99 {a['p99_ms'] / b['p99_ms']:.2f}, "
                  f"CPU/scrape {a['cpu_ms_per_scrape'] / max(b['cpu_ms_per_scrape'], 1e-9):.2f}, RSS {a['rss_mib'] / b['rss_mib']:.2f}")


if __name__ == "__main__":
    main()
