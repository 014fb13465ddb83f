// SPDX-License-Identifier: GPL-2.0
/* bench_floor.bpf.c — a BENCH FIXTURE, never part of the agent
 * (bench/bench_open_floor.py).  No-op programs on the syscall tracepoints the
 * open loop meets, so the cost of the syscall-tracepoint slow path itself
 * (every syscall once any syscall tracepoint is on; the dispatch of a
 * tracepoint that has programs) can be told apart from what the agent's
 * programs do.  Each program only returns: it acts on nothing. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

/* turns the slow path on for every syscall; getppid is not on the open loop */
SEC("tracepoint/syscalls/sys_enter_getppid")
int floor_getppid(void *ctx) { return 0; }

SEC("tracepoint/syscalls/sys_enter_openat")
int floor_enter_openat(void *ctx) { return 0; }

/* a second program on the same tracepoint (today the sensor and quarantine) */
SEC("tracepoint/syscalls/sys_enter_openat")
int floor_enter_openat2(void *ctx) { return 0; }

SEC("tracepoint/syscalls/sys_exit_openat")
int floor_exit_openat(void *ctx) { return 0; }

SEC("tracepoint/syscalls/sys_enter_close")
int floor_enter_close(void *ctx) { return 0; }
