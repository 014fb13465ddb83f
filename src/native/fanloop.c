/* fanloop: the compiled fast path of Bastion's fanotify permission listener.
 *
 * bastion.kernel.fanotify.PermissionListener runs bfan_run() on its listener
 * thread (ctypes releases the GIL).  It waits for events (spinning up to
 * spin_us after the last one, then poll()), reads a batch, answers FAN_ALLOW
 * itself for every permission event whose inode is in the published allow
 * table for its kind (open or exec: inodes the plan allows every task; or a
 * read-only open of an inode every task may read but not write, or of any inode
 * when the plan allows every read -- a write-protected directory tree --, the
 * opener's flags taken from /proc/TID/syscall; or any open, read-only open or exec
 * the plan allows every task no subject names, when its subjects are executables
 * and the opener's is none of them -- a per-program policy --), in one writev with one response per
 * iovec, closes those event fds, and returns the other events to Python, which
 * decides them as before.
 *
 * Kernel-safety contract with the Python watchdog:
 *  - every event of the batch being handled sits in a slot whose state word is
 *    (batch seq << 8 | state); the loop publishes busy_ns while it holds one;
 *  - whoever moves a slot from PENDING (by compare-and-swap) answers the event
 *    and closes its fd: the loop (DONE after a fast allow, HANDED when it gives
 *    the event to Python) or bfan_rescue() called by the watchdog when the
 *    batch is overdue (CLAIMED: the watchdog answers its fallback);
 *  - a slot reused by the next batch carries a new seq, so a stale
 *    compare-and-swap fails and a torn read of fd/mask is discarded.
 * Nothing here may wait on a filesystem: the inode comes from
 * statx(AT_EMPTY_PATH | AT_STATX_DONT_SYNC) of the event fd.  The paths it
 * opens or looks at are procfs: /proc/TID/syscall and, for a thread the open context
 * marks (bfan_set_marks: openctx.bpf.o's bitmap, read in place) or while an eCryptfs
 * device exists (a readdir of the kept /sys/class/bdi descriptor), /proc/TID/stack of
 * a blocked opener (opener_reads_only(), own_open()), and a statx(AT_STATX_DONT_SYNC) of
 * /proc/TID/exe (opener_is_subject()), inside the slot window (the watchdog answers
 * the batch if one stalls; a table retired meanwhile answers nothing), and
 * /proc/TID/stat (see follow()), after the batch is answered.
 *
 * CPU placement: an opener waits for its answer, so its CPU is free while it
 * does; a listener on that CPU answers with two context switches, one on
 * another CPU with a cross-CPU wake-up of an idle CPU per event, which under
 * virtualisation costs more than the whole decision (a hot marked file opened
 * 2x as fast pinned beside its opener as across, on a 2-vCPU guest).  So while
 * it spins after fast answers, the loop pins itself to the CPU its last opener
 * ran on (read from procfs at most every FOLLOW_NS) and drops the pin before it
 * sleeps in poll(): an idle listener is placed by the scheduler as before.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define BFAN_ABI 2
#define SLOTS 1024            /* events per read: 64 KiB / 24-byte metadata < 2731 */
#define READ_BUF (SLOTS * 24)
#define LAT_RING 4096

#define FAN_OPEN_PERM 0x00010000u
#define FAN_ACCESS_PERM 0x00020000u
#define FAN_OPEN_EXEC_PERM 0x00040000u
#define FAN_PERM_EVENTS (FAN_OPEN_PERM | FAN_ACCESS_PERM | FAN_OPEN_EXEC_PERM)
#define FAN_ALLOW 0x01
#define META_VERSION 3
#define FOLLOW_NS 100000000   /* look up the opener's CPU at most every 100 ms */
#define SYSFS_MAGIC 0x62656572

enum { ST_FREE = 0, ST_FILLING = 1, ST_PENDING = 2, ST_DONE = 3, ST_HANDED = 4, ST_CLAIMED = 5 };

struct meta {                 /* struct fanotify_event_metadata */
	uint32_t event_len;
	uint8_t vers, reserved;
	uint16_t metadata_len;
	uint64_t mask;
	int32_t fd, pid;
} __attribute__((packed));

struct response {
	int32_t fd;
	uint32_t response;
};

struct bfan_event {           /* what bfan_run / bfan_rescue hand to Python */
	int32_t fd;
	int32_t pid;
	uint64_t mask;
};

struct entry {
	uint64_t dev, ino;
	uint32_t bits;            /* 1: allow open, 2: allow exec, 4: allow a read-only open;
				   * 64: an executable some subject names (see NOSUBJ_*);
				   * 0: empty */
	uint32_t pad;
};

