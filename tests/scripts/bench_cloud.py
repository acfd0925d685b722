#!/usr/bin/env python3
"""What the cloud side costs the node: the release agent's idle CPU and RSS with [cloud] on
(against moto + IMDSv2 on loopback, tests/cloud/harness.py: one gp2 volume mapped to this
machine's disk, so the 1 s credit model and the fast 1-minute BurstBalance polling both run)
and with [cloud] off, alternating windows in one run. Also the AWS calls and metrics requested
per hour, which is what the node costs in API calls and dollars.

CPU from /proc/<pid>/task/*/schedstat (ns), medians over windows; compare the two rows, not
the absolute numbers (this machine is noisy).
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import cpu_seconds, rss_bytes  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target/release/stallwatch")
WINDOWS = int(os.environ.get("BENCH_WINDOWS", "6"))
WINDOW_S = float(os.environ.get("BENCH_WINDOW_SECONDS", "10"))


def post(url, obj):
    req = urllib.request.Request(url, data=json.dumps(obj).encode(),
                                 headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def value(text, series):
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def root_disk():
    dev = os.stat("/").st_dev
    name = os.path.basename(os.path.realpath(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"))
    if os.path.exists(f"/sys/class/block/{name}/partition"):
        name = os.path.basename(os.path.dirname(os.path.realpath(f"/sys/class/block/{name}")))
    return name


def start(cfg_text, port, tmp, tag):
    cfg = os.path.join(tmp, f"{tag}.toml")
    with open(cfg, "w") as f:
        f.write(cfg_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    p = subprocess.Popen([BIN, f"--config.file={cfg}", f"--web.listen-address=127.0.0.1:{port}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            scrape(port)
            return p
        except OSError:
            time.sleep(0.2)
    p.kill()
    raise SystemExit(f"agent {tag} did not start")


def main():
    if not os.path.exists(BIN):
        raise SystemExit("build first: cargo build --release -p stallwatch")
    harness = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests/cloud/harness.py")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    addr = json.loads(harness.stdout.readline())
    agents = []
    try:
        setup = post(addr["proxy"] + "/_harness/setup", {"volumes": [{"type": "gp2", "size": 100}]})
        vol = setup["volumes"][0]
        m0 = time.time() // 60 * 60
        post(addr["proxy"] + "/_harness/put",
             {"volume_id": vol, "points": [[m0 - 120, 25.0], [m0 - 60, 25.0]]})
        disk = root_disk()
        tmp = tempfile.mkdtemp(prefix="stallwatch-bench-cloud-")
        on = (f'[cloud]\nenabled = true\nimds_endpoint = "{addr["imds"]}"\n'
              f'ec2_endpoint = "{addr["proxy"]}"\ncloudwatch_endpoint = "{addr["proxy"]}"\n'
              f'[[cloud.volume]]\ndevice = "{disk}"\nvolume_id = "{vol}"\n')
        off = "[cloud]\nenabled = false\n"
        a_on = start(on, 19141, tmp, "on")
        a_off = start(off, 19142, tmp, "off")
        agents = [a_on, a_off]
        # Wait for the estimate (first DescribeVolumes + GetMetricData + anchor).
        series = f'stallwatch_ebs_burst_balance_estimate_percent{{volume_id="{vol}"}}'
        deadline = time.time() + 30
        while value(scrape(19141), series) is None:
            if time.time() > deadline:
                raise SystemExit("no estimate from the cloud-on agent")
            time.sleep(0.5)
        t0 = time.time()
        start_text = scrape(19141)
        cpu = {"on": [], "off": []}
        rss = {"on": [], "off": []}
        for _ in range(WINDOWS):
            c0 = {k: cpu_seconds(p.pid) for k, p in (("on", a_on), ("off", a_off))}
            time.sleep(WINDOW_S)
            for k, p in (("on", a_on), ("off", a_off)):
                cpu[k].append((cpu_seconds(p.pid) - c0[k]) / WINDOW_S * 100)
                rss[k].append(rss_bytes(p.pid) / 2**20)
        hours = (time.time() - t0) / 3600
        end_text = scrape(19141)

        def delta(name):
            return (value(end_text, name) or 0) - (value(start_text, name) or 0)

        calls = sum(
            delta(f'stallwatch_cloud_requests_total{{api="{api}",outcome="success"}}')
            for api in ("describe_volumes", "get_metric_data"))
        metrics = delta("stallwatch_cloud_metrics_requested_total")
        print(f"cloud side: {WINDOWS} windows of {WINDOW_S:.0f} s, volume {vol} mapped to {disk}")
        print(f"{'agent':<12} {'CPU % of a core (median)':>26} {'RSS MiB (median)':>18}")
        for k in ("on", "off"):
            print(f"{'cloud ' + k:<12} {statistics.median(cpu[k]):>26.3f} {statistics.median(rss[k]):>18.1f}")
        print(f"difference: {statistics.median(cpu['on']) - statistics.median(cpu['off']):+.3f} % of a core, "
              f"{statistics.median(rss['on']) - statistics.median(rss['off']):+.1f} MiB")
        print(f"AWS calls/hour at this cadence (balance 25 % < fast_poll_below, so 1-minute polls): "
              f"{calls / hours:.0f}; metrics requested/hour {metrics / hours:.0f} "
              f"(${metrics / hours * 24 * 30 * 0.01 / 1000:.3f} a month)")
    finally:
        for p in agents:
            p.terminate()
            p.wait()
        harness.stdin.close()
        harness.wait()


if __name__ == "__main__":
    main()
