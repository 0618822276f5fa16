#!/usr/bin/env python3
"""A process group whose leader is gone (zdtm's session01): this process (its session's
leader) forks X, which makes its own process group; Y and the zombie-to-be Z join X's group;
X exits and is reaped; Z exits and stays a zombie. Prints "ready X" and, on every SIGUSR1,
"Y pgid G sid S zombie pgid G2 status C signal R": Y's and Z's groups, Z's exit status, and
whether a signal sent to group X reached Y."""
import os, signal, time
r, w = os.pipe()
x = os.fork()
if x == 0:
    os.setpgid(0, 0)
    signal.pause()
    os._exit(0)
while os.getpgid(x) != x:
    time.sleep(0.01)
y = os.fork()
if y == 0:
    os.setpgid(0, x)
    signal.signal(signal.SIGUSR2, lambda *_: os.write(w, b"y"))
    while True:
        signal.pause()
z = os.fork()
if z == 0:
    os.setpgid(0, x)
    os._exit(3)
while os.getpgid(y) != x:
    time.sleep(0.01)
os.waitid(os.P_PID, z, os.WEXITED | os.WNOWAIT)
os.kill(x, signal.SIGKILL)
os.waitpid(x, 0)
asked = []
signal.signal(signal.SIGUSR1, lambda *_: asked.append(1))
print("ready", x, flush=True)
while True:
    time.sleep(0.05)
    if asked:
        asked.clear()
        st = os.waitid(os.P_PID, z, os.WEXITED | os.WNOWAIT)
        os.killpg(x, signal.SIGUSR2)
        got = os.read(r, 1)
        print(f"{y} pgid {os.getpgid(y)} sid {os.getsid(y)} zombie pgid {os.getpgid(z)} status {st.si_status} signal {got == b'y'}", flush=True)
