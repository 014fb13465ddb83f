/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The HIPS matcher shared by the compat (hips_compat.bpf.c) and lsm
 * (lsm_hips.bpf.c) objects: the policy maps, the decision procedure of the
 * HIPS section of bastion.h, and the decision report.
 *
 * The decision is identical to src/bastion/policy/match.py:
 *   subjects = every hit of hips_subjects[(gen, kind, a, b)] for EXE,
 *              PARENT_EXE, UID, CGROUP (four lookups)
 *   rule(s) = first of hips_rules[(gen, s, op, o)] for o in (object,
 *             ancestors (<= 16, only with BASTION_HIPS_F_DIR_OBJECTS), ANY)
 *   the strictest rule(s) over the subjects (kill > deny > audit > allow;
 *   a tie: the earlier subject); none: rule(0) (everyone); none:
 *   hips_gens[gen].default_action; no policy (gen 0): allow.
 * Network: hips_net LPM trie, port (exact, 0), the same subject order.
 *
 * A policy swap (user space) writes generation N+1, flips active_gen, then
 * deletes generation N.  A decision reads active_gen before and after it
 * looked at the maps and starts over when it changed (a seqlock without a
 * writer lock): a decision never mixes two generations nor sees one that is
 * being deleted.
 *
 * Scope (.rodata, for tests and the agent; in_scope() of common.h):
 * cfg_cgroup_id (0 = all), cfg_deadline_ns (CLOCK_BOOTTIME; 0 = none; past it
 * everything is allowed: the dead-man).  The agent is never denied, by
 * identity, not by pid: hips_exempt (tgid -> start ticks + exe inode, the
 * layout of tamper_idents) is written by the agent that loaded or adopted the
 * pins, which removes its dead predecessor; a process that reuses a dead
 * agent's pid is not exempt (cfg_self_tgid stays 0 in these objects). */
#ifndef BASTION_HIPS_H
#define BASTION_HIPS_H

#include "path.h"

#define EPERM_ 1
#define SIGKILL_ 9
#define HIPS_MAX_ANCESTORS 16
#define HIPS_WALK_STEPS 32      /* ancestors + mount crossings */
#define HIPS_RETRIES 3

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_RDONLY_PROG);
	__type(key, __u32);
	__type(value, struct bastion_hips_state);
} hips_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_RDONLY_PROG);
	__type(key, __u32);
	__type(value, struct bastion_hips_gen);
} hips_gens SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_RDONLY_PROG);
	__type(key, struct bastion_subject_key);
	__type(value, __u32);
} hips_subjects SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_RDONLY_PROG);
	__type(key, struct bastion_rule_key);
	__type(value, struct bastion_rule_val);
} hips_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_RDONLY_PROG);
	__type(key, struct bastion_net_key);
	__type(value, struct bastion_rule_val);
} hips_net SEC(".maps");

/* The agent(s) HIPS never refuses: key tgid -> bastion_tamper_ident. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, struct bastion_tamper_ident);
} hips_exempt SEC(".maps");

#define HIPS_TICK_NS 10000000ULL /* NSEC_PER_SEC / USER_HZ: /proc/PID/stat's unit */

/* Is (tgid, leader start, exe) an exempt agent?  All three must match. */
static __always_inline bool hips_ident_exempt(__u32 tgid, __u64 start_ns, __u64 exe_ino,
					      __u32 exe_dev)
{
	struct bastion_tamper_ident *id = bpf_map_lookup_elem(&hips_exempt, &tgid);

	return id && exe_ino && start_ns / HIPS_TICK_NS == id->start_ticks &&
	       exe_ino == id->exe_ino && exe_dev == id->exe_dev;
}

/* Is the current task an exempt agent (its image now)? */
static __always_inline bool hips_current_exempt(void)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct file *f;

	if (!bpf_map_lookup_elem(&hips_exempt, &tgid))
		return false; /* the fast path: one hash miss */
	f = BPF_CORE_READ(t, mm, exe_file);
	if (!f)
		return false;
	return hips_ident_exempt(tgid, BPF_CORE_READ(t, group_leader, start_boottime),
				 BPF_CORE_READ(f, f_inode, i_ino),
				 BPF_CORE_READ(f, f_inode, i_sb, s_dev));
}

/* The scope of every HIPS decision taken for the current task. */
static __always_inline bool hips_in_scope(void)
{
	return in_scope() && !hips_current_exempt();
}

