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

Nothing is asserted (no timed assertions). Needs root. Everything started here is stopped by PID; containers,
dockerd, its containerd and shims, cgroups, mounts and the tempdir are removed on exit, errors and Ctrl-C; what a
SIGKILLed run left is removed by the next run. Every loop has a deadline.
Environment: BENCH_STALLWATCH (binary), BENCH_NODE_THREADS, BENCH_CONTAINERS, BENCH_NODE_WINDOW, BENCH_NODE_WARMUP,
BENCH_PROCS, BENCH_DOCKER_PARALLEL.
"""
import ctypes
import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_threads as bt  # noqa: E402  (the workload, process helpers, the scraper)

PORT_SW = 19144
PORT_NE = 19102
SCRAPE_S = 15.0
DOCKER = "/usr/bin/docker"  # Debian's, by absolute path (docker.rs does the same)
DOCKERD = "/usr/sbin/dockerd"
BUSYBOX = "/bin/busybox"
IMAGE = "swbench-busybox:1"
PREFIX = "swbench-node-"
TARGET_CPU, TARGET_MB = 1.0, 15.0
TODAY = "issue 16 measured stallwatch 2.4 % and 22.5 MB, node_exporter 1.9 % and 20.7 MB"


# ---------------------------------------------------------------------------------------------
# A private dockerd and its containers

def _proc(pid, name):
    """/proc/<pid>/<name>, b"" when the process is gone."""
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _wait_gone(pred, timeout):
    deadline = time.monotonic() + timeout
    while pred() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not pred()


def _rmdir(d):
    try:
        os.rmdir(d)
        return True
    except OSError:
        return False


def _kill(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class Dockerd:
    """dockerd with everything under `root`; teardown() removes all of it, also for a stale root."""

    def __init__(self, root):
        self.root = root
        self.sock = os.path.join(root, "d.sock")
        self.proc = None
        self.ids = []

    def start(self, timeout=60):
        ns = f"swbench-node-{os.getpid()}"
        with open(os.path.join(self.root, "dockerd.stderr"), "wb") as logf:
            self.proc = subprocess.Popen(
                [DOCKERD, f"--data-root={self.root}/data", f"--exec-root={self.root}/exec",
                 f"--pidfile={self.root}/d.pid", f"--host=unix://{self.sock}",
                 "--exec-opt=native.cgroupdriver=cgroupfs", "--bridge=none", "--iptables=false",
                 "--ip-forward=false", "--ip-masq=false", f"--containerd-namespace={ns}",
                 f"--containerd-plugins-namespace={ns}-plugins"],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, preexec_fn=bt._pdeathsig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited ({self.proc.returncode}): {bt.stderr_tail(self.root, 'dockerd')}")
            if self.docker(["info", "--format", "{{.ServerVersion}}"], 10)[0] == 0:
                return
            time.sleep(0.25)
        raise RuntimeError(f"dockerd did not answer within {timeout} s: {bt.stderr_tail(self.root, 'dockerd')}")

    def argv(self, args):
        return [DOCKER, "-H", f"unix://{self.sock}"] + args

    def docker(self, args, timeout):
        """(returncode, stdout, stderr); a CLI that does not answer within `timeout` is killed."""
        try:
            r = subprocess.run(self.argv(args), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=timeout)
            return r.returncode, r.stdout.strip(), r.stderr.strip()
        except subprocess.TimeoutExpired:
            return -1, "", f"docker {' '.join(args[:2])}: no answer within {timeout} s"

    def must(self, args, timeout=60):
        rc, out, err = self.docker(args, timeout)
        if rc != 0:
            raise RuntimeError(f"docker {shlex.join(args)}: {err[-400:]}")
        return out

    def build_image(self):
        rootfs = os.path.join(self.root, "rootfs")
        os.makedirs(os.path.join(rootfs, "bin"))
        shutil.copy(BUSYBOX, os.path.join(rootfs, "bin", "busybox"))
        for applet in ("sh", "sleep"):
            os.symlink("busybox", os.path.join(rootfs, "bin", applet))
        tar = os.path.join(self.root, "rootfs.tar")
        subprocess.run(["tar", "-C", rootfs, "-cf", tar, "."], check=True, timeout=60)
        self.must(["import", tar, IMAGE], timeout=120)

    def run_containers(self, n, parallel, timeout):
        """Starts n `sleep 100000` containers, `parallel` CLIs at a time; returns how many ran."""
        deadline = time.monotonic() + timeout
        running, todo, errors = [], list(range(n)), []
        try:
            while (todo or running) and time.monotonic() < deadline:
                while todo and len(running) < parallel:
                    i = todo.pop(0)
                    args = ["run", "-d", "--network=none", f"--name=swbench-{os.getpid()}-{i}", IMAGE,
                            "sleep", "100000"]
                    p = subprocess.Popen(self.argv(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)
                    running.append((p, time.monotonic() + 120))
                still = []
                for p, until in running:
                    if p.poll() is None and time.monotonic() < until:
                        still.append((p, until))
                        continue
                    if p.poll() is None:
                        p.kill()
                        errors.append("a docker run did not answer within 120 s")
                    out, err = p.communicate()
                    if p.returncode == 0 and re.fullmatch(r"[0-9a-f]{64}", out.strip()):
                        self.ids.append(out.strip())
                    elif p.returncode is not None and p.returncode != -9:
                        errors.append(err.strip()[-300:])
                running = still
                time.sleep(0.05)
        finally:
            for p, _ in running:  # time is up, or interrupted: the CLIs go; teardown removes what they made
                p.kill()
                p.communicate()
        if todo or running:
            errors.append(f"time is up after {timeout:.0f} s with {len(todo) + len(running)} containers not started")
        return len(self.ids), errors

    def teardown(self):
        teardown_root(self.root, self.proc, self.docker if self.proc and self.proc.poll() is None else None, self.ids)
        self.proc = None


def container_ids(root):
    d = os.path.join(root, "data", "containers")
    try:
        return [i for i in os.listdir(d) if re.fullmatch(r"[0-9a-f]{64}", i)]
    except OSError:
        return []


def teardown_root(root, proc=None, docker=None, ids=None):
    """Removes everything a private dockerd under `root` made: its containers (by the CLI while
    the daemon answers, else by killing what is in their cgroups), dockerd and containerd by PID,
    the shims (their command line names `root`), the containers' cgroups, mounts, the tempdir."""
    def ours():
        return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()
                and root.encode() in _proc(p, "cmdline")]
    early = set(ours())  # dockerd, containerd, the shims: see that they are gone, reaped too
    cids = set(container_ids(root)) | set(ids or ())
    if docker is not None:
        rc, out, _ = docker(["ps", "-aq", "--no-trunc"], 30)
        listed = out.split() if rc == 0 else []
        cids |= set(listed)
        for i in range(0, len(listed), 50):  # the CLI removes the ids of one call in parallel
            docker(["rm", "-f"] + listed[i:i + 50], 120)
    if proc is not None:
        bt.stop(proc, grace=20)  # SIGTERM (it stops its containerd), then SIGKILL
    # Anything else whose command line names our root: a dockerd of a stale run, its containerd,
    # containerd-shim-runc-v2 (daemonized: children of init). Shims exit once their container is.
    _wait_gone(lambda: bool(ours()), 5)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours():
            _kill(pid, sig)
        _wait_gone(lambda: bool(ours()), 10)
    for pid in ours():
        bt.log(f"warning: pid {pid} (names {root}) is still alive")

    def zombies():  # exited shims wait for init to reap them; a zombie has no command line
        return [p for p in early if b") Z " in _proc(p, "stat")]
    if not _wait_gone(lambda: bool(zombies()), 10):
        bt.log(f"note: {len(zombies())} exited shims not yet reaped by their parent (init)")
    # The containers' own processes (if the daemon could not remove them) and their cgroups
    # (runc removes them as the container goes, but a killed daemon leaves them).
    dirs = [d for cid in cids for d in glob.glob(f"/sys/fs/cgroup/*/docker/{cid}")]
    for d in dirs:
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                for pid in f.read().split():
                    _kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 20
    while dirs and time.monotonic() < deadline:
        dirs = [d for d in dirs if not _rmdir(d) and os.path.isdir(d)]  # EBUSY while its tasks exit
        time.sleep(0.25 if dirs else 0)
    for d in dirs:
        bt.log(f"warning: could not rmdir {d}")
    # Mounts under root (overlay2 layers, netns, shm), deepest first, detached.
    libc = ctypes.CDLL(None, use_errno=True)
    for _ in range(3):
        with open("/proc/self/mounts") as f:
            mounts = [l.split()[1].replace("\\040", " ") for l in f if len(l.split()) > 1]
        mounts = sorted((m for m in mounts if m == root or m.startswith(root + "/")), key=len, reverse=True)
        if not mounts:
            break
        for m in mounts:
            libc.umount2(m.encode(), 2)  # MNT_DETACH
    shutil.rmtree(root, ignore_errors=True)
    if os.path.exists(root):
        bt.log(f"warning: {root} could not be removed")


