/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Exec context read in the kernel at sched_process_exec (issue 15.2/15.3):
 * the watched environment variables of the new image (a bounded scan of
 * mm->env_start..env_end), the script of an interpreted file, a descriptor
 * exec (execveat AT_EMPTY_PATH / fexecve), and what fds 0 and 1 are. */
#ifndef BASTION_EXECTX_H
#define BASTION_EXECTX_H

#include "path.h"

#define ENV_CHUNK 256           /* one read; an entry is cut at ENV_CHUNK - 1 bytes */
/* reads per exec (entries, plus one per extra chunk of a long one).  An environment longer
 * than this is cut (F_TRUNC_ENV), and behavior.loader_env reports the cut: padding the
 * environment to push an LD_PRELOAD past the scan hid it (s31).  1,024 keeps the report
 * for padding (a pod with hundreds of service variables stays under it); the loop ends
 * at the environment's end, so a usual one costs what it did. */
#define ENV_STEPS 1024

struct env_ctx {
	unsigned long pos, end;
	__u32 out_len;
	bool mid;      /* pos is inside an entry longer than a chunk */
	bool full;     /* out had no room for a match */
};

/* The scan's state lives in the map value, never on the caller's stack: a
 * verifier before Linux 6.7 (Debian 12's 6.1) checks a bpf_loop callback once,
 * from the state before the loop, so a stack context of known constants
 * (out_len 0) let it prove `off > BASTION_ENV_LEN - ENV_CHUNK` never true and
 * remove the branch as dead code; clang had dropped the index mask the branch
 * implied, so at run time out_len grew without a bound and each watched
 * variable of a long environment was copied past the end of this value (an
 * unprivileged exec writing its own bytes into kernel memory).  A map value's
 * contents are unknown to every verifier: the bound stays. */
struct env_scratch {
	char chunk[ENV_CHUNK];
	char out[BASTION_ENV_LEN];
	struct env_ctx ctx;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct env_scratch);
} env_scratch SEC(".maps");

#define PFX8(a, b, c, d, e, f, g, h)                                                      \
	((__u64)(a) | (__u64)(b) << 8 | (__u64)(c) << 16 | (__u64)(d) << 24 |            \
	 (__u64)(e) << 32 | (__u64)(f) << 40 | (__u64)(g) << 48 | (__u64)(h) << 56)

/* Is an entry starting with these 8 bytes a watched variable?  User space
 * checks the exact name (LD_PRELOAD_X starts like LD_PRELOAD). */
static __always_inline bool env_watched(__u64 v)
{
	switch (v) {
	case PFX8('L', 'D', '_', 'P', 'R', 'E', 'L', 'O'): /* LD_PRELOAD */
	case PFX8('L', 'D', '_', 'L', 'I', 'B', 'R', 'A'): /* LD_LIBRARY_PATH */
	case PFX8('L', 'D', '_', 'A', 'U', 'D', 'I', 'T'): /* LD_AUDIT */
	case PFX8('P', 'Y', 'T', 'H', 'O', 'N', 'P', 'A'): /* PYTHONPATH */
	case PFX8('P', 'Y', 'T', 'H', 'O', 'N', 'S', 'T'): /* PYTHONSTARTUP */
	case PFX8('P', 'Y', 'T', 'H', 'O', 'N', 'H', 'O'): /* PYTHONHOME */
	case PFX8('P', 'E', 'R', 'L', '5', 'L', 'I', 'B'): /* PERL5LIB */
	case PFX8('P', 'E', 'R', 'L', '5', 'O', 'P', 'T'): /* PERL5OPT */
	case PFX8('P', 'E', 'R', 'L', 'L', 'I', 'B', '='): /* PERLLIB */
	case PFX8('R', 'U', 'B', 'Y', 'O', 'P', 'T', '='): /* RUBYOPT */
	case PFX8('R', 'U', 'B', 'Y', 'L', 'I', 'B', '='): /* RUBYLIB */
	case PFX8('N', 'O', 'D', 'E', '_', 'O', 'P', 'T'): /* NODE_OPTIONS */
	case PFX8('N', 'O', 'D', 'E', '_', 'P', 'A', 'T'): /* NODE_PATH */
	case PFX8('B', 'A', 'S', 'H', '_', 'E', 'N', 'V'): /* BASH_ENV */
	case PFX8('G', 'C', 'O', 'N', 'V', '_', 'P', 'A'): /* GCONV_PATH */
	/* s31 review 3: what else runs a user's code in a trusted interpreter */
	case PFX8('B', 'A', 'S', 'H', '_', 'F', 'U', 'N'): /* BASH_FUNC_<name>%% (exported functions) */
	case PFX8('S', 'H', 'E', 'L', 'L', 'O', 'P', 'T'): /* SHELLOPTS */
	case PFX8('B', 'A', 'S', 'H', 'O', 'P', 'T', 'S'): /* BASHOPTS */
	case PFX8('P', 'Y', 'T', 'H', 'O', 'N', 'U', 'S'): /* PYTHONUSERBASE */
	case PFX8('Z', 'D', 'O', 'T', 'D', 'I', 'R', '='): /* ZDOTDIR */
	case PFX8('P', 'E', 'R', 'L', '5', 'D', 'B', '='): /* PERL5DB */
		return true;
	}
	return false;
}

