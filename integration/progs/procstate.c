/* procstate CASE OUT: process, memory and signal state in less common shapes, for
 * integration/tests/process_state.rs. Sets CASE up, writes "ready" to OUT and waits for
 * SIGUSR1 (the test dumps and restores it meanwhile), then checks what it sees and writes one
 * line per check ("ok ..." or "BAD ..."), then "done".
 *
 *   stopped  a child stopped by SIGSTOP with another SIGSTOP queued on top, and one
 *            stopped by SIGTSTP
 *   zombies  unreaped children: killed by SIGKILL, leading its own process group, in a
 *            process group whose leader is gone
 *   memory   mlock()ed, MADV_SEQUENTIAL, MAP_DROPPABLE mappings; a read-only shared file
 *            mapping of a file opened read-write; a private mapping of shared anonymous
 *            memory; anonymous huge pages (when the system has free ones); membarrier
 *   signal32 a thread with signal 32 (glibc's timer signal) blocked and pending, and a
 *            SIGEV_THREAD timer ticking
 *   seccomp  a thread without filters, threads sharing a filter; after the restore a filter
 *            is added to every thread at once (SECCOMP_FILTER_FLAG_TSYNC), which needs the
 *            threads' filters to be the caller's own (shared, not copies)
 *   thrfilter a process of uid 1000 whose only filter is a thread's own, refusing prctl
 *            (the leader has none: restore must still suspend filters for its syscalls)
 *   files    an fd table shared (CLONE_FILES) by a process, its child and its grandchild
 *   sigtrap  a blocked SIGTRAP pending (the dump must be refused, the signal left alone)
 *   timens   a time namespace made for children not forked yet (the dump must be refused)
 *   rseq     a thread running long rseq critical sections (almost always inside one)
 *   strict   a child in seccomp strict mode (only read, write, exit), blocked in read()
 *   epoll    epoll watches registered under fd numbers since closed or reused, whose files
 *            are still open at other fds (CRIU finds them with KCMP_EPOLL_TFD)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/membarrier.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE 0x08
#endif
#ifndef MEMBARRIER_CMD_GET_REGISTRATIONS
#define MEMBARRIER_CMD_GET_REGISTRATIONS (1 << 9)
#endif

static FILE *out;
static const char *dir_arg;

static void check(const char *what, int good)
{
    fprintf(out, "%s %s\n", good ? "ok" : "BAD", what);
}

static void wait_usr1(void)
{
    sigset_t s;
    int sig;
    sigemptyset(&s);
    sigaddset(&s, SIGUSR1);
    sigwait(&s, &sig);
}

static void ready(void)
{
    fprintf(out, "ready\n");
    wait_usr1();
}

/* Whether the smaps VmFlags of the mapping at addr hold flag. */
static int vmflag(void *addr, const char *flag)
{
    char line[512];
    unsigned long a = (unsigned long)addr, s, e;
    int in = 0, found = 0;
    FILE *f = fopen("/proc/self/smaps", "r");
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && strchr(line, '-') < strchr(line, ' '))
            in = a >= s && a < e;
        else if (in && !strncmp(line, "VmFlags:", 8)) {
            char pat[8];
            snprintf(pat, sizeof pat, " %s", flag);
            found = strstr(line, pat) != NULL;
            break;
        }
    }
    fclose(f);
    return found;
}

/* A child in a process group of its own (SIGTSTP is ignored in an orphaned one) that exits
 * with code 5 once it reads a byte from p[0], stopped by `sig` (then `again` if not 0). */
static pid_t stopped_child(int p[2], int sig, int again)
{
    siginfo_t si;
    pid_t c = fork();
    if (c == 0) {
        char b;
        setpgid(0, 0);
        _exit(read(p[0], &b, 1) == 1 ? 5 : 6);
    }
    setpgid(c, c);
    kill(c, sig);
    waitid(P_PID, c, &si, WSTOPPED | WNOWAIT);
    if (again)
        kill(c, again); /* queued on top of the stop */
    if (write(p[1], "x", 1) != 1)
        exit(1);
    return c;
}

