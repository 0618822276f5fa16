/* inspectee OUT FILE: a small process tree with something of every common kind, for
 * `cryo inspect` and `cryo diff` (and the CRIU 4.2 fixture in fixtures/criu-4.2-tree).
 *
 * The parent (a session leader) has a second thread, FILE open read-write at offset 4, a
 * unix listener on the abstract name @cryo-inspectee-PID, one end of a socketpair and the
 * write end of a pipe. Its child holds the other ends: 10 bytes ("pipe-bytes") wait in the
 * pipe and 11 ("sock-bytes!") in the child's socket. Known strings sit in memory:
 * "cryo-needle-static-PID" (data), "cryo-needle-heap-PID" (heap), "cryo-needle-child-CPID"
 * (the child's heap). OUT gets "ready PID CPID", then "needle STATIC HEAP" (addresses).
 *
 * SIGUSR1 makes the parent change: it opens /dev/null, forks a second child, fills one more
 * heap page with 'x' and appends "changed FD CPID2" to OUT. Only the main thread takes SIGUSR1
 * (the idle thread blocks it) and it waits in sigsuspend: a process-directed signal may go to
 * any thread that does not block it, and just after a ptrace detach the main thread still has
 * TIF_SIGPENDING set, so the kernel hands the signal to the other thread. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static char needle_static[64];
static volatile sig_atomic_t usr1;

static void on_usr1(int sig)
{
    (void)sig;
    usr1 = 1;
}

static void *idle(void *arg)
{
    (void)arg;
    for (;;)
        pause();
    return NULL;
}

static void child_loop(void)
{
    char *heap = malloc(4096);
    snprintf(heap, 4096, "cryo-needle-child-%d", getpid());
    for (;;)
        pause();
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: inspectee OUT FILE\n");
        return 2;
    }
    int p[2], sv[2];
    if (pipe(p) || socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) {
        perror("pipe/socketpair");
        return 1;
    }
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    int n = snprintf(a.sun_path + 1, sizeof a.sun_path - 1, "cryo-inspectee-%d", getpid());
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&a, offsetof(struct sockaddr_un, sun_path) + 1 + n) ||
        listen(l, 4)) {
        perror("listener");
        return 1;
    }
    int fd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, "0123456789", 10) != 10 || lseek(fd, 4, SEEK_SET) != 4) {
        perror(argv[2]);
        return 1;
    }
    snprintf(needle_static, sizeof needle_static, "cryo-needle-static-%d", getpid());
    char *heap = malloc(64 << 10);
    memset(heap, 0, 64 << 10);
    snprintf(heap, 64, "cryo-needle-heap-%d", getpid());
    sigset_t usr1set, waitmask;
    sigemptyset(&usr1set);
    sigaddset(&usr1set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1set, &waitmask); /* the idle thread and the children inherit it */
    signal(SIGUSR1, on_usr1);
    pthread_t t;
    pthread_create(&t, NULL, idle, NULL);
    pid_t c = fork();
    if (c == 0) {
        close(p[1]);
        close(sv[0]);
        close(l);
        close(fd);
        child_loop();
    }
    close(p[0]);
    close(sv[1]);
    if (write(p[1], "pipe-bytes", 10) != 10 || write(sv[0], "sock-bytes!", 11) != 11) {
        perror("write");
        return 1;
    }
    FILE *out = fopen(argv[1], "w");
    fprintf(out, "ready %d %d\nneedle %p %p\n", getpid(), c, (void *)needle_static, (void *)heap);
    fclose(out);
    for (;;) {
        sigsuspend(&waitmask);
        if (usr1) {
            usr1 = 0;
            int nfd = open("/dev/null", O_RDONLY);
            pid_t c2 = fork();
            if (c2 == 0)
                child_loop();
            memset(heap + 8192, 'x', 4096);
            out = fopen(argv[1], "a");
            fprintf(out, "changed %d %d\n", nfd, c2);
            fclose(out);
        }
    }
}
