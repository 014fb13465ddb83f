// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * integrity_testtp.bpf.c — an ordinary, harmless tracepoint program for the
 * integrity tests: attaching it flips the task_rename tracepoint's static
 * key (a jump-label patch in core text) and must yield no text finding.
 * It only counts calls made by cfg_target_tgid.  Never part of the agent.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

const volatile __u32 cfg_target_tgid = 0;
__u64 tt_hits = 0;

SEC("tracepoint/task/task_rename")
int tt_rename(void *ctx)
{
	if (cfg_target_tgid && (bpf_get_current_pid_tgid() >> 32) == cfg_target_tgid)
		__sync_fetch_and_add(&tt_hits, 1);
	return 0;
}
