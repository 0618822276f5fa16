#!/usr/bin/env python3
"""Holds an ICMP echo ("ping") socket, a raw ICMP socket bound to 127.0.0.14 with an ICMP type
filter, a raw UDP socket connected to 127.0.0.10 and a raw IPv6 IPPROTO_RAW socket. First line:
"ready IDENT" (the ping socket's echo id). On SIGUSR1 it prints what it has: "ident N",
"filter N", "raw ADDR", "peer ADDR", "hdrincl N", then sends an echo request to 127.0.0.1 on
the ping socket and prints "reply TYPE" for the answer (0: echo reply) or "noreply"."""
import os
import signal
import socket
import struct
import sys
import time

SOL_RAW = 255
ICMP_FILTER = 1
ICMP_TIMESTAMP = 13

out = open(sys.argv[1], "w", buffering=1)
ping = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
ping.bind(("127.0.0.1", 0))
ping.settimeout(3)
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
raw.bind(("127.0.0.14", 0))
raw.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("I", 1 << ICMP_TIMESTAMP))
rudp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
rudp.connect(("127.0.0.10", 0))
raw6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
asked = []
signal.signal(signal.SIGUSR1, lambda *_: asked.append(1))
print(f"ready {ping.getsockname()[1]}", file=out)
while True:
    # Polled, not signal.pause(): a signal that comes before a restored pause() is entered
    # again runs the handler and leaves pause() waiting for the next one.
    time.sleep(0.05)
    if not asked:
        continue
    asked.clear()
    print(f"ident {ping.getsockname()[1]}", file=out)
    (f,) = struct.unpack("I", raw.getsockopt(SOL_RAW, ICMP_FILTER, 4))
    print(f"filter {f}", file=out)
    print(f"raw {raw.getsockname()[0]}", file=out)
    # getpeername() says ENOTCONN for a raw socket (no peer port): the kernel's table has it.
    ino = str(os.fstat(rudp.fileno()).st_ino)
    for line in open("/proc/self/net/raw").readlines()[1:]:
        f = line.split()
        if f[9] == ino:
            print(f"peer {socket.inet_ntoa(struct.pack('<I', int(f[2].split(':')[0], 16)))}", file=out)
    print(f"hdrincl {raw6.getsockopt(socket.IPPROTO_IPV6, 36)}", file=out)
    req = struct.pack("!BBHHH", 8, 0, 0, 0, 1) + b"cryo" * 8
    ping.sendto(req, ("127.0.0.1", 0))
    try:
        print(f"reply {ping.recv(1024)[0]}", file=out)
    except socket.timeout:
        print("noreply", file=out)
