// SPDX-License-Identifier: GPL-2.0
/* HIPS enforcement, lsm tier: every decision is taken in the LSM hook and a
 * refusal is -EPERM (kill: -EPERM and SIGKILL to the caller).  The acting
 * task is current, read directly (no task_subjects upkeep needed).
 *
 * Only arguments common to 6.1 and 6.18 are declared; inode_setattr gained a
 * leading mnt_idmap argument (6.1: dentry, attr; 6.18: idmap, dentry, attr):
 * user space reads the running kernel's BTF and sets cfg_setattr_idmap, and
 * the verifier drops the other branch (frozen .rodata).
 *
 * A hard link or a rename that takes a file or directory out of a directory
 * object the task may not read or write is refused (lsm_new_name).
 *
 * A rename over an existing name is also decided as OPEN_WRITE and UNLINK of
 * the file it replaces.  Files replaced legitimately (passwd, package
 * upgrades) get a new inode: user space re-resolves the policy's names
 * (PolicyManager.refresh) and alerts bastion.policy.drift.
 *
 * Dentry-only hooks (create, unlink, rename, chmod) have no mount: their
 * ancestor walk stops at the root of the object's filesystem, and the
 * reported path is relative to that root. */
#include "hips.h"
#include "sock.h"
#include "setattr.h"

char LICENSE[] SEC("license") = "GPL";

#define FMODE_WRITE_ 0x2
#define PTRACE_MODE_ATTACH_ 0x02

const volatile __u32 cfg_setattr_idmap = 1;

/* Fast path: no policy, or out of scope. */
static __always_inline bool hips_off(void)
{
	return !hips_active_gen() || !hips_in_scope();
}

static __always_inline int lsm_file(__u32 op, const struct hips_object *o,
				    struct dentry *name, struct vfsmount *name_mnt, __s32 target_pid)
{
	struct hips_facts f = {};
	struct hips_decision d;

	hips_facts_current(&f);
	hips_decide(op, &f, o, NULL, 0, &d);
	hips_report_file(op, &d, BASTION_MECH_LSM, o, name, name_mnt, target_pid);
	if (!hips_refuses(&d))
		return 0;
	if (d.action == BASTION_ACT_KILL)
		bpf_send_signal(SIGKILL_);
	return -EPERM_;
}

static __always_inline void obj_of_path(struct hips_object *o, struct dentry *dentry,
					struct vfsmount *mnt)
{
	struct inode *inode = BPF_CORE_READ(dentry, d_inode);

	o->ino = BPF_CORE_READ(inode, i_ino);
	o->dev = BPF_CORE_READ(inode, i_sb, s_dev);
	o->dentry = dentry;
	o->mnt = mnt;
}

static __always_inline int lsm_file_path(__u32 op, struct dentry *dentry, struct vfsmount *mnt)
{
	struct hips_object o = {};

	obj_of_path(&o, dentry, mnt);
	return lsm_file(op, &o, dentry, mnt, 0);
}

/* A new name for the file or directory @old: a hard link, or a rename, to
 * @new_dentry (its parent is the directory that gets the name).  Refused
 * when the task's open-read or open-write decision for @old where it is now
 * is stricter than it would be under the new name: a hard link or a move
 * out of a protected directory object would give the data a name no rule
 * covers (issue 14 item 2).  Reported as that open-read/open-write decision
 * with the new name's path.  Only directory objects can be escaped this
 * way: a rule on the inode itself follows it to every name. */
static __always_inline int lsm_new_name(struct dentry *old, struct dentry *new_dentry)
{
	struct hips_object here = {}, there;
	struct hips_decision d_here, d_there;
	struct hips_facts f = {};
	__u32 op;

	obj_of_path(&here, old, NULL);
	there = here;
	there.dentry = new_dentry;
	hips_facts_current(&f);
#pragma clang loop unroll(full)
	for (op = BASTION_OP_OPEN_READ; op <= BASTION_OP_OPEN_WRITE; op++) {
		hips_decide(op, &f, &here, NULL, 0, &d_here);
		if (d_here.action <= BASTION_ACT_ALLOW)
			continue;
		hips_decide(op, &f, &there, NULL, 0, &d_there);
		if (d_there.action >= d_here.action)
			continue;
		hips_report_file(op, &d_here, BASTION_MECH_LSM, &here, new_dentry, NULL, 0);
		if (!hips_refuses(&d_here))
			continue;
		if (d_here.action == BASTION_ACT_KILL)
			bpf_send_signal(SIGKILL_);
		return -EPERM_;
	}
	return 0;
}

