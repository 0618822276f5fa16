/* Holds file locks of the three kinds in DIR (argv[1]) and counts in DIR/out every 50 ms:
 * a POSIX write lock on bytes 10..19 of DIR/posix, an OFD read lock from byte 100 to EOF of
 * DIR/ofd, and a flock(LOCK_EX) on DIR/flock whose open file description a forked child
 * shares (the lock must come back once). Prints "ready" to DIR/out first. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

static int open_in(const char *dir, const char *name) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return open(p, O_RDWR | O_CREAT, 0644);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int px = open_in(argv[1], "posix"), ofd = open_in(argv[1], "ofd");
    int fl = open_in(argv[1], "flock"), out = open_in(argv[1], "out");
    if (px < 0 || ofd < 0 || fl < 0 || out < 0) return 1;
    struct flock a = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 10};
    if (fcntl(px, F_SETLK, &a)) return 3;
    struct flock b = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 100, .l_len = 0};
    if (fcntl(ofd, F_OFD_SETLK, &b)) return 4;
    if (flock(fl, LOCK_EX | LOCK_NB)) return 5;
    if (fork() == 0) {
        for (;;) pause();
    }
    dprintf(out, "ready\n");
    for (unsigned long i = 0;; i++) {
        dprintf(out, "%lu\n", i);
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
