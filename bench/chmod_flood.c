/* chmod_flood: chmod(2) one file in a tight loop for a while: a syscall
 * flood where every call is one file event (far more than a drain keeps up
 * with).  usage: chmod_flood SECONDS PATH   prints "<elapsed_s> <calls>". */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	double secs, t0, t;
	long n = 0;

	if (argc != 3) {
		fprintf(stderr, "usage: chmod_flood SECONDS PATH\n");
		return 2;
	}
	secs = atof(argv[1]);
	t0 = t = now();
	while (t - t0 < secs) {
		for (int i = 0; i < 256; i++, n++) {
			if (chmod(argv[2], (n & 1) ? 0600 : 0644)) {
				perror(argv[2]);
				return 1;
			}
		}
		t = now();
	}
	printf("%.6f %ld\n", t - t0, n);
	return 0;
}
