/* usermapped UID_MAP GID_MAP CMD [ARG...]: runs CMD as root of a new user namespace whose
 * uid and gid maps are UID_MAP and GID_MAP (as /proc/PID/uid_map takes them, e.g.
 * "0 20000 20000"), so that root inside is not the caller's uid outside (what
 * `unshare --map-root-user` cannot do without newuidmap). The process itself enters the
 * namespace (CMD keeps its PID); a child forked before, still outside, writes the maps. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void write_map(pid_t pid, const char *file, const char *map) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", pid, file);
    int fd = open(path, O_WRONLY);
    if (fd < 0 || write(fd, map, strlen(map)) != (ssize_t)strlen(map)) {
        perror(path);
        _exit(1);
    }
    close(fd);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: usermapped UID_MAP GID_MAP CMD [ARG...]\n");
        return 2;
    }
    int go[2];
    if (pipe(go)) return 1;
    pid_t parent = getpid();
    pid_t child = fork();
    if (child < 0) return 1;
    if (child == 0) {
        char c;
        close(go[1]);
        if (read(go[0], &c, 1) != 1) _exit(1);
        write_map(parent, "uid_map", argv[1]);
        write_map(parent, "gid_map", argv[2]);
        _exit(0);
    }
    close(go[0]);
    if (unshare(CLONE_NEWUSER)) {
        perror("unshare(CLONE_NEWUSER)");
        return 1;
    }
    if (write(go[1], "x", 1) != 1) return 1;
    int st;
    if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "usermapped: writing the maps failed\n");
        return 1;
    }
    if (setresgid(0, 0, 0) || setresuid(0, 0, 0)) {
        perror("setresuid(0)");
        return 1;
    }
    execvp(argv[3], argv + 3);
    perror(argv[3]);
    return 127;
}
