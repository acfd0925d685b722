"""A private dockerd with N busybox `sleep` containers, for the benchmarks (bench_node.py).

Set up as crates/agent/tests/e2e/docker.rs does: own socket, --data-root/--exec-root in a tempdir, its own
containerd, --bridge=none --iptables=false --ip-forward=false --ip-masq=false, cgroupfs driver, an image
`docker import`ed from a tar of /bin/busybox (no registry). Everything it made is removed by `teardown_root`,
also what a SIGKILLed run left (`cleanup_stale`, by the prefix of its tempdir).
"""
import ctypes
import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time

import bench_threads as bt

DOCKER = "/usr/bin/docker"  # Debian's, by absolute path (docker.rs does the same)
DOCKERD = "/usr/sbin/dockerd"
BUSYBOX = "/bin/busybox"
IMAGE = "swbench-busybox:1"
PREFIX = "swbench-node-"
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
