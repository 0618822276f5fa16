#define _GNU_SOURCE
// TCP echo server for the inet tests: one listening socket (ADDR:PORT, IPv4 or IPv6) and
// every accepted connection in one epoll loop. Whatever a client sends comes back to it,
// byte for byte, in order. It reads and writes at most CHUNK bytes per connection per turn
// and sleeps PAUSE_US between turns, so that at any moment bytes wait unread in its
// receive queues and unacknowledged in its send queues (what a checkpoint must keep).
// Output not taken by the kernel waits in a per-connection buffer (program memory).
//
// With MEM_MIB, it also holds MEM_MIB MiB of written memory (a server's state), every page
// filled before "ready", and rewrites one page per turn (a live server's dirty memory); on
// SIGUSR1 it checks every page (each holds its own index and generation throughout, and the
// generation it last wrote there) and writes "verify ok PAGES" or "verify bad page N".
//
// usage: echosrv ADDR PORT OUT [CHUNK [PAUSE_US [SNDBUF [MEM_MIB]]]]
// OUT gets "ready PORT" once listening, and "accepted N" as connections arrive.
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXC 4096

struct conn {
	int fd;
	char *pend;
	size_t len, cap;
	int closed;
};

static struct conn conns[MAXC];

static volatile sig_atomic_t check;
static void on_usr1(int s)
{
	(void)s;
	check = 1;
}

#define PAGE 4096
#define WORDS (PAGE / sizeof(uint64_t))

static void fill(uint64_t *p, uint64_t i, uint64_t gen)
{
	for (size_t w = 0; w < WORDS; w++)
		p[w] = (i << 32 | gen) ^ (w * 0x9e3779b97f4a7c15ull);
}

// Every page as it was last written: "verify ok N" or the first bad page.
static void verify(FILE *out, char *mem, const uint32_t *gens, size_t pages)
{
	for (size_t i = 0; i < pages; i++) {
		uint64_t *p = (uint64_t *)(mem + i * PAGE);
		for (size_t w = 0; w < WORDS; w++)
			if (p[w] != (((uint64_t)i << 32 | gens[i]) ^ (w * 0x9e3779b97f4a7c15ull))) {
				fprintf(out, "verify bad page %zu word %zu\n", i, w);
				return;
			}
	}
	fprintf(out, "verify ok %zu\n", pages);
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: echosrv ADDR PORT OUT [CHUNK [PAUSE_US [SNDBUF]]]\n");
		return 2;
	}
	int port = atoi(argv[2]);
	size_t chunk = argc > 4 ? (size_t)atol(argv[4]) : 65536;
	int pause_us = argc > 5 ? atoi(argv[5]) : 0;
	int sndbuf = argc > 6 ? atoi(argv[6]) : 0;
	size_t pages = argc > 7 ? (size_t)atol(argv[7]) * (1 << 20) / PAGE : 0;
	FILE *out = fopen(argv[3], "w");
	setvbuf(out, NULL, _IOLBF, 0);
	signal(SIGUSR1, on_usr1);
	char *mem = NULL;
	uint32_t *gens = NULL;
	size_t next = 0;
	if (pages) {
		mem = malloc(pages * PAGE);
		gens = calloc(pages, sizeof(*gens));
		if (!mem || !gens) {
			perror("malloc");
			return 1;
		}
		for (size_t i = 0; i < pages; i++)
			fill((uint64_t *)(mem + i * PAGE), i, 0);
	}

	struct sockaddr_storage ss;
	socklen_t sl;
	memset(&ss, 0, sizeof(ss));
	int fam = strchr(argv[1], ':') ? AF_INET6 : AF_INET;
	if (fam == AF_INET) {
		struct sockaddr_in *a = (void *)&ss;
		a->sin_family = AF_INET;
		a->sin_port = htons(port);
		inet_pton(AF_INET, argv[1], &a->sin_addr);
		sl = sizeof(*a);
	} else {
		struct sockaddr_in6 *a = (void *)&ss;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons(port);
		inet_pton(AF_INET6, argv[1], &a->sin6_addr);
		sl = sizeof(*a);
	}
	int l = socket(fam, SOCK_STREAM | SOCK_NONBLOCK, 0);
	int one = 1;
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (fam == AF_INET6) {
		int off = 0; // dual stack: IPv4 clients come as v4-mapped addresses
		setsockopt(l, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
	}
	if (bind(l, (void *)&ss, sl) || listen(l, 128)) {
		perror("bind/listen");
		return 1;
	}
	fprintf(out, "ready %d\n", port);
	int accepted = 0;
	char *buf = malloc(chunk);
	for (;;) {
		int progress = 0;
		int c;
		while ((c = accept4(l, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
			if (c >= MAXC) {
				close(c);
				continue;
			}
			int nd = 1;
			setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &nd, sizeof(nd));
			if (sndbuf)
				setsockopt(c, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
			conns[c] = (struct conn){ .fd = c };
			fprintf(out, "accepted %d\n", ++accepted);
			progress = 1;
		}
		// One turn over every connection: at most one chunk out and one chunk in.
		for (c = 0; c < MAXC; c++) {
			struct conn *k = &conns[c];
			if (!k->fd || k->closed)
				continue;
			if (k->len) {
				ssize_t w = send(c, k->pend, k->len < chunk ? k->len : chunk, MSG_NOSIGNAL);
				if (w < 0 && errno != EAGAIN) {
					fprintf(out, "error conn %d: send: %s\n", c, strerror(errno));
					k->closed = 1;
					close(c);
					continue;
				}
				if (w > 0) {
					memmove(k->pend, k->pend + w, k->len - w);
					k->len -= w;
					progress = 1;
				}
			}
			if (k->len > 4 * chunk)
				continue;
			ssize_t r = recv(c, buf, chunk, 0);
			if (r == 0 || (r < 0 && errno != EAGAIN)) {
				if (r < 0)
					fprintf(out, "error conn %d: recv: %s\n", c, strerror(errno));
				k->closed = 1;
				close(c);
				continue;
			}
			if (r > 0) {
				if (k->len + r > k->cap) {
					k->cap = (k->len + r) * 2;
					k->pend = realloc(k->pend, k->cap);
				}
				memcpy(k->pend + k->len, buf, r);
				k->len += r;
				progress = 1;
			}
		}
		if (pages) {
			fill((uint64_t *)(mem + next * PAGE), next, ++gens[next]);
			next = (next + 1) % pages;
		}
		if (check) {
			check = 0;
			if (pages)
				verify(out, mem, gens, pages);
			else
				fprintf(out, "verify ok 0\n");
		}
		if (pause_us)
			usleep(pause_us);
		else if (!progress)
			usleep(500);
	}
}
