/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The sensitive read set (issue 15.1): is an opened file a secret?  Keyed by
 * inode, so a hard link or a bind mount of /etc/shadow is the same secret;
 * a directory entry covers its subtree (BASTION_SENS_DEPTH levels up the
 * d_parent chain).  Other processes' /proc/<pid>/mem and environ are
 * recognised by name on procfs (their inodes come and go).  The cost on an
 * open outside the set: one fd lookup and at most DEPTH+1 hash lookups, no
 * ring reserve.  Shared by the tracepoint sensor and (issue 16) lsm/file_open. */
#ifndef BASTION_SENSITIVE_H
#define BASTION_SENSITIVE_H

#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BASTION_SENS_MAX);
	__type(key, struct bastion_inode_key);
	__type(value, struct bastion_sens_val);
} sens_inodes SEC(".maps");

/* 0 = the sensitive set is off (no lookups at all). */
const volatile __u32 cfg_sensitive = 0;

/* The verdict cache of the tracepoint sensor's read-open path (issue 16.6):
 * (file inode, its directory's inode, device) -> class and entry (class 0:
 * not sensitive), valid while sens_epoch[0] is what it was when the verdict
 * was computed.  The epoch moves whenever a verdict may change without the
 * key changing: user space after each change of sens_inodes, the kernel at
 * the exit of every rename (a directory moved into or out of a sensitive
 * subtree; the file's own directory is in the key).  A verdict computed
 * while the epoch moved is stored under the old epoch and never used. */
struct sens_cache_key {
	__u64 ino;
	__u64 dir_ino;
	__u32 dev;
	__u32 _pad;
};

struct sens_cache_val {
	__u64 epoch;
	__u32 sclass;
	__u32 sid;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct sens_cache_key);
	__type(value, struct sens_cache_val);
} sens_cache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sens_epoch SEC(".maps");

static __always_inline void sens_epoch_bump(void)
{
	__u32 zero = 0;
	__u64 *e = bpf_map_lookup_elem(&sens_epoch, &zero);

	if (e)
		__sync_fetch_and_add(e, 1);
}

#define PROC_SUPER_MAGIC_ 0x9fa0
#define S_IFMT_ 00170000
#define S_IFDIR_ 0040000

static __always_inline struct bastion_sens_val *sens_lookup(__u64 ino, __u32 dev)
{
	struct bastion_inode_key k = {};

	k.ino = ino;
	k.dev = dev;
	return bpf_map_lookup_elem(&sens_inodes, &k);
}

/* /proc/<pid>/{mem,environ} (or task/<tid>/...) of a process other than the caller. */
static __always_inline bool proc_mem_of_other(struct file *f, struct inode *inode)
{
	struct dentry *d = BPF_CORE_READ(f, f_path.dentry);
	struct qstr name = BPF_CORE_READ(d, d_name);
	struct proc_inode *pi;
	struct pid *pid;
	char n[8] = {};
	__u32 nr;

	if (name.len != 3 && name.len != 7)
		return false;
	bpf_probe_read_kernel(n, sizeof(n), name.name);
	if (!(name.len == 3 && n[0] == 'm' && n[1] == 'e' && n[2] == 'm') &&
	    !(name.len == 7 && n[0] == 'e' && n[1] == 'n' && n[2] == 'v' && n[3] == 'i' &&
	      n[4] == 'r' && n[5] == 'o' && n[6] == 'n'))
		return false;
	pi = container_of(inode, struct proc_inode, vfs_inode);
	pid = BPF_CORE_READ(pi, pid);
	if (!pid)
		return false;
	nr = BPF_CORE_READ(pid, numbers[0].nr);
	return nr && nr != (bpf_get_current_pid_tgid() >> 32) &&
	       nr != (__u32)bpf_get_current_pid_tgid();
}

/* The class and entry of @f in the sensitive set; false when it is not in it
 * (directories themselves are not reported: listing ~/.ssh reads no key).
 * procfs is told apart first (its files are never in the map); elsewhere the
 * file's own inode, then up to BASTION_SENS_DEPTH ancestors, stopping at the
 * file system's root. */
