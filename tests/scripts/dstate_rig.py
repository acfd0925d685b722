"""Real D-state threads for the benchmarks: O_DIRECT writers throttled to 2 IOPS on a loop device
(bench_threads.py with BENCH_DSTATE=1, bench_bpf.py and bench_node.py during their stall). Everything it makes
is removed by DStateRig.teardown(); what a SIGKILLed run left, by cleanup_stale_rigs()."""
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from bench_common import CHILD_MAX_LIFE_S, count_d_threads, log, spawn, stop_started

# ---------------------------------------------------------------------------------------------
# Optional real D-state threads: O_DIRECT writers throttled to 2 IOPS on a loop device

DSTATE_WRITER = r"""
import ctypes, mmap, os, signal, sys, threading, time
try:
    ctypes.CDLL(None).prctl(1, int(signal.SIGKILL), 0, 0, 0)
except Exception:
    pass
if sys.stdin.readline().strip() != "go":  # sent once this process is in the throttled cgroup
    os._exit(0)
deadline = time.monotonic() + float(sys.argv[1])
def writer(path):
    buf = mmap.mmap(-1, 4096)  # page aligned, as O_DIRECT wants
    buf.write(b"x" * 4096)
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    size = max(4096, os.fstat(fd).st_size // 4096 * 4096)
    off = 0
    while time.monotonic() < deadline:
        os.pwrite(fd, buf, off)
        off = (off + 4096) % size
for p in sys.argv[2:]:
    threading.Thread(target=writer, args=(p,), daemon=True).start()
import select
select.select([0], [], [], float(sys.argv[1]))
os._exit(0)
"""


