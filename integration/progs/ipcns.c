/* SysV IPC objects in an IPC namespace of its own (run under `unshare -i`).
 *
 * Creates, after a few throw-away objects, with ids that carry a sequence number:
 *   - shm segment key 0x43720001, 3 pages + 100 bytes, mode 0640, filled with a pattern
 *     except its second page (a hole), then detached; and a private 1-page segment;
 *   - semaphore set key 0x43720002 with 5 semaphores;
 *   - message queue key 0x43720003 with 4 messages, one of 8500 bytes (above the default
 *     msgmax, which it raises to 9000 in its namespace); kernel.sem set to long values;
 * prints "ready SHMID SEMID MSQID PRIVID", then the state it expects ("want ...").
 * On SIGUSR1 it reads everything back (looking segments up by key, receiving the messages)
 * and prints it the same way ("have ..."), then waits for the next SIGUSR1.
 *
 * With "mq" as argument it also makes a POSIX message queue /cryo-test-q (mode 0640, at
 * most 5 messages of 100 bytes) holding 3 messages of different priorities; with "mqfd" it
 * also keeps it open (O_NONBLOCK); with "mqnotify" it also registers for its notification.
 * Then every report is followed by a line "want-mq ..."/"have-mq ..." with the queue's
 * attributes, mode and messages (read and put back).
 */
#include <fcntl.h>
#include <mqueue.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <unistd.h>
#include <sys/stat.h>

static int mq_kind; /* 0 none, 1 by name, 2 kept open */
static mqd_t mq_kept = (mqd_t)-1;

/* Prints the queue's attributes, mode and messages, putting the messages back. */
static void mq_report(const char *tag)
{
	if (!mq_kind)
		return;
	mqd_t q = mq_kind == 2 ? mq_kept : mq_open("/cryo-test-q", O_RDWR | O_NONBLOCK);
	struct mq_attr a;
	struct stat st;
	if (q == (mqd_t)-1 || mq_getattr(q, &a) || fstat((int)q, &st)) {
		printf("%s-mq broken\n", tag);
		fflush(stdout);
		return;
	}
	printf("%s-mq flags=%ld max=%ld size=%ld cur=%ld mode=%o", tag, a.mq_flags, a.mq_maxmsg,
	       a.mq_msgsize, a.mq_curmsgs, st.st_mode & 07777);
	char buf[100][100];
	unsigned prio[100];
	ssize_t len[100];
	int n = 0;
	while (n < 100 && (len[n] = mq_receive(q, buf[n], 100, &prio[n])) >= 0)
		n++;
	for (int i = 0; i < n; i++) {
		printf(" %u:%.*s", prio[i], (int)len[i], buf[i]);
		mq_send(q, buf[i], len[i], prio[i]);
	}
	printf("\n");
	fflush(stdout);
	if (mq_kind == 1)
		mq_close(q);
}

#define SHM_KEY 0x43720001
#define SEM_KEY 0x43720002
#define MSG_KEY 0x43720003
#define SHM_SIZE (3 * 4096 + 100)
#define NSEMS 5
#define NMSG 4

static const unsigned short sem_vals[NSEMS] = {0, 1, 7, 300, 32767};
static const long msg_types[NMSG] = {1, 5, 2, 1};
static size_t msg_len[NMSG] = {5, 14, 8500, 0};

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static uint64_t fnv(const unsigned char *p, size_t n, uint64_t h)
{
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 1099511628211ULL;
	return h;
}

static unsigned char pattern(size_t i, int which)
{
	return (unsigned char)(i * 7 + 3 + which * 11);
}

static void fill_msg(int i, char *buf)
{
	for (size_t j = 0; j < msg_len[i]; j++)
		buf[j] = pattern(j, i + 1);
}

static void shm_fill(unsigned char *p)
{
	for (size_t i = 0; i < SHM_SIZE; i++)
		p[i] = (i / 4096 == 1) ? 0 : pattern(i, 0);
}

