"""ghost_rofs.py DIR: deleted files on read-only mounts (zdtm's ghost_on_rofs). Mounts (in
the mount namespace it runs in; the caller unmounts them) a tmpfs on DIR/ro and
binds it on DIR/bind; opens a file in each (read-only), writes "ghost N", deletes both, then
makes both mounts read-only (the bind also nosuid). Prints "ready", then on SIGUSR1:
"read b'ghost 1' b'ghost 2' rofs True left []" (what the fds read, whether creating a file
on the mount still fails with EROFS, and what is left in the directory)."""
import errno, os, signal, subprocess, sys
d = sys.argv[1]
ro, bind = d + "/ro", d + "/bind"
os.makedirs(ro)
os.makedirs(bind)
subprocess.run(["mount", "-t", "tmpfs", "cryo-ro", ro], check=True)
subprocess.run(["mount", "--bind", ro, bind], check=True)
fds = []
for i, p in enumerate([ro + "/ghost1", bind + "/ghost2"], 1):
    with open(p, "w") as f:
        f.write("ghost %d" % i)
    fds.append(os.open(p, os.O_RDONLY))
    os.unlink(p)
subprocess.run(["mount", "-o", "remount,bind,ro", ro], check=True)
subprocess.run(["mount", "-o", "remount,bind,ro,nosuid", bind], check=True)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", flush=True)
signal.sigwait([signal.SIGUSR1])
got = [os.pread(fd, 100, 0) for fd in fds]
try:
    open(ro + "/new", "w")
    rofs = False
except OSError as e:
    rofs = e.errno == errno.EROFS
print("read", *got, "rofs", rofs, "left", sorted(os.listdir(ro)), flush=True)
