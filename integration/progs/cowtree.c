/* cowtree MIB KIDS [zero]: fills MIB MiB of private anonymous memory with pseudo-random data,
 * then forks KIDS children that share it copy-on-write; child i changes one byte in page i
 * (with "zero": child i also writes zeros over the upper half). Every process prints
 * "pid PID" and waits; on SIGUSR1 each prints "sum PID CHECKSUM". */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

int main(int argc, char **argv)
{
	size_t len = (size_t)atoi(argv[1]) << 20;
	int kids = atoi(argv[2]);
	setvbuf(stdout, NULL, _IOLBF, 0);
	uint64_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t x = 88172645463325252ull;
	for (size_t i = 0; i < len / 8; i++) {
		x ^= x << 13; x ^= x >> 7; x ^= x << 17;
		m[i] = x;
	}
	sigset_t set, old;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigprocmask(SIG_BLOCK, &set, &old);
	signal(SIGUSR1, on_usr1);
	for (int k = 0; k < kids; k++) {
		if (fork() == 0) {
			((char *)m)[(size_t)(k + 1) * 4096] ^= 1;
			if (argc > 3 && strcmp(argv[3], "zero") == 0)
				memset((char *)m + len / 2, 0, len / 2);
			break;
		}
	}
	printf("pid %d\n", getpid());
	for (;;) {
		while (!go)
			sigsuspend(&old);
		go = 0;
		uint64_t s = 0;
		for (size_t i = 0; i < len / 8; i++)
			s = s * 31 + m[i];
		printf("sum %d %llu\n", getpid(), (unsigned long long)s);
	}
}
