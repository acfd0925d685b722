#!/usr/bin/env python3
"""Cost of stallwatch's per-thread walk next to the peers that also read every thread, in one run.

Scenarios (default 1,000 then 10,000 threads): ~200 `python3` processes whose threads just sleep
(64 KiB stacks). Optionally (BENCH_DSTATE=1, the default as root) a handful of real D-state
threads: 4 threads doing 4 KiB O_DIRECT writes to ext4 on a loop device whose writes a cgroup v1
blkio throttle holds at 2 IOPS.

For each scenario, one agent at a time (started here on 127.0.0.1, stopped by PID):
  * node_exporter with only the processes collector (it reads /proc/*/task/*/stat on each
    scrape) and process-exporter grouping by comm with per-thread metrics: CPU ms per /metrics
    scrape, from the sum of /proc/<pid>/task/*/schedstat (ns) just before and just after each
    scrape, one scrape at a time with a pause between, median over BENCH_REPS scrapes (after 2
    warm-up scrapes). Scrapes ask for text 0.0.4 without gzip, as bench.py does.
  * stallwatch with `[threads] interval = "1s"`: CPU ms per walk =
    delta stallwatch_source_cpu_seconds_total{source="threads"} /
    delta stallwatch_source_reads_total{source="threads"} over >= BENCH_REPS walks (its /metrics
    is polled every 1.1 s), and "agent steady CPU": its whole-process CPU as % of one core over
    the same polls (median of the per-poll intervals; the poll itself is the only scrape).

Nothing is installed here; missing peers are reported and their rows skipped. Every process
started here is stopped (and the D-state rig torn down) on exit, errors and Ctrl-C; every loop
has a deadline. Only 127.0.0.1 is contacted.

Environment (or the matching options, see --help): BENCH_SCENARIOS (1000,10000), BENCH_PROCS
(200), BENCH_REPS (20), BENCH_DSTATE (1 as root, else 0), BENCH_STALLWATCH (path of the binary).
"""
import argparse
import glob
import http.client
import os
import re
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

# What the benchmarks share; the other benches reach these through this module too (bt.*).
from bench_common import (CHILD_MAX_LIFE_S, HOST, ROOT, LABEL_RE, LINE_RE, Interrupted, Scraper,  # noqa: F401
                          _on_signal, _pdeathsig, check_limits, count_d_threads, count_tasks, cpu_ns,
                          loadavg, log, metric_sum, port_in_use, read_int, spawn, stop, stop_all,
                          stop_started, stallwatch_binary, wait_listening)
from dstate_rig import DStateRig, bench_alive, cleanup_stale_rigs  # noqa: F401

PORT_NODE = 19101
PORT_PROCEXP = 19256
PORT_STALLWATCH = 19141
WARMUP_SCRAPES = 2
SCRAPE_PAUSE_S = 0.25
POLL_S = 1.1
STACK_BYTES = 64 * 1024

NODE_EXPORTER = "prometheus-node-exporter"
PROCESS_EXPORTER = "prometheus-process-exporter"


# ---------------------------------------------------------------------------------------------
# Workload: sleeping threads in ~200 processes

WORKLOAD_CHILD = r"""
import ctypes, os, signal, sys, threading
try:
    ctypes.CDLL(None).prctl(1, int(signal.SIGKILL), 0, 0, 0)
except Exception:
    pass
if os.getppid() != int(sys.argv[2]):
    os._exit(0)
threading.stack_size(int(sys.argv[3]))
ev = threading.Event()
life = float(sys.argv[4])
made = 1
for _ in range(int(sys.argv[1]) - 1):
    try:
        threading.Thread(target=ev.wait, args=(life,), daemon=True).start()
        made += 1
    except RuntimeError:
        break
os.write(1, ("%d %d\n" % (os.getpid(), made)).encode())
os.close(1)
import select
select.select([0], [], [], life)  # until the bench closes the hold pipe (or dies, or life is over)
os._exit(0)
"""


