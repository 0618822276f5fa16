"""memfd.py: a memfd "cryo-test" (1.1 MB, offset 5, F_SEAL_SHRINK) open and mapped shared
in a parent and its forked child. Prints "ready CHILD" and waits for SIGUSR1; then the child
writes "CHILD!" through its mapping and the parent prints its fd offset, what its fd and its
own mapping read, the fd's link, whether the seals are the same, and the size."""
import os, mmap, signal, fcntl
fd = os.memfd_create("cryo-test", os.MFD_ALLOW_SEALING)
os.write(fd, b"memfd data " * 100000)
os.lseek(fd, 5, os.SEEK_SET)
fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
pid = os.fork()
if pid == 0:
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1]); signal.sigwait([signal.SIGUSR1])
    m[0:6] = b"CHILD!"
    os._exit(0)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", pid, flush=True)
signal.sigwait([signal.SIGUSR1])
os.kill(pid, signal.SIGUSR1); os.waitpid(pid, 0)
print(os.lseek(fd, 0, os.SEEK_CUR), os.pread(fd, 11, 0), m[6:11], os.readlink("/proc/self/fd/%d" % fd),
      fcntl.fcntl(fd, fcntl.F_GET_SEALS) == fcntl.F_SEAL_SHRINK, os.fstat(fd).st_size, flush=True)