def cleanup_stale():
    """Roots of runs of this script that died without cleaning up (SIGKILL: dockerd dies with
    the script by PDEATHSIG, its containers do not)."""
    for root in sorted(glob.glob(os.path.join(tempfile.gettempdir(), PREFIX + "*-*"))):
        pid = os.path.basename(root)[len(PREFIX):].split("-")[0]
        if pid.isdigit() and b"bench_node" not in _proc(pid, "cmdline"):
            print(f"cleaning up after a dead run (pid {pid}): {root}", flush=True)
            teardown_root(root)


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


def print_report(agents, sw, ne, facts):
    print()
    print("== whole agent beside node_exporter, same run ==")
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
        print(f"issue 16 target for stallwatch: <= {TARGET_CPU:g} % of a core ({ok(sw.cpu_pct() <= TARGET_CPU)}: "
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
    sw = ne = None
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
        agents = [a for a in (sw, ne) if a is not None]
        stall = []
        run_window(agents, warmup, window, stall)
        facts.append(f"loadavg at the window's start {load0}, end {bt.loadavg()} ({os.cpu_count()} CPUs; "
                     "anything else running on the machine skews the numbers)")
        facts += after_window(sw, ne, dockerd, stall, root)
        print_report(agents, sw, ne, facts)
    except (KeyboardInterrupt, bt.Interrupted) as e:
        print(f"\ninterrupted ({str(e) or 'Ctrl-C'}): cleaning up", flush=True)
        rc = 130
    except Exception as e:
        print(f"bench_node failed: {e}", flush=True)
        rc = 1
    finally:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        for a in (sw, ne):
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