static long env_step(__u32 i, void *data)
{
	__u32 zero = 0;
	struct env_scratch *s = bpf_map_lookup_elem(&env_scratch, &zero);
	struct env_ctx *c;
	unsigned long left;
	long n;
	__u64 v;
	__u32 off;
	bool head;

	if (!s)
		return 1;
	c = &s->ctx;
	if (c->pos >= c->end)
		return 1;
	left = c->end - c->pos;
	if (left > ENV_CHUNK)
		left = ENV_CHUNK;
	n = bpf_probe_read_user_str(s->chunk, left, (const void *)c->pos);
	if (n <= 0)
		return 1;
	head = !c->mid;
	if (n == ENV_CHUNK) {
		/* no NUL in the chunk (or exactly at its end): the rest of this
		 * entry is skipped chunk by chunk, never matched */
		c->mid = true;
		c->pos += ENV_CHUNK - 1;
	} else {
		c->mid = false;
		c->pos += n;
	}
	if (!head)
		return 0;
	if (n < 9)
		return 0;
	__builtin_memcpy(&v, s->chunk, 8);
	if (!env_watched(v))
		return 0;
	off = c->out_len;
	if (off > BASTION_ENV_LEN - ENV_CHUNK) {
		c->full = true;
		return 0;
	}
	n = bpf_probe_read_kernel_str(&s->out[off & (BASTION_ENV_LEN - 1)], ENV_CHUNK, s->chunk);
	if (n > 0)
		c->out_len = off + n;
	return 0;
}

/* Scan the new image's environment into @out/@len; true when it stopped early. */
static __always_inline bool env_scan(struct mm_struct *mm, char *out, __u32 *len)
{
	__u32 zero = 0;
	struct env_scratch *s = bpf_map_lookup_elem(&env_scratch, &zero);
	struct env_ctx *c;

	*len = 0;
	if (!s)
		return true;
	c = &s->ctx;
	c->pos = BPF_CORE_READ(mm, env_start);
	c->end = BPF_CORE_READ(mm, env_end);
	c->out_len = 0;
	c->mid = false;
	c->full = false;
	bpf_loop(ENV_STEPS, env_step, NULL, 0);
	if (c->out_len) {
		__u32 n = c->out_len;

		if (n > BASTION_ENV_LEN)
			n = BASTION_ENV_LEN;
		bpf_probe_read_kernel(out, BASTION_ENV_LEN, s->out); /* env_len says how much counts */
		*len = n;
	}
	return c->full || c->pos < c->end;
}

/* "/dev/fd/N" (execveat AT_EMPTY_PATH, fexecve) -> N; "/dev/fd/N/..." -> -2; else -1. */
static __always_inline int devfd_num(const char *kname)
{
	char b[16] = {};
	__u64 v;
	int n = 0, i;

	if (bpf_probe_read_kernel_str(b, sizeof(b), kname) < 9)
		return -1;
	__builtin_memcpy(&v, b, 8);
	if (v != PFX8('/', 'd', 'e', 'v', '/', 'f', 'd', '/'))
		return -1;
#pragma unroll
	for (i = 8; i < 15; i++) {
		char ch = b[i];

		if (ch == '\0')
			return i > 8 ? n : -1;
		if (ch == '/')
			return -2;
		if (ch < '0' || ch > '9')
			return -1;
		n = n * 10 + (ch - '0');
	}
	return -1;
}

/* What descriptor @fd of the current task is: S_IFMT >> 12 and its inode. */
static __always_inline void fd_kind(int fd, __u16 *type, __u64 *ino)
{
	struct file *f = fd_file(fd);

	*type = 0;
	*ino = 0;
	if (!f)
		return;
	*type = (BPF_CORE_READ(f, f_inode, i_mode) >> 12) & 0xf;
	*ino = BPF_CORE_READ(f, f_inode, i_ino);
}

#endif /* BASTION_EXECTX_H */
