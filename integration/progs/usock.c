/* usock OUT: a unix-socket server and its client in one process tree, for the container
 * tests. The parent listens on a path (/tmp/app.sock) and on an abstract name (@cryo-app);
 * the child, every 50 ms, connects to each in turn, sends its round number, reads the echo
 * and appends "N path|abstract" to OUT. New connections after a restore prove the listeners
 * came back in the container's mount and network namespaces. */
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static socklen_t addr(struct sockaddr_un *a, const char *name, int abstract)
{
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    size_t n = strlen(name);
    memcpy(a->sun_path + (abstract ? 1 : 0), name, n);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (abstract ? 1 : 0));
}

static int listener(const char *name, int abstract)
{
    struct sockaddr_un a;
    socklen_t len = addr(&a, name, abstract);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (!abstract)
        unlink(name);
    if (s < 0 || bind(s, (struct sockaddr *)&a, len) || listen(s, 8)) {
        perror("listener");
        exit(1);
    }
    return s;
}

static int ask(const char *name, int abstract, long n)
{
    struct sockaddr_un a;
    socklen_t len = addr(&a, name, abstract);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    char buf[32], back[32];
    int k = snprintf(buf, sizeof buf, "%ld", n);
    if (connect(s, (struct sockaddr *)&a, len) || write(s, buf, k) != k) {
        close(s);
        return -1;
    }
    ssize_t r = read(s, back, sizeof back);
    close(s);
    return r == k && memcmp(buf, back, k) == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    int lp = listener("/tmp/app.sock", 0), la = listener("cryo-app", 1);
    pid_t child = fork();
    if (child == 0) {
        FILE *out = fopen(argv[1], "a");
        setvbuf(out, NULL, _IOLBF, 0);
        struct timespec t = {0, 50 * 1000 * 1000};
        for (long n = 1;; n++) {
            const char *how = n % 2 ? "path" : "abstract";
            if (ask(n % 2 ? "/tmp/app.sock" : "cryo-app", n % 2 == 0, n))
                fprintf(out, "%ld %s FAILED\n", n, how);
            else
                fprintf(out, "%ld %s\n", n, how);
            nanosleep(&t, NULL);
        }
    }
    struct pollfd p[2] = {{lp, POLLIN, 0}, {la, POLLIN, 0}};
    for (;;) {
        if (poll(p, 2, -1) < 0)
            continue;
        for (int i = 0; i < 2; i++) {
            if (!(p[i].revents & POLLIN))
                continue;
            int c = accept(p[i].fd, NULL, NULL);
            char buf[32];
            ssize_t r = c < 0 ? -1 : read(c, buf, sizeof buf);
            if (r > 0)
                (void)!write(c, buf, r);
            if (c >= 0)
                close(c);
        }
    }
}
