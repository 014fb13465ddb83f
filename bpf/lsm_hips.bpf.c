// SPDX-License-Identifier: GPL-2.0
/* HIPS enforcement, lsm tier: every decision is taken in the LSM hook and a
 * refusal is -EPERM (kill: -EPERM and SIGKILL to the caller).  The acting
 * task is current, read directly (no task_subjects upkeep needed).
 *
 * Only arguments common to 6.1 and 6.18 are declared; inode_setattr gained a
 * leading mnt_idmap argument (6.1: dentry, attr; 6.18: idmap, dentry, attr):
 * user space reads the running kernel's BTF and sets cfg_setattr_idmap, and
 * the verifier drops the other branch (frozen .rodata).
 *
 * A hard link or a rename that takes a file or directory out of a directory
 * object the task may not read or write is refused (lsm_new_name).
 *
 * A rename over an existing name is also decided as OPEN_WRITE and UNLINK of
 * the file it replaces.  Files replaced legitimately (passwd, package
 * upgrades) get a new inode: user space re-resolves the policy's names
 * (PolicyManager.refresh) and alerts bastion.policy.drift.
 *
 * Dentry-only hooks (create, unlink, rename, chmod) have no mount: their
 * ancestor walk stops at the root of the object's filesystem, and the
 * reported path is relative to that root. */
#include "hips.h"
#include "sock.h"
#include "setattr.h"

char LICENSE[] SEC("license") = "GPL";

#define FMODE_READ_ 0x1
#define FMODE_WRITE_ 0x2
#define O_TRUNC_ 01000
#define FMODE_EXEC_ 0x20
#define PTRACE_MODE_ATTACH_ 0x02

const volatile __u32 cfg_setattr_idmap = 1;

/* Fast path: no policy, or out of scope. */
static __always_inline bool hips_off(void)
{
	return !hips_active_gen() || !hips_in_scope();
}

static __always_inline int lsm_file(__u32 op, const struct hips_object *o,
				    struct dentry *name, struct vfsmount *name_mnt, __s32 target_pid)
{
	struct hips_facts f = {};
	struct hips_decision d;

	hips_facts_current(&f);
	hips_decide(op, &f, o, NULL, 0, &d);
	hips_report_file(op, &d, BASTION_MECH_LSM, o, name, name_mnt, target_pid);
	if (!hips_refuses(&d))
		return 0;
	if (d.action == BASTION_ACT_KILL)
		bpf_send_signal(SIGKILL_);
	return -EPERM_;
}

static __always_inline void obj_of_path(struct hips_object *o, struct dentry *dentry,
					struct vfsmount *mnt)
{
	struct inode *inode = BPF_CORE_READ(dentry, d_inode);

	o->ino = BPF_CORE_READ(inode, i_ino);
	o->dev = BPF_CORE_READ(inode, i_sb, s_dev);
	o->dentry = dentry;
	o->mnt = mnt;
}

