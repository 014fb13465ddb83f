/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* inode_setattr's arguments on both kernel layouts, for every LSM object that
 * hooks it (lsm_hips, lsm_tamper, lsm_provgate):
 *   6.1:  (struct dentry *, struct iattr *)            + the return slot
 *   6.18: (struct mnt_idmap *, struct dentry *, struct iattr *)
 * The object declares `const volatile __u32 cfg_setattr_idmap`, which user space
 * sets from the running kernel's BTF (bastion.kernel.btf.setattr_has_idmap). */
#ifndef BASTION_SETATTR_H
#define BASTION_SETATTR_H

#include "common.h"

#define ATTR_MODE_ (1 << 0)
#define ATTR_UID_ (1 << 1)
#define ATTR_GID_ (1 << 2)
#define ATTR_SIZE_ (1 << 3)

/* Three loads at constant offsets (the verifier refuses a computed ctx offset;
 * on 6.1 ctx[2] is the return-value slot, readable), then the layout's pick.
 * @idmap: the object's cfg_setattr_idmap. */
static __always_inline void setattr_args(unsigned long long *ctx, __u32 idmap,
					 struct dentry **dentry, struct iattr **attr)
{
	__u64 a0 = ctx[0], a1 = ctx[1], a2 = ctx[2];

	asm volatile("" : "+r"(a0), "+r"(a1), "+r"(a2));
	if (idmap) {
		*dentry = (struct dentry *)a1;
		*attr = (struct iattr *)a2;
	} else {
		*dentry = (struct dentry *)a0;
		*attr = (struct iattr *)a1;
	}
}

#endif
