/* A program that uses what incremental-dump write tracking must leave alone: its own
 * userfaultfd (a missing-page range served by a thread, and a range registered later),
 * mprotect, fork (copy-on-write memory) and MAP_SHARED memory. On each SIGUSR1 it runs every
 * check again and appends "ok N" (or "fail: WHAT") to argv[1]. */
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define PG 4096
static int uffd, out;
static char *r1, *shared, *heap;
static int next_page, round_no;
static volatile sig_atomic_t want;
static void on_usr1(int s) { (void)s; want = 1; }

static void *serve(void *arg) {
    (void)arg;
    static char page[PG] __attribute__((aligned(PG)));
    for (;;) {
        struct pollfd p = {uffd, POLLIN, 0};
        if (poll(&p, 1, -1) < 0) continue;
        struct uffd_msg msg;
        if (read(uffd, &msg, sizeof msg) != sizeof msg) continue;
        if (msg.event != UFFD_EVENT_PAGEFAULT) continue;
        uint64_t a = msg.arg.pagefault.address & ~(uint64_t)(PG - 1);
        memset(page, (int)((a >> 12) & 0xff), PG);
        struct uffdio_copy c = {.dst = a, .src = (uint64_t)page, .len = PG};
        ioctl(uffd, UFFDIO_COPY, &c);
    }
    return 0;
}

static int check(void) {
    /* 1. a page of the range registered at start is served by our handler */
    if (next_page >= 64) return 0;
    char *p = r1 + (size_t)next_page++ * PG;
    if (*(volatile char *)p != (char)(((uintptr_t)p >> 12) & 0xff)) return dprintf(out, "fail: r1\n"), 1;
    /* 2. a new range can be registered and is served */
    char *r2 = mmap(0, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct uffdio_register reg = {.range = {(uint64_t)r2, 4 * PG}, .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg)) return dprintf(out, "fail: register r2\n"), 1;
    if (*(volatile char *)(r2 + PG) != (char)(((uintptr_t)(r2 + PG) >> 12) & 0xff)) return dprintf(out, "fail: r2\n"), 1;
    munmap(r2, 4 * PG);
    /* 3. mprotect read-only and back; the data stays */
    if (mprotect(heap, 16 * PG, PROT_READ)) return dprintf(out, "fail: mprotect ro\n"), 1;
    if (heap[5 * PG] != 5) return dprintf(out, "fail: heap content\n"), 1;
    if (mprotect(heap, 16 * PG, PROT_READ | PROT_WRITE)) return dprintf(out, "fail: mprotect rw\n"), 1;
    heap[6 * PG] = 6;
    /* 4. fork: the child's writes stay its own, except in the shared mapping */
    pid_t c = fork();
    if (c == 0) {
        heap[0] = 99;
        shared[0] = (char)(round_no + 1);
        _exit(heap[1 * PG] == 1 ? 0 : 3);
    }
    int st;
    waitpid(c, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st)) return dprintf(out, "fail: child\n"), 1;
    if (heap[0] != 0) return dprintf(out, "fail: child write seen\n"), 1;
    if (shared[0] != (char)(round_no + 1)) return dprintf(out, "fail: shared\n"), 1;
    round_no++;
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    if (uffd < 0) return dprintf(out, "fail: userfaultfd\n"), 1;
    struct uffdio_api api = {.api = UFFD_API};
    if (ioctl(uffd, UFFDIO_API, &api)) return dprintf(out, "fail: api\n"), 1;
    r1 = mmap(0, 64 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct uffdio_register reg = {.range = {(uint64_t)r1, 64 * PG}, .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg)) return dprintf(out, "fail: register r1\n"), 1;
    shared = mmap(0, 4 * PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    heap = mmap(0, 16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (int i = 1; i < 16; i++) heap[i * PG] = (char)i;
    pthread_t t;
    sigset_t usr1, waitmask;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, &waitmask);
    sigdelset(&waitmask, SIGUSR1);
    signal(SIGUSR1, on_usr1);
    pthread_create(&t, 0, serve, 0);
    if (check()) return 1;
    dprintf(out, "ready\n");
    for (;;) {
        sigsuspend(&waitmask);
        if (want) {
            want = 0;
            if (check() == 0) dprintf(out, "ok %d\n", round_no);
        }
    }
}
