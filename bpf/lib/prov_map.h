/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The kernel provenance map `prov` (include/bastion.h, "provenance"): one
 * definition for the sensors that keep it (prov.h) and the objects that
 * decide on it (lsm_provgate.bpf.c), with its overflow maps `prov_errors` and
 * `prov_lost`.  Those get the sensor's map at load
 * (ObjectSpec.reuse_maps: bpf_map__reuse_fd), so the definitions must be
 * one: this one. */
#ifndef BASTION_PROV_MAP_H
#define BASTION_PROV_MAP_H

#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BASTION_PROV_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct bastion_prov_val);
} prov SEC(".maps");

/* Overflow, failing closed (docs/threat-model.md "Provenance map overflow"):
 * slot 0 counts failed updates of `prov` (full map); the process whose entry was
 * not taken goes to `prov_lost` (tgid -> start_boottime), and so does every child
 * it forks, so the gate refuses them as "untracked" instead of trusting them; slot
 * 1 counts failed updates of `prov_lost`: from then on no untracked process can be
 * told apart and the gate refuses every one on must-stop objects.  While slot 0 is
 * 0 (the normal case) `prov_lost` is not touched. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} prov_errors SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BASTION_PROV_LOST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} prov_lost SEC(".maps");

#endif /* BASTION_PROV_MAP_H */
