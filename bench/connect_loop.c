/* connect_loop: N loopback TCP connections, one at a time.
 * usage: connect_loop N   prints "<elapsed_s> <iterations>".
 * A forked listener on 127.0.0.1 (ephemeral port) accepts and closes each
 * connection; the client connects, waits for the server's FIN (read() == 0)
 * and closes with SO_LINGER 0, so neither side is left in TIME_WAIT and the
 * ephemeral port range is never exhausted. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
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
	struct sockaddr_in addr = { .sin_family = AF_INET };
	socklen_t alen = sizeof(addr);
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	int one = 1, lfd, status;
	pid_t server;
	double t0;

	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) || listen(lfd, 128) ||
	    getsockname(lfd, (struct sockaddr *)&addr, &alen)) {
		perror("listener");
		return 1;
	}
	server = fork();
	if (server < 0) {
		perror("fork");
		return 1;
	}
	if (server == 0) {
		for (;;) {
			int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

			if (c >= 0)
				close(c);
		}
	}
	close(lfd);
	t0 = now();
	for (long i = 0; i < n; i++) {
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		char b;

		if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr))) {
			perror("connect");
			kill(server, SIGKILL);
			return 1;
		}
		if (read(fd, &b, 1) != 0) {
			fprintf(stderr, "connect_loop: expected EOF from the listener\n");
			kill(server, SIGKILL);
			return 1;
		}
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		close(fd);
	}
	printf("%.6f %ld\n", now() - t0, n);
	kill(server, SIGKILL);
	waitpid(server, &status, 0);
	return 0;
}