/* Subject facts of processes, for hooks that cannot read them from the task
 * (cgroup socket programs); kept by the compat object's tracepoints. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct bastion_task_subject);
} task_subjects SEC(".maps");

/* Decisions per (op, action) and per-hook counters for stats():
 * index = op * 8 + action; user space sums the CPUs. */
#define HIPS_STAT_SLOTS (BASTION_OP_MAX * 8)
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HIPS_STAT_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} hips_stats SEC(".maps");

/* What is known of the acting task (match.TaskFacts). */
struct hips_facts {
	__u64 exe_ino;
	__u64 parent_exe_ino;
	__u32 exe_dev;
	__u32 parent_exe_dev;
	__u32 uid;
	__u32 exempt;      /* the task was an exempt agent (compat: before its exec) */
	__u64 cgroup_id;
};

struct hips_decision {
	__u32 gen;
	__u32 mode;
	__u32 action;
	__u32 rule_id;
	__u32 subject;
};

static __always_inline __u32 hips_active_gen(void)
{
	__u32 zero = 0;
	struct bastion_hips_state *st = bpf_map_lookup_elem(&hips_state, &zero);

	return st ? *(volatile __u32 *)&st->active_gen : 0;
}

/* The exe inode of a task (0/0 for kernel threads). */
static __always_inline void task_exe(struct task_struct *t, __u64 *ino, __u32 *dev)
{
	struct file *f = BPF_CORE_READ(t, mm, exe_file);

	*ino = 0;
	*dev = 0;
	if (!f)
		return;
	*ino = BPF_CORE_READ(f, f_inode, i_ino);
	*dev = BPF_CORE_READ(f, f_inode, i_sb, s_dev);
}

/* Facts of the current task read from the task itself (lsm tier, and the
 * pre-exec image at sys_enter_execve). */
static __always_inline void hips_facts_current(struct hips_facts *f)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();

	task_exe(t, &f->exe_ino, &f->exe_dev);
	task_exe(BPF_CORE_READ(t, real_parent), &f->parent_exe_ino, &f->parent_exe_dev);
	f->uid = (__u32)bpf_get_current_uid_gid();
	f->cgroup_id = bpf_get_current_cgroup_id();
}

/* Every subject the task matches, one lookup per kind, in the order EXE,
 * PARENT_EXE, UID, CGROUP; 0 where that kind names no subject. */
#define HIPS_SUBJ_KINDS 4

static __always_inline __u32 hips_subject_of(__u32 gen, __u32 kind, __u64 a, __u64 b)
{
	struct bastion_subject_key k = { .gen = gen, .kind = kind, .a = a, .b = b };
	__u32 *sid = bpf_map_lookup_elem(&hips_subjects, &k);

	return sid ? *sid : 0;
}

static __always_inline void hips_subjects_of(__u32 gen, const struct hips_facts *f,
					     __u32 sids[HIPS_SUBJ_KINDS])
{
	sids[0] = hips_subject_of(gen, BASTION_SUBJ_EXE, f->exe_ino, f->exe_dev);
	sids[1] = hips_subject_of(gen, BASTION_SUBJ_PARENT_EXE, f->parent_exe_ino,
				  f->parent_exe_dev);
	sids[2] = hips_subject_of(gen, BASTION_SUBJ_UID, f->uid, 0);
	sids[3] = hips_subject_of(gen, BASTION_SUBJ_CGROUP, f->cgroup_id, 0);
}

/* ---- file objects ------------------------------------------------------ */

/* The object of a file decision: an inode, and where to find its ancestor
 * directories — a dentry and, when known, its mount (then the walk crosses
 * mount points like a path does; without one it stops at the root of the
 * inode's filesystem). */
struct hips_object {
	__u64 ino;
	__u32 dev;
	__u32 _pad;
	struct dentry *dentry;     /* the object's dentry (its parent is the first ancestor) */
	struct vfsmount *mnt;      /* NULL: walk within the filesystem only */
};

