// SPDX-License-Identifier: GPL-2.0
/* A decoded payload piped into a shell, stopped in the kernel (issue 15 must-stop;
 * s23-pipegate).  One object for both tiers.
 *
 * `echo <b64> | base64 -d | sh`: the exec-time rule (behavior.decoded_payload_shell)
 * kills the shell from user space after its exec record, and a short pipeline is over
 * before that (docs/detection.md, "block decided, target exited first").  Here, at
 * sched_process_exec (the new image bound, no user code of it run yet), a process in
 * scope whose fd 0 or fd 1 is a pipe (or a fifo: both are keyed by their inode) is
 * looked at:
 *  - an installed decoder (`pipegate_progs`, by inode) whose argv asks to decode,
 *    writing into a pipe, marks the pipe;
 *  - an installed shell that reads its commands from stdin (no script argument, no
 *    -c; `sh`, `bash -s`, `sh -i`), reading a pipe, marks it as read by a shell;
 *  - any other process reading a pipe and writing a pipe is a relay (`cat`, `dd`,
 *    `tee`, a shell running -c): its stdin pipe records its stdout pipe, and a mark on
 *    its stdin is carried to its stdout (at most PG_HOPS relays).
 * The process that completes a decoder -> (relays) -> stdin shell chain, whichever it
 * is, gets bpf_send_signal(SIGKILL): it dies before any of its own code runs.  Killed
 * first, the decoder writes nothing (the shell reads EOF); the shell reads nothing.
 * Both marks of one pipe are set with one atomic fetch-or on its entry, so a decoder
 * and a shell exec'ing at the same instant on two CPUs cannot both miss the other.
 *
 * The lsm tier uses this object too: bprm_check_security could refuse with EPERM, but
 * the decision needs the new image's argv, which is then in bprm->mm (not current's:
 * no non-sleepable BPF read reaches it), and bprm_committed_creds, where it would be,
 * cannot refuse: a kill there is this kill.
 *
 * Cost: every exec in scope reads two fd table slots; an exec with a pipe on fd 0 or
 * 1 one hash lookup more, an installed decoder or shell on a pipe the argv parse (at
 * most PG_ARGV bytes), a relay one LRU update.  Exit: a leader whose fd 0 is a pipe,
 * one lookup (a stdin shell's reader mark is dropped with it). */
#include "path.h"

char LICENSE[] SEC("license") = "GPL";

#define SIGKILL_ 9
#define IFIFO_ 1          /* S_IFIFO >> 12: a pipe or a fifo */
#define PG_ARGV 512       /* argv bytes parsed; past them the undecided rest counts against */
#define PG_HOPS 4         /* relays carried between a decoder and a shell */

/* 8 characters as a little-endian __u64 (bpf/lib/exectx.h's PFX8) */
#define PG8(a, b, c, d, e, f, g, h)                                                       \
	((__u64)(a) | (__u64)(b) << 8 | (__u64)(c) << 16 | (__u64)(d) << 24 |            \
	 (__u64)(e) << 32 | (__u64)(f) << 40 | (__u64)(g) << 48 | (__u64)(h) << 56)

#define PGF_MARKED 1ULL   /* a decoder writes into it (or a relay of one) */
#define PGF_READER 2ULL   /* a shell reads its commands from it */
#define PGF_RELAY 4ULL    /* relay_out is set */

struct pg_pipe {
	__u64 flags;          /* PGF_*, only ever set by an atomic fetch-or (or cleared by and) */
	__u32 writer;         /* the decoder's tgid (carried through relays) */
	__u32 reader;         /* the stdin shell's tgid */
	__u32 hops;           /* relays between the decoder and this pipe */
	__u32 _pad;
	struct bastion_inode_key relay_out; /* a relay reading this pipe writes that one */
};

