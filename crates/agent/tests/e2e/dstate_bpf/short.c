// Short D episodes the walk cannot see: N threads, each doing vfork() whose child sleeps
// EPISODE_MS and exits, then sleeping PAUSE_MS, for SECONDS. The parent thread of a vfork waits
// in TASK_KILLABLE (uninterruptible, 'D') until the child exits: an episode of known length.
// Prints "episodes <n> seconds <s>": what the workload did, measured around each vfork().
// argv: threads episode_ms pause_ms seconds comm
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long episode_ms, pause_ms;
static double deadline;
static const char *comm;
static long total_n;
static double total_s;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static void *work(void *arg)
{
	(void)arg;
	prctl(PR_SET_NAME, comm, 0, 0, 0);
	long n = 0;
	double s = 0;
	struct timespec ep = {episode_ms / 1000, (episode_ms % 1000) * 1000000L};
	struct timespec pause = {pause_ms / 1000, (pause_ms % 1000) * 1000000L};
	while (now() < deadline) {
		double t0 = now();
		pid_t pid = vfork();
		if (pid == 0) {
			// The child: only system calls (it runs on the parent's stack).
			prctl(PR_SET_NAME, "sw-vfork-child", 0, 0, 0);
			nanosleep(&ep, NULL);
			_exit(0);
		}
		double t1 = now();
		if (pid < 0)
			continue;
		n++;
		s += t1 - t0;
		waitpid(pid, NULL, 0);
		nanosleep(&pause, NULL);
	}
	pthread_mutex_lock(&mu);
	total_n += n;
	total_s += s;
	pthread_mutex_unlock(&mu);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 6)
		return 2;
	int threads = atoi(argv[1]);
	episode_ms = atol(argv[2]);
	pause_ms = atol(argv[3]);
	deadline = now() + atof(argv[4]);
	comm = argv[5];
	pthread_t t[1024];
	if (threads > 1024)
		return 2;
	for (int i = 0; i < threads; i++)
		pthread_create(&t[i], NULL, work, NULL);
	for (int i = 0; i < threads; i++)
		pthread_join(t[i], NULL);
	printf("episodes %ld seconds %.6f\n", total_n, total_s);
	return 0;
}
