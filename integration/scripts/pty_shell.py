"""pty_shell.py FIFO OUT: an interactive shell on a pty inside the tree. The root opens a pty
(window 37x91, -echo, intr ^G), forks a child that makes the slave its controlling terminal
(setsid + TIOCSCTTY) and runs `sh -i` on it. The root relays: bytes written into FIFO go to
the master, bytes read from the master are appended to OUT. SIGUSR1 pauses / resumes reading
the master (output then queues in the pty). Prints "ready CHILD"."""
import os, sys, fcntl, termios, struct, select, signal
fifo, out = sys.argv[1], sys.argv[2]
m, s = os.openpty()
fcntl.ioctl(s, termios.TIOCSWINSZ, struct.pack("HHHH", 37, 91, 0, 0))
a = termios.tcgetattr(s)
a[3] &= ~termios.ECHO
a[6][termios.VINTR] = b"\x07"
termios.tcsetattr(s, termios.TCSANOW, a)
pid = os.fork()
if pid == 0:
    os.setsid()
    fcntl.ioctl(s, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(s, fd)
    os.close(s)
    os.close(m)
    os.environ["PS1"] = "$ "
    os.execv("/bin/sh", ["sh", "-i"])
os.close(s)
paused = False
def toggle(*_):
    global paused
    paused = not paused
signal.signal(signal.SIGUSR1, toggle)
f = os.open(fifo, os.O_RDWR)  # read-write: never sees EOF
o = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
print("ready", pid, flush=True)
while True:
    try:
        r, _, _ = select.select([f] + ([] if paused else [m]), [], [], 0.2)
    except InterruptedError:
        continue
    if f in r:
        os.write(m, os.read(f, 4096))
    if m in r and not paused:
        try:
            d = os.read(m, 4096)
        except OSError:
            break
        os.write(o, d)
