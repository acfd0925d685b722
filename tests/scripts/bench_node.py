#!/usr/bin/env python3
"""The whole agent beside Debian's node_exporter, both running in the same run (issue 16, `make bench`).

The node: BENCH_NODE_THREADS (10,000) sleeping python threads in BENCH_PROCS (200) processes (bench_threads.py's
workload) and BENCH_CONTAINERS (200) real containers running busybox `sleep 100000`, of a PRIVATE dockerd set up
as crates/agent/tests/e2e/docker.rs does (own socket, --data-root/--exec-root in a tempdir, its own containerd,
--bridge=none --iptables=false --ip-forward=false --ip-masq=false, cgroupfs driver, an image `docker import`ed from
a tar of /bin/busybox: no registry), `--network none`, BENCH_DOCKER_PARALLEL (8) `docker run`s at a time. Without
docker.io or busybox-static the containers are skipped and the report says so.

The agents, at once, on 127.0.0.1:19144 and :19102 (apart from the other benches): stallwatch with its default
config but for `containers.docker_root` = the private daemon's data root (what /var/lib/docker is on a real host:
names resolve and are cached as there; the eBPF source is on by default as root: stallwatch_bpf_active is
printed), and prometheus-node-exporter with its default collectors plus --collector.processes (and
--no-collector.systemd, needed where systemd is not PID 1; DESIGN.md). Both are scraped every 15 s as Prometheus
would (text 0.0.4, no gzip) from their start. After BENCH_NODE_WARMUP s (70: start-up is not steady state; see
bench_bpf.py) a window of BENCH_NODE_WINDOW s (180) opens right after a scrape and closes right after a scrape,
so it holds one scrape per 15 s. For each agent: whole-process CPU as % of one core over the window (sum of
/proc/<pid>/task/*/schedstat), VmRSS at the end and its max over the window (sampled every second), VmHWM,
RssAnon and RssFile (the binary's file pages are part of RSS), series and bytes of the last scrape; for
stallwatch also each source's CPU (stallwatch_source_cpu_seconds_total deltas), the containers it saw
(stallwatch_containers) and whether it suspected a stall (then the walk runs every second: not the no-stall case).

A third agent, stallwatch-walk, is the same stallwatch with `[bpf] enabled = false` (on :19145): what the thread
walk alone costs on the same node. Then (unless BENCH_NODE_STALL_WINDOW=0) the same three agents are measured
again during a stall: 16 writer threads held in D by a 2-IOPS blkio throttle (bench_threads.py's rig), after
BENCH_NODE_STALL_WARMUP (30) s, for BENCH_NODE_STALL_WINDOW (120) s; issue 16's target there is 0.5 % of a core.

Nothing is asserted (no timed assertions). Needs root. Everything started here is stopped by PID; containers,
dockerd, its containerd and shims, cgroups, mounts and the tempdir are removed on exit, errors and Ctrl-C; what a
SIGKILLed run left is removed by the next run. Every loop has a deadline.
Environment: BENCH_STALLWATCH (binary), BENCH_NODE_THREADS, BENCH_CONTAINERS, BENCH_NODE_WINDOW, BENCH_NODE_WARMUP,
BENCH_NODE_STALL_WINDOW, BENCH_NODE_STALL_WARMUP,
BENCH_PROCS, BENCH_DOCKER_PARALLEL.
"""
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_threads as bt  # noqa: E402  (the workload, process helpers, the scraper)
from docker_rig import (BUSYBOX, DOCKER, DOCKERD, PREFIX, Dockerd, cleanup_stale,  # noqa: E402
                        teardown_root)

PORT_SW = 19144
PORT_SW_WALK = 19145
PORT_NE = 19102
SCRAPE_S = 15.0
TARGET_CPU, TARGET_MB = 1.0, 15.0
TARGET_STALL_CPU = 0.5
STALL_WRITERS = 16
TODAY = "issue 16 measured stallwatch 2.4 % and 22.5 MB, node_exporter 1.9 % and 20.7 MB"


# ---------------------------------------------------------------------------------------------
# Measuring the agents

