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
 * docs/threat-model.md, "Provenance in task-local storage".  The gates fail
 * closed on it (s16-sig, re-applied s21: prov_gate_actor/prov_actor_settle
 * below): a plain lookup's NULL is settled, once the object is known to be must-stop, by a lookup with
 * BPF_LOCAL_STORAGE_GET_F_CREATE, whose NULL can only mean busy or no memory
 * and is refused. */
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
 * entry); while slot 0 is 0 (the normal case) `prov_lost` is not touched.
 * Slot 2 (s16-sig) counts a gate's refusals of a must-stop act because the
 * actor's entry could not be read even with F_CREATE (storage busy, no memory). */
#define PROV_ERR_GATE_NULL 2
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
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

/* A gate's reading of an actor with no entry (the old NULL): refused as untracked
 * when the kernel once could not make an entry and @tgid may be one of those
 * ("Failing closed" above), else clean. */
static __always_inline __u32 prov_unentered(__u32 tgid)
{
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

/* Internal to the gates (never in a record, never in the map): prov_gate_actor's
 * plain lookup returned NULL, which is "no entry" or, on 6.1, the storage's
 * busy counter held (see the top of this file).  The gate classifies its
 * object first (most acts touch no must-stop object) and settles the actor
 * only for a must-stop one: prov_actor_settle. */
#define PROV_ACTOR_UNSEEN (1u << 29)

/* The reasons an entry gives: 0 = none or only the admin bit; an entry with no
 * reason at all (one a gate made, below) reads as no entry did. */
static __always_inline __u32 prov_val_reasons(const struct bastion_prov_val *v, __u32 tgid)
{
	if (!v->reasons)
		return prov_unentered(tgid);
	if (!(v->reasons & ~BASTION_PROV_ADMIN_TTY))
		return 0;
	return v->reasons;
}

/* The current process's untrusted reasons (the admin bit included); 0 = none or
 * only the admin bit.  No entry is clean unless the kernel could not make one
 * ("Failing closed" above).  For the programs that only report or pre-filter on it
 * (tp_events.bpf.c, svcgate_compat.bpf.c, lsm_svcgate's listen tag): 0 must mean
 * clean there.  The LSM gates read prov_gate_actor instead. */
static __always_inline __u32 prov_actor(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct bastion_prov_val *v = prov_current();

	if (!v)
		return prov_unentered(tgid);
	return prov_val_reasons(v, tgid);
}

/* An LSM gate's reading of the current process: prov_actor's, except that a
 * plain lookup that found nothing gives PROV_ACTOR_UNSEEN (settle it with
 * prov_actor_settle before deciding on a must-stop object). */
static __always_inline __u32 prov_gate_actor(void)
{
	struct bastion_prov_val *v = prov_current();

	if (!v)
		return PROV_ACTOR_UNSEEN;
	return prov_val_reasons(v, bpf_get_current_pid_tgid() >> 32);
}

/* Settle @reasons (prov_gate_actor's) for a must-stop object: an UNSEEN actor is
 * looked up again with F_CREATE, which makes an empty entry (no reason: clean,
 * as no entry was) when there is none, so a NULL now means the storage is busy
 * or out of memory: refused as untracked and counted (prov_errors slot 2).  A
 * tainted process whose plain lookup met the busy counter gets its reasons
 * here, or the refusal.  Cost: an empty entry (the storage's ~100 bytes plus a
 * 16-byte value) for each process that touches a must-stop object without
 * one, freed with the process; prov_fork does not copy it to children. */
static __always_inline __u32 prov_actor_settle(__u32 reasons)
{
	struct bastion_prov_val *v;
	__u32 k = PROV_ERR_GATE_NULL;
	__u64 *n;

	if (!(reasons & PROV_ACTOR_UNSEEN))
		return reasons;
	v = prov_get(bpf_get_current_task_btf(), true);
	if (v)
		return prov_val_reasons(v, bpf_get_current_pid_tgid() >> 32);
	n = bpf_map_lookup_elem(&prov_errors, &k);
	if (n)
		__sync_fetch_and_add(n, 1);
	return BASTION_PROV_UNTRACKED;
}

#endif /* BASTION_PROV_MAP_H */
