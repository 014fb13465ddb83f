// SPDX-License-Identifier: GPL-2.0
/* Bastion's kernel-first event sensor (lsm tier, and kernels with BPF
 * trampolines but without `bpf` in lsm=).  Hooks only: every program is an
 * fentry on the security_*() function that calls the LSM hooks (the same
 * point, the same kernel objects as an lsm/ program, but it loads whether or
 * not BPF LSM is active), an fexit, or a tp_btf.  No syscall tracepoint:
 * nothing puts every syscall of the host on the slow path; io_uring and
 * every other in-kernel path reach these hooks; every path and address is
 * read from the kernel's own objects (struct file, dentries, the kernel's
 * copy of a sockaddr or bpf_attr) after the kernel resolved it, so a thread
 * that rewrites a user buffer after syscall entry changes nothing.
 * Records: the same as tp_events.bpf.c (include/bastion.h). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

/* Processes whose events never cross the ring (the agent, its guardian):
 * user space writes their tgids; checked in wanted() before any work. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} quiet_tgids SEC(".maps");
#define BASTION_QUIET_TGIDS quiet_tgids
/* every program here gets BTF-typed arguments: the sensitive-set walk uses
 * plain loads, not a helper call per field (bpf/lib/sensitive.h) */
#define BASTION_BTF_LOADS 1

#define BASTION_PRIO_RING 1   /* two rings: bpf/lib/common.h */
#include "events.h"
#include "dedup.h"
#include "xmem.h"

char LICENSE[] SEC("license") = "GPL";

/* ------------------------------------------------------------------ */
/* process lifecycle: the tracepoints on kernel objects (not syscalls)  */

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	return emit_exec(p, bprm); /* provenance too (bpf/lib/prov.h) */
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_fork, struct task_struct *parent, struct task_struct *child)
{
	prov_fork(parent, child);
	return emit_fork(child);
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *p)
{
	prov_exit(p);
	return emit_exit(p);
}

/* ------------------------------------------------------------------ */
/* file open, filtered in the kernel                                    */

#define O_ACCMODE_ 00000003
#define O_CREAT_ 00000100
#define O_TRUNC_ 00001000
#define FMODE_WRITE_ 0x2
#define FMODE_CREATED_ BASTION_FMODE_CREATED

/* Read-only opens are most of all opens: reported only when asked (learn
 * mode) or when the file is in the sensitive set: wt-sensor's sens_inodes
 * map (bpf/lib/sensitive.h, the same map and the same filler,
 * sensors/sensitive.py, as the tracepoint sensor), the file's inode then up
 * to BASTION_SENS_DEPTH ancestors, and other processes' /proc/PID/mem|environ.
 * With cfg_sensitive off a read-open is dropped after two loads. */
const volatile __u32 cfg_open_reads = 0;

/* Repeat opens (same process, inode instance, access, write flags) within
 * cfg_open_dedup_ns are counted in open_deduped and not reported; an open that
 * created its file never is: bpf/lib/dedup.h. */

