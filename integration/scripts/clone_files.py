"""clone_files.py: a parent and a child created with clone(CLONE_FILES) share one fd table.
Prints "ready CHILD", waits for SIGUSR1; then the child opens /dev/null and tells the parent the
fd number through a pipe, and the parent prints "child opened FD LINK" (seen in its own table)."""
import os, signal, ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
# clone(CLONE_FILES|SIGCHLD) through syscall: child shares the fd table
CLONE_FILES = 0x400
r, w = os.pipe()
# Blocked before the clone: the child must not die of a SIGUSR1 sent before it blocks it.
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
pid = libc.syscall(56, CLONE_FILES | signal.SIGCHLD, 0, 0, 0, 0)
if pid == 0:
    # child: waits, then opens a file; the parent must see the new fd
    signal.sigwait([signal.SIGUSR1])
    fd = os.open("/dev/null", os.O_RDONLY)
    os.write(w, b"%d\n" % fd)
    time.sleep(1000)
    os._exit(0)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", pid, flush=True)
signal.sigwait([signal.SIGUSR1])
os.kill(pid, signal.SIGUSR1)
fd = int(os.read(r, 100))
print("child opened", fd, os.readlink("/proc/self/fd/%d" % fd), flush=True)