/* any_bits only: what a task no subject names is allowed, on every inode (the plan's
 * subjects are all executables: such a task is one whose executable has no bit 64) */
#define NOSUBJ_OPEN 8u
#define NOSUBJ_READ 16u
#define NOSUBJ_EXEC 32u
#define SUBJECT_EXE 64u
#define TABLE_BITS 127u

struct table {
	size_t cap;               /* power of two */
	uint32_t any_bits;        /* the bits of every inode (the published entry (0, 0)) */
	int users;                /* batches using it (under ctx->mu) */
	int retired;
	struct entry e[];
};

struct slot {
	_Atomic uint64_t word;    /* seq << 8 | state */
	int32_t fd, pid;
	uint64_t mask;
};

/* A /proc/TID file of the last opener, kept open (kept_read). */
struct kept {
	int fd;
	int32_t tid;
};

struct oc_counts {            /* struct bastion_openctx_counts */
	_Atomic uint64_t nested_bdis;
	_Atomic uint64_t marked;
};

struct bfan_ctx {
	pthread_mutex_t mu;
	struct table *table;          /* current allow table (NULL: none) */
	_Atomic int64_t busy_ns;      /* CLOCK_MONOTONIC ns the current batch was read; 0 idle */
	_Atomic int stop;
	_Atomic int has_table;        /* spin only when there is something to answer here */
	_Atomic int64_t stall_ns;     /* test seam: sleep this long after each read */
	uint32_t spin_us;
	uint64_t seq;
	_Atomic int nslots;
	/* CPU placement (the listener thread only) */
	int64_t follow_ns;            /* when the opener's CPU was last looked up */
	int pinned_cpu;               /* -1: not pinned (the thread's own mask) */
	int have_mask;
	cpu_set_t mask;               /* the thread's affinity before it was pinned */
	uint64_t follows;             /* pins to an opener's CPU (test seam) */
	/* the last opener's /proc/TID/syscall and stack, open (opener_reads_only; the loop
	 * only) */
	struct kept sc, st;
	/* the open context (bfan_set_marks; bastion.h "Open context"): the bitmap of
	 * threads whose registers may not describe their open, and the counts, both
	 * mapped read-only from openctx.bpf.o's (frozen) maps; oc_ready once mapped */
	const _Atomic uint64_t *oc_tids;
	size_t oc_words;
	const struct oc_counts *oc_counts;
	_Atomic int oc_ready;
	uint64_t oc_seen;             /* nested_bdis when /sys/class/bdi was last scanned */
	int oc_nested;                /* that scan found an eCryptfs device (or could not tell) */
	int64_t oc_scan_ns;
	int oc_bdi_fd;                /* the devices directory (/sys/class/bdi), kept open */
	struct slot slots[SLOTS];
	/* counters (read by Python under mu) */
	uint64_t events, perm_events, fast_allows, errors;
	uint64_t reads_marks, reads_stack;   /* read-only opens trusted by the marks / the stack */
	uint64_t lat_head, lat_tail;
	float lat_us[LAT_RING];
	char buf[READ_BUF] __attribute__((aligned(8)));
};

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static uint64_t mix(uint64_t dev, uint64_t ino)
{
	uint64_t h = ino * 0x9E3779B97F4A7C15ull ^ (dev + 0x632BE59BD9B4E019ull);

	h ^= h >> 31;
	h *= 0xBF58476D1CE4E5B9ull;
	return h ^ (h >> 29);
}

int bfan_abi(void)
{
	return BFAN_ABI;
}

struct bfan_ctx *bfan_new(uint32_t spin_us)
{
	struct bfan_ctx *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	pthread_mutex_init(&c->mu, NULL);
	c->spin_us = spin_us;
	c->pinned_cpu = -1;
	c->sc.fd = -1;
	c->st.fd = -1;
	c->oc_bdi_fd = -1;
	return c;
}

