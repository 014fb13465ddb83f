// SPDX-License-Identifier: GPL-2.0
/* Tamper protection, compat tier (no BPF LSM): nothing can be refused in
 * the kernel here, so the attacker is killed (bpf_send_signal(SIGKILL)
 * from its own context) the moment it is seen, and reported with verdict
 * KILLED.  The operation itself still completes (a signal is delivered, a
 * map update lands): the guardian restarts/continues the agent and the
 * report says what ran.  Seen:
 *  - signals to the agent or its guardian (tp_btf/signal_generate: the
 *    target task is known, so identity is exact: kill, tkill, tgkill,
 *    pidfd_send_signal, kill(-1), process groups, and signals the kernel
 *    sends on behalf of the current task: SIGIO/F_SETSIG (si_code > 0),
 *    cgroup.kill and the like (no siginfo));
 *  - F_SETOWN/F_SETOWN_EX/FIOSETOWN/SIOCSPGRP naming them (the owner of a
 *    file gets its SIGIO/F_SETSIG signal: the attacker dies before O_ASYNC
 *    can fire), prlimit64 of them (RLIMIT_CPU's kernel SIGKILL, any other
 *    limit; the guardian puts the limits back), pidfd_getfd from them
 *    (stealing the guardian's fanotify descriptor);
 *  - ptrace attach/seize and process_vm_writev of them (by pid or thread
 *    id: the tracer dies before its first PTRACE_POKE);
 *  - open of /proc/<pid>/mem of them: by absolute path at entry, and by the
 *    opened file at exit (/proc/TID/mem, /proc/PID/task/TID/mem, "//",
 *    dirfd-relative: the opener dies before it can use the descriptor);
 *  - map update/delete/freeze of our maps and detach/update of our links
 *    (sys_enter_bpf; the fd is resolved to the kernel object id); a map
 *    ours create is ours from the return of its BPF_MAP_CREATE
 *    (sys_exit_bpf: tamper_born_ids), before user space enters its id.
 * Scope and dead-man: bpf/lib/tamper.h. */
#include "tamper.h"

char LICENSE[] SEC("license") = "GPL";

#define PTRACE_ATTACH_ 16
#define PTRACE_SEIZE_ 0x4206

#define CLONE_THREAD_ 0x00010000
#define F_SETOWN_ 8
#define F_SETOWN_EX_ 15
#define FIOSETOWN_ 0x8901
#define SIOCSPGRP_ 0x8902
#define PROC_SUPER_MAGIC_ 0x9fa0
#define PIDFS_MAGIC_ 0x50494446

/* Has the current process already been sent SIGKILL (by us, a moment ago)? */
static __always_inline bool sigkill_pending(void)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();

	return BPF_CORE_READ(t, signal, shared_pending.signal.sig[0]) & (1UL << (SIGKILL_ - 1));
}

static __always_inline void kill_current(__u32 op, __s32 target, __s64 arg,
					 const struct tamper_hit *hit)
{
	if (sigkill_pending())
		return;   /* one attempt, one report */
	bpf_send_signal(SIGKILL_);
	tamper_report(op, BASTION_TV_KILLED, 0, target, arg, hit, NULL, NULL);
}

/* Every harmful signal to ours from an attacker's context: sent by a
 * syscall (si_code <= 0) or by the kernel on the attacker's behalf
 * (SIGIO/F_SETSIG with si_code > 0, cgroup.kill and tty job control with no
 * siginfo).  Signals the kernel sends from our own context (a fault, a
 * CPU-time limit, SIGPIPE) have current == ours: not in scope. */
SEC("tp_btf/signal_generate")
int BPF_PROG(tamper_signal, int sig, struct kernel_siginfo *info, struct task_struct *task)
{
	if (!harmful_signal(sig) || !task_is_ours(task) || !current_in_scope())
		return 0;
	kill_current(BASTION_TAMPER_SIGNAL, BPF_CORE_READ(task, tgid), sig, NULL);
	return 0;
}

/* ---- the thread ids of ours (tamper_tids) ---- */

