/* open_loop: open + close one existing file N times.
 * usage: open_loop read|write N PATH   prints "<elapsed_s> <iterations>".
 * read:  O_RDONLY (the common case; the sensor filters it in-kernel)
 * write: O_WRONLY, no O_CREAT/O_TRUNC (reported: a file event per open) */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
	int flags;
	long n;
	double t0;

	if (argc != 4 || (strcmp(argv[1], "read") && strcmp(argv[1], "write"))) {
		fprintf(stderr, "usage: open_loop read|write N PATH\n");
		return 2;
	}
	flags = strcmp(argv[1], "read") == 0 ? O_RDONLY : O_WRONLY;
	n = atol(argv[2]);
	t0 = now();
	for (long i = 0; i < n; i++) {
		int fd = open(argv[3], flags | O_CLOEXEC);

		if (fd < 0) {
			perror(argv[3]);
			return 1;
		}
		close(fd);
	}
	printf("%.6f %ld\n", now() - t0, n);
	return 0;
}
