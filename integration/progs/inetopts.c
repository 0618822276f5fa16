#define _GNU_SOURCE
// Inet sockets in the states and with the options a service sets, for the inet tests.
//
//   inetopts PORT OUT   makes: 0 an unbound non-blocking TCP socket; 1 a TCP socket bound to
//     127.0.0.1:PORT (SO_REUSEADDR, SO_REUSEPORT, SO_MARK, SO_PRIORITY, IP_TOS, IP_TTL,
//     IP_FREEBIND, SO_RCVBUF: its buffer locked); 2 a TCP listener on [::]:PORT+1, IPV6_V6ONLY,
//     backlog 7, keepalive with idle/interval/count, TCP_NODELAY, TCP_CORK, TCP_USER_TIMEOUT,
//     congestion control "reno"; 3 a TCP socket whose send buffer size is set but whose
//     locks say receive only (SO_BUF_LOCK); 4 a UDP socket bound to 127.0.0.1:PORT+2 and to
//     the device "lo" (SO_BINDTODEVICE), SO_BROADCAST, IP_TTL. Reads every option back, logs
//     "ready", waits for SIGUSR1, reads them again and logs "ok N OPTION" or
//     "error N OPTION was X now Y" for each (and the listener's backlog), then "done".
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef SO_BUF_LOCK
#define SO_BUF_LOCK 72
#endif

static volatile sig_atomic_t usr1;
static void on1(int s) { (void)s; usr1 = 1; }

struct opt {
	int sk, level, opt;
	const char *name;
	char was[64];
	socklen_t wlen;
};

#define O(sk, lvl, o) { sk, lvl, o, #o, "", 0 }
static struct opt opts[] = {
	O(0, SOL_SOCKET, SO_BUF_LOCK), O(0, SOL_SOCKET, SO_SNDBUF), O(0, SOL_SOCKET, SO_RCVBUF),
	O(1, SOL_SOCKET, SO_REUSEADDR), O(1, SOL_SOCKET, SO_REUSEPORT), O(1, SOL_SOCKET, SO_MARK),
	O(1, SOL_SOCKET, SO_PRIORITY), O(1, IPPROTO_IP, IP_TOS), O(1, IPPROTO_IP, IP_TTL),
	O(1, IPPROTO_IP, IP_FREEBIND), O(1, SOL_SOCKET, SO_RCVBUF), O(1, SOL_SOCKET, SO_BUF_LOCK),
	O(2, IPPROTO_IPV6, IPV6_V6ONLY), O(2, SOL_SOCKET, SO_ACCEPTCONN), O(2, SOL_SOCKET, SO_KEEPALIVE),
	O(2, IPPROTO_TCP, TCP_KEEPIDLE), O(2, IPPROTO_TCP, TCP_KEEPINTVL), O(2, IPPROTO_TCP, TCP_KEEPCNT),
	O(2, IPPROTO_TCP, TCP_NODELAY), O(2, IPPROTO_TCP, TCP_CORK), O(2, IPPROTO_TCP, TCP_USER_TIMEOUT),
	O(2, IPPROTO_TCP, TCP_CONGESTION), O(2, SOL_SOCKET, SO_BUF_LOCK),
	O(3, SOL_SOCKET, SO_BUF_LOCK), O(3, SOL_SOCKET, SO_SNDBUF),
	O(4, SOL_SOCKET, SO_BINDTODEVICE), O(4, SOL_SOCKET, SO_BROADCAST), O(4, IPPROTO_IP, IP_TTL),
};
#define NOPTS (sizeof(opts) / sizeof(opts[0]))