class Workload:
    def __init__(self, target, nprocs):
        self.target = target
        self.nprocs = max(1, min(nprocs, target))
        self.procs = []
        self.hold_w = None
        self.made = 0

    def start(self, timeout):
        per, extra = divmod(self.target, self.nprocs)
        hold_r, self.hold_w = os.pipe()
        ready_r, ready_w = os.pipe()
        try:
            for i in range(self.nprocs):
                n = per + (1 if i < extra else 0)
                p = spawn("workload", [sys.executable, "-I", "-S", "-c", WORKLOAD_CHILD, str(n), str(os.getpid()),
                                       str(STACK_BYTES), str(CHILD_MAX_LIFE_S)],
                          kill_first=True, stdin=hold_r, stdout=ready_w)
                self.procs.append(p)
        finally:
            os.close(hold_r)
            os.close(ready_w)
        buf, lines = b"", 0
        deadline = time.monotonic() + timeout
        try:
            while lines < self.nprocs:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                r, _, _ = select.select([ready_r], [], [], min(left, 1.0))
                if not r:
                    continue
                chunk = os.read(ready_r, 65536)
                if not chunk:
                    break  # every child closed stdout: some died
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self.made += int(line.split()[1])
                    lines += 1
        finally:
            os.close(ready_r)
        if lines < self.nprocs:
            log(f"warning: only {lines}/{self.nprocs} workload processes reported ready")
        return self.made

    def pids(self):
        return [p.pid for p in self.procs if p.poll() is None]

    def stop(self):
        if self.hold_w is not None:
            os.close(self.hold_w)  # EOF: the children exit by themselves
            self.hold_w = None
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:
            stop_started(p)
        self.procs = []


# ---------------------------------------------------------------------------------------------
# Agents

def help_text(binary):
    try:
        r = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=20)
        return r.stdout + r.stderr
    except (OSError, subprocess.TimeoutExpired):
        return ""


def node_exporter_argv(binary):
    h = help_text(binary)
    argv = [binary, f"--web.listen-address={HOST}:{PORT_NODE}"]
    notes = []
    for flag in ("--collector.systemd", "--collector.disable-defaults", "--collector.processes"):
        if flag not in h:
            notes.append(f"{flag} not in --help")
    if "--collector.systemd" in h:
        argv.append("--no-collector.systemd")
    if "--collector.disable-defaults" in h:
        argv.append("--collector.disable-defaults")
    else:
        notes.append("cannot disable default collectors: the CPU includes them")
    argv.append("--collector.processes")
    return argv, notes


def process_exporter_argv(binary, tmpdir):
    h = help_text(binary)
    cfg = os.path.join(tmpdir, "process-exporter.yml")
    with open(cfg, "w") as f:
        f.write('process_names:\n  - name: "{{.Comm}}"\n    cmdline:\n      - ".+"\n')
    argv = [binary, "-config.path", cfg, "-web.listen-address", f"{HOST}:{PORT_PROCEXP}"]
    notes = []
    if "-threads" in h:
        argv.append("-threads=true")
    else:
        notes.append("-threads not in --help (no per-thread metrics?)")
    return argv, notes


def start_agent(name, argv, port, tmpdir):
    if port_in_use(port):
        raise RuntimeError(f"{HOST}:{port} is already in use by another process; not measuring {name}")
    errpath = os.path.join(tmpdir, f"{name}.stderr")
    errf = open(errpath, "wb")
    try:
        p = spawn(name, argv, stderr=errf)
    finally:
        errf.close()
    ok = wait_listening(p, port)
    if not ok:
        rc = p.poll()
        stop_started(p)
        with open(errpath, errors="replace") as f:
            err = f.read()
        return None, rc, err
    return p, None, ""


def measure_scrapes(name, argv, port, reps, tmpdir, check, attempts=3):
    """CPU ns per scrape (median over reps) of an exporter that does its work on each scrape.
    An exporter that dies (process-exporter panics on a non-UTF-8 comm anywhere on the host,
    ncabatoff/process-exporter#239) is restarted, at most `attempts` times in all, and its
    crashes are reported with the result."""
    crashes = []
    for _ in range(attempts):
        p, rc, err = start_agent(name, argv, port, tmpdir)
        if p is None:
            crashes.append(f"did not start (exit {rc}): {first_error(err)}")
            continue
        sc = Scraper(port)
        try:
            res = _measure_scrapes(name, p, argv, sc, reps, check)
        except (OSError, RuntimeError, http.client.HTTPException) as e:
            time.sleep(0.2)
            rc = p.poll()
            if rc is None:  # alive: not a crash, a real failure of the scrape
                return {"error": f"{name}: {e!r}", "argv": argv}
            crashes.append(f"exited {rc} during the scrapes: {first_error(stderr_tail(tmpdir, name, 4000))}")
            continue
        finally:
            sc.close()
            stop_started(p)
        if crashes:
            res["crashes"] = crashes
        return res
    return {"error": f"{name} failed {attempts} times: " + " | ".join(crashes), "argv": argv}


