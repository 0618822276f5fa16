#define _GNU_SOURCE
// Half-closed TCP connections for the inet tests. Both ends in one program, by role.
//
//   halfclose server PORT OUT     accepts 6 connections (0..5), then:
//     conn 1: shuts its side down at once (FIN_WAIT1, then FIN_WAIT2 once acknowledged)
//     SIGUSR2: shuts down conns 3, 4 and 5 (3 had the peer's FIN: LAST_ACK; 4: FIN_WAIT1;
//              5, whose peer's FIN comes after: CLOSING)
//     SIGUSR1: sends "late 2" on conn 2 (CLOSE_WAIT: the peer shut its side) and closes it
//   halfclose client ADDR PORT OUT  connects 6 connections, then shuts down the write side
//     of conns 2 and 3 at once; SIGUSR2: of conn 5; SIGUSR1: sends "after K" on conns 0
//     and 1.
// Both log "conn K got DATA", "conn K eof" and "conn K error STRERROR"; the server echoes
// whatever it gets on conn 0. OUT starts with "ready".
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define N 6
static volatile sig_atomic_t usr1, usr2;
static void on1(int s) { (void)s; usr1 = 1; }
static void on2(int s) { (void)s; usr2 = 1; }

int main(int argc, char **argv)
{
	if (argc < 4)
		return 2;
	int server = !strcmp(argv[1], "server");
	FILE *out = fopen(argv[server ? 3 : 4], "w");
	setvbuf(out, NULL, _IOLBF, 0);
	signal(SIGUSR1, on1);
	signal(SIGUSR2, on2);
	signal(SIGPIPE, SIG_IGN);
	int c[N], eof[N] = { 0 }, closed[N] = { 0 };
	if (server) {
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };
		int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
		setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(l, (void *)&a, sizeof(a)) || listen(l, 8))
			return 1;
		fprintf(out, "ready\n");
		for (int k = 0; k < N; k++)
			c[k] = accept(l, NULL, NULL);
		close(l);
		shutdown(c[1], SHUT_WR);
	} else {
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[3])) };
		inet_pton(AF_INET, argv[2], &a.sin_addr);
		for (int k = 0; k < N; k++) {
			c[k] = socket(AF_INET, SOCK_STREAM, 0);
			if (connect(c[k], (void *)&a, sizeof(a)))
				return 1;
		}
		shutdown(c[2], SHUT_WR);
		shutdown(c[3], SHUT_WR);
		fprintf(out, "ready\n");
	}
	for (;;) {
		if (usr2) {
			usr2 = 0;
			if (server) {
				shutdown(c[3], SHUT_WR);
				shutdown(c[4], SHUT_WR);
				shutdown(c[5], SHUT_WR);
				fprintf(out, "shut 3 4 5\n");
			} else {
				shutdown(c[5], SHUT_WR);
				fprintf(out, "shut 5\n");
			}
		}
		if (usr1) {
			usr1 = 0;
			if (server) {
				send(c[2], "late 2", 6, 0);
				close(c[2]);
				closed[2] = 1;
				fprintf(out, "closed 2\n");
			} else {
				send(c[0], "after 0", 7, 0);
				send(c[1], "after 1", 7, 0);
				fprintf(out, "sent after\n");
			}
		}
		struct pollfd p[N];
		for (int k = 0; k < N; k++) {
			p[k].fd = (eof[k] || closed[k]) ? -1 : c[k];
			p[k].events = POLLIN;
		}
		if (poll(p, N, 50) <= 0)
			continue;
		for (int k = 0; k < N; k++) {
			if (p[k].fd < 0 || !(p[k].revents & (POLLIN | POLLERR | POLLHUP)))
				continue;
			char b[256];
			ssize_t r = recv(c[k], b, sizeof(b) - 1, MSG_DONTWAIT);
			if (r < 0 && errno == EAGAIN)
				continue;
			if (r < 0) {
				fprintf(out, "conn %d error %s\n", k, strerror(errno));
				eof[k] = 1;
			} else if (r == 0) {
				fprintf(out, "conn %d eof\n", k);
				eof[k] = 1;
			} else {
				b[r] = 0;
				fprintf(out, "conn %d got %s\n", k, b);
				if (server && k == 0)
					send(c[0], b, r, 0);
			}
		}
	}
}
