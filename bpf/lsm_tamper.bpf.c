// SPDX-License-Identifier: GPL-2.0
/* Tamper protection, lsm tier: refuse, in the LSM hook, every operation
 * that would stop the agent, change its files or undo its BPF objects,
 * from every task but the agent and its guardian (exact identity: see
 * bpf/lib/tamper.h).  Each refusal is a bastion_tamper_event.
 *
 * Only arguments common to 6.1 and 6.18 are declared (the bpf hook has 3
 * arguments on 6.1 and 4 on 6.18; inode_setattr gained a leading mnt_idmap:
 * cfg_setattr_idmap, set by user space from the running kernel's BTF).  The
 * previous return value is never read: a BPF LSM program runs only while
 * every earlier one returned 0.
 *
 * Protected objects live in tamper_objs (inode keys): files (SELF),
 * directories with everything under them (SUBTREE, ancestors walked with
 * bpf_loop on the same filesystem), and the directories above a protected
 * path (ANCESTOR: no rename, rmdir or mount over them). */
#include "tamper.h"
#include "setattr.h"

char LICENSE[] SEC("license") = "GPL";

#define FMODE_WRITE_ 0x2
#define BPF_F_RDONLY_PROG_ (1U << 7)
#define PTRACE_MODE_ATTACH_ 0x02

#define M_FILE (BASTION_TOBJ_SELF | BASTION_TOBJ_SUBTREE)
#define M_NAME (BASTION_TOBJ_SELF | BASTION_TOBJ_SUBTREE | BASTION_TOBJ_ANCESTOR)

const volatile __u32 cfg_setattr_idmap = 1;

static __always_inline int deny_obj(__u32 op, struct dentry *d, __u32 mask, struct vfsmount *mnt,
				    __s64 arg)
{
	struct tamper_hit hit = {};

	if (!dentry_protected(d, mask, &hit))
		return 0;
	if (!current_in_scope())
		return 0;
	tamper_report(op, BASTION_TV_DENIED, -EPERM_, 0, arg, &hit, d, mnt);
	return -EPERM_;
}

/* ---- the agent's processes ---- */

SEC("lsm/task_kill")
int BPF_PROG(tamper_task_kill, struct task_struct *p, struct kernel_siginfo *info, int sig)
{
	if (!harmful_signal(sig) || !task_is_ours(p) || !current_in_scope())
		return 0;
	tamper_report(BASTION_TAMPER_SIGNAL, BASTION_TV_DENIED, -EPERM_, BPF_CORE_READ(p, tgid), sig,
		      NULL, NULL, NULL);
	return -EPERM_;
}

SEC("lsm/ptrace_access_check")
int BPF_PROG(tamper_ptrace, struct task_struct *child, unsigned int mode)
{
	/* attach, /proc/PID/mem, process_vm_*, pidfd_getfd; read-only /proc
	 * checks (ps, readlink exe) pass */
	if (!(mode & PTRACE_MODE_ATTACH_) || !task_is_ours(child) || !current_in_scope())
		return 0;
	tamper_report(BASTION_TAMPER_PTRACE, BASTION_TV_DENIED, -EPERM_, BPF_CORE_READ(child, tgid),
		      mode, NULL, NULL, NULL);
	return -EPERM_;
}

/* The kernel sends SIGIO (or the F_SETSIG signal) to a file's owner when
 * I/O is ready: F_SETOWN + F_SETSIG(SIGKILL) + O_ASYNC on a pipe is a kill
 * that task_kill never sees.  @sig 0 means SIGIO. */
SEC("lsm/file_send_sigiotask")
int BPF_PROG(tamper_sigiotask, struct task_struct *tsk, struct fown_struct *fown, int sig)
{
	int s = sig ? sig : 29;

	if (!harmful_signal(s) || !task_is_ours(tsk) || !current_in_scope())
		return 0;
	tamper_report(BASTION_TAMPER_SIGIO, BASTION_TV_DENIED, -EPERM_, BPF_CORE_READ(tsk, tgid), s,
		      NULL, NULL, NULL);
	return -EPERM_;
}

/* prlimit(2) of ours: RLIMIT_CPU makes the kernel SIGKILL them; any other
 * limit (NOFILE, AS, NPROC) breaks them as surely. */
SEC("lsm/task_setrlimit")
int BPF_PROG(tamper_setrlimit, struct task_struct *p, unsigned int resource)
{
	if (!task_is_ours(p) || !current_in_scope())
		return 0;
	tamper_report(BASTION_TAMPER_PRLIMIT, BASTION_TV_DENIED, -EPERM_, BPF_CORE_READ(p, tgid),
		      resource, NULL, NULL, NULL);
	return -EPERM_;
}

