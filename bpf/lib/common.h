/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Shared helpers of Bastion's BPF programs: configuration, filtering,
 * the ring buffer, the drop counter and the common event header. */
#ifndef BASTION_COMMON_H
#define BASTION_COMMON_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "bastion.h"

/* Every shared type, so that each object's BTF carries all of them and
 * tests/unit/test_abi.py can check the Python mirror against it. */
struct bastion_abi_types {
	struct bastion_exec_event exec;
	struct bastion_fork_event fork;
	struct bastion_exit_event exit;
	struct bastion_file_event file;
	struct bastion_net_event net;
	struct bastion_ptrace_event ptrace;
	struct bastion_kill_event kill;
	struct bastion_bpf_event bpf;
	struct bastion_memfd_event memfd;
	struct bastion_cred_event cred;
	struct bastion_lsm_deny_event lsm_deny;
	struct bastion_inode_key inode_key;
	struct bastion_inode_rule inode_rule;
	struct bastion_hips_state hips_state;
	struct bastion_hips_gen hips_gen;
	struct bastion_subject_key subject_key;
	struct bastion_rule_key rule_key;
	struct bastion_rule_val rule_val;
	struct bastion_net_key net_key;
	struct bastion_task_subject task_subject;
	struct bastion_hips_event hips;
	struct bastion_quarantine_val quarantine_val;
	struct bastion_sens_val sens_val;
	struct bastion_prov_val prov_val;
	struct bastion_prov_prefix prov_prefix;
	struct bastion_prov_interp prov_interp;
	struct bastion_pgate_obj pgate_obj;
	struct bastion_pgate_name pgate_name;
	struct bastion_pgate_tool pgate_tool;
	struct bastion_pgate_cfg pgate_cfg;
	enum bastion_pgate_class pgate_class;
	enum bastion_pgate_how pgate_how;
	enum bastion_sens_class sens_class;
	enum bastion_event_type event_type;
	enum bastion_file_op file_op;
	enum bastion_net_op net_op;
	enum bastion_cred_op cred_op;
	enum bastion_kill_syscall kill_syscall;
	enum bastion_lsm_hook lsm_hook;
	enum bastion_hips_op hips_op;
	enum bastion_hips_action hips_action;
	enum bastion_hips_mode hips_mode;
	enum bastion_subject_kind subject_kind;
	enum bastion_mechanism mechanism;
	enum bastion_pipegate_kind pipegate_kind;
	enum bastion_pipegate_rule pipegate_rule;
	struct bastion_mmap_event mmap;
	enum bastion_mmap_op mmap_op;
	enum bastion_rewrite_act rewrite_act;
	struct bastion_openctx_counts openctx_counts;
};
const volatile struct bastion_abi_types bastion_abi_types_anchor __attribute__((unused));

/* ---- configuration, set through .rodata before load ---- */
const volatile __u32 bastion_abi_version = BASTION_ABI_VERSION;
const volatile __u32 cfg_self_tgid = 0;      /* events of this process are not reported */
const volatile __u64 cfg_cgroup_id = 0;      /* 0 = every cgroup, else only this cgroup v2 id */
const volatile __u64 cfg_event_mask = ~0ULL; /* bit (1 << type) enables an event type */
/* The dead-man of enforcing hooks: CLOCK_BOOTTIME ns past which they allow
 * (and kill) nothing any more; 0 = never.  Tests always set it together
 * with cfg_cgroup_id, so enforcement a test forgot cannot outlive it. */
const volatile __u64 cfg_deadline_ns = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, BASTION_RINGBUF_BYTES);
} events SEC(".maps");

