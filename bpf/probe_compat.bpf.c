// SPDX-License-Identifier: GPL-2.0
/* Feature probe for the compat tier: loaded (never attached) by
 * `bastion doctor` to learn whether the verifier accepts cgroup socket
 * programs and bpf_send_signal on this kernel. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

const volatile __u32 cfg_never_tgid = 0;

SEC("cgroup/connect4")
int probe_connect4(struct bpf_sock_addr *ctx)
{
	return 1; /* allow */
}

SEC("tracepoint/sched/sched_process_exec")
int probe_send_signal(void *ctx)
{
	/* cfg_never_tgid is 0 and no task has tgid 0: never signals */
	if ((bpf_get_current_pid_tgid() >> 32) == cfg_never_tgid && cfg_never_tgid)
		bpf_send_signal(9);
	return 0;
}
