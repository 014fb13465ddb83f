/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Executable-memory records (ABI 2.1, struct bastion_mmap_event), shared by
 * both event sensors: lsm_events.bpf.c (security_mmap_file,
 * security_file_mprotect: the kernel's own vma and file) and tp_events.bpf.c
 * (sys_enter_mmap / sys_enter_mprotect: the arguments, the vma found with
 * bpf_find_vma).  Filtered in the kernel: only PROT_EXEC, and only where code
 * does not normally come from (bastion.h, BASTION_XM_*); an exec mapping of an
 * installed file (ld.so loading a library) never crosses the ring.  Repeats
 * (same process, op, reasons, file) within cfg_mmap_dedup_ns are counted in
 * mmap_deduped (bpf/lib/dedup.h). */
#ifndef BASTION_XMEM_H
#define BASTION_XMEM_H

#include "common.h"
#include "path.h"
#include "dedup.h"

#define XM_PROT_WRITE_ 0x2
#define XM_MAP_ANONYMOUS_ 0x20
#define XM_VM_WRITE_ 0x2
#define XM_VM_EXEC_ 0x4
#define XM_S_ISVTX_ 01000
#define XM_S_IWOTH_ 00002

/* What an executable mapping of @f earns: anonymous memory (no file), a file
 * without a link (memfd, deleted), a file in a sticky world-writable directory
 * (/tmp, /var/tmp, /dev/shm: where droppers stage). */
static __always_inline __u32 xmem_file_why(struct file *f)
{
	__u32 why = 0;
	__u16 pmode;

	if (!f)
		return BASTION_XM_ANON;
	if (BPF_CORE_READ(f, f_inode, __i_nlink) == 0)
		why |= BASTION_XM_NOLINK;
	pmode = BPF_CORE_READ(f, f_path.dentry, d_parent, d_inode, i_mode);
	if ((pmode & (XM_S_ISVTX_ | XM_S_IWOTH_)) == (XM_S_ISVTX_ | XM_S_IWOTH_))
		why |= BASTION_XM_TMPFILE;
	return why;
}

/* Why an mprotect(@prot) of a region with @vm_flags backed by @f is worth a
 * record (0: it is not). */
static __always_inline __u32 xmem_mprotect_why(__u32 prot, __u64 vm_flags, struct file *f)
{
	__u32 why = 0;

	if (prot & XM_PROT_WRITE_)
		why |= BASTION_XM_WRITE;
	if (vm_flags & XM_VM_WRITE_)
		why |= BASTION_XM_W2X;
	if (!(vm_flags & XM_VM_EXEC_))
		why |= xmem_file_why(f);   /* newly executable: anonymous, memfd, temp file */
	return why;
}

static __always_inline int emit_xmem(__u32 op, __u32 why, __u32 prot, __u32 flags, __u64 addr,
				     __u64 len, struct file *f)
{
	struct bastion_mmap_event *e;
	__u64 ino = 0;
	__u32 dev = 0;

	if (!why || !wanted(BASTION_EV_MMAP))
		return 0;
	if (f) {
		ino = BPF_CORE_READ(f, f_inode, i_ino);
		dev = BPF_CORE_READ(f, f_inode, i_sb, s_dev);
	}
	if (mmap_seen_recently(op, why, dev, ino))
		return 0;
	e = RESERVE(struct bastion_mmap_event, BASTION_EV_MMAP);
	if (!e)
		return 0;
	e->op = op;
	e->why = why;
	e->prot = prot;
	e->flags = flags;
	e->addr = addr;
	e->len = len;
	e->ino = ino;
	e->dev = dev;
	e->_pad = 0;
	e->path[0] = '\0';
	if (f) {
		struct path fpath = BPF_CORE_READ(f, f_path);

		if (path_to_str(&fpath, e->path))
			e->hdr.flags |= BASTION_F_TRUNC_PATH;
	}
	SUBMIT(e);
	return 0;
}

#endif /* BASTION_XMEM_H */
