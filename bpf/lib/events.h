/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Record builders shared by both event sensors: tp_events.bpf.c (syscall
 * tracepoints, compat tier) and lsm_events.bpf.c (LSM-hook functions and
 * tp_btf on kernel objects, lsm tier).  Same records, one place each. */
#ifndef BASTION_EVENTS_H
#define BASTION_EVENTS_H

#include "sock.h"
#include "sensitive.h"
#include "exectx.h"
#include "prov.h"

/* exec: after the new binary is bound (tp_btf/sched_process_exec), the same
 * program in both sensors.  By this point exec_binprm() has swapped
 * bprm->file for the interpreter and dropped the script's struct file (only
 * binfmt_misc's open-binary flag keeps it, as bprm->executable), so the
 * script is named by what the kernel opened first: bprm->filename (or the
 * descriptor behind /dev/fd/N). */
static __always_inline int emit_exec(struct task_struct *p, struct linux_binprm *bprm)
{
	struct bastion_exec_event *e;
	struct file *exe;
	struct mm_struct *mm;
	unsigned long arg_start, arg_end, len;
	struct path fpath;
	int fdn;

	bool exe_cut;

	if (!wanted(BASTION_EV_EXEC)) {
		prov_exec(p, bprm, NULL, false); /* provenance is kept for every process */
		return 0;
	}
	e = RESERVE(struct bastion_exec_event, BASTION_EV_EXEC);
	if (!e) {
		prov_exec(p, bprm, NULL, false);
		return 0;
	}
	exe = BPF_CORE_READ(bprm, file);
	e->exe_ino = BPF_CORE_READ(exe, f_inode, i_ino);
	e->exe_dev = BPF_CORE_READ(exe, f_inode, i_sb, s_dev);
	e->exe_nlink = BPF_CORE_READ(exe, f_inode, __i_nlink);
	if (e->exe_nlink == 0)
		e->hdr.flags |= BASTION_F_EXE_MEMFD;
	e->argc = BPF_CORE_READ(bprm, argc);
	fpath = BPF_CORE_READ(exe, f_path);
	exe_cut = path_to_str(&fpath, e->exe);
	if (exe_cut)
		e->hdr.flags |= BASTION_F_TRUNC_PATH;
	if (bpf_probe_read_kernel_str(e->filename, sizeof(e->filename),
				      BPF_CORE_READ(bprm, filename)) == sizeof(e->filename))
		e->hdr.flags |= BASTION_F_TRUNC_PATH;
	if (cwd_to_str(e->cwd))
		e->hdr.flags |= BASTION_F_TRUNC_PATH;

	/* ABI 1.4: exec context.  A script: binfmt_script/misc replaced bprm->interp
	 * (it was bprm->filename) with the interpreter; filename is the file the
	 * kernel opened first.  /dev/fd/N is a descriptor exec (AT_EMPTY_PATH,
	 * fexecve): resolve N, which is still open (a CLOEXEC one cannot run a
	 * script, and an ELF is bprm->file anyway). */
	e->script_ino = 0;
	e->script_dev = 0;
	e->script[0] = '\0';
	fdn = devfd_num(BPF_CORE_READ(bprm, filename));
	if (fdn >= 0)
		e->hdr.flags |= BASTION_F_EXEC_FD;
	if (BPF_CORE_READ(bprm, interp) != BPF_CORE_READ(bprm, filename)) {
		struct file *sf = fdn >= 0 ? fd_file(fdn) : NULL;

		e->hdr.flags |= BASTION_F_SCRIPT;
		if (sf) {
			e->script_ino = BPF_CORE_READ(sf, f_inode, i_ino);
			e->script_dev = BPF_CORE_READ(sf, f_inode, i_sb, s_dev);
			fpath = BPF_CORE_READ(sf, f_path);
			if (path_to_str(&fpath, e->script))
				e->hdr.flags |= BASTION_F_TRUNC_PATH;
		} else {
			__builtin_memcpy(e->script, e->filename, sizeof(e->script));
		}
	}
	fd_kind(0, &e->stdin_type, &e->stdin_ino);
	fd_kind(1, &e->stdout_type, &e->stdout_ino);
	e->_pad2 = 0;

	mm = BPF_CORE_READ(p, mm);
	if (env_scan(mm, e->env, &e->env_len))
		e->hdr.flags |= BASTION_F_TRUNC_ENV;
	arg_start = BPF_CORE_READ(mm, arg_start);
	arg_end = BPF_CORE_READ(mm, arg_end);
	len = arg_end - arg_start;
	if (len > BASTION_ARGV_LEN) {
		len = BASTION_ARGV_LEN;
		e->hdr.flags |= BASTION_F_TRUNC_ARGV;
	}
	if (bpf_probe_read_user(e->argv, len, (const void *)arg_start))
		len = 0;
	e->argv_len = len;
	prov_exec(p, bprm, e->exe, exe_cut); /* the exe's path built once, for both */
	SUBMIT(e);
	return 0;
}

