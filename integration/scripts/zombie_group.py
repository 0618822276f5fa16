#!/usr/bin/env python3
"""Run as PID 1 of its own PID namespace (unshare --pid --fork): leads its session, forks A,
which makes its own process group and forks B in it, then exits; B, reparented to this init,
exits too and stays a zombie no one reaps, in a process group whose leader is gone. Writes
"zombie B pgid G leader A status S" (B's process group and exit status, seen through
waitid(WNOWAIT)) first and again on every SIGUSR1."""
import os, signal, sys, time
os.setsid()
out = open(sys.argv[1], "w", buffering=1)
r, w = os.pipe()
go_r, go_w = os.pipe()
a = os.fork()
if a == 0:
    os.setpgid(0, 0)
    b = os.fork()
    if b == 0:
        os.read(go_r, 1)  # until A is gone
        os._exit(7)
    os.write(w, str(b).encode().ljust(16))
    os._exit(0)
os.waitpid(a, 0)
b = int(os.read(r, 16))
os.write(go_w, b"x")
time.sleep(0.3)
asked = []
signal.signal(signal.SIGUSR1, lambda *_: asked.append(1))
def report():
    st = os.waitid(os.P_PID, b, os.WEXITED | os.WNOWAIT)
    print(f"zombie {b} pgid {os.getpgid(b)} leader {a} status {st.si_status}", file=out)
report()
while True:
    time.sleep(0.05)
    if asked:
        asked.clear()
        report()