SEC("fentry/security_file_open")
int BPF_PROG(on_file_open, struct file *file)
{
	struct bastion_file_event *e;
	struct inode *inode;
	__u32 fflags, fmode, dev, sclass = 0, sid = 0;
	__u64 ino;
	bool write, sens;
	long n;

	/* cheapest first: most opens are reads, dropped here (plain loads from
	 * the BTF-typed argument, no helper call) */
	fflags = file->f_flags;
	fmode = file->f_mode;
	write = (fmode & FMODE_WRITE_) || (fflags & (O_CREAT_ | O_TRUNC_)) ||
		(fmode & FMODE_CREATED_);
	if (!write && !cfg_open_reads && !cfg_sensitive)
		return 0;
	/* a read outside the sensitive set (the common case) is dropped on the
	 * set's verdict cache (one lookup; the walk on a miss), before the
	 * quiet-process lookup of wanted() */
	sens = sens_match_cached(file, &sclass, &sid);
	if (!write && !cfg_open_reads && !sens)
		return 0;
	if (!wanted(BASTION_EV_FILE))
		return 0;
	inode = file->f_inode;
	if (!inode)
		return 0;
	ino = inode->i_ino;
	dev = BPF_CORE_READ(inode, i_sb, s_dev);
	if (open_seen_recently(dev, ino, inode->i_generation, inode, write, fflags, fmode))
		return 0;
	e = file_event(BASTION_FILE_OPEN);
	if (!e)
		return 0;
	if (fmode & FMODE_CREATED_) {
		fflags |= O_CREAT_;
		e->mode = BPF_CORE_READ(inode, i_mode) & 07777;
	}
	e->open_flags = fflags;
	e->ino = ino;
	e->dev = dev;
	/* do_open: lookup_open (or the filesystem's atomic_open) sets FMODE_CREATED before
	 * vfs_open reaches this hook; i_size is before any O_TRUNC (done after the open) */
	file_open_state(e, fmode, inode->i_size, inode);
	if (sens) {
		e->sens_class = sclass;
		e->sens_id = sid;
		e->hdr.flags |= BASTION_F_SENSITIVE;
	}
	/* the path of the file the kernel opened, from its struct file (bpf_d_path
	 * refuses a path longer than the buffer: then the walk, which keeps its end) */
	n = bpf_d_path((struct path *)&file->f_path, file_next(e), BASTION_PATH_LEN);
	if (n < 0) {
		struct path fpath = BPF_CORE_READ(file, f_path);

		file_put_path(e, FS_PATH, &fpath);
	} else {
		file_set(e, FS_PATH, n, 0);
	}
	file_submit(e);
	return 0;
}

/* A rename done: read-open verdicts cached before it are void (a directory
 * moved into or out of a sensitive subtree keeps its files' cache keys; see
 * sens_cache in bpf/lib/sensitive.h).  At the exit of vfs_rename, every
 * rename's path (io_uring's, overlayfs's copy-up too), after the move. */
SEC("fexit/vfs_rename")
int on_rename_done(void *ctx)
{
	sens_epoch_bump();
	return 0;
}

/* ------------------------------------------------------------------ */
/* unlink, rename, chmod, chown: the path hooks (the directory's struct   */
/* path and the entry's dentry, after the kernel's lookup)               */

/* path = dir + '/' + dentry name, as a relative pair (BASTION_F_RELATIVE*): the name
 * into @slot (FS_PATH or FS_PATH2), the directory into the slot after it */
static __always_inline void dir_entry(struct bastion_file_event *e, enum file_slot slot,
				      const struct path *dir, struct dentry *d, __u16 rel_flag)
{
	struct qstr name = BPF_CORE_READ(d, d_name);

	e->hdr.flags |= rel_flag;
	file_put_name(e, slot, name.name);
	file_put_path(e, slot == FS_PATH ? FS_DIR : FS_DIR2, dir);
}

static __always_inline int unlink_ev(const struct path *dir, struct dentry *d)
{
	struct bastion_file_event *e;

	if (!wanted(BASTION_EV_FILE))
		return 0;
	e = file_event(BASTION_FILE_UNLINK);
	if (!e)
		return 0;
	e->ino = BPF_CORE_READ(d, d_inode, i_ino);
	e->dev = BPF_CORE_READ(d, d_inode, i_sb, s_dev);
	dir_entry(e, FS_PATH, dir, d, BASTION_F_RELATIVE);
	file_submit(e);
	return 0;
}

SEC("fentry/security_path_unlink")
int BPF_PROG(on_path_unlink, const struct path *dir, struct dentry *dentry)
{
	return unlink_ev(dir, dentry);
}

SEC("fentry/security_path_rmdir")
int BPF_PROG(on_path_rmdir, const struct path *dir, struct dentry *dentry)
{
	return unlink_ev(dir, dentry);
}