def status(pid):
    """VmRSS, VmHWM, RssAnon, RssFile in bytes, from /proc/<pid>/status (None if gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        return None
    return out


def series(text):
    return sum(1 for l in text.splitlines() if l and not l.startswith("#"))


def by_label(text, name, label):
    """{label value: value} of the samples of `name`."""
    out = {}
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = bt.LINE_RE.match(line)
        if m and m.group(1) == name:
            ls = dict(bt.LABEL_RE.findall(m.group(2) or ""))
            try:
                out[ls.get(label, "")] = out.get(ls.get(label, ""), 0.0) + float(m.group(3))
            except ValueError:
                pass
    return out


class Watched:
    def __init__(self, name, proc, port):
        self.name, self.proc, self.sc = name, proc, bt.Scraper(port, timeout=10)
        self.text, self.first_text, self.error, self.end, self.rss_max, self.lat = "", "", None, None, 0, []
        self.c0 = self.c1 = self.t0 = self.t1 = None

    def scrape(self):
        if self.error:
            return
        try:
            t = time.monotonic()
            self.text = self.sc.get()
            self.lat.append(time.monotonic() - t)
        except Exception as e:  # one agent's failure is its row's error, not the end of the run
            self.error = f"scrape failed: {e!r} (exit status {self.proc.poll()})"

    def mark(self, first):
        t, c = time.monotonic(), bt.cpu_ns(self.proc.pid)
        if c is None:
            self.error = self.error or f"exited ({self.proc.poll()})"
            return
        if first:
            self.t0, self.c0, self.first_text = t, c, self.text
        else:
            self.t1, self.c1, self.end = t, c, status(self.proc.pid)

    def sample_rss(self):
        s = status(self.proc.pid)
        if s:
            self.rss_max = max(self.rss_max, s.get("VmRSS", 0))

    def cpu_pct(self):
        if None in (self.c0, self.c1) or self.t1 <= self.t0:
            return None
        return 100.0 * (self.c1 - self.c0) / 1e9 / (self.t1 - self.t0)


def procs_blocked():
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("procs_blocked "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def run_window(agents, warmup, window, stall):
    """Scrape every agent every 15 s from now; the window opens on the first scrape >= warmup.
    `stall` gets, at each scrape in the window, (stallwatch_stall_suspected of the first agent,
    /proc/stat procs_blocked): the measure is of a node with no stall."""
    start = time.monotonic()
    n_window = max(1, round(window / SCRAPE_S))
    tick, first_tick = 0, None
    hard = start + warmup + window + 4 * SCRAPE_S + 120
    while time.monotonic() < hard:
        for a in agents:
            a.scrape()
        if first_tick is not None or time.monotonic() - start >= warmup:
            stall.append((bt.metric_sum(agents[0].text, "stallwatch_stall_suspected"), procs_blocked()))
        if first_tick is None and time.monotonic() - start >= warmup:
            first_tick = tick
            for a in agents:
                a.mark(True)
            bt.log(f"window opens: {n_window} scrapes of 15 s")
        elif first_tick is not None:
            for a in agents:
                a.sample_rss()
            if tick - first_tick >= n_window:
                for a in agents:
                    a.mark(False)
                return True
        tick += 1
        next_t = start + tick * SCRAPE_S
        while time.monotonic() < next_t:
            if first_tick is not None:
                for a in agents:
                    a.sample_rss()
            time.sleep(min(1.0, max(0.0, next_t - time.monotonic())))
    bt.log("warning: time is up before the window closed")
    return False


# ---------------------------------------------------------------------------------------------
# Report

def mib(b):
    return "n/a" if b is None else f"{b / 2**20:.1f}"


def print_report(agents, sw, ne, facts, title="no stall", target_cpu=TARGET_CPU):
    print()
    print(f"== whole agent beside node_exporter, same run: {title} ==")
    for f in facts:
        print(f)
    cols = ("agent", "CPU % core", "RSS MiB end", "max", "HWM", "anon", "file", "series", "scrape bytes")
    rows = []
    for a in agents:
        if a is None:
            continue
        e = a.end or {}
        if a.error and a.c1 is None:
            rows.append((a.name, a.error[:120]) + ("",) * 7)
            continue
        rows.append((a.name, bt.fmt(a.cpu_pct(), ".3f"), mib(e.get("VmRSS")), mib(a.rss_max or None),
                     mib(e.get("VmHWM")), mib(e.get("RssAnon")), mib(e.get("RssFile")), str(series(a.text)),
                     str(len(a.text.encode()))))
    w = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w[0]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(cols)))
    for r in rows:
        print("  ".join(v.ljust(w[0]) if i == 0 else v.rjust(w[i]) for i, v in enumerate(r)))
    if sw and ne and sw.cpu_pct() is not None and ne.cpu_pct() and sw.end and ne.end:
        print(f"ratio stallwatch/node_exporter: CPU {sw.cpu_pct() / ne.cpu_pct():.2f}x, RSS end "
              f"{sw.end['VmRSS'] / ne.end['VmRSS']:.2f}x, series {series(sw.text) / max(1, series(ne.text)):.1f}x")
    if sw and sw.cpu_pct() is not None and sw.end:
        ok = lambda b: "met" if b else "NOT met"  # noqa: E731
        print(f"issue 16 target for stallwatch: <= {target_cpu:g} % of a core ({ok(sw.cpu_pct() <= target_cpu)}: "
              f"{sw.cpu_pct():.3f} %), <= {TARGET_MB:g} MB = {TARGET_MB * 1e6 / 2**20:.1f} MiB RSS "
              f"({ok(sw.end['VmRSS'] <= TARGET_MB * 1e6)}: {mib(sw.end['VmRSS'])} MiB at the end, "
              f"{mib(sw.rss_max)} MiB max); {TODAY}")
    if sw and sw.c1 is not None:
        dt = sw.t1 - sw.t0
        c0 = by_label(sw.first_text, "stallwatch_source_cpu_seconds_total", "source")
        c1 = by_label(sw.text, "stallwatch_source_cpu_seconds_total", "source")
        r0 = by_label(sw.first_text, "stallwatch_source_reads_total", "source")
        r1 = by_label(sw.text, "stallwatch_source_reads_total", "source")
        whole = sw.cpu_pct()
        print(f"stallwatch CPU by source over the window ({dt:.0f} s; stallwatch_source_cpu_seconds_total deltas, "
              f"% of one core):")
        total = 0.0
        for s in sorted(c1, key=lambda s: -(c1[s] - c0.get(s, 0.0))):
            d = c1[s] - c0.get(s, 0.0)
            total += d
            print(f"  {s:<24} {100.0 * d / dt:7.3f} %  ({r1.get(s, 0) - r0.get(s, 0):.0f} reads)")
        print(f"  {'(sum of sources)':<24} {100.0 * total / dt:7.3f} %; the rest of the process "
              f"(HTTP, encoding, other threads) {whole - 100.0 * total / dt:.3f} %")
    for a in agents:
        if a is not None and a.lat:
            print(f"{a.name}: median scrape latency {sorted(a.lat)[len(a.lat) // 2] * 1e3:.1f} ms over {len(a.lat)} "
                  f"scrapes{'; ERROR ' + a.error if a.error else ''}")
    sys.stdout.flush()


def after_window(sw, ne, dockerd, stall, root):
    """What the agents saw of the node, and whether it was free of stalls, as report lines."""
    t, out = sw.text, []
    bpf = bt.metric_sum(t, "stallwatch_bpf_active")
    conts = by_label(t, "stallwatch_containers", "runtime")
    out.append(f"stallwatch: stallwatch_bpf_active {'absent (no eBPF source in this build)' if bpf is None else bpf}; "
               f"stallwatch_containers {bt.fmt(sum(conts.values()) if conts else None, '.0f')} "
               f"({', '.join(f'{k} {v:.0f}' for k, v in sorted(conts.items())) or 'none'}; "
               f"{len(dockerd.ids) if dockerd else 0} started here); container pass interval "
               f"{bt.fmt(bt.metric_sum(t, 'stallwatch_container_pass_interval_seconds'), '.1f')} s")
    if bpf == 0:
        why = [l for l in bt.stderr_tail(root, "stallwatch", 100000).splitlines() if "bpf" in l.lower()]
        out.append(f"WARNING: the eBPF source is off; the agent's log says: {why[-1] if why else '(nothing)'}")
    susp = [x for x, _ in stall if x is not None]
    blocked = [b for _, b in stall if b is not None]
    walk = bt.metric_sum(t, "stallwatch_thread_walk_interval_seconds")
    out.append(f"stall: stallwatch_stall_suspected 1 at {sum(1 for x in susp if x >= 1)} of {len(susp)} scrapes in "
               f"the window; procs_blocked at the scrapes max {max(blocked) if blocked else 'n/a'}; walk interval "
               f"{bt.fmt(walk, '.0f')} s at the end")
    if any(x >= 1 for x in susp):
        out.append("WARNING: a stall was suspected during the window (something else on this machine has threads "
                   "in D): the walk ran at its fast cadence, so this is not the no-stall figure")
    with open("/proc/1/mountinfo") as f:
        out.append(f"mounts: {sum(1 for _ in f)} lines in /proc/1/mountinfo at the end (the containers' overlay "
                   "and shm mounts are in it)")
    if ne is not None:
        nthreads = bt.metric_sum(ne.text, "node_processes_threads")
        out.append(f"node_exporter: node_processes_threads {bt.fmt(nthreads, '.0f')}")
    return out


def main():
    env = os.environ.get
    threads = int(env("BENCH_NODE_THREADS", "10000"))
    n_cont = int(env("BENCH_CONTAINERS", "200"))
    window = float(env("BENCH_NODE_WINDOW", "180"))
    warmup = float(env("BENCH_NODE_WARMUP", "70"))
    stall_window = float(env("BENCH_NODE_STALL_WINDOW", "120"))
    stall_warmup = float(env("BENCH_NODE_STALL_WARMUP", "30"))
    procs = int(env("BENCH_PROCS", "200"))
    parallel = max(1, int(env("BENCH_DOCKER_PARALLEL", "8")))
    # Ctrl-C, and SIGINT also when a non-interactive shell started us in the background with it
    # ignored: the cleanup below must run.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, bt._on_signal)
    if os.geteuid() != 0:
        print("bench_node: needs root (a private dockerd, the eBPF source); skipped")
        return 0
    t_start = time.monotonic()
    binary, note = bt.stallwatch_binary(env("BENCH_STALLWATCH"))
    if note:
        print(f"stallwatch: {note}")
    if binary is None:
        return 1
    ne_bin = shutil.which(bt.NODE_EXPORTER)
    print(f"machine: {os.cpu_count()} CPUs, kernel {os.uname().release}; {threads} threads in {procs} processes, "
          f"{n_cont} containers; warm-up {warmup:.0f} s, window {window:.0f} s, a scrape every {SCRAPE_S:.0f} s",
          flush=True)
    cleanup_stale()
    root = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
    dockerd, facts, rc = None, [], 0
    sw = sw_walk = ne = None
    try:
        # 1. containers
        missing = [b for b in (DOCKER, DOCKERD, BUSYBOX) if not os.path.exists(b)]
        if n_cont <= 0:
            facts.append("containers: none (BENCH_CONTAINERS=0)")
        elif missing:
            msg = (f"containers: SKIPPED, {', '.join(missing)} missing (apt-get install docker.io busybox-static): "
                   "the node has no containers")
            print(msg, flush=True)
            facts.append(msg)
        else:
            t0 = time.monotonic()
            dockerd = Dockerd(root)
            dockerd.start()
            dockerd.build_image()
            made, errors = dockerd.run_containers(n_cont, parallel, timeout=max(300.0, n_cont * 3.0))
            facts.append(f"containers: {made}/{n_cont} `sleep 100000` busybox containers of a private dockerd "
                         f"(--network none), started {parallel} at a time in {time.monotonic() - t0:.0f} s")
            print(facts[-1], flush=True)
            for e in sorted(set(errors))[:5]:
                print(f"  docker run error: {e}")
        # 2. threads
        problems, _ = bt.check_limits(threads, procs)
        if problems:
            raise RuntimeError("cannot make the threads: " + "; ".join(problems))
        wl = bt.Workload(threads, procs)
        made = wl.start(timeout=60 + threads / 50)
        time.sleep(2)
        facts.append(f"threads: {made:,} sleeping python threads in {len(wl.pids())} processes; "
                     f"{bt.count_tasks():,} tasks on the node")
        print(facts[-1], flush=True)
        # 3. the agents, both at once
        toml = os.path.join(root, "stallwatch.toml")
        cfg = f'[containers]\ndocker_root = "{root}/data"\n' if dockerd is not None else ""
        with open(toml, "w") as f:
            f.write(cfg)
        sw_argv = [binary, f"--config.file={toml}", f"--web.listen-address={bt.HOST}:{PORT_SW}", "--log.level=info"]
        p, prc, err = bt.start_agent("stallwatch", sw_argv, PORT_SW, root)
        if p is None:
            raise RuntimeError(f"stallwatch did not start (exit {prc}): {err.strip()[-400:]}")
        sw = Watched("stallwatch", p, PORT_SW)
        facts.append(f"stallwatch: {shlex.join(sw_argv)} (config: {cfg.strip() or 'empty'!r})")
        # The same agent with the eBPF source off, beside it: what the walk alone costs.
        wtoml = os.path.join(root, "stallwatch-walk.toml")
        with open(wtoml, "w") as f:
            f.write(cfg + "[bpf]\nenabled = false\n")
        w_argv = [binary, f"--config.file={wtoml}", f"--web.listen-address={bt.HOST}:{PORT_SW_WALK}",
                  "--log.level=info"]
        p, prc, err = bt.start_agent("stallwatch-walk", w_argv, PORT_SW_WALK, root)
        if p is None:
            raise RuntimeError(f"stallwatch (walk-only) did not start (exit {prc}): {err.strip()[-400:]}")
        sw_walk = Watched("stallwatch-walk", p, PORT_SW_WALK)
        facts.append("stallwatch-walk: the same with [bpf] enabled = false (the thread walk alone)")
        if ne_bin:
            ne_argv = [ne_bin, f"--web.listen-address={bt.HOST}:{PORT_NE}", "--no-collector.systemd",
                       "--collector.processes"]
            p, prc, err = bt.start_agent("node_exporter", ne_argv, PORT_NE, root)
            if p is None:
                facts.append(f"node_exporter did not start (exit {prc}): {err.strip()[-300:]}")
            else:
                ne = Watched("node_exporter", p, PORT_NE)
                facts.append(f"node_exporter: {shlex.join(ne_argv)}")
        else:
            facts.append(f"node_exporter: {bt.NODE_EXPORTER} not installed (apt-get install {bt.NODE_EXPORTER}): "
                         "its row is skipped")
        print("\n".join(facts[-2:]), flush=True)
        load0 = bt.loadavg()
        agents = [a for a in (sw, sw_walk, ne) if a is not None]
        stall = []
        run_window(agents, warmup, window, stall)
        facts.append(f"loadavg at the window's start {load0}, end {bt.loadavg()} ({os.cpu_count()} CPUs; "
                     "anything else running on the machine skews the numbers)")
        facts += after_window(sw, ne, dockerd, stall, root)
        print_report(agents, sw, ne, facts)
        # 4. the same node during a stall: STALL_WRITERS threads in D (bench_threads.py's rig: O_DIRECT
        # writes under a 2-IOPS blkio throttle on a loop device). The walk-only agent walks every second
        # (within its CPU budget); with the source, "who is in D now" comes from the episodes in flight.
        if stall_window > 0:
            rig = bt.DStateRig()
            rig.WRITERS = STALL_WRITERS
            try:
                d = rig.setup()
                for a in agents:
                    a.rss_max = 0
                stall2 = []
                load0 = bt.loadavg()
                run_window(agents, stall_warmup, stall_window, stall2)
                d_now = bt.count_d_threads([rig.writer.pid]) if rig.writer else 0
                sfacts = [f"stall: {rig.note}; {d}..{d_now} writer threads in D; stallwatch_stall_suspected 1 at "
                          f"{sum(1 for x, _ in stall2 if x and x >= 1)} of {len(stall2)} scrapes",
                          f"loadavg at the window's start {load0}, end {bt.loadavg()}"]
                print_report(agents, sw, ne, sfacts, title=f"a stall ({STALL_WRITERS} threads in D)",
                             target_cpu=TARGET_STALL_CPU)
            finally:
                rig.teardown()
    except (KeyboardInterrupt, bt.Interrupted) as e:
        print(f"\ninterrupted ({str(e) or 'Ctrl-C'}): cleaning up", flush=True)
        rc = 130
    except Exception as e:
        print(f"bench_node failed: {e}", flush=True)
        rc = 1
    finally:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        for a in (sw, sw_walk, ne):
            if a is not None:
                a.sc.close()
        bt.stop_all()  # the agents, then the workload
        t0 = time.monotonic()
        if dockerd is not None:
            dockerd.teardown()
        else:
            teardown_root(root)
        print(f"teardown {time.monotonic() - t0:.0f} s; runtime {time.monotonic() - t_start:.0f} s", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