static void stopped(void)
{
    int p[2], q[2], st;
    if (pipe(p) || pipe(q))
        exit(1);
    pid_t a = stopped_child(p, SIGSTOP, SIGSTOP);
    pid_t b = stopped_child(q, SIGTSTP, 0);
    ready();
    int ok = waitpid(a, &st, WUNTRACED) == a && WIFSTOPPED(st) && WSTOPSIG(st) == SIGSTOP;
    fprintf(out, "first: status %#x\n", st);
    check("stopped with a SIGSTOP queued: still stopped", ok);
    ok = waitpid(b, &st, WUNTRACED) == b && WIFSTOPPED(st) && WSTOPSIG(st) == SIGTSTP;
    fprintf(out, "second: status %#x\n", st);
    check("stopped by SIGTSTP: still by SIGTSTP", ok);
    kill(a, SIGCONT);
    kill(b, SIGCONT);
    check("the first goes on once continued", waitpid(a, &st, 0) == a && WIFEXITED(st) && WEXITSTATUS(st) == 5);
    check("the second goes on once continued", waitpid(b, &st, 0) == b && WIFEXITED(st) && WEXITSTATUS(st) == 5);
}

static void zombies(void)
{
    int st;
    siginfo_t si;
    pid_t killed = fork();
    if (killed == 0) {
        kill(getpid(), SIGKILL);
        _exit(1);
    }
    pid_t own = fork();
    if (own == 0) {
        setpgid(0, 0);
        _exit(6);
    }
    int p[2];
    if (pipe(p))
        exit(1);
    pid_t leader = fork();
    if (leader == 0) {
        setpgid(0, 0);
        /* A sibling of its parent's other children, in this group; then the leader goes. */
        pid_t g = syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0);
        if (g == 0)
            _exit(4);
        if (write(p[1], &g, sizeof g) != sizeof g)
            _exit(1);
        _exit(0);
    }
    pid_t orphan;
    if (read(p[0], &orphan, sizeof orphan) != sizeof orphan)
        exit(1);
    waitpid(leader, &st, 0);
    waitid(P_PID, killed, &si, WEXITED | WNOWAIT);
    waitid(P_PID, own, &si, WEXITED | WNOWAIT);
    waitid(P_PID, orphan, &si, WEXITED | WNOWAIT);
    ready();
    check("zombie in the group of a leader that is gone", getpgid(orphan) == leader);
    check("zombie leading its own group", getpgid(own) == own);
    check("killed by SIGKILL", waitpid(killed, &st, 0) == killed && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    check("own group exit status", waitpid(own, &st, 0) == own && WIFEXITED(st) && WEXITSTATUS(st) == 6);
    check("orphan group exit status", waitpid(orphan, &st, 0) == orphan && WIFEXITED(st) && WEXITSTATUS(st) == 4);
}

