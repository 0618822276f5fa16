/* slowcat: copies stdin to stdout in small chunks, slowly, so the pipes on both sides of it
 * stay full (a pipeline with data in flight). Usage: slowcat [chunk] [usec] */
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	int chunk = argc > 1 ? atoi(argv[1]) : 64;
	int usec = argc > 2 ? atoi(argv[2]) : 500;
	char buf[4096];
	if (chunk > (int)sizeof(buf))
		chunk = sizeof(buf);
	for (;;) {
		ssize_t n = read(0, buf, chunk);
		if (n <= 0)
			return n < 0;
		for (ssize_t off = 0; off < n;) {
			ssize_t w = write(1, buf + off, n - off);
			if (w <= 0)
				return 1;
			off += w;
		}
		usleep(usec);
	}
}