def first_error(text):
    """The line that says why a Go program died (its panic), else the last line."""
    lines = [l for l in text.strip().splitlines() if l.strip()]
    for l in lines:
        if l.startswith(("panic:", "fatal error:")):
            return l[:300]
    return lines[-1][:300] if lines else "(no output)"


def stderr_tail(tmpdir, name, n=400):
    try:
        with open(os.path.join(tmpdir, f"{name}.stderr"), errors="replace") as f:
            return f.read().strip()[-n:] or "(empty)"
    except OSError:
        return "(none)"


def _measure_scrapes(name, p, argv, sc, reps, check):
    deltas, lats = [], []
    loop_c0 = None
    text = ""
    deadline = time.monotonic() + max(120, reps * 30)
    for i in range(WARMUP_SCRAPES + reps):
        if time.monotonic() > deadline:
            log(f"warning: {name}: time is up after {len(deltas)} scrapes")
            break
        c0 = cpu_ns(p.pid)
        t0 = time.perf_counter()
        text = sc.get()
        t1 = time.perf_counter()
        c1 = cpu_ns(p.pid)
        if c0 is None or c1 is None:
            return {"error": f"{name} (pid {p.pid}) exited during the scrapes"}
        if i >= WARMUP_SCRAPES:
            if loop_c0 is None:
                loop_c0 = c0
            deltas.append(c1 - c0)
            lats.append(t1 - t0)
        time.sleep(SCRAPE_PAUSE_S)
    loop_c1 = cpu_ns(p.pid)
    if not deltas:
        return {"error": f"{name}: no scrape measured"}
    return {
        "cpu_ms": statistics.median(deltas) / 1e6,
        "cpu_ms_incl": (loop_c1 - loop_c0) / len(deltas) / 1e6,
        "lat_ms": statistics.median(lats) * 1e3,
        "n": len(deltas),
        "seen": check(text),
        "argv": argv,
    }


