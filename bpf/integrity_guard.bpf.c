// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * integrity_guard.bpf.c — the kernel's own view for the integrity checks
 * (src/bastion/integrity/).  Nothing here hooks anything: both programs run
 * only when user space asks.
 *
 *  - ig_kread  raw_tp, driven by BPF_PROG_TEST_RUN (repeat=0), never
 *              attached: copies args[1] bytes (<= IG_CHUNK) of kernel memory
 *              at args[0] into ig_buf[0] with bpf_probe_read_kernel and
 *              returns the helper's result (0 or -errno).  Kernel text,
 *              __jump_table, .rodata (sys_call_table) are read this way:
 *              there is no /proc/kcore on the host kind.
 *  - ig_tasks  iter/task: one text line per task,
 *              "<tid> <tgid> <start_boottime ns> <comm>\n"; control bytes,
 *              blanks included, in comm are printed as '?', so a line
 *              always has four fields.  A text line, not a binary record,
 *              so there is no struct to keep in step with user space.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define IG_CHUNK (1u << 20)  /* keep in step with integrity/kread.py CHUNK */

struct ig_chunk {
	__u8 data[IG_CHUNK];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ig_chunk);
} ig_buf SEC(".maps");

SEC("raw_tp")
int ig_kread(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 key = 0;
	void *buf = bpf_map_lookup_elem(&ig_buf, &key);
	__u64 addr = ctx->args[0];
	__u64 len = ctx->args[1];

	if (!buf)
		return -2;
	if (len == 0 || len > IG_CHUNK)
		return -22;
	return bpf_probe_read_kernel(buf, (__u32)len, (const void *)addr);
}

SEC("iter/task")
int ig_tasks(struct bpf_iter__task *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;
	char comm[16];
	__u64 start;
	int pid, tgid;

	if (!task)
		return 0;
	pid = BPF_CORE_READ(task, pid);
	tgid = BPF_CORE_READ(task, tgid);
	start = BPF_CORE_READ(task, start_boottime);
	BPF_CORE_READ_STR_INTO(&comm, task, comm);
	for (int i = 0; i < 16; i++) {
		char c = comm[i];

		if (c == 0)
			break;
		if (c <= ' ' || c == 0x7f)
			comm[i] = '?';
	}
	comm[15] = 0;
	BPF_SEQ_PRINTF(seq, "%d %d %llu %s\n", pid, tgid, start, comm);
	return 0;
}