void bfan_free(struct bfan_ctx *c)
{
	if (!c)
		return;
	if (c->sc.fd >= 0)
		close(c->sc.fd);
	if (c->st.fd >= 0)
		close(c->st.fd);
	if (c->oc_tids)
		munmap((void *)c->oc_tids, c->oc_words * sizeof(uint64_t));
	if (c->oc_bdi_fd >= 0)
		close(c->oc_bdi_fd);
	if (c->oc_counts)
		munmap((void *)c->oc_counts, (size_t)sysconf(_SC_PAGESIZE));
	free(c->table);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

/* Publish a new allow table: n (dev, ino, bits) triples.  The previous table is
 * freed once no batch uses it.  n == 0 publishes none (every event goes to
 * Python).  Returns 0 or -ENOMEM. */
int bfan_publish(struct bfan_ctx *c, const uint64_t *triples, size_t n)
{
	struct table *t = NULL, *old;

	if (n) {
		size_t cap = 16;

		while (cap < n * 2)
			cap <<= 1;
		t = calloc(1, sizeof(*t) + cap * sizeof(struct entry));
		if (!t)
			return -ENOMEM;
		t->cap = cap;
		for (size_t i = 0; i < n; i++) {
			uint64_t dev = triples[3 * i], ino = triples[3 * i + 1];
			uint32_t bits = (uint32_t)triples[3 * i + 2] & TABLE_BITS;
			size_t j = mix(dev, ino) & (cap - 1);

			if (!bits)
				continue;
			if (!dev && !ino) {
				t->any_bits |= bits;
				continue;
			}
			while (t->e[j].bits && !(t->e[j].dev == dev && t->e[j].ino == ino))
				j = (j + 1) & (cap - 1);
			t->e[j].dev = dev;
			t->e[j].ino = ino;
			t->e[j].bits |= bits;
		}
	}
	pthread_mutex_lock(&c->mu);
	old = c->table;
	c->table = t;
	atomic_store(&c->has_table, t != NULL);
	if (old) {
		/* a batch that took the old table finishes with it (microseconds: statx of
		 * cached inodes and lookups); wait for it, so that no answer comes from the
		 * old table once this returns.  After 1 s the batch is stalled: the
		 * watchdog answers its events, and the table is freed by the batch. */
		int64_t until = now_ns() + 1000000000;

		while (old->users && now_ns() < until) {
			pthread_mutex_unlock(&c->mu);
			sched_yield();
			pthread_mutex_lock(&c->mu);
		}
		if (old->users)
			old->retired = 1;
		else
			free(old);
	}
	pthread_mutex_unlock(&c->mu);
	return 0;
}

static uint32_t lookup(const struct table *t, uint64_t dev, uint64_t ino)
{
	size_t j = mix(dev, ino) & (t->cap - 1);

	while (t->e[j].bits) {
		if (t->e[j].dev == dev && t->e[j].ino == ino)
			return t->e[j].bits;
		j = (j + 1) & (t->cap - 1);
	}
	return 0;
}

/* (kernel dev, ino) of an event fd from the cached inode: never asks a filesystem. */
static int fd_key(int fd, uint64_t *dev, uint64_t *ino)
{
	struct statx sx;

	if (statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_INO, &sx) != 0)
		return -1;
	*dev = ((uint64_t)sx.stx_dev_major << 20) | sx.stx_dev_minor;
	*ino = sx.stx_ino;
	return 0;
}

/* Is the open the blocked task @tid waits on its system call's own, so that the
 * syscall's registers describe it?  Its /proc/TID/stack must show do_filp_open called
 * by do_sys_openat2/do_sys_open (or do_file_open_root by file_open_root by
 * do_handle_open), and no frame of an open the kernel makes on the task's behalf in
 * another context: io_uring task work run on the way back from a blocked syscall (the
 * registers are that syscall's), an io_uring worker (a copy of the submitter's), a
 * core dump from the signal path.  The same test as Python's kernel/opener.py
 * own_open; a stack that cannot be read or named is 0 (the event goes to Python,
 * which then decides strictly). */
static const char *const not_own[] = {
	"task_work_run", "get_signal", "arch_do_signal_or_restart", "exit_to_user_mode_loop",
	"do_coredump", "vfs_coredump", "io_wq_worker", "io_worker_handle_work",
	"io_wq_submit_work", "io_issue_sqe", "__io_issue_sqe", "io_openat2", "io_openat",
	"io_req_task_submit", "tctx_task_work", "tctx_task_work_run", "ret_from_fork", "kthread",
};

static int frame_is(const char *f, size_t n, const char *name)
{
	return strlen(name) == n && memcmp(f, name, n) == 0;
}

/* The judgement of own_open on a /proc/TID/stack text (NUL-terminated, modified):
 * "[<0>] name+0x.../0x...\n" per frame, innermost first.  Also refused: a second file
 * open nested between the fanotify frames and do_filp_open (a stacked filesystem such
 * as eCryptfs opening its lower file with flags of its own inside the caller's open). */
