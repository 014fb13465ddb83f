// SPDX-License-Identifier: GPL-2.0
/* HIPS enforcement, compat tier (no BPF LSM): tracepoints and cgroup socket
 * programs only, so it loads on kernels that refuse trampolines.
 *
 *  - task_subjects upkeep: exec (new image: exe, parent's exe), fork (the
 *    child runs its parent's image; its parent's exe is that image), exit.
 *  - EXEC: decided at sched_process_exec for the pre-exec image (recorded per
 *    thread at sys_enter_execve/execveat) and the new executable; refused =
 *    bpf_send_signal(SIGKILL): the process dies before any user code runs.
 *  - CONNECT (connect4/6, sendmsg4/6), BIND (bind4/6): cgroup sock_addr
 *    programs; refused = return 0 (the caller gets EPERM).  Kill: those
 *    programs may not call bpf_send_signal, so the kill is queued per thread
 *    and sent at the syscall's exit tracepoint (connect, bind, sendto,
 *    sendmsg, sendmmsg), before the caller runs another instruction. */
#include "hips.h"
#include "sock.h"

char LICENSE[] SEC("license") = "GPL";

/* The image that called execve, per thread id (the caller's tid; after a
 * multithreaded exec the tracepoint gives it as old_pid). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct hips_facts);
} exec_pre SEC(".maps");

/* Threads whose socket call was refused with the KILL action. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u32);
} pending_kill SEC(".maps");

/* ------------------------------------------------------------------ */
/* task_subjects upkeep (always, whatever the scope)                   */

static __always_inline void record_pre_exec(void)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id, tgid = id >> 32;
	struct bastion_task_subject *ts;
	struct hips_facts f = {};

	if (!hips_active_gen() || !in_scope())
		return;
	/* The image that calls execve: task_subjects has it (kept at every exec and
	 * fork since this object loaded) -- one lookup instead of four dependent reads;
	 * a process older than the object has none: read it.  The parent's exe is
	 * read live, as the lsm tier does (a reparented task's parent changes).  uid
	 * and cgroup are taken at sched_process_exec. */
	ts = bpf_map_lookup_elem(&task_subjects, &tgid);
	if (ts) {
		f.exe_ino = ts->exe_ino;
		f.exe_dev = ts->exe_dev;
	} else {
		task_exe(t, &f.exe_ino, &f.exe_dev);
	}
	task_exe(BPF_CORE_READ(t, real_parent), &f.parent_exe_ino, &f.parent_exe_dev);
	f.exempt = hips_current_exempt(); /* the agent's image, before the exec replaces it */
	bpf_map_update_elem(&exec_pre, &tid, &f, BPF_ANY);
}

