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
	inode = BPF_CORE_READ(f, f_inode);
	if ((BPF_CORE_READ(inode, i_mode) & S_IFMT_) == S_IFDIR_)
		return false;
	sb = BPF_CORE_READ(inode, i_sb);
	if (BPF_CORE_READ(sb, s_magic) == PROC_SUPER_MAGIC_) {
		if (!proc_mem_of_other(f, inode))
			return false;
		*sclass = BASTION_SENS_PROC_MEM;
		*sid = 0;
		return true;
	}
	dev = BPF_CORE_READ(sb, s_dev);
	v = sens_lookup(BPF_CORE_READ(inode, i_ino), dev);
	d = BPF_CORE_READ(f, f_path.dentry);
	for (i = 0; i < BASTION_SENS_DEPTH && !v; i++) {
		parent = BPF_CORE_READ(d, d_parent);
		if (!parent || parent == d)
			break;
		d = parent;
		v = sens_lookup(BPF_CORE_READ(d, d_inode, i_ino), dev);
	}
	if (!v)
		return false;
	*sclass = v->sens_class;
	*sid = v->sens_id;
	return true;
}

#endif /* BASTION_SENSITIVE_H */
