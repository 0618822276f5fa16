/* fixture MODE ...: the programs of the CRIU-written image fixtures (integration/fixtures/
 * criu-4.2-*, made by integration/fixtures/make-criu-fixtures.sh). Built static, so a restore
 * needs nothing of the machine but this one file at the path it was dumped from. Each mode
 * appends its progress to OUT (opened O_APPEND), one line per step, numbered from 1, so a
 * test sees that the restored program goes on where it stopped.
 *
 *   pipetree OUT      parent writes 1, 2, 3... into a pipe every 20 ms; its child reads them
 *                     and appends each to OUT (numbers may be in flight in the pipe).
 *   threads OUT       three threads count; every 20 ms the main thread appends
 *                     "N c0 c1 c2" to OUT (each counter must keep growing).
 *   usock PATH OUT    a unix stream server on PATH; a child keeps one connection open and
 *                     every 20 ms sends N and appends "N REPLY" (REPLY = N * 2 from the
 *                     server); a new client that writes "hello" gets "hello K\n", K being
 *                     the number of connections the server accepted so far.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static void nap(void)
{
    struct timespec t = {0, 20 * 1000 * 1000};
    nanosleep(&t, NULL);
}

static int out_open(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        perror(path);
        exit(1);
    }
    return fd;
}

static void out_line(int fd, const char *s)
{
    (void)!write(fd, s, strlen(s));
}

static int pipetree(const char *out)
{
    int p[2];
    if (pipe(p))
        return 1;
    pid_t c = fork();
    if (c == 0) {
        close(p[1]);
        int fd = out_open(out);
        FILE *in = fdopen(p[0], "r");
        char line[64];
        while (fgets(line, sizeof line, in))
            out_line(fd, line);
        return 0;
    }
    close(p[0]);
    char buf[32];
    for (long n = 1;; n++) {
        int k = snprintf(buf, sizeof buf, "%ld\n", n);
        if (write(p[1], buf, k) != k)
            return 1;
        nap();
    }
}

static volatile unsigned long counters[3];

static void *counting(void *arg)
{
    long i = (long)arg;
    for (;;) {
        counters[i]++;
        nap();
    }
    return NULL;
}

static int threads(const char *out)
{
    int fd = out_open(out);
    pthread_t t[3];
    for (long i = 0; i < 3; i++)
        pthread_create(&t[i], NULL, counting, (void *)i);
    char buf[128];
    for (long n = 1;; n++) {
        snprintf(buf, sizeof buf, "%ld %lu %lu %lu\n", n, counters[0], counters[1], counters[2]);
        out_line(fd, buf);
        nap();
    }
}

static int usock(const char *path, const char *out)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    unlink(path);
    int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 8)) {
        perror(path);
        return 1;
    }
    if (fork() == 0) {
        close(l);
        int fd = out_open(out);
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(s, (struct sockaddr *)&a, sizeof a))
            return 1;
        char buf[64], back[64];
        for (long n = 1;; n++) {
            int k = snprintf(buf, sizeof buf, "%ld", n);
            if (write(s, buf, k) != k)
                return 1;
            ssize_t r = read(s, back, sizeof back - 1);
            if (r <= 0)
                return 1;
            back[r] = 0;
            snprintf(buf, sizeof buf, "%ld %s\n", n, back);
            out_line(fd, buf);
            nap();
        }
    }
    struct pollfd p[16] = {{l, POLLIN, 0}};
    int n = 1;
    long accepted = 0;
    for (;;) {
        if (poll(p, n, -1) < 0)
            continue;
        if ((p[0].revents & POLLIN) && n < 16) {
            int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
            if (c >= 0) {
                accepted++;
                p[n].fd = c;
                p[n].events = POLLIN;
                p[n].revents = 0;
                n++;
            }
        }
        for (int i = 1; i < n; i++) {
            if (!(p[i].revents & (POLLIN | POLLHUP)))
                continue;
            char buf[64];
            ssize_t r = read(p[i].fd, buf, sizeof buf - 1);
            if (r <= 0) {
                close(p[i].fd);
                p[i] = p[--n];
                i--;
                continue;
            }
            buf[r] = 0;
            char rep[64];
            int k;
            if (strncmp(buf, "hello", 5) == 0)
                k = snprintf(rep, sizeof rep, "hello %ld\n", accepted);
            else
                k = snprintf(rep, sizeof rep, "%ld", atol(buf) * 2);
            (void)!write(p[i].fd, rep, k);
        }
    }
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "pipetree") == 0)
        return pipetree(argv[2]);
    if (argc == 3 && strcmp(argv[1], "threads") == 0)
        return threads(argv[2]);
    if (argc == 4 && strcmp(argv[1], "usock") == 0)
        return usock(argv[2], argv[3]);
    fprintf(stderr, "usage: fixture pipetree OUT | threads OUT | usock PATH OUT\n");
    return 2;
}
