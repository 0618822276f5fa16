/* shm: a parent and its child share a 32 MiB MAP_SHARED|MAP_ANONYMOUS region and a pipe;
 * a second child exited with status 7 and is left a zombie.
 *
 * The child increments a counter in word 0 of the region every 20 ms and writes its value
 * to the pipe ("N\n"). The parent reads the pipe and prints "got N mem M" (M is word 0 as
 * the parent sees it, so M >= N only if the memory is really shared). The rest of the
 * region holds a pattern; SIGUSR1 makes the parent print "sum S" over it, SIGUSR2 makes it
 * reap the zombie and print "zombie Z status X". argv[1]: file to write "PARENT CHILD ZOMBIE".
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define SIZE (32u << 20)
static volatile sig_atomic_t want_sum, want_reap;
static void on_usr1(int s) { (void)s; want_sum = 1; }
static void on_usr2(int s) { (void)s; want_reap = 1; }

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	uint64_t *m = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		return 1;
	for (size_t i = 1; i < SIZE / 8; i += 7)
		m[i] = i * 2654435761u;
	pid_t z = fork();
	if (z == 0)
		_exit(7);
	int p[2];
	pipe(p);
	pid_t c = fork();
	if (c == 0) {
		close(p[0]);
		for (;;) {
			uint64_t n = __atomic_add_fetch(&m[0], 1, __ATOMIC_SEQ_CST);
			dprintf(p[1], "%llu\n", (unsigned long long)n);
			usleep(20000);
		}
	}
	close(p[1]);
	FILE *f = fopen(argv[1], "w");
	fprintf(f, "%d %d %d\n", getpid(), c, z);
	fclose(f);
	struct sigaction sa = {0};
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_usr2;
	sigaction(SIGUSR2, &sa, NULL);
	FILE *in = fdopen(p[0], "r");
	char line[64];
	for (;;) {
		if (want_sum) {
			want_sum = 0;
			uint64_t s = 0;
			for (size_t i = 1; i < SIZE / 8; i++)
				s = s * 31 + m[i];
			printf("sum %llu\n", (unsigned long long)s);
		}
		if (want_reap) {
			want_reap = 0;
			int st;
			pid_t r = waitpid(z, &st, WNOHANG);
			printf("zombie %d status %d\n", r, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
		}
		if (!fgets(line, sizeof(line), in)) {
			clearerr(in);
			continue;
		}
		printf("got %llu mem %llu\n", strtoull(line, NULL, 10),
		       (unsigned long long)__atomic_load_n(&m[0], __ATOMIC_SEQ_CST));
	}
}