static int stack_is_own_open(char *b)
{
	const char *f[64];
	size_t len[64];
	int nf = 0, opens = 0;

	for (char *p = b; *p && nf < 64;) {
		char *nl = strchr(p, '\n'), *name, *plus;

		if (!nl)
			nl = p + strlen(p);
		name = memmem(p, (size_t)(nl - p), "] ", 2);
		if (name) {
			name += 2;
			plus = memchr(name, '+', (size_t)(nl - name));
			f[nf] = name;
			len[nf] = (size_t)((plus ? plus : nl) - name);
			nf++;
		}
		p = *nl ? nl + 1 : nl;
	}
	if (nf == 64)
		return 0;   /* cut short: not judged */
	for (int i = 0; i < nf; i++)
		for (size_t k = 0; k < sizeof(not_own) / sizeof(not_own[0]); k++)
			if (frame_is(f[i], len[i], not_own[k]))
				return 0;
	for (int i = 0; i + 1 < nf; i++) {
		if (frame_is(f[i], len[i], "do_dentry_open"))
			opens++;
		if (frame_is(f[i], len[i], "backing_file_open"))
			opens--;   /* an overlay's real file, opened with the caller's flags */
		if (frame_is(f[i], len[i], "dentry_open") || frame_is(f[i], len[i], "kernel_file_open"))
			return 0;
		if (frame_is(f[i], len[i], "do_filp_open"))
			return opens == 1 && (frame_is(f[i + 1], len[i + 1], "do_sys_openat2") ||
					      frame_is(f[i + 1], len[i + 1], "do_sys_open"));
		if (frame_is(f[i], len[i], "do_file_open_root"))
			return opens == 1 && i + 2 < nf &&
			       frame_is(f[i + 1], len[i + 1], "file_open_root") &&
			       frame_is(f[i + 2], len[i + 2], "do_handle_open");
	}
	return 0;
}

/* Test seam: stack_is_own_open on @text (tests/unit compares it with Python's). */
int bfan_stack_own_open(const char *text)
{
	char b[2048];
	size_t n = strlen(text);

	if (n >= sizeof(b))
		return 0;
	memcpy(b, text, n + 1);
	return stack_is_own_open(b);
}

/* /proc/@tid/@name into @b (at most @size - 1 bytes; not terminated), from the
 * file kept in @k when it is @tid's: a hot opener costs one pread, not an open, a
 * read and a close.  The file names that task for good (its struct pid): once the
 * task is gone the read fails, even if another task has its number now, and the
 * file is opened afresh.  The bytes read, <= 0 when none. */
static ssize_t kept_read(struct kept *k, int32_t tid, const char *name, char *b, size_t size)
{
	char path[48];
	ssize_t n = -1;

	if (k->fd >= 0 && k->tid == tid)
		n = pread(k->fd, b, size - 1, 0);
	if (n > 0)
		return n;
	if (k->fd >= 0)
		close(k->fd);
	k->fd = -1;
	if (snprintf(path, sizeof(path), "/proc/%d/%s", tid, name) >= (int)sizeof(path))
		return -1;
	k->fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (k->fd < 0)
		return -1;
	k->tid = tid;
	return pread(k->fd, b, size - 1, 0);
}

static int own_open(struct bfan_ctx *c, int32_t tid)
{
	char b[2048];
	ssize_t n = kept_read(&c->st, tid, "stack", b, sizeof(b));

	if (n <= 0 || n >= (ssize_t)sizeof(b) - 1)
		return 0;   /* nothing, or cut short: not judged */
	b[n] = 0;
	return stack_is_own_open(b);
}

/* ---- the open context (bastion.h "Open context", bpf/openctx.bpf.c) ---------------- */

/* Map openctx.bpf.o's bitmap (@tids_fd, @words u64 words) and counts (@counts_fd),
 * read-only (user space froze them), and keep the devices directory @bdi_fd
 * (/sys/class/bdi, opened by the caller; duplicated here, so a mount over that path
 * later changes nothing: it must be sysfs when @need_sysfs, a test's own directory
 * otherwise).  Before the loop runs; the marks are trusted after bfan_marks_ready.
 * 0 or -errno. */
int bfan_set_marks(struct bfan_ctx *c, int tids_fd, uint32_t words, int counts_fd,
		   int bdi_fd, int need_sysfs)
{
	void *t, *n;
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	struct statfs sf;
	int d;

	if (c->oc_tids || !words)
		return -EINVAL;
	if (fstatfs(bdi_fd, &sf) != 0)
		return -errno;
	if (need_sysfs && sf.f_type != SYSFS_MAGIC)
		return -EXDEV;
	d = fcntl(bdi_fd, F_DUPFD_CLOEXEC, 0);
	if (d < 0)
		return -errno;
	t = mmap(NULL, (size_t)words * sizeof(uint64_t), PROT_READ, MAP_SHARED, tids_fd, 0);
	if (t == MAP_FAILED) {
		int e = -errno;

		close(d);
		return e;
	}
	n = mmap(NULL, page, PROT_READ, MAP_SHARED, counts_fd, 0);
	if (n == MAP_FAILED) {
		int e = -errno;

		munmap(t, (size_t)words * sizeof(uint64_t));
		close(d);
		return e;
	}
	c->oc_bdi_fd = d;
	c->oc_words = words;
	c->oc_counts = n;
	c->oc_tids = t;
	c->oc_seen = atomic_load(&c->oc_counts->nested_bdis);
	c->oc_nested = 1;    /* scanned at the first read (after bfan_marks_ready) */
	c->oc_scan_ns = 0;
	return 0;
}

