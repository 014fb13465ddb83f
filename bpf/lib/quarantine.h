/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Quarantine: the `quarantined` map (tgid -> bastion_quarantine_val), the
 * scope (cgroup, dead-man deadline, our own tgid), fork propagation, exit
 * cleanup and the enforcement record.  Used by quarantine.bpf.c (compat:
 * SIGKILL at the next exec / write-open / connect) and lsm_quarantine.bpf.c
 * (lsm: -EPERM in the hook). */
#ifndef BASTION_QUARANTINE_H
#define BASTION_QUARANTINE_H

#include "common.h"

#define QUAR_TICK_NS 10000000ULL  /* /proc start times have USER_HZ (100 Hz) resolution */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct bastion_quarantine_val);
} quarantined SEC(".maps");

static __always_inline bool same_start(__u64 have, __u64 want)
{
	__u64 d = have > want ? have - want : want - have;

	return !want || d < QUAR_TICK_NS;
}

/* The current process's quarantine entry, if it is marked (and the entry
 * is not left over from a previous holder of the pid). */
static __always_inline struct bastion_quarantine_val *quar_current(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct bastion_quarantine_val *v = bpf_map_lookup_elem(&quarantined, &tgid);

	if (!v)
		return NULL;
	if (!same_start(BPF_CORE_READ(task, group_leader, start_boottime), v->start_ns))
		return NULL;
	return v;
}

static __always_inline void quar_report(__u32 op, __u32 action, __u32 mech, __s32 ret,
					__u32 incident, const char *upath)
{
	struct bastion_hips_event *e = reserve_hips(op, action, incident, 0, mech, ret, 0, 1);

	if (!e)
		return;
	if (upath)
		bpf_probe_read_user_str(e->path, sizeof(e->path), upath);
	SUBMIT(e);
}

/* Fork: a quarantined parent's child is quarantined too (threads share the
 * tgid's entry).  Exit of the last thread removes the entry. */
static __always_inline void quar_fork(struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 pid = BPF_CORE_READ(child, pid), tgid = BPF_CORE_READ(child, tgid);
	struct bastion_quarantine_val *v, nv = {};

	if (pid != tgid)
		return;
	v = bpf_map_lookup_elem(&quarantined, &ptgid);
	if (!v || !same_start(BPF_CORE_READ(parent, group_leader, start_boottime), v->start_ns))
		return;
	nv.start_ns = BPF_CORE_READ(child, start_boottime);
	nv.incident = v->incident;
	bpf_map_update_elem(&quarantined, &tgid, &nv, BPF_ANY);
}

static __always_inline void quar_exit(struct task_struct *p)
{
	__u32 tgid = BPF_CORE_READ(p, tgid);
	struct bastion_quarantine_val *v;

	if (BPF_CORE_READ(p, signal, live.counter) != 0)
		return;
	v = bpf_map_lookup_elem(&quarantined, &tgid);
	if (v && same_start(BPF_CORE_READ(p, group_leader, start_boottime), v->start_ns))
		bpf_map_delete_elem(&quarantined, &tgid);
}

/* The fork and exit programs of both quarantine objects. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(quar_on_fork, struct task_struct *parent, struct task_struct *child)
{
	if (in_scope())
		quar_fork(parent, child);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(quar_on_exit, struct task_struct *p)
{
	quar_exit(p);
	return 0;
}

#endif /* BASTION_QUARANTINE_H */