SEC("fentry/security_path_rename")
int BPF_PROG(on_path_rename, const struct path *old_dir, struct dentry *old_dentry,
	     const struct path *new_dir, struct dentry *new_dentry)
{
	struct bastion_file_event *e;

	if (!wanted(BASTION_EV_FILE))
		return 0;
	e = file_event(BASTION_FILE_RENAME);
	if (!e)
		return 0;
	e->ino = BPF_CORE_READ(old_dentry, d_inode, i_ino);
	e->dev = BPF_CORE_READ(old_dentry, d_inode, i_sb, s_dev);
	dir_entry(e, FS_PATH, old_dir, old_dentry, BASTION_F_RELATIVE);
	dir_entry(e, FS_PATH2, new_dir, new_dentry, BASTION_F_RELATIVE2);
	file_submit(e);
	return 0;
}

/* A hard link: the existing file (its inode, and its path from the dentry
 * the kernel resolved) and the new name in path2/dir2, as the compat
 * sensor's linkat record (BASTION_FILE_LINK). */
SEC("fentry/security_path_link")
int BPF_PROG(on_path_link, struct dentry *old_dentry, const struct path *new_dir,
	     struct dentry *new_dentry)
{
	struct bastion_file_event *e;
	struct inode *inode;

	if (!wanted(BASTION_EV_FILE))
		return 0;
	e = file_event(BASTION_FILE_LINK);
	if (!e)
		return 0;
	inode = BPF_CORE_READ(old_dentry, d_inode);
	e->ino = BPF_CORE_READ(inode, i_ino);
	e->dev = BPF_CORE_READ(inode, i_sb, s_dev);
	/* old_dentry has no vfsmount here; a link never crosses one, so the
	 * new directory's mount names it */
	{
		struct path op = {};

		op.mnt = BPF_CORE_READ(new_dir, mnt);
		op.dentry = old_dentry;
		file_put_path(e, FS_PATH, &op);
	}
	dir_entry(e, FS_PATH2, new_dir, new_dentry, BASTION_F_RELATIVE2);
	file_submit(e);
	return 0;
}

static __always_inline struct bastion_file_event *path_event(__u32 op, const struct path *p)
{
	struct bastion_file_event *e;

	if (!wanted(BASTION_EV_FILE))
		return NULL;
	e = file_event(op);
	if (!e)
		return NULL;
	e->ino = BPF_CORE_READ(p, dentry, d_inode, i_ino);
	e->dev = BPF_CORE_READ(p, dentry, d_inode, i_sb, s_dev);
	file_put_path(e, FS_PATH, p);
	return e;
}

/* raw context: kuid_t/kgid_t and umode_t arguments are read as integers */
SEC("fentry/security_path_chmod")
int on_path_chmod(unsigned long long *ctx)
{
	struct bastion_file_event *e = path_event(BASTION_FILE_CHMOD, (const struct path *)ctx[0]);

	if (!e)
		return 0;
	e->mode = (__u32)ctx[1] & 07777;
	file_submit(e);
	return 0;
}

SEC("fentry/security_path_chown")
int on_path_chown(unsigned long long *ctx)
{
	struct bastion_file_event *e = path_event(BASTION_FILE_CHOWN, (const struct path *)ctx[0]);

	if (!e)
		return 0;
	e->owner_uid = (__u32)ctx[1];
	e->owner_gid = (__u32)ctx[2];
	file_submit(e);
	return 0;
}

/* A chosen modification time set on a file (s23, timestomping): vfs_utimes is
 * where utimensat, futimens, utimes, futimesat and utime meet, with the kernel's
 * copy of the times (NULL: now; tv_nsec UTIME_NOW / UTIME_OMIT).  Only an
 * explicit mtime crosses. */
#define UTIME_NOW_ ((1L << 30) - 1L)
#define UTIME_OMIT_ ((1L << 30) - 2L)