static __always_inline int emit_fork(struct task_struct *child)
{
	struct bastion_fork_event *e;
	__u32 pid = BPF_CORE_READ(child, pid), tgid = BPF_CORE_READ(child, tgid);

	if (pid != tgid || !wanted(BASTION_EV_FORK))
		return 0; /* a new thread, not a new process */
	e = RESERVE(struct bastion_fork_event, BASTION_EV_FORK);
	if (!e)
		return 0;
	e->child_pid = pid;
	e->child_tgid = tgid;
	e->child_start_ns = BPF_CORE_READ(child, start_boottime);
	SUBMIT(e);
	return 0;
}

#define SIGNAL_GROUP_EXIT_ 0x00000004

static __always_inline int emit_exit(struct task_struct *p)
{
	struct bastion_exit_event *e;
	struct signal_struct *sig = BPF_CORE_READ(p, signal);

	/* Only when the last thread of the process goes. */
	if (BPF_CORE_READ(sig, live.counter) != 0 || !wanted(BASTION_EV_EXIT))
		return 0;
	e = RESERVE(struct bastion_exit_event, BASTION_EV_EXIT);
	if (!e)
		return 0;
	if (BPF_CORE_READ(sig, flags) & SIGNAL_GROUP_EXIT_)
		e->exit_code = BPF_CORE_READ(sig, group_exit_code);
	else
		e->exit_code = BPF_CORE_READ(p, exit_code);
	SUBMIT(e);
	return 0;
}

/* A file record with every field neutral; NULL (drop counted) on a full ring. */
static __always_inline struct bastion_file_event *file_event(__u32 op)
{
	struct bastion_file_event *e = RESERVE(struct bastion_file_event, BASTION_EV_FILE);

	if (!e)
		return NULL;
	e->op = op;
	e->open_flags = 0;
	e->mode = 0;
	e->owner_uid = (__u32)-1;
	e->owner_gid = (__u32)-1;
	e->dev = 0;
	e->ino = 0;
	e->path[0] = e->dir[0] = e->path2[0] = e->dir2[0] = '\0';
	e->sens_class = 0;
	e->sens_id = 0;
	return e;
}

/* A network record with every field neutral. */
static __always_inline struct bastion_net_event *net_event(__u32 op)
{
	struct bastion_net_event *e = RESERVE(struct bastion_net_event, BASTION_EV_NET);

	if (!e)
		return NULL;
	e->op = op;
	e->ret = 0;
	e->family = 0;
	e->protocol = 0;
	e->sport = 0;
	e->dport = 0;
	e->backlog = 0;
	e->_pad = 0;
	__builtin_memset(e->saddr, 0, sizeof(e->saddr));
	__builtin_memset(e->daddr, 0, sizeof(e->daddr));
	return e;
}

