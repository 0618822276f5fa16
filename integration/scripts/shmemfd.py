"""shmemfd.py: an fd of shared anonymous memory (zdtm's shmemfd): a MAP_SHARED|MAP_ANONYMOUS
page is opened through /proc/self/map_files (a shmem inode the kernel names
"/dev/zero (deleted)"), truncated, unmapped; the fd gets O_APPEND, "hello" and offset 3, and
stays without FD_CLOEXEC. Prints "ready" and waits for SIGUSR1; then prints whether O_APPEND
is set, the fd flags, the offset, the content, the size and the file type."""
import ctypes, os, fcntl, signal, stat, mmap
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
addr = libc.mmap(None, 4096, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS, -1, 0)
fd = os.open("/proc/self/map_files/%x-%x" % (addr, addr + 4096), os.O_RDWR)
os.ftruncate(fd, 0)
libc.munmap(addr, 4096)
fcntl.fcntl(fd, fcntl.F_SETFL, os.O_APPEND)
os.set_inheritable(fd, True)
os.write(fd, b"hello")
os.lseek(fd, 3, os.SEEK_SET)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", flush=True)
signal.sigwait([signal.SIGUSR1])
st = os.fstat(fd)
print(bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND), fcntl.fcntl(fd, fcntl.F_GETFD),
      os.lseek(fd, 0, os.SEEK_CUR), os.pread(fd, 5, 0), st.st_size, stat.S_ISREG(st.st_mode), flush=True)
