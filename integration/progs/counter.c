/* Appends an increasing number to a file every 100 ms (argv[1]), forever.
 * After checkpoint/restore the sequence must continue with no restart and no gap. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) return 1;
    for (unsigned long i = 0;; i++) {
        char buf[32];
        int n = snprintf(buf, sizeof buf, "%lu\n", i);
        if (write(fd, buf, n) != n) return 1;
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