static void show(char *out, const char *v, socklen_t l, int text)
{
	if (text)
		snprintf(out, 64, "\"%.*s\"", (int)l, v);
	else if (l == sizeof(int))
		snprintf(out, 64, "%d", *(const int *)v);
	else
		snprintf(out, 64, "(%u bytes)", (unsigned)l);
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	int port = atoi(argv[1]);
	FILE *out = fopen(argv[2], "w");
	setvbuf(out, NULL, _IOLBF, 0);
	sigset_t usr, open;
	sigemptyset(&usr);
	sigaddset(&usr, SIGUSR1);
	sigprocmask(SIG_BLOCK, &usr, &open);
	signal(SIGUSR1, on1);
	int sk[5];
	int v;
#define SET(s, lvl, o, val)                                                  \
	do {                                                                 \
		v = (val);                                                   \
		if (setsockopt(s, lvl, o, &v, sizeof(v))) {                  \
			fprintf(out, "error setsockopt %s: %m\n", #o);       \
			return 1;                                            \
		}                                                            \
	} while (0)
	sk[0] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);

	sk[1] = socket(AF_INET, SOCK_STREAM, 0);
	SET(sk[1], SOL_SOCKET, SO_REUSEADDR, 1);
	SET(sk[1], SOL_SOCKET, SO_REUSEPORT, 1);
	SET(sk[1], SOL_SOCKET, SO_MARK, 7);
	SET(sk[1], SOL_SOCKET, SO_PRIORITY, 3);
	SET(sk[1], IPPROTO_IP, IP_TOS, 0x10);
	SET(sk[1], IPPROTO_IP, IP_TTL, 33);
	SET(sk[1], IPPROTO_IP, IP_FREEBIND, 1);
	SET(sk[1], SOL_SOCKET, SO_RCVBUF, 65536);
	struct sockaddr_in a1 = { .sin_family = AF_INET, .sin_port = htons(port) };
	inet_pton(AF_INET, "127.0.0.1", &a1.sin_addr);
	if (bind(sk[1], (void *)&a1, sizeof(a1)))
		return 1;

	sk[2] = socket(AF_INET6, SOCK_STREAM, 0);
	SET(sk[2], SOL_SOCKET, SO_REUSEADDR, 1);
	SET(sk[2], IPPROTO_IPV6, IPV6_V6ONLY, 1);
	SET(sk[2], SOL_SOCKET, SO_KEEPALIVE, 1);
	SET(sk[2], IPPROTO_TCP, TCP_KEEPIDLE, 77);
	SET(sk[2], IPPROTO_TCP, TCP_KEEPINTVL, 11);
	SET(sk[2], IPPROTO_TCP, TCP_KEEPCNT, 4);
	SET(sk[2], IPPROTO_TCP, TCP_NODELAY, 1);
	SET(sk[2], IPPROTO_TCP, TCP_CORK, 1);
	SET(sk[2], IPPROTO_TCP, TCP_USER_TIMEOUT, 1234);
	if (setsockopt(sk[2], IPPROTO_TCP, TCP_CONGESTION, "reno", 4)) {
		fprintf(out, "error TCP_CONGESTION reno: %m\n");
		return 1;
	}
	struct sockaddr_in6 a2 = { .sin6_family = AF_INET6, .sin6_port = htons(port + 1) };
	if (bind(sk[2], (void *)&a2, sizeof(a2)) || listen(sk[2], 7))
		return 1;

	sk[3] = socket(AF_INET, SOCK_STREAM, 0);
	SET(sk[3], SOL_SOCKET, SO_SNDBUF, 32768);
	SET(sk[3], SOL_SOCKET, SO_BUF_LOCK, 2); // SOCK_RCVBUF_LOCK only

	sk[4] = socket(AF_INET, SOCK_DGRAM, 0);
	if (setsockopt(sk[4], SOL_SOCKET, SO_BINDTODEVICE, "lo", 3)) {
		fprintf(out, "error SO_BINDTODEVICE: %m\n");
		return 1;
	}
	SET(sk[4], SOL_SOCKET, SO_BROADCAST, 1);
	SET(sk[4], IPPROTO_IP, IP_TTL, 17);
	struct sockaddr_in a4 = { .sin_family = AF_INET, .sin_port = htons(port + 2) };
	inet_pton(AF_INET, "127.0.0.1", &a4.sin_addr);
	if (bind(sk[4], (void *)&a4, sizeof(a4)))
		return 1;

	for (unsigned i = 0; i < NOPTS; i++) {
		struct opt *o = &opts[i];
		o->wlen = sizeof(o->was);
		if (getsockopt(sk[o->sk], o->level, o->opt, o->was, &o->wlen)) {
			fprintf(out, "error %d %s: getsockopt: %m\n", o->sk, o->name);
			return 1;
		}
	}
	int fl0 = fcntl(sk[0], F_GETFL);
	struct tcp_info ti0, ti;
	socklen_t tl = sizeof(ti0);
	getsockopt(sk[2], IPPROTO_TCP, TCP_INFO, &ti0, &tl);
	fprintf(out, "ready\n");
	while (!usr1)
		sigsuspend(&open);
	for (unsigned i = 0; i < NOPTS; i++) {
		struct opt *o = &opts[i];
		char now[64];
		socklen_t nlen = sizeof(now);
		int text = (o->level == IPPROTO_TCP && o->opt == TCP_CONGESTION) ||
			   (o->level == SOL_SOCKET && o->opt == SO_BINDTODEVICE);
		if (getsockopt(sk[o->sk], o->level, o->opt, now, &nlen)) {
			fprintf(out, "error %d %s: getsockopt: %m\n", o->sk, o->name);
			continue;
		}
		// Strings compare up to their NUL.
		if (text) {
			o->wlen = strnlen(o->was, o->wlen);
			nlen = strnlen(now, nlen);
		}
		char a[64], b[64];
		show(a, o->was, o->wlen, text);
		show(b, now, nlen, text);
		if (nlen == o->wlen && !memcmp(now, o->was, nlen))
			fprintf(out, "ok %d %s %s\n", o->sk, o->name, a);
		else
			fprintf(out, "error %d %s was %s now %s\n", o->sk, o->name, a, b);
	}
	int fl = fcntl(sk[0], F_GETFL);
	fprintf(out, "%s 0 O_NONBLOCK\n", (fl & O_NONBLOCK) == (fl0 & O_NONBLOCK) ? "ok" : "error");
	// A listener's TCP_INFO says its backlog in tcpi_sacked.
	tl = sizeof(ti);
	getsockopt(sk[2], IPPROTO_TCP, TCP_INFO, &ti, &tl);
	if (ti.tcpi_sacked == ti0.tcpi_sacked && ti.tcpi_state == TCP_LISTEN)
		fprintf(out, "ok 2 backlog %u\n", ti.tcpi_sacked);
	else
		fprintf(out, "error 2 backlog was %u now %u (state %u)\n", ti0.tcpi_sacked, ti.tcpi_sacked, ti.tcpi_state);
	fprintf(out, "done\n");
	return 0;
}