/* SENS_RD(p, field): one kernel load.  Tracepoint programs read through
 * bpf_probe_read_kernel (BPF_CORE_READ: a helper call per field); an object
 * whose programs get BTF-typed arguments (fentry, tp_btf: lsm_events.bpf.c)
 * defines BASTION_BTF_LOADS before including this header, and the same walk
 * is plain loads the verifier turns into fault-safe PROBE_MEM loads (no
 * helper call: issue 16, the read-open path of the hook sensor). */
#ifdef BASTION_BTF_LOADS
#define SENS_RD(p, field) ((p)->field)
#else
#define SENS_RD(p, field) BPF_CORE_READ(p, field)
#endif

static __always_inline bool sens_match(struct file *f, __u32 *sclass, __u32 *sid)
{
	struct bastion_sens_val *v;
	struct inode *inode;
	struct super_block *sb;
	struct dentry *d, *parent;
	__u32 dev;
	int i;

	if (!cfg_sensitive || !f)
		return false;
	inode = SENS_RD(f, f_inode);
	if (!inode || (SENS_RD(inode, i_mode) & S_IFMT_) == S_IFDIR_)
		return false;
	sb = SENS_RD(inode, i_sb);
	if (!sb)
		return false;
	if (SENS_RD(sb, s_magic) == PROC_SUPER_MAGIC_) {
		if (!proc_mem_of_other(f, inode))
			return false;
		*sclass = BASTION_SENS_PROC_MEM;
		*sid = 0;
		return true;
	}
	dev = SENS_RD(sb, s_dev);
	v = sens_lookup(SENS_RD(inode, i_ino), dev);
	d = SENS_RD(f, f_path.dentry);
	for (i = 0; i < BASTION_SENS_DEPTH && !v && d; i++) {
		struct inode *pi;

		parent = SENS_RD(d, d_parent);
		if (!parent || parent == d)
			break;
		d = parent;
		pi = SENS_RD(d, d_inode);
		if (!pi)
			break;
		v = sens_lookup(SENS_RD(pi, i_ino), dev);
	}
	if (!v)
		return false;
	*sclass = v->sens_class;
	*sid = v->sens_id;
	return true;
}

/* sens_match through the verdict cache (see sens_cache above): on a hit, the
 * file's inode, its directory and two map lookups instead of up to
 * BASTION_SENS_DEPTH + 1 lookups and the dentry walk. */
static __always_inline bool sens_match_cached(struct file *f, __u32 *sclass, __u32 *sid)
{
	struct sens_cache_key k = {};
	struct sens_cache_val nv = {}, *cv;
	struct inode *inode;
	struct super_block *sb;
	struct dentry *d, *parent;
	__u64 *ep, epoch;
	__u32 zero = 0;
	bool hit;

	if (!cfg_sensitive || !f)
		return false;
	ep = bpf_map_lookup_elem(&sens_epoch, &zero);
	if (!ep)
		return sens_match(f, sclass, sid);
	epoch = *(volatile __u64 *)ep;   /* before the verdict is computed */
	inode = SENS_RD(f, f_inode);
	sb = inode ? SENS_RD(inode, i_sb) : NULL;
	d = SENS_RD(f, f_path.dentry);
	parent = d ? SENS_RD(d, d_parent) : NULL;
	/* procfs verdicts depend on who opens (another process's mem): never cached */
	if (!sb || !parent || SENS_RD(sb, s_magic) == PROC_SUPER_MAGIC_)
		return sens_match(f, sclass, sid);
	k.ino = SENS_RD(inode, i_ino);
	k.dev = SENS_RD(sb, s_dev);
	k.dir_ino = BPF_CORE_READ(parent, d_inode, i_ino);
	cv = bpf_map_lookup_elem(&sens_cache, &k);
	if (cv && cv->epoch == epoch) {
		if (!cv->sclass)
			return false;
		*sclass = cv->sclass;
		*sid = cv->sid;
		return true;
	}
	hit = sens_match(f, sclass, sid);
	nv.epoch = epoch;
	nv.sclass = hit ? *sclass : 0;
	nv.sid = hit ? *sid : 0;
	if (!hit || nv.sclass)   /* a class 0 entry cannot be cached as sensitive */
		bpf_map_update_elem(&sens_cache, &k, &nv, BPF_ANY);
	return hit;
}

