#!/usr/bin/env python3
"""console_socket.py SOCK OUT IN: a console-socket receiver for runc's terminal containers
(what recvtty, conmon or the containerd shim do). Listens on the unix socket SOCK; every
connection brings one pty master (SCM_RIGHTS; runc names it "/dev/ptmx" at run time and
"orphan-pts-master" after a restore), which replaces the previous one. Everything the
master reads is appended to OUT; whatever is written to the FIFO IN goes to the master. Each
fd received is logged as a line "fd NAME" in OUT.events. Runs until killed."""
import os
import select
import socket
import sys

sock_path, out_path, in_path = sys.argv[1:4]
if os.path.exists(sock_path):
    os.unlink(sock_path)
if not os.path.exists(in_path):
    os.mkfifo(in_path)
lsk = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
lsk.bind(sock_path)
lsk.listen(4)
fifo = os.open(in_path, os.O_RDWR | os.O_NONBLOCK)  # read-write: never EOF
out = open(out_path, "ab", buffering=0)
events = open(out_path + ".events", "a", buffering=1)
master = None
while True:
    fds = [lsk, fifo] + ([master] if master is not None else [])
    ready, _, _ = select.select(fds, [], [])
    if lsk in ready:
        conn, _ = lsk.accept()
        try:
            msg, got, _, _ = socket.recv_fds(conn, 4096, 4)
        finally:
            conn.close()
        events.write(f"fd {msg.decode(errors='replace')} {len(got)}\n")
        for fd in got[1:]:
            os.close(fd)
        if got:
            if master is not None:
                os.close(master)
            master = got[0]
    if master is not None and master in ready:
        try:
            data = os.read(master, 65536)
        except OSError:
            data = b""
        if data:
            out.write(data)
        else:  # the slave side hung up: wait for the next master
            os.close(master)
            master = None
    if fifo in ready:
        try:
            data = os.read(fifo, 65536)
        except BlockingIOError:
            data = b""
        if data and master is not None:
            os.write(master, data)
