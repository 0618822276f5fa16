#define _GNU_SOURCE
// TCP clients for the inet tests and the benchmark: NCONN connections to an echo server
// (echosrv). Connection 0 plays ping-pong (a 32-byte request, wait for its echo) and records
// the longest round trip: how long a request was stalled. Every other connection streams a
// deterministic byte sequence (byte i of connection k is a function of i and k), keeping at
// most WINDOW bytes not echoed yet, and checks every byte that comes back: each must arrive
// exactly once, in order. Any error (reset, end of file, wrong byte) is reported.
//
// usage: echocli ADDR PORT NCONN OUT [WINDOW [READ_CHUNK [RCVBUF [PAUSE_US]]]]
// (a small RCVBUF and a pause between turns keep the server's send queues full)
// OUT gets "ready NCONN" once connected, "progress BYTES" every 100 ms, and, after SIGUSR1
// (stop sending, wait until everything sent came back, at most 60 s):
// "done conns=N sent=S echoed=E errors=X maxrtt_us=R" (exit 0 when X is 0 and E == S).
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct conn {
	int fd;
	uint64_t sent, echoed;
	int dead;
	uint64_t ping_start; // ping-pong: when the request went out (0: none out)
};

static volatile sig_atomic_t stop;
static void on_usr1(int s)
{
	(void)s;
	stop = 1;
}

static inline unsigned char pat(uint64_t i, int k)
{
	return (unsigned char)((i * 31) ^ (i >> 9) ^ (k * 97));
}

static uint64_t now_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

int main(int argc, char **argv)
{
	if (argc < 5) {
		fprintf(stderr, "usage: echocli ADDR PORT NCONN OUT [WINDOW [READ_CHUNK [RCVBUF [PAUSE_US]]]]\n");
		return 2;
	}
	int port = atoi(argv[2]);
	int n = atoi(argv[3]);
	FILE *out = fopen(argv[4], "w");
	setvbuf(out, NULL, _IOLBF, 0);
	uint64_t window = argc > 5 ? strtoull(argv[5], NULL, 0) : 262144;
	size_t rchunk = argc > 6 ? (size_t)atol(argv[6]) : 65536;
	int rcvbuf = argc > 7 ? atoi(argv[7]) : 0;
	int pause_us = argc > 8 ? atoi(argv[8]) : 0;
	signal(SIGUSR1, on_usr1);
	signal(SIGPIPE, SIG_IGN);

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
	struct conn *c = calloc(n, sizeof(*c));
	struct pollfd *p = calloc(n, sizeof(*p));
	for (int k = 0; k < n; k++) {
		c[k].fd = socket(fam, SOCK_STREAM, 0);
		if (rcvbuf)
			setsockopt(c[k].fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
		if (connect(c[k].fd, (void *)&ss, sl)) {
			fprintf(out, "error conn %d: connect: %s\n", k, strerror(errno));
			return 1;
		}
		int one = 1;
		setsockopt(c[k].fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (fcntl(c[k].fd, F_SETFL, O_NONBLOCK) < 0)
			return 1;
	}
	fprintf(out, "ready %d\n", n);
	unsigned char *wb = malloc(65536), *rb = malloc(rchunk > 65536 ? rchunk : 65536);
	uint64_t maxrtt = 0, last_progress = now_us(), stop_at = 0;
	int errors = 0;
	for (;;) {
		uint64_t t = now_us();
		if (stop && !stop_at)
			stop_at = t;
		int pending = 0;
		for (int k = 0; k < n; k++) {
			struct conn *q = &c[k];
			if (q->dead)
				continue;
			if (q->echoed < q->sent)
				pending = 1;
			// Send.
			if (!stop && k == 0 && !q->ping_start) {
				size_t len = 32;
				for (size_t i = 0; i < len; i++)
					wb[i] = pat(q->sent + i, k);
				ssize_t w = send(q->fd, wb, len, MSG_NOSIGNAL);
				if (w > 0) {
					q->sent += w;
					q->ping_start = t;
				}
			} else if (!stop && k > 0 && q->sent - q->echoed < window) {
				size_t len = window - (q->sent - q->echoed);
				if (len > 16384)
					len = 16384;
				for (size_t i = 0; i < len; i++)
					wb[i] = pat(q->sent + i, k);
				ssize_t w = send(q->fd, wb, len, MSG_NOSIGNAL);
				if (w > 0)
					q->sent += w;
				else if (w < 0 && errno != EAGAIN) {
					fprintf(out, "error conn %d: send: %s\n", k, strerror(errno));
					q->dead = 1;
					errors++;
					continue;
				}
			}
			// Receive and check.
			ssize_t r = recv(q->fd, rb, rchunk, 0);
			if (r == 0 || (r < 0 && errno != EAGAIN)) {
				fprintf(out, "error conn %d: recv: %s\n", k, r ? strerror(errno) : "end of file");
				q->dead = 1;
				errors++;
				continue;
			}
			if (r > 0) {
				for (ssize_t i = 0; i < r; i++) {
					if (rb[i] != pat(q->echoed + i, k)) {
						fprintf(out, "error conn %d: byte %llu is %u, not %u\n", k,
							(unsigned long long)(q->echoed + i), rb[i],
							pat(q->echoed + i, k));
						q->dead = 1;
						errors++;
						break;
					}
				}
				if (q->dead)
					continue;
				q->echoed += r;
				if (q->echoed > q->sent) {
					fprintf(out, "error conn %d: %llu bytes echoed, %llu sent\n", k,
						(unsigned long long)q->echoed, (unsigned long long)q->sent);
					q->dead = 1;
					errors++;
					continue;
				}
				if (k == 0 && q->echoed == q->sent && q->ping_start) {
					uint64_t rtt = t - q->ping_start;
					if (rtt > maxrtt)
						maxrtt = rtt;
					q->ping_start = 0;
				}
			}
		}
		if (t - last_progress >= 100000) {
			uint64_t tot = 0;
			for (int k = 0; k < n; k++)
				tot += c[k].echoed;
			fprintf(out, "progress %llu\n", (unsigned long long)tot);
			last_progress = t;
		}
		if (stop_at && (!pending || t - stop_at > 60000000))
			break;
		for (int k = 0; k < n; k++) {
			p[k].fd = c[k].dead ? -1 : c[k].fd;
			p[k].events = POLLIN;
		}
		poll(p, n, 1);
		if (pause_us && !stop_at)
			usleep(pause_us);
	}
	uint64_t sent = 0, echoed = 0;
	for (int k = 0; k < n; k++) {
		sent += c[k].sent;
		echoed += c[k].echoed;
		if (c[k].echoed != c[k].sent && !c[k].dead) {
			fprintf(out, "error conn %d: %llu of %llu bytes came back\n", k,
				(unsigned long long)c[k].echoed, (unsigned long long)c[k].sent);
			errors++;
		}
	}
	fprintf(out, "done conns=%d sent=%llu echoed=%llu errors=%d maxrtt_us=%llu\n", n,
		(unsigned long long)sent, (unsigned long long)echoed, errors, (unsigned long long)maxrtt);
	return errors || echoed != sent;
}
