#!/usr/bin/env python3
"""Run as PID 1 of its own PID namespace (unshare --pid --fork): zdtm's zombie_leader. It
leads its session and forks T; T forks Z, which calls setsid(), forks G and exits: Z stays a
zombie (T never reaps it) leading a session whose only live member is G, an orphan
reparented to this init. Writes "G sid S child C zombie Z sid S2 status X" (G's session,
whether G is this init's child, Z's session and exit status as T sees it) first and again
on every SIGUSR1; G and T live on."""
import os, signal, sys, time
os.setsid()
out = open(sys.argv[1], "w", buffering=1)
r, w = os.pipe()
rz, wz = os.pipe()
r2, w2 = os.pipe()
t = os.fork()
if t == 0:
    z = os.fork()
    if z == 0:
        os.setsid()
        g = os.fork()
        if g == 0:
            while True:
                time.sleep(1)
        os.write(w, str(g).encode().ljust(16))
        os._exit(3)
    os.write(wz, str(z).encode().ljust(16))

    def status(*_):
        st = os.waitid(os.P_PID, z, os.WEXITED | os.WNOWAIT)
        os.write(w2, str(st.si_status).encode().ljust(16))

    signal.signal(signal.SIGUSR2, status)
    while True:
        time.sleep(1)
g = int(os.read(r, 16))
z = int(os.read(rz, 16))
asked = []
signal.signal(signal.SIGUSR1, lambda *_: asked.append(1))


def report():
    try:
        child = os.waitid(os.P_PID, g, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        child = False
    os.kill(t, signal.SIGUSR2)
    st = int(os.read(r2, 16))
    print(f"{g} sid {os.getsid(g)} child {child} zombie {z} sid {os.getsid(z)} status {st}", file=out)


time.sleep(0.3)
report()
while True:
    time.sleep(0.05)
    if asked:
        asked.clear()
        report()
