"""unix_sockets.py DIR: one process holding every kind of unix socket state cryo restores.

Sets up, then prints "ready" and waits for SIGUSR1; after it, reads everything back and
prints what it got (one line per case), then serves one client on DIR/srv.sock ("ping" ->
"pong") and prints "done". The test dumps and restores it between "ready" and SIGUSR1.
"""
import os, socket, signal, sys
d = sys.argv[1]
path = d + "/srv.sock"
name = b"\0cryo-test-%d" % os.getpid()
# stream socketpair with data queued both ways (5000 bytes one way)
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
a.sendall(b"to-b " * 1000); b.sendall(b"to-a")
# datagram and seqpacket pairs: message boundaries
c, e = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
for m in (b"one", b"two", b"three"): c.send(m)
f, g = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
f.send(b"pkt1"); f.send(b"pkt2")
# a listener on a path with one accepted connection (data queued) and one waiting
L = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); L.bind(path); L.listen(8)
cl = socket.socket(socket.AF_UNIX); cl.connect(path); sv, _ = L.accept()
cl.sendall(b"hello server")
pend = socket.socket(socket.AF_UNIX); pend.connect(path)
# an abstract-named datagram socket with datagrams from an unconnected sender
r = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); r.bind(name)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.sendto(b"d1", name); s.sendto(b"d2", name)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", flush=True)
signal.sigwait([signal.SIGUSR1])
got = b""
while len(got) < 5000: got += b.recv(100000)
print("stream", got == b"to-b " * 1000, a.recv(100), flush=True)
print("dgram", e.recv(100), e.recv(100), e.recv(100), flush=True)
print("seqpacket", g.recv(100), g.recv(100), flush=True)
print("accepted", sv.recv(100), sv.getsockname() == path or sv.getsockname(), flush=True)
acc, _ = L.accept(); pend.send(b"late")
print("pending", acc.recv(100), flush=True)
print("named", r.recv(100), r.recv(100), r.getsockname() == name, flush=True)
n, _ = L.accept()
print("client", n.recv(100), flush=True)
n.send(b"pong")
print("done", flush=True)