/* The executable identity (see changes_exe_identity): refused to every task
 * in scope but ours, so an exe: rule, the loader allowlist or a trusted
 * installer's identity cannot be shed or borrowed.  task_prctl's default is
 * -ENOSYS ("not an LSM's option"): a BPF LSM program's 0 lets the hook's own
 * body return it, so every other prctl runs as before.
 *
 * PR_SET_MM_MAP is refused whatever its exe_fd; one whose exe_fd reads -1
 * (keep the executable: liblxc's setproctitle for "[lxc monitor]", criu check)
 * is refused without a report.  That read of user memory only decides the
 * report, never the refusal, so a thread racing it gains nothing. */
SEC("lsm/task_prctl")
int BPF_PROG(tamper_prctl, int option, unsigned long arg2, unsigned long arg3, unsigned long arg4,
	     unsigned long arg5)
{
	if (!changes_exe_identity(option, arg2) || !current_in_scope())
		return 0;
	if ((int)arg2 == PR_SET_MM_MAP_ && mm_map_keeps_exe(arg3))
		return -EPERM_;
	tamper_report(BASTION_TAMPER_EXE_IDENTITY, BASTION_TV_DENIED, -EPERM_, 0, (int)arg2, NULL,
		      NULL, NULL);
	return -EPERM_;
}

/* ---- files ---- */

SEC("lsm/file_open")
int BPF_PROG(tamper_file_open, struct file *file)
{
	if (!(BPF_CORE_READ(file, f_mode) & FMODE_WRITE_))
		return 0;
	return deny_obj(BASTION_TAMPER_OPEN_WRITE, BPF_CORE_READ(file, f_path.dentry), M_FILE,
			BPF_CORE_READ(file, f_path.mnt), 0);
}

SEC("lsm/path_truncate")
int BPF_PROG(tamper_path_truncate, const struct path *path)
{
	return deny_obj(BASTION_TAMPER_TRUNCATE, BPF_CORE_READ(path, dentry), M_FILE,
			BPF_CORE_READ(path, mnt), 0);
}

SEC("lsm/inode_create")
int BPF_PROG(tamper_inode_create, struct inode *dir, struct dentry *dentry)
{
	return deny_obj(BASTION_TAMPER_CREATE, dentry, M_FILE, NULL, 0);
}

SEC("lsm/inode_mkdir")
int BPF_PROG(tamper_inode_mkdir, struct inode *dir, struct dentry *dentry)
{
	return deny_obj(BASTION_TAMPER_CREATE, dentry, M_FILE, NULL, 0);
}

SEC("lsm/inode_mknod")
int BPF_PROG(tamper_inode_mknod, struct inode *dir, struct dentry *dentry)
{
	return deny_obj(BASTION_TAMPER_CREATE, dentry, M_FILE, NULL, 0);
}

SEC("lsm/inode_symlink")
int BPF_PROG(tamper_inode_symlink, struct inode *dir, struct dentry *dentry)
{
	return deny_obj(BASTION_TAMPER_CREATE, dentry, M_FILE, NULL, 0);
}

SEC("lsm/inode_link")
int BPF_PROG(tamper_inode_link, struct dentry *old_dentry, struct inode *dir,
	     struct dentry *new_dentry)
{
	int err = deny_obj(BASTION_TAMPER_LINK, old_dentry, M_FILE, NULL, 0);

	return err ? err : deny_obj(BASTION_TAMPER_LINK, new_dentry, M_FILE, NULL, 0);
}

SEC("lsm/inode_unlink")
int BPF_PROG(tamper_inode_unlink, struct inode *dir, struct dentry *dentry)
{
	return deny_obj(BASTION_TAMPER_UNLINK, dentry, M_FILE, NULL, 0);
}

SEC("lsm/inode_rmdir")
int BPF_PROG(tamper_inode_rmdir, struct inode *dir, struct dentry *dentry)
{
	return deny_obj(BASTION_TAMPER_UNLINK, dentry, M_NAME, NULL, 0);
}

SEC("lsm/inode_rename")
int BPF_PROG(tamper_inode_rename, struct inode *old_dir, struct dentry *old_dentry,
	     struct inode *new_dir, struct dentry *new_dentry)
{
	int err = deny_obj(BASTION_TAMPER_RENAME, old_dentry, M_NAME, NULL, 0);

	return err ? err : deny_obj(BASTION_TAMPER_RENAME, new_dentry, M_NAME, NULL, 0);
}