#ifndef BASTION_BTF_LOADS
/* sens_match_cached for the tracepoint sensor's read-open path (issue 16.5: on
 * the compat tier every read-open of the host pays it), the same verdict cache,
 * its key read in four bulk copies (a window of the struct file, of its inode,
 * of the super block, of the dentry) plus the directory's inode, instead of a
 * bpf_probe_read_kernel per field.  The field offsets are CO-RE constants; a
 * kernel where one lies beyond its window takes sens_match_cached (the check
 * folds away at load), and so does any copy that fails.  @fflags: the file's
 * f_flags (the caller drops O_PATH descriptors). */
#define SENS_WIN 112
#define SENS_OFF(type, field) ((__u32)bpf_core_field_offset(type, field))
#define SENS_WIN_OK(type, field, T) (SENS_OFF(type, field) + sizeof(T) <= SENS_WIN)
#define SENS_AT(w, type, field, T) (*(T *)((char *)(w) + SENS_OFF(type, field)))

static __always_inline bool sens_match_cached_win(struct file *f, __u32 *fflags, __u32 *sclass,
						  __u32 *sid)
{
	__u64 w[SENS_WIN / 8];
	struct sens_cache_key k = {};
	struct sens_cache_val nv = {}, *cv;
	struct inode *inode, *pi = NULL;
	struct super_block *sb;
	struct dentry *d, *parent;
	__u64 *ep, epoch;
	__u32 zero = 0;
	bool hit;

	if (!cfg_sensitive || !f)
		return false;
	if (!SENS_WIN_OK(struct file, f_inode, void *) || !SENS_WIN_OK(struct file, f_flags, __u32) ||
	    !SENS_WIN_OK(struct file, f_path.dentry, void *) ||
	    !SENS_WIN_OK(struct inode, i_mode, __u16) || !SENS_WIN_OK(struct inode, i_sb, void *) ||
	    !SENS_WIN_OK(struct inode, i_ino, __u64) ||
	    !SENS_WIN_OK(struct super_block, s_dev, __u32) ||
	    !SENS_WIN_OK(struct super_block, s_magic, __u64) ||
	    !SENS_WIN_OK(struct dentry, d_parent, void *) ||
	    bpf_probe_read_kernel(w, sizeof(w), f)) {
		*fflags = BPF_CORE_READ(f, f_flags);
		return sens_match_cached(f, sclass, sid);
	}
	*fflags = SENS_AT(w, struct file, f_flags, __u32);
	inode = SENS_AT(w, struct file, f_inode, struct inode *);
	d = SENS_AT(w, struct file, f_path.dentry, struct dentry *);
	ep = bpf_map_lookup_elem(&sens_epoch, &zero);
	if (!inode || !d || !ep)
		return sens_match(f, sclass, sid);
	epoch = *(volatile __u64 *)ep;   /* before the verdict is computed */
	if (bpf_probe_read_kernel(w, sizeof(w), inode))
		return sens_match(f, sclass, sid);
	if ((SENS_AT(w, struct inode, i_mode, __u16) & S_IFMT_) == S_IFDIR_)
		return false; /* as sens_match: directories themselves are not reported */
	sb = SENS_AT(w, struct inode, i_sb, struct super_block *);
	k.ino = SENS_AT(w, struct inode, i_ino, __u64);
	if (!sb || bpf_probe_read_kernel(w, sizeof(w), sb))
		return sens_match(f, sclass, sid);
	/* procfs verdicts depend on who opens (another process's mem): never cached */
	if (SENS_AT(w, struct super_block, s_magic, __u64) == PROC_SUPER_MAGIC_)
		return sens_match(f, sclass, sid);
	k.dev = SENS_AT(w, struct super_block, s_dev, __u32);
	if (bpf_probe_read_kernel(w, sizeof(w), d))
		return sens_match(f, sclass, sid);
	parent = SENS_AT(w, struct dentry, d_parent, struct dentry *);
	if (!parent ||
	    bpf_probe_read_kernel(&pi, sizeof(pi), (char *)parent + SENS_OFF(struct dentry, d_inode)) ||
	    !pi || bpf_probe_read_kernel(&k.dir_ino, sizeof(k.dir_ino),
					 (char *)pi + SENS_OFF(struct inode, i_ino)))
		return sens_match(f, sclass, sid);
	cv = bpf_map_lookup_elem(&sens_cache, &k);
	if (cv && cv->epoch == epoch) {
		if (!cv->sclass)
			return false;
		*sclass = cv->sclass;
		*sid = cv->sid;
		return true;
	}
	hit = sens_match(f, sclass, sid);
	nv.epoch = epoch;
	nv.sclass = hit ? *sclass : 0;
	nv.sid = hit ? *sid : 0;
	if (!hit || nv.sclass)   /* a class 0 entry cannot be cached as sensitive */
		bpf_map_update_elem(&sens_cache, &k, &nv, BPF_ANY);
	return hit;
}

