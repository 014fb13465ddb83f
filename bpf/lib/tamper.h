/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Tamper protection, shared by lsm_tamper.bpf.c (lsm tier: refuse in the
 * hook) and tamper_compat.bpf.c (compat tier: detect in tracepoints, kill
 * the sender).  Maps and layouts: the tamper section of bastion.h.
 *
 * Identity: a task is "ours" (the agent or its guardian) only when its tgid
 * is in tamper_idents AND its group leader's start time (USER_HZ ticks, the
 * resolution of /proc/PID/stat) AND its executable inode match the entry.
 * A process that reuses the pid of a dead agent is neither exempt nor
 * protected.
 *
 * Scope (.rodata, set before load; in_scope() of common.h): cfg_cgroup_id
 * (0 = every attacker; tests set their cgroup), cfg_deadline_ns
 * (CLOCK_BOOTTIME; 0 = none; past it nothing is refused or killed: the
 * dead-man of every test).
 *
 * Every map below is only read by the programs: BPF_F_RDONLY_PROG, so no
 * BPF program (ours or one loaded by root) can write them through helpers;
 * user space fills them with bpf() commands, which the lsm object refuses to
 * all but our identities. */
#ifndef BASTION_TAMPER_H
#define BASTION_TAMPER_H

#include "path.h"

#define EPERM_ 1
#define SIGKILL_ 9
#define TICK_NS_ 10000000ULL    /* NSEC_PER_SEC / USER_HZ (100 on x86-64 and arm64) */
#define TAMPER_WALK 32          /* ancestors looked at (one filesystem) */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__uint(map_flags, BPF_F_RDONLY_PROG);
	__type(key, __u32);
	__type(value, struct bastion_tamper_ident);
} tamper_idents SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_RDONLY_PROG);
	__type(key, struct bastion_inode_key);
	__type(value, struct bastion_tamper_obj);
} tamper_objs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__uint(map_flags, BPF_F_RDONLY_PROG);
	__type(key, __u32);
	__type(value, __u32);
} tamper_sbs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} tamper_tids SEC(".maps");

/* Kernel ids of our maps and links: the pinned ones and every map a program
 * of ours uses (.bss, scratch, task storage), the agent's objects included
 * (~100 maps, ~150 links per agent); user space takes out ids of objects gone
 * when a set is full (a reload makes new ids). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2048);
	__uint(map_flags, BPF_F_RDONLY_PROG);
	__type(key, __u32);
	__type(value, __u32);
} tamper_map_ids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2048);
	__uint(map_flags, BPF_F_RDONLY_PROG);
	__type(key, __u32);
	__type(value, __u32);
} tamper_link_ids SEC(".maps");

/* Is task @t (any thread) one of ours?  Exact identity, not tgid alone. */
static __always_inline bool task_is_ours(struct task_struct *t)
{
	__u32 tgid = BPF_CORE_READ(t, tgid);
	struct bastion_tamper_ident *id = bpf_map_lookup_elem(&tamper_idents, &tgid);
	struct file *exe;

	if (!id)
		return false;
	if (BPF_CORE_READ(t, group_leader, start_boottime) / TICK_NS_ != id->start_ticks)
		return false;
	exe = BPF_CORE_READ(t, mm, exe_file);
	if (!exe)
		return false;
	return BPF_CORE_READ(exe, f_inode, i_ino) == id->exe_ino &&
	       BPF_CORE_READ(exe, f_inode, i_sb, s_dev) == id->exe_dev;
}

/* Is the current task an attacker we act against: in scope, not ours? */
static __always_inline bool current_in_scope(void)
{
	return in_scope() && !task_is_ours((struct task_struct *)bpf_get_current_task());
}

/* prctl(PR_SET_MM, PR_SET_MM_EXE_FILE | PR_SET_MM_MAP): the only way a process
 * changes mm->exe_file after exec, the executable identity every exe-keyed check
 * of Bastion reads (HIPS exe: subjects, the BPF loader allowlist, the exec
 * budget, the services gate, trusted installers, our own identities).
 * PR_SET_MM_EXE_FILE needs CAP_SYS_RESOURCE (init namespace); PR_SET_MM_MAP with
 * an exe_fd needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN in the caller's user
 * namespace, which anybody gets from unshare(CLONE_NEWUSER); both need the old
 * image unmapped (s27 review 2).  Only
 * checkpoint/restore (CRIU) does this legitimately; PR_SET_MM_MAP_SIZE is a query
 * and the other PR_SET_MM fields (argv, env, brk) are not an identity. */
#define PR_SET_MM_ 35
#define PR_SET_MM_EXE_FILE_ 13
#define PR_SET_MM_MAP_ 14

/* The kernel passes arg2 on as prctl_set_mm's int opt: only its low 32 bits
 * count, so (1 << 32) | PR_SET_MM_MAP is PR_SET_MM_MAP (s28 review). */
static __always_inline bool changes_exe_identity(int option, unsigned long arg2)
{
	int sub = (int)arg2;

	return option == PR_SET_MM_ && (sub == PR_SET_MM_EXE_FILE_ || sub == PR_SET_MM_MAP_);
}

/* Does the struct prctl_mm_map at user address @map keep the executable (its
 * exe_fd reads -1, as liblxc's setproctitle and criu check pass it)?  User
 * memory: another thread or process may change it after this read, so callers
 * let it decide only what cannot be abused (a report; a single-threaded caller
 * whose exit is checked). */
