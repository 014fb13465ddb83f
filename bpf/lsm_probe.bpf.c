// SPDX-License-Identifier: GPL-2.0
/* Tier probe: a BPF LSM program that allows everything.  If this loads and
 * attaches, the kernel gives Bastion the lsm tier (in-kernel deny). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

SEC("lsm/file_open")
int BPF_PROG(probe_file_open, struct file *file, int ret)
{
	return ret;
}
