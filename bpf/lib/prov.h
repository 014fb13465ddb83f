/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Provenance in the kernel (issue 15): the reasons a live process has an
 * untrusted provenance, set where the kernel can tell without a race (the
 * exec of a binary or a script under a temp dir the policy names, a memfd
 * or unlinked executable), inherited at fork, dropped at exit.  The map
 * layout and its rules are in include/bastion.h ("provenance").  Both event
 * sensors (tp_events.bpf.c, lsm_events.bpf.c) call these from their
 * sched_process_* programs; the decision paths (the compat tier's fanotify
 * gate, the lsm tier's file_open) read the map. */
#ifndef BASTION_PROV_H
#define BASTION_PROV_H

#include "path.h"
#include "prov_map.h"

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 64);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct bastion_prov_prefix);
	__type(value, __u32);
} prov_dirs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct bastion_inode_key);
	__type(value, struct bastion_prov_interp);
} prov_interp SEC(".maps");

/* The same temp dirs by inode (bastion_inode_key of the directory as stat() sees it:
 * a tmpfs mounted there is its root): a file's dentry chain is walked up to them, so a
 * path too deep or too long to name in full is still placed. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct bastion_inode_key);
	__type(value, __u32);
} prov_dir_inodes SEC(".maps");

#define PROV_WALK_MAX 256

struct prov_walk {
	struct dentry *dentry;
	struct vfsmount *vfsmnt;
	struct mount *mnt;
	bool hit;
};

/* One dentry up (bpf_loop callback); stops on a prov_dir_inodes hit or the root. */
static long prov_walk_step(__u32 i, void *data)
{
	struct prov_walk *c = data;
	struct dentry *d = c->dentry, *parent, *mnt_root;
	struct vfsmount *vfsmnt = c->vfsmnt;
	struct mount *mnt = c->mnt, *mnt_parent;
	struct bastion_inode_key k = {};
	struct inode *ino = BPF_CORE_READ(d, d_inode);

	if (ino) {
		k.ino = BPF_CORE_READ(ino, i_ino);
		k.dev = BPF_CORE_READ(ino, i_sb, s_dev);
		if (bpf_map_lookup_elem(&prov_dir_inodes, &k)) {
			c->hit = true;
			return 1;
		}
	}
	mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
	parent = BPF_CORE_READ(d, d_parent);
	if (d == mnt_root || d == parent) {
		if (d != mnt_root)
			return 1;
		mnt_parent = BPF_CORE_READ(mnt, mnt_parent);
		if (mnt == mnt_parent)
			return 1;
		c->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		c->mnt = mnt_parent;
		c->vfsmnt = &mnt_parent->mnt;
		return 0;
	}
	c->dentry = parent;
	return 0;
}

/* Is the file at @p (its dentry chain, across mounts) under one of prov_dir_inodes? */
static __always_inline bool prov_file_under_dir(const struct path *p)
{
	struct prov_walk c = {};

	c.dentry = BPF_CORE_READ(p, dentry);
	c.vfsmnt = BPF_CORE_READ(p, mnt);
	c.mnt = container_of(c.vfsmnt, struct mount, mnt);
	bpf_loop(PROV_WALK_MAX, prov_walk_step, &c, 0);
	return c.hit;
}


#define PROV_ARGV 256

/* The argv scan's state.  It lives in the map value, not on the stack: a verifier
 * before 6.7 (Debian's 6.1) checks a bpf_loop callback once, from the caller's
 * stack as it is before the loop, and carries that one pass's result back; from
 * constants on the stack (argi 0, found -1) it proved found stays -1 and
 * hard-wired the script test away, so no interpreter's script was ever placed.
 * Loads from a map value are unknown to every verifier: nothing is folded. */
struct prov_argv_ctx {
	__u64 code;
	__u32 len;
	int argi, optlen, found;
	bool at_start, opt;
};

struct prov_scratch {
	struct bastion_prov_prefix k;
	char path[BASTION_PATH_LEN];
	char argv[PROV_ARGV + BASTION_PROV_PREFIX_LEN];
	struct prov_argv_ctx scan;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct prov_scratch);
} prov_scratch SEC(".maps");

