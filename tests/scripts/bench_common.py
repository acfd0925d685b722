"""What the benchmarks share: processes started and stopped by PID, what /proc says of them and of the
machine's limits, and a scraper of /metrics (bench_threads.py, bench_bpf.py, bench_node.py, docker_rig.py,
dstate_rig.py). Standard library only."""
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST = "127.0.0.1"
CHILD_MAX_LIFE_S = 3600  # every child also exits by itself after this


# Started processes, stopped in reverse order by stop_all(). Each entry: (name, Popen, kill_first).
STARTED = []


class Interrupted(Exception):
    pass


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def _on_signal(signum, _frame):
    raise Interrupted(f"signal {signal.Signals(signum).name}")


def _pdeathsig():
    """preexec_fn: the child gets SIGKILL if this script dies (even by SIGKILL)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def spawn(name, argv, kill_first=False, **kw):
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("stdout", subprocess.DEVNULL)
    kw.setdefault("stderr", subprocess.DEVNULL)
    p = subprocess.Popen(argv, preexec_fn=_pdeathsig, **kw)
    STARTED.append((name, p, kill_first))
    return p


def stop(p, kill_first=False, grace=10.0):
    """Stop one process we started, by its PID: SIGTERM (or SIGKILL), bounded wait, SIGKILL."""
    if p.poll() is not None:
        return
    try:
        os.kill(p.pid, signal.SIGKILL if kill_first else signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            log(f"warning: pid {p.pid} did not exit after SIGKILL (in D state?)")


def stop_started(p):
    for i, (name, q, kf) in enumerate(STARTED):
        if q is p:
            stop(q, kf)
            del STARTED[i]
            return


def stop_all():
    while STARTED:
        name, p, kf = STARTED.pop()
        try:
            stop(p, kf)
        except Exception as e:  # keep cleaning up
            log(f"warning: stopping {name} (pid {p.pid}): {e}")


# ---------------------------------------------------------------------------------------------
# /proc helpers

def cpu_ns(pid):
    """CPU time of all threads of pid, from /proc/<pid>/task/*/schedstat (first field, ns)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            pass  # thread exited between listdir and open
    return total


def pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def count_tasks(pid_list=None):
    n = 0
    for pid in pid_list if pid_list is not None else pids():
        try:
            n += len(os.listdir(f"/proc/{pid}/task"))
        except (FileNotFoundError, ProcessLookupError):
            pass
    return n


def count_d_threads(pid_list=None):
    n = 0
    for pid in pid_list if pid_list is not None else pids():
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except (FileNotFoundError, ProcessLookupError):
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                    s = f.read()
            except (FileNotFoundError, ProcessLookupError):
                continue
            i = s.rfind(b")")
            if i >= 0 and s[i + 2:i + 3] == b"D":
                n += 1
    return n


def read_int(path, default=None):
    try:
        with open(path) as f:
            v = f.read().strip()
        return int(v) if v != "max" else None
    except (OSError, ValueError):
        return default


def pids_cgroup_limit():
    """Smallest pids.max on this process's pids cgroup path (v1 or v2), or None."""
    best = None
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, ctrls, path = parts
        if "pids" in ctrls.split(","):
            base = "/sys/fs/cgroup/pids"
        elif hid == "0" and ctrls == "":
            base = "/sys/fs/cgroup/unified" if os.path.isdir("/sys/fs/cgroup/unified") else "/sys/fs/cgroup"
        else:
            continue
        p = path.rstrip("/")
        while True:
            v = read_int(f"{base}{p}/pids.max")
            if v is not None:
                best = v if best is None else min(best, v)
            if not p:
                break
            p = p.rsplit("/", 1)[0]
    return best


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def mem_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_limits(target, nprocs):
    """Problems that would stop `target` more threads from being created, as strings."""
    import resource
    problems = []
    now = count_tasks()
    need = now + target + 500
    tmax = read_int("/proc/sys/kernel/threads-max")
    pmax = read_int("/proc/sys/kernel/pid_max")
    if tmax and need > tmax:
        problems.append(f"kernel.threads-max {tmax} < {need} needed")
    if pmax and need > pmax:
        problems.append(f"kernel.pid_max {pmax} < {need} needed")
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if os.geteuid() != 0 and soft != resource.RLIM_INFINITY and need > soft:
        problems.append(f"ulimit -u {soft} < {need} needed")
    cg = pids_cgroup_limit()
    if cg is not None and need > cg:
        problems.append(f"pids cgroup pids.max {cg} < {need} needed")
    per_proc = -(-target // nprocs)
    maps = read_int("/proc/sys/vm/max_map_count")
    if maps and per_proc * 2 + 1000 > maps:
        problems.append(f"vm.max_map_count {maps} too small for {per_proc} threads/process")
    avail = mem_available()
    est = nprocs * 12 * 2**20 + target * 96 * 1024
    if avail is not None and est > avail * 0.8:
        problems.append(f"~{est >> 20} MiB needed, {avail >> 20} MiB available")
    return problems, {"tasks_now": now, "threads-max": tmax, "pid_max": pmax, "ulimit -u": soft,
                      "pids.max": cg, "max_map_count": maps}



# ---------------------------------------------------------------------------------------------
# HTTP

def port_in_use(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def wait_listening(proc, port, timeout=30):
    """True when port accepts connections; False if proc exited first or the time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if port_in_use(port):
            return True
        time.sleep(0.1)
    return False


class Scraper:
    def __init__(self, port, timeout=60):
        self.port, self.timeout, self.conn = port, timeout, None

    def get(self):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
            try:
                self.conn.request("GET", "/metrics", headers={"Accept": "text/plain;version=0.0.4"})
                r = self.conn.getresponse()
                body = r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status} from {HOST}:{self.port}/metrics")
                return body.decode("utf-8", "replace")
            except (http.client.HTTPException, ConnectionError):
                self.close()
                if attempt:
                    raise

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


LINE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_sum(text, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`; None when there is none."""
    total, found = 0.0, False
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = LINE_RE.match(line)
        if not m or m.group(1) != name:
            continue
        ls = dict(LABEL_RE.findall(m.group(2) or ""))
        if all(ls.get(k) == v for k, v in labels.items()):
            try:
                total += float(m.group(3))
                found = True
            except ValueError:
                pass
    return total if found else None


def stallwatch_binary(explicit):
    if explicit:
        return explicit, None
    path = os.path.join(ROOT, "target/release/stallwatch")
    if os.path.exists(path):
        newest = 0.0
        for d, _, fs in os.walk(os.path.join(ROOT, "crates")):
            for f in fs:
                if f.endswith(".rs") or f == "Cargo.toml":
                    newest = max(newest, os.path.getmtime(os.path.join(d, f)))
        stale = newest > os.path.getmtime(path)
        return path, ("target/release/stallwatch is older than the sources under crates/ (measuring it as built)"
                      if stale else None)
    if not shutil.which("cargo"):
        return None, "target/release/stallwatch missing and cargo not found"
    log("target/release/stallwatch missing: cargo build --release -p stallwatch")
    r = subprocess.run(["cargo", "build", "--release", "-p", "stallwatch"], cwd=ROOT, timeout=3600)
    if r.returncode != 0 or not os.path.exists(path):
        return None, "cargo build --release -p stallwatch failed"
    return path, None