SEC("fentry/vfs_utimes")
int BPF_PROG(on_vfs_utimes, const struct path *path, struct timespec64 *times)
{
	struct bastion_file_event *e;
	struct timespec64 ts[2] = {};
	__u32 bits = 0;

	if (!times || bpf_probe_read_kernel(ts, sizeof(ts), times))
		return 0;
	if (ts[1].tv_nsec == UTIME_NOW_ || ts[1].tv_nsec == UTIME_OMIT_)
		return 0;
	bits = BASTION_UTIMES_MTIME;
	if (ts[0].tv_nsec != UTIME_NOW_ && ts[0].tv_nsec != UTIME_OMIT_)
		bits |= BASTION_UTIMES_ATIME;
	e = path_event(BASTION_FILE_UTIMES, path);
	if (!e)
		return 0;
	e->mode = bits;
	e->ctime_ns = (__u64)ts[1].tv_sec * 1000000000ULL + (__u64)ts[1].tv_nsec;
	file_submit(e);
	return 0;
}

/* ------------------------------------------------------------------ */
/* network: the kernel's copy of the address, and the socket itself      */

static __always_inline void kern_sockaddr(const struct sockaddr *sa, __u16 *family, __u8 addr[16],
					  __u16 *port)
{
	__u16 fam = 0, p = 0;

	bpf_probe_read_kernel(&fam, sizeof(fam), sa);
	*family = fam;
	if (fam == AF_INET_) {
		struct sockaddr_in sin = {};

		bpf_probe_read_kernel(&sin, sizeof(sin), sa);
		__builtin_memcpy(addr, &sin.sin_addr.s_addr, 4);
		p = sin.sin_port;
	} else if (fam == AF_INET6_) {
		struct sockaddr_in6 sin6 = {};

		bpf_probe_read_kernel(&sin6, sizeof(sin6), sa);
		__builtin_memcpy(addr, &sin6.sin6_addr, 16);
		p = sin6.sin6_port;
	}
	*port = be16(p);
}

SEC("fentry/security_socket_connect")
int BPF_PROG(on_socket_connect, struct socket *sock, struct sockaddr *address, int addrlen)
{
	struct bastion_net_event *e;
	struct sock *sk;

	__u8 daddr[16] = {};
	__u16 family = 0, dport = 0;

	if (!wanted(BASTION_EV_NET))
		return 0;
	kern_sockaddr(address, &family, daddr, &dport);
	if (net_seen_recently(BASTION_NET_CONNECT, family, daddr, dport))
		return 0;
	e = net_event(BASTION_NET_CONNECT);
	if (!e)
		return 0;
	e->family = family;
	e->dport = dport;
	__builtin_memcpy(e->daddr, daddr, 16);
	sk = BPF_CORE_READ(sock, sk);
	if (sk) {
		e->protocol = BPF_CORE_READ(sk, sk_protocol);
		e->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	}
	SUBMIT(e);
	return 0;
}

SEC("fentry/security_socket_bind")
int BPF_PROG(on_socket_bind, struct socket *sock, struct sockaddr *address, int addrlen)
{
	struct bastion_net_event *e;
	struct sock *sk;

	if (!wanted(BASTION_EV_NET))
		return 0;
	e = net_event(BASTION_NET_BIND);
	if (!e)
		return 0;
	kern_sockaddr(address, &e->family, e->saddr, &e->sport);
	sk = BPF_CORE_READ(sock, sk);
	if (sk)
		e->protocol = BPF_CORE_READ(sk, sk_protocol);
	SUBMIT(e);
	return 0;
}

SEC("fentry/security_socket_listen")
int BPF_PROG(on_socket_listen, struct socket *sock, int backlog)
{
	struct bastion_net_event *e;
	struct sock *sk;

	if (!wanted(BASTION_EV_NET))
		return 0;
	e = net_event(BASTION_NET_LISTEN);
	if (!e)
		return 0;
	sk = BPF_CORE_READ(sock, sk);
	if (sk)
		sock_addrs(sk, e);
	e->backlog = backlog;
	SUBMIT(e);
	return 0;
}

/* accept: the new connection's socket, when the kernel hands it out (TCP;
 * io_uring accepts included).  The descriptor is not known here: ret = 0. */
