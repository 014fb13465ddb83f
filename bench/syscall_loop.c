/* syscall_loop: N getppid(2) calls, a syscall no Bastion program watches:
 * what any syscall pays once syscall tracepoints are enabled.
 * usage: syscall_loop N   prints "<elapsed_s> <iterations>". */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 1000000;
	double t0 = now();

	for (long i = 0; i < n; i++)
		syscall(SYS_getppid);
	printf("%.6f %ld\n", now() - t0, n);
	return 0;
}