/* Failed ring-buffer reserves, per CPU (user space sums them): slot 0 all of
 * them, slot <slot> those of one record type (BASTION_DROP_SLOTS in bastion.h).
 * With a priority ring, "drops" counts the bulk ring's losses and "prio_drops"
 * (same slots) the priority ring's. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BASTION_DROP_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

/* The priority ring (ABI 3.2, s23-prioring): an object that defines
 * BASTION_PRIO_RING before including us (the two sensors) puts the records an
 * attacker's payload cannot do without (BASTION_EV_PRIO_MASK, sensitive-set
 * opens, remounts) on "events_prio", drained first by user space, and the
 * records a flood is made of (fork/exit, chmod/chown, unlink/rename/link,
 * ordinary opens) on "events": a flood of cheap file events fills only the
 * bulk ring.  Every other object has the one ring "events". */
#ifdef BASTION_PRIO_RING
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, BASTION_PRIO_RINGBUF_BYTES);
} events_prio SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BASTION_DROP_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} prio_drops SEC(".maps");

/* The priority ring's spending (s23 review 1): most priority records are cheap to
 * make without proving anything (bind(-1), ptrace(-1), process_vm_readv(-1),
 * setuid(getuid()): 120-190 ns a call), so one loop could keep the priority ring
 * full and the payload's records behind it lost.  Every priority record but an
 * exec is charged to its thread group in a 100 ms window; a group past
 * PRIO_PROC_BUDGET in the window (PRIO_PROC_SMALL while this CPU's priority
 * records of the window exceed PRIO_CPU_BUDGET: many flooding groups each under
 * the budget) has its records put on the bulk ring instead, counted per type in
 * prio_demoted: they still cross unless the bulk ring is full too.  A payload's
 * few acts stay under every budget.
 *
 * s24: an exec is charged to its *image* (the executable's inode) as spawned by one
 * parent of one uid, not to its thread group (each exec is a new one): a loop
 * spawning one tiny binary (~13 k/s from posix_spawn of a static binary) kept the
 * priority ring full, and the payload's connect and secret read behind it were lost.
 * Past cfg_prio_exec_budget in a window such execs go to the bulk ring (the same
 * small limit while the CPU is over its budget); a payload's own binary, or its
 * first execs of a common one, stay priority.  The parent and the uid are in the key
 * (s24 review 3): by image alone, any user's loop of /bin/sh (every #! script's
 * image too) demoted every other process's shell execs host-wide.  A flood that
 * rotates copies of a binary or parents is still bounded by the CPU budget's small
 * limit per key. */
#define PRIO_WINDOW_NS 100000000ULL
#define PRIO_PROC_BUDGET 256
#define PRIO_PROC_SMALL 16
#define PRIO_CPU_BUDGET 2000

/* the exec budget per image and window, and the window (a test sets both so that a
 * flood spends the budget however slowly it runs) */
const volatile __u32 cfg_prio_exec_budget = PRIO_PROC_BUDGET;
const volatile __u64 cfg_prio_window_ns = PRIO_WINDOW_NS;

struct prio_spend {
	__u64 window;
	__u32 used;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct prio_spend);
} prio_spend_tgid SEC(".maps");

/* the exec budget's key: the image's (dev, inode), the uid and the parent's tgid folded
 * into 64 bits (a budget, not an identity: two keys that fold alike share a budget,
 * nothing else) */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct prio_spend);
} prio_spend_image SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct prio_spend);
} prio_spend_cpu SEC(".maps");

/* priority records put on the bulk ring by the budget, per CPU: slot 0 all, slot
 * <type> those of one record type (the drops' slots) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BASTION_DROP_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} prio_demoted SEC(".maps");

static __always_inline void count_drop_in(void *counter, __u32 slot);

/* The exec budget's key of the current task: its image (its mm's exe_file: at
 * sched_process_exec, the new one), uid and parent; 0 when there is no image. */
static __always_inline __u64 prio_image_key(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct inode *ino = BPF_CORE_READ(task, mm, exe_file, f_inode);
	__u64 i, who;

	if (!ino)
		return 0;
	i = BPF_CORE_READ(ino, i_ino) ^ ((__u64)BPF_CORE_READ(ino, i_sb, s_dev) << 40);
	who = ((__u64)(__u32)bpf_get_current_uid_gid() << 32) |
	      (__u32)BPF_CORE_READ(task, real_parent, tgid);
	return (i ^ (who * 0x9E3779B97F4A7C15ULL)) | 1;
}

