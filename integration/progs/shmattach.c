/* SysV shared memory attached in the process (run under `unshare -i`): a 3-page segment
 * attached read-write with its middle page mprotect()ed read-only (one attachment seen as
 * three mappings), attached a second time read-only elsewhere, and filled with a pattern
 * through the first attachment. Prints "ready SHMID", then, at start and on every SIGUSR1,
 * "have SAME PATTERN PERMS": SAME is 1 when a byte written through the first attachment shows
 * through the second, PATTERN 1 when the pattern is intact, PERMS the permissions of the
 * four mappings in /proc/self/maps ("rw-s r--s rw-s r--s" as made).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <unistd.h>

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

static void perms_of(unsigned long addr, char *out)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	unsigned long s, e;
	char p[5];
	strcpy(out, "none");
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "%lx-%lx %4s", &s, &e, p) == 3 && s == addr) {
			strcpy(out, p);
			break;
		}
	if (f)
		fclose(f);
}

int main(void)
{
	long pg = sysconf(_SC_PAGESIZE);
	int id = shmget(IPC_PRIVATE, 3 * pg, IPC_CREAT | 0600);
	if (id < 0)
		return 2;
	unsigned char *rw = shmat(id, NULL, 0);
	unsigned char *ro = shmat(id, NULL, SHM_RDONLY);
	if (rw == (void *)-1 || ro == (void *)-1)
		return 3;
	for (long i = 0; i < 3 * pg; i++)
		rw[i] = (unsigned char)(i * 7 + 3);
	if (mprotect(rw + pg, pg, PROT_READ))
		return 4;
	signal(SIGUSR1, on_usr1);
	printf("ready %d\n", id);
	fflush(stdout);
	for (int round = 0;; round++) {
		if (round == 0 || asked) {
			asked = 0;
			int pattern = 1;
			for (long i = 1; i < 3 * pg; i++)
				if (ro[i] != (unsigned char)(i * 7 + 3))
					pattern = 0;
			rw[0] = (unsigned char)(round + 1);
			int same = ro[0] == (unsigned char)(round + 1);
			char a[8], b[8], c[8], d[8];
			perms_of((unsigned long)rw, a);
			perms_of((unsigned long)rw + pg, b);
			perms_of((unsigned long)rw + 2 * pg, c);
			perms_of((unsigned long)ro, d);
			printf("have %d %d %s %s %s %s\n", same, pattern, a, b, c, d);
			fflush(stdout);
		}
		usleep(50000);
	}
}