/* Create-like ops: the object is the directory that gets the new name. */
static __always_inline int lsm_create(struct inode *dir, struct dentry *dentry)
{
	struct hips_object o = {};

	o.ino = BPF_CORE_READ(dir, i_ino);
	o.dev = BPF_CORE_READ(dir, i_sb, s_dev);
	o.dentry = BPF_CORE_READ(dentry, d_parent);
	return lsm_file(BASTION_OP_CREATE, &o, dentry, NULL, 0);
}

/* A process object (ptrace, signal): the target's executable. */
static __always_inline int lsm_task(__u32 op, struct task_struct *t)
{
	struct file *exe = BPF_CORE_READ(t, mm, exe_file);
	struct hips_object o = {};
	struct dentry *dentry = NULL;
	struct vfsmount *mnt = NULL;

	if (exe) {
		dentry = BPF_CORE_READ(exe, f_path.dentry);
		mnt = BPF_CORE_READ(exe, f_path.mnt);
		obj_of_path(&o, dentry, mnt);
	}
	return lsm_file(op, &o, dentry, mnt, BPF_CORE_READ(t, tgid));
}

SEC("lsm/bprm_check_security")
int BPF_PROG(hips_bprm_check, struct linux_binprm *bprm, int ret)
{
	struct file *file;

	if (ret || hips_off())
		return ret;
	file = BPF_CORE_READ(bprm, file);
	return lsm_file_path(BASTION_OP_EXEC, BPF_CORE_READ(file, f_path.dentry),
			     BPF_CORE_READ(file, f_path.mnt));
}

SEC("lsm/file_open")
int BPF_PROG(hips_file_open, struct file *file, int ret)
{
	__u32 op;

	if (ret || hips_off())
		return ret;
	op = (BPF_CORE_READ(file, f_mode) & FMODE_WRITE_) ? BASTION_OP_OPEN_WRITE
							   : BASTION_OP_OPEN_READ;
	return lsm_file_path(op, BPF_CORE_READ(file, f_path.dentry), BPF_CORE_READ(file, f_path.mnt));
}

SEC("lsm/path_truncate")
int BPF_PROG(hips_path_truncate, const struct path *path, int ret)
{
	if (ret || hips_off())
		return ret;
	return lsm_file_path(BASTION_OP_OPEN_WRITE, BPF_CORE_READ(path, dentry),
			     BPF_CORE_READ(path, mnt));
}

SEC("lsm/inode_create")
int BPF_PROG(hips_inode_create, struct inode *dir, struct dentry *dentry)
{
	if (hips_off())
		return 0;
	return lsm_create(dir, dentry);
}

SEC("lsm/inode_mkdir")
int BPF_PROG(hips_inode_mkdir, struct inode *dir, struct dentry *dentry)
{
	if (hips_off())
		return 0;
	return lsm_create(dir, dentry);
}

SEC("lsm/inode_mknod")
int BPF_PROG(hips_inode_mknod, struct inode *dir, struct dentry *dentry)
{
	if (hips_off())
		return 0;
	return lsm_create(dir, dentry);
}

SEC("lsm/inode_symlink")
int BPF_PROG(hips_inode_symlink, struct inode *dir, struct dentry *dentry)
{
	if (hips_off())
		return 0;
	return lsm_create(dir, dentry);
}

SEC("lsm/inode_link")
int BPF_PROG(hips_inode_link, struct dentry *old_dentry, struct inode *dir,
	     struct dentry *new_dentry)
{
	int err;

	if (hips_off())
		return 0;
	err = lsm_new_name(old_dentry, new_dentry);
	if (err)
		return err;
	return lsm_create(dir, new_dentry);
}

SEC("lsm/inode_unlink")
int BPF_PROG(hips_inode_unlink, struct inode *dir, struct dentry *dentry)
{
	if (hips_off())
		return 0;
	return lsm_file_path(BASTION_OP_UNLINK, dentry, NULL);
}

SEC("lsm/inode_rmdir")
int BPF_PROG(hips_inode_rmdir, struct inode *dir, struct dentry *dentry)
{
	if (hips_off())
		return 0;
	return lsm_file_path(BASTION_OP_UNLINK, dentry, NULL);
}

SEC("lsm/inode_rename")
int BPF_PROG(hips_inode_rename, struct inode *old_dir, struct dentry *old_dentry,
	     struct inode *new_dir, struct dentry *new_dentry)
{
	struct hips_object o = {};
	int err;

