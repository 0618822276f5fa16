# Holds pidfds of its child, of itself and of a reaped process (twice), and its child's
# /proc/PID/stat open; on SIGUSR1 reports what they do now (integration/tests/pidfds.rs).
# With argv[1] == "outside" it holds a pidfd of its parent instead (outside the tree).
import os, signal, sys

if len(sys.argv) > 1 and sys.argv[1] == "outside":
    p = os.pidfd_open(os.getppid())
    print("ready", flush=True)
    signal.pause()

child = os.fork()
if child == 0:
    signal.pause()
    os._exit(0)
dead = os.fork()
if dead == 0:
    os._exit(7)
dead_fds = [os.pidfd_open(dead), os.pidfd_open(dead, 0o4000)]  # PIDFD_NONBLOCK
os.waitpid(dead, 0)
child_fd = os.pidfd_open(child)
self_fd = os.pidfd_open(os.getpid())
stat = os.open("/proc/%d/stat" % child, os.O_RDONLY)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", child, flush=True)
signal.sigwait([signal.SIGUSR1])

ino = lambda fd: os.fstat(fd).st_ino
first = os.pread(stat, 100, 0).split()[0].decode()
signal.pidfd_send_signal(self_fd, 0)
try:
    signal.pidfd_send_signal(dead_fds[0], 0)
    dead_state = "alive?"
except ProcessLookupError:
    dead_state = "gone"
nonblock = bool(int(open("/proc/self/fdinfo/%d" % dead_fds[1]).read().split("flags:")[1].split()[0], 8) & 0o4000)
signal.pidfd_send_signal(child_fd, signal.SIGTERM)
_, status = os.waitpid(child, 0)
print(first == str(child), dead_state, ino(dead_fds[0]) == ino(dead_fds[1]),
      ino(dead_fds[0]) != ino(child_fd), nonblock, os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM,
      flush=True)