void bfan_marks_ready(struct bfan_ctx *c)
{
	if (c->oc_tids)
		atomic_store_explicit(&c->oc_ready, 1, memory_order_release);
}

/* Is an eCryptfs backing device in the kept devices directory?  1 yes, 0 no, -1 cannot
 * tell. */
static int scan_bdi(const struct bfan_ctx *c)
{
	int fd = openat(c->oc_bdi_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *e;
	int found = 0;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	while ((e = readdir(d)))
		if (strncmp(e->d_name, "ecryptfs-", 9) == 0) {
			found = 1;
			break;
		}
	closedir(d);
	return found;
}

/* Can an open be nested in another one's with flags of its own (an eCryptfs mount
 * exists, or a scan could not tell)?  The count of eCryptfs devices registered moves
 * before any such mount can be used; while it has not moved since a scan that found
 * none, the answer stands.  While one exists, /sys/class/bdi is looked at again at
 * most once a second (an unmount is not counted). */
static int nested_fs(struct bfan_ctx *c)
{
	uint64_t n = atomic_load_explicit(&c->oc_counts->nested_bdis, memory_order_acquire);
	int64_t now;
	int found;

	if (n == c->oc_seen && !c->oc_nested)
		return 0;
	now = now_ns();
	if (n == c->oc_seen && c->oc_scan_ns && now - c->oc_scan_ns < 1000000000)
		return 1;
	found = scan_bdi(c);
	c->oc_seen = n;
	c->oc_scan_ns = now;
	/* a device registered during the scan moved the count: the next read scans again */
	c->oc_nested = found != 0 ||
		       atomic_load_explicit(&c->oc_counts->nested_bdis, memory_order_acquire) != n;
	return c->oc_nested;
}

/* Do @tid's registers describe the open it waits on, by the marks (no /proc)?  1 when
 * the marks are ready, its bit is clear and no open can be nested; 0: ask its stack. */
static int marks_trust(struct bfan_ctx *c, int32_t tid)
{
	uint64_t w;

	if (!atomic_load_explicit(&c->oc_ready, memory_order_acquire) ||
	    (size_t)(tid >> 6) >= c->oc_words)
		return 0;
	w = atomic_load_explicit(&c->oc_tids[tid >> 6], memory_order_acquire);
	if (w & (1ULL << (tid & 63)))
		return 0;
	return !nested_fs(c);
}

/* Is the blocked opener @tid's open read-only?  From its /proc/TID/syscall (the
 * syscall it sleeps in and its register arguments, which cannot change while it
 * waits for our answer): open, openat or open_by_handle_at of this ABI with
 * O_RDONLY and without O_TRUNC, whose open is that syscall's own: by the marks
 * (marks_trust: no /proc read), else by its stack (own_open).  Anything else -- another syscall (execve, a 32-bit task's numbers),
 * io_uring or a core dump opening on the task's behalf, openat2 (its flags are in
 * the opener's memory), a task not asleep yet ("running"), a read error -- is 0: the
 * event goes to Python, which decides it in full (kernel/opener.py: open_flags). */
static int opener_reads_only(struct bfan_ctx *c, int32_t tid)
{
	char b[256], *p, *end;
	int idx;
	ssize_t n;
	long nr;
	unsigned long long flags = 0;

	if (tid <= 0)
		return 0;
	n = kept_read(&c->sc, tid, "syscall", b, sizeof(b));
	if (n <= 0)
		return 0;
	b[n] = 0;
	nr = strtol(b, &end, 10);
	if (end == b || *end != ' ')
		return 0;   /* "running", or not a number */
#if defined(__x86_64__)
	idx = nr == 2 ? 1 : (nr == 257 || nr == 304) ? 2 : -1;
#elif defined(__aarch64__)
	idx = (nr == 56 || nr == 265) ? 2 : -1;
#else
	idx = -1;
#endif
	if (idx < 0)
		return 0;
	p = end;
	for (int i = 0; i <= idx; i++) {
		errno = 0;
		flags = strtoull(p, &end, 16);
		if (end == p || errno)
			return 0;
		p = end;
	}
	flags &= 0xffffffffULL;
	if ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC))
		return 0;
	if (marks_trust(c, tid)) {
		c->reads_marks++;
		return 1;
	}
	c->reads_stack++;
	return own_open(c, tid);
}