/* Is the absolute path at @src (kernel memory) under one of prov_dirs? */
static __always_inline bool prov_under_dir(struct prov_scratch *s, const char *src)
{
	if (bpf_probe_read_kernel(s->k.path, sizeof(s->k.path), src))
		return false;
	s->k.prefixlen = 8 * BASTION_PROV_PREFIX_LEN;
	return bpf_map_lookup_elem(&prov_dirs, &s->k) != NULL;
}

/* A script path as the kernel or an interpreter got it: absolute, or
 * relative to the cwd (then the cwd decides: ../ out of it is not followed). */
static __always_inline bool prov_script_under_dir(struct prov_scratch *s, const char *src)
{
	char c = 0;

	bpf_probe_read_kernel(&c, 1, src);
	if (c == '/')
		return prov_under_dir(s, src);
	if (cwd_to_str(s->path))
		return false;
	return prov_under_dir(s, s->path);
}

static __always_inline __u64 prov_letter(char c)
{
	if (c >= 'a' && c <= 'z')
		return 1ULL << (c - 'a');
	if (c >= 'A' && c <= 'Z')
		return 1ULL << (26 + c - 'A');
	return 0;
}

/* One byte of the argv scan (bpf_loop callback: verified once, not unrolled);
 * its state is s->scan (see struct prov_argv_ctx). */
static long prov_argv_step(__u32 i, void *data)
{
	__u32 zero = 0;
	struct prov_scratch *s = bpf_map_lookup_elem(&prov_scratch, &zero);
	struct prov_argv_ctx *c;
	char ch = 0;

	if (!s)
		return 1;
	c = &s->scan;
	if (i >= c->len || i >= PROV_ARGV)
		return 1;
	/* a helper read: the compiler drops a mask the range check already implies */
	if (bpf_probe_read_kernel(&ch, 1, &s->argv[i]))
		return 1;
	if (c->argi == 0) {
		if (ch == '\0') {
			c->argi = 1;
			c->at_start = true;
		}
		return 0;
	}
	if (c->at_start) {
		c->at_start = false;
		if (ch == '\0')
			return 1;
		if (ch == '-') {
			c->opt = true;
			c->optlen = 1;
			return 0;
		}
		c->found = i;
		return 1;
	}
	if (ch == '\0') {
		if (c->opt && c->optlen == 1)
			return 1; /* "-": the script is stdin */
		c->argi++;
		c->at_start = true;
		c->opt = false;
		return 0;
	}
	if (c->opt) {
		c->optlen++;
		if (c->code & prov_letter(ch))
			return 1; /* code on the command line */
	}
	return 0;
}

/* The index in s->argv of the script argument of an interpreter (its first
 * argument that is no option), or -1: code on the command line (an option
 * letter of @code), stdin ("-"), or none within the bytes read. */
static __always_inline int prov_script_arg(struct prov_scratch *s, __u32 len, __u64 code)
{
	struct prov_argv_ctx *c = &s->scan;

	c->code = code;
	c->len = len;
	c->argi = 0;
	c->optlen = 0;
	c->found = -1;
	c->at_start = false;
	c->opt = false;
	bpf_loop(PROV_ARGV, prov_argv_step, NULL, 0);
	return c->found;
}

static __always_inline void prov_count(__u32 k)
{
	__u64 *v = bpf_map_lookup_elem(&prov_errors, &k);

	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline bool prov_overflowed(void)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&prov_errors, &k);

	return v && *v;
}

/* `prov` could not take @tgid's entry: count it and keep @tgid as lost. */
static __always_inline void prov_lose(__u32 tgid, __u64 start_ns)
{
	prov_count(0);
	if (bpf_map_update_elem(&prov_lost, &tgid, &start_ns, BPF_ANY))
		prov_count(1);
}

/* A leader killed by another thread's exec (de_thread) hands its entry to that
 * thread here, tgid -> entry, taken at sched_process_exec: the storage goes with
 * the old leader's task_struct, and the thread's own copy (prov_fork) lacks what
 * user space added since.  An entry is taken only by the process it came from:
 * its start_ns is the process's start, and de_thread gives the exec'ing thread
 * the old leader's start_boottime.  One left behind (an exec that fails after the
 * point of no return: no sched_process_exec) goes at the process's exit, and a
 * later holder of the pid would not match it anyway.  One that cannot be stored
 * (1024 de_threads in flight) is counted in prov_handoff_miss, not lost: the
 * thread's own copy holds every reason but user space's late ones, and a full
 * map must not put the host in untracked mode. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct bastion_prov_val);
} prov_handoff SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} prov_handoff_miss SEC(".maps");

/* one USER_HZ tick (100 Hz on x86): /proc/PID/stat's start time, user space's
 * start_ns of an entry it made (procstat.TICK_NS) */