SEC("tracepoint/syscalls/sys_enter_execve")
int hips_enter_execve(void *ctx)
{
	record_pre_exec();
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_execveat")
int hips_enter_execveat(void *ctx)
{
	record_pre_exec();
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(hips_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 tgid = BPF_CORE_READ(p, tgid), old = old_pid;
	struct bastion_task_subject ts = {}, *prev;
	struct file *exe = BPF_CORE_READ(bprm, file);
	struct hips_facts f = {}, *pre;
	struct hips_object o = {};
	struct hips_decision d;
	bool decide;

	/* Facts of the pre-exec image, before task_subjects moves on. */
	decide = in_scope() && hips_active_gen();
	if (decide) {
		pre = bpf_map_lookup_elem(&exec_pre, &old);
		if (pre) {
			f = *pre;
			bpf_map_delete_elem(&exec_pre, &old);
			if (f.exempt)
				decide = false;
		} else {
			prev = bpf_map_lookup_elem(&task_subjects, &tgid);
			if (prev && hips_ident_exempt(tgid, prev->start_ns, prev->exe_ino,
						      prev->exe_dev))
				decide = false;
			if (prev) {
				f.exe_ino = prev->exe_ino;
				f.exe_dev = prev->exe_dev;
				f.parent_exe_ino = prev->parent_exe_ino;
				f.parent_exe_dev = prev->parent_exe_dev;
			}
		}
		f.uid = (__u32)bpf_get_current_uid_gid();
		f.cgroup_id = bpf_get_current_cgroup_id();
	}

	ts.exe_ino = BPF_CORE_READ(exe, f_inode, i_ino);
	ts.exe_dev = BPF_CORE_READ(exe, f_inode, i_sb, s_dev);
	task_exe(BPF_CORE_READ(p, real_parent), &ts.parent_exe_ino, &ts.parent_exe_dev);
	ts.start_ns = BPF_CORE_READ(p, group_leader, start_boottime);
	bpf_map_update_elem(&task_subjects, &tgid, &ts, BPF_ANY);

	if (!decide)
		return 0;
	o.ino = ts.exe_ino;
	o.dev = ts.exe_dev;
	o.dentry = BPF_CORE_READ(exe, f_path.dentry);
	o.mnt = BPF_CORE_READ(exe, f_path.mnt);
	hips_decide(BASTION_OP_EXEC, &f, &o, NULL, 0, &d);
	if (hips_refuses(&d))
		bpf_send_signal(SIGKILL_);
	hips_report_file(BASTION_OP_EXEC, &d, BASTION_MECH_EXEC_KILL, &o, o.dentry, o.mnt, 0);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(hips_fork, struct task_struct *parent, struct task_struct *child)
{
	struct bastion_task_subject ts = {}, *pts;
	__u32 pid = BPF_CORE_READ(child, pid), tgid = BPF_CORE_READ(child, tgid);
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	struct task_struct *rp;

	if (pid != tgid)
		return 0; /* a thread */
	/* The child runs the parent's image: the parent's entry has it (kept at its
	 * exec and fork) -- one lookup instead of four dependent reads per fork; a
	 * parent older than this object has none: read it. */
	pts = bpf_map_lookup_elem(&task_subjects, &ptgid);
	if (pts) {
		ts.exe_ino = pts->exe_ino;
		ts.exe_dev = pts->exe_dev;
	} else {
		task_exe(parent, &ts.exe_ino, &ts.exe_dev);
	}
	/* Its parent's exe is its real parent's (as the lsm tier and /proc see it):
	 * the same image unless CLONE_PARENT made it the forker's parent. */
	rp = BPF_CORE_READ(child, real_parent);
	if (BPF_CORE_READ(rp, tgid) == ptgid) {
		ts.parent_exe_ino = ts.exe_ino;
		ts.parent_exe_dev = ts.exe_dev;
	} else {
		task_exe(rp, &ts.parent_exe_ino, &ts.parent_exe_dev);
	}
	ts.start_ns = BPF_CORE_READ(child, start_boottime);
	bpf_map_update_elem(&task_subjects, &tgid, &ts, BPF_ANY);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(hips_exit, struct task_struct *p)
{
	__u32 tgid = BPF_CORE_READ(p, tgid);

	if (BPF_CORE_READ(p, signal, live.counter) != 0)
		return 0; /* not the last thread */
	bpf_map_delete_elem(&task_subjects, &tgid);
	return 0;
}

/* ------------------------------------------------------------------ */
/* network: cgroup sock_addr programs                                  */

static __always_inline int hips_sock(struct bpf_sock_addr *ctx, __u32 op, bool v6)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32, one = 1;
	struct bastion_task_subject *ts;
	struct hips_facts f = {};
	struct hips_decision d;
	__u8 addr[16] = {};
	__u16 port, family;

	if (!hips_active_gen() || !in_scope())
		return 1;
	ts = bpf_map_lookup_elem(&task_subjects, &tgid);
	/* the agent, by identity (no task pointer in sock_addr programs on 6.1) */
	if (ts && hips_ident_exempt(tgid, ts->start_ns, ts->exe_ino, ts->exe_dev))
		return 1;
	if (ts) {
		f.exe_ino = ts->exe_ino;
		f.exe_dev = ts->exe_dev;
		f.parent_exe_ino = ts->parent_exe_ino;
		f.parent_exe_dev = ts->parent_exe_dev;
	}
	f.uid = (__u32)bpf_get_current_uid_gid();
	f.cgroup_id = bpf_get_current_cgroup_id();
	port = be16((__u16)ctx->user_port);
	if (v6) {
		__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1];
		__u32 w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];

		__builtin_memcpy(&addr[0], &w0, 4);
		__builtin_memcpy(&addr[4], &w1, 4);
		__builtin_memcpy(&addr[8], &w2, 4);
		__builtin_memcpy(&addr[12], &w3, 4);
		family = AF_INET6_;
	} else {
		__u32 ip = ctx->user_ip4;

		addr[10] = 0xff;
		addr[11] = 0xff;
		__builtin_memcpy(&addr[12], &ip, 4);
		family = AF_INET_;
	}
	hips_decide(op, &f, NULL, addr, port, &d);
	hips_report_net(op, &d, BASTION_MECH_CGROUP_SOCK, family, port, addr, 0);
	if (!hips_refuses(&d))
		return 1;
	if (d.action == BASTION_ACT_KILL)
		bpf_map_update_elem(&pending_kill, &pid_tgid, &one, BPF_ANY);
	return 0;
}

SEC("cgroup/connect4")
int hips_connect4(struct bpf_sock_addr *ctx)
{
	return hips_sock(ctx, BASTION_OP_CONNECT, false);
}

SEC("cgroup/connect6")
int hips_connect6(struct bpf_sock_addr *ctx)
{
	return hips_sock(ctx, BASTION_OP_CONNECT, true);
}

SEC("cgroup/sendmsg4")
int hips_sendmsg4(struct bpf_sock_addr *ctx)
{
	return hips_sock(ctx, BASTION_OP_CONNECT, false);
}

SEC("cgroup/sendmsg6")
int hips_sendmsg6(struct bpf_sock_addr *ctx)
{
	return hips_sock(ctx, BASTION_OP_CONNECT, true);
}

SEC("cgroup/bind4")
int hips_bind4(struct bpf_sock_addr *ctx)
{
	return hips_sock(ctx, BASTION_OP_BIND, false);
}

SEC("cgroup/bind6")
int hips_bind6(struct bpf_sock_addr *ctx)
{
	return hips_sock(ctx, BASTION_OP_BIND, true);
}

/* The queued kill of a refused socket call, at that syscall's exit. */
static __always_inline void kill_pending(void)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	if (!bpf_map_lookup_elem(&pending_kill, &pid_tgid))
		return;
	bpf_map_delete_elem(&pending_kill, &pid_tgid);
	bpf_send_signal(SIGKILL_);
}

SEC("tracepoint/syscalls/sys_exit_connect")
int hips_exit_connect(void *ctx)
{
	kill_pending();
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_bind")
int hips_exit_bind(void *ctx)
{
	kill_pending();
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_sendto")
int hips_exit_sendto(void *ctx)
{
	kill_pending();
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_sendmsg")
int hips_exit_sendmsg(void *ctx)
{
	kill_pending();
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_sendmmsg")
int hips_exit_sendmmsg(void *ctx)
{
	kill_pending();
	return 0;
}