	if (hips_off())
		return 0;
	err = lsm_file_path(BASTION_OP_RENAME, old_dentry, NULL);
	if (err)
		return err;
	err = lsm_new_name(old_dentry, new_dentry);
	if (err)
		return err;
	/* Renaming over an existing name replaces that file: it is a write of
	 * its contents and an unlink of its name (issue 13 item 7: `mv t
	 * /etc/shadow` must not get around "deny open-write /etc/shadow"). */
	if (BPF_CORE_READ(new_dentry, d_inode)) {
		err = lsm_file_path(BASTION_OP_OPEN_WRITE, new_dentry, NULL);
		if (err)
			return err;
		err = lsm_file_path(BASTION_OP_UNLINK, new_dentry, NULL);
		if (err)
			return err;
	}
	o.ino = BPF_CORE_READ(new_dir, i_ino);
	o.dev = BPF_CORE_READ(new_dir, i_sb, s_dev);
	o.dentry = BPF_CORE_READ(new_dentry, d_parent);
	return lsm_file(BASTION_OP_RENAME, &o, new_dentry, NULL, 0);
}

SEC("lsm/inode_setattr")
int BPF_PROG(hips_inode_setattr)
{
	struct dentry *dentry;
	struct iattr *attr;

	if (hips_off())
		return 0;
	setattr_args(ctx, cfg_setattr_idmap, &dentry, &attr);
	if (!(BPF_CORE_READ(attr, ia_valid) & (ATTR_MODE_ | ATTR_UID_ | ATTR_GID_)))
		return 0;
	return lsm_file_path(BASTION_OP_CHMOD, dentry, NULL);
}

static __always_inline int lsm_sock(__u32 op, struct sockaddr *address, int addrlen)
{
	struct hips_facts f = {};
	struct hips_decision d;
	__u8 addr[16] = {};
	__u16 family = 0, port;

	if (addrlen < (int)sizeof(struct sockaddr_in))
		return 0;
	bpf_probe_read_kernel(&family, sizeof(family), &address->sa_family);
	if (family == AF_INET_) {
		struct sockaddr_in sin = {};

		bpf_probe_read_kernel(&sin, sizeof(sin), address);
		addr[10] = 0xff;
		addr[11] = 0xff;
		__builtin_memcpy(&addr[12], &sin.sin_addr.s_addr, 4);
		port = be16(sin.sin_port);
	} else if (family == AF_INET6_) {
		struct sockaddr_in6 sin6 = {};

		if (addrlen < (int)sizeof(struct sockaddr_in6))
			return 0;
		bpf_probe_read_kernel(&sin6, sizeof(sin6), address);
		__builtin_memcpy(addr, &sin6.sin6_addr, 16);
		port = be16(sin6.sin6_port);
	} else {
		return 0; /* AF_UNIX, AF_UNSPEC, ...: not a network object */
	}
	hips_facts_current(&f);
	hips_decide(op, &f, NULL, addr, port, &d);
	hips_report_net(op, &d, BASTION_MECH_LSM, family, port, addr, 0);
	if (!hips_refuses(&d))
		return 0;
	if (d.action == BASTION_ACT_KILL)
		bpf_send_signal(SIGKILL_);
	return -EPERM_;
}

SEC("lsm/socket_connect")
int BPF_PROG(hips_socket_connect, struct socket *sock, struct sockaddr *address, int addrlen,
	     int ret)
{
	if (ret || hips_off())
		return ret;
	return lsm_sock(BASTION_OP_CONNECT, address, addrlen);
}

SEC("lsm/socket_bind")
int BPF_PROG(hips_socket_bind, struct socket *sock, struct sockaddr *address, int addrlen,
	     int ret)
{
	if (ret || hips_off())
		return ret;
	return lsm_sock(BASTION_OP_BIND, address, addrlen);
}

SEC("lsm/ptrace_access_check")
int BPF_PROG(hips_ptrace, struct task_struct *child, unsigned int mode, int ret)
{
	if (ret || hips_off())
		return ret;
	/* ptrace attach and /proc/PID/mem; not the read-only /proc checks
	 * (readlink of /proc/PID/exe, environ), which would break ps/lsof. */
	if (!(mode & PTRACE_MODE_ATTACH_))
		return 0;
	return lsm_task(BASTION_OP_PTRACE, child);
}

SEC("lsm/task_kill")
int BPF_PROG(hips_task_kill, struct task_struct *p, struct kernel_siginfo *info, int sig,
	     const struct cred *cred, int ret)
{
	if (ret || sig == 0 || hips_off())
		return ret;
	return lsm_task(BASTION_OP_SIGNAL, p);
}
