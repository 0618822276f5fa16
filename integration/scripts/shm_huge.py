"""shm_huge.py [attached]: a SysV hugetlb segment (zdtm's shm-hugetlb), run under
`unshare -i`: 2 MiB, SHM_HUGETLB, "huge data" written at 0 and 1 MiB, then detached (it
lives on in the IPC namespace; with `attached` it stays attached). Prints "ready ID" (or
"nohuge ERROR" when the kernel gives no huge page), then on SIGUSR1 attaches it again (or
uses the attachment it kept) and prints what it holds at 0 and 1 MiB and the block size of
its mapping (the huge page size)."""
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmdt.argtypes = [ctypes.c_void_p]
L, SHM_HUGETLB, IPC_CREAT = 2 << 20, 0o4000, 0o1000
sid = libc.shmget(0x43720009, ctypes.c_size_t(L), IPC_CREAT | SHM_HUGETLB | 0o600)
if sid < 0:
    print("nohuge", os.strerror(ctypes.get_errno()), flush=True)
    sys.exit(0)
a = libc.shmat(sid, None, 0)
ctypes.memmove(a, b"huge data", 9)
ctypes.memmove(a + (1 << 20), b"huge data", 9)
attached = sys.argv[1:] == ["attached"]
if not attached:
    libc.shmdt(ctypes.c_void_p(a))
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", sid, flush=True)
signal.sigwait([signal.SIGUSR1])
if not attached:
    a = libc.shmat(sid, None, 0)
blk = os.stat("/proc/self/map_files/%x-%x" % (a, a + L)).st_blksize
print(ctypes.string_at(a, 9), ctypes.string_at(a + (1 << 20), 9), blk, flush=True)
