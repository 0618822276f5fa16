/* Holds argv[1] MiB of pseudo-random anonymous memory. On SIGUSR1 it appends the checksum of
 * that memory to argv[2]. The checksum must be identical before and after restore. With
 * argv[3] "text" the memory is compressible text instead (words and numbers picked at
 * random, like a heap of log lines or JSON), for `dump --compress`. Other kinds of memory
 * (argv[3]), each written whole so that every page is present:
 *   "zero"   anonymous private memory written with zeros (present pages, all zero);
 *   "file"   a private mapping of the file argv[2].map (made sparse, argv[1] MiB; it must
 *            stay for the restore), written with random data (copy-on-write pages);
 *   "shared" shared anonymous memory (shmem), random data. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <fcntl.h>

static volatile sig_atomic_t want;
static void on_usr1(int s) { (void)s; want = 1; }

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    size_t mib = strtoul(argv[1], 0, 10), n = mib << 17; /* u64 words */
    const char *kind = argc > 3 ? argv[3] : "";
    int flags = MAP_PRIVATE | MAP_ANONYMOUS, fd = -1;
    if (strcmp(kind, "shared") == 0) flags = MAP_SHARED | MAP_ANONYMOUS;
    if (strcmp(kind, "file") == 0) {
        char path[4096];
        snprintf(path, sizeof path, "%s.map", argv[2]);
        fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || ftruncate(fd, (off_t)(mib << 20)) != 0) return 1;
        flags = MAP_PRIVATE;
    }
    uint64_t *m = mmap(0, mib << 20, PROT_READ | PROT_WRITE, flags, fd, 0);
    if (m == MAP_FAILED) return 1;
    if (fd >= 0) close(fd);
    uint64_t x = 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
    if (strcmp(kind, "zero") == 0) {
        memset(m, 0, mib << 20);
    } else if (strcmp(kind, "text") == 0) {
        static const char *w[] = {"alpha ", "beta ", "gamma ", "delta ", "user=", "name=",
            "value ", "http://example.com/", "id:", "count ", "error ", "info ", "request ",
            "session ", "token ", "2026-12-07 ", "\n", "{\"k\": ", "}, "};
        char *p = (char *)m, *end = p + (mib << 20);
        while (p < end) {
            x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
            uint64_t r = x * 0x2545F4914F6CDD1Dull;
            char t[48];
            int k = (r & 3) == 0 ? snprintf(t, sizeof t, "%llu ", (unsigned long long)(r >> 40))
                                 : snprintf(t, sizeof t, "%s", w[(r >> 8) % (sizeof w / sizeof *w)]);
            if (k > end - p) k = (int)(end - p);
            memcpy(p, t, (size_t)k);
            p += k;
        }
    } else {
        for (size_t i = 0; i < n; i++) { /* xorshift64*: never zero, incompressible */
            x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
            m[i] = x * 0x2545F4914F6CDD1Dull;
        }
    }
    /* SIGUSR1 is only unblocked inside sigsuspend(), so a request can never slip in between
     * the flag check and the wait (a plain pause() loop would lose it). */
    sigset_t usr1, waitmask;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, &waitmask);
    sigdelset(&waitmask, SIGUSR1);
    signal(SIGUSR1, on_usr1);
    int out = open(argv[2], O_WRONLY | O_CREAT | O_APPEND, 0644);
    dprintf(out, "ready\n");
    for (;;) {
        sigsuspend(&waitmask);
        if (want) {
            want = 0;
            uint64_t h = 1469598103934665603ull;
            for (size_t i = 0; i < n; i++) h = (h ^ m[i]) * 1099511628211ull;
            dprintf(out, "sum %016llx\n", (unsigned long long)h);
        }
    }
}