static int read_ctl(const char *name)
{
	char path[128];
	int v = -1;
	snprintf(path, sizeof(path), "/proc/sys/kernel/%s", name);
	FILE *f = fopen(path, "r");
	if (!f || fscanf(f, "%d", &v) != 1)
		die(path);
	fclose(f);
	return v;
}

static void write_ctl(const char *name, int v)
{
	char path[128];
	snprintf(path, sizeof(path), "/proc/sys/kernel/%s", name);
	FILE *f = fopen(path, "w");
	if (!f || fprintf(f, "%d", v) < 0 || fclose(f))
		die(path);
}

/* Prints "TAG ids ... shm HASH ... sem ... msg TYPE:LEN:HASH ... ctl msgmax msgmnb". */
static void report(const char *tag, int shmid, int semid, int msqid, int privid, int actual)
{
	unsigned char *buf = calloc(1, SHM_SIZE);
	static struct {
		long type;
		char text[16384];
	} mb;
	char *m = mb.text;
	unsigned short vals[NSEMS];
	struct shmid_ds ds;

	if (actual) {
		shmid = shmget(SHM_KEY, 0, 0);
		semid = semget(SEM_KEY, 0, 0);
		msqid = msgget(MSG_KEY, 0);
		if (shmid < 0 || semid < 0 || msqid < 0)
			die("lookup by key");
		unsigned char *p = shmat(shmid, NULL, SHM_RDONLY);
		if (p == (void *)-1)
			die("shmat");
		memcpy(buf, p, SHM_SIZE);
		shmdt(p);
		struct shmid_ds priv;
		if (shmctl(privid, IPC_STAT, &priv) || priv.shm_segsz != 4096)
			die("IPC_STAT private");
		if (shmctl(shmid, IPC_STAT, &ds))
			die("IPC_STAT");
		if (semctl(semid, 0, GETALL, vals) < 0)
			die("GETALL");
	} else {
		shm_fill(buf);
		memcpy(vals, sem_vals, sizeof(vals));
		ds.shm_perm.mode = 0640;
		ds.shm_segsz = SHM_SIZE;
	}
	printf("%s ids %d %d %d %d shm %016llx mode %o size %zu sem", tag, shmid, semid, msqid,
	       privid, (unsigned long long)fnv(buf, SHM_SIZE, 14695981039346656037ULL),
	       ds.shm_perm.mode & 0777, (size_t)ds.shm_segsz);
	for (int i = 0; i < NSEMS; i++)
		printf(" %u", vals[i]);
	printf(" msg");
	for (int i = 0; i < NMSG; i++) {
		long type;
		size_t len;
		if (actual) {
			ssize_t n = msgrcv(msqid, &mb, sizeof(mb.text), 0, IPC_NOWAIT);
			if (n < 0)
				die("msgrcv");
			type = mb.type;
			len = n;
		} else {
			type = msg_types[i];
			len = msg_len[i];
			fill_msg(i, m);
		}
		printf(" %ld:%zu:%016llx", type, len,
		       (unsigned long long)fnv((unsigned char *)m, len, 14695981039346656037ULL));
	}
	if (actual) {
		struct msqid_ds q;
		if (msgctl(msqid, IPC_STAT, &q))
			die("msgctl");
		printf(" left %lu", (unsigned long)q.msg_qnum);
	} else {
		printf(" left 0");
	}
	struct seminfo si;
	if (semctl(0, 0, SEM_INFO, (struct semid_ds *)&si) < 0)
		die("semctl(SEM_INFO)");
	printf(" ctl %d %d sem %d %d %d %d\n", read_ctl("msgmax"), read_ctl("msgmnb"), si.semmsl,
	       si.semmns, si.semopm, si.semmni);
	fflush(stdout);
	free(buf);
}