SEC("fexit/inet_csk_accept")
int on_accept(void *ctx)
{
	struct bastion_net_event *e;
	__u64 ret = 0;
	struct sock *sk;

	if (!wanted(BASTION_EV_NET))
		return 0;
	if (bpf_get_func_ret(ctx, &ret) || !ret)
		return 0;
	sk = (struct sock *)ret;
	if (accept_seen_recently(sk))
		return 0;
	e = net_event(BASTION_NET_ACCEPT);
	if (!e)
		return 0;
	sock_addrs(sk, e);
	SUBMIT(e);
	return 0;
}

/* ------------------------------------------------------------------ */
/* process interaction and privilege                                   */

/* Every signal the kernel checks for delivery to a task, whatever the
 * syscall: the record names the target thread and its process (tgkill form). */
SEC("fentry/security_task_kill")
int BPF_PROG(on_task_kill, struct task_struct *p, struct kernel_siginfo *info, int sig)
{
	struct dedup_key k = {};

	if (sig == 0 || !wanted(BASTION_EV_KILL) || kill_seen_recently(sig, p, &k))
		return 0; /* signal 0 only probes for existence */
	if (!kill_ev(BASTION_KILL_TGKILL, BPF_CORE_READ(p, pid), BPF_CORE_READ(p, tgid), sig) &&
	    cfg_kill_dedup_ns)
		kill_unstamp(&k, sig);   /* not sent: its repeats are not hidden behind it */
	return 0;
}

#define PTRACE_TRACEME_ 0
#define PTRACE_ATTACH_ 16
#define PTRACE_MODE_ATTACH_ 0x02

/* Attach-mode access only (PTRACE_ATTACH/SEIZE, process_vm_writev, /proc/PID/mem
 * writes): read-mode checks are every `ps`. */
SEC("fentry/security_ptrace_access_check")
int BPF_PROG(on_ptrace_access, struct task_struct *child, unsigned int mode)
{
	if (!(mode & PTRACE_MODE_ATTACH_))
		return 0;
	return ptrace_once(PTRACE_ATTACH_, BPF_CORE_READ(child, pid), 0,
			   BPF_CORE_READ(child, group_leader, start_boottime));
}

SEC("fentry/security_ptrace_traceme")
int BPF_PROG(on_ptrace_traceme, struct task_struct *parent)
{
	return ptrace_once(PTRACE_TRACEME_, BPF_CORE_READ(parent, pid), 0,
			   BPF_CORE_READ(parent, group_leader, start_boottime));
}

/* bpf(): the kernel's copy of the attributes (3 arguments on 6.1, 4 later:
 * only the first two are declared). */
SEC("fentry/security_bpf")
int BPF_PROG(on_bpf, int cmd, union bpf_attr *attr)
{
	struct bastion_bpf_event *e;

	if (!bpf_cmd_wanted(cmd))
		return 0;
	e = RESERVE(struct bastion_bpf_event, BASTION_EV_BPF);
	if (!e)
		return 0;
	FILL_BPF_EVENT(e, cmd, attr, bpf_probe_read_kernel);
	SUBMIT(e);
	return 0;
}

#define LSM_SETID_ID_ 1
#define LSM_SETID_RE_ 2
#define LSM_SETID_RES_ 4

/* set*uid / set*gid: the new credentials the kernel is about to commit */
static __always_inline int setid_ev(struct cred *new, int flags, bool gid)
{
	__u32 r, e, s;

	if (gid) {
		r = BPF_CORE_READ(new, gid.val);
		e = BPF_CORE_READ(new, egid.val);
		s = BPF_CORE_READ(new, sgid.val);
	} else {
		r = BPF_CORE_READ(new, uid.val);
		e = BPF_CORE_READ(new, euid.val);
		s = BPF_CORE_READ(new, suid.val);
	}
	if (flags == LSM_SETID_ID_)
		return cred_ev(gid ? BASTION_CRED_SETGID : BASTION_CRED_SETUID, e, -1, -1);
	if (flags == LSM_SETID_RE_)
		return cred_ev(gid ? BASTION_CRED_SETREGID : BASTION_CRED_SETREUID, r, e, -1);
	if (flags == LSM_SETID_RES_)
		return cred_ev(gid ? BASTION_CRED_SETRESGID : BASTION_CRED_SETRESUID, r, e, s);
	return 0; /* setfsuid/setfsgid: not reported by either sensor */
}

