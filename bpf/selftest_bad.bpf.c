// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * selftest_bad.bpf.c — compiles cleanly but the verifier must REJECT it:
 * tests/kernel/test_libbpf.py checks that the load error names the program
 * and that the verifier log reaches Python logging.  Never attached.
 * A HASH map on purpose: since 6.x the verifier knows a constant in-range
 * key into an ARRAY map never yields NULL, and would accept this.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} bad_hash SEC(".maps");

SEC("raw_tp/sys_enter")
int bad_null_deref(void *ctx)
{
	__u32 key = 0;
	__u64 *v = bpf_map_lookup_elem(&bad_hash, &key);

	/* No NULL check: "invalid mem access 'map_value_or_null'". */
	return (int)*v;
}