/* Is the opener @tid's executable one the plan's subjects name?  1: yes, 0: no, -1:
 * unknown (the event goes to Python).  Its identity from statx of /proc/TID/exe (the
 * cached inode: AT_STATX_DONT_SYNC, never the executable's filesystem), as Python's
 * exe_key; its threads share it and an exec by another thread ends this one first. */
static int opener_is_subject(const struct table *t, int32_t tid)
{
	char path[32];
	struct statx sx;

	if (tid <= 0 || snprintf(path, sizeof(path), "/proc/%d/exe", tid) >= (int)sizeof(path))
		return -1;
	if (statx(AT_FDCWD, path, AT_STATX_DONT_SYNC, STATX_INO, &sx) != 0)
		return -1;
	return (lookup(t, ((uint64_t)sx.stx_dev_major << 20) | sx.stx_dev_minor, sx.stx_ino)
		& SUBJECT_EXE) ? 1 : 0;
}

static int claim(struct slot *s, uint64_t seq, int to)
{
	uint64_t want = seq << 8 | ST_PENDING;

	return atomic_compare_exchange_strong(&s->word, &want, seq << 8 | (uint64_t)to);
}

void bfan_stop(struct bfan_ctx *c, int stop)
{
	atomic_store(&c->stop, stop);
}

void bfan_set_stall(struct bfan_ctx *c, int64_t ns)
{
	atomic_store(&c->stall_ns, ns);
}

int64_t bfan_busy_ns(struct bfan_ctx *c)
{
	return atomic_load(&c->busy_ns);
}

/* The CPU task @tid last ran on (field 39 of /proc/TID/stat), or -1. */
static int task_cpu(int32_t tid)
{
	char path[32], b[1024], *p;
	int fd, field = 2;
	ssize_t n;

	if (tid <= 0 || snprintf(path, sizeof(path), "/proc/%d/stat", tid) >= (int)sizeof(path))
		return -1;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -1;
	n = read(fd, b, sizeof(b) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	b[n] = 0;
	p = strrchr(b, ')');   /* past comm, which may hold blanks and parentheses */
	if (!p)
		return -1;
	for (; *p; p++) {
		if (*p == ' ' && ++field == 39) {
			char *end;
			long cpu = strtol(p + 1, &end, 10);

			return end != p + 1 && cpu >= 0 && cpu < CPU_SETSIZE ? (int)cpu : -1;
		}
	}
	return -1;
}

/* Pin the listener thread to the CPU opener @tid ran on (see the head comment);
 * a CPU outside the thread's own mask, or any error, leaves it where it is. */
static void follow(struct bfan_ctx *c, int32_t tid, int64_t now)
{
	cpu_set_t one;
	int cpu;

	if (now - c->follow_ns < FOLLOW_NS)
		return;
	c->follow_ns = now;
	if (!c->have_mask) {
		if (sched_getaffinity(0, sizeof(c->mask), &c->mask) != 0)
			return;
		c->have_mask = 1;
	}
	cpu = task_cpu(tid);
	if (cpu < 0 || cpu == c->pinned_cpu || !CPU_ISSET(cpu, &c->mask))
		return;
	CPU_ZERO(&one);
	CPU_SET(cpu, &one);
	if (sched_setaffinity(0, sizeof(one), &one) == 0) {
		c->pinned_cpu = cpu;
		c->follows++;
	}
}

/* Back to the thread's own mask (before it sleeps, and when it stops). */
static void unpin(struct bfan_ctx *c)
{
	if (c->pinned_cpu < 0)
		return;
	if (sched_setaffinity(0, sizeof(c->mask), &c->mask) == 0)
		c->pinned_cpu = -1;
	c->follow_ns = 0;
}

/* Wait for events (spin, then poll up to timeout_ms); 1: readable, 0: timeout or
 * wake fd, -errno on error.  ``got`` receives the bytes read while spinning. */
static int wait_events(struct bfan_ctx *c, int fan_fd, int wake_fd, int timeout_ms, ssize_t *got)
{
	struct pollfd p[2] = { { fan_fd, POLLIN, 0 }, { wake_fd, POLLIN, 0 } };

	*got = 0;
	if (c->spin_us && atomic_load(&c->has_table)) {
		int64_t until = now_ns() + (int64_t)c->spin_us * 1000;

		do {
			ssize_t n = read(fan_fd, c->buf, sizeof(c->buf));

			if (n > 0) {
				*got = n;
				return 1;
			}
			if (n < 0 && errno != EAGAIN && errno != EINTR)
				return -errno;
			if (atomic_load(&c->stop))
				return 0;
			/* the opener we just answered may be queued on this CPU (its loop
			 * pinned here): let it run rather than spin ahead of it */
			sched_yield();
		} while (now_ns() < until);
	}
	unpin(c);   /* a sleeping listener goes where the scheduler wakes it */
	for (;;) {
		int r = poll(p, 2, timeout_ms);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0 || (p[1].revents & POLLIN) || atomic_load(&c->stop))
			return 0;
		return 1;
	}
}

