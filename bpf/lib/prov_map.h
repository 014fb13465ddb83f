/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The kernel provenance map `prov` (include/bastion.h, "provenance"): one
 * definition for the sensors that keep it (prov.h) and the objects that
 * decide on it (lsm_provgate.bpf.c).  Those get the sensor's map at load
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

#endif /* BASTION_PROV_MAP_H */