/* ---- the open-verdict cache (s18-hipsopen, issue 16 item 5) ----------------
 *
 * A file_open decision under a large policy is the full search (facts, four
 * subject lookups, exact, the ancestor walk, ANY, for each subject the task
 * matches, then everyone's): 7-10 us of BPF per open under TCG.  The cache
 * keeps the last silent allows of the task itself (task-local storage: no
 * other task fills, evicts or reads it), one slot per (object) hash, and a
 * hit is one storage lookup and a compare of the whole key, the facts and the
 * object read with plain loads, before the scope check (s19-hipsfast: a hit
 * costs three helper calls, the task, its storage and the hit counter, where
 * it took 17, the read-write program's scope check included):
 *   - the policy epoch and the generation (hips_state, written in one update
 *     by user space; the epoch is never reused, the generation number is);
 *   - the namespace epoch (hips_ns_epoch below): a directory object's
 *     decision depends on the dentry chain and the mounts, which change with
 *     no policy swap; every rename, unlink, rmdir, mount, move_mount, umount,
 *     pivot_root and d_instantiate (a freed dentry's memory coming back for
 *     the same inode under another name) of any task bumps it, before any
 *     scope check;
 *   - the task's mount namespace (its never-reused id): the mounts of another
 *     namespace are another tree; a decision is stored only when the file's
 *     mount is attached in the task's namespace (so the mount cannot be freed
 *     and its memory reused without an umount, which bumps the epoch);
 *   - the op and the facts the decision read (exe, parent exe, uid, cgroup):
 *     an exec, a setuid, a cgroup move or a reparenting misses;
 *   - the object: dev, inode, dentry and mount.
 * Only silent allows are stored (an audit, deny or kill is decided and
 * reported at every open), and only when the policy epoch, generation and
 * namespace epoch read before the decision are still those after it and the
 * decision was taken on that generation (the matcher's seqlock, extended):
 * a decision that raced a swap or a rename is not stored.  Any mismatch is
 * the full search.  An exec's open of its image is not stored (the exec
 * changes the facts: it could only evict).  Left: the hooks run before the rename or mount is done;
 * an open of the same (inode, dentry) racing between the hook and the move
 * can be stored with the new epoch and stays valid for that task: no more
 * than the descriptor it could have kept open from that moment. */
#define HIPS_VC_WAYS 4

struct hips_vc_ent {
	__u64 pol_epoch;
	__u64 ns_epoch;
	__u64 mnt_ns;
	__u64 exe_ino;
	__u64 parent_exe_ino;
	__u64 cgroup_id;
	__u64 ino;
	__u64 dentry;
	__u64 mnt;
	__u32 exe_dev;
	__u32 parent_exe_dev;
	__u32 uid;
	__u32 dev;
	__u32 gen;
	__u32 op;            /* 0: an empty slot */
};

#define HIPS_VC_WORDS (sizeof(struct hips_vc_ent) / sizeof(__u64))

struct hips_vc {
	struct hips_vc_ent e[HIPS_VC_WAYS];
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct hips_vc);
} hips_vcache SEC(".maps");

/* Bumped (never read back by user space) by every change of the dentry tree
 * or the mounts, for every task, while a policy is active.  With none, the
 * hooks return before the atomic (one shared cache line every d_instantiate,
 * unlink and rename of the host would bounce between the CPUs): no entry can
 * be stored then, and the apply that activates a policy moves the policy
 * epoch, which every entry of before misses. */
__u64 hips_ns_epoch = 0;

static __always_inline void hips_ns_changed(void)
{
	if (!hips_active_gen())
		return;
	__sync_fetch_and_add(&hips_ns_epoch, 1);
}

/* The mount namespace's never-reused id (6.1-6.17: mnt_namespace.seq; 6.18:
 * ns_common.ns_id); 0 when neither exists: no caching. */
struct mnt_namespace___seq {
	__u64 seq;
} __attribute__((preserve_access_index));


/* The facts and object of file_open with plain loads (the verifier makes them
 * fault-safe PROBE_MEM loads) instead of a probe-read helper call per field:
 * the same values as hips_facts_current and obj_of_path, at a fraction of the
 * cost; they feed both the cache key and the decision. */
static __always_inline void task_exe_btf(struct task_struct *t, __u64 *ino, __u32 *dev)
{
	struct mm_struct *mm = t->mm;
	struct file *f;

	*ino = 0;
	*dev = 0;
	if (!mm)
		return;
	f = mm->exe_file;
	if (!f)
		return;
	*ino = f->f_inode->i_ino;
	*dev = f->f_inode->i_sb->s_dev;
}

static __always_inline void hips_facts_btf(struct task_struct *t, struct hips_facts *f)
{
	task_exe_btf(t, &f->exe_ino, &f->exe_dev);
	task_exe_btf(t->real_parent, &f->parent_exe_ino, &f->parent_exe_dev);
	/* what bpf_get_current_uid_gid() and bpf_get_current_cgroup_id() return
	 * (current_cred()->uid, task_dfl_cgroup(current)->kn->id), without the
	 * two helper calls */
	f->uid = t->cred->uid.val;
	f->cgroup_id = t->cgroups->dfl_cgrp->kn->id;
}