#define PROV_START_SLACK_NS 10000000ull

/* Copy @from's reasons into @to's own storage (made when missing); false: no memory. */
static __always_inline bool prov_copy(struct bastion_prov_val *from, struct task_struct *to)
{
	struct bastion_prov_val *c = prov_get_task(to, true);

	if (!c)
		return false;
	if (!c->start_ns) {
		c->start_ns = from->start_ns;
		c->origin_tgid = from->origin_tgid;
	}
	c->reasons |= from->reasons;
	return true;
}

/* sched_process_exec: add what the kernel can tell about the new image.  @exe_path:
 * the executable's path when the caller already built it (the exec record's, @exe_cut
 * when cut), or NULL. */
static __always_inline void prov_exec(struct task_struct *p, struct linux_binprm *bprm,
				      const char *exe_path, bool exe_cut)
{
	__u32 zero = 0, tgid = BPF_CORE_READ(p, tgid), bits = 0;
	struct prov_scratch *s = bpf_map_lookup_elem(&prov_scratch, &zero);
	struct bastion_prov_val *cur, *ho;
	struct bastion_prov_interp *interp;
	struct bastion_inode_key ik = {};
	struct file *exe = BPF_CORE_READ(bprm, file);
	struct path fpath;
	struct mm_struct *mm;
	unsigned long arg_start, arg_end, len;
	const char *fname = BPF_CORE_READ(bprm, filename);
	int fdn, at;

	if (!s)
		return;
	if (BPF_CORE_READ(exe, f_inode, __i_nlink) == 0)
		bits |= BASTION_PROV_FILELESS;
	fpath = BPF_CORE_READ(exe, f_path);
	if (!exe_path) {
		exe_cut = path_to_str(&fpath, s->path);
		exe_path = s->path;
	}
	/* by its path; a path too long to name in full, by the dentry walk to the dirs' inodes */
	if (exe_cut ? prov_file_under_dir(&fpath) : prov_under_dir(s, exe_path))
		bits |= BASTION_PROV_TMP_BINARY;

	/* a #! (or binfmt_misc) script: the file the kernel opened first */
	if (BPF_CORE_READ(bprm, interp) != fname) {
		fdn = devfd_num(fname);
		if (fdn >= 0) {
			struct file *sf = fd_file(fdn);

			if (sf) {
				if (BPF_CORE_READ(sf, f_inode, __i_nlink) == 0)
					bits |= BASTION_PROV_FILELESS;
				fpath = BPF_CORE_READ(sf, f_path);
				if (path_to_str(&fpath, s->path) ? prov_file_under_dir(&fpath)
								 : prov_under_dir(s, s->path))
					bits |= BASTION_PROV_TMP_SCRIPT;
			}
		} else if (bpf_probe_read_kernel_str(s->argv, BASTION_PATH_LEN, fname) > 0 &&
			   prov_script_under_dir(s, s->argv)) {
			bits |= BASTION_PROV_TMP_SCRIPT;
		}
	}

	/* a shell or interpreter the policy names (by inode): its script argument */
	ik.ino = BPF_CORE_READ(exe, f_inode, i_ino);
	ik.dev = BPF_CORE_READ(exe, f_inode, i_sb, s_dev);
	interp = bpf_map_lookup_elem(&prov_interp, &ik);
	if (interp && !(bits & BASTION_PROV_TMP_SCRIPT)) {
		__u64 code = interp->code_letters;

		mm = BPF_CORE_READ(p, mm);
		arg_start = BPF_CORE_READ(mm, arg_start);
		arg_end = BPF_CORE_READ(mm, arg_end);
		len = arg_end - arg_start;
		if (len > PROV_ARGV)
			len = PROV_ARGV;
		if (len && !bpf_probe_read_user(s->argv, len & (PROV_ARGV * 2 - 1),
						(const void *)arg_start)) {
			at = prov_script_arg(s, len, code);
			if (at >= 0 && prov_script_under_dir(s, &s->argv[at & (PROV_ARGV - 1)]))
				bits |= BASTION_PROV_TMP_SCRIPT;
		}
	}

	/* a thread's exec: the old leader handed its entry over at its exit (prov_exit) */
	ho = bpf_map_lookup_elem(&prov_handoff, &tgid);
	if (ho) {
		/* this process's (the old leader's start time), not a stale one's; an
		 * entry user space made carries /proc's start, cut to a USER_HZ tick */
		__u64 sb = BPF_CORE_READ(p, group_leader, start_boottime), hs = ho->start_ns;

		if ((sb > hs ? sb - hs : hs - sb) < PROV_START_SLACK_NS) {
			cur = prov_get(p, true);
			if (!cur || !prov_copy(ho, p))
				prov_lose(tgid, ho->start_ns);
		}
		bpf_map_delete_elem(&prov_handoff, &tgid);
	}
	if (!bits)
		return; /* an inherited entry stays as it is: the tree keeps its taint */
	/* after de_thread @p is the leader: its own storage (a thread that exec'd took
	 * its copy with it, prov_fork/prov_exit) is the process's entry */
	cur = prov_get(p, true);
	if (!cur) {
		prov_lose(tgid, BPF_CORE_READ(p, group_leader, start_boottime));
		return;
	}
	if (!cur->start_ns) {   /* a new entry (zeroed): this process gained the first reason */
		cur->start_ns = BPF_CORE_READ(p, group_leader, start_boottime);
		cur->origin_tgid = tgid;
	}
	cur->reasons |= bits;   /* the exec'ing process is alone: no other kernel writer */
}

