/* Holds a wide set of per-process state, then waits. On SIGUSR1 it appends a report of what
 * only it can see (alternate stack, itimer, pending signals, file offsets, hidden memory) to
 * argv[1]. The test compares the report and /proc before dump and after restore. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

static volatile sig_atomic_t want;
static void on_usr1(int s) { (void)s; want = 1; }
static void on_hup(int s) { (void)s; }

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int data = open(argv[2], O_RDWR | O_CREAT, 0600);
    if (out < 0 || data < 0) return 1;
    if (write(data, "0123456789abcdef", 16) != 16) return 1;
    lseek(data, 5, SEEK_SET);
    int dup_fd = dup2(data, 20); /* shares the offset with `data` */
    int dir = open("/usr", O_RDONLY | O_DIRECTORY);
    int devnull = open("/dev/null", O_WRONLY | O_NONBLOCK);
    umask(027);
    if (chdir("/tmp")) return 1;
    struct rlimit rl = {100, 200};
    setrlimit(RLIMIT_NOFILE, &rl);
    prctl(PR_SET_NAME, "keeper-proc");
    personality(PER_LINUX | ADDR_COMPAT_LAYOUT);

    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigaddset(&sa.sa_mask, SIGTERM);
    sigaction(SIGUSR1, &sa, 0);
    signal(SIGHUP, on_hup);
    signal(SIGWINCH, SIG_IGN);
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR2);
    sigaddset(&block, SIGUSR1);
    sigprocmask(SIG_BLOCK, &block, 0);
    kill(getpid(), SIGUSR2); /* stays pending */

    static char altstack[64 * 1024];
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0};
    sigaltstack(&ss, 0);
    struct itimerval it = {{1000, 0}, {5000, 0}};
    setitimer(ITIMER_REAL, &it, 0);
    signal(SIGALRM, on_hup);

    /* Memory in unusual protections. */
    size_t len = 1 << 20;
    unsigned char *hidden = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < len; i++) hidden[i] = (unsigned char)(i * 31 + 7);
    mprotect(hidden, len, PROT_NONE);
    unsigned char *nofork = mmap(0, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(nofork, 0x5a, 4 * 4096);
    madvise(nofork, 4 * 4096, MADV_DONTFORK);
    unsigned char *ro = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(ro, 0x33, 4096);
    mprotect(ro, 4096, PROT_READ);

    sigset_t waitmask;
    sigprocmask(SIG_BLOCK, 0, &waitmask);
    sigdelset(&waitmask, SIGUSR1);
    dprintf(out, "ready\n");
    for (;;) {
        sigsuspend(&waitmask);
        if (!want) continue;
        want = 0;
        mprotect(hidden, len, PROT_READ);
        unsigned long sum = 0;
        for (size_t i = 0; i < len; i++) sum = sum * 131 + hidden[i];
        mprotect(hidden, len, PROT_NONE);
        stack_t cur;
        sigaltstack(0, &cur);
        struct itimerval now;
        getitimer(ITIMER_REAL, &now);
        sigset_t pend;
        sigpending(&pend);
        char c;
        lseek(data, 0, SEEK_CUR);
        ssize_t n = read(dup_fd, &c, 1); /* advances the shared offset */
        long pos = lseek(data, 0, SEEK_CUR);
        mode_t um = umask(027);
        dprintf(out,
                "sum=%lx alt=%p/%zu/%d interval=%ld value_ok=%d usr2_pending=%d "
                "read=%zd:%c pos=%ld umask=%o nofork=%x ro=%x dir=%d null=%d\n",
                sum, cur.ss_sp, cur.ss_size, cur.ss_flags, (long)now.it_interval.tv_sec,
                now.it_value.tv_sec > 4000 && now.it_value.tv_sec <= 5000,
                sigismember(&pend, SIGUSR2), n, c, pos, um, nofork[100], ro[5],
                fcntl(dir, F_GETFD) >= 0, fcntl(devnull, F_GETFL) & O_NONBLOCK ? 1 : 0);
    }
}