static __always_inline __u64 hips_mnt_ns_id_btf(struct task_struct *t)
{
	struct mnt_namespace *ns = t->nsproxy->mnt_ns;
	struct mnt_namespace___seq *old = (void *)ns;

	if (!ns)
		return 0;
	if (bpf_core_field_exists(old->seq))
		return old->seq;
	if (bpf_core_field_exists(ns->ns.ns_id))
		return ns->ns.ns_id;
	return 0;
}

/* The key of (op, @o) for the task described by @f, now.  k->op 0: no key. */
static __always_inline void hips_vc_key(struct hips_vc_ent *k, struct task_struct *t, __u32 op,
					const struct hips_facts *f, const struct hips_object *o)
{
	__u32 zero = 0;
	struct bastion_hips_state *st = bpf_map_lookup_elem(&hips_state, &zero);

	k->op = 0;
	if (!st)
		return;
	k->gen = *(volatile __u32 *)&st->active_gen;
	k->pol_epoch = *(volatile __u64 *)&st->epoch;
	k->ns_epoch = *(volatile __u64 *)&hips_ns_epoch;
	k->mnt_ns = hips_mnt_ns_id_btf(t);
	k->exe_ino = f->exe_ino;
	k->exe_dev = f->exe_dev;
	k->parent_exe_ino = f->parent_exe_ino;
	k->parent_exe_dev = f->parent_exe_dev;
	k->uid = f->uid;
	k->cgroup_id = f->cgroup_id;
	k->ino = o->ino;
	k->dev = o->dev;
	k->dentry = (__u64)o->dentry;
	k->mnt = (__u64)o->mnt;
	if (k->gen && k->mnt_ns && o->mnt)
		k->op = op;
}

static __always_inline struct hips_vc_ent *hips_vc_slot(struct hips_vc *vc,
							 const struct hips_vc_ent *k)
{
	/* by the inode alone: on a hit's path k->dentry is a pointer the verifier
	 * lets us compare but not shift */
	return &vc->e[(k->ino ^ (k->ino >> 7) ^ k->dev) & (HIPS_VC_WAYS - 1)];
}

static __always_inline bool hips_vc_hit(struct hips_vc *vc, const struct hips_vc_ent *k)
{
	const __u64 *a = (const __u64 *)hips_vc_slot(vc, k), *b = (const __u64 *)k;
	int i;

	if (!k->op)
		return false;
#pragma clang loop unroll(full)
	for (i = 0; i < (int)HIPS_VC_WORDS; i++)
		if (a[i] != b[i])
			return false;
	return true;
}

/* Store @k's silent allow @d when nothing moved while it was decided. */
static __always_inline bool hips_vc_store(struct hips_vc *vc, const struct hips_vc_ent *k,
					  const struct hips_decision *d)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	struct mount *m;
	__u32 zero = 0;
	struct bastion_hips_state *st;

	if (!k->op || d->action != BASTION_ACT_ALLOW || d->gen != k->gen)
		return false;
	m = container_of((struct vfsmount *)k->mnt, struct mount, mnt);
	if (BPF_CORE_READ(m, mnt_ns) != BPF_CORE_READ(t, nsproxy, mnt_ns))
		return false; /* a detached mount, or another namespace's */
	st = bpf_map_lookup_elem(&hips_state, &zero);
	if (!st || *(volatile __u32 *)&st->active_gen != k->gen ||
	    *(volatile __u64 *)&st->epoch != k->pol_epoch ||
	    *(volatile __u64 *)&hips_ns_epoch != k->ns_epoch)
		return false;
	*hips_vc_slot(vc, k) = *k;
	return true;
}

static __always_inline int lsm_file_path(__u32 op, struct dentry *dentry, struct vfsmount *mnt)
{
	struct hips_object o = {};

	obj_of_path(&o, dentry, mnt);
	return lsm_file(op, &o, dentry, mnt, 0);
}

