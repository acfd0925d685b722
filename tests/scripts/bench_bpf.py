#!/usr/bin/env python3
"""What the eBPF D-episode source costs, side by side in one run (issue 16; `make bench`).

1. Context-switch overhead: `hackbench` (Debian rt-tests; process mode, sockets), BENCH_BPF_HACK_RUNS
   runs per setup, alternating, median wall time: with the agent running its defaults with
   `[bpf] enabled = false` vs `enabled = true` (the programs attached to sched_switch and
   sched_wakeup). The ratio on/off - 1 is the source's overhead on a switch-heavy load.
2. The whole agent's CPU with no stall, at 1k, 10k and 50k threads (sleeping python threads, as in
   bench_threads.py): walk-only (`[bpf] enabled = false`, the walk every 10 s) vs with the source
   (the walk every `bpf.walk_interval`, 5 min). Whole-process CPU as % of one core over
   BENCH_BPF_WINDOW seconds (from /proc/<pid>/task/*/schedstat), and the thread side alone: the
   `threads` and `bpf` sources' own CPU (stallwatch_source_cpu_seconds_total) over the window.
3. During a stall: 10k threads and 16 threads in D (O_DIRECT writers under a 2-IOPS blkio throttle
   on a loop device, bench_threads.py's rig): walk-only (a walk every second, within its 5 %
   budget) vs with the source ("who is in D now" from the episodes in flight; no walk).

Agents run one at a time on 127.0.0.1; every process started here is stopped and the rig torn
down on exit, errors and Ctrl-C; every loop has a deadline. Needs root (eBPF, the rig). Numbers
are printed as a table; nothing is asserted (no timed assertions).

Each agent is measured after BENCH_BPF_WARMUP seconds (70: its start-up is not steady state; the
eBPF reader names the node's wait channels in its first minute, kallsyms passes unbudgeted).
Environment: BENCH_BPF_SCENARIOS (1000,10000,50000), BENCH_BPF_WINDOW (60), BENCH_BPF_HACK_RUNS (7),
BENCH_BPF_HACK_ARGS ("-g 20 -l 2000"), BENCH_STALLWATCH (binary), BENCH_PROCS (200).
"""
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_threads as bt  # noqa: E402  (the workload, the D-state rig, process helpers)

PORT = 19142
WARMUP_S = float(os.environ.get("BENCH_BPF_WARMUP", "70"))


def agent(binary, tmpdir, name, toml):
    path = os.path.join(tmpdir, f"{name}.toml")
    with open(path, "w") as f:
        f.write(toml)
    argv = [binary, f"--config.file={path}", f"--web.listen-address={bt.HOST}:{PORT}", "--log.level=info"]
    bt.PORT_STALLWATCH = PORT
    p, rc, err = bt.start_agent(name, argv, PORT, tmpdir)
    if p is None:
        raise RuntimeError(f"{name}: stallwatch did not start (exit {rc}): {err.strip()[-400:]}")
    return p


def wait_active(sc, want, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = bt.metric_sum(sc.get(), "stallwatch_bpf_active")
        if v == want:
            return True
        time.sleep(0.5)
    return False


def source_cpu(text):
    return sum(bt.metric_sum(text, "stallwatch_source_cpu_seconds_total", source=s) or 0.0
               for s in ("threads", "bpf"))


def measure(p, sc, window):
    """(whole-process CPU % of a core, thread-side CPU % of a core) over `window` seconds."""
    t0, c0, s0 = time.monotonic(), bt.cpu_ns(p.pid), source_cpu(sc.get())
    time.sleep(window)
    t1, c1, s1 = time.monotonic(), bt.cpu_ns(p.pid), source_cpu(sc.get())
    if c0 is None or c1 is None:
        raise RuntimeError("stallwatch exited during the measurement")
    dt = t1 - t0
    return 100.0 * (c1 - c0) / 1e9 / dt, 100.0 * (s1 - s0) / dt


def run_setup(binary, tmpdir, name, toml, bpf_on, window):
    p = agent(binary, tmpdir, name, toml)
    sc = bt.Scraper(PORT, timeout=10)
    try:
        if not wait_active(sc, 1.0 if bpf_on else 0.0):
            raise RuntimeError(f"{name}: stallwatch_bpf_active never became {int(bpf_on)}")
        # Past the start: the first walk, the seeding walk, the programs' load (BTF, verifier,
        # one kallsyms scan) and the first passes naming this node's wait channels.
        time.sleep(WARMUP_S)
        return measure(p, sc, window)
    finally:
        sc.close()
        bt.stop_started(p)


def prog_stats(pid):
    """{prog name or id: (run_cnt, run_time_ns)} of the BPF programs whose fds `pid` holds
    (/proc/<pid>/fdinfo; the counts exist while kernel.bpf_stats_enabled = 1)."""
    out = {}
    d = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(d):
        try:
            with open(os.path.join(d, fd)) as f:
                info = dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)
        except OSError:
            continue
        if "prog_type" in info and "run_cnt" in info:
            key = info.get("prog_tag", fd).strip()
            out[key] = (int(info["run_cnt"]), int(info["run_time_ns"]))
    return out


