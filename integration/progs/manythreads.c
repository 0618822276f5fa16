/* argv[1] threads with 64 KiB stacks, each looping in pause(). Once all of them have started,
 * the main thread appends "ready" to argv[2] and loops in pause() too. After restore
 * /proc/PID/task must again hold argv[1] + 1 entries. */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int started;

static void *worker(void *arg) {
    (void)arg;
    __atomic_add_fetch(&started, 1, __ATOMIC_SEQ_CST);
    for (;;) pause();
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    long n = strtol(argv[1], 0, 10);
    if (n < 0) return 2;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 64 << 10);
    for (long i = 0; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, &a, worker, 0)) return 1;
    }
    while (__atomic_load_n(&started, __ATOMIC_SEQ_CST) < n) usleep(1000);
    int out = open(argv[2], O_WRONLY | O_CREAT | O_APPEND, 0644);
    dprintf(out, "ready\n");
    close(out);
    for (;;) pause();
}
