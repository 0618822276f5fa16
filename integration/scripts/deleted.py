# Holds one deleted file of every kind cryo makes again as a ghost, then reports on SIGUSR1
# what it sees of each through its own fds (integration/tests/deleted.rs).
#   argv[1]: a directory to work in
import ctypes, os, signal, stat, sys

d = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)

# A sparse file of 1 GiB + 8 KiB with 4 KiB of data at each end: its data is under the
# ghost limit, its size is not.
sparse = os.open(d + "/sparse", os.O_RDWR | os.O_CREAT, 0o644)
os.pwrite(sparse, b"A" * 4096, 0)
os.pwrite(sparse, b"Z" * 4096, (1 << 30) + 4096)
os.unlink(d + "/sparse")

# A small file with esoteric permissions and times, written then deleted.
attr = os.open(d + "/attr", os.O_RDWR | os.O_CREAT, 0o644)
os.write(attr, b"attributes")
os.fchmod(attr, 0o6604)
os.utime(d + "/attr", (1000, 123456))
os.unlink(d + "/attr")
os.lseek(attr, 3, os.SEEK_SET)

# A FIFO with bytes in flight, its only name removed.
os.mkfifo(d + "/fifo", 0o640)
fifo = os.open(d + "/fifo", os.O_RDWR | os.O_NONBLOCK)
os.write(fifo, b"through the ghost fifo")
os.unlink(d + "/fifo")

# A character device node (/dev/null's number), deleted.
os.mknod(d + "/null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
dev = os.open(d + "/null", os.O_WRONLY)
os.unlink(d + "/null")

# A symlink held with O_PATH, deleted.
os.symlink("/some/target", d + "/link")
link = os.open(d + "/link", os.O_PATH | os.O_NOFOLLOW)
os.unlink(d + "/link")

# A file made with O_TMPFILE (never had a name).
tmp = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o600)
os.write(tmp, b"tmpfile data")

# A directory, open and the working directory, removed.
os.mkdir(d + "/gone")
gone = os.open(d + "/gone", os.O_RDONLY | os.O_DIRECTORY)
os.chdir(d + "/gone")
os.rmdir(d + "/gone")

signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", flush=True)
signal.sigwait([signal.SIGUSR1])


def readlinkat(fd):
    buf = ctypes.create_string_buffer(4096)
    n = libc.readlinkat(fd, b"", buf, 4096)
    return buf.raw[:n].decode() if n >= 0 else "errno %d" % ctypes.get_errno()


st = os.fstat(sparse)
holes = [os.lseek(sparse, 0, os.SEEK_HOLE), os.lseek(sparse, 4096, os.SEEK_DATA)]
data = os.pread(sparse, 4096, 0) + os.pread(sparse, 4096, (1 << 30) + 4096)
print("sparse", st.st_size, st.st_blocks * 512, holes, data == b"A" * 4096 + b"Z" * 4096, st.st_nlink)
st = os.fstat(attr)
print("attr", oct(stat.S_IMODE(st.st_mode)), int(st.st_mtime), os.lseek(attr, 0, os.SEEK_CUR),
      os.read(attr, 100))
print("fifo", os.read(fifo, 100), oct(stat.S_IMODE(os.fstat(fifo).st_mode)))
st = os.fstat(dev)
print("dev", stat.S_ISCHR(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev),
      os.write(dev, b"x"))
st = os.fstat(link)
print("link", stat.S_ISLNK(st.st_mode), readlinkat(link), st.st_nlink)
os.lseek(tmp, 0, os.SEEK_SET)
print("tmp", os.read(tmp, 100), os.fstat(tmp).st_nlink)
st, cwd = os.fstat(gone), os.stat(".")
print("dir", stat.S_ISDIR(st.st_mode), st.st_nlink, (st.st_ino, st.st_dev) == (cwd.st_ino, cwd.st_dev),
      os.readlink("/proc/self/cwd"))
sys.stdout.flush()