def hackbench_cost(binary, tmpdir, hargs):
    """One hackbench run with the source on and kernel.bpf_stats_enabled = 1: what the programs
    cost per run and in all, from the kernel's own accounting (no wall-clock noise)."""
    path = "/proc/sys/kernel/bpf_stats_enabled"
    with open(path) as f:
        old = f.read().strip()
    p = agent(binary, tmpdir, "hack-stats", ON)
    try:
        sc = bt.Scraper(PORT, timeout=10)
        try:
            if not wait_active(sc, 1.0):
                raise RuntimeError("bpf_active never 1")
        finally:
            sc.close()
        with open(path, "w") as f:
            f.write("1")
        try:
            a = prog_stats(p.pid)
            wall = hackbench(hargs)
            b = prog_stats(p.pid)
        finally:
            with open(path, "w") as f:
                f.write(old)
    finally:
        bt.stop_started(p)
    runs = {k: (b[k][0] - a.get(k, (0, 0))[0], b[k][1] - a.get(k, (0, 0))[1]) for k in b}
    total_ns = sum(t for _, t in runs.values())
    per = ", ".join(f"{n} runs at {t / n:.0f} ns" for n, t in sorted(runs.values(), reverse=True) if n)
    share = 100.0 * total_ns / 1e9 / (wall * os.cpu_count())
    return f"the programs ran {per}: {total_ns / 1e6:.1f} ms in {wall:.2f} s on {os.cpu_count()} CPUs = {share:.2f} % of the CPU time"


SYSCTLS = ("/proc/sys/kernel/pid_max", "/proc/sys/kernel/threads-max")
RAISED = {}  # path -> value before this script raised it; put back by restore_limits()


def raise_limits(target):
    """Raises kernel.pid_max and kernel.threads-max for `target` more threads when they are too
    small (pid_max is 32,768 on this machine: 50k threads need more); restore_limits() puts them
    back, on every exit path."""
    need = bt.count_tasks() + target + 1000
    for path in SYSCTLS:
        cur = bt.read_int(path)
        if cur is not None and cur < need:
            RAISED.setdefault(path, cur)
            with open(path, "w") as f:
                f.write(str(min(need * 2, 4_194_304)))
            print(f"{path[len('/proc/sys/'):].replace('/', '.')} raised from {cur} to {bt.read_int(path)} "
                  f"for {target} threads (put back on exit)", flush=True)


def restore_limits():
    for path, v in RAISED.items():
        try:
            with open(path, "w") as f:
                f.write(str(v))
        except OSError as e:
            print(f"could not put {path} back to {v}: {e}")
    RAISED.clear()


def hackbench(args):
    t0 = time.monotonic()
    r = subprocess.run(["hackbench"] + args.split(), capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"hackbench failed: {r.stderr.strip()[-300:]}")
    return time.monotonic() - t0


OFF = '[bpf]\nenabled = false\n'
ON = '[bpf]\nenabled = true\n'


