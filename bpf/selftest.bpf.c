// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * selftest.bpf.c — exercises the ctypes libbpf layer (src/bastion/kernel/)
 * and nothing else.  Never part of the agent.  Nothing here denies anything:
 * the cgroup program allows every connect (returns 1).
 *
 *  - st_flood      SEC("syscall"), run with BPF_PROG_TEST_RUN (repeat=0):
 *                  reserves ctx->count fixed-size records in st_ring with
 *                  bpf_loop (discarding every ctx->discard_every-th one when
 *                  set), counts failed reserves and submitted records per CPU
 *                  in st_counters; returns the number submitted.
 *  - st_getppid    tracepoint sys_enter_getppid: one record per getppid(2) of
 *                  the process whose tgid is cfg_tgid (tests see only their own).
 *  - st_rawtp      raw_tp, only for test_run (never attached): returns
 *                  args[0] + cfg_value.
 *  - st_connect4   cgroup/connect4: counts connects in st_hash, always allows.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define ST_RING_BYTES (64 * 1024)
#define ST_MAGIC 0x5453544c41425342ULL /* "BSBALTST" little-endian */
#define ST_MAX_FLOOD (1u << 23)

enum st_kind {
	ST_KIND_FLOOD = 1,
	ST_KIND_GETPPID = 2,
};

/* Per-CPU counter slots. */
enum st_counter {
	ST_CNT_DROPPED = 0,   /* failed bpf_ringbuf_reserve */
	ST_CNT_EMITTED = 1,
	ST_CNT_MAX = 2,
};

/* One ring record: 64 bytes (72 with the ring's 8-byte header). */
struct st_record {
	__u64 magic;
	__u64 seq;
	enum st_kind kind;
	__u32 tgid;
	__u32 cpu;
	__u32 _pad;
	__u64 payload[4];
};

/* ctx of st_flood (BPF_PROG_TEST_RUN ctx_in). */
struct st_flood_args {
	__u32 count;
	__u32 discard_every;  /* >0: discard record i when i % discard_every == 0 */
	__u64 seq_base;
};

/* Anchor so struct st_record is in the object's BTF (tests/unit/test_btf.py);
 * lands in .bss, never read. */
struct st_record *st_record_anchor __attribute__((unused));

const volatile __u32 cfg_value = 7;
const volatile __u64 cfg_tgid = 0;

#define ST_HASH_CONNECT4 0xC0u

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, ST_RING_BYTES);
} st_ring SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ST_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} st_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u64);
} st_hash SEC(".maps");

static __always_inline void st_count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&st_counters, &slot);

	if (v)
		*v += 1;
}

static __always_inline int st_emit(enum st_kind kind, __u64 seq, bool discard)
{
	struct st_record *r = bpf_ringbuf_reserve(&st_ring, sizeof(*r), 0);

	if (!r) {
		st_count(ST_CNT_DROPPED);
		return 0;
	}
	r->magic = ST_MAGIC;
	r->seq = seq;
	r->kind = kind;
	r->tgid = bpf_get_current_pid_tgid() >> 32;
	r->cpu = bpf_get_smp_processor_id();
	r->_pad = 0;
	r->payload[0] = seq * 3;
	r->payload[1] = 0;
	r->payload[2] = 0;
	r->payload[3] = 0;
	if (discard) {
		bpf_ringbuf_discard(r, 0);
		return 0;
	}
	bpf_ringbuf_submit(r, 0);
	st_count(ST_CNT_EMITTED);
	return 1;
}

struct st_loop_ctx {
	__u64 seq_base;
	__u32 emitted;
	__u32 discard_every;
};

static long st_flood_one(__u64 i, void *data)
{
	struct st_loop_ctx *lc = data;

	bool discard = lc->discard_every && (i % lc->discard_every) == 0;

	lc->emitted += st_emit(ST_KIND_FLOOD, lc->seq_base + i, discard);
	return 0;
}

SEC("syscall")
int st_flood(struct st_flood_args *args)
{
	struct st_loop_ctx lc = {
		.seq_base = args->seq_base,
		.emitted = 0,
		.discard_every = args->discard_every,
	};
	__u32 count = args->count;

	if (count > ST_MAX_FLOOD)
		count = ST_MAX_FLOOD;
	bpf_loop(count, st_flood_one, &lc, 0);
	return lc.emitted;
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int st_getppid(void *ctx)
{
	__u64 tgid = bpf_get_current_pid_tgid() >> 32;

	if (cfg_tgid == 0 || tgid != cfg_tgid)
		return 0;
	st_emit(ST_KIND_GETPPID, bpf_ktime_get_ns(), false);
	return 0;
}

SEC("raw_tp/sys_enter")
int st_rawtp(struct bpf_raw_tracepoint_args *ctx)
{
	return (int)(ctx->args[0] + cfg_value);
}

SEC("cgroup/connect4")
int st_connect4(struct bpf_sock_addr *ctx)
{
	__u32 key = ST_HASH_CONNECT4;
	__u64 one = 1;
	__u64 *v = bpf_map_lookup_elem(&st_hash, &key);

	if (v)
		__sync_fetch_and_add(v, 1);
	else
		bpf_map_update_elem(&st_hash, &key, &one, BPF_NOEXIST);
	return 1; /* allow: a selftest never denies */
}