/* The ancestor walk's state.  It lives in a per-CPU map value, never on the
 * caller's stack: a verifier before Linux 6.7 (Debian 12's 6.1) checks a
 * bpf_loop callback once, from the caller's state before the loop, so from a
 * stack context of constants (seen 0) it can prove `++seen >= HIPS_MAX_ANCESTORS`
 * never true and remove that branch as dead code; the walk would then run to
 * HIPS_WALK_STEPS ancestors and a directory rule 17-32 levels up would decide
 * what match.py (16 ancestors) allows.  It survived only because clang had
 * shared the branch's target with the loop's other exits.  A map value's
 * contents are unknown to every verifier: the bound stays (the exectx.h and
 * prov.h fixes of s13).
 *
 * The value is the walking task's own (task-local storage, s15-tls): no other
 * task's walk shares it, so a preempted walk cannot be overrun (the per-CPU
 * value with a ticket it replaces could, on a fully preemptible kernel, fail
 * closed or take another task's result); a task runs one walk at a time (no
 * HIPS program runs inside another, none in interrupt context).  Its pointer
 * reaches the bpf_loop callback through the callback's stack context: one
 * storage lookup per walk, not per step.  No storage (the kernel had no memory
 * for it, or 6.1's busy trylock, see prov_map.h): fail closed (deny, rule 0). */
struct hips_walk {
	struct bastion_rule_key key;
	struct dentry *d;
	struct vfsmount *vfsmnt;
	struct mount *mnt;
	__u32 seen;
	__u32 found;
	struct bastion_rule_val val;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct hips_walk);
} hips_walk_tls SEC(".maps");

struct hips_walk_ctx {
	struct hips_walk *w;
};

/* One step to the next ancestor directory (crossing a mount point costs a
 * step without a lookup: the mounted root already stood for it). */
static long hips_walk_step(__u32 i, void *data)
{
	struct hips_walk_ctx *c = data;
	struct hips_walk *w = c->w;
	struct dentry *d, *parent;
	struct bastion_rule_val *v;
	struct inode *inode;
	struct vfsmount *vm;
	struct mount *m;

	if (!w)
		return 1;
	d = w->d;
	vm = w->vfsmnt;
	m = w->mnt;

	if (vm) {
		struct dentry *root = BPF_CORE_READ(vm, mnt_root);

		if (d == root) {
			struct mount *pm = BPF_CORE_READ(m, mnt_parent);

			if (pm == m)
				return 1; /* the global root */
			w->d = BPF_CORE_READ(m, mnt_mountpoint);
			w->mnt = pm;
			w->vfsmnt = &pm->mnt;
			return 0;
		}
	}
	parent = BPF_CORE_READ(d, d_parent);
	if (!parent || parent == d)
		return 1;
	w->d = parent;
	inode = BPF_CORE_READ(parent, d_inode);
	w->key.ino = BPF_CORE_READ(inode, i_ino);
	w->key.dev = BPF_CORE_READ(inode, i_sb, s_dev);
	v = bpf_map_lookup_elem(&hips_rules, &w->key);
	if (v) {
		w->val = *v;
		w->found = 1;
		return 1;
	}
	if (++w->seen >= HIPS_MAX_ANCESTORS)
		return 1;
	return 0;
}

/* One walk from @o's parent with the state in @w (the task's own). */
static __always_inline void hips_walk_run(struct hips_walk *w, const struct bastion_rule_key *k,
					  const struct hips_object *o, __u32 *found,
					  struct bastion_rule_val *val)
{
	struct hips_walk_ctx c = { .w = w };

	w->key = *k;
	w->d = o->dentry;
	w->vfsmnt = o->mnt;
	w->mnt = o->mnt ? container_of(o->mnt, struct mount, mnt) : NULL;
	w->seen = 0;
	w->found = 0;
	bpf_loop(HIPS_WALK_STEPS, hips_walk_step, &c, 0);
	*found = w->found;
	*val = w->val;
}

/* hips_rules for one subject: object, ancestors, ANY.  True on a hit.
 * Inlined, never a global BPF function: a global function of a loaded
 * program is a target for BPF_PROG_TYPE_EXT (freplace), which would let
 * root swap our matcher out without detaching anything. */
static __always_inline bool hips_file_search(const struct bastion_rule_key *who, __u32 flags,
					     const struct hips_object *o,
					     struct bastion_rule_val *out)
{
	struct bastion_rule_key k = {};
	struct bastion_rule_val *v;