int main(int argc, char **argv)
{
	sigset_t set;
	int sig;

	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigprocmask(SIG_BLOCK, &set, NULL);

	/* Throw-away objects: the real ones get ids with a non-zero sequence. */
	for (int i = 0; i < 3; i++) {
		shmctl(shmget(IPC_PRIVATE, 4096, 0600), IPC_RMID, NULL);
		semctl(semget(IPC_PRIVATE, 1, 0600), 0, IPC_RMID);
		msgctl(msgget(IPC_PRIVATE, 0600), IPC_RMID, NULL);
	}
	write_ctl("msgmax", 9000);
	write_ctl("msgmnb", 20000);
	/* kernel.sem longer than 32 characters (it came back cut: semmni 13156 read as 1). */
	FILE *sem = fopen("/proc/sys/kernel/sem", "w");
	if (!sem || fprintf(sem, "567543001 826660645 1189648053 13156") < 0 || fclose(sem))
		die("/proc/sys/kernel/sem");

	/* Ids with a sequence number, as a long-lived namespace has. */
	write_ctl("shm_next_id", 2 * 32768 + 5);
	write_ctl("sem_next_id", 3 * 32768 + 3);
	write_ctl("msg_next_id", 32768 + 2);
	int shmid = shmget(SHM_KEY, SHM_SIZE, IPC_CREAT | IPC_EXCL | 0640);
	if (shmid < 0)
		die("shmget");
	unsigned char *p = shmat(shmid, NULL, 0);
	if (p == (void *)-1)
		die("shmat");
	shm_fill(p);
	shmdt(p);
	int privid = shmget(IPC_PRIVATE, 4096, 0600);
	if (privid < 0)
		die("shmget private");

	int semid = semget(SEM_KEY, NSEMS, IPC_CREAT | IPC_EXCL | 0600);
	if (semid < 0)
		die("semget");
	if (semctl(semid, 0, SETALL, sem_vals) < 0)
		die("SETALL");

	int msqid = msgget(MSG_KEY, IPC_CREAT | IPC_EXCL | 0600);
	if (msqid < 0)
		die("msgget");
	struct {
		long type;
		char text[9000];
	} mb;
	for (int i = 0; i < NMSG; i++) {
		mb.type = msg_types[i];
		fill_msg(i, mb.text);
		if (msgsnd(msqid, &mb, msg_len[i], IPC_NOWAIT))
			die("msgsnd");
	}
	if (argc > 1 && !strncmp(argv[1], "mq", 2)) {
		struct mq_attr attr = {.mq_maxmsg = 5, .mq_msgsize = 100};
		umask(0);
		mqd_t q = mq_open("/cryo-test-q", O_CREAT | O_RDWR | O_NONBLOCK, 0640, &attr);
		if (q == (mqd_t)-1)
			die("mq_open");
		if (mq_send(q, "low", 3, 1) || mq_send(q, "high", 4, 7) || mq_send(q, "low-2", 5, 1))
			die("mq_send");
		mq_kind = strcmp(argv[1], "mq") ? 2 : 1;
		if (mq_kind == 2)
			mq_kept = q;
		else
			mq_close(q);
	}

	printf("ready %d %d %d %d\n", shmid, semid, msqid, privid);
	report("want", shmid, semid, msqid, privid, 0);
	mq_report("want");
	if (argc > 1 && !strcmp(argv[1], "mqnotify")) {
		/* After the report: refilling an empty queue fires (and ends) a registration. */
		struct sigevent ev = {.sigev_notify = SIGEV_NONE};
		if (mq_notify(mq_kept, &ev))
			die("mq_notify");
	}
	for (;;) {
		sigwait(&set, &sig);
		report("have", shmid, semid, msqid, privid, 1);
		mq_report("have");
		/* Put the messages back for another cycle. */
		for (int i = 0; i < NMSG; i++) {
			mb.type = msg_types[i];
			fill_msg(i, mb.text);
			if (msgsnd(msqid, &mb, msg_len[i], IPC_NOWAIT))
				die("msgsnd again");
		}
	}
}
