/* A parent inside vfork(): its child (sharing its memory, as vfork children do) writes its
 * PID to argv[1] and sleeps argv[2] seconds before _exit; the parent, once let go, appends
 * "parent back" and then counts in argv[1] every 100 ms. While the child sleeps the parent
 * cannot stop: a dump must give up on it after --timeout, not hang. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    int secs = atoi(argv[2]);
    pid_t c = vfork();
    if (c == 0) {
        struct timespec ts = {secs, 0};
        char line[32];
        int n = snprintf(line, sizeof line, "child %d\n", (int)getpid());
        write(out, line, n);
        nanosleep(&ts, 0);
        _exit(0);
    }
    dprintf(out, "parent back\n");
    for (int i = 0;; i++) {
        usleep(100000);
        dprintf(out, "tick %d\n", i);
    }
}