SEC("lsm/inode_setattr")
int BPF_PROG(tamper_inode_setattr)
{
	struct dentry *dentry;
	struct iattr *attr;	setattr_args(ctx, cfg_setattr_idmap, &dentry, &attr);
	if (!(BPF_CORE_READ(attr, ia_valid) & (ATTR_MODE_ | ATTR_UID_ | ATTR_GID_ | ATTR_SIZE_)))
		return 0;
	return deny_obj(BASTION_TAMPER_SETATTR, dentry, M_FILE, NULL, BPF_CORE_READ(attr, ia_valid));
}

/* 6.1: (mnt_userns, dentry, ...); 6.18: (idmap, dentry, ...): dentry is 2nd in both */
SEC("lsm/inode_setxattr")
int BPF_PROG(tamper_inode_setxattr, void *idmap, struct dentry *dentry)
{
	return deny_obj(BASTION_TAMPER_SETXATTR, dentry, M_FILE, NULL, 0);
}

SEC("lsm/inode_removexattr")
int BPF_PROG(tamper_inode_removexattr, void *idmap, struct dentry *dentry)
{
	return deny_obj(BASTION_TAMPER_SETXATTR, dentry, M_FILE, NULL, 0);
}

/* ---- mounts ---- */

SEC("lsm/sb_mount")
int BPF_PROG(tamper_sb_mount, const char *dev_name, const struct path *path, const char *type,
	     unsigned long flags)
{
	return deny_obj(BASTION_TAMPER_MOUNT, BPF_CORE_READ(path, dentry), M_NAME,
			BPF_CORE_READ(path, mnt), flags);
}

SEC("lsm/move_mount")
int BPF_PROG(tamper_move_mount, const struct path *from_path, const struct path *to_path)
{
	return deny_obj(BASTION_TAMPER_MOUNT, BPF_CORE_READ(to_path, dentry), M_NAME,
			BPF_CORE_READ(to_path, mnt), 0);
}

SEC("lsm/sb_umount")
int BPF_PROG(tamper_sb_umount, struct vfsmount *mnt, int flags)
{
	__u32 dev = BPF_CORE_READ(mnt, mnt_sb, s_dev);
	struct tamper_hit hit = {};

	if (!bpf_map_lookup_elem(&tamper_sbs, &dev) || !current_in_scope())
		return 0;
	hit.dev = dev;
	tamper_report(BASTION_TAMPER_UMOUNT, BASTION_TV_DENIED, -EPERM_, 0, flags, &hit,
		      BPF_CORE_READ(mnt, mnt_root), mnt);
	return -EPERM_;
}

/* ---- BPF objects ---- */

/* Maps created by ours (the agent or its guardian), from their creation:
 * key the struct bpf_map address (map_create calls the alloc hook before
 * bpf_map_alloc_id: no id exists yet, and nothing can reach the map by id
 * before the hook has run), value the creator's tgid.  Written by the
 * programs (so not BPF_F_RDONLY_PROG): tamper_bpf_map refuses every fd of
 * it, read-only ones too, to all but ours, so no program loaded by root can
 * name it.  An entry goes at the free hook; LRU in case a free is missed
 * (an old map is in tamper_map_ids by then: the loader's hook). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u32);
} tamper_born_maps SEC(".maps");

static __always_inline int map_born(struct bpf_map *map)
{
	__u64 key = (__u64)map;
	__u32 tgid;

	if (!task_is_ours((struct task_struct *)bpf_get_current_task()))
		return 0;
	tgid = bpf_get_current_pid_tgid() >> 32;
	bpf_map_update_elem(&tamper_born_maps, &key, &tgid, BPF_ANY);
	return 0;
}

static __always_inline void map_gone(struct bpf_map *map)
{
	__u64 key = (__u64)map;

	bpf_map_delete_elem(&tamper_born_maps, &key);
}

/* The hooks were renamed in 6.9 (bpf_map_create gained attr, token and
 * kernel arguments); user space loads the pair the running kernel has
 * (TamperKernel.spec: the other pair is skipped; neither is an error). */
SEC("lsm/bpf_map_alloc_security")
int BPF_PROG(tamper_map_alloc, struct bpf_map *map)
{
	return map_born(map);
}

SEC("lsm/bpf_map_free_security")
int BPF_PROG(tamper_map_free_sec, struct bpf_map *map)
{
	map_gone(map);
	return 0;
}

SEC("lsm/bpf_map_create")
int BPF_PROG(tamper_map_create, struct bpf_map *map)
{
	return map_born(map);
}

SEC("lsm/bpf_map_free")
int BPF_PROG(tamper_map_free, struct bpf_map *map)
{
	map_gone(map);
	return 0;
}

/* A map of ours: by id (tamper_map_ids, filled by user space) or from its
 * birth (tamper_born_maps, before user space knows its id). */
