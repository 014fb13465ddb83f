// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * test_rootkit_sig.bpf.c — a TEST ADVERSARY, never part of the agent.
 *
 * An unexpected program on a syscall tracepoint (sys_enter_getppid) that
 * uses bpf_send_signal: the shape of a BPF "kill switch" implant, and one
 * the host kind allows (bpf_probe_write_user is refused there by lockdown).
 *
 * Scoped, never global: it acts only on getppid(2) calls of the process
 * whose tgid is cfg_target_tgid, and then sends signal 0 (a pure existence
 * check that delivers nothing), counting the calls in rk_hits.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

const volatile __u32 cfg_target_tgid = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} rk_hits SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int rk_getppid(struct trace_event_raw_sys_enter *ctx)
{
	__u32 key = 0;
	__u64 *hits;

	if (!cfg_target_tgid || (bpf_get_current_pid_tgid() >> 32) != cfg_target_tgid)
		return 0;
	hits = bpf_map_lookup_elem(&rk_hits, &key);
	if (hits)
		__sync_fetch_and_add(hits, 1);
	bpf_send_signal(0);
	return 0;
}