class DStateRig:
    WRITERS = 4

    def __init__(self):
        self.tmp = None
        self.loop = None
        self.mnt = None
        self.mounted = False
        self.cg = None
        self.devno = None
        self.throttled = False
        self.writer = None
        self.note = ""

    def setup(self):
        for tool in ("losetup", "mkfs.ext4", "mount", "umount"):
            if not shutil.which(tool):
                raise RuntimeError(f"{tool} not found")
        blkio = "/sys/fs/cgroup/blkio"
        if not os.path.exists(os.path.join(blkio, "blkio.throttle.write_iops_device")):
            raise RuntimeError(f"no cgroup v1 blkio throttle at {blkio}")
        self.tmp = tempfile.mkdtemp(prefix=f"swbench-d-{os.getpid()}-")
        img = os.path.join(self.tmp, "disk.img")
        with open(img, "wb") as f:
            f.truncate(128 * 2**20)
        self.loop = subprocess.run(["losetup", "-f", "--show", img], check=True, capture_output=True,
                                   text=True, timeout=30).stdout.strip()
        st = os.stat(self.loop)
        self.devno = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        subprocess.run(["mkfs.ext4", "-q", self.loop], check=True, capture_output=True, timeout=120)
        self.mnt = os.path.join(self.tmp, "mnt")
        os.mkdir(self.mnt)
        subprocess.run(["mount", self.loop, self.mnt], check=True, capture_output=True, timeout=30)
        self.mounted = True
        files = []
        for i in range(self.WRITERS):
            path = os.path.join(self.mnt, f"w{i}")
            with open(path, "wb") as f:  # written (not just allocated) before the throttle
                f.write(b"\0" * 2**20)
                f.flush()
                os.fsync(f.fileno())
            files.append(path)
        self.cg = os.path.join(blkio, f"swbench-{os.getpid()}")
        os.mkdir(self.cg)
        self._write(os.path.join(self.cg, "blkio.throttle.write_iops_device"), f"{self.devno} 2")
        self.throttled = True
        self.writer = spawn("d-state writer", [sys.executable, "-I", "-S", "-c", DSTATE_WRITER,
                                               str(CHILD_MAX_LIFE_S)] + files,
                            kill_first=True, stdin=subprocess.PIPE, stderr=None)
        self._write(os.path.join(self.cg, "cgroup.procs"), str(self.writer.pid))
        with open(f"/proc/{self.writer.pid}/cgroup") as f:
            if f"blkio:/swbench-{os.getpid()}" not in f.read():
                raise RuntimeError("writer did not land in the blkio cgroup")
        self.writer.stdin.write(b"go\n")
        self.writer.stdin.flush()
        deadline = time.monotonic() + 15
        d = 0
        while time.monotonic() < deadline:
            d = count_d_threads([self.writer.pid])
            if d >= 2:
                break
            time.sleep(0.2)
        self.note = (f"D-state rig: {self.WRITERS} O_DIRECT writer threads on ext4 on {self.loop} ({self.devno}), "
                     f"blkio write_iops {self.devno} 2 in {self.cg}; {d} in D when checked")
        return d

    @staticmethod
    def _write(path, value):
        with open(path, "w") as f:
            f.write(value)

    def teardown(self):
        # 1. lift the throttle first, so queued writes complete and nothing stays in D
        if self.throttled:
            try:
                self._write(os.path.join(self.cg, "blkio.throttle.write_iops_device"), f"{self.devno} 0")
                self.throttled = False
            except OSError as e:
                log(f"warning: lifting the throttle on {self.devno}: {e}")
        # 2. the writers
        if self.writer is not None:
            try:
                self.writer.stdin.close()
            except OSError:
                pass
            stop_started(self.writer)
            self.writer = None
        # 3. umount, 4. losetup -d
        if self.mounted:
            for _ in range(20):
                r = subprocess.run(["umount", self.mnt], capture_output=True, timeout=60)
                if r.returncode == 0:
                    self.mounted = False
                    break
                time.sleep(0.5)
            if self.mounted:
                log(f"warning: umount {self.mnt} failed, trying lazy umount")
                if subprocess.run(["umount", "-l", self.mnt], timeout=60).returncode == 0:
                    self.mounted = False
        if self.loop:
            r = subprocess.run(["losetup", "-d", self.loop], capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                log(f"warning: losetup -d {self.loop}: {r.stderr.strip()}")
            self.loop = None
        # 5. the cgroup
        if self.cg and os.path.isdir(self.cg):
            for _ in range(20):
                try:
                    os.rmdir(self.cg)
                    break
                except OSError:
                    time.sleep(0.25)
            else:
                log(f"warning: could not rmdir {self.cg}")
        if self.tmp and not self.mounted:
            shutil.rmtree(self.tmp, ignore_errors=True)


def bench_alive(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"bench_threads" in f.read()
    except OSError:
        return False


def cleanup_stale_rigs():
    """Tear down D-state rigs left by a run of this script that was SIGKILLed (its children died
    with it, by PDEATHSIG, but the throttle, mount, loop device and cgroup stay)."""
    blkio = "/sys/fs/cgroup/blkio"
    for cg in sorted(glob.glob(os.path.join(blkio, "swbench-*"))):
        pid = cg.rsplit("-", 1)[1]
        if not pid.isdigit() or bench_alive(int(pid)):
            continue
        print(f"cleaning up a stale D-state rig of pid {pid}: {cg}")
        try:
            with open(os.path.join(cg, "blkio.throttle.write_iops_device")) as f:
                for line in f.read().splitlines():
                    if line.split():
                        DStateRig._write(os.path.join(cg, "blkio.throttle.write_iops_device"), f"{line.split()[0]} 0")
            with open(os.path.join(cg, "cgroup.procs")) as f:
                for p in f.read().split():
                    if bench_alive(int(p)) or os.path.exists(f"/proc/{p}"):
                        try:
                            os.kill(int(p), signal.SIGKILL)
                        except ProcessLookupError:
                            pass
        except OSError as e:
            log(f"warning: {cg}: {e}")
    for tmp in sorted(glob.glob(os.path.join(tempfile.gettempdir(), "swbench-d-*-*"))):
        pid = os.path.basename(tmp).split("-")[2]
        if not pid.isdigit() or bench_alive(int(pid)):
            continue
        print(f"cleaning up a stale D-state rig of pid {pid}: {tmp}")
        mnt, img = os.path.join(tmp, "mnt"), os.path.join(tmp, "disk.img")
        if os.path.ismount(mnt):
            for _ in range(20):
                if subprocess.run(["umount", mnt], capture_output=True, timeout=60).returncode == 0:
                    break
                time.sleep(0.5)
            else:
                subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=60)
        if os.path.exists(img):
            out = subprocess.run(["losetup", "-j", img], capture_output=True, text=True, timeout=30).stdout
            for line in out.splitlines():
                dev = line.split(":", 1)[0]
                if dev.startswith("/dev/loop"):
                    subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=60)
        if not os.path.ismount(mnt):
            shutil.rmtree(tmp, ignore_errors=True)
    for cg in sorted(glob.glob(os.path.join(blkio, "swbench-*"))):
        pid = cg.rsplit("-", 1)[1]
        if pid.isdigit() and not bench_alive(int(pid)):
            for _ in range(20):
                try:
                    os.rmdir(cg)
                    break
                except OSError:
                    time.sleep(0.25)
            else:
                log(f"warning: could not rmdir {cg}")