def measure_stallwatch(binary, reps, tmpdir):
    toml = os.path.join(tmpdir, "stallwatch-threads.toml")
    with open(toml, "w") as f:
        # Walk every second with no CPU budget, to measure the walk itself 20+ times; the
        # agent's default is a 10 s cadence (1 s during a stall) capped at 5% of a core. The eBPF
        # source is off: where it runs (root, BTF) the walk waits bpf.walk_interval (5 min), and
        # this bench measures the walk (bench_bpf.py measures the source).
        f.write('[threads]\ninterval = "1s"\nmax_cpu = "100%"\n[bpf]\nenabled = false\n')
    base = [binary, f"--web.listen-address={HOST}:{PORT_STALLWATCH}", "--log.level=warn"]
    argv = [binary, f"--config.file={toml}"] + base[1:]
    notes = []
    p, rc, err = start_agent("stallwatch", argv, PORT_STALLWATCH, tmpdir)
    if p is None and rc == 2 and "unknown" in err and "threads" in err:
        notes.append("this build rejects the [threads] config key (exit 2, unknown key): started without "
                     "--config.file")
        argv = base
        p, rc, err = start_agent("stallwatch", argv, PORT_STALLWATCH, tmpdir)
    if p is None:
        return {"error": f"stallwatch did not start (exit {rc}): {err.strip()[-400:]}", "notes": notes}
    sc = Scraper(PORT_STALLWATCH, timeout=10)
    try:
        def walk(text):
            return (metric_sum(text, "stallwatch_source_cpu_seconds_total", source="threads"),
                    metric_sum(text, "stallwatch_source_reads_total", source="threads"))

        # warm up: the first walk(s) over a fresh /proc, page faults, lazy allocations
        warm_deadline = time.monotonic() + 30
        time.sleep(2.0)
        text = sc.get()
        wcpu, wreads = walk(text)
        has_walk = wcpu is not None and wreads is not None
        while has_walk and wreads < 2 and time.monotonic() < warm_deadline:
            time.sleep(0.5)
            wcpu, wreads = walk(sc.get())
        if not has_walk:
            msg = "stallwatch thread-walk metrics not present"
            print(msg, flush=True)
            notes.append(msg + ' (no stallwatch_source_cpu_seconds_total / stallwatch_source_reads_total '
                               '{source="threads"}): walk rows skipped')
        samples = []  # (t, process cpu ns, walk cpu s, walk reads)
        deadline = time.monotonic() + reps * POLL_S * 3 + 60
        next_t = time.monotonic()
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now < next_t:
                time.sleep(next_t - now)
            next_t += POLL_S
            t, c = time.monotonic(), cpu_ns(p.pid)
            if c is None:
                return {"error": "stallwatch exited during the measurement", "notes": notes}
            wcpu, wreads = walk(sc.get())
            samples.append((t, c, wcpu, wreads))
            enough_polls = len(samples) > reps
            enough_walks = (not has_walk or wreads is None or samples[0][3] is None
                            or wreads - samples[0][3] >= reps)
            if enough_polls and enough_walks:
                break
        else:
            log("warning: stallwatch: time is up before enough polls/walks")
        res = {"argv": argv, "notes": notes, "polls": len(samples) - 1}
        steady = [100.0 * (b[1] - a[1]) / 1e9 / (b[0] - a[0]) for a, b in zip(samples, samples[1:])]
        if steady:
            res["steady_pct"] = statistics.median(steady)
            res["steady_pct_all"] = 100.0 * (samples[-1][1] - samples[0][1]) / 1e9 / (samples[-1][0] - samples[0][0])
        if has_walk and samples[0][3] is not None and samples[-1][3] is not None:
            dr = samples[-1][3] - samples[0][3]
            dc = samples[-1][2] - samples[0][2]
            res["walks"] = int(dr)
            if dr > 0:
                res["walk_ms"] = 1e3 * dc / dr
                per = [1e3 * (b[2] - a[2]) / (b[3] - a[3]) for a, b in zip(samples, samples[1:])
                       if a[3] is not None and b[3] is not None and b[3] > a[3]]
                if per:
                    res["walk_ms_median"] = statistics.median(per)
            else:
                notes.append('stallwatch_source_reads_total{source="threads"} did not grow: no walk completed')
        return res
    finally:
        sc.close()
        stop_started(p)


def guarded(fn, *args):
    """One agent's failure is a row with its error, not the end of the run."""
    try:
        return fn(*args)
    except (KeyboardInterrupt, Interrupted):
        raise
    except Exception as e:
        return {"error": f"{fn.__name__}: {e!r}"}


# ---------------------------------------------------------------------------------------------
# Report

def fmt(v, spec=".3f"):
    return "n/a" if v is None else format(v, spec)