	k.gen = who->gen;
	k.subject = who->subject;
	k.op = who->op;
	k.dev = o->dev;
	k.ino = o->ino;
	v = bpf_map_lookup_elem(&hips_rules, &k);
	if (v) {
		*out = *v;
		return true;
	}
	if ((flags & BASTION_HIPS_F_DIR_OBJECTS) && o->dentry) {
		struct hips_walk *w = bpf_task_storage_get(&hips_walk_tls,
							   bpf_get_current_task_btf(), NULL,
							   BPF_LOCAL_STORAGE_GET_F_CREATE);
		struct bastion_rule_val wv = {};
		__u32 found = 0;

		if (!w)
			goto closed;
		hips_walk_run(w, &k, o, &found, &wv);
		if (found) {
			*out = wv;
			return true;
		}
	}
	k.dev = 0;
	k.ino = 0;
	v = bpf_map_lookup_elem(&hips_rules, &k);
	if (v) {
		*out = *v;
		return true;
	}
	return false;
closed:
	/* no state for the walk (no memory): refuse (rule 0) */
	out->action = BASTION_ACT_DENY;
	out->rule_id = 0;
	return true;
}

/* ---- network objects ----------------------------------------------------- */

static __always_inline bool hips_net_rules(__u32 gen, __u32 subject, __u32 op, __u16 port,
					   const __u8 addr[16], struct bastion_rule_val *out)
{
	struct bastion_net_key k = {
		.prefixlen = 128 + 128, .gen = gen, .subject = subject, .op = op, .port = port,
	};
	struct bastion_rule_val *v;

	__builtin_memcpy(k.addr, addr, 16);
	v = bpf_map_lookup_elem(&hips_net, &k);
	if (!v && port) {
		k.port = 0;
		v = bpf_map_lookup_elem(&hips_net, &k);
	}
	if (v) {
		*out = *v;
		return true;
	}
	return false;
}

/* ---- the decision ------------------------------------------------------------ */

/* hips_rules or hips_net for one subject: its most specific rule. */
static __always_inline bool hips_rules_of(__u32 gen, __u32 subject, __u32 op, __u32 flags,
					  const struct hips_object *o, const __u8 *addr, __u16 port,
					  struct bastion_rule_val *out)
{
	if (o) {
		struct bastion_rule_key who = { .gen = gen, .subject = subject, .op = op };

		return hips_file_search(&who, flags, o, out);
	}
	return hips_net_rules(gen, subject, op, port, addr, out);
}

/* One attempt at generation @gen.  @o is a file object, or NULL with
 * @addr/@port for a network op.  Every subject the task matches is asked
 * for its most specific rule and the strictest answer wins (actions are
 * ordered allow < audit < deny < kill; on a tie the earlier subject); only
 * when none of them has a rule do the rules for everyone (subject 0), then
 * the default, decide.  At most HIPS_SUBJ_KINDS + 1 rule searches. */
static __always_inline void hips_decide_once(__u32 gen, __u32 op, const struct hips_facts *f,
					     const struct hips_object *o, const __u8 *addr,
					     __u16 port, struct hips_decision *d)
{
	struct bastion_hips_gen *g = bpf_map_lookup_elem(&hips_gens, &gen);
	struct bastion_rule_val val = {}, best = {};
	__u32 sids[HIPS_SUBJ_KINDS];
	__u32 flags = 0, first = 0, win = 0;
	bool found = false;
	int i;

	d->gen = gen;
	d->mode = BASTION_MODE_ENFORCE;
	d->action = BASTION_ACT_ALLOW;
	d->rule_id = 0;
	d->subject = 0;
	if (!g)
		return; /* being swapped out: the caller retries */
	d->mode = g->mode;
	d->action = g->default_action;
	flags = g->flags;
	hips_subjects_of(gen, f, sids);
	/* Unrolled: 6.1's verifier refuses the back-edge of the loop clang makes. */
#pragma clang loop unroll(full)
	for (i = 0; i < HIPS_SUBJ_KINDS; i++) {
		__u32 s = sids[i];

		if (!s)
			continue;
		if (!first)
			first = s;
		if (hips_rules_of(gen, s, op, flags, o, addr, port, &val) &&
		    (!found || val.action > best.action)) {
			best = val;
			win = s;
			found = true;
		}
	}
	if (!found) {
		win = first; /* reported: the task's first subject */
		found = hips_rules_of(gen, 0, op, flags, o, addr, port, &best);
	}
	d->subject = win;
	if (found) {
		d->action = best.action;
		d->rule_id = best.rule_id;
	}
}

static __always_inline void hips_stat_add(__u32 k)
{
	__u64 *v = bpf_map_lookup_elem(&hips_stats, &k);

	if (v)
		*v += 1;
}

static __always_inline void hips_count(__u32 op, __u32 action)
{
	if (op >= BASTION_OP_MAX)
		return;
	hips_stat_add(op * 8 + (action & 7));
}