/* Is the event allowed because its opener is a task no subject names (the plan allows
 * such a task every open, every read-only open, or every exec, of any inode)? */
/* opener_reads_only once per event: *@ro is -1 until asked (the answer costs procfs
 * reads, and the two checks below may both want it) */
static int reads_only_once(struct bfan_ctx *c, int32_t tid, int *ro)
{
	if (*ro < 0)
		*ro = opener_reads_only(c, tid);
	return *ro;
}

static int nosubj_allows(struct bfan_ctx *c, const struct table *t, uint32_t want, int32_t tid,
			 int *ro)
{
	uint32_t any = t->any_bits;

	if (want == 2 ? !(any & NOSUBJ_EXEC) : !(any & (NOSUBJ_OPEN | NOSUBJ_READ)))
		return 0;
	if (opener_is_subject(t, tid) != 0)
		return 0;
	return want == 2 || (any & NOSUBJ_OPEN) || reads_only_once(c, tid, ro);
}

/* One call: wait, read batches and answer the fast ones until some event must go
 * to Python (returned: their count, copied to out), the wake fd or stop, or
 * timeout_ms without events (0).  -errno on a read error (nothing pending). */
int bfan_run(struct bfan_ctx *c, int fan_fd, int wake_fd, int timeout_ms,
	     struct bfan_event *out, int cap)
{
	static __thread struct iovec iov[SLOTS];
	static __thread struct response resp[SLOTS];
	static __thread int done_idx[SLOTS];

	if (cap < SLOTS)
		return -EINVAL;
	for (;;) {
		ssize_t n;
		int r = wait_events(c, fan_fd, wake_fd, timeout_ms, &n);
		int64_t t0;
		struct table *t;
		int ns = 0, nout = 0, nd = 0;
		uint64_t seq;

		if (r <= 0) {
			unpin(c);
			return r;
		}
		if (n == 0) {
			n = read(fan_fd, c->buf, sizeof(c->buf));
			if (n < 0) {
				if (errno == EAGAIN || errno == EINTR)
					continue;
				return -errno;
			}
			if (n == 0)
				continue;
		}
		t0 = now_ns();
		seq = ++c->seq;
		atomic_store(&c->busy_ns, t0);
		/* slots first: the watchdog can answer every event from here on */
		for (ssize_t off = 0; off + (ssize_t)sizeof(struct meta) <= n && ns < SLOTS;) {
			struct meta m;
			struct slot *s = &c->slots[ns++];

			memcpy(&m, c->buf + off, sizeof(m));
			atomic_store(&s->word, seq << 8 | ST_FILLING);
			s->fd = m.fd;
			s->pid = m.pid;
			s->mask = m.mask;
			atomic_store(&s->word, seq << 8 | ST_PENDING);
			if (m.vers != META_VERSION || m.event_len < sizeof(m))
				break;   /* handed to Python as is: it logs the version */
			off += m.event_len;
		}
		atomic_store(&c->nslots, ns);
		if (atomic_load(&c->stall_ns) > 0) {
			int64_t st = atomic_load(&c->stall_ns);
			struct timespec ts = { st / 1000000000, st % 1000000000 };

			nanosleep(&ts, NULL);
		}
		pthread_mutex_lock(&c->mu);
		t = c->table;
		if (t)
			t->users++;
		pthread_mutex_unlock(&c->mu);
		for (int i = 0; i < ns; i++) {
			struct slot *s = &c->slots[i];
			uint64_t dev, ino;
			uint32_t want, bits;
			int ro;

			c->events++;
			if (s->fd < 0 || !(s->mask & FAN_PERM_EVENTS))
				continue;
			c->perm_events++;
			if (!t)
				continue;
			want = (s->mask & FAN_OPEN_EXEC_PERM) ? 2 : (s->mask & FAN_ACCESS_PERM) ? 0 : 1;
			if (!want || fd_key(s->fd, &dev, &ino) != 0)
				continue;
			bits = lookup(t, dev, ino) | t->any_bits;
			/* an inode every task may read but not write (a write-protected file):
			 * a read-only open is allowed here, the rest goes to Python */
			ro = -1;
			if (!(bits & want) && !(want == 1 && (bits & 4) && reads_only_once(c, s->pid, &ro))
			    && !nosubj_allows(c, t, want, s->pid, &ro))
				continue;
			if (!claim(s, seq, ST_DONE))
				continue;    /* the watchdog took it: it answers and closes */
			resp[nd].fd = s->fd;
			resp[nd].response = FAN_ALLOW;
			iov[nd].iov_base = &resp[nd];
			iov[nd].iov_len = sizeof(resp[nd]);
			done_idx[nd++] = i;
		}
		/* the procfs reads above may have stalled (a task's stack or syscall file
		 * waits for its exec lock) past the 1 s bfan_publish waits for this batch:
		 * once it retired the table, nothing is answered from it -- the slots go back
		 * to pending, for Python (or the watchdog) below.  mu is held from that check
		 * through the answers (writev to our own group never blocks), so publish
		 * cannot retire the table in between */
		pthread_mutex_lock(&c->mu);
		if (nd && t->retired) {
			for (int i = 0; i < nd; i++)
				atomic_store(&c->slots[done_idx[i]].word, seq << 8 | ST_PENDING);
			nd = 0;
		}
		for (int i = 0; i < nd;) {
			/* one response per iovec: fanotify_write takes one per write and the
			 * readv/writev loop stops at the first it refuses */
			ssize_t w = writev(fan_fd, iov + i, nd - i);

			if (w < 0) {
				c->errors++;   /* iov[i] refused (no such pending event): skip it */
				i++;
			} else if (w == 0) {
				c->errors++;
				for (; i < nd; i++)
					if (write(fan_fd, &resp[i], sizeof(resp[i])) != sizeof(resp[i]))
						c->errors++;
			} else {
				i += (int)(w / (ssize_t)sizeof(struct response));
			}
		}
		pthread_mutex_unlock(&c->mu);
		for (int i = 0; i < nd; i++)
			close(c->slots[done_idx[i]].fd);
		{
			float us = (float)(now_ns() - t0) / 1000.0f;

			pthread_mutex_lock(&c->mu);
			c->fast_allows += (uint64_t)nd;
			for (int i = 0; i < nd; i++)
				c->lat_us[c->lat_head++ % LAT_RING] = us;
			if (t && --t->users == 0 && t->retired)
				free(t);
			pthread_mutex_unlock(&c->mu);
		}
		for (int i = 0; i < ns; i++) {
			struct slot *s = &c->slots[i];
			uint64_t w = atomic_load(&s->word);

			if ((w & 0xff) != ST_PENDING || !claim(s, seq, ST_HANDED))
				continue;
			out[nout].fd = s->fd;
			out[nout].pid = s->pid;
			out[nout].mask = s->mask;
			nout++;
		}
		atomic_store(&c->busy_ns, 0);
		if (nd && c->spin_us)
			follow(c, c->slots[done_idx[0]].pid, now_ns());
		if (nout) {
			unpin(c);   /* Python decides the next events: its own placement */
			return nout;
		}
	}
}