SEC("tp_btf/task_newtask")
int BPF_PROG(tamper_newtask, struct task_struct *task, __u64 clone_flags)
{
	__u32 tgid, tid;

	if (!(clone_flags & CLONE_THREAD_))
		return 0;
	tgid = BPF_CORE_READ(task, tgid);
	if (!bpf_map_lookup_elem(&tamper_idents, &tgid))
		return 0;
	tid = BPF_CORE_READ(task, pid);
	bpf_map_update_elem(&tamper_tids, &tid, &tgid, BPF_ANY);
	return 0;
}

/* The executable identity (see changes_exe_identity).  The prctl still runs
 * (no LSM here).  A caller that is not alone in its thread group, or that asks
 * for PR_SET_MM_EXE_FILE (root, CRIU only) or a PR_SET_MM_MAP with an exe_fd,
 * is killed at the prctl's entry: the SIGKILL reaches every thread before the
 * change is made, so no other thread of it acts under the borrowed identity
 * while the caller still waits in the kernel (s28 review 2).  Otherwise the
 * executable is taken at the entry and compared at the exit: a caller whose
 * mm->exe_file changed (its exe_fd was changed after the entry read it) dies on
 * its way back to user space, before any instruction of its runs as the other
 * program; a single-threaded PR_SET_MM_MAP that keeps the executable (exe_fd -1:
 * liblxc's setproctitle, criu check) runs.  Left (docs/threat-model.md): a
 * process sharing the mm by clone(CLONE_VM) without CLONE_THREAD (vfork, a clone
 * child, its parent) is not killed and runs on as the other program; and, as for
 * every syscall tracepoint here, a 64-bit program's ia32 (int $0x80) or x32
 * prctl is not seen (trace_get_syscall_nr is -1 for them; a kprobe on
 * replace_mm_exe_file would be, but this host kind's kernel has no kprobes). */
struct prctl_entry {
	__u64 exe;     /* mm->exe_file at entry */
	__u64 start;   /* the thread's start_boottime: a later thread with its id is not it */
	__s64 sub;     /* the PR_SET_MM sub-option */
};

/* Not an LRU: callers blocked on the mm's lock (thousands of threads of one
 * attacker) would evict each other's entries.  Full, the caller is killed at
 * entry instead (fail closed).  An entry whose exit was missed goes with its
 * thread (tamper_thread_exit). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);                 /* thread id */
	__type(value, struct prctl_entry);
} tamper_prctl_at SEC(".maps");

SEC("tp_btf/sched_process_exit")
int BPF_PROG(tamper_thread_exit, struct task_struct *p)
{
	__u32 tid = BPF_CORE_READ(p, pid);

	if (bpf_map_lookup_elem(&tamper_tids, &tid))
		bpf_map_delete_elem(&tamper_tids, &tid);
	if (bpf_map_lookup_elem(&tamper_prctl_at, &tid))
		bpf_map_delete_elem(&tamper_prctl_at, &tid);
	return 0;
}

/* ---- the kernel signals for us: owners, limits, stolen descriptors ---- */

