/* exec_loop: fork + exec /bin/true N times, each waited for.
 * usage: exec_loop N [PATH]   prints "<elapsed_s> <iterations>" on stdout. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
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
	long n = argc > 1 ? atol(argv[1]) : 1000;
	const char *path = argc > 2 ? argv[2] : "/bin/true";
	char *const args[] = { (char *)path, NULL };
	double t0 = now();

	for (long i = 0; i < n; i++) {
		pid_t pid = fork();
		int status;

		if (pid < 0) {
			perror("fork");
			return 1;
		}
		if (pid == 0) {
			execv(path, args);
			_exit(127);
		}
		if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status)) {
			fprintf(stderr, "exec_loop: child of %s failed (status %#x)\n", path, status);
			return 1;
		}
	}
	printf("%.6f %ld\n", now() - t0, n);
	return 0;
}