/* Watchdog: when the loop has held its batch for timeout_ns or more, claim every
 * event of it still pending and copy it to out (the caller answers and closes
 * each).  Returns how many were claimed. */
int bfan_rescue(struct bfan_ctx *c, int64_t timeout_ns, struct bfan_event *out, int cap)
{
	int64_t busy = atomic_load(&c->busy_ns);
	int ns, nout = 0;

	if (busy == 0 || now_ns() - busy < timeout_ns)
		return 0;
	ns = atomic_load(&c->nslots);
	for (int i = 0; i < ns && nout < cap; i++) {
		struct slot *s = &c->slots[i];
		uint64_t w = atomic_load(&s->word);
		int32_t fd = s->fd, pid = s->pid;
		uint64_t mask = s->mask;

		if ((w & 0xff) != ST_PENDING || fd < 0)
			continue;
		if (!atomic_compare_exchange_strong(&s->word, &w, (w & ~0xffull) | ST_CLAIMED))
			continue;   /* taken meanwhile, or the slot is another batch's now */
		out[nout].fd = fd;
		out[nout].pid = pid;
		out[nout].mask = mask;
		nout++;
	}
	return nout;
}

/* Counters: out[0..3] = events, perm_events, fast_allows, errors; latencies (us)
 * of fast answers since the last call into lat (up to cap); returns their count. */
int bfan_stats(struct bfan_ctx *c, uint64_t *out, float *lat, int cap)
{
	int n = 0;

	pthread_mutex_lock(&c->mu);
	out[0] = c->events;
	out[1] = c->perm_events;
	out[2] = c->fast_allows;
	out[3] = c->errors;
	out[4] = c->reads_marks;
	out[5] = c->reads_stack;
	if (c->lat_head - c->lat_tail > LAT_RING)
		c->lat_tail = c->lat_head - LAT_RING;
	while (c->lat_tail < c->lat_head && n < cap)
		lat[n++] = c->lat_us[c->lat_tail++ % LAT_RING];
	pthread_mutex_unlock(&c->mu);
	return n;
}
