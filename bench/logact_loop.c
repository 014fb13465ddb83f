/* logact_loop: the syscalls the compat sensor's log-rewrite programs watch (s17-logacts),
 * N rounds on a temp file.  usage: logact_loop miss|args N FILE
 *   miss: arguments no program reports (the common case): mmap PROT_READ MAP_PRIVATE,
 *         mprotect PROT_READ, fcntl F_GETFL, fallocate mode 0, pwritev2 flags 0;
 *   args: arguments that pass the first compare, from a clean process (the provenance
 *         lookup decides): mmap PROT_WRITE MAP_SHARED, mprotect PROT_READ|PROT_WRITE,
 *         fcntl F_SETFL O_NONBLOCK, fallocate PUNCH_HOLE|KEEP_SIZE, pwritev2 RWF_NOAPPEND.
 * prints "<elapsed_s> <iterations>". */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef RWF_NOAPPEND
#define RWF_NOAPPEND 0x00000020
#endif

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	int args, fd;
	long n;
	char buf[8] = "abcdefgh";
	struct iovec iov = { buf, sizeof(buf) };
	void *anon, *m;
	double t0;

	if (argc != 4 || (strcmp(argv[1], "miss") && strcmp(argv[1], "args"))) {
		fprintf(stderr, "usage: logact_loop miss|args N FILE\n");
		return 2;
	}
	args = !strcmp(argv[1], "args");
	n = atol(argv[2]);
	fd = open(argv[3], O_RDWR | O_CREAT, 0600);
	if (fd < 0 || ftruncate(fd, 8192)) {
		perror(argv[3]);
		return 1;
	}
	anon = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (anon == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	t0 = now();
	for (long i = 0; i < n; i++) {
		m = mmap(NULL, 4096, args ? PROT_READ | PROT_WRITE : PROT_READ,
			 args ? MAP_SHARED : MAP_PRIVATE, fd, 0);
		if (m == MAP_FAILED || munmap(m, 4096)) {
			perror("mmap file");
			return 1;
		}
		if (mprotect(anon, 4096, args ? PROT_READ | PROT_WRITE : PROT_READ)) {
			perror("mprotect");
			return 1;
		}
		if ((args ? fcntl(fd, F_SETFL, O_NONBLOCK) : fcntl(fd, F_GETFL)) < 0) {
			perror("fcntl");
			return 1;
		}
		if (fallocate(fd, args ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE : 0, 0, 4096)) {
			perror("fallocate");
			return 1;
		}
		if (pwritev2(fd, &iov, 1, 0, args ? RWF_NOAPPEND : 0) != sizeof(buf)) {
			perror("pwritev2");
			return 1;
		}
	}
	printf("%.6f %ld\n", now() - t0, n);
	return 0;
}
