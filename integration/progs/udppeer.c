#define _GNU_SOURCE
// A UDP (or UDP-Lite) peer for the inet tests.
//   server: bound to LADDR:LPORT; answers every datagram "X" with "re:X" to its sender and
//           logs "got X from ADDR:PORT".
//   client: bound to LADDR:LPORT (0: any port), connected to PADDR:PPORT; each SIGUSR2 sends
//           the next datagram "cN"; logs every datagram it receives as "reply X".
// SIGUSR1 stops reading (datagrams queue up in the socket) or starts again.
//
// usage: udppeer udp|udplite server|client LADDR LPORT OUT [PADDR PPORT]
// OUT gets "ready PORT" (the bound port) first.
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

#ifndef IPPROTO_UDPLITE
#define IPPROTO_UDPLITE 136
#endif

static volatile sig_atomic_t paused, to_send;
static void on_usr1(int s)
{
	(void)s;
	paused = !paused;
}
static void on_usr2(int s)
{
	(void)s;
	to_send++;
}

static socklen_t mkaddr(const char *a, int port, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	if (strchr(a, ':')) {
		struct sockaddr_in6 *s6 = (void *)ss;
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(port);
		inet_pton(AF_INET6, a, &s6->sin6_addr);
		return sizeof(*s6);
	}
	struct sockaddr_in *s4 = (void *)ss;
	s4->sin_family = AF_INET;
	s4->sin_port = htons(port);
	inet_pton(AF_INET, a, &s4->sin_addr);
	return sizeof(*s4);
}

static void show(struct sockaddr_storage *ss, char *buf, size_t n)
{
	char a[64];
	if (ss->ss_family == AF_INET6) {
		struct sockaddr_in6 *s6 = (void *)ss;
		inet_ntop(AF_INET6, &s6->sin6_addr, a, sizeof(a));
		snprintf(buf, n, "[%s]:%d", a, ntohs(s6->sin6_port));
	} else {
		struct sockaddr_in *s4 = (void *)ss;
		inet_ntop(AF_INET, &s4->sin_addr, a, sizeof(a));
		snprintf(buf, n, "%s:%d", a, ntohs(s4->sin_port));
	}
}

int main(int argc, char **argv)
{
	if (argc < 6) {
		fprintf(stderr, "usage: udppeer udp|udplite server|client LADDR LPORT OUT [PADDR PPORT]\n");
		return 2;
	}
	int proto = strcmp(argv[1], "udplite") ? IPPROTO_UDP : IPPROTO_UDPLITE;
	int client = !strcmp(argv[2], "client");
	FILE *out = fopen(argv[5], "w");
	setvbuf(out, NULL, _IOLBF, 0);
	signal(SIGUSR1, on_usr1);
	signal(SIGUSR2, on_usr2);
	struct sockaddr_storage la, pa;
	socklen_t ll = mkaddr(argv[3], atoi(argv[4]), &la);
	int s = socket(la.ss_family, SOCK_DGRAM, proto);
	if (s < 0 || bind(s, (void *)&la, ll)) {
		perror("socket/bind");
		return 1;
	}
	if (client) {
		socklen_t pl = mkaddr(argv[6], atoi(argv[7]), &pa);
		if (connect(s, (void *)&pa, pl)) {
			perror("connect");
			return 1;
		}
	}
	ll = sizeof(la);
	getsockname(s, (void *)&la, &ll);
	fprintf(out, "ready %d\n", ntohs(((struct sockaddr_in *)&la)->sin_port));
	int sent = 0;
	for (;;) {
		while (client && to_send > 0) {
			char m[32];
			int n = snprintf(m, sizeof(m), "c%d", ++sent);
			if (send(s, m, n, 0) != n)
				fprintf(out, "error send: %s\n", strerror(errno));
			to_send--;
		}
		struct pollfd p = { .fd = s, .events = POLLIN };
		if (paused || poll(&p, 1, 20) <= 0) {
			usleep(20000);
			continue;
		}
		char buf[2048], who[96];
		struct sockaddr_storage from;
		socklen_t fl = sizeof(from);
		ssize_t r = recvfrom(s, buf, sizeof(buf) - 1, MSG_DONTWAIT, (void *)&from, &fl);
		if (r < 0) {
			if (errno != EAGAIN && errno != EINTR)
				fprintf(out, "error recv: %s\n", strerror(errno));
			continue;
		}
		buf[r] = 0;
		show(&from, who, sizeof(who));
		if (client) {
			fprintf(out, "reply %s\n", buf);
		} else {
			fprintf(out, "got %s from %s\n", buf, who);
			char re[2100];
			int n = snprintf(re, sizeof(re), "re:%s", buf);
			if (sendto(s, re, n, 0, (void *)&from, fl) != n)
				fprintf(out, "error sendto %s: %s\n", who, strerror(errno));
		}
	}
}