static void memory(void)
{
    long pg = sysconf(_SC_PAGESIZE);
    char path[4096];
    char *locked = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED, -1, 0);
    char *seq = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *drop = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, MAP_DROPPABLE | MAP_ANONYMOUS, -1, 0);
    if (locked == MAP_FAILED || seq == MAP_FAILED)
        exit(1);
    madvise(seq, 4 * pg, MADV_SEQUENTIAL);
    strcpy(locked, "locked");
    strcpy(seq, "sequential");
    if (drop != MAP_FAILED)
        strcpy(drop, "droppable");
    snprintf(path, sizeof path, "%s/mapped", dir_arg);
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    if (ftruncate(fd, 2 * pg))
        exit(1);
    char *ro = mmap(NULL, 2 * pg, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    int *shm = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    shm[pg / 4] = 11;
    shm[2 * pg / 4] = 22;
    snprintf(path, sizeof path, "/proc/self/map_files/%lx-%lx", (long)shm, (long)shm + 4 * pg);
    fd = open(path, O_RDWR);
    int *priv = mmap(NULL, 3 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, pg);
    close(fd);
    if (ro == MAP_FAILED || shm == MAP_FAILED || priv == MAP_FAILED)
        exit(1);
    priv[pg / 4] = 99; /* its own copy of the shared page 2 */
    size_t huge = 2 << 20;
    char *hp = mmap(NULL, huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    char *hs = mmap(NULL, huge, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    if (hp != MAP_FAILED)
        strcpy(hp + huge - 64, "huge private");
    if (hs != MAP_FAILED)
        strcpy(hs + 100, "huge shared");
    long mb = syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0);
    long reg = syscall(SYS_membarrier, MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0);
    ready();
    check("mlock()ed mapping stays locked", vmflag(locked, "lo") && !strcmp(locked, "locked"));
    check("MADV_SEQUENTIAL kept", vmflag(seq, "sr") && !strcmp(seq, "sequential"));
    if (drop != MAP_FAILED)
        check("MAP_DROPPABLE content dropped", vmflag(drop, "dp") && drop[0] == 0);
    else
        fprintf(out, "skip droppable\n");
    check("shared file mapping can be made writable", mprotect(ro, 2 * pg, PROT_READ | PROT_WRITE) == 0);
    ro[0] = 'w';
    shm[3 * pg / 4] = 44;
    check("private mapping of shared memory", priv[0] == 11 && priv[pg / 4] == 99 && priv[2 * pg / 4] == 44 && shm[2 * pg / 4] == 22);
    if (hp != MAP_FAILED && hs != MAP_FAILED) {
        check("huge pages kept", vmflag(hp, "ht") && vmflag(hs, "ht") && !strcmp(hp + huge - 64, "huge private") && !strcmp(hs + 100, "huge shared"));
    } else
        fprintf(out, "skip hugetlb\n");
    if (mb == 0 && reg > 0)
        check("membarrier registration kept", syscall(SYS_membarrier, MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0) == reg && syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0);
    else
        fprintf(out, "skip membarrier\n");
}

static int efd;
static void tick(union sigval v)
{
    (void)v;
    uint64_t one = 1;
    if (write(efd, &one, 8) != 8)
        abort();
}

static volatile int got32;
static pthread_barrier_t restored;
static void *sig32_thread(void *arg)
{
    uint64_t set = 1ULL << 31;
    siginfo_t si;
    struct timespec ts = {5, 0};
    (void)arg;
    /* glibc's own calls refuse to block its signal 32: the raw syscalls. */
    syscall(SYS_rt_sigprocmask, SIG_BLOCK, &set, NULL, 8);
    syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), 32);
    pthread_barrier_wait(&restored);
    got32 = syscall(SYS_rt_sigtimedwait, &set, &si, &ts, 8) == 32;
    return NULL;
}

static void signal32(void)
{
    pthread_t t;
    struct sigevent ev = {0};
    struct itimerspec its = {{0, 10000000}, {0, 10000000}};
    timer_t tm;
    uint64_t n;
    efd = eventfd(0, 0);
    ev.sigev_notify = SIGEV_THREAD;
    ev.sigev_notify_function = tick;
    timer_create(CLOCK_MONOTONIC, &ev, &tm);
    timer_settime(tm, 0, &its, NULL);
    if (read(efd, &n, 8) != 8)
        exit(1);
    pthread_barrier_init(&restored, NULL, 2);
    pthread_create(&t, NULL, sig32_thread, NULL);
    usleep(100000);
    ready();
    pthread_barrier_wait(&restored);
    pthread_join(t, NULL);
    check("pending signal 32 taken by its thread", got32);
    int ticks = 0;
    for (int i = 0; i < 3; i++)
        ticks += read(efd, &n, 8) == 8;
    check("SIGEV_THREAD timer ticks", ticks == 3);
}

