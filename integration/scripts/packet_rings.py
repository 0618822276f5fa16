#!/usr/bin/env python3
"""In a network namespace of its own (loopback up): a raw AF_PACKET socket bound to the
loopback with a receive ring (2 blocks of 4096, 4 frames of 2048) and a transmit ring
(1 block, 2 frames) mapped shared, a SOCK_PACKET socket bound to "lo", an unbound one, and
one bound to a bridge whose name has the 14 bytes a SOCK_PACKET address holds.
First line: "ready ADDR" (the ring mapping's address). On SIGUSR1 it sends a UDP datagram
to 127.0.0.1 and prints "map ADDR INODE_MATCH" (its mapping at ADDR is of the socket it holds),
"rx N" (frames the receive ring holds for the program), "spkt NAME TYPE" for the three SOCK_PACKET
sockets (bound name, SO_TYPE) and "spkt-rx N" (bytes the bound one received)."""
import ctypes
import mmap
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_TX_RING = 13
SOCK_PACKET = 10
ETH_P_ALL = 3
TP_STATUS_USER = 1

out = open(sys.argv[1], "w", buffering=1)
libc = ctypes.CDLL(None, use_errno=True)
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
# A name of 14 bytes: all a SOCK_PACKET address holds (no room for its NUL).
LONG = "cryo-bridge-14"
subprocess.run(["ip", "link", "add", LONG, "type", "bridge"], check=True)

rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
rx.bind(("lo", 0))
# tpacket_req: block size, block count, frame size, frame count (TPACKET_V1).
rx.setsockopt(SOL_PACKET, PACKET_RX_RING, struct.pack("4I", 4096, 2, 2048, 4))
rx.setsockopt(SOL_PACKET, PACKET_TX_RING, struct.pack("4I", 4096, 1, 2048, 2))
ring = mmap.mmap(rx.fileno(), 3 * 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
addr = ctypes.addressof(ctypes.c_char.from_buffer(ring))


def spkt_bound(dev=b"lo"):
    s = socket.socket(socket.AF_PACKET, SOCK_PACKET, socket.htons(ETH_P_ALL))
    sa = struct.pack("H14s", socket.AF_PACKET, dev)
    if libc.bind(s.fileno(), sa, len(sa)) != 0:
        raise OSError(ctypes.get_errno(), "bind SOCK_PACKET")
    return s


spkt = spkt_bound()
spkt2 = socket.socket(socket.AF_PACKET, SOCK_PACKET, socket.htons(ETH_P_ALL))
spkt3 = spkt_bound(LONG.encode())


def name(s):
    buf = ctypes.create_string_buffer(17)
    ln = ctypes.c_uint(16)
    if libc.getsockname(s.fileno(), buf, ctypes.byref(ln)) != 0:
        return "?"
    return buf.raw[2:].split(b"\0")[0].decode() or "-"


def report():
    # Frames received before the dump are not the restored ring's: drain the bound socket.
    while select.select([spkt], [], [], 0)[0]:
        spkt.recv(65536)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"ring", ("127.0.0.1", 9))
    u.close()
    ino = os.fstat(rx.fileno()).st_ino
    match = False
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            start = int(parts[0].split("-")[0], 16)
            if start == addr and int(parts[4]) == ino:
                match = True
    print(f"map {addr:x} {int(match)}", file=out)
    n = 0
    for _ in range(100):
        n = sum(
            1
            for i in range(4)
            if struct.unpack_from("Q", ring, (i // 2) * 4096 + (i % 2) * 2048)[0] & TP_STATUS_USER
        )
        if n:
            break
        time.sleep(0.05)
    print(f"rx {n}", file=out)
    for s in (spkt, spkt2, spkt3):
        print(f"spkt {name(s)} {s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)}", file=out)
    got = 0
    if select.select([spkt], [], [], 5)[0]:
        got = len(spkt.recv(65536))
    print(f"spkt-rx {got}", file=out)
    print("done", file=out)


signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print(f"ready {addr:x}", file=out)
while True:
    signal.sigwait([signal.SIGUSR1])
    report()