static __always_inline bool mm_map_keeps_exe(unsigned long map)
{
	__u32 exe_fd = 0;

	return !bpf_probe_read_user(&exe_fd, sizeof(exe_fd),
				    (void *)(map + __builtin_offsetof(struct prctl_mm_map, exe_fd))) &&
	       exe_fd == (__u32)-1;
}

struct tamper_hit {
	__u64 ino;
	__u32 dev;
	__u32 id;
};

struct tw_ctx {
	struct dentry *d;
	__u32 self_mask;
	__u32 found;
	struct tamper_hit hit;
};

static long tw_step(__u32 i, void *data)
{
	struct tw_ctx *c = data;
	struct dentry *d = c->d, *parent;
	struct inode *inode = BPF_CORE_READ(d, d_inode);

	if (inode) {
		struct bastion_inode_key key = {};
		struct bastion_tamper_obj *o;

		key.ino = BPF_CORE_READ(inode, i_ino);
		key.dev = BPF_CORE_READ(inode, i_sb, s_dev);
		o = bpf_map_lookup_elem(&tamper_objs, &key);
		if (o && (o->flags & (i == 0 ? c->self_mask : BASTION_TOBJ_SUBTREE))) {
			c->found = 1;
			c->hit.ino = key.ino;
			c->hit.dev = key.dev;
			c->hit.id = o->id;
			return 1;
		}
	}
	parent = BPF_CORE_READ(d, d_parent);
	if (!parent || parent == d)
		return 1;
	c->d = parent;
	return 0;
}

/* Is @dentry protected: itself (flags in @self_mask) or under a protected
 * subtree?  The walk stays on the dentry's filesystem. */
static __always_inline bool dentry_protected(struct dentry *dentry, __u32 self_mask,
					     struct tamper_hit *hit)
{
	struct tw_ctx c = {};

	if (!dentry)
		return false;
	c.d = dentry;
	c.self_mask = self_mask;
	bpf_loop(TAMPER_WALK, tw_step, &c, 0);
	if (c.found)
		*hit = c.hit;
	return c.found;
}

static __always_inline void current_exe_str(char *out)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	struct file *exe = BPF_CORE_READ(t, mm, exe_file);
	struct path p;

	out[0] = '\0';
	if (!exe)
		return;
	p = BPF_CORE_READ(exe, f_path);
	path_to_str(&p, out);
}

/* Report one decision against the current task.  @dentry/@mnt name the
 * object (mnt may be NULL: path relative to its filesystem root). */
static __always_inline void tamper_report(__u32 op, __u32 verdict, __s32 ret, __s32 target,
					  __s64 arg, const struct tamper_hit *hit,
					  struct dentry *dentry, struct vfsmount *mnt)
{
	struct bastion_tamper_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count_drop(BASTION_DROP_SLOT_TAMPER);
		return;
	}
	fill_hdr(&e->hdr, BASTION_EV_TAMPER, sizeof(*e));
	e->op = op;
	e->verdict = verdict;
	e->ret = ret;
	e->target_pid = target;
	e->arg = arg;
	e->ino = hit ? hit->ino : 0;
	e->dev = hit ? hit->dev : 0;
	e->obj_id = hit ? hit->id : 0;
	current_exe_str(e->exe);
	e->path[0] = '\0';
	if (dentry) {
		struct path p = {};

		p.dentry = dentry;
		p.mnt = mnt;
		if (path_to_str(&p, e->path))
			e->hdr.flags |= BASTION_F_TRUNC_PATH;
	}
	/* tamper attempts are rare and critical: wake the reader */
	bpf_ringbuf_submit(e, 0);
}

/* Signals that stop or end a process; the rest (0, SIGCHLD, SIGCONT,
 * SIGURG, SIGWINCH) may pass. */
static __always_inline bool harmful_signal(int sig)
{
	return !(sig == 0 || sig == 17 || sig == 18 || sig == 23 || sig == 28);
}

/* Is @pid (a tgid or a thread id, as a syscall names a target) one of ours? */
static __always_inline bool pid_is_ours(__u32 pid)
{
	__u32 *tgid;

	if (!pid)
		return false;
	if (bpf_map_lookup_elem(&tamper_idents, &pid))
		return true;
	tgid = bpf_map_lookup_elem(&tamper_tids, &pid);
	return tgid && bpf_map_lookup_elem(&tamper_idents, tgid);
}

/* Ours moved out of the cgroup the guardian runs them in (to cgroup.kill or
 * cgroup.freeze another cgroup, where our control files protect nothing):
 * no LSM hook sees a migration, so on both tiers the mover is SIGKILLed
 * before it can write the other cgroup's cgroup.kill, and the guardian
 * moves them back.  Shared by both objects (tp_btf/cgroup_attach_task). */
static __always_inline int tamper_cgroup_attach(struct task_struct *task)
{
	struct task_struct *me = (struct task_struct *)bpf_get_current_task();

	if (!task_is_ours(task) || !current_in_scope())
		return 0;
	if (BPF_CORE_READ(me, signal, shared_pending.signal.sig[0]) & (1UL << (SIGKILL_ - 1)))
		return 0;
	bpf_send_signal(SIGKILL_);
	tamper_report(BASTION_TAMPER_CGROUP_MOVE, BASTION_TV_KILLED, 0, BPF_CORE_READ(task, tgid), 0,
		      NULL, NULL, NULL);
	return 0;
}

#endif /* BASTION_TAMPER_H */