def main():
    env = os.environ.get
    scenarios = [int(s) for s in env("BENCH_BPF_SCENARIOS", "1000,10000,50000").split(",") if s.strip()]
    window = float(env("BENCH_BPF_WINDOW", "60"))
    runs = int(env("BENCH_BPF_HACK_RUNS", "7"))
    hargs = env("BENCH_BPF_HACK_ARGS", "-g 20 -l 2000")
    procs = int(env("BENCH_PROCS", "200"))
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, bt._on_signal)
    if os.geteuid() != 0:
        print("bench_bpf: needs root (eBPF programs, the D-state rig); skipped")
        return 0
    binary, note = bt.stallwatch_binary(env("BENCH_STALLWATCH"))
    if note:
        print(f"stallwatch: {note}")
    print(f"machine: {os.cpu_count()} CPUs, kernel {os.uname().release}; window {window:.0f} s")
    tmpdir = tempfile.mkdtemp(prefix=f"swbench-bpf-{os.getpid()}-")
    rows = []
    try:
        # 1. hackbench, alternating off/on so that drift hits both alike.
        if runs <= 0:
            print("hackbench rows skipped (BENCH_BPF_HACK_RUNS=0)")
        elif shutil.which("hackbench"):
            times = {"off": [], "on": []}
            for i in range(runs):
                for setup, toml in (("off", OFF), ("on", ON)):
                    p = agent(binary, tmpdir, f"hack-{setup}", toml)
                    sc = bt.Scraper(PORT, timeout=10)
                    try:
                        if not wait_active(sc, 1.0 if setup == "on" else 0.0):
                            raise RuntimeError(f"bpf_active never {setup}")
                    finally:
                        sc.close()
                    try:
                        times[setup].append(hackbench(hargs))
                    finally:
                        bt.stop_started(p)
            off, on = statistics.median(times["off"]), statistics.median(times["on"])
            print(f"hackbench {hargs}: median of {runs}: source off {off:.3f} s, on {on:.3f} s: "
                  f"overhead {100.0 * (on / off - 1):+.2f} % (runs off {['%.3f' % t for t in times['off']]}, "
                  f"on {['%.3f' % t for t in times['on']]})", flush=True)
            print(f"hackbench {hargs}, source on, kernel.bpf_stats_enabled=1: "
                  f"{hackbench_cost(binary, tmpdir, hargs)}", flush=True)
        else:
            print("hackbench not installed (Debian rt-tests, BENCH_DEBS): context-switch row skipped")

        # 2. no stall, by thread count.
        for target in scenarios:
            raise_limits(target)
            problems, _lim = bt.check_limits(target, procs)
            if problems:
                print(f"{target} threads: skipped: {'; '.join(problems)}")
                continue
            w = bt.Workload(target, procs)
            try:
                made = w.start(timeout=120)
                time.sleep(2)
                walk = run_setup(binary, tmpdir, f"walk-{target}", OFF, False, window)
                src = run_setup(binary, tmpdir, f"bpf-{target}", ON, True, window)
                rows.append((f"{made} threads, no stall", walk, src))
                print(f"{made} threads, no stall: walk-only {walk[0]:.3f} % of a core (thread side "
                      f"{walk[1]:.3f} %); with the source {src[0]:.3f} % (thread side {src[1]:.3f} %)",
                      flush=True)
            finally:
                w.stop()

        # 3. a stall: 10k threads, 16 in D.
        w = bt.Workload(10_000, procs)
        rig = bt.DStateRig()
        rig.WRITERS = 16
        try:
            made = w.start(timeout=120)
            d = rig.setup()
            time.sleep(2)
            stall_walk = "[threads]\nfast_interval = \"1s\"\n" + OFF
            walk = run_setup(binary, tmpdir, "walk-stall", stall_walk, False, window)
            src = run_setup(binary, tmpdir, "bpf-stall", ON, True, window)
            d_now = bt.count_d_threads([rig.writer.pid]) if rig.writer else 0
            rows.append((f"{made} threads, a stall ({d}..{d_now} in D)", walk, src))
            print(f"{made} threads during a stall ({rig.note}): walk-only (every 1 s) {walk[0]:.3f} % of a "
                  f"core (thread side {walk[1]:.3f} %); with the source {src[0]:.3f} % (thread side "
                  f"{src[1]:.3f} %)", flush=True)
        finally:
            rig.teardown()
            w.stop()
    except bt.Interrupted as e:
        print(f"interrupted: {e}")
        return 1
    finally:
        bt.stop_all()
        restore_limits()
        shutil.rmtree(tmpdir, ignore_errors=True)
    print()
    print("| scenario | walk-only: agent | walk-only: thread side | with the source: agent | with the source: thread side |")
    print("|---|---:|---:|---:|---:|")
    for name, walk, src in rows:
        print(f"| {name} | {walk[0]:.3f} % | {walk[1]:.3f} % | {src[0]:.3f} % | {src[1]:.3f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