SEC("fentry/security_task_fix_setuid")
int BPF_PROG(on_fix_setuid, struct cred *new, const struct cred *old, int flags)
{
	return setid_ev(new, flags, false);
}

SEC("fentry/security_task_fix_setgid")
int BPF_PROG(on_fix_setgid, struct cred *new, const struct cred *old, int flags)
{
	return setid_ev(new, flags, true);
}

#define LINUX_CAPABILITY_VERSION_3_ 0x20080522

SEC("fentry/security_capset")
int BPF_PROG(on_capset, struct cred *new, const struct cred *old, const kernel_cap_t *effective,
	     const kernel_cap_t *inheritable, const kernel_cap_t *permitted)
{
	struct bastion_cred_event *e;

	if (!wanted(BASTION_EV_CRED))
		return 0;
	e = RESERVE(struct bastion_cred_event, BASTION_EV_CRED);
	if (!e)
		return 0;
	e->op = BASTION_CRED_CAPSET;
	e->a0 = LINUX_CAPABILITY_VERSION_3_; /* the header is gone by now: the current version */
	e->a1 = 0;
	e->a2 = 0;
	/* kernel_cap_t is 8 bytes on every kernel (u32[2] up to 6.2, u64 since) */
	e->cap_effective = 0;
	e->cap_permitted = 0;
	bpf_probe_read_kernel(&e->cap_effective, 8, effective);
	bpf_probe_read_kernel(&e->cap_permitted, 8, permitted);
	SUBMIT(e);
	return 0;
}

/* ------------------------------------------------------------------ */
/* executable memory and memfd (ABI 2.1): bpf/lib/xmem.h               */

#define XM_PROT_EXEC_ BASTION_PROT_EXEC

/* every mmap with PROT_EXEC (the caller's prot, before READ_IMPLIES_EXEC):
 * the file is NULL for anonymous memory, shared anonymous included (shmem is
 * set up after this hook) */
SEC("fentry/security_mmap_file")
int BPF_PROG(on_mmap_file, struct file *file, unsigned long prot, unsigned long flags)
{
	__u32 why;

	if (!(prot & XM_PROT_EXEC_))
		return 0;
	why = xmem_file_why(file);
	if (prot & XM_PROT_WRITE_)
		why |= BASTION_XM_WRITE;
	return emit_xmem(BASTION_MMAP_MMAP, why, prot, flags, 0, 0, file);
}

/* every vma an mprotect with PROT_EXEC changes: its flags before the change
 * tell a W->X flip and memory that was not executable */
SEC("fentry/security_file_mprotect")
int BPF_PROG(on_file_mprotect, struct vm_area_struct *vma, unsigned long reqprot,
	     unsigned long prot)
{
	__u64 vm_flags, start;
	struct file *f;

	if (!(reqprot & XM_PROT_EXEC_))
		return 0;
	vm_flags = BPF_CORE_READ(vma, vm_flags);
	f = BPF_CORE_READ(vma, vm_file);
	start = BPF_CORE_READ(vma, vm_start);
	return emit_xmem(BASTION_MMAP_MPROTECT, xmem_mprotect_why(reqprot, vm_flags, f), reqprot,
			 (__u32)vm_flags, start, BPF_CORE_READ(vma, vm_end) - start, f);
}

#define MEMFD_PREFIX_LEN 6 /* "memfd:" */

/* memfd_create: at the syscall function's exit, from the file the kernel made
 * (its dentry is "memfd:NAME"), so the name is the kernel's copy; no LSM hook
 * sees a memfd being created (fexit on the x86-64 syscall function: BTF names
 * it on Debian's 6.1 and on 6.18). */
