// SPDX-License-Identifier: GPL-2.0
/* lsm tier: refuse BPF program loads except from allowlisted executables.
 *
 * The policy's integrity.bpf_loaders become inode keys in bpf_loaders; a
 * BPF_PROG_LOAD from any other executable gets -EPERM and an lsm_deny record
 * (hook BPF_PROG_LOAD, path = the loader's executable).  Scope and dead-man
 * deadline in .rodata as in lsm_scoped.bpf.c; the agent is exempt, and so
 * are its direct children that run the agent's own executable (the integrity
 * worker: `python -m bastion.integrity.worker`, spawned by the agent, loads
 * its KernelView iterators).  Neither the interpreter nor any generic loader
 * (bpftool) needs to be on the allowlist for that.  The guard is never
 * pinned: it ends with the agent's fds, so cfg_self_tgid cannot outlive the
 * agent and be reused.
 *
 * The bpf hook has 3 arguments on 6.1 and 4 on 6.18: only the common ones
 * are declared, and the previous program's return value is not read. */
#include "path.h"

char LICENSE[] SEC("license") = "GPL";

#define EPERM_ 1
#define BPF_PROG_LOAD_ 5

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_RDONLY_PROG);
	__type(key, struct bastion_inode_key);
	__type(value, __u32);
} bpf_loaders SEC(".maps");

/* A direct child of the agent (cfg_self_tgid) that runs the same executable
 * file as the agent: the agent's own workers. */
static __always_inline bool current_is_agents_worker(void)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	struct task_struct *parent;
	struct inode *mine, *agents;

	if (!cfg_self_tgid)
		return false;
	parent = BPF_CORE_READ(t, real_parent);
	if (!parent || BPF_CORE_READ(parent, tgid) != cfg_self_tgid)
		return false;
	mine = BPF_CORE_READ(t, mm, exe_file, f_inode);
	agents = BPF_CORE_READ(parent, mm, exe_file, f_inode);
	return mine && mine == agents;
}

SEC("lsm/bpf")
int BPF_PROG(guard_bpf, int cmd, union bpf_attr *attr, unsigned int size)
{
	struct task_struct *task;
	struct file *exe;
	struct bastion_inode_key key = {};
	struct bastion_lsm_deny_event *e;
	struct path fpath;

	if (cmd != BPF_PROG_LOAD_ || !in_scope() || current_is_agents_worker())
		return 0;
	task = (struct task_struct *)bpf_get_current_task();
	exe = BPF_CORE_READ(task, mm, exe_file);
	if (!exe)
		return 0; /* kernel threads */
	key.ino = BPF_CORE_READ(exe, f_inode, i_ino);
	key.dev = BPF_CORE_READ(exe, f_inode, i_sb, s_dev);
	if (bpf_map_lookup_elem(&bpf_loaders, &key))
		return 0;
	e = RESERVE(struct bastion_lsm_deny_event, BASTION_EV_LSM_DENY);
	if (e) {
		e->hook = BASTION_HOOK_BPF_PROG_LOAD;
		e->ret = -EPERM_;
		e->ino = key.ino;
		e->dev = key.dev;
		e->rule_id = 0;
		fpath = BPF_CORE_READ(exe, f_path);
		if (path_to_str(&fpath, e->path))
			e->hdr.flags |= BASTION_F_TRUNC_PATH;
		SUBMIT(e);
	}
	return -EPERM_;
}
