// SPDX-License-Identifier: GPL-2.0
/* Quarantine, compat tier (no BPF LSM): a process marked in `quarantined`
 * (and every descendant it forks afterwards) is killed with SIGKILL at its
 * next exec, write-intent open or connect.  The kill is sent at syscall
 * entry: no user instruction of the process runs after it; the syscall
 * itself may still complete (an O_TRUNC open truncates, a non-blocking
 * connect sends its SYN) — only the lsm tier refuses it.  Scoped by
 * cfg_cgroup_id, cfg_self_tgid and the dead-man cfg_deadline_ns. */
#include "quarantine.h"

char LICENSE[] SEC("license") = "GPL";

#define SIGKILL_ 9
#define O_ACCMODE_ 00000003
#define O_CREAT_ 00000100
#define O_TRUNC_ 00001000
#define WRITE_INTENT(f) (((f) & O_ACCMODE_) || ((f) & (O_CREAT_ | O_TRUNC_)))

#define ARG(ctx, i) (((struct trace_event_raw_sys_enter *)(ctx))->args[i])

static __always_inline int quar_kill(__u32 op, const char *upath)
{
	struct bastion_quarantine_val *v;

	if (!in_scope())
		return 0;
	v = quar_current();
	if (!v)
		return 0;
	bpf_send_signal(SIGKILL_);
	quar_report(op, BASTION_ACT_KILL, BASTION_MECH_EXEC_KILL, 0, v->incident, upath);
	return 0;
}

/* exec: at entry (the new program is never loaded) and, as a backstop, at
 * sched_process_exec (dies before any instruction of the new image). */
SEC("tracepoint/syscalls/sys_enter_execve")
int quar_enter_execve(void *ctx)
{
	return quar_kill(BASTION_OP_EXEC, (const char *)ARG(ctx, 0));
}

SEC("tracepoint/syscalls/sys_enter_execveat")
int quar_enter_execveat(void *ctx)
{
	return quar_kill(BASTION_OP_EXEC, (const char *)ARG(ctx, 1));
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(quar_on_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	return quar_kill(BASTION_OP_EXEC, NULL);
}

SEC("tracepoint/syscalls/sys_enter_openat")
int quar_enter_openat(void *ctx)
{
	if (!WRITE_INTENT(ARG(ctx, 2)))
		return 0;
	return quar_kill(BASTION_OP_OPEN_WRITE, (const char *)ARG(ctx, 1));
}

SEC("tracepoint/syscalls/sys_enter_open")
int quar_enter_open(void *ctx)
{
	if (!WRITE_INTENT(ARG(ctx, 1)))
		return 0;
	return quar_kill(BASTION_OP_OPEN_WRITE, (const char *)ARG(ctx, 0));
}

SEC("tracepoint/syscalls/sys_enter_creat")
int quar_enter_creat(void *ctx)
{
	return quar_kill(BASTION_OP_OPEN_WRITE, (const char *)ARG(ctx, 0));
}

SEC("tracepoint/syscalls/sys_enter_openat2")
int quar_enter_openat2(void *ctx)
{
	struct open_how how = {};

	bpf_probe_read_user(&how, sizeof(how), (const void *)ARG(ctx, 2));
	if (!WRITE_INTENT(how.flags))
		return 0;
	return quar_kill(BASTION_OP_OPEN_WRITE, (const char *)ARG(ctx, 1));
}

SEC("tracepoint/syscalls/sys_enter_connect")
int quar_enter_connect(void *ctx)
{
	return quar_kill(BASTION_OP_CONNECT, NULL);
}
