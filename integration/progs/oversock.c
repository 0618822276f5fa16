/* oversock DIR OUT: zdtm's overmount_sock in a container. A stream listener is bound at
 * DIR/sock, a child connects to it, the parent accepts and closes the listener (the accepted
 * end keeps the name), then mounts a tmpfs over DIR: the socket file is under the cover.
 * Appends a round number to OUT every 50 ms until /data/go exists; then the child sends
 * "data-ok" on its connection, the parent reads it, unmounts DIR and unlinks DIR/sock (now
 * visible again), and appends "result <what it read> umount-ok|umount-<errno>
 * unlink-ok|unlink-<errno>" to OUT. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    char path[108];
    snprintf(path, sizeof path, "%s/sock", argv[1]);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strcpy(a.sun_path, path);
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1)) {
        perror("listener");
        return 1;
    }
    int go[2];
    if (pipe(go))
        return 1;
    pid_t child = fork();
    if (child == 0) {
        close(l);
        close(go[1]);
        int c = socket(AF_UNIX, SOCK_STREAM, 0);
        char x;
        if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a))
            _exit(1);
        if (read(go[0], &x, 1) != 1)
            _exit(2);
        _exit(write(c, "data-ok", 7) == 7 ? 0 : 3);
    }
    close(go[0]);
    int s = accept(l, NULL, NULL);
    if (s < 0) {
        perror("accept");
        return 1;
    }
    close(l);
    if (mount("cover", argv[1], "tmpfs", 0, NULL)) {
        perror("mount");
        return 1;
    }
    FILE *out = fopen(argv[2], "a");
    if (!out)
        return 1;
    setvbuf(out, NULL, _IOLBF, 0);
    for (long i = 1; access("/data/go", F_OK); i++) {
        fprintf(out, "%ld\n", i);
        usleep(50000);
    }
    char buf[16] = "";
    ssize_t n = 0;
    if (write(go[1], "x", 1) == 1)
        n = read(s, buf, 7);
    if (n > 0)
        buf[n] = 0;
    waitpid(child, NULL, 0);
    char um[32] = "umount-ok", ul[32] = "unlink-ok";
    if (umount(argv[1]))
        snprintf(um, sizeof um, "umount-%s", strerror(errno));
    if (unlink(path))
        snprintf(ul, sizeof ul, "unlink-%s", strerror(errno));
    fprintf(out, "result %s %s %s\n", n > 0 ? buf : "nothing", um, ul);
    pause();
    return 0;
}
