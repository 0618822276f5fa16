"""guard_pages.py: guard regions (zdtm's maps12): 4 private anonymous pages filled with
"A".."D", pages 1 and 3 made guard pages (madvise MADV_GUARD_INSTALL). Prints "ready", then
on every SIGUSR1 one line: which pages /proc/self/pagemap marks as guard (bit 58), the first
byte of pages 0 and 2, and whether a forked child writing to page 1 dies of SIGSEGV."""
import ctypes, mmap, os, signal, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
P = 4096
a = libc.mmap(None, 4 * P, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
for i in range(4):
    ctypes.memset(a + i * P, 0x41 + i, P)
for i in (1, 3):
    if libc.madvise(a + i * P, P, 102) != 0:
        raise OSError(ctypes.get_errno(), "madvise(MADV_GUARD_INSTALL)")


def report():
    with open("/proc/self/pagemap", "rb") as pm:
        guards = []
        for i in range(4):
            pm.seek((a // P + i) * 8)
            guards.append(struct.unpack("<Q", pm.read(8))[0] >> 58 & 1)
    data = [ctypes.string_at(a + i * P, 1).decode() for i in (0, 2)]
    pid = os.fork()
    if pid == 0:
        ctypes.memset(a + P, 0, 1)
        os._exit(0)
    _, st = os.waitpid(pid, 0)
    segv = os.WIFSIGNALED(st) and os.WTERMSIG(st) == signal.SIGSEGV
    print("guards", guards, "data", data, "segv", segv, flush=True)


signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", flush=True)
while True:
    signal.sigwait([signal.SIGUSR1])
    report()