/* May the current task put one more record of a priority type on the priority ring? */
static __always_inline bool prio_spend(__u32 type_id)
{
	__u64 w = bpf_ktime_get_boot_ns() / (cfg_prio_window_ns ?: PRIO_WINDOW_NS), image = 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32, zero = 0, limit = PRIO_PROC_BUDGET;
	struct prio_spend *c = bpf_map_lookup_elem(&prio_spend_cpu, &zero), *t, fresh = {};

	if (type_id == BASTION_EV_EXEC) {
		image = prio_image_key();
		limit = cfg_prio_exec_budget;
	}
	if (c) {
		if (c->window != w) {
			c->window = w;
			c->used = 0;
		}
		if (++c->used > PRIO_CPU_BUDGET && limit > PRIO_PROC_SMALL)
			limit = PRIO_PROC_SMALL;
	}
	if (type_id == BASTION_EV_EXEC)
		t = image ? bpf_map_lookup_elem(&prio_spend_image, &image) : NULL;
	else
		t = bpf_map_lookup_elem(&prio_spend_tgid, &tgid);
	if (!t) {
		fresh.window = w;
		fresh.used = 1;
		if (type_id == BASTION_EV_EXEC) {
			if (image)
				bpf_map_update_elem(&prio_spend_image, &image, &fresh, BPF_ANY);
		} else {
			bpf_map_update_elem(&prio_spend_tgid, &tgid, &fresh, BPF_ANY);
		}
		if (1 <= limit)
			return true;
		count_drop_in(&prio_demoted, type_id);
		return false;
	}
	if (t->window != w) {
		t->window = w;
		t->used = 0;
	}
	if (++t->used <= limit)
		return true;
	count_drop_in(&prio_demoted, type_id);
	return false;
}

/* is a record type known at compile time a priority type (folded by the compiler) */
#define PRIO_TYPE(type_id) \
	((type_id) < 64 && (BASTION_EV_PRIO_MASK & (1ULL << ((type_id) & 63))))
#endif

static __always_inline void count_drop_in(void *counter, __u32 slot)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(counter, &k);

	if (v)
		__sync_fetch_and_add(v, 1);
	if (!slot || slot >= BASTION_DROP_SLOTS)
		return;
	v = bpf_map_lookup_elem(counter, &slot);
	if (v)
		__sync_fetch_and_add(v, 1);
}

/* A failed reserve of a record of type `slot` on the bulk ring (or the only one). */
static __always_inline void count_drop(__u32 slot)
{
	count_drop_in(&drops, slot);
}

/* Is the current task the agent (cfg_self_tgid)? */
static __always_inline bool current_is_self(void)
{
	return cfg_self_tgid && (bpf_get_current_pid_tgid() >> 32) == cfg_self_tgid;
}

/* Is the current task inside the cgroup scope (cfg_cgroup_id, 0 = all)? */
static __always_inline bool current_in_cgroup(void)
{
	return !cfg_cgroup_id || bpf_get_current_cgroup_id() == cfg_cgroup_id;
}

/* Is an event of this type, from the current task, wanted? Cheap: call it
 * before any reserve or path walk. */
static __always_inline bool wanted(__u32 type)
{
	if (!(cfg_event_mask & (1ULL << type)))
		return false;
	if (current_is_self() || !current_in_cgroup())
		return false;
#ifdef BASTION_QUIET_TGIDS
	/* an object that keeps a set of quiet processes (the agent, its guardian)
	 * defines BASTION_QUIET_TGIDS to the map's name before including us */
	{
		__u32 tgid = bpf_get_current_pid_tgid() >> 32;

		if (bpf_map_lookup_elem(&BASTION_QUIET_TGIDS, &tgid))
			return false;
	}
#endif
	return true;
}

