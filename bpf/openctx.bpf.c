// SPDX-License-Identifier: GPL-2.0
/* Open context for the compat fanotify listener (ABI 3.4, s29; bastion.h "Open
 * context").  Observes only: nothing here refuses, kills or reports.
 *
 * The listener decides a read-only open of a write-protected file from the opener's
 * /proc/TID/syscall (the open syscall it sleeps in, and its flags).  Those registers
 * describe the open being decided unless the kernel opens on the thread's behalf in
 * another context; each such context has a point where it begins that the kernel
 * traces, and there the thread's bit is set, before it can open anything:
 *  - io_uring: every request is submitted through io_submit_sqe
 *    (io_uring_submit_req; io_uring_submit_sqe before 6.4) in the thread that runs
 *    its task work (the io_uring_enter caller, or the SQPOLL thread);
 *  - io_uring's workers and SQPOLL thread, vhost workers: created with a copy of
 *    their creator's registers (task_newtask of a PF_IO_WORKER / PF_USER_WORKER task);
 *  - a core dump: written by the thread that takes a core-dumping signal whose action
 *    is the default (signal_deliver, which get_signal traces before it dumps).
 * User space fills the bitmap with ones once the programs are attached (every thread
 * already there is marked: a context it began earlier left no trace the kernel can be
 * asked for), then freezes both maps (no bpf() write, no writable mmap, root's
 * included; a BPF program of root's could still write them: the compat tier does not
 * refuse BPF loads); from then on only programs write it.  A bit is cleared only when
 * a new thread takes the number (task_newtask): a thread that used io_uring keeps
 * paying the listener's stack read for its whole life.
 * A stacked filesystem that opens its lower file with flags of its own inside the
 * caller's open (eCryptfs: ecryptfs_get_lower_file, O_RDWR) is not per thread: each
 * eCryptfs superblock registers a backing device named "ecryptfs-N"
 * (writeback_bdi_register, before the mount can be used) and is counted; the listener
 * then looks at /sys/class/bdi and checks every read's stack while one exists.
 * None of these hooks is a system call's: no syscall pays, ia32 entries included. */
#include "common.h"

char LICENSE[] SEC("license") = "GPL";

#define PF_IO_WORKER_ 0x00000010
#define PF_USER_WORKER_ 0x00004000   /* 6.4+; an older kernel's bit there marks more */
#define SIG_DFL_ 0

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BASTION_OPENCTX_WORDS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} openctx_tids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct bastion_openctx_counts);
} openctx_counts SEC(".maps");

static __always_inline struct bastion_openctx_counts *counts(void)
{
	__u32 k = 0;

	return bpf_map_lookup_elem(&openctx_counts, &k);
}

static __always_inline void mark_tid(__u32 tid)
{
	__u32 w = tid >> 6;
	__u64 *v = bpf_map_lookup_elem(&openctx_tids, &w);
	struct bastion_openctx_counts *c;

	if (!v)
		return;   /* past PID_MAX_LIMIT: no such thread */
	if (*v & (1ULL << (tid & 63)))
		return;
	__sync_fetch_and_or(v, 1ULL << (tid & 63));
	c = counts();
	if (c)
		__sync_fetch_and_add(&c->marked, 1);
}

static __always_inline int mark_current(void)
{
	mark_tid((__u32)bpf_get_current_pid_tgid());
	return 0;
}

/* Every program is a tp_btf (raw tracepoint) one: a perf-event tracepoint program is
 * skipped while the CPU's bpf_prog_active is held, which a preempted bpf() map call
 * holds for whoever runs next there; a raw tracepoint program is skipped only when it
 * is itself running on that CPU already. */

/* io_uring: the program of the name the kernel has loads (bastion.kernel.openctx) */
SEC("tp_btf/io_uring_submit_req")
int BPF_PROG(oc_uring_submit) { return mark_current(); }

SEC("tp_btf/io_uring_submit_sqe")
int BPF_PROG(oc_uring_submit_sqe) { return mark_current(); }

/* A new thread: a worker starts with a copy of its creator's registers (marked); any
 * other starts with no io_uring context, no task work and no signal taken, so its bit
 * is cleared -- it may carry the mark of the thread that had its number, or the
 * all-ones fill of the threads that were there before the programs were attached. */
SEC("tp_btf/task_newtask")
int BPF_PROG(oc_newtask, struct task_struct *task, __u64 clone_flags)
{
	__u32 tid = (__u32)task->pid, w = tid >> 6;
	__u64 *v;

	if (task->flags & (PF_IO_WORKER_ | PF_USER_WORKER_)) {
		mark_tid(tid);
		return 0;
	}
	v = bpf_map_lookup_elem(&openctx_tids, &w);
	if (v && (*v & (1ULL << (tid & 63))))
		__sync_fetch_and_and(v, ~(1ULL << (tid & 63)));
	return 0;
}

/* SIGQUIT SIGILL SIGTRAP SIGABRT SIGBUS SIGFPE SIGSEGV SIGXCPU SIGXFSZ SIGSYS: the
 * signals whose default action dumps core (x86-64 and arm64 numbers) */
#define COREDUMP_SIGS ((1ULL << 3) | (1ULL << 4) | (1ULL << 5) | (1ULL << 6) | (1ULL << 7) | \
		       (1ULL << 8) | (1ULL << 11) | (1ULL << 24) | (1ULL << 25) | (1ULL << 31))

SEC("tp_btf/signal_deliver")
int BPF_PROG(oc_signal_deliver, int sig, struct kernel_siginfo *info, struct k_sigaction *ka)
{
	if (sig <= 0 || sig >= 64 || !(COREDUMP_SIGS & (1ULL << sig)) ||
	    (unsigned long)ka->sa.sa_handler != SIG_DFL_)
		return 0;
	return mark_current();
}

SEC("tp_btf/writeback_bdi_register")
int BPF_PROG(oc_bdi_register, struct backing_dev_info *bdi)
{
	char n[9];
	struct bastion_openctx_counts *c;

	if (bpf_probe_read_kernel(n, sizeof(n), bdi->dev_name))
		return 0;
	if (n[0] != 'e' || n[1] != 'c' || n[2] != 'r' || n[3] != 'y' || n[4] != 'p' ||
	    n[5] != 't' || n[6] != 'f' || n[7] != 's' || n[8] != '-')
		return 0;
	c = counts();
	if (c)
		__sync_fetch_and_add(&c->nested_bdis, 1);
	return 0;
}