def print_table(label, info, ne, pe, sw):
    print()
    print(f"== scenario {label}: {info['requested']:,} threads requested in {info['nprocs']} processes ==")
    print(f"threads observed in /proc: {info['tasks']:,} tasks system-wide (/proc/*/task), "
          f"{info['workload_tasks']:,} in the workload processes, {info['d_threads']} in state D")
    print(f"loadavg before {info['load'][0]}, after {info['load'][1]} (this machine has {os.cpu_count()} CPUs; "
          f"anything else running skews the numbers; D-state threads count in the load average)")
    rows = []
    ne_ms = ne.get("cpu_ms") if ne else None
    pe_ms = pe.get("cpu_ms") if pe else None
    sw_ms = sw.get("walk_ms") if sw else None

    def detail_scrape(r):
        if r is None:
            return "not installed"
        if "error" in r:
            return r["error"]
        d = (f"n={r['n']}, median latency {r['lat_ms']:.1f} ms, mean incl. CPU between scrapes "
             f"{r['cpu_ms_incl']:.3f} ms; {r['seen']}")
        if r.get("crashes"):
            d += f"; CRASHED {len(r['crashes'])}x before this run: {r['crashes'][0]}"
        return d

    rows.append(("node_exporter processes collector CPU ms/scrape", fmt(ne_ms), detail_scrape(ne)))
    rows.append(("process-exporter CPU ms/scrape", fmt(pe_ms), detail_scrape(pe)))
    if sw is None:
        sw_detail, st_detail = "stallwatch binary missing", "stallwatch binary missing"
    elif "error" in sw:
        sw_detail = st_detail = sw["error"]
    else:
        if sw_ms is not None:
            sw_detail = (f"{sw['walks']} walks over {sw['polls']} polls; median per poll "
                         f"{fmt(sw.get('walk_ms_median'))} ms")
        else:
            sw_detail = "stallwatch thread-walk metrics not present"
        st_detail = (f"median of {sw['polls']} polls of {POLL_S:g} s; whole window "
                     f"{fmt(sw.get('steady_pct_all'))} %")
    rows.append(("stallwatch walk CPU ms", fmt(sw_ms), sw_detail))
    rows.append(("stallwatch steady CPU % of one core (agent steady CPU)",
                 fmt(sw.get("steady_pct") if sw else None), st_detail))
    r1 = sw_ms / ne_ms if sw_ms is not None and ne_ms else None
    r2 = sw_ms / pe_ms if sw_ms is not None and pe_ms else None
    rows.append(("ratio stallwatch walk / node_exporter", fmt(r1), ""))
    rows.append(("ratio stallwatch walk / process-exporter", fmt(r2), ""))
    w = max(len(r[0]) for r in rows)
    print(f"{'measure':<{w}}  {'value':>10}  detail")
    for name, val, det in rows:
        print(f"{name:<{w}}  {val:>10}  {det}")
    if sw_ms is not None and ne_ms:
        print(f"per minute: node_exporter at a 15 s scrape interval {4 * ne_ms:.1f} ms, "
              f"process-exporter at 15 s {4 * (pe_ms or 0):.1f} ms, stallwatch at 1 s walks {60 * sw_ms:.1f} ms")
    for r in (ne, pe, sw):
        if r and r.get("argv"):
            print(f"  agent: {shlex.join(r['argv'])}")
    for n in (sw or {}).get("notes", []):
        print(f"  note: {n}")
    sys.stdout.flush()


