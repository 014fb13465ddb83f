/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Paths from kernel objects, without bpf_d_path (which tracepoints may not
 * call): walk dentries up to the mount root and cross mounts, building the
 * name backwards in a per-CPU scratch buffer. */
#ifndef BASTION_PATH_H
#define BASTION_PATH_H

#include "common.h"

#define PATH_MAX_DEPTH 32
#define SCRATCH_HALF BASTION_PATH_LEN          /* power of two */
#define AT_FDCWD_ -100

struct path_scratch {
	char buf[2 * SCRATCH_HALF];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct path_scratch);
} path_scratch SEC(".maps");

struct walk_ctx {
	struct dentry *dentry;
	struct vfsmount *vfsmnt;
	struct mount *mnt;
	__u32 pos;    /* start of the name built so far in the scratch buffer */
	bool cut;
};

/* One step up the tree; bpf_loop callback (verified once, not unrolled). */
static long walk_step(__u32 i, void *data)
{
	struct walk_ctx *c = data;
	__u32 zero = 0;
	struct path_scratch *s = bpf_map_lookup_elem(&path_scratch, &zero);
	struct dentry *mnt_root, *parent, *dentry = c->dentry;
	struct vfsmount *vfsmnt = c->vfsmnt;
	struct mount *mnt = c->mnt, *mnt_parent;
	struct qstr name;
	__u32 len, pos = c->pos;

	if (!s)
		return 1;
	mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
	parent = BPF_CORE_READ(dentry, d_parent);
	if (dentry == mnt_root || dentry == parent) {
		if (dentry != mnt_root)
			return 1; /* unlinked or pseudo-fs root: stop */
		mnt_parent = BPF_CORE_READ(mnt, mnt_parent);
		if (mnt == mnt_parent)
			return 1; /* the global root */
		c->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		c->mnt = mnt_parent;
		c->vfsmnt = &mnt_parent->mnt;
		return 0;
	}
	name = BPF_CORE_READ(dentry, d_name);
	len = name.len;
	if (len + 1 > pos || pos >= SCRATCH_HALF) {
		c->cut = true;
		return 1;
	}
	pos -= len;
	bpf_probe_read_kernel(&s->buf[pos & (SCRATCH_HALF - 1)], len & (SCRATCH_HALF - 1),
			      name.name);
	pos -= 1;
	s->buf[pos & (SCRATCH_HALF - 1)] = '/';
	c->pos = pos;
	c->dentry = parent;
	if (i == PATH_MAX_DEPTH - 1)
		c->cut = true;
	return 0;
}

/* Write the absolute path of @path into @out (BASTION_PATH_LEN bytes) and what the
 * last string copy returned into @n (bytes written, NUL included; < 1: nothing).
 * Returns true when the path was cut (too deep or too long): then @out holds its
 * last components, not its beginning. */
static __always_inline bool path_to_str_n(const struct path *path, char *out, long *n)
{
	__u32 zero = 0;
	struct path_scratch *s = bpf_map_lookup_elem(&path_scratch, &zero);
	struct walk_ctx c = {};
	struct qstr name;

	out[0] = '\0';
	*n = 1;
	if (!s)
		return true;
	c.dentry = BPF_CORE_READ(path, dentry);
	c.vfsmnt = BPF_CORE_READ(path, mnt);
	c.mnt = container_of(c.vfsmnt, struct mount, mnt);
	c.pos = SCRATCH_HALF - 1;
	s->buf[SCRATCH_HALF - 1] = '\0';
	bpf_loop(PATH_MAX_DEPTH, walk_step, &c, 0);

	if (c.pos >= SCRATCH_HALF - 1) {
		/* the root itself, or a pseudo file whose only name is its dentry */
		struct dentry *d = c.dentry;
		struct vfsmount *vm = c.vfsmnt;

		name = BPF_CORE_READ(d, d_name);
		if (d != BPF_CORE_READ(vm, mnt_root) && name.len) {
			*n = bpf_probe_read_kernel_str(out, BASTION_PATH_LEN, name.name);
		} else {
			out[0] = '/';
			out[1] = '\0';
			*n = 2;
		}
		return c.cut;
	}
	*n = bpf_probe_read_kernel_str(out, BASTION_PATH_LEN, &s->buf[c.pos & (SCRATCH_HALF - 1)]);
	return c.cut;
}

/* path_to_str_n without the length. */
static __always_inline bool path_to_str(const struct path *path, char *out)
{
	long n;

	return path_to_str_n(path, out, &n);
}

/* The struct file behind descriptor @fd of the current task, or NULL. */
static __always_inline struct file *fd_file(int fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *f = NULL;

	if (fd < 0 || !fdt || (unsigned int)fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]))
		return NULL;
	return f;
}

/* The current working directory into @out. */
static __always_inline bool cwd_to_str(char *out)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct path pwd = BPF_CORE_READ(task, fs, pwd);

	return path_to_str(&pwd, out);
}

#endif /* BASTION_PATH_H */
