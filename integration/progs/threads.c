/* 8 worker threads, each with its own counter, name, signal mask and TLS value. On SIGUSR1
 * (handled by the main thread) it appends every thread's counter and TLS check to argv[1].
 * After restore every counter must keep growing and every thread keep its identity. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define N 8
static volatile unsigned long counters[N];
static volatile int tids[N];
static __thread unsigned long tls_tag;
static volatile int tls_ok[N];

static void *worker(void *arg) {
    long i = (long)arg;
    char name[16];
    snprintf(name, sizeof name, "worker-%ld", i);
    pthread_setname_np(pthread_self(), name);
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGRTMIN + (int)i); /* a different mask per thread */
    sigaddset(&m, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &m, 0);
    tids[i] = (int)syscall(SYS_gettid);
    tls_tag = 0xC0DE0000 + i;
    for (;;) {
        counters[i]++;
        tls_ok[i] = tls_tag == 0xC0DE0000ul + (unsigned long)i;
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, 0);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, 0);
    pthread_t th[N];
    for (long i = 0; i < N; i++) pthread_create(&th[i], 0, worker, (void *)i);
    for (;;) {
        int ok = 1;
        for (int i = 0; i < N; i++) ok &= tids[i] != 0;
        if (ok) break;
        usleep(1000);
    }
    dprintf(out, "ready\n");
    for (;;) {
        int sig;
        sigwait(&usr1, &sig);
        char line[1024];
        int n = 0;
        for (int i = 0; i < N; i++)
            n += snprintf(line + n, sizeof line - n, "%d:%lu:%d ", tids[i], counters[i], tls_ok[i]);
        dprintf(out, "%s\n", line);
    }
}