def main():
    env = os.environ.get
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", default=env("BENCH_SCENARIOS", "1000,10000"),
                    help="comma-separated total thread counts (BENCH_SCENARIOS)")
    ap.add_argument("--procs", type=int, default=int(env("BENCH_PROCS", "200")),
                    help="workload processes (BENCH_PROCS)")
    ap.add_argument("--reps", type=int, default=int(env("BENCH_REPS", "20")),
                    help="scrapes per exporter / walks of stallwatch, at least 20 recommended (BENCH_REPS)")
    ap.add_argument("--dstate", type=int, choices=(0, 1),
                    default=int(env("BENCH_DSTATE", "1" if os.geteuid() == 0 else "0")),
                    help="add real D-state threads, needs root (BENCH_DSTATE)")
    ap.add_argument("--stallwatch", default=env("BENCH_STALLWATCH"), help="stallwatch binary (BENCH_STALLWATCH)")
    args = ap.parse_args()
    scenarios = [int(s) for s in args.scenarios.split(",") if s.strip()]
    reps = max(1, args.reps)

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)

    t_start = time.monotonic()
    envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k.startswith("BENCH_"))
    cmd = f"cd {shlex.quote(ROOT)} && {envs + ' ' if envs else ''}python3 {shlex.join(sys.argv)}"
    print(f"command: {cmd}")
    print(f"machine: {os.cpu_count()} CPUs, kernel {os.uname().release}; reps {reps}, "
          f"{args.procs} workload processes, thread stacks {STACK_BYTES // 1024} KiB")

    ne_bin, pe_bin = shutil.which(NODE_EXPORTER), shutil.which(PROCESS_EXPORTER)
    missing = [n for n, b in ((NODE_EXPORTER, ne_bin), (PROCESS_EXPORTER, pe_bin)) if not b]
    if missing:
        print(f"missing peers (not installed, rows skipped): {', '.join(missing)} "
              f"(apt-get install --no-install-recommends {' '.join(missing)})")
    sw_bin, sw_note = stallwatch_binary(args.stallwatch)
    if sw_note:
        print(f"stallwatch: {sw_note}")

    for old in glob.glob(os.path.join(tempfile.gettempdir(), "swbench-threads-*-*")):
        pid = os.path.basename(old).split("-")[2]
        if pid.isdigit() and not bench_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)  # left by a SIGKILLed run
    tmpdir = tempfile.mkdtemp(prefix=f"swbench-threads-{os.getpid()}-")
    rig = None
    rc = 0
    try:
        ne_argv, ne_notes = node_exporter_argv(ne_bin) if ne_bin else (None, [])
        pe_argv, pe_notes = process_exporter_argv(pe_bin, tmpdir) if pe_bin else (None, [])
        for n in ne_notes:
            print(f"node_exporter: {n}")
        for n in pe_notes:
            print(f"process-exporter: {n}")

        if args.dstate:
            if os.geteuid() != 0:
                print("BENCH_DSTATE=1 needs root: no D-state rig")
            else:
                try:
                    cleanup_stale_rigs()
                except (OSError, subprocess.SubprocessError) as e:
                    log(f"warning: cleaning up stale D-state rigs: {e}")
                rig = DStateRig()
                try:
                    rig.setup()
                    print(rig.note)
                except Exception as e:
                    print(f"D-state rig not set up ({e}); going on without it")
                    rig.teardown()
                    rig = None

        for target in scenarios:
            label = f"{target // 1000}k" if target % 1000 == 0 else str(target)
            problems, lim = check_limits(target, args.procs)
            print(f"\n[{label}] limits: " + ", ".join(f"{k} {v}" for k, v in lim.items()))
            if problems:
                print(f"[{label}] skipped: " + "; ".join(problems))
                continue
            wl = Workload(target, args.procs)
            try:
                t0 = time.monotonic()
                made = wl.start(timeout=60 + target / 50)
                print(f"[{label}] workload: {made:,} threads in {len(wl.pids())} processes, "
                      f"started in {time.monotonic() - t0:.1f} s")
                time.sleep(2)  # let the spawn burst settle
                load0 = loadavg()
                info = {"requested": target, "nprocs": wl.nprocs, "tasks": count_tasks(),
                        "workload_tasks": count_tasks(wl.pids()), "d_threads": count_d_threads()}

                def ne_seen(text):
                    v = metric_sum(text, "node_processes_threads")
                    return f"node_processes_threads {fmt(v, '.0f')}"

                def pe_seen(text):
                    v = metric_sum(text, "namedprocess_namegroup_num_threads")
                    g = len({m for m in re.findall(r'namedprocess_namegroup_num_threads\{groupname="([^"]*)"', text)})
                    return f"{fmt(v, '.0f')} threads in {g} groups"

                ne = pe = sw = None
                if ne_argv:
                    log(f"[{label}] node_exporter ...")
                    ne = guarded(measure_scrapes, "node_exporter", ne_argv, PORT_NODE, reps, tmpdir, ne_seen)
                if pe_argv:
                    log(f"[{label}] process-exporter ...")
                    pe = guarded(measure_scrapes, "process-exporter", pe_argv, PORT_PROCEXP, reps, tmpdir, pe_seen)
                if sw_bin:
                    log(f"[{label}] stallwatch ...")
                    sw = guarded(measure_stallwatch, sw_bin, reps, tmpdir)
                info["tasks_end"] = count_tasks()
                info["load"] = (load0, loadavg())
                print_table(label, info, ne, pe, sw)
            finally:
                wl.stop()
    except (KeyboardInterrupt, Interrupted) as e:
        print(f"\ninterrupted ({str(e) or 'Ctrl-C'}): cleaning up", flush=True)
        rc = 130
    finally:
        # no second Ctrl-C in the middle of the cleanup
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        if rig is not None:
            try:
                rig.teardown()
            except Exception as e:
                log(f"warning: D-state rig teardown: {e}")
        stop_all()
        shutil.rmtree(tmpdir, ignore_errors=True)
        print(f"\nruntime {time.monotonic() - t_start:.1f} s", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
