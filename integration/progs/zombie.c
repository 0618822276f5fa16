/* A parent with two unreaped children: one exited with code 7, one killed by SIGTERM. On
 * SIGUSR1 the parent reaps them and appends what waitpid says to argv[1]. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, 0);
    pid_t a = fork();
    if (a == 0) _exit(7);
    pid_t b = fork();
    if (b == 0) { pause(); _exit(0); }
    kill(b, SIGTERM);
    usleep(100000); /* both are zombies now */
    dprintf(out, "ready %d %d\n", a, b);
    int sig;
    sigwait(&usr1, &sig);
    int st;
    pid_t w1 = waitpid(a, &st, WNOHANG);
    dprintf(out, "a %d exited=%d code=%d\n", w1 == a, WIFEXITED(st), WEXITSTATUS(st));
    pid_t w2 = waitpid(b, &st, WNOHANG);
    dprintf(out, "b %d signaled=%d sig=%d\n", w2 == b, WIFSIGNALED(st), WTERMSIG(st));
    for (;;) pause();
}
