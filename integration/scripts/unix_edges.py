"""unix_edges.py CASE DIR: one process holding unix sockets in less common states.

Sets up CASE in DIR, prints "ready" and waits for SIGUSR1; the test dumps and restores it
meanwhile. Then it checks what a program would see and prints one line per check ("ok ..."
or "BAD ..."), then "done".

CASE is one of:
  scm    files passed in queued messages (SCM_RIGHTS) and closed by the sender: a pipe's
         read end, an epoll watching a socket, a regular file at an offset (datagram), two
         pipe ends in one seqpacket message, a pipe's write end in a stream
  names  a relative name bound in a subdirectory (mode and owner changed), a listener bound
         in a directory removed since (with an accepted connection), a datagram socket
         whose file was replaced by a FIFO (with a connected client)
  states unconnected stream and seqpacket sockets, a datagram socket connected to itself, a
         datagram queued by a peer that closed, datagrams from senders that are gone
  loop   sockets in flight in their own queues (zdtm scm06): a datagram socketpair with
         abstract names, each end passed over each end; and two pairs each holding in its
         queue an end of the other
"""
import array, os, select, signal, socket, stat, sys

case, d = sys.argv[1], sys.argv[2]
os.chdir(d)
AF, DG, ST, SP = socket.AF_UNIX, socket.SOCK_DGRAM, socket.SOCK_STREAM, socket.SOCK_SEQPACKET


def check(what, good):
    print(("ok " if good else "BAD ") + what, flush=True)


def recv_fds(sk, n):
    msg, fds, _, _ = socket.recv_fds(sk, 100, n)
    return msg, fds


if case == "scm":
    a, b = socket.socketpair(AF, DG)
    pr, pw = os.pipe()
    socket.send_fds(a, [b"pipe"], [pr])
    os.close(pr)
    w1, w2 = socket.socketpair(AF, ST)
    ep = select.epoll()
    ep.register(w2.fileno(), select.EPOLLIN)
    w1.send(b"x")
    socket.send_fds(a, [b"epoll"], [ep.fileno()])
    ep.close()
    f = os.open(d + "/data", os.O_RDWR | os.O_CREAT)
    os.write(f, b"0123456789")
    os.lseek(f, 4, os.SEEK_SET)
    socket.send_fds(a, [b"file"], [f])
    os.close(f)
    sa, sb = socket.socketpair(AF, SP)
    qr, qw = os.pipe()
    socket.send_fds(sa, [b"both"], [qr, qw])
    os.close(qr)
    os.close(qw)
    ta, tb = socket.socketpair(AF, ST)
    rr, rw = os.pipe()
    socket.send_fds(ta, [b"stream-fd"], [rw])
    os.close(rw)
elif case == "names":
    os.makedirs("sub/inner")
    os.chdir("sub")
    rel = socket.socket(AF, DG)
    rel.bind("rel.sock")
    relc = socket.socket(AF, DG)
    relc.connect("rel.sock")
    relc.send(b"r1")
    os.chmod("rel.sock", 0o640)
    os.chown("rel.sock", 12345, 23456)
    L = socket.socket(AF, ST)
    L.bind("inner/l.sock")
    L.listen(4)
    lc = socket.socket(AF, ST)
    lc.connect("inner/l.sock")
    ls_, _ = L.accept()
    os.unlink("inner/l.sock")
    os.rmdir("inner")
    os.chdir(d)
    g = socket.socket(AF, DG)
    g.bind(d + "/ghost.sock")
    gc = socket.socket(AF, DG)
    gc.connect(d + "/ghost.sock")
    os.unlink(d + "/ghost.sock")
    os.mkfifo(d + "/ghost.sock")
elif case == "states":
    u1 = socket.socket(AF, ST)
    u2 = socket.socket(AF, SP)
    abstract = b"\0cryo-edge-%d" % os.getpid()
    u2.bind(abstract)
    me = socket.socket(AF, DG)
    me.bind(d + "/self.sock")
    me.connect(d + "/self.sock")
    me.send(b"me")
    oa, ob = socket.socketpair(AF, DG)
    ob.send(b"from the dead")
    ob.close()
    named = socket.socket(AF, DG)
    named.bind(d + "/named.sock")
    for i in range(3):
        t = socket.socket(AF, DG)
        t.sendto(b"s%d" % i, d + "/named.sock")
        t.close()
