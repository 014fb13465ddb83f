/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The kernel's pid for a number the caller gave in its own pid namespace
 * (s15-svc).  kill(2), tkill(2) and tgkill(2) name their target as the caller's
 * namespace numbers it: a process in a container that sends SIGTERM to "its"
 * pid 2 names some other process than the host's pid 2.  The compat sensor
 * reports every pid as the initial namespace numbers it, so the number is
 * translated here the way find_pid_ns() does: the caller's namespace is
 * thread_pid->numbers[level].ns, its pids live in the namespace's idr, a
 * radix tree (xarray) of 64-way nodes walked from the root to the struct pid,
 * whose numbers[0].nr is the pid in the initial namespace.
 *
 * Cost: a caller in the initial namespace (level 0) pays three reads and no
 * walk; a caller in a child namespace pays the walk (at most 4 levels for
 * pid_max <= 2^22).  Signals the kernel generates itself never reach these
 * syscall tracepoints. */
#ifndef BASTION_PIDNS_H
#define BASTION_PIDNS_H

#include "common.h"

#define PIDNS_XA_SHIFT 6
#define PIDNS_XA_MASK ((1UL << PIDNS_XA_SHIFT) - 1)
#define PIDNS_MAX_DEPTH 6       /* 64^6 > any pid_max (PID_MAX_LIMIT is 2^22) */
#define PIDNS_MAX_LEVEL 32      /* MAX_PID_NS_LEVEL */
#define PIDNS_NOT_FOUND (-0x7fffffff)

/* an internal xarray entry that points at a node (xa_is_node) */
static __always_inline bool pidns_is_node(unsigned long e)
{
	return (e & 3) == 2 && e > 4096;
}

/* @nr (> 0) as the current task's pid namespace numbers it, in the initial
 * namespace; the number itself when the caller is in the initial namespace;
 * PIDNS_NOT_FOUND when the caller's namespace has no such pid (the syscall
 * fails with ESRCH). */
static __always_inline __s32 pidns_global(__s32 nr)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	struct pid *p = BPF_CORE_READ(t, thread_pid);
	struct pid_namespace *ns;
	unsigned long e, idx;
	unsigned int lvl;
	struct upid up = {};
	struct xa_node *n;
	unsigned char shift;
	int i;

	if (!p || nr <= 0)
		return nr;
	lvl = BPF_CORE_READ(p, level);
	if (lvl == 0)
		return nr;
	if (lvl > PIDNS_MAX_LEVEL)
		return PIDNS_NOT_FOUND;
	if (bpf_core_read(&up, sizeof(up), &p->numbers[lvl]) || !up.ns)
		return PIDNS_NOT_FOUND;
	ns = up.ns;
	idx = (unsigned long)(nr - (__s32)BPF_CORE_READ(ns, idr.idr_base));
	e = (unsigned long)BPF_CORE_READ(ns, idr.idr_rt.xa_head);
	if (!pidns_is_node(e)) {
		if (idx != 0) /* a root that is not a node holds index 0 only */
			return PIDNS_NOT_FOUND;
	} else {
		n = (struct xa_node *)(e - 2);
		shift = BPF_CORE_READ(n, shift);
		if (shift >= 64 - PIDNS_XA_SHIFT || (idx >> shift) > PIDNS_XA_MASK)
			return PIDNS_NOT_FOUND; /* past the tree's largest index */
		for (i = 0; i < PIDNS_MAX_DEPTH; i++) {
			n = (struct xa_node *)(e - 2);
			shift = BPF_CORE_READ(n, shift);
			if (shift >= 64)
				return PIDNS_NOT_FOUND;
			if (bpf_core_read(&e, sizeof(e), &n->slots[(idx >> shift) & PIDNS_XA_MASK]))
				return PIDNS_NOT_FOUND;
			if (shift == 0 || !pidns_is_node(e))
				break;
		}
		if (pidns_is_node(e))
			return PIDNS_NOT_FOUND;
	}
	if (!e || (e & 3) == 2) /* empty, or a retry/internal entry */
		return PIDNS_NOT_FOUND;
	p = (struct pid *)e;
	if (bpf_core_read(&up, sizeof(up), &p->numbers[0]))
		return PIDNS_NOT_FOUND;
	return up.nr;
}

/* kill(2)'s pid argument: a pid (> 0), a process group (< -1, translated the
 * same way), or 0 / -1 (the caller's group, every process it may signal). */
static __always_inline __s32 pidns_global_kill_arg(__s32 nr)
{
	__s32 g;

	if (nr >= 0)
		return pidns_global(nr);
	if (nr == -1 || nr == -0x7fffffff - 1)
		return nr;
	g = pidns_global(-nr);
	return g == PIDNS_NOT_FOUND ? g : -g;
}

#endif /* BASTION_PIDNS_H */