static __always_inline bool map_protected(struct bpf_map *map, __u32 id)
{
	__u64 key = (__u64)map;

	return (id && bpf_map_lookup_elem(&tamper_map_ids, &id)) ||
	       bpf_map_lookup_elem(&tamper_born_maps, &key);
}

static __always_inline void *bpf_obj_of_fd(int fd)
{
	struct file *f = fd_file(fd);

	return f ? BPF_CORE_READ(f, private_data) : NULL;
}

SEC("lsm/bpf")
int BPF_PROG(tamper_bpf, int cmd, union bpf_attr *attr, unsigned int size)
{
	struct tamper_hit hit = {};
	__u32 id, op;
	void *priv;
	int fd;

	switch (cmd) {
	case BPF_MAP_UPDATE_ELEM:
	case BPF_MAP_DELETE_ELEM:
	case BPF_MAP_LOOKUP_AND_DELETE_ELEM:
	case BPF_MAP_FREEZE:
		fd = BPF_CORE_READ(attr, map_fd);
		op = BASTION_TAMPER_BPF_MAP;
		break;
	case BPF_MAP_UPDATE_BATCH:
	case BPF_MAP_DELETE_BATCH:
	case BPF_MAP_LOOKUP_AND_DELETE_BATCH:
		fd = BPF_CORE_READ(attr, batch.map_fd);
		op = BASTION_TAMPER_BPF_MAP;
		break;
	case BPF_LINK_DETACH:
		fd = BPF_CORE_READ(attr, link_detach.link_fd);
		op = BASTION_TAMPER_BPF_LINK;
		break;
	case BPF_LINK_UPDATE:
		fd = BPF_CORE_READ(attr, link_update.link_fd);
		op = BASTION_TAMPER_BPF_LINK;
		break;
	default:
		return 0;
	}
	priv = bpf_obj_of_fd(fd);
	if (!priv)
		return 0;
	if (op == BASTION_TAMPER_BPF_LINK) {
		id = BPF_CORE_READ((struct bpf_link *)priv, id);
		if (!id || !bpf_map_lookup_elem(&tamper_link_ids, &id))
			return 0;
	} else {
		id = BPF_CORE_READ((struct bpf_map *)priv, id);
		if (!map_protected(priv, id))
			return 0;
	}
	if (!current_in_scope())
		return 0;
	hit.id = id;
	tamper_report(op, BASTION_TV_DENIED, -EPERM_, 0, cmd, &hit, NULL, NULL);
	return -EPERM_;
}

/* An fd of a protected map (BPF_MAP_GET_FD_BY_ID, BPF_OBJ_GET of a pin;
 * protected by id or from its birth): refused to all but our identities when
 * it is write-mode, or when the map is not BPF_F_RDONLY_PROG (whatever the fd
 * mode).  The bpf hook above refuses the update commands on any fd; this one
 * refuses the fd itself, so nothing can mmap a writable view of it nor hand it
 * on.  A read-only fd is no bar to a program: the verifier takes a map fd of
 * any mode into BPF_LD_IMM64 (resolve_pseudo_ldimm64 ignores the fd's mode),
 * and a program of root's then writes the map with bpf_map_update_elem or a
 * direct store (.bss, hips_vcache, the maps born ours) -- s21 review F8.  So a
 * read-only fd passes only for maps programs cannot write (BPF_F_RDONLY_PROG:
 * the identity, object, id sets of bpf/lib/tamper.h, .rodata): the control
 * client's identity check reads tamper_idents that way.  tamper_born_maps
 * is written by our programs: no fd of it at all. */
SEC("lsm/bpf_map")
int BPF_PROG(tamper_bpf_map, struct bpf_map *map, fmode_t fmode)
{
	struct tamper_hit hit = {};
	__u32 id;

	id = BPF_CORE_READ(map, id);
	if ((void *)map == (void *)&tamper_born_maps) {
		/* written by programs: any fd would let a program of root's write it */
		if (!current_in_scope())
			return 0;
	} else if (!map_protected(map, id) || !current_in_scope()) {
		return 0;
	} else if (!(fmode & FMODE_WRITE_) &&
		   (BPF_CORE_READ(map, map_flags) & BPF_F_RDONLY_PROG_)) {
		return 0;       /* read-only fd of a map no program can write */
	}
	hit.id = id;
	tamper_report(BASTION_TAMPER_BPF_MAP_FD, BASTION_TV_DENIED, -EPERM_, 0, fmode, &hit, NULL,
		      NULL);
	return -EPERM_;
}

SEC("tp_btf/cgroup_attach_task")
int BPF_PROG(tamper_cgroup_move, struct cgroup *dst, const char *path, struct task_struct *task)
{
	return tamper_cgroup_attach(task);
}