/* A filter making `nr` fail with errno `err`, allowing everything else. */
static int add_filter(int nr, int err, unsigned flags)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | err),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog p = {4, f};
    return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &p);
}

static pthread_barrier_t bar;
static volatile long res[2][2];
static void *seccomp_thread(void *arg)
{
    long i = (long)arg;
    pthread_barrier_wait(&bar); /* restored */
    pthread_barrier_wait(&bar); /* TSYNC filter added */
    errno = 0;
    res[i][0] = syscall(SYS_getppid) < 0 ? errno : 0;
    errno = 0;
    res[i][1] = syscall(SYS_getpgid, 0) < 0 ? errno : 0;
    return NULL;
}

static void seccomp_case(void)
{
    pthread_t bare, filtered;
    pthread_barrier_init(&bar, NULL, 3);
    pthread_create(&bare, NULL, seccomp_thread, (void *)0);
    usleep(50000);
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    if (add_filter(SYS_getppid, EPERM, 0))
        exit(1);
    pthread_create(&filtered, NULL, seccomp_thread, (void *)1);
    usleep(50000);
    ready();
    pthread_barrier_wait(&bar);
    check("a filter added to every thread at once (TSYNC)", add_filter(SYS_getpgid, EACCES, SECCOMP_FILTER_FLAG_TSYNC) == 0);
    pthread_barrier_wait(&bar);
    pthread_join(bare, NULL);
    pthread_join(filtered, NULL);
    /* TSYNC gives every thread the caller's whole chain. */
    check("the thread that had no filter has both", res[0][0] == EPERM && res[0][1] == EACCES);
    check("the filtered thread has both", res[1][0] == EPERM && res[1][1] == EACCES);
}

static volatile long thr_res[2];
static void *prctl_filtered_thread(void *arg)
{
    (void)arg;
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    if (add_filter(SYS_prctl, EPERM, 0))
        exit(1);
    pthread_barrier_wait(&bar); /* filtered */
    pthread_barrier_wait(&bar); /* restored */
    errno = 0;
    thr_res[0] = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) < 0 ? errno : 0;
    thr_res[1] = getuid();
    return NULL;
}

static void thread_filter_case(void)
{
    pthread_t t;
    if (setresgid(1000, 1000, 1000) || setresuid(1000, 1000, 1000))
        exit(1);
    pthread_barrier_init(&bar, NULL, 2);
    pthread_create(&t, NULL, prctl_filtered_thread, NULL);
    pthread_barrier_wait(&bar);
    ready();
    pthread_barrier_wait(&bar);
    pthread_join(t, NULL);
    check("the thread's own filter still refuses prctl", thr_res[0] == EPERM);
    check("the thread has its uid", thr_res[1] == 1000);
}

static int share_pipe[2];
static int grandchild(void *arg)
{
    int fd;
    (void)arg;
    wait_usr1();
    /* The fd the root opened after the restore is in this table too. */
    if (read(share_pipe[0], &fd, sizeof fd) != sizeof fd)
        _exit(1);
    int ok = fcntl(fd, F_GETFD) >= 0;
    if (write(share_pipe[1], &ok, sizeof ok) != sizeof ok)
        _exit(1);
    for (;;)
        pause();
    return 0;
}

static char stack2[65536] __attribute__((aligned(16)));
static int child_fn(void *arg)
{
    (void)arg;
    clone(grandchild, stack2 + sizeof stack2, CLONE_FILES | SIGCHLD, NULL);
    for (;;)
        pause();
    return 0;
}

