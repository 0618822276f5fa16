/* A process tree by fork fan-out: the root forks argv[1]-1 children, each of which just sleeps
 * in sigsuspend() (small memory: only the pages it touched after fork are its own). Once every
 * child has started and closed its end of the start pipe, the root appends "ready" to argv[2]
 * and sleeps in sigsuspend() too. After restore every child must be back with the same parent. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void wait_forever(void) {
    sigset_t none;
    sigemptyset(&none);
    for (;;) sigsuspend(&none);
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    long n = strtol(argv[1], 0, 10);
    if (n < 1) return 2;
    int p[2];
    if (pipe(p)) return 1;
    for (long i = 1; i < n; i++) {
        pid_t c = fork();
        if (c < 0) return 1;
        if (c == 0) {
            close(p[0]);
            close(p[1]); /* the root sees EOF once every child has got this far */
            wait_forever();
        }
    }
    close(p[1]);
    char b;
    while (read(p[0], &b, 1) > 0) {}
    close(p[0]);
    int out = open(argv[2], O_WRONLY | O_CREAT | O_APPEND, 0644);
    dprintf(out, "ready\n");
    close(out);
    wait_forever();
}