/* sched_process_fork: the child gets the creator's reasons, or no entry.  A new
 * thread gets a copy in its own storage: it is the entry it takes with it if it
 * execs (de_thread makes it the leader; the old leader's storage goes with the old
 * leader's task_struct). */
static __always_inline void prov_fork(struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = BPF_CORE_READ(parent, tgid), ctgid = BPF_CORE_READ(child, tgid);
	struct bastion_prov_val val, *cur, *c;

	cur = prov_get(parent, false);
	if (cur && !cur->reasons)
		cur = NULL; /* an empty entry a gate made (prov_actor_settle): not inherited */
	if (BPF_CORE_READ(child, pid) != ctgid) {
		if (cur && !prov_copy(cur, child))
			prov_lose(ctgid, cur->start_ns);
		return;
	}
	if (!cur) {
		if (prov_overflowed()) {
			if (bpf_map_lookup_elem(&prov_lost, &ptgid))
				prov_lose(ctgid, BPF_CORE_READ(child, start_boottime));
			else
				bpf_map_delete_elem(&prov_lost, &ctgid);
		}
		return;
	}
	val = *cur;
	val.start_ns = BPF_CORE_READ(child, start_boottime);
	c = prov_get(child, true);
	if (!c) {
		prov_lose(ctgid, val.start_ns);
		return;
	}
	*c = val;
}

/* sched_process_exit: the storage goes with the task_struct (nothing to delete).
 * The leader killed by another thread's exec (de_thread: signal->group_exec_task)
 * hands its entry over (prov_handoff): reasons user space added after the exec'ing
 * thread's copy was made go with it. */
static __always_inline void prov_exit(struct task_struct *p)
{
	__u32 tgid = BPF_CORE_READ(p, tgid);
	struct bastion_prov_val *cur;

	if (BPF_CORE_READ(p, signal, live.counter) != 0) {
		if (!BPF_CORE_READ(p, signal, group_exec_task) || p->group_leader != p)
			return;
		cur = prov_get_task(p, false);
		if (cur && bpf_map_update_elem(&prov_handoff, &tgid, cur, BPF_ANY)) {
			__u32 k = 0;
			__u64 *miss = bpf_map_lookup_elem(&prov_handoff_miss, &k);

			if (miss)
				__sync_fetch_and_add(miss, 1);
		}
		return;
	}
	/* the process is gone: a handoff its failed exec left behind goes with it */
	if (bpf_map_lookup_elem(&prov_handoff, &tgid))
		bpf_map_delete_elem(&prov_handoff, &tgid);
	if (prov_overflowed())
		bpf_map_delete_elem(&prov_lost, &tgid);
}

#endif /* BASTION_PROV_H */
