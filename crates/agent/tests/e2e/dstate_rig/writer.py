import ctypes, mmap, os, sys, threading
mnt, n, name = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
size = int(sys.argv[4]) if len(sys.argv) > 4 else 4096
# Each thread rewrites its own small region: 16 blocks of 4 KiB, or 8 of a larger size.
span = 16 if size <= 4096 else 8
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
libc.prctl.restype = ctypes.c_int
if sys.stdin.buffer.readline() != b"go\n":
    os._exit(3)

def work(i, fd):
    try:
        # PR_SET_NAME names the calling thread only.
        if libc.prctl(15, name, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NAME)")
        buf = mmap.mmap(-1, size)  # page-aligned, as O_DIRECT needs
        buf.write(b"x" * size)
        k = 0
        while not rest.is_set():
            # os.pwrite releases the GIL and passes the mmap's memory as is (no copy).
            os.pwrite(fd, buf, (k % span) * size)
            k += 1
        rest_forever.wait()  # a futex wait: state S, never D
    except BaseException as e:
        sys.stderr.write("writer thread %d: %r\n" % (i, e))
        sys.stderr.flush()
        os._exit(5)

# "rest\n" on stdin (sent by `lift`): each thread ends its write in flight and writes no more.
rest, rest_forever = threading.Event(), threading.Event()
# Every file is opened before any write is queued: an open's directory lookup behind throttled
# writes can wait in D outside the write path (`__ext4_find_entry`), and the tests expect a
# writer in D to be in its write.
fds = [os.open(os.path.join(mnt, "w%d" % i), os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
       for i in range(n)]
for i in range(n):
    threading.Thread(target=work, args=(i, fds[i]), daemon=True).start()
for line in sys.stdin.buffer:
    if line == b"rest\n":
        rest.set()
os._exit(0)