/* Pipes (by inode) met at exec.  LRU: an evicted entry loses its marks (a chain
 * spread over more than this many live pipes in scope is not seen: the user-space
 * rule still is). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct bastion_inode_key);
	__type(value, struct pg_pipe);
} pipegate_pipes SEC(".maps");

/* An installed decoder's or shell's executable -> enum bastion_pipegate_kind. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_RDONLY_PROG);
	__type(key, struct bastion_inode_key);
	__type(value, __u32);
} pipegate_progs SEC(".maps");

/* An interpreter's executable -> its option letters meaning "code follows, no script"
 * (bit c - 'a' / 26 + c - 'A'; python3 "cm", perl "eE", node "ep"...). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__uint(map_flags, BPF_F_RDONLY_PROG);
	__type(key, struct bastion_inode_key);
	__type(value, __u64);
} pipegate_letters SEC(".maps");

/* slot 0: dry run (1 = report, no signal) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_RDONLY_PROG);
	__type(key, __u32);
	__type(value, __u32);
} pipegate_cfg SEC(".maps");

#define OPT_POS 0     /* a positional argument (a file, a script) */
#define OPT_SHORT 1   /* -xyz (or +o for a shell) */
#define OPT_LONG 2    /* --name */
#define OPT_VALUE 3   /* the value of the option before */

/* The argv parse's state lives in the map value, never on the stack: a bpf_loop
 * callback is checked from the state before the loop on 6.1 (bpf/lib/exectx.h). */
struct pg_scratch {
	char argv[PG_ARGV + 16];   /* 16 bytes of slack: an 8-byte compare at any offset */
	__u64 code;                /* an interpreter's code letters */
	__u32 len;
	__u32 argstart;            /* the current argument's offset in argv */
	__u32 kind;
	__u32 argi;
	__u32 pos;
	char head[4];
	__u8 opt;
	__u8 skipnext;
	__u8 endopts;
	__u8 decided;
	__u8 result;
	__u8 seen_s;
	__u8 _pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pg_scratch);
} pipegate_scratch SEC(".maps");

static __always_inline void pg_decide(struct pg_scratch *s, __u8 r)
{
	s->decided = 1;
	s->result = r;
}

/* Does a reader (a shell, an interpreter) read its commands from stdin? */
static __always_inline bool pg_reader(__u32 kind)
{
	return kind == BASTION_PGK_SHELL || kind == BASTION_PGK_INTERP;
}

static __always_inline bool pg_code_letter(struct pg_scratch *s, char c)
{
	if (c >= 'a' && c <= 'z')
		return (s->code >> (c - 'a')) & 1;
	if (c >= 'A' && c <= 'Z')
		return (s->code >> (26 + c - 'A')) & 1;
	return false;
}

static __always_inline void pg_arg_start(struct pg_scratch *s, char c)
{
	bool shell = s->kind == BASTION_PGK_SHELL;

	if (s->skipnext) {
		s->skipnext = 0;
		s->opt = OPT_VALUE;
		return;
	}
	if (!s->endopts && (c == '-' || (shell && c == '+'))) {
		s->opt = OPT_SHORT;
		return;
	}
	s->opt = OPT_POS;   /* a shell's script: decided at its end (pg_arg_end) */
}

/* Is the argument at s->argstart, @len bytes, a name of the process's own stdin
 * (/dev/stdin, /dev/fd/0, /proc/self/fd/0): `sh /dev/stdin` reads the pipe. */
static __always_inline bool pg_stdin_name(struct pg_scratch *s, __u32 len)
{
	char *a = s->argv + (s->argstart & (PG_ARGV - 1));
	__u64 v0, v1;

	__builtin_memcpy(&v0, a, 8);
	__builtin_memcpy(&v1, a + 8, 8);
	if (len == 10 && v0 == PG8('/', 'd', 'e', 'v', '/', 's', 't', 'd'))
		return (v1 & 0xffff) == PG8('i', 'n', 0, 0, 0, 0, 0, 0);
	if (len == 9 && v0 == PG8('/', 'd', 'e', 'v', '/', 'f', 'd', '/'))
		return (v1 & 0xff) == '0';
	if (len == 15 && v0 == PG8('/', 'p', 'r', 'o', 'c', '/', 's', 'e'))
		return (v1 & 0xffffffffffffffULL) == PG8('l', 'f', '/', 'f', 'd', '/', '0', 0);
	return false;
}

