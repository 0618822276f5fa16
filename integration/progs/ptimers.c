/* Two POSIX timers: a periodic one (every 20 ms) delivering SIGRTMIN with a payload, counted
 * by a handler, and an armed SIGEV_NONE one (1000 s). On SIGUSR1 it appends the tick count,
 * both timer ids, the payload seen and the second timer's remaining seconds to argv[1]. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static volatile unsigned long ticks;
static volatile long payload;
static void on_tick(int s, siginfo_t *si, void *u) {
    (void)s; (void)u;
    ticks++;
    payload = (long)si->si_value.sival_ptr;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    struct sigaction sa = {0};
    sa.sa_sigaction = on_tick;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGRTMIN, &sa, 0);
    timer_t t1, t2;
    struct sigevent sev = {0};
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = SIGRTMIN;
    sev.sigev_value.sival_ptr = (void *)0x1234;
    timer_create(CLOCK_MONOTONIC, &sev, &t1);
    struct sigevent none = {0};
    none.sigev_notify = SIGEV_NONE;
    timer_create(CLOCK_REALTIME, &none, &t2);
    struct itimerspec p = {{0, 20 * 1000 * 1000}, {0, 20 * 1000 * 1000}};
    timer_settime(t1, 0, &p, 0);
    struct itimerspec l = {{0, 0}, {1000, 0}};
    timer_settime(t2, 0, &l, 0);
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, 0);
    dprintf(out, "ready\n");
    for (;;) {
        int sig;
        sigwait(&usr1, &sig);
        struct itimerspec now;
        timer_gettime(t2, &now);
        dprintf(out, "%lu %ld %ld %lx %ld\n", ticks, (long)(size_t)t1, (long)(size_t)t2,
                payload, (long)now.it_value.tv_sec);
    }
}