/* A new name for the file or directory @old: a hard link, or a rename, to
 * @new_dentry (its parent is the directory that gets the name).  Refused
 * when the task's open-read or open-write decision for @old where it is now
 * is stricter than it would be under the new name: a hard link or a move
 * out of a protected directory object would give the data a name no rule
 * covers (issue 14 item 2).  Reported as that open-read/open-write decision
 * with the new name's path.  Only directory objects can be escaped this
 * way: a rule on the inode itself follows it to every name. */
static __always_inline int lsm_new_name(struct dentry *old, struct dentry *new_dentry)
{
	struct hips_object here = {}, there;
	struct hips_decision d_here, d_there;
	struct hips_facts f = {};
	__u32 op;

	obj_of_path(&here, old, NULL);
	there = here;
	there.dentry = new_dentry;
	hips_facts_current(&f);
#pragma clang loop unroll(full)
	for (op = BASTION_OP_OPEN_READ; op <= BASTION_OP_OPEN_WRITE; op++) {
		hips_decide(op, &f, &here, NULL, 0, &d_here);
		if (d_here.action <= BASTION_ACT_ALLOW)
			continue;
		hips_decide(op, &f, &there, NULL, 0, &d_there);
		if (d_there.action >= d_here.action)
			continue;
		hips_report_file(op, &d_here, BASTION_MECH_LSM, &here, new_dentry, NULL, 0);
		if (!hips_refuses(&d_here))
			continue;
		if (d_here.action == BASTION_ACT_KILL)
			bpf_send_signal(SIGKILL_);
		return -EPERM_;
	}
	return 0;
}

/* Create-like ops: the object is the directory that gets the new name. */
static __always_inline int lsm_create(struct inode *dir, struct dentry *dentry)
{
	struct hips_object o = {};

	o.ino = BPF_CORE_READ(dir, i_ino);
	o.dev = BPF_CORE_READ(dir, i_sb, s_dev);
	o.dentry = BPF_CORE_READ(dentry, d_parent);
	return lsm_file(BASTION_OP_CREATE, &o, dentry, NULL, 0);
}

/* A process object (ptrace, signal): the target's executable. */
static __always_inline int lsm_task(__u32 op, struct task_struct *t)
{
	struct file *exe = BPF_CORE_READ(t, mm, exe_file);
	struct hips_object o = {};
	struct dentry *dentry = NULL;
	struct vfsmount *mnt = NULL;

	if (exe) {
		dentry = BPF_CORE_READ(exe, f_path.dentry);
		mnt = BPF_CORE_READ(exe, f_path.mnt);
		obj_of_path(&o, dentry, mnt);
	}
	return lsm_file(op, &o, dentry, mnt, BPF_CORE_READ(t, tgid));
}

SEC("lsm/bprm_check_security")
int BPF_PROG(hips_bprm_check, struct linux_binprm *bprm, int ret)
{
	struct file *file;

	if (ret || hips_off())
		return ret;
	file = BPF_CORE_READ(bprm, file);
	return lsm_file_path(BASTION_OP_EXEC, BPF_CORE_READ(file, f_path.dentry),
			     BPF_CORE_READ(file, f_path.mnt));
}

/* The ops of an open: FMODE_READ is open-read, FMODE_WRITE or O_TRUNC
 * open-write (O_RDONLY|O_TRUNC truncates a file the task may write by its
 * mode and never carries FMODE_WRITE; since 6.2 its truncate goes through
 * file_truncate, not path_truncate).  O_RDWR is both: deciding it as
 * open-write alone let open(O_RDWR) read a file under "deny open-read".
 * hips_file_open decides (and caches) @op1; @op2, 0 when one op decides, is
 * decided by hips_file_open_rw, a second program on the same hook (two
 * decisions in one program took 6.1's verifier past 1,000,000 instructions).
 * Neither (open(2) with access mode 3) is open-read, as before. */
