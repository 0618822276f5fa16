/* tcpfull OUT: a parent and its child talking over two TCP connections on 127.0.0.1 (the
 * parent listens; the child connects twice): "data", whose queues are kept full both ways,
 * and "ctl", where they take turns. The parent's data socket asks for 64 MiB buffers (the
 * kernel caps them at net.core.[rw]mem_max).
 *
 * Each turn the parent reads half of the bytes the child said it had written and not yet
 * read, tells the child how many it wrote itself since the last turn, waits for the child's
 * count, and writes on data until the kernel takes no more. The child, on its turn, writes
 * until the kernel takes no more, reads half of what the parent has pending for it, and
 * answers with its count. So the parent's receive queue and both send queues stay full, and
 * while one of them waits on ctl, the other waits on data.
 *
 * Every stream is the bytes 0..250 over and over; the readers check each byte. The parent
 * writes "ready PARENT CHILD PORT" to OUT, then "turn N" after each turn. On SIGUSR1 it
 * stops: both shut data down for writing, read it to the end, exchange their totals on ctl,
 * and the parent writes "done ok SENT RECEIVED" (or "FAIL ..." with the reason; the child
 * tells its own failures by its exit status). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHUNK 4096
static unsigned char pattern[CHUNK + 251];
static volatile sig_atomic_t stop;
static FILE *out;

static void on_usr1(int s) { (void)s; stop = 1; }

static void die(const char *what)
{
    fprintf(out, "FAIL %s: %s\n", what, strerror(errno));
    fflush(out);
    exit(1);
}

static void put(int fd, const void *p, size_t n)
{
    const char *b = p;
    while (n) {
        ssize_t r = write(fd, b, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) die("write ctl");
        b += r;
        n -= r;
    }
}

static void get(int fd, void *p, size_t n)
{
    char *b = p;
    while (n) {
        ssize_t r = read(fd, b, n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) die("read ctl");
        if (r == 0) { errno = EPIPE; die("ctl closed"); }
        b += r;
        n -= r;
    }
}

/* Writes on data without blocking, 17 bytes at a time (so that a fill takes a while, bytes
 * flowing out as they are written), until the kernel takes no more; returns the count. */
static int64_t fill(int fd, int64_t *sent)
{
    int64_t n = 0;
    for (;;) {
        ssize_t r = send(fd, pattern + *sent % 251, 17, MSG_DONTWAIT);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return n;
        if (r < 0) die("write data");
        *sent += r;
        n += r;
    }
}

/* Reads `want` bytes of data (all of it to the end when want < 0), checking each. */
static int64_t drain(int fd, int64_t want, int64_t *got)
{
    unsigned char b[CHUNK];
    int64_t n = 0;
    while (want < 0 || n < want) {
        size_t ask = sizeof b;
        if (want >= 0 && want - n < (int64_t)ask) ask = want - n;
        ssize_t r = read(fd, b, ask);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) die("read data");
        if (r == 0) {
            if (want < 0) break;
            errno = EPIPE;
            die("data closed early");
        }
        for (ssize_t i = 0; i < r; i++)
            if (b[i] != (*got + i) % 251) {
                fprintf(out, "FAIL byte %lld of data is %d, not %d\n", (long long)(*got + i), b[i],
                        (int)((*got + i) % 251));
                fflush(out);
                exit(1);
            }
        *got += r;
        n += r;
    }
    return n;
}

static int child(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int d = socket(AF_INET, SOCK_STREAM, 0), c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(d, (void *)&a, sizeof a) || connect(c, (void *)&a, sizeof a)) die("connect");
    int64_t sent = 0, got = 0, pending = 0;
    int64_t w = fill(d, &sent);
    put(c, &w, sizeof w);
    for (;;) {
        int64_t x;
        get(c, &x, sizeof x);
        if (x < 0) break;
        pending += x;
        w = fill(d, &sent);
        pending -= drain(d, pending / 2, &got);
        put(c, &w, sizeof w);
    }
    int64_t peer_sent;
    get(c, &peer_sent, sizeof peer_sent);
    if (shutdown(d, SHUT_WR)) die("shutdown data");
    drain(d, -1, &got);
    put(c, &sent, sizeof sent);
    if (got != peer_sent) {
        fprintf(stderr, "child: got %lld bytes, the parent sent %lld\n", (long long)got,
                (long long)peer_sent);
        return 2;
    }
    return 0;
}

int main(int argc, char **argv)
{
    for (size_t i = 0; i < sizeof pattern; i++) pattern[i] = i % 251;
    out = fopen(argv[1], "w");
    if (!out) return 1;
    int port = 46000 + getpid() % 1000;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int one = 1;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l, (void *)&a, sizeof a) || listen(l, 8)) die("listen");
    pid_t kid = fork();
    if (kid < 0) die("fork");
    if (kid == 0) {
        close(l);
        fclose(out);
        out = stderr;
        return child(port);
    }
    int d = accept(l, NULL, NULL), c = accept(l, NULL, NULL);
    if (d < 0 || c < 0) die("accept");
    int big = 64 << 20;
    setsockopt(d, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    setsockopt(d, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    struct sigaction sa = {.sa_handler = on_usr1};
    sigaction(SIGUSR1, &sa, NULL);
    int64_t sent = 0, got = 0, pending;
    int64_t w = fill(d, &sent);
    get(c, &pending, sizeof pending);
    fprintf(out, "ready %d %d %d\n", getpid(), kid, port);
    fflush(out);
    for (long turn = 1; !stop; turn++) {
        pending -= drain(d, pending / 2, &got);
        put(c, &w, sizeof w);
        int64_t x;
        get(c, &x, sizeof x);
        pending += x;
        w = fill(d, &sent);
        fprintf(out, "turn %ld\n", turn);
        fflush(out);
    }
    int64_t end = -1;
    put(c, &end, sizeof end);
    put(c, &sent, sizeof sent);
    if (shutdown(d, SHUT_WR)) die("shutdown data");
    drain(d, -1, &got);
    int64_t peer_sent;
    get(c, &peer_sent, sizeof peer_sent);
    int st;
    if (waitpid(kid, &st, 0) != kid) die("waitpid");
    if (got != peer_sent)
        fprintf(out, "FAIL got %lld bytes, the child sent %lld\n", (long long)got,
                (long long)peer_sent);
    else if (!WIFEXITED(st) || WEXITSTATUS(st))
        fprintf(out, "FAIL the child ended with status %#x\n", st);
    else
        fprintf(out, "done ok %lld %lld\n", (long long)sent, (long long)got);
    fflush(out);
    return 0;
}
