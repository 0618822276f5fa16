# Holds /proc/PID (a directory fd, and its working directory) and /proc/PID/stat of a child
# it killed and reaped (zdtm's unhashed_proc, remap_dead_pid); on SIGUSR1 reports whether both
# fds are still valid, what the directory fd and the cwd name, and whether that PID is free
# (integration/tests/pidfds.rs).
import os, signal

child = os.fork()
if child == 0:
    signal.pause()
    os._exit(0)
d = os.open("/proc/%d" % child, os.O_RDONLY | os.O_DIRECTORY)
st = os.open("/proc/%d/stat" % child, os.O_RDONLY)
os.chdir("/proc/%d" % child)
os.kill(child, signal.SIGKILL)
os.waitpid(child, 0)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", child, flush=True)
signal.sigwait([signal.SIGUSR1])

def valid(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False

free = not os.path.exists("/proc/%d" % child)
print(valid(d), valid(st), os.readlink("/proc/self/fd/%d" % d), free,
      os.readlink("/proc/self/cwd") == os.readlink("/proc/self/fd/%d" % d), flush=True)
