// SPDX-License-Identifier: GPL-2.0
/* Scoped in-kernel deny (lsm tier): refuse opening or executing the inodes
 * in deny_inodes, only for tasks in cfg_cgroup_id (0 = every cgroup) and only
 * until cfg_deadline_ns (CLOCK_BOOTTIME; 0 = no deadline).  Tests always set
 * both, so a test that dies leaves nothing that denies beyond its scope. */
#include "path.h"

char LICENSE[] SEC("license") = "GPL";

#define EPERM_ 1

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_RDONLY_PROG);
	__type(key, struct bastion_inode_key);
	__type(value, struct bastion_inode_rule);
} deny_inodes SEC(".maps");

static __always_inline int check_file(struct file *file, __u32 hook)
{
	struct bastion_inode_key key = {};
	struct bastion_inode_rule *rule;
	struct bastion_lsm_deny_event *e;
	struct path fpath;

	key.ino = BPF_CORE_READ(file, f_inode, i_ino);
	key.dev = BPF_CORE_READ(file, f_inode, i_sb, s_dev);
	rule = bpf_map_lookup_elem(&deny_inodes, &key);
	if (!rule || rule->action != 1)
		return 0;
	e = RESERVE(struct bastion_lsm_deny_event, BASTION_EV_LSM_DENY);
	if (e) {
		e->hook = hook;
		e->ret = -EPERM_;
		e->ino = key.ino;
		e->dev = key.dev;
		e->rule_id = rule->rule_id;
		fpath = BPF_CORE_READ(file, f_path);
		if (path_to_str(&fpath, e->path))
			e->hdr.flags |= BASTION_F_TRUNC_PATH;
		SUBMIT(e);
	}
	return -EPERM_;
}

SEC("lsm/file_open")
int BPF_PROG(deny_file_open, struct file *file, int ret)
{
	if (ret || !in_scope())
		return ret;
	return check_file(file, BASTION_HOOK_FILE_OPEN);
}

SEC("lsm/bprm_check_security")
int BPF_PROG(deny_exec, struct linux_binprm *bprm, int ret)
{
	if (ret || !in_scope())
		return ret;
	return check_file(BPF_CORE_READ(bprm, file), BASTION_HOOK_BPRM_CHECK);
}
