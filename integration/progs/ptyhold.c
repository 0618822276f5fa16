// ptyhold OUT: run in a container with its own devpts instance. Opens a pty through
// /dev/ptmx, unlocks it, opens its slave, and writes "ping\n" into the master: a line the
// slave has not read yet. Then every 50 ms appends "round N pts/IDX" to OUT; on SIGUSR1 it
// reads what is queued for the slave and appends "got LINE" (the line the dump had to keep).
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t asked;

static void on_usr1(int sig)
{
	(void)sig;
	asked = 1;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	int m = posix_openpt(O_RDWR | O_NOCTTY);
	if (m < 0 || grantpt(m) || unlockpt(m))
		return 3;
	int idx = 0;
	char *name = ptsname(m);
	if (!name || sscanf(name, "/dev/pts/%d", &idx) != 1)
		return 4;
	int s = open(name, O_RDWR | O_NOCTTY | O_NONBLOCK);
	if (s < 0)
		return 5;
	if (write(m, "ping\n", 5) != 5)
		return 6;
	signal(SIGUSR1, on_usr1);
	FILE *out = fopen(argv[1], "a");
	if (!out)
		return 7;
	setvbuf(out, NULL, _IOLBF, 0);
	for (int i = 1;; i++) {
		fprintf(out, "round %d pts/%d\n", i, idx);
		if (asked) {
			char buf[64] = {0};
			ssize_t n = read(s, buf, sizeof(buf) - 1);
			if (n > 0 && buf[n - 1] == '\n')
				buf[n - 1] = 0;
			fprintf(out, "got %s\n", n > 0 ? buf : "nothing");
			asked = 0;
		}
		usleep(50000);
	}
}
