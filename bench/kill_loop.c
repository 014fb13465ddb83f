/* kill_loop N [SIG [self]]: fork a child that waits, send it N signals SIG
 * (default SIGWINCH; SIG is ignored by both processes, set before the fork:
 * nothing happens but the syscall and the signal's generation), then SIGKILL.
 * With "self" the loop signals itself instead (the common benign case). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 100000;
	int sig = argc > 2 ? atoi(argv[2]) : SIGWINCH;
	int self = argc > 3 && strcmp(argv[3], "self") == 0;
	pid_t c;

	if (sig <= 0 || sig == SIGKILL || sig == SIGSTOP || signal(sig, SIG_IGN) == SIG_ERR)
		return 3;
	c = fork();
	if (c < 0)
		return 1;
	if (c == 0) {
		for (;;)
			pause();
	}
	for (long i = 0; i < n; i++)
		if (kill(self ? getpid() : c, sig) != 0)
			return 2;
	kill(c, SIGKILL);
	waitpid(c, NULL, 0);
	return 0;
}