elif case == "loop":
    ska = socket.socketpair(AF, DG)
    names = [b"\0cryo-loop-%d-%d" % (os.getpid(), i) for i in range(2)]
    for i in range(2):
        ska[i].bind(names[i])
    for i in range(2):
        for j in range(2):
            socket.send_fds(ska[i], [b"s"], [ska[j].fileno()])
    x1, x2 = socket.socketpair(AF, DG)
    y1, y2 = socket.socketpair(AF, DG)
    socket.send_fds(x1, [b"y1"], [y1.fileno()])
    socket.send_fds(y1, [b"x2"], [x2.fileno()])
else:
    sys.exit("unknown case " + case)

signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", flush=True)
signal.sigwait([signal.SIGUSR1])

if case == "scm":
    m, fds = recv_fds(b, 1)
    os.write(pw, b"through the pipe")
    check("pipe read end passed", m == b"pipe" and os.read(fds[0], 100) == b"through the pipe")
    m, fds = recv_fds(b, 1)
    ev = select.epoll.fromfd(fds[0]).poll(0)
    check("epoll passed, still watching", m == b"epoll" and ev == [(w2.fileno(), select.EPOLLIN)])
    m, fds = recv_fds(b, 1)
    check("file passed at its offset", m == b"file" and os.read(fds[0], 100) == b"456789")
    m, fds = recv_fds(sb, 2)
    os.write(fds[1], b"both ends")
    check("two fds in one seqpacket message", m == b"both" and os.read(fds[0], 100) == b"both ends")
    m, fds = recv_fds(tb, 1)
    os.write(fds[0], b"stream")
    check("fd passed in a stream", m == b"stream-fd" and os.read(rr, 100) == b"stream")
elif case == "names":
    st = os.stat(d + "/sub/rel.sock")
    check("relative name kept", rel.getsockname() == "rel.sock")
    check(
        "mode and owner kept",
        stat.S_ISSOCK(st.st_mode) and st.st_mode & 0o777 == 0o640 and (st.st_uid, st.st_gid) == (12345, 23456),
    )
    relc.send(b"r2")
    check("relative name queue and peer", rel.recv(100) == b"r1" and rel.recv(100) == b"r2")
    lc.send(b"hi")
    check("listener in a removed directory", ls_.recv(100) == b"hi" and L.getsockname() == "inner/l.sock")
    check("removed directory stays removed", not os.path.exists(d + "/sub/inner"))
    gc.send(b"g1")
    check("deleted socket reached by its peer", g.recv(100) == b"g1")
    check("the FIFO in its place stays", stat.S_ISFIFO(os.stat(d + "/ghost.sock").st_mode))
    left = [n for n in os.listdir(d) + os.listdir(d + "/sub") if n.startswith(".cryo")]
    check("nothing left behind " + str(left), not left)
elif case == "states":
    u2.listen(1)
    c = socket.socket(AF, SP)
    c.connect(abstract)
    acc, _ = u2.accept()
    c.send(b"late")
    check("unconnected seqpacket listens after", acc.recv(100) == b"late")
    try:
        u1.getpeername()
        connected = True
    except OSError:
        connected = False
    check("unconnected stream stays unconnected", not connected)
    check("datagram connected to itself", me.recv(100) == b"me" and me.send(b"again") == 5 and me.recv(100) == b"again")
    check("datagram from a closed peer", oa.recv(100) == b"from the dead")
    check("datagrams from gone senders", [named.recv(100) for _ in range(3)] == [b"s0", b"s1", b"s2"])
elif case == "loop":
    skc, got = ska[0], []
    for i in range(3):
        _, fds = recv_fds(skc, 1)
        skc = socket.socket(fileno=fds[0])
        got.append(skc.getsockname() == names[i % 2])
    check("each end passed over each end " + str(got), got == [True] * 3)
    m, fds = recv_fds(x2, 1)
    socket.socket(fileno=fds[0]).send(b"q")
    m2, fds2 = recv_fds(y2, 1)
    x1.send(b"p")
    ok = (m, m2) == (b"y1", b"x2") and y2.recv(10) == b"q" and os.read(fds2[0], 10) == b"p"
    check("two pairs holding each other's ends", ok)
print("done", flush=True)