/* A character at s->pos >= 1 of an argument (s->head holds its first four). */
static __always_inline void pg_arg_char(struct pg_scratch *s, char c)
{
	if (s->opt == OPT_SHORT && s->pos == 1 && c == '-' && s->head[0] == '-') {
		s->opt = OPT_LONG;
		return;
	}
	switch (s->kind) {
	case BASTION_PGK_SHELL:
		if (s->opt != OPT_SHORT)
			return;
		if (c == 'c' && s->head[0] == '-')
			pg_decide(s, 0);       /* the program is the argument: not stdin */
		else if (c == 's' && s->head[0] == '-')
			s->seen_s = 1;         /* commands from stdin, whatever follows */
		else if (c == 'o' || c == 'O')
			s->skipnext = 1;       /* -o NAME, +O NAME */
		return;
	case BASTION_PGK_INTERP:       /* python -c/-m, perl -e/-E, node -e/-p: code, not stdin */
		if (s->opt == OPT_SHORT && pg_code_letter(s, c))
			pg_decide(s, 0);
		return;
	case BASTION_PGK_BASE64:       /* -d anywhere in a bundle (-di, -id), --d... */
		if ((s->opt == OPT_SHORT && c == 'd') || (s->opt == OPT_LONG && s->pos == 2 && c == 'd'))
			pg_decide(s, 1);
		return;
	case BASTION_PGK_XXD:          /* xxd takes any -r... or --r... as -r */
		if ((s->opt == OPT_SHORT && s->pos == 1 && c == 'r') ||
		    (s->opt == OPT_LONG && s->pos == 2 && c == 'r'))
			pg_decide(s, 1);
		return;
	}
}

static __always_inline void pg_arg_end(struct pg_scratch *s)
{
	if (s->opt == OPT_LONG && s->pos == 2) {
		s->endopts = 1;            /* "--" */
		return;
	}
	if (s->kind == BASTION_PGK_SHELL) {
		if (s->opt == OPT_POS)     /* a script: stdin is read only if it names stdin, or
					    * -s made the rest the positional parameters */
			pg_decide(s, s->seen_s || pg_stdin_name(s, s->pos));
		else if (s->opt == OPT_SHORT && s->pos == 1 && s->head[0] == '-')
			s->endopts = 1;    /* "-": the end of the options */
		else if (s->opt == OPT_LONG && s->pos > 3 &&
			 ((s->head[2] == 'r' && s->head[3] == 'c') ||
			  (s->head[2] == 'i' && s->head[3] == 'n')))
			s->skipnext = 1;   /* --rcfile FILE, --init-file FILE */
	} else if (s->kind == BASTION_PGK_INTERP) {
		if (s->opt == OPT_POS)     /* a script (or "-" / /dev/stdin: stdin) */
			pg_decide(s, pg_stdin_name(s, s->pos));
		else if (s->opt == OPT_SHORT && s->pos == 1)
			pg_decide(s, 1);   /* "-": the program is stdin */
	} else if (s->kind == BASTION_PGK_OPENSSL && s->opt == OPT_SHORT && s->pos == 2 &&
		   s->head[1] == 'd') {
		pg_decide(s, 1);           /* "-d": base64 -d, enc -d, -a -d */
	}
}

static long pg_step(__u32 i, void *data)
{
	__u32 zero = 0;
	struct pg_scratch *s = bpf_map_lookup_elem(&pipegate_scratch, &zero);
	char c;

	if (!s || s->decided || i >= s->len)
		return 1;
	c = s->argv[i & (PG_ARGV - 1)];
	if (c == '\0') {
		if (s->argi > 0) {
			if (s->pos == 0) {
				s->argstart = i;
				pg_arg_start(s, 'x'); /* "": a positional argument */
			}
			pg_arg_end(s);
		}
		s->argi++;
		s->pos = 0;
		__builtin_memset(s->head, 0, sizeof(s->head));
		return 0;
	}
	if (s->argi == 0)
		return 0;                  /* argv[0] */
	if (s->pos < 4)
		s->head[s->pos & 3] = c;
	if (s->pos == 0) {
		s->argstart = i;
		pg_arg_start(s, c);
	}
	else
		pg_arg_char(s, c);
	s->pos++;
	return 0;
}

/* Does the new image of @p act as @kind says: a decoder decode, a shell read its
 * commands from stdin?  Unknown (argv unreadable, longer than PG_ARGV and undecided
 * in it) counts as yes: the kill needs the other end too. */