SEC("fexit/__x64_sys_memfd_create")
int BPF_PROG(on_memfd_create, const struct pt_regs *regs, long ret)
{
	struct bastion_memfd_event *e;
	struct file *f;
	struct qstr name;

	if (ret < 0 || !wanted(BASTION_EV_MEMFD))
		return 0;
	f = fd_file(ret);
	if (!f)
		return 0;
	e = RESERVE(struct bastion_memfd_event, BASTION_EV_MEMFD);
	if (!e)
		return 0;
	e->flags = BPF_CORE_READ(regs, si);
	e->_pad = 0;
	name = BPF_CORE_READ(f, f_path.dentry, d_name);
	if (name.len < MEMFD_PREFIX_LEN ||
	    bpf_probe_read_kernel_str(e->name, sizeof(e->name), name.name + MEMFD_PREFIX_LEN) < 0)
		e->name[0] = '\0';
	SUBMIT(e);
	return 0;
}

/* mount_setattr(MOUNT_ATTR_RDONLY) and fspick (then fsconfig RECONFIGURE) of a log
 * mount stop new log writes, with no LSM hook on 6.1 (s16-gate): reported at the
 * exit of the x86-64 syscall functions (an fexit, as memfd_create: no syscall
 * tracepoint), successful calls only (s16-fixlog), the path as passed and, when relative, the
 * directory it is relative to; the rule judges the target.  Optional programs (BTF
 * names the functions on 6.1 and 6.18). */
static __always_inline struct bastion_file_event *mount_event(__u32 op, int dfd,
							      const char *upath)
{
	struct bastion_file_event *e;
	char *out;
	long n;

	if (!wanted(BASTION_EV_FILE))
		return NULL;
	e = file_event(op);
	if (!e)
		return NULL;
	out = file_next(e);
	n = file_put_user(e, FS_PATH, upath);
	if (n > 1 && out[0] == '/')
		return e;
	e->hdr.flags |= BASTION_F_RELATIVE;
	if (dfd == -100) {   /* AT_FDCWD */
		struct task_struct *task = bpf_get_current_task_btf();
		struct path pwd = BPF_CORE_READ(task, fs, pwd);

		file_put_path(e, FS_DIR, &pwd);
	} else {
		struct file *f = fd_file(dfd);

		if (f) {
			struct path p = BPF_CORE_READ(f, f_path);

			file_put_path(e, FS_DIR, &p);
		}
	}
	return e;
}

/* only a call that succeeded (s16-fixlog: a failed one, an unprivileged user's EPERM,
 * changes nothing), only in the host's mount namespace (cfg_host_mnt_ns); the path and
 * attr_set read from the caller's memory at exit (another thread may have rewritten
 * them after the kernel copied them) */
const volatile __u32 cfg_host_mnt_ns = 0;

static __always_inline bool mount_counts(long ret)
{
	struct task_struct *t = bpf_get_current_task_btf();

	return ret >= 0 && (!cfg_host_mnt_ns ||
			    BPF_CORE_READ(t, nsproxy, mnt_ns, ns.inum) == cfg_host_mnt_ns);
}

SEC("fexit/__x64_sys_mount_setattr")
int BPF_PROG(on_mount_setattr, const struct pt_regs *regs, long ret)
{
	struct bastion_file_event *e;
	__u64 attr_set = 0;

	if (!mount_counts(ret))
		return 0;
	e = mount_event(BASTION_FILE_MOUNT_SETATTR, (int)BPF_CORE_READ(regs, di),
			(const char *)BPF_CORE_READ(regs, si));
	if (!e)
		return 0;
	bpf_probe_read_user(&attr_set, sizeof(attr_set), (void *)BPF_CORE_READ(regs, r10));
	e->mode = (__u32)attr_set;
	e->open_flags = BPF_CORE_READ(regs, dx);
	file_submit(e);
	return 0;
}

SEC("fexit/__x64_sys_fspick")
int BPF_PROG(on_fspick, const struct pt_regs *regs, long ret)
{
	struct bastion_file_event *e;

	if (!mount_counts(ret))
		return 0;
	e = mount_event(BASTION_FILE_FSPICK, (int)BPF_CORE_READ(regs, di),
			(const char *)BPF_CORE_READ(regs, si));
	if (!e)
		return 0;
	e->open_flags = BPF_CORE_READ(regs, dx);
	file_submit(e);
	return 0;
}
