/* open_lat: open + close one existing file N times, timing each pair.
 * usage: open_lat N PATH   prints "<p10_ns> <p50_ns> <p90_ns>" then "<elapsed_s> <iterations>".
 * The per-pair percentiles are what a preemption or a noisy neighbour moves least on a
 * shared host (a time slice lost hits a few pairs, not the median). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long long ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
	unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;

	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	unsigned *lat;
	long n;
	double t0;

	if (argc != 3) {
		fprintf(stderr, "usage: open_lat N PATH\n");
		return 2;
	}
	n = atol(argv[1]);
	if (n < 10 || !(lat = malloc(n * sizeof(*lat))))
		return 2;
	t0 = now();
	for (long i = 0; i < n; i++) {
		long long a = ns();
		int fd = open(argv[2], O_RDONLY | O_CLOEXEC);

		if (fd < 0) {
			perror(argv[2]);
			return 1;
		}
		close(fd);
		lat[i] = (unsigned)(ns() - a);
	}
	t0 = now() - t0;
	qsort(lat, n, sizeof(*lat), cmp);
	printf("%u %u %u\n", lat[n / 10], lat[n / 2], lat[n * 9 / 10]);
	printf("%.6f %ld\n", t0, n);
	return 0;
}