static __always_inline void open_ops(struct file *file, __u32 *op1, __u32 *op2)
{
	bool rd = file->f_mode & FMODE_READ_;
	bool wr = (file->f_mode & FMODE_WRITE_) || (file->f_flags & O_TRUNC_);

	*op1 = wr ? BASTION_OP_OPEN_WRITE : BASTION_OP_OPEN_READ;
	*op2 = (rd && wr) ? BASTION_OP_OPEN_READ : 0;
}

SEC("lsm/file_open")
int BPF_PROG(hips_file_open, struct file *file, int ret)
{
	struct task_struct *t;
	struct vfsmount *mnt;
	struct dentry *dentry;
	struct path fp = {};
	struct hips_object o = {};
	struct hips_facts f = {};
	struct hips_vc_ent k = {};
	struct hips_decision d;
	struct hips_vc *vc;
	struct inode *inode;
	__u32 op, op2;

	if (ret || !hips_active_gen())
		return ret;
	t = bpf_get_current_task_btf();
	open_ops(file, &op, &op2);
	inode = file->f_path.dentry->d_inode;
	o.ino = inode->i_ino;
	o.dev = inode->i_sb->s_dev;
	hips_facts_btf(t, &f);
	/* The hit: before the scope check (the deadline, the cgroup scope and the
	 * exempt lookup: five helper calls): a hit only ever allows, which is all
	 * an out-of-scope or exempt task gets, and an entry is only stored in
	 * scope.  The object's pointers are plain loads here (compared, never
	 * dereferenced); the miss takes them again with a probe read, as scalars
	 * for the walk and the report. */
	vc = bpf_task_storage_get(&hips_vcache, t, NULL, 0);
	if (vc) {
		o.dentry = file->f_path.dentry;
		o.mnt = file->f_path.mnt;
		hips_vc_key(&k, t, op, &f, &o);
		if (hips_vc_hit(vc, &k)) {
			hips_stat_add(op * 8 + BASTION_HIPS_STAT_VC_HIT_ACT);
			return 0;
		}
	}
	if (!hips_in_scope())
		return 0;
	/* the pointers as plain numbers (one read): they are stored in the task's
	 * storage and walked with probe reads */
	BPF_CORE_READ_INTO(&fp, file, f_path);
	dentry = fp.dentry;
	mnt = fp.mnt;
	o.dentry = dentry;
	o.mnt = mnt;
	if (!vc)
		vc = bpf_task_storage_get(&hips_vcache, t, NULL, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (vc) {
		hips_vc_key(&k, t, op, &f, &o);
		hips_stat_add(BASTION_HIPS_STAT_VC_MISS);
	}
	hips_decide(op, &f, &o, NULL, 0, &d);
	/* not an exec's open of its image: the exec changes the facts, the entry
	 * would never hit and would evict one that can */
	if (vc && !(file->f_mode & FMODE_EXEC_) && hips_vc_store(vc, &k, &d))
		hips_stat_add(BASTION_HIPS_STAT_VC_STORE);
	hips_report_file(op, &d, BASTION_MECH_LSM, &o, dentry, mnt, 0);
	if (!hips_refuses(&d))
		return 0;
	if (d.action == BASTION_ACT_KILL)
		bpf_send_signal(SIGKILL_);
	return -EPERM_;
}

/* The read side of a read-write (or O_RDONLY|O_TRUNC) open, after
 * hips_file_open allowed its write side (@ret: a refusal is passed on).  Not
 * cached: such opens are rarer, and the write side's entry says nothing of
 * the read.  The op first (two plain loads): a read-only or write-only open
 * returns before the scope check. */
SEC("lsm/file_open")
int BPF_PROG(hips_file_open_rw, struct file *file, int ret)
{
	__u32 op, op2;

	if (ret)
		return ret;
	open_ops(file, &op, &op2);
	if (!op2 || hips_off())
		return 0;
	return lsm_file_path(op2, BPF_CORE_READ(file, f_path.dentry),
			     BPF_CORE_READ(file, f_path.mnt));
}

SEC("lsm/path_truncate")
int BPF_PROG(hips_path_truncate, const struct path *path, int ret)
{
	if (ret || hips_off())
		return ret;
	return lsm_file_path(BASTION_OP_OPEN_WRITE, BPF_CORE_READ(path, dentry),
			     BPF_CORE_READ(path, mnt));
}

SEC("lsm/inode_create")
int BPF_PROG(hips_inode_create, struct inode *dir, struct dentry *dentry)
{
	if (hips_off())
		return 0;
	return lsm_create(dir, dentry);
}

SEC("lsm/inode_mkdir")
int BPF_PROG(hips_inode_mkdir, struct inode *dir, struct dentry *dentry)
{
	if (hips_off())
		return 0;
	return lsm_create(dir, dentry);
}

SEC("lsm/inode_mknod")
int BPF_PROG(hips_inode_mknod, struct inode *dir, struct dentry *dentry)
{
	if (hips_off())
		return 0;
	return lsm_create(dir, dentry);
}

SEC("lsm/inode_symlink")
int BPF_PROG(hips_inode_symlink, struct inode *dir, struct dentry *dentry)
{
	if (hips_off())
		return 0;
	return lsm_create(dir, dentry);
}

SEC("lsm/inode_link")
int BPF_PROG(hips_inode_link, struct dentry *old_dentry, struct inode *dir,
	     struct dentry *new_dentry)
{
	int err;

	if (hips_off())
		return 0;
	err = lsm_new_name(old_dentry, new_dentry);
	if (err)
		return err;
	return lsm_create(dir, new_dentry);
}

SEC("lsm/inode_unlink")
int BPF_PROG(hips_inode_unlink, struct inode *dir, struct dentry *dentry)
{
	hips_ns_changed();
	if (hips_off())
		return 0;
	return lsm_file_path(BASTION_OP_UNLINK, dentry, NULL);
}

SEC("lsm/inode_rmdir")
int BPF_PROG(hips_inode_rmdir, struct inode *dir, struct dentry *dentry)
{
	hips_ns_changed();
	if (hips_off())
		return 0;
	return lsm_file_path(BASTION_OP_UNLINK, dentry, NULL);
}

SEC("lsm/inode_rename")
int BPF_PROG(hips_inode_rename, struct inode *old_dir, struct dentry *old_dentry,
	     struct inode *new_dir, struct dentry *new_dentry)
{
	struct hips_object o = {};
	int err;

	hips_ns_changed();
	if (hips_off())
		return 0;
	err = lsm_file_path(BASTION_OP_RENAME, old_dentry, NULL);
	if (err)
		return err;
	err = lsm_new_name(old_dentry, new_dentry);
	if (err)
		return err;
	/* Renaming over an existing name replaces that file: it is a write of
	 * its contents and an unlink of its name (issue 13 item 7: `mv t
	 * /etc/shadow` must not get around "deny open-write /etc/shadow"). */
	if (BPF_CORE_READ(new_dentry, d_inode)) {
		err = lsm_file_path(BASTION_OP_OPEN_WRITE, new_dentry, NULL);
		if (err)
			return err;
		err = lsm_file_path(BASTION_OP_UNLINK, new_dentry, NULL);
		if (err)
			return err;
	}
	o.ino = BPF_CORE_READ(new_dir, i_ino);
	o.dev = BPF_CORE_READ(new_dir, i_sb, s_dev);
	o.dentry = BPF_CORE_READ(new_dentry, d_parent);
	return lsm_file(BASTION_OP_RENAME, &o, new_dentry, NULL, 0);
}

/* Changes of the dentry tree and the mounts: the open-verdict cache's
 * namespace epoch, for every task (no scope, no decision). */
SEC("lsm/sb_mount")
int BPF_PROG(hips_sb_mount, const char *dev_name, const struct path *path, const char *type,
	     unsigned long flags, void *data, int ret)
{
	hips_ns_changed();
	return ret;
}

SEC("lsm/move_mount")
int BPF_PROG(hips_move_mount, const struct path *from_path, const struct path *to_path, int ret)
{
	hips_ns_changed();
	return ret;
}

SEC("lsm/sb_umount")
int BPF_PROG(hips_sb_umount, struct vfsmount *mnt, int flags, int ret)
{
	hips_ns_changed();
	return ret;
}

SEC("lsm/sb_pivotroot")
int BPF_PROG(hips_sb_pivotroot, const struct path *old_path, const struct path *new_path, int ret)
{
	hips_ns_changed();
	return ret;
}

SEC("lsm/d_instantiate")
int BPF_PROG(hips_d_instantiate, struct dentry *dentry, struct inode *inode)
{
	hips_ns_changed();
	return 0;
}

SEC("lsm/inode_setattr")
int BPF_PROG(hips_inode_setattr)
{
	struct dentry *dentry;
	struct iattr *attr;

	if (hips_off())
		return 0;
	setattr_args(ctx, cfg_setattr_idmap, &dentry, &attr);
	if (!(BPF_CORE_READ(attr, ia_valid) & (ATTR_MODE_ | ATTR_UID_ | ATTR_GID_)))
		return 0;
	return lsm_file_path(BASTION_OP_CHMOD, dentry, NULL);
}

static __always_inline int lsm_sock(__u32 op, struct sockaddr *address, int addrlen)
{
	struct hips_facts f = {};
	struct hips_decision d;
	__u8 addr[16] = {};
	__u16 family = 0, port;

	if (addrlen < (int)sizeof(struct sockaddr_in))
		return 0;
	bpf_probe_read_kernel(&family, sizeof(family), &address->sa_family);
	if (family == AF_INET_) {
		struct sockaddr_in sin = {};

		bpf_probe_read_kernel(&sin, sizeof(sin), address);
		addr[10] = 0xff;
		addr[11] = 0xff;
		__builtin_memcpy(&addr[12], &sin.sin_addr.s_addr, 4);
		port = be16(sin.sin_port);
	} else if (family == AF_INET6_) {
		struct sockaddr_in6 sin6 = {};

		if (addrlen < (int)sizeof(struct sockaddr_in6))
			return 0;
		bpf_probe_read_kernel(&sin6, sizeof(sin6), address);
		__builtin_memcpy(addr, &sin6.sin6_addr, 16);
		port = be16(sin6.sin6_port);
	} else {
		return 0; /* AF_UNIX, AF_UNSPEC, ...: not a network object */
	}
	hips_facts_current(&f);
	hips_decide(op, &f, NULL, addr, port, &d);
	hips_report_net(op, &d, BASTION_MECH_LSM, family, port, addr, 0);
	if (!hips_refuses(&d))
		return 0;
	if (d.action == BASTION_ACT_KILL)
		bpf_send_signal(SIGKILL_);
	return -EPERM_;
}

SEC("lsm/socket_connect")
int BPF_PROG(hips_socket_connect, struct socket *sock, struct sockaddr *address, int addrlen,
	     int ret)
{
	if (ret || hips_off())
		return ret;
	return lsm_sock(BASTION_OP_CONNECT, address, addrlen);
}

SEC("lsm/socket_bind")
int BPF_PROG(hips_socket_bind, struct socket *sock, struct sockaddr *address, int addrlen,
	     int ret)
{
	if (ret || hips_off())
		return ret;
	return lsm_sock(BASTION_OP_BIND, address, addrlen);
}

SEC("lsm/ptrace_access_check")
int BPF_PROG(hips_ptrace, struct task_struct *child, unsigned int mode, int ret)
{
	if (ret || hips_off())
		return ret;
	/* ptrace attach and /proc/PID/mem; not the read-only /proc checks
	 * (readlink of /proc/PID/exe, environ), which would break ps/lsof. */
	if (!(mode & PTRACE_MODE_ATTACH_))
		return 0;
	return lsm_task(BASTION_OP_PTRACE, child);
}

SEC("lsm/task_kill")
int BPF_PROG(hips_task_kill, struct task_struct *p, struct kernel_siginfo *info, int sig,
	     const struct cred *cred, int ret)
{
	if (ret || sig == 0 || hips_off())
		return ret;
	return lsm_task(BASTION_OP_SIGNAL, p);
}