static __always_inline int check_owner(__s64 owner, long cmd)
{
	__u32 pid = owner < 0 ? (__u32)-owner : (__u32)owner;   /* < 0: a process group */

	if (!pid_is_ours(pid) || !current_in_scope())
		return 0;
	kill_current(BASTION_TAMPER_SIGIO, pid, cmd, NULL);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_fcntl")
int tamper_fcntl(struct trace_event_raw_sys_enter *ctx)
{
	long cmd = ctx->args[1];
	int owner[2] = {};   /* struct f_owner_ex { int type; pid_t pid; } */

	if (cmd == F_SETOWN_)
		return check_owner((int)ctx->args[2], cmd);
	if (cmd != F_SETOWN_EX_ || bpf_probe_read_user(owner, sizeof(owner), (void *)ctx->args[2]))
		return 0;
	return check_owner(owner[1], cmd);
}

SEC("tracepoint/syscalls/sys_enter_ioctl")
int tamper_ioctl(struct trace_event_raw_sys_enter *ctx)
{
	long cmd = ctx->args[1];
	int owner = 0;

	if (cmd != FIOSETOWN_ && cmd != SIOCSPGRP_)
		return 0;
	if (bpf_probe_read_user(&owner, sizeof(owner), (void *)ctx->args[2]))
		return 0;
	return check_owner(owner, cmd);
}

SEC("tracepoint/syscalls/sys_enter_prlimit64")
int tamper_prlimit(struct trace_event_raw_sys_enter *ctx)
{
	__u32 pid = (__u32)ctx->args[0];

	if (!ctx->args[2] || !pid_is_ours(pid) || !current_in_scope())
		return 0;   /* a read (no new limit), or not ours */
	kill_current(BASTION_TAMPER_PRLIMIT, pid, ctx->args[1], NULL);
	return 0;
}

static __always_inline __u64 current_exe_file(void)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();

	return (__u64)BPF_CORE_READ(t, mm, exe_file);
}

static __always_inline __u64 current_start(void)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();

	return BPF_CORE_READ(t, start_boottime);
}

/* Must the caller die before its prctl runs (see above)? */
static __always_inline bool kill_before_change(int sub, unsigned long arg3)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();

	return sub == PR_SET_MM_EXE_FILE_ || BPF_CORE_READ(t, signal, nr_threads) > 1 ||
	       !mm_map_keeps_exe(arg3);
}