static char stack1[65536] __attribute__((aligned(16)));
static void files(void)
{
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGUSR1);
    if (pipe(share_pipe))
        exit(1);
    pid_t c = clone(child_fn, stack1 + sizeof stack1, CLONE_FILES | SIGCHLD, NULL);
    usleep(200000);
    char p[64];
    snprintf(p, sizeof p, "/proc/%d/task/%d/children", c, c);
    FILE *f = fopen(p, "r");
    int g = 0;
    if (!f || fscanf(f, "%d", &g) != 1)
        exit(1);
    fclose(f);
    ready();
    int fd = open("/dev/null", O_RDONLY), ok = 0;
    if (write(share_pipe[1], &fd, sizeof fd) != sizeof fd)
        exit(1);
    kill(g, SIGUSR1);
    usleep(200000);
    if (read(share_pipe[0], &ok, sizeof ok) != sizeof ok)
        exit(1);
    check("the grandchild shares the fd table", ok);
    kill(g, SIGKILL);
    kill(c, SIGKILL);
}

/* rseq: glibc registered an rseq area for every thread; a section is run through it. */
static volatile int rseq_stop;
static long rseq_counts[3];

/* One pass through a long rseq critical section: 0 when it completed with its descriptor
 * still set, 1 when the kernel sent it to its abort handler (preempted, signalled, or
 * restored in the middle), 2 when it completed though the kernel had dropped its
 * descriptor: resumed in the middle of the section without the abort it was owed. */
static int rseq_section(uint64_t *cs_field)
{
    __asm__ __volatile__ goto(
        ".pushsection __rseq_cs, \"aw\"\n\t"
        ".balign 32\n\t"
        "3:\n\t"
        ".long 0, 0\n\t"
        ".quad 1f, (2f - 1f), 4f\n\t"
        ".popsection\n\t"
        "leaq 3b(%%rip), %%rax\n\t"
        "movq %%rax, %[cs]\n\t"
        "1:\n\t"
        "movq $50000000, %%rcx\n\t"
        "5:\n\t"
        "decq %%rcx\n\t"
        "jnz 5b\n\t"
        "movq %[cs], %%rcx\n\t"
        "cmpq %%rax, %%rcx\n\t"
        "jne %l[cleared]\n\t"
        "2:\n\t"
        ".pushsection __rseq_failure, \"ax\"\n\t"
        ".byte 0x0f, 0xb9, 0x3d\n\t"
        ".long 0x53053053\n\t"
        "4:\n\t"
        "jmp %l[aborted]\n\t"
        ".popsection\n\t"
        :
        : [cs] "m"(*cs_field)
        : "rax", "rcx", "memory", "cc"
        : aborted, cleared);
    *cs_field = 0;
    return 0;
aborted:
    *cs_field = 0;
    return 1;
cleared:
    *cs_field = 0;
    return 2;
}

extern const ptrdiff_t __rseq_offset;
extern const unsigned int __rseq_size;

static void *rseq_thread(void *arg)
{
    (void)arg;
    char *tp;
    __asm__("mov %%fs:0, %0" : "=r"(tp));
    uint64_t *cs_field = (uint64_t *)(tp + __rseq_offset + 8);
    while (!rseq_stop)
        rseq_counts[rseq_section(cs_field)]++;
    return NULL;
}

static void rseq_case(void)
{
    pthread_t t;
    if (__rseq_size == 0) {
        ready();
        fprintf(out, "skip rseq (glibc did not register an area)\n");
        return;
    }
    pthread_create(&t, NULL, rseq_thread, NULL);
    usleep(200000);
    ready();
    long before = rseq_counts[0] + rseq_counts[1];
    usleep(300000);
    rseq_stop = 1;
    pthread_join(t, NULL);
    check("no section completed without its descriptor", rseq_counts[2] == 0);
    check("sections run after the restore", rseq_counts[0] + rseq_counts[1] > before);
}

static void sigtrap(void)
{
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGTRAP);
    sigprocmask(SIG_BLOCK, &s, NULL);
    raise(SIGTRAP);
    ready();
    sigpending(&s);
    check("SIGTRAP still pending", sigismember(&s, SIGTRAP));
}

static void timens(void)
{
    if (unshare(CLONE_NEWTIME))
        exit(1);
    ready();
    check("still running", 1);
}

