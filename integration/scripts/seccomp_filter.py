"""seccomp_filter.py: installs (with no_new_privs) a seccomp filter that makes getppid()
fail with EPERM, starts a second thread (which inherits it) and a third one that adds a filter
of its own (so the threads' chains differ: 1, 1 and 2 filters), prints "ready <probe>", and on
SIGUSR1 prints "after <probe> <Seccomp: mode>". <probe> is "getppid=RET errno=E"."""
import ctypes, os, signal, struct, sys, time, threading
libc = ctypes.CDLL(None, use_errno=True)
# BPF: load nr; if nr == 110 (getppid) return ERRNO(1) else ALLOW
BPF_LD_W_ABS = 0x20; BPF_JEQ_K = 0x15; BPF_RET_K = 0x06
prog = [(BPF_LD_W_ABS, 0, 0, 0), (BPF_JEQ_K, 0, 1, 110), (BPF_RET_K, 0, 0, 0x00050001), (BPF_RET_K, 0, 0, 0x7fff0000)]
buf = b"".join(struct.pack("HBBI", *i) for i in prog)
cbuf = ctypes.create_string_buffer(buf)
class fprog(ctypes.Structure): _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fp = fprog(len(prog), ctypes.addressof(cbuf))
libc.prctl(38, 1, 0, 0, 0)  # NO_NEW_PRIVS
assert libc.syscall(317, 1, 0, ctypes.byref(fp)) == 0, ctypes.get_errno()
# Blocked before the threads start, so only the main thread's sigwait takes SIGUSR1.
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
t = threading.Thread(target=lambda: time.sleep(1000), daemon=True); t.start()
added = threading.Event()
def own_filter():
    assert libc.syscall(317, 1, 0, ctypes.byref(fp)) == 0, ctypes.get_errno()
    added.set()
    time.sleep(1000)
t2 = threading.Thread(target=own_filter, daemon=True); t2.start(); added.wait()
def probe():
    r = libc.syscall(110); e = ctypes.get_errno()
    return "getppid=%d errno=%d" % (r, e)
print("ready", probe(), flush=True)
signal.sigwait([signal.SIGUSR1])
print("after", probe(), open("/proc/self/status").read().split("Seccomp:")[1].split()[0], flush=True)
