#!/usr/bin/env python3
"""A program writing to a log socket it does not own (like syslog's /dev/log): a datagram
unix socket connected to PATH. Each SIGUSR1 sends "line N". First line of OUT: "ready".

usage: log_client.py PATH OUT"""
import signal
import socket
import sys
import time

s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect(sys.argv[1])
out = open(sys.argv[2], "w", buffering=1)
n = [0]


def send(*_):
    n[0] += 1
    s.send(f"line {n[0]}".encode())
    print(f"sent {n[0]}", file=out)


signal.signal(signal.SIGUSR1, send)
print("ready", file=out)
while True:
    time.sleep(1)
