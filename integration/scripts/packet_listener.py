#!/usr/bin/env python3
"""Holds a raw AF_PACKET socket bound to the loopback for every protocol, with PACKET_AUXDATA
on and the loopback in promiscuous mode through a membership; prints "got N" for every frame
and, on SIGUSR1, "opts AUXDATA" (its PACKET_AUXDATA setting). First line: "ready"."""
import select
import signal
import socket
import struct
import sys

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_AUXDATA = 8
PACKET_MR_PROMISC = 1
ETH_P_ALL = 3

out = open(sys.argv[1], "w", buffering=1)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
s.bind(("lo", 0))
s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
lo = socket.if_nametoindex("lo")
s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("iHH8s", lo, PACKET_MR_PROMISC, 0, b""))
asked = []
signal.signal(signal.SIGUSR1, lambda *_: asked.append(1))
print("ready", file=out)
while True:
    if asked:
        asked.clear()
        print(f"opts {s.getsockopt(SOL_PACKET, PACKET_AUXDATA)}", file=out)
    try:
        r, _, _ = select.select([s], [], [], 0.05)
    except InterruptedError:
        continue
    if r:
        print(f"got {len(s.recv(65536))}", file=out)