static __always_inline bool pg_acts(struct task_struct *p, __u32 kind,
				    struct bastion_inode_key *ek)
{
	__u32 zero = 0, len;
	struct pg_scratch *s;
	struct mm_struct *mm;
	unsigned long start, end;
	bool cut;

	if (kind == BASTION_PGK_UUDECODE)
		return true;
	s = bpf_map_lookup_elem(&pipegate_scratch, &zero);
	if (!s)
		return true;
	s->code = 0;
	if (kind == BASTION_PGK_INTERP) {
		__u64 *letters = bpf_map_lookup_elem(&pipegate_letters, ek);

		if (letters)
			s->code = *letters;
	}
	mm = BPF_CORE_READ(p, mm);
	start = BPF_CORE_READ(mm, arg_start);
	end = BPF_CORE_READ(mm, arg_end);
	if (end <= start)
		return true;
	cut = end - start > PG_ARGV;
	len = cut ? PG_ARGV : end - start;
	if (len > PG_ARGV)
		return true;
	if (bpf_probe_read_user(s->argv, len, (const void *)start))
		return true;
	s->len = len;
	s->kind = kind;
	s->argi = 0;
	s->pos = 0;
	__builtin_memset(s->head, 0, sizeof(s->head));
	s->opt = OPT_POS;
	s->skipnext = 0;
	s->endopts = 0;
	s->decided = 0;
	s->result = 0;
	s->seen_s = 0;
	bpf_loop(PG_ARGV, pg_step, NULL, 0);
	if (s->decided)
		return s->result;
	/* a shell with no script and no -c reads stdin; a decoder with no decode option
	 * does not decode (unless the option may be past the bytes read) */
	return pg_reader(kind) || cut;
}

/* The inode of the pipe (or fifo) on descriptor @fd of the current task. */
static __always_inline bool pg_pipe_key(int fd, struct bastion_inode_key *k)
{
	struct file *f = fd_file(fd);
	struct inode *ino;

	if (!f)
		return false;
	ino = BPF_CORE_READ(f, f_inode);
	if (!ino || ((BPF_CORE_READ(ino, i_mode) >> 12) & 0xf) != IFIFO_)
		return false;
	k->ino = BPF_CORE_READ(ino, i_ino);
	k->dev = BPF_CORE_READ(ino, i_sb, s_dev);
	k->_pad = 0;
	return true;
}

static __always_inline struct pg_pipe *pg_get(struct bastion_inode_key *k)
{
	struct pg_pipe *v = bpf_map_lookup_elem(&pipegate_pipes, k), zero = {};

	if (v)
		return v;
	bpf_map_update_elem(&pipegate_pipes, k, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&pipegate_pipes, k);
}

/* Kill the current task (dry run: only report) and report it. */
static __always_inline int pg_stop(__u32 rule, __u32 kind, struct bastion_inode_key *pipe,
				   __u32 other, __u32 hops, struct linux_binprm *bprm)
{
	__u32 zero = 0, *dry = bpf_map_lookup_elem(&pipegate_cfg, &zero);
	struct bastion_hips_event *e;
	struct path path;
	bool enforced = !(dry && *dry);
	long err = 0;

	if (enforced) {
		err = bpf_send_signal(SIGKILL_);
		enforced = !err; /* a failed send is reported with its error, not as a kill */
	}
	e = reserve_hips(BASTION_OP_EXEC, BASTION_ACT_KILL, rule, kind, BASTION_MECH_PIPE_KILL,
			 (__s32)err, 0, enforced);
	if (!e)
		return 0;
	e->ino = pipe->ino;
	e->dev = pipe->dev;
	e->target_pid = other;
	e->detail = hops;
	path = BPF_CORE_READ(bprm, file, f_path);
	if (path_to_str(&path, e->path))
		e->hdr.flags |= BASTION_F_TRUNC_PATH;
	SUBMIT(e);
	return 0;
}

/* The pipe @v (key @k) now carries a decoded payload (@old: its flags before the mark):
 * follow the relays recorded on it up to a stdin shell's pipe, marking each; the
 * current task completes the chain when one is read by a shell. */
