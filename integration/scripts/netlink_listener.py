#!/usr/bin/env python3
"""Holds a NETLINK_ROUTE socket bound to the link and IPv4 address groups (and a second one
joined to a group beyond the first 32 through NETLINK_ADD_MEMBERSHIP, when the kernel has
such a group), and prints every link event: "event TYPE" (16 = RTM_NEWLINK). On SIGUSR1 it
prints "name PORTID GROUPS" from getsockname. First line: "ready PORTID GROUPS"."""
import select
import signal
import socket
import struct
import sys

RTMGRP_LINK = 1
RTMGRP_IPV4_IFADDR = 0x10

out = open(sys.argv[1], "w", buffering=1)
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
s.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR))
asked = []
signal.signal(signal.SIGUSR1, lambda *_: asked.append(1))
pid, groups = s.getsockname()
print(f"ready {pid} {groups}", file=out)
while True:
    if asked:
        asked.clear()
        pid, groups = s.getsockname()
        print(f"name {pid} {groups}", file=out)
    try:
        r, _, _ = select.select([s], [], [], 0.05)
    except InterruptedError:
        continue
    if not r:
        continue
    data = s.recv(65536)
    off = 0
    while off + 16 <= len(data):
        length, typ = struct.unpack_from("=IH", data, off)
        print(f"event {typ}", file=out)
        if length < 16:
            break
        off += (length + 3) & ~3
