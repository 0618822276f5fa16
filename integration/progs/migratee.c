/* A process whose memory changes while it is migrated, and which can prove afterwards that none
 * of it was lost: argv[1] MiB of anonymous memory, filled page by page by "steps" (step s writes
 * page s % pages with a pattern of s), so the content of every page follows from the number of
 * steps done. The first `pages` steps fill it; a thread then goes on, one step every argv[3]
 * microseconds. SIGUSR1 stops the thread after its current step and checks every page against
 * the step count: "verify ok STEPS" or "verify bad PAGE STEPS" is appended to argv[2]. Every
 * second the step count is appended too ("steps N"), so a test sees it going on.
 * With argv[4] = Z (MiB), a second region of Z MiB is filled with a fixed pattern at the start;
 * SIGUSR2 drops its first half (MADV_DONTNEED: zero pages again) and appends "zapped"; the check
 * then also wants the first half zero and the second half still holding its pattern.
 * With argv[5] = "fork" (argv[4] may be 0), the process forks first: the child does all of the
 * above with half the memory (so its mappings are its own, not the parent's), its steps and
 * checks going to argv[2] + ".child". */
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t want_check;
static volatile int stop, stopped;
static uint64_t *m;
static uint64_t pages, steps;
static unsigned delay_us;

static void on_usr1(int s) { (void)s; want_check = 1; }

static volatile sig_atomic_t want_zap;
static uint64_t *z;
static uint64_t zpages;
static void on_usr2(int s) { (void)s; want_zap = 1; }
static uint64_t zword(uint64_t p, uint64_t i) { return (p << 20) ^ (i * 0x5851F42D4C957F2Dull) ^ 0xA5A5; }

static uint64_t word(uint64_t s, uint64_t i) {
    uint64_t x = s * 0x9E3779B97F4A7C15ull + i * 0xBF58476D1CE4E5B9ull + 1;
    x ^= x >> 31; x *= 0x94D049BB133111EBull; x ^= x >> 29;
    return x;
}

static void step(uint64_t s) {
    uint64_t *pg = m + (s % pages) * 512;
    for (uint64_t i = 0; i < 512; i++) pg[i] = word(s, i);
}

static void *writer(void *arg) {
    (void)arg;
    while (!stop) {
        uint64_t s = __atomic_load_n(&steps, __ATOMIC_SEQ_CST);
        step(s);
        __atomic_store_n(&steps, s + 1, __ATOMIC_SEQ_CST);
        if (delay_us) usleep(delay_us);
    }
    __atomic_store_n(&stopped, 1, __ATOMIC_SEQ_CST);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    uint64_t mib = strtoull(argv[1], 0, 10);
    static char child_out[4096];
    if (argc > 5 && !strcmp(argv[5], "fork")) {
        pid_t c = fork();
        if (c < 0) return 1;
        if (c == 0) {
            snprintf(child_out, sizeof child_out, "%s.child", argv[2]);
            argv[2] = child_out;
            mib = mib / 2 ? mib / 2 : 1;
        }
    }
    pages = mib << 8;
    delay_us = strtoul(argv[3], 0, 10);
    m = mmap(0, mib << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return 1;
    for (uint64_t s = 0; s < pages; s++) step(s);
    steps = pages;
    if (argc > 4 && strtoull(argv[4], 0, 10) > 0) {
        zpages = strtoull(argv[4], 0, 10) << 8;
        z = mmap(0, zpages << 12, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (z == MAP_FAILED) return 1;
        for (uint64_t p = 0; p < zpages; p++)
            for (uint64_t i = 0; i < 512; i++) z[p * 512 + i] = zword(p, i);
    }
    sigset_t usr1, waitmask;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigaddset(&usr1, SIGUSR2);
    sigprocmask(SIG_BLOCK, &usr1, &waitmask); /* the writer thread inherits the block */
    sigdelset(&waitmask, SIGUSR1);
    sigdelset(&waitmask, SIGUSR2);
    signal(SIGUSR1, on_usr1);
    signal(SIGUSR2, on_usr2);
    pthread_t t;
    pthread_create(&t, 0, writer, 0);
    int out = open(argv[2], O_WRONLY | O_CREAT | O_APPEND, 0644);
    dprintf(out, "ready\n");
    for (;;) {
        struct timespec one = {1, 0};
        sigset_t none;
        sigemptyset(&none);
        /* A second of waiting in which SIGUSR1 may arrive. */
        sigprocmask(SIG_SETMASK, &waitmask, 0);
        nanosleep(&one, 0);
        sigprocmask(SIG_BLOCK, &usr1, 0);
        if (want_zap && z) {
            want_zap = 0;
            madvise(z, (zpages / 2) << 12, MADV_DONTNEED);
            dprintf(out, "zapped\n");
        }
        if (want_check) {
            stop = 1;
            while (!__atomic_load_n(&stopped, __ATOMIC_SEQ_CST)) usleep(1000);
            uint64_t k = steps, last = k - 1, r = last % pages;
            for (uint64_t p = 0; p < pages; p++) {
                uint64_t s = p <= r ? last - (r - p) : last - (r + pages - p);
                uint64_t *pg = m + p * 512;
                for (uint64_t i = 0; i < 512; i++) {
                    if (pg[i] != word(s, i)) {
                        dprintf(out, "verify bad %llu %llu\n", (unsigned long long)p,
                                (unsigned long long)k);
                        for (;;) pause();
                    }
                }
            }
            for (uint64_t p = 0; p < zpages; p++) {
                for (uint64_t i = 0; i < 512; i++) {
                    uint64_t want = p < zpages / 2 ? 0 : zword(p, i);
                    if (z[p * 512 + i] != want) {
                        dprintf(out, "verify bad zapped-region page %llu\n", (unsigned long long)p);
                        for (;;) pause();
                    }
                }
            }
            dprintf(out, "verify ok %llu\n", (unsigned long long)k);
            for (;;) pause();
        }
        dprintf(out, "steps %llu\n", (unsigned long long)__atomic_load_n(&steps, __ATOMIC_SEQ_CST));
    }
}
