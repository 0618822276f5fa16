/* A process writing into its heap while it is being pre-dumped: argv[1] MiB of pseudo-random
 * heap memory (malloc), and a thread that rewrites one page every `argv[3]` microseconds,
 * walking through it. SIGUSR2 stops the writer for good (it reports "stopped"); SIGUSR1 appends
 * the checksum of the heap to argv[2]. Restored, the checksum must be the one at the dump. */
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

static volatile sig_atomic_t want_sum, want_stop;
static volatile int stop, stopped;
static uint64_t *m;
static size_t n, pages;
static unsigned delay_us;

static void on_usr1(int s) { (void)s; want_sum = 1; }
static void on_usr2(int s) { (void)s; want_stop = 1; }

static void *writer(void *arg) {
    (void)arg;
    uint64_t x = 88172645463325252ull;
    for (size_t p = 0; !stop; p = (p + 7) % pages) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        m[p * 512 + (x % 512)] = x;
        usleep(delay_us);
    }
    __atomic_store_n(&stopped, 1, __ATOMIC_SEQ_CST);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    size_t mib = strtoul(argv[1], 0, 10);
    n = mib << 17; /* u64 words */
    pages = mib << 8;
    delay_us = strtoul(argv[3], 0, 10);
    m = malloc(mib << 20);
    if (!m) return 1;
    uint64_t x = 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
    for (size_t i = 0; i < n; i++) {
        x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
        m[i] = x * 0x2545F4914F6CDD1Dull;
    }
    sigset_t both, waitmask;
    sigemptyset(&both);
    sigaddset(&both, SIGUSR1);
    sigaddset(&both, SIGUSR2);
    sigprocmask(SIG_BLOCK, &both, &waitmask); /* the writer thread inherits the block */
    sigdelset(&waitmask, SIGUSR1);
    sigdelset(&waitmask, SIGUSR2);
    signal(SIGUSR1, on_usr1);
    signal(SIGUSR2, on_usr2);
    pthread_t t;
    pthread_create(&t, 0, writer, 0);
    int out = open(argv[2], O_WRONLY | O_CREAT | O_APPEND, 0644);
    dprintf(out, "ready\n");
    for (;;) {
        sigsuspend(&waitmask);
        if (want_stop) {
            want_stop = 0;
            stop = 1;
            while (!__atomic_load_n(&stopped, __ATOMIC_SEQ_CST)) usleep(1000);
            dprintf(out, "stopped\n");
        }
        if (want_sum) {
            want_sum = 0;
            uint64_t h = 1469598103934665603ull;
            for (size_t i = 0; i < n; i++) h = (h ^ m[i]) * 1099511628211ull;
            dprintf(out, "sum %016llx\n", (unsigned long long)h);
        }
    }
}