/* The child enters strict mode and then echoes one byte back; the parent checks its mode
 * after the restore, then the echo, then that it exited normally (not killed). */
static void strict(void)
{
    int in[2], back[2];
    if (pipe(in) || pipe(back))
        exit(1);
    pid_t c = fork();
    if (c == 0) {
        char b;
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT))
            syscall(SYS_exit, 3);
        if (read(in[0], &b, 1) != 1)
            syscall(SYS_exit, 4);
        b++;
        if (write(back[1], &b, 1) != 1)
            syscall(SYS_exit, 5);
        syscall(SYS_exit, 0);
    }
    usleep(100000);
    ready();
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", c);
    FILE *f = fopen(path, "r");
    int mode = -1;
    while (f && fgets(line, sizeof line, f))
        sscanf(line, "Seccomp:\t%d", &mode);
    if (f)
        fclose(f);
    check("the child is in strict mode", mode == SECCOMP_MODE_STRICT);
    char b = 'a';
    int st = 0;
    check("the child read and wrote", write(in[1], &b, 1) == 1 && read(back[0], &b, 1) == 1 && b == 'b');
    check("the child exited by itself", waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* Three pipes watched by one epoll: the first registered as fd 700, which was closed (its
 * read end is still open at its first number), the second as fd 701, closed and then reused
 * by the third pipe's read end, which is registered as 701 too. After the restore each pipe
 * wakes the epoll with its own data. */
static void epoll_case(void)
{
    int ep = epoll_create1(0), p[3][2];
    for (int i = 0; i < 3; i++)
        if (pipe(p[i]))
            exit(1);
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.u64 = 100;
    dup2(p[0][0], 700);
    epoll_ctl(ep, EPOLL_CTL_ADD, 700, &ev);
    close(700);
    ev.data.u64 = 101;
    dup2(p[1][0], 701);
    epoll_ctl(ep, EPOLL_CTL_ADD, 701, &ev);
    close(701);
    ev.data.u64 = 102;
    dup2(p[2][0], 701);
    epoll_ctl(ep, EPOLL_CTL_ADD, 701, &ev);
    ready();
    int good = 1;
    for (int i = 0; i < 3; i++) {
        char b = 'x';
        struct epoll_event got;
        if (write(p[i][1], &b, 1) != 1 || epoll_wait(ep, &got, 1, 5000) != 1 || got.data.u64 != (uint64_t)(100 + i))
            good = 0;
        if (read(p[i][0], &b, 1) != 1)
            good = 0;
    }
    check("each pipe wakes the epoll with its data", good);
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    out = fopen(argv[2], "a");
    setvbuf(out, NULL, _IOLBF, 0);
    static char d[4096];
    snprintf(d, sizeof d, "%s", argv[2]);
    char *slash = strrchr(d, '/');
    if (slash)
        *slash = 0;
    dir_arg = d;
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGUSR1);
    sigprocmask(SIG_BLOCK, &s, NULL);
    const char *c = argv[1];
    if (!strcmp(c, "stopped"))
        stopped();
    else if (!strcmp(c, "zombies"))
        zombies();
    else if (!strcmp(c, "memory"))
        memory();
    else if (!strcmp(c, "signal32"))
        signal32();
    else if (!strcmp(c, "seccomp"))
        seccomp_case();
    else if (!strcmp(c, "thrfilter"))
        thread_filter_case();
    else if (!strcmp(c, "files"))
        files();
    else if (!strcmp(c, "sigtrap"))
        sigtrap();
    else if (!strcmp(c, "timens"))
        timens();
    else if (!strcmp(c, "rseq"))
        rseq_case();
    else if (!strcmp(c, "strict"))
        strict();
    else if (!strcmp(c, "epoll"))
        epoll_case();
    else
        return 2;
    fprintf(out, "done\n");
    for (;;)
        pause();
}
