"""memfd_huge.py: a hugetlb memfd (zdtm's memfd02-hugetlb): memfd_create(MFD_HUGETLB),
2 MiB, mapped shared and privately, "write1" written through the shared mapping; the fd
stays open. Prints "ready" (or "nohuge ERROR" when the kernel gives no huge page), then
on SIGUSR1: what the shared and private mappings and the fd read, the fd's block size
(the huge page size), whether a write through the shared mapping shows through the fd and
the private one, and whether a private write stays private."""
import mmap, os, signal, sys
L = 2 << 20
try:
    fd = os.memfd_create("cryo-huge", os.MFD_HUGETLB)
    os.ftruncate(fd, L)
    sh = mmap.mmap(fd, L, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
except OSError as e:
    print("nohuge", e, flush=True)
    sys.exit(0)
sh[0:6] = b"write1"
pv = mmap.mmap(fd, L, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", flush=True)
signal.sigwait([signal.SIGUSR1])
got = [bytes(sh[0:6]), bytes(pv[0:6]), os.pread(fd, 6, 0), os.fstat(fd).st_blksize]
sh[0:6] = b"write2"
seen = (os.pread(fd, 6, 0), bytes(pv[0:6]))
pv[0:6] = b"write3"
print(*got, *seen, bytes(sh[0:6]), flush=True)
