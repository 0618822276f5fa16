#define _GNU_SOURCE
// Closed connections and shut-down datagram sockets for the inet tests (zdtm's
// socket-tcp-closed, socket-tcp-reseted and socket_udp_shutdown shapes).
//
//   tcpclosed server PORT OUT   listens on PORT; a UDP pair on 127.0.0.1 (PORT+1, PORT+2),
//     connected to each other, the first shut down for writing, the second for reading;
//     accepts 2 connections: conn 0, which the peer resets after sending "asd" (never read:
//     it stays queued), and conn 1, which the peer shuts down and the server then too (its
//     FIN acknowledged: LAST_ACK, then CLOSE). Logs "closed" once both are TCP_CLOSE, then
//     waits for SIGUSR1 and checks what a program sees of them: conn 0 still reads "asd",
//     conn 1 reads the end, neither can write, both name the same peer and local address;
//     the UDP pair still carries a datagram one way and refuses to send the other. Logs
//     "ok WHAT" or "error WHAT", then "done".
//   tcpclosed client ADDR PORT OUT  connects conns 0 and 1, sends "asd" on 0, shuts 1
//     down, waits for the server's FIN on it, then resets 0 (SO_LINGER 0). Logs "done" and
//     stays until killed.
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile sig_atomic_t usr1;
static void on1(int s) { (void)s; usr1 = 1; }
static FILE *out;

static int tcp_state(int s)
{
	struct tcp_info ti;
	socklen_t l = sizeof(ti);
	if (getsockopt(s, IPPROTO_TCP, TCP_INFO, &ti, &l))
		return -1;
	return ti.tcpi_state;
}

static void check(int ok, const char *what)
{
	fprintf(out, "%s %s%s%s\n", ok ? "ok" : "error", what, ok ? "" : ": ",
		ok ? "" : strerror(errno));
}

struct names {
	struct sockaddr_storage peer, local;
	socklen_t pl, ll;
};

static int names_of(int s, struct names *n)
{
	memset(n, 0, sizeof(*n));
	n->pl = n->ll = sizeof(struct sockaddr_in);
	return getsockopt(s, SOL_SOCKET, SO_PEERNAME, &n->peer, &n->pl) ||
	       getsockname(s, (void *)&n->local, &n->ll);
}

static int same_names(int s, struct names *was)
{
	struct names now;
	if (names_of(s, &now))
		return 0;
	return now.pl == was->pl && now.ll == was->ll && !memcmp(&now.peer, &was->peer, now.pl) &&
	       !memcmp(&now.local, &was->local, now.ll);
}

int main(int argc, char **argv)
{
	if (argc < 4)
		return 2;
	int server = !strcmp(argv[1], "server");
	out = fopen(argv[server ? 3 : 4], "w");
	setvbuf(out, NULL, _IOLBF, 0);
	signal(SIGUSR1, on1);
	signal(SIGPIPE, SIG_IGN);
	char buf[16];
	if (!server) {
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[3])) };
		inet_pton(AF_INET, argv[2], &a.sin_addr);
		int c0 = socket(AF_INET, SOCK_STREAM, 0), c1 = socket(AF_INET, SOCK_STREAM, 0);
		if (connect(c0, (void *)&a, sizeof(a)) || connect(c1, (void *)&a, sizeof(a)))
			return 1;
		if (write(c0, "asd", 3) != 3)
			return 1;
		shutdown(c1, SHUT_WR);
		while (read(c1, buf, sizeof(buf)) > 0)
			;
		close(c1);
		struct linger lg = { .l_onoff = 1, .l_linger = 0 };
		setsockopt(c0, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		close(c0);
		fprintf(out, "done\n");
		// Stays until killed (the test finds it in its namespace first).
		for (;;)
			pause();
	}
	sigset_t usr, open;
	sigemptyset(&usr);
	sigaddset(&usr, SIGUSR1);
	sigprocmask(SIG_BLOCK, &usr, &open);
	int port = atoi(argv[2]);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(l, (void *)&a, sizeof(a)) || listen(l, 8))
		return 1;
	struct sockaddr_in ua1 = { .sin_family = AF_INET, .sin_port = htons(port + 1) };
	struct sockaddr_in ua2 = { .sin_family = AF_INET, .sin_port = htons(port + 2) };
	inet_pton(AF_INET, "127.0.0.1", &ua1.sin_addr);
	inet_pton(AF_INET, "127.0.0.1", &ua2.sin_addr);
	int u1 = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	int u2 = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	if (bind(u1, (void *)&ua1, sizeof(ua1)) || bind(u2, (void *)&ua2, sizeof(ua2)) ||
	    connect(u1, (void *)&ua2, sizeof(ua2)) || connect(u2, (void *)&ua1, sizeof(ua1)) ||
	    shutdown(u1, SHUT_WR) || shutdown(u2, SHUT_RD))
		return 1;
	fprintf(out, "ready\n");
	int c0 = accept(l, NULL, NULL), c1 = accept(l, NULL, NULL);
	if (c0 < 0 || c1 < 0)
		return 1;
	// conn 1: the peer's FIN, then ours.
	while (read(c1, buf, sizeof(buf)) > 0)
		;
	shutdown(c1, SHUT_WR);
	while (tcp_state(c1) != TCP_CLOSE || tcp_state(c0) != TCP_CLOSE)
		usleep(10000);
	struct names n0, n1;
	if (names_of(c0, &n0) || names_of(c1, &n1)) {
		fprintf(out, "error names: %s\n", strerror(errno));
		return 1;
	}
	fprintf(out, "closed\n");
	// SIGUSR1 is blocked but inside sigsuspend: one sent before the restored task runs
	// again stays pending (a restarted pause() would miss it).
	while (!usr1)
		sigsuspend(&open);
	errno = 0;
	check(recv(c0, buf, sizeof(buf), MSG_DONTWAIT) == 3 && !memcmp(buf, "asd", 3), "conn 0 reads what was queued");
	check(write(c0, "x", 1) == -1, "conn 0 cannot write");
	check(same_names(c0, &n0), "conn 0 names its peer and itself");
	errno = 0;
	check(recv(c1, buf, sizeof(buf), MSG_DONTWAIT) == 0, "conn 1 reads the end");
	check(write(c1, "x", 1) == -1, "conn 1 cannot write");
	check(same_names(c1, &n1), "conn 1 names its peer and itself");
	errno = 0;
	check(send(u2, "two", 3, 0) == 3, "udp: the read-shut socket sends");
	struct pollfd pf = { .fd = u1, .events = POLLIN };
	poll(&pf, 1, 10000);
	check(recv(u1, buf, sizeof(buf), 0) == 3 && !memcmp(buf, "two", 3), "udp: the write-shut socket receives");
	check(send(u1, "one", 3, 0) == -1, "udp: the write-shut socket cannot send");
	fprintf(out, "done\n");
	return 0;
}
