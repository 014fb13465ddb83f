/* kill_loop N: fork a child that waits, send it N SIGWINCH (ignored by default:
 * nothing happens but the syscall and the signal's generation), then SIGKILL. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 100000;
	pid_t c = fork();

	if (c < 0)
		return 1;
	if (c == 0) {
		for (;;)
			pause();
	}
	for (long i = 0; i < n; i++)
		if (kill(c, SIGWINCH) != 0)
			return 2;
	kill(c, SIGKILL);
	waitpid(c, NULL, 0);
	return 0;
}