static __always_inline int kill_ev(__u32 syscall, __s32 target, __s32 tgid, __s32 sig)
{
	struct bastion_kill_event *e;

	if (sig == 0 || !wanted(BASTION_EV_KILL))
		return 0; /* signal 0 only probes for existence */
	e = RESERVE(struct bastion_kill_event, BASTION_EV_KILL);
	if (!e)
		return 0;
	e->target_pid = target;
	e->target_tgid = tgid;
	e->sig = sig;
	e->syscall = syscall;
	SUBMIT(e);
	return 0;
}

/* bpf() commands worth seeing: creation, loading, attaching, pinning and
 * writes; lookups and id walks are left out. */
#define BPF_CMD_MASK ((1ULL << BPF_MAP_CREATE) | (1ULL << BPF_MAP_UPDATE_ELEM) |            \
		      (1ULL << BPF_MAP_DELETE_ELEM) | (1ULL << BPF_PROG_LOAD) |              \
		      (1ULL << BPF_OBJ_PIN) | (1ULL << BPF_PROG_ATTACH) |                    \
		      (1ULL << BPF_PROG_DETACH) | (1ULL << BPF_RAW_TRACEPOINT_OPEN) |        \
		      (1ULL << BPF_BTF_LOAD) | (1ULL << BPF_MAP_FREEZE) |                    \
		      (1ULL << BPF_LINK_CREATE) | (1ULL << BPF_LINK_UPDATE) |                \
		      (1ULL << BPF_LINK_DETACH))

static __always_inline bool bpf_cmd_wanted(int cmd)
{
	return cmd >= 0 && cmd < 64 && (BPF_CMD_MASK & (1ULL << cmd)) && wanted(BASTION_EV_BPF);
}

/* A bpf() record from a union bpf_attr read by @rd (bpf_probe_read_user for
 * the syscall's argument, bpf_probe_read_kernel for the kernel's own copy). */
#define FILL_BPF_EVENT(e, cmd, attr, rd)                                                  \
	do {                                                                              \
		(e)->cmd = (cmd);                                                         \
		(e)->prog_type = 0;                                                       \
		(e)->map_type = 0;                                                        \
		(e)->attach_type = 0;                                                     \
		__builtin_memset((e)->name, 0, sizeof((e)->name));                        \
		/* union bpf_attr is uapi: its offsets are stable, no CO-RE needed */     \
		if ((cmd) == BPF_PROG_LOAD) {                                             \
			rd(&(e)->prog_type, 4, &(attr)->prog_type);                       \
			rd(&(e)->attach_type, 4, &(attr)->expected_attach_type);          \
			rd((e)->name, sizeof((e)->name), &(attr)->prog_name);             \
		} else if ((cmd) == BPF_MAP_CREATE) {                                     \
			rd(&(e)->map_type, 4, &(attr)->map_type);                         \
			rd((e)->name, sizeof((e)->name), &(attr)->map_name);              \
		} else if ((cmd) == BPF_LINK_CREATE) {                                    \
			rd(&(e)->attach_type, 4, &(attr)->link_create.attach_type);       \
		} else if ((cmd) == BPF_PROG_ATTACH || (cmd) == BPF_PROG_DETACH) {        \
			rd(&(e)->attach_type, 4, &(attr)->attach_type);                   \
		}                                                                         \
		(e)->name[15] = '\0';                                                     \
	} while (0)

static __always_inline int cred_ev(__u32 op, __u32 a0, __u32 a1, __u32 a2)
{
	struct bastion_cred_event *e;

	if (!wanted(BASTION_EV_CRED))
		return 0;
	e = RESERVE(struct bastion_cred_event, BASTION_EV_CRED);
	if (!e)
		return 0;
	e->op = op;
	e->a0 = a0;
	e->a1 = a1;
	e->a2 = a2;
	e->cap_effective = 0;
	e->cap_permitted = 0;
	SUBMIT(e);
	return 0;
}

#endif /* BASTION_EVENTS_H */