/* The one scope check of every enforcing hook: before the dead-man
 * deadline, inside the cgroup scope, and not the agent itself. */
static __always_inline bool in_scope(void)
{
	if (cfg_deadline_ns && bpf_ktime_get_boot_ns() > cfg_deadline_ns)
		return false; /* dead-man: expired */
	return current_in_cgroup() && !current_is_self();
}

static __always_inline void fill_hdr(struct bastion_event_hdr *h, __u16 type, __u32 size)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();

	h->type = type;
	h->flags = 0;
	h->size = size;
	h->ts_ns = bpf_ktime_get_boot_ns();
	h->pid = (__u32)pid_tgid;
	h->tgid = pid_tgid >> 32;
	h->ppid = BPF_CORE_READ(task, real_parent, tgid);
	h->uid = (__u32)uid_gid;
	h->gid = uid_gid >> 32;
	h->euid = BPF_CORE_READ(task, cred, euid.val);
	h->cgroup_id = bpf_get_current_cgroup_id();
	h->start_ns = BPF_CORE_READ(task, group_leader, start_boottime);
	bpf_get_current_comm(h->comm, sizeof(h->comm));
}

/* Reserve a record of type T on its ring (RING_OF), header filled; NULL (and a
 * drop counted against that ring) when the ring is full. */
#ifdef BASTION_PRIO_RING
#define RESERVE(T, type_id)                                                   \
	({                                                                    \
		T *__e;                                                       \
		if (PRIO_TYPE(type_id) && prio_spend(type_id)) {              \
			__e = bpf_ringbuf_reserve(&events_prio, sizeof(T), 0); \
			if (!__e)                                             \
				count_drop_in(&prio_drops, type_id);          \
		} else {                                                      \
			__e = bpf_ringbuf_reserve(&events, sizeof(T), 0);     \
			if (!__e)                                             \
				count_drop_in(&drops, type_id);               \
		}                                                             \
		if (__e)                                                      \
			fill_hdr(&__e->hdr, (type_id), sizeof(T));            \
		__e;                                                          \
	})
#else
#define RESERVE(T, type_id)                                                   \
	({                                                                    \
		T *__e = bpf_ringbuf_reserve(&events, sizeof(T), 0);          \
		if (__e)                                                      \
			fill_hdr(&__e->hdr, (type_id), sizeof(T));            \
		else                                                          \
			count_drop_in(&drops, type_id);                       \
		__e;                                                          \
	})
#endif

/* Reserve a hips record (a HIPS decision, a quarantine enforcement) with its
 * decision fields set and every object field zero; NULL (and a drop counted)
 * when the ring is full.  The caller fills what it knows and SUBMITs. */
static __always_inline struct bastion_hips_event *
reserve_hips(__u32 op, __u32 action, __u32 rule_id, __u32 subject, __u32 mechanism,
	     __s32 ret, __u32 gen, __u32 enforced)
{
	struct bastion_hips_event *e = RESERVE(struct bastion_hips_event, BASTION_EV_HIPS);

	if (!e)
		return NULL;
	e->op = op;
	e->action = action;
	e->rule_id = rule_id;
	e->subject = subject;
	e->mechanism = mechanism;
	e->ret = ret;
	e->gen = gen;
	e->enforced = enforced;
	e->ino = 0;
	e->dev = 0;
	e->family = 0;
	e->port = 0;
	__builtin_memset(e->addr, 0, sizeof(e->addr));
	e->target_pid = 0;
	e->detail = 0;
	e->path[0] = '\0';
	return e;
}

/* Commit without waking the reader: user space drains the ring in timed
 * batches (a wakeup per event costs far more than the event itself). */
#define SUBMIT(e) bpf_ringbuf_submit((e), BPF_RB_NO_WAKEUP)

#endif /* BASTION_COMMON_H */