SEC("tracepoint/syscalls/sys_enter_prctl")
int tamper_prctl(struct trace_event_raw_sys_enter *ctx)
{
	struct prctl_entry e = {};
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	if (!changes_exe_identity((int)ctx->args[0], ctx->args[1]) || !current_in_scope())
		return 0;
	e.exe = current_exe_file();
	e.start = current_start();
	e.sub = (int)ctx->args[1];
	if (kill_before_change((int)e.sub, ctx->args[2]) ||
	    bpf_map_update_elem(&tamper_prctl_at, &tid, &e, BPF_ANY))
		kill_current(BASTION_TAMPER_EXE_IDENTITY, 0, e.sub, NULL);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_prctl")
int tamper_prctl_ret(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct prctl_entry *e = bpf_map_lookup_elem(&tamper_prctl_at, &tid);
	struct prctl_entry got;

	if (!e)
		return 0;
	got = *e;
	bpf_map_delete_elem(&tamper_prctl_at, &tid);
	if (got.start == current_start() && current_exe_file() != got.exe)
		kill_current(BASTION_TAMPER_EXE_IDENTITY, 0, got.sub | BASTION_EXE_ID_CHANGED, NULL);
	return 0;
}

/* The process a pidfd names: struct pid in the pidfs inode (6.9+) or the
 * anon file's private data (before). */
static __always_inline __u32 pidfd_pid_nr(int fd)
{
	struct file *f = fd_file(fd);
	struct inode *inode;
	struct pid *pid;

	if (!f)
		return 0;
	inode = BPF_CORE_READ(f, f_inode);
	if (BPF_CORE_READ(inode, i_sb, s_magic) == PIDFS_MAGIC_)
		pid = BPF_CORE_READ(inode, i_private);
	else
		pid = BPF_CORE_READ(f, private_data);
	if (!pid)
		return 0;
	return BPF_CORE_READ(pid, numbers[0].nr);
}

SEC("tracepoint/syscalls/sys_enter_pidfd_getfd")
int tamper_pidfd_getfd(struct trace_event_raw_sys_enter *ctx)
{
	__u32 pid = pidfd_pid_nr((int)ctx->args[0]);

	if (!pid_is_ours(pid) || !current_in_scope())
		return 0;
	kill_current(BASTION_TAMPER_PIDFD_GETFD, pid, ctx->args[1], NULL);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_ptrace")
int tamper_ptrace(struct trace_event_raw_sys_enter *ctx)
{
	long req = ctx->args[0];
	__u32 pid = (__u32)ctx->args[1];

	if ((req != PTRACE_ATTACH_ && req != PTRACE_SEIZE_) || !pid_is_ours(pid) || !current_in_scope())
		return 0;
	kill_current(BASTION_TAMPER_PTRACE, pid, req, NULL);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_process_vm_writev")
int tamper_vm_writev(struct trace_event_raw_sys_enter *ctx)
{
	__u32 pid = (__u32)ctx->args[0];

	if (!pid_is_ours(pid) || !current_in_scope())
		return 0;
	kill_current(BASTION_TAMPER_VM_WRITE, pid, 0, NULL);
	return 0;
}

/* "/proc/<pid>/mem" -> pid, else 0. */
static __always_inline __u32 proc_mem_pid(const char *upath)
{
	char b[32] = {};
	__u32 pid = 0;
	int i;

	if (bpf_probe_read_user_str(b, sizeof(b), upath) < 11)
		return 0;
	if (b[0] != '/' || b[1] != 'p' || b[2] != 'r' || b[3] != 'o' || b[4] != 'c' || b[5] != '/')
		return 0;
#pragma unroll
	for (i = 6; i < 17; i++) {
		char c = b[i];

		if (c >= '0' && c <= '9') {
			pid = pid * 10 + (c - '0');
			continue;
		}
		if (c == '/' && i > 6 && i + 4 < (int)sizeof(b) && b[i + 1] == 'm' && b[i + 2] == 'e' &&
		    b[i + 3] == 'm' && b[i + 4] == '\0')
			return pid;
		return 0;
	}
	return 0;
}

static __always_inline int check_open(const char *upath)
{
	__u32 pid = proc_mem_pid(upath);

	if (!pid_is_ours(pid) || !current_in_scope())
		return 0;
	kill_current(BASTION_TAMPER_PROC_MEM, pid, 0, NULL);
	return 0;
}

/* The opened file is /proc/<pid or tid>/mem of ours (however it was named)? */
static __always_inline __u32 proc_mem_file_pid(int fd)
{
	struct file *f = fd_file(fd);
	struct inode *inode;
	struct pid *pid;
	char name[4] = {};
	void *pi;

	if (!f)
		return 0;
	inode = BPF_CORE_READ(f, f_inode);
	if (BPF_CORE_READ(inode, i_sb, s_magic) != PROC_SUPER_MAGIC_)
		return 0;
	bpf_probe_read_kernel_str(name, sizeof(name), BPF_CORE_READ(f, f_path.dentry, d_name.name));
	if (name[0] != 'm' || name[1] != 'e' || name[2] != 'm' || name[3] != '\0')
		return 0;
	pi = (void *)inode - bpf_core_field_offset(struct proc_inode, vfs_inode);
	pid = BPF_CORE_READ((struct proc_inode *)pi, pid);
	if (!pid)
		return 0;
	return BPF_CORE_READ(pid, numbers[0].nr);
}

static __always_inline int check_opened(long ret)
{
	__u32 pid;

	if (ret < 0)
		return 0;
	pid = proc_mem_file_pid((int)ret);
	if (!pid_is_ours(pid) || !current_in_scope())
		return 0;
	kill_current(BASTION_TAMPER_PROC_MEM, pid, 0, NULL);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_openat")
int tamper_openat_ret(struct trace_event_raw_sys_exit *ctx)
{
	return check_opened(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_openat2")
int tamper_openat2_ret(struct trace_event_raw_sys_exit *ctx)
{
	return check_opened(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_open")
int tamper_open_ret(struct trace_event_raw_sys_exit *ctx)
{
	return check_opened(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_openat")
int tamper_openat(struct trace_event_raw_sys_enter *ctx)
{
	return check_open((const char *)ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_openat2")
int tamper_openat2(struct trace_event_raw_sys_enter *ctx)
{
	return check_open((const char *)ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_open")
int tamper_open(struct trace_event_raw_sys_enter *ctx)
{
	return check_open((const char *)ctx->args[0]);
}

#define BATCH_MAP_FD_OFF 36   /* offsetof(union bpf_attr, batch.map_fd) */

/* Ids of maps created by ours, entered by the kernel as the creating
 * bpf(BPF_MAP_CREATE) returns (before user space can know the id, let
 * alone enter it in tamper_map_ids): key map id, value the creator's tgid.
 * Written by the programs (not BPF_F_RDONLY_PROG); LRU: an old map's id is
 * in tamper_map_ids by then (the loader's hook). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} tamper_born_ids SEC(".maps");

/* Threads of ours inside bpf(BPF_MAP_CREATE): thread id -> 1, from entry to exit. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} tamper_creating SEC(".maps");

SEC("tracepoint/syscalls/sys_exit_bpf")
int tamper_bpf_ret(struct trace_event_raw_sys_exit *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid, tgid = pid_tgid >> 32, id;
	struct file *f;
	void *priv;

	if (!bpf_map_lookup_elem(&tamper_creating, &tid))
		return 0;
	bpf_map_delete_elem(&tamper_creating, &tid);
	if (ctx->ret < 0)
		return 0;
	f = fd_file((int)ctx->ret);   /* the new map's fd: task->files->fdt->fd[ret] */
	if (!f)
		return 0;
	priv = BPF_CORE_READ(f, private_data);
	if (!priv)
		return 0;
	id = BPF_CORE_READ((struct bpf_map *)priv, id);
	if (id)
		bpf_map_update_elem(&tamper_born_ids, &id, &tgid, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_bpf")
int tamper_bpf(struct trace_event_raw_sys_enter *ctx)
{
	int cmd = (int)ctx->args[0];
	const char *uattr = (const char *)ctx->args[1];
	struct tamper_hit hit = {};
	struct file *f;
	void *priv;
	__u32 fd = 0, id, op;
	bool link = false;

	if (cmd == BPF_MAP_CREATE) {
		__u32 tid = (__u32)bpf_get_current_pid_tgid(), one = 1;

		if (task_is_ours((struct task_struct *)bpf_get_current_task()))
			bpf_map_update_elem(&tamper_creating, &tid, &one, BPF_ANY);
		return 0;
	}
	switch (cmd) {
	case BPF_MAP_UPDATE_ELEM:
	case BPF_MAP_DELETE_ELEM:
	case BPF_MAP_LOOKUP_AND_DELETE_ELEM:
	case BPF_MAP_FREEZE:
		bpf_probe_read_user(&fd, sizeof(fd), uattr);
		break;
	case BPF_MAP_UPDATE_BATCH:
	case BPF_MAP_DELETE_BATCH:
	case BPF_MAP_LOOKUP_AND_DELETE_BATCH:
		bpf_probe_read_user(&fd, sizeof(fd), uattr + BATCH_MAP_FD_OFF);
		break;
	case BPF_LINK_DETACH:
	case BPF_LINK_UPDATE:
		bpf_probe_read_user(&fd, sizeof(fd), uattr);   /* link_fd is first in both */
		link = true;
		break;
	default:
		return 0;
	}
	f = fd_file((int)fd);
	if (!f)
		return 0;
	priv = BPF_CORE_READ(f, private_data);
	if (!priv)
		return 0;
	if (link) {
		id = BPF_CORE_READ((struct bpf_link *)priv, id);
		if (!bpf_map_lookup_elem(&tamper_link_ids, &id))
			return 0;
		op = BASTION_TAMPER_BPF_LINK;
	} else {
		id = BPF_CORE_READ((struct bpf_map *)priv, id);
		if (!bpf_map_lookup_elem(&tamper_map_ids, &id) &&
		    !bpf_map_lookup_elem(&tamper_born_ids, &id))
			return 0;
		op = BASTION_TAMPER_BPF_MAP;
	}
	if (!current_in_scope())
		return 0;
	hit.id = id;
	kill_current(op, 0, cmd, &hit);
	return 0;
}

SEC("tp_btf/cgroup_attach_task")
int BPF_PROG(tamper_cgroup_move, struct cgroup *dst, const char *path, struct task_struct *task)
{
	return tamper_cgroup_attach(task);
}