/* The policy epoch (0: no state); written by user space in the same update
 * as the active generation, never reused (a generation number is). */
static __always_inline __u64 hips_policy_epoch(void)
{
	__u32 zero = 0;
	struct bastion_hips_state *st = bpf_map_lookup_elem(&hips_state, &zero);

	return st ? *(volatile __u64 *)&st->epoch : 0;
}

/* Decide (op, object) for the acting task described by @f. */
static __always_inline void hips_decide(__u32 op, const struct hips_facts *f,
					const struct hips_object *o, const __u8 *addr, __u16 port,
					struct hips_decision *d)
{
	__u64 epoch = hips_policy_epoch(), epoch_again;
	__u32 gen = hips_active_gen(), again;
	int i;

	d->gen = 0;
	d->mode = BASTION_MODE_ENFORCE;
	d->action = BASTION_ACT_ALLOW;
	d->rule_id = 0;
	d->subject = 0;
	for (i = 0; i < HIPS_RETRIES; i++) {
		if (!gen)
			break; /* no policy: allow */
		hips_decide_once(gen, op, f, o, addr, port, d);
		/* the epoch too: clear() then apply() reuses a generation number,
		 * a decision that raced both would read the same gen before and
		 * after from two policies' maps */
		again = hips_active_gen();
		epoch_again = hips_policy_epoch();
		if (again == gen && epoch_again == epoch)
			break;
		gen = again;
		epoch = epoch_again;
		d->gen = 0;
		d->action = BASTION_ACT_ALLOW;
		d->rule_id = 0;
	}
	hips_count(op, d->action);
}

/* Is the decision refused (deny or kill) and enforced (mode ENFORCE)? */
static __always_inline bool hips_refuses(const struct hips_decision *d)
{
	return (d->action == BASTION_ACT_DENY || d->action == BASTION_ACT_KILL) &&
	       d->mode == BASTION_MODE_ENFORCE;
}

static __always_inline bool hips_reported(const struct hips_decision *d)
{
	return d->action == BASTION_ACT_AUDIT || d->action == BASTION_ACT_DENY ||
	       d->action == BASTION_ACT_KILL;
}

/* Reserve and fill a HIPS event for decision @d (NULL when not wanted or the
 * ring is full); the caller fills the object fields and SUBMITs. */
static __always_inline struct bastion_hips_event *
hips_event(__u32 op, const struct hips_decision *d, __u32 mechanism)
{
	bool refused = hips_refuses(d);

	if (!(cfg_event_mask & (1ULL << BASTION_EV_HIPS)))
		return NULL;
	return reserve_hips(op, d->action, d->rule_id, d->subject, mechanism,
			    refused ? -EPERM_ : 0, d->gen, refused);
}

/* Name of a dentry within its filesystem, or the full path when the mount
 * is known. */
static __always_inline bool hips_dentry_path(struct dentry *dentry, struct vfsmount *mnt,
					     char *out)
{
	struct path p = {};

	p.dentry = dentry;
	p.mnt = mnt;
	return path_to_str(&p, out);
}

/* Report a file decision. */
static __always_inline void hips_report_file(__u32 op, const struct hips_decision *d,
					     __u32 mechanism, const struct hips_object *o,
					     struct dentry *name_dentry, struct vfsmount *name_mnt,
					     __s32 target_pid)
{
	struct bastion_hips_event *e;

	if (!hips_reported(d))
		return;
	e = hips_event(op, d, mechanism);
	if (!e)
		return;
	e->ino = o->ino;
	e->dev = o->dev;
	e->target_pid = target_pid;
	if (name_dentry && hips_dentry_path(name_dentry, name_mnt, e->path))
		e->hdr.flags |= BASTION_F_TRUNC_PATH;
	SUBMIT(e);
}

static __always_inline void hips_report_net(__u32 op, const struct hips_decision *d,
					    __u32 mechanism, __u16 family, __u16 port,
					    const __u8 *addr, __s32 ret)
{
	struct bastion_hips_event *e;

	if (!hips_reported(d))
		return;
	e = hips_event(op, d, mechanism);
	if (!e)
		return;
	e->family = family;
	e->port = port;
	if (family == 2 /* AF_INET */)
		__builtin_memcpy(e->addr, addr + 12, 4);
	else
		__builtin_memcpy(e->addr, addr, 16);
	if (ret)
		e->ret = ret;
	SUBMIT(e);
}

#endif /* BASTION_HIPS_H */