static __always_inline int pg_follow(struct pg_pipe *v, struct bastion_inode_key *k, __u64 old,
				     __u32 rule, __u32 kind, struct linux_binprm *bprm)
{
	struct bastion_inode_key first = *k, nk;
	__u32 writer = v->writer, hops = v->hops, h;

	for (h = 0; h < PG_HOPS; h++) {
		if (old & PGF_READER)
			return pg_stop(rule, kind, &first, v->reader, hops, bprm);
		if (!(old & PGF_RELAY) || hops >= PG_HOPS)
			return 0;
		nk = v->relay_out;
		if (nk.ino == first.ino && nk.dev == first.dev)
			return 0;
		v = pg_get(&nk);
		if (!v)
			return 0;
		hops++;
		v->writer = writer;
		v->hops = hops;
		old = __sync_fetch_and_or(&v->flags, PGF_MARKED);
	}
	if (old & PGF_READER)
		return pg_stop(rule, kind, &first, v->reader, hops, bprm);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(pipegate_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct bastion_inode_key in = {}, out = {}, ek = {};
	__u32 tgid, kind = 0, *kp;
	struct pg_pipe *v;
	struct inode *ino;
	bool hin, hout;
	__u64 old;

	if (!in_scope())
		return 0;
	hin = pg_pipe_key(0, &in);
	hout = pg_pipe_key(1, &out);
	if (!hin && !hout)
		return 0;
	tgid = bpf_get_current_pid_tgid() >> 32;
	ino = BPF_CORE_READ(bprm, file, f_inode);
	ek.ino = BPF_CORE_READ(ino, i_ino);
	ek.dev = BPF_CORE_READ(ino, i_sb, s_dev);
	kp = bpf_map_lookup_elem(&pipegate_progs, &ek);
	if (kp)
		kind = *kp;

	if (pg_reader(kind) && hin && pg_acts(p, kind, &ek)) {
		/* a shell that runs what its stdin pipe carries */
		v = pg_get(&in);
		if (!v)
			return 0;
		v->reader = tgid;
		old = __sync_fetch_and_or(&v->flags, PGF_READER);
		if (old & PGF_MARKED)
			return pg_stop(BASTION_PGR_SHELL, kind, &in, v->writer, v->hops, bprm);
		return 0;
	}
	if (kind && !pg_reader(kind) && hout && pg_acts(p, kind, &ek)) {
		/* a decoder writing into a pipe */
		v = pg_get(&out);
		if (!v)
			return 0;
		v->writer = tgid;
		v->hops = 0;
		old = __sync_fetch_and_or(&v->flags, PGF_MARKED);
		return pg_follow(v, &out, old, BASTION_PGR_DECODER, kind, bprm);
	}
	if (!hin || !hout || (in.ino == out.ino && in.dev == out.dev))
		return 0;
	/* a relay: its stdin pipe records where it writes (before the mark is looked at:
	 * a decoder marking that pipe now sees the relay, or this sees the mark) */
	v = pg_get(&in);
	if (!v)
		return 0;
	v->relay_out = out;
	old = __sync_fetch_and_or(&v->flags, PGF_RELAY);
	if (!(old & PGF_MARKED) || v->hops >= PG_HOPS)
		return 0;
	{
		__u32 writer = v->writer, hops = v->hops + 1;

		v = pg_get(&out);
		if (!v)
			return 0;
		v->writer = writer;
		v->hops = hops;
		old = __sync_fetch_and_or(&v->flags, PGF_MARKED);
		return pg_follow(v, &out, old, BASTION_PGR_RELAY, 0, bprm);
	}
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(pipegate_exit, struct task_struct *p)
{
	struct bastion_inode_key in = {};
	struct pg_pipe *v;
	__u64 id = bpf_get_current_pid_tgid();

	if ((__u32)id != id >> 32 || !in_scope())
		return 0;
	if (!pg_pipe_key(0, &in))
		return 0;
	v = bpf_map_lookup_elem(&pipegate_pipes, &in);
	if (v && (v->flags & PGF_READER) && v->reader == (__u32)id)
		__sync_fetch_and_and(&v->flags, ~PGF_READER); /* its shell is gone */
	return 0;
}
