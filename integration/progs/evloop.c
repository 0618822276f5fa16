/* evloop: an event loop over epoll watching a timerfd (50 ms ticks), a signalfd (SIGUSR1),
 * an eventfd and an inotify instance on the directory given as argv[1]. It prints a line for
 * each event:
 *   tick T            T = all expirations read so far
 *   sig N             N-th SIGUSR1; also adds 7 to the eventfd and reports the counter of a
 *   held C              second eventfd (never in epoll, set to 1234 at start)
 *   efd V             the eventfd became readable with value V
 *   inotify NAME      a file NAME was created in the watched directory
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigprocmask(SIG_BLOCK, &set, NULL);

	int ep = epoll_create1(0);
	int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	struct itimerspec its = {{0, 50000000}, {0, 50000000}};
	timerfd_settime(tfd, 0, &its, NULL);
	int sfd = signalfd(-1, &set, SFD_NONBLOCK);
	int efd = eventfd(0, EFD_NONBLOCK);
	int held = eventfd(0, EFD_NONBLOCK);
	uint64_t v = 1234;
	write(held, &v, 8);
	int ino = inotify_init1(IN_NONBLOCK);
	if (argc > 1 && inotify_add_watch(ino, argv[1], IN_CREATE) < 0) {
		perror("inotify_add_watch");
		return 1;
	}
	int fds[] = {tfd, sfd, efd, ino};
	for (int i = 0; i < 4; i++) {
		struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 100 + i};
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) < 0) {
			perror("epoll_ctl");
			return 1;
		}
	}
	uint64_t ticks = 0, sigs = 0;
	for (;;) {
		struct epoll_event evs[8];
		int n = epoll_wait(ep, evs, 8, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			perror("epoll_wait");
			return 1;
		}
		for (int i = 0; i < n; i++) {
			switch (evs[i].data.u64) {
			case 100:
				if (read(tfd, &v, 8) == 8) {
					ticks += v;
					printf("tick %llu\n", (unsigned long long)ticks);
				}
				break;
			case 101: {
				struct signalfd_siginfo si;
				while (read(sfd, &si, sizeof(si)) == sizeof(si)) {
					printf("sig %llu\n", (unsigned long long)++sigs);
					v = 7;
					write(efd, &v, 8);
					if (read(held, &v, 8) == 8) {
						printf("held %llu\n", (unsigned long long)v);
						write(held, &v, 8);
					}
				}
				break;
			}
			case 102:
				if (read(efd, &v, 8) == 8)
					printf("efd %llu\n", (unsigned long long)v);
				break;
			case 103: {
				char buf[4096] __attribute__((aligned(8)));
				ssize_t len = read(ino, buf, sizeof(buf));
				for (char *p = buf; len > 0 && p < buf + len;) {
					struct inotify_event *e = (struct inotify_event *)p;
					if (e->len)
						printf("inotify %s\n", e->name);
					p += sizeof(*e) + e->len;
				}
				break;
			}
			}
		}
	}
}
