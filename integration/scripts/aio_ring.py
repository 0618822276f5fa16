"""aio_ring.py: an AIO ring (zdtm's aio01): io_setup(64), then nr+2 writes to /dev/null
submitted, every second one's event read, so the ring's head and tail are mid-way. Prints
"ready" and "ring nr N head H tail T" as read from the ring; then on SIGUSR1 that line again,
submits one more write and prints "after DH DT events E": how far head and tail moved (0, 1)
and how many events io_getevents returns (those left, and the new one)."""
import ctypes, os, signal, struct
libc = ctypes.CDLL(None, use_errno=True)
SYS_io_setup, SYS_io_submit, SYS_io_getevents = 206, 209, 208
libc.syscall.restype = ctypes.c_long
ctx = ctypes.c_ulong(0)
if libc.syscall(SYS_io_setup, 64, ctypes.byref(ctx)) < 0:
    raise OSError(ctypes.get_errno(), "io_setup")
fd = os.open("/dev/null", os.O_WRONLY)
buf = ctypes.create_string_buffer(1)
iocb = ctypes.create_string_buffer(struct.pack("=QIIHhIQQqQII", 0, 0, 0, 1, 0, fd, ctypes.addressof(buf), 1, 0, 0, 0, 0), 64)
ptrs = (ctypes.c_void_p * 1)(ctypes.addressof(iocb))
events = ctypes.create_string_buffer(32 * 1024)


def ring():
    return struct.unpack("=4I", ctypes.string_at(ctx.value, 16))


def submit():
    if libc.syscall(SYS_io_submit, ctx, 1, ptrs) != 1:
        raise OSError(ctypes.get_errno(), "io_submit")


def getevents(n):
    return libc.syscall(SYS_io_getevents, ctx, 0, ctypes.c_long(n), events, None)


nr = ring()[1]
for i in range(nr + 2):
    submit()
    if i % 2:
        assert getevents(1) == 1
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", flush=True)
_, n, h, t = ring()
print("ring nr", n, "head", h, "tail", t, flush=True)
while True:
    signal.sigwait([signal.SIGUSR1])
    _, n, h, t = ring()
    print("ring nr", n, "head", h, "tail", t, flush=True)
    submit()
    _, _, h2, t2 = ring()
    got = getevents(1024)
    print("after", h2 - h, t2 - t, "events", got, flush=True)