/* The tracepoint sensor's BTF read-open path (s16-open: on the compat tier every
 * read-open of the host pays it).  @f comes from bpf_rdonly_cast, so every load
 * below is a plain PROBE_MEM load, no helper call.  The verdict cache is a
 * per-CPU array direct-mapped by a hash of (ino, dev): one inlined array lookup
 * and a compare of the whole key (file inode, its directory's inode, device) and
 * the epoch, where sens_cache was a jhash of the key and an LRU bucket walk.
 * Same validity rule as sens_cache (sens_epoch read before the verdict is
 * computed; procfs never cached).  A slot is only touched by this CPU's
 * tracepoint programs, which do not nest (bpf_prog_active). */
#define SENS_PSLOTS 8192   /* per CPU; a power of two */

struct sens_pslot {
	__u64 ino;
	__u64 dir_ino;
	__u64 epoch;
	__u32 dev;
	__u32 sclass;   /* 0: not sensitive */
	__u32 sid;
	__u32 valid;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SENS_PSLOTS);
	__type(key, __u32);
	__type(value, struct sens_pslot);
} sens_pcache SEC(".maps");

static __always_inline bool sens_match_btf(struct file *f, __u32 *sclass, __u32 *sid)
{
	struct inode *inode = f->f_inode, *pi;
	struct super_block *sb;
	struct dentry *d, *parent;
	struct sens_pslot *c;
	__u64 *ep, epoch, ino, dir_ino;
	__u32 zero = 0, slot, dev;
	bool hit;

	ep = bpf_map_lookup_elem(&sens_epoch, &zero);
	if (!inode || !ep)
		return sens_match(f, sclass, sid);
	epoch = *(volatile __u64 *)ep;   /* before the verdict is computed */
	if ((inode->i_mode & S_IFMT_) == S_IFDIR_)
		return false; /* as sens_match: directories themselves are not reported */
	sb = inode->i_sb;
	d = f->f_path.dentry;
	parent = d ? d->d_parent : NULL;
	pi = parent ? parent->d_inode : NULL;
	/* procfs verdicts depend on who opens (another process's mem): never cached */
	if (!sb || !pi || sb->s_magic == PROC_SUPER_MAGIC_)
		return sens_match(f, sclass, sid);
	ino = inode->i_ino;
	dev = sb->s_dev;
	dir_ino = pi->i_ino;
	slot = (__u32)(((ino ^ ((__u64)dev << 32)) * 0x9E3779B97F4A7C15ULL) >> 40) & (SENS_PSLOTS - 1);
	c = bpf_map_lookup_elem(&sens_pcache, &slot);
	if (!c)
		return sens_match(f, sclass, sid);
	if (c->valid && c->ino == ino && c->dir_ino == dir_ino && c->dev == dev && c->epoch == epoch) {
		if (!c->sclass)
			return false;
		*sclass = c->sclass;
		*sid = c->sid;
		return true;
	}
	hit = sens_match(f, sclass, sid);
	if (hit && !*sclass)   /* a class 0 entry cannot be cached as sensitive */
		return hit;
	c->ino = ino;
	c->dir_ino = dir_ino;
	c->dev = dev;
	c->epoch = epoch;
	c->sclass = hit ? *sclass : 0;
	c->sid = hit ? *sid : 0;
	c->valid = 1;
	return hit;
}
#endif /* !BASTION_BTF_LOADS */

#endif /* BASTION_SENSITIVE_H */
