/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The kernel provenance state `prov` (include/bastion.h, "provenance"): one
 * definition for the sensors that keep it (prov.h) and the objects that
 * decide on it (lsm_provgate.bpf.c), with its failure maps `prov_errors` and
 * `prov_lost`.  Those get the sensor's maps at load
 * (ObjectSpec.reuse_maps: bpf_map__reuse_fd), so the definitions must be
 * one: this one.
 *
 * `prov` is task-local storage (ABI 2.5): the entry lives in the thread-group
 * leader's task_struct, so it has no capacity to fill, is freed with the task
 * and cannot be met by a later holder of the same pid.  Every reader and
 * writer goes through prov_get() below (the thread-group leader, not the
 * thread).
 *
 * Kernels: bpf_task_storage_get is in bpf_tracing_func_proto (tp_btf, raw_tp)
 * and in the LSM programs' protos since 5.11.  On 6.1 every call takes the
 * per-CPU bpf_task_storage_busy counter with a trylock and returns NULL when it
 * is held (6.2 split this into a _recur variant for tracing programs, whose
 * lookup never fails, and a lock-free one for LSM programs): a program nested
 * inside the task-storage code on the same CPU gets NULL, never a deadlock.
 * The programs here hook sched_process_fork/exec/exit (run with preemption
 * off, never from inside the storage code: it takes no tracepoint of ours) and
 * LSM file/inode/task hooks (never called by the storage code), so they do
 * not nest in it.  The one way to a NULL that is not "no entry" on 6.1 is a
 * task preempted while holding the counter on a preempt=full kernel (the
 * syscall side and LSM programs run with migration, not preemption, off):
 * docs/threat-model.md, "Provenance in task-local storage". */
#ifndef BASTION_PROV_MAP_H
#define BASTION_PROV_MAP_H

#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct bastion_prov_val);
} prov SEC(".maps");

/* Failing closed (docs/threat-model.md "Provenance map overflow"): slot 0 counts
 * entries the kernel could not create (no memory: the storage has no capacity);
 * the process whose entry was not taken goes to `prov_lost` (tgid ->
 * start_boottime), and so does every child it forks, so the gate refuses them as
 * "untracked" instead of trusting them; slot 1 counts failed updates of
 * `prov_lost`: from then on no untracked process can be told apart and the gate
 * refuses every one on must-stop objects.  Neither is reached by a number of
 * processes any more (only by the kernel running out of memory for a 16-byte
 * entry); while slot 0 is 0 (the normal case) `prov_lost` is not touched. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} prov_errors SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BASTION_PROV_LOST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} prov_lost SEC(".maps");

/* The provenance entry of @t's process (its thread-group leader's storage), or
 * NULL; @create: make an empty one (BPF_LOCAL_STORAGE_GET_F_CREATE) when there is
 * none (NULL then means no memory).  @t: a BTF task pointer (a tp_btf argument,
 * bpf_get_current_task_btf()). */
static __always_inline struct bastion_prov_val *prov_get(struct task_struct *t, bool create)
{
	return bpf_task_storage_get(&prov, t->group_leader, NULL,
				    create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

/* The same for one task's own storage (a thread's copy, see prov.h: the entry a
 * thread that execs takes with it when it becomes the leader). */
static __always_inline struct bastion_prov_val *prov_get_task(struct task_struct *t, bool create)
{
	return bpf_task_storage_get(&prov, t, NULL, create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

/* The current process's entry (the gates' one lookup). */
static __always_inline struct bastion_prov_val *prov_current(void)
{
	return prov_get(bpf_get_current_task_btf(), false);
}

/* The current process's untrusted reasons (the admin bit included) for a gate's
 * decision; 0 = none or only the admin bit.  No entry is clean, unless the kernel
 * could not make one ("Failing closed" above): then it is refused as untracked. */
static __always_inline __u32 prov_actor(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct bastion_prov_val *v = prov_current();

	if (!v) {
		__u32 k = 0;
		__u64 *e = bpf_map_lookup_elem(&prov_errors, &k);

		if (!e || !*e)
			return 0;      /* the kernel never failed an entry: the normal case */
		k = 1;
		e = bpf_map_lookup_elem(&prov_errors, &k);
		if ((e && *e) || bpf_map_lookup_elem(&prov_lost, &tgid))
			return BASTION_PROV_UNTRACKED;
		return 0;
	}
	if (!(v->reasons & ~BASTION_PROV_ADMIN_TTY))
		return 0;
	return v->reasons;
}

#endif /* BASTION_PROV_MAP_H */
