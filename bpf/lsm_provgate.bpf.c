// SPDX-License-Identifier: GPL-2.0
/* The provenance gate in the hook (issue 15, lsm tier): the must-stop acts of
 * a process tree with untrusted provenance are refused in the LSM hook, before
 * the harm.  The actor's reasons come from `prov` (bpf/lib/prov.h), the event
 * sensor's map, given to this object at load (ObjectSpec.reuse_maps): one map,
 * kept by the sensor's exec/fork/exit programs.  The objects and their classes
 * (include/bastion.h, "the provenance gate in the hook") come from
 * src/bastion/enforce/muststop.py, the list the compat tier's fanotify gate
 * marks.
 *
 * The trust rules are the fanotify gate's (src/bastion/enforce/provgate.py):
 * no entry, or the admin-session bit alone: allowed, unseen; the admin-session
 * bit with only local reasons (tmp-script, tmp-binary): allowed and reported
 * (audit); any other untrusted tree, trusted administrator tools run by it
 * included: refused (or, for a class in dry run, reported as would-deny).
 *
 * Cheap for everyone else: the first thing every hook does after the scope
 * check is one lookup of the current process's `prov` storage; an untainted task
 * (nearly all) stops there.  No loop: an object is its own inode, a child of a
 * directory entry (user space enters every subdirectory), or a name in a
 * directory.  Dentry-only hooks report the path within the filesystem. */
#include "path.h"
#include "prov_map.h"
#include "setattr.h"

char LICENSE[] SEC("license") = "GPL";

#define EPERM_ 1
#define FMODE_WRITE_ 0x2
#define O_APPEND_ 02000
#define TICK_NS_ 10000000ULL    /* NSEC_PER_SEC / USER_HZ (100 on x86-64 and arm64) */

const volatile __u32 cfg_setattr_idmap = 1;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_RDONLY_PROG);
	__type(key, struct bastion_inode_key);
	__type(value, struct bastion_pgate_obj);
} pgate_objs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_RDONLY_PROG);
	__type(key, struct bastion_pgate_name);
	__type(value, struct bastion_pgate_obj);
} pgate_names SEC(".maps");

/* Directories above the objects (include/bastion.h, `pgate_anc`): not renamed,
 * not mounted on by a tainted tree.  Not objects themselves: reading or
 * creating in /etc stays allowed. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_RDONLY_PROG);
	__type(key, struct bastion_inode_key);
	__type(value, struct bastion_pgate_obj);
} pgate_anc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_RDONLY_PROG);
	__type(key, __u32);
	__type(value, struct bastion_pgate_tool);
} pgate_tools SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_RDONLY_PROG);
	__type(key, __u32);
	__type(value, struct bastion_pgate_cfg);
} pgate_cfg SEC(".maps");

/* The current task's untrusted reasons (admin bit included), 0 = none or out of
 * scope, PROV_ACTOR_UNSEEN: no entry found (settled in pgate_decide_how once the
 * object is must-stop).  The one cost every hook pays. */
static __always_inline __u32 pgate_actor(void)
{
	return in_scope() ? prov_gate_actor() : 0;
}

struct pgate_hit {
	__u64 ino;
	__u32 dev;
	__u32 cls;
};

static __always_inline __u32 inode_class(struct inode *ino, bool dir_only, struct pgate_hit *h)
{
	struct bastion_inode_key k = {};
	struct bastion_pgate_obj *o;

	if (!ino)
		return 0;
	k.ino = BPF_CORE_READ(ino, i_ino);
	k.dev = BPF_CORE_READ(ino, i_sb, s_dev);
	o = bpf_map_lookup_elem(&pgate_objs, &k);
	if (!o || (dir_only && !(o->flags & BASTION_PGATE_F_DIR)))
		return 0;
	h->ino = k.ino;
	h->dev = k.dev;
	h->cls = o->cls;
	return o->cls;
}

/* The class of the object @d names: its inode, else its directory's (a
 * directory entry: its children are objects), else its directory's directory's
 * (a directory made since the last entering), else its name in its directory
 * (a must-stop name that may not exist yet).  0: none. */
static __always_inline __u32 dentry_class(struct dentry *d, struct pgate_hit *h)
{
	struct dentry *parent = BPF_CORE_READ(d, d_parent);
	struct inode *dir = BPF_CORE_READ(parent, d_inode);
	struct bastion_pgate_name nk = {};
	struct bastion_pgate_obj *o;
	struct qstr name;

	if (inode_class(BPF_CORE_READ(d, d_inode), false, h))
		return h->cls;
	if (parent == d || !dir)
		return 0;
	if (inode_class(dir, true, h))
		return h->cls;
	/* a directory made in a tree since the objects were entered (a
	 * foo.service.d/ from `systemctl edit`; a tainted tree may not make one):
	 * its grandparent is; the maintenance tick enters it */
	if (inode_class(BPF_CORE_READ(parent, d_parent, d_inode), true, h))
		return h->cls;
	nk.ino = BPF_CORE_READ(dir, i_ino);
	nk.dev = BPF_CORE_READ(dir, i_sb, s_dev);
	name = BPF_CORE_READ(d, d_name);
	if (name.len >= BASTION_PGATE_NAME_LEN)
		return 0;
	if (bpf_probe_read_kernel_str(nk.name, sizeof(nk.name), name.name) <= 0)
		return 0;
	o = bpf_map_lookup_elem(&pgate_names, &nk);
	if (!o)
		return 0;
	h->ino = nk.ino;
	h->dev = nk.dev;
	h->cls = o->cls;
	return o->cls;
}

/* Decide and report one must-stop act of an actor with @reasons: -EPERM when
 * refused, 0 when allowed (admin session, dry run). */
static __always_inline int pgate_decide_how(__u32 op, __u32 how, __u32 reasons,
					    const struct pgate_hit *h, struct dentry *d,
					    struct vfsmount *mnt, __s32 target)
{
	__u32 local = reasons & ~BASTION_PROV_ADMIN_TTY, zero = 0, action = BASTION_ACT_DENY;
	struct bastion_pgate_cfg *cfg = bpf_map_lookup_elem(&pgate_cfg, &zero);
	struct bastion_hips_event *e;
	bool enforced;

	/* a must-stop object: an actor the plain lookup did not find is looked up
	 * with F_CREATE; a NULL then is busy or no memory: refused (prov_map.h) */
	reasons = prov_actor_settle(reasons);
	if (!reasons)
		return 0;
	local = reasons & ~BASTION_PROV_ADMIN_TTY;
	if ((reasons & BASTION_PROV_ADMIN_TTY) && !(local & ~BASTION_PROV_LOCAL_MASK))
		action = BASTION_ACT_AUDIT;
	enforced = action == BASTION_ACT_DENY &&
		   !(cfg && h->cls < 32 && (cfg->dry_run & (1u << h->cls)));
	e = reserve_hips(op, action, h->cls, local, BASTION_MECH_LSM_PROV,
			 enforced ? -EPERM_ : 0, 0, enforced);
	if (e) {
		e->ino = h->ino;
		e->dev = h->dev;
		e->target_pid = target;
		e->detail = how;
		if (d) {
			struct path p = {};

			p.dentry = d;
			p.mnt = mnt;
			if (path_to_str(&p, e->path))
				e->hdr.flags |= BASTION_F_TRUNC_PATH;
		}
		SUBMIT(e);
	}
	return enforced ? -EPERM_ : 0;
}

static __always_inline int pgate_decide(__u32 op, __u32 reasons, const struct pgate_hit *h,
					struct dentry *d, struct vfsmount *mnt, __s32 target)
{
	return pgate_decide_how(op, 0, reasons, h, d, mnt, target);
}

/* A name change (create, link, rename, unlink) of @d by the current task:
 * refused for the classes in @classes (bit 1 << class). */
static __always_inline int pgate_name(__u32 op, struct dentry *d, __u32 classes)
{
	__u32 reasons = pgate_actor();
	struct pgate_hit h = {};
	__u32 cls;

	if (!reasons)
		return 0;
	cls = dentry_class(d, &h);
	if (!cls || cls >= 32 || !(classes & (1u << cls)))
		return 0;
	if (cls == BASTION_PGATE_LOG && !BPF_CORE_READ(d, d_inode, i_size))
		return 0; /* an empty file under a log object (a mail spool's dotlock, a new
			   * mailbox's chown): nothing to wipe (s23 review 4) */
	return pgate_decide(op, reasons, &h, d, NULL, 0);
}

/* The class of the directory above an object that @d is (`pgate_anc`), 0: none. */
static __always_inline __u32 anc_class(struct dentry *d, struct pgate_hit *h)
{
	struct inode *ino = d ? BPF_CORE_READ(d, d_inode) : NULL;
	struct bastion_inode_key k = {};
	struct bastion_pgate_obj *o;

	if (!ino)
		return 0;
	k.ino = BPF_CORE_READ(ino, i_ino);
	k.dev = BPF_CORE_READ(ino, i_sb, s_dev);
	o = bpf_map_lookup_elem(&pgate_anc, &k);
	if (!o)
		return 0;
	h->ino = k.ino;
	h->dev = k.dev;
	h->cls = o->cls;
	return o->cls;
}

/* Renaming (or exchanging) a directory above an object: `mv /etc/systemd
 * /etc/s.old` and a recreated tree would be new inodes, none of them entered. */
static __always_inline int pgate_ancestor_rename(struct dentry *old_dentry,
						 struct dentry *new_dentry)
{
	__u32 reasons = pgate_actor();
	struct pgate_hit h = {};
	struct dentry *d = old_dentry;

	if (!reasons)
		return 0;
	if (!anc_class(d, &h)) {
		d = new_dentry;
		if (!anc_class(d, &h))
			return 0;
	}
	return pgate_decide_how(BASTION_OP_RENAME, BASTION_PGATE_HOW_ANCESTOR, reasons, &h, d,
				NULL, 0);
}

#define C_PERSIST (1u << BASTION_PGATE_PERSISTENCE)
#define C_CRED (1u << BASTION_PGATE_CREDENTIAL)
#define C_LOG (1u << BASTION_PGATE_LOG)
#define C_SECCONF (1u << BASTION_PGATE_SECURITY_CONFIG)
/* s23: a security configuration (firewall, logging) is refused as persistence is */
#define C_WRITE_ONLY (C_PERSIST | C_SECCONF)
#define C_FILES (C_PERSIST | C_CRED | C_LOG | C_SECCONF)

SEC("lsm/file_open")
int BPF_PROG(pgate_file_open, struct file *file)
{
	__u32 reasons = pgate_actor(), cls;
	struct pgate_hit h = {};
	struct dentry *d;
	bool write;

	if (!reasons)
		return 0;
	d = BPF_CORE_READ(file, f_path.dentry);
	cls = dentry_class(d, &h);
	if (!cls)
		return 0;
	write = BPF_CORE_READ(file, f_mode) & FMODE_WRITE_;
	if (cls < 32 && (C_WRITE_ONLY & (1u << cls)) && !write)
		return 0; /* reading a profile, a crontab or a firewall config harms nothing */
	if (cls == BASTION_PGATE_LOG &&
	    (!write || (BPF_CORE_READ(file, f_flags) & O_APPEND_)))
		return 0; /* reading or appending to a log is no wiping */
	if (cls == BASTION_PGATE_LOG &&
	    ((BPF_CORE_READ(file, f_mode) & 0x100000 /* FMODE_CREATED */) ||
	     !BPF_CORE_READ(d, d_inode, i_size)))
		return 0; /* created by this open or empty: nothing to wipe (the compat gate's
			   * rule; a mail delivery agent's O_EXCL dotlock, s23 review 4) */
	if (cls == BASTION_PGATE_SECURITY_TOOL || cls == BASTION_PGATE_FIREWALL)
		return 0;
	return pgate_decide(write ? BASTION_OP_OPEN_WRITE : BASTION_OP_OPEN_READ, reasons, &h, d,
			    BPF_CORE_READ(file, f_path.mnt), 0);
}

/* truncate(2), ftruncate(2), open with O_TRUNC */
SEC("lsm/path_truncate")
int BPF_PROG(pgate_path_truncate, const struct path *path)
{
	__u32 reasons = pgate_actor(), cls;
	struct pgate_hit h = {};
	struct dentry *d;

	if (!reasons)
		return 0;
	d = BPF_CORE_READ(path, dentry);
	cls = dentry_class(d, &h);
	if (!cls || cls >= 32 || !(C_FILES & (1u << cls)))
		return 0;
	return pgate_decide(BASTION_OP_OPEN_WRITE, reasons, &h, d, BPF_CORE_READ(path, mnt), 0);
}

/* A new name: a persistence or credential name may not be created (a first
 * /etc/ld.so.preload, a cron.d entry, ~/.ssh/authorized_keys); new logs may. */
SEC("lsm/inode_create")
int BPF_PROG(pgate_inode_create, struct inode *dir, struct dentry *dentry)
{
	return pgate_name(BASTION_OP_CREATE, dentry, C_WRITE_ONLY | C_CRED);
}

SEC("lsm/inode_mkdir")
int BPF_PROG(pgate_inode_mkdir, struct inode *dir, struct dentry *dentry)
{
	return pgate_name(BASTION_OP_CREATE, dentry, C_WRITE_ONLY | C_CRED);
}

SEC("lsm/inode_mknod")
int BPF_PROG(pgate_inode_mknod, struct inode *dir, struct dentry *dentry)
{
	return pgate_name(BASTION_OP_CREATE, dentry, C_WRITE_ONLY | C_CRED);
}

SEC("lsm/inode_symlink")
int BPF_PROG(pgate_inode_symlink, struct inode *dir, struct dentry *dentry)
{
	return pgate_name(BASTION_OP_CREATE, dentry, C_WRITE_ONLY | C_CRED);
}

/* A hard link: to a persistence or credential file (a name outside every
 * object: `ln /etc/shadow /tmp/s`), or into a must-stop place. */
SEC("lsm/inode_link")
int BPF_PROG(pgate_inode_link, struct dentry *old_dentry, struct inode *dir,
	     struct dentry *new_dentry)
{
	int err = pgate_name(BASTION_OP_CREATE, old_dentry, C_WRITE_ONLY | C_CRED);

	return err ? err : pgate_name(BASTION_OP_CREATE, new_dentry, C_WRITE_ONLY | C_CRED);
}

/* Removing a name: a cron entry, a key, a log (log wiping). */
SEC("lsm/inode_unlink")
int BPF_PROG(pgate_inode_unlink, struct inode *dir, struct dentry *dentry)
{
	return pgate_name(BASTION_OP_UNLINK, dentry, C_FILES);
}

SEC("lsm/inode_rmdir")
int BPF_PROG(pgate_inode_rmdir, struct inode *dir, struct dentry *dentry)
{
	return pgate_name(BASTION_OP_UNLINK, dentry, C_FILES);
}

/* A rename out of (a log moved away, a unit taken out) or into a must-stop
 * place or over a must-stop file (`mv x /etc/cron.d/y`). */
SEC("lsm/inode_rename")
int BPF_PROG(pgate_inode_rename, struct inode *old_dir, struct dentry *old_dentry,
	     struct inode *new_dir, struct dentry *new_dentry)
{
	int err = pgate_name(BASTION_OP_RENAME, old_dentry, C_FILES);

	if (!err)
		err = pgate_name(BASTION_OP_RENAME, new_dentry, C_FILES);
	return err ? err : pgate_ancestor_rename(old_dentry, new_dentry);
}

SEC("lsm/inode_setattr")
int BPF_PROG(pgate_inode_setattr)
{
	struct dentry *dentry;
	struct iattr *attr;	setattr_args(ctx, cfg_setattr_idmap, &dentry, &attr);
	if (!(BPF_CORE_READ(attr, ia_valid) & (ATTR_MODE_ | ATTR_UID_ | ATTR_GID_ | ATTR_SIZE_)))
		return 0;
	return pgate_name(BASTION_OP_CHMOD, dentry, C_FILES);
}

static __always_inline bool harmful_signal(int sig)
{
	return !(sig == 0 || sig == 17 || sig == 18 || sig == 23 || sig == 28);
}

/* Security-tool shutdown: a harmful signal to a registered tool process. */
SEC("lsm/task_kill")
int BPF_PROG(pgate_task_kill, struct task_struct *p, struct kernel_siginfo *info, int sig)
{
	__u32 reasons, tgid;
	struct bastion_pgate_tool *t;
	struct pgate_hit h = {};

	if (!harmful_signal(sig))
		return 0;
	reasons = pgate_actor();
	if (!reasons)
		return 0;
	tgid = BPF_CORE_READ(p, tgid);
	t = bpf_map_lookup_elem(&pgate_tools, &tgid);
	if (!t || BPF_CORE_READ(p, group_leader, start_boottime) / TICK_NS_ != t->start_ticks)
		return 0;
	h.cls = BASTION_PGATE_SECURITY_TOOL;
	return pgate_decide(BASTION_OP_SIGNAL, reasons, &h, NULL, NULL, (__s32)tgid);
}


/* ---- s15: rewriting an object through an open file, and its ancestors ---- */

#define F_SETFL_ 4
#define PROT_WRITE_ 0x2
#define MAP_TYPE_ 0x0f
#define MAP_SHARED_ 0x01
#define MAP_SHARED_VALIDATE_ 0x03
#define VM_SHARED_ 0x08
#define MAY_WRITE_ 0x2
#define PF_IO_WORKER_ 0x10
#define RWF_NOAPPEND_ 0x20
#define FS_IOC_SETFLAGS_ 0x40086602u
#define FS_IOC32_SETFLAGS_ 0x40046602u
#define FS_IOC_FSSETXATTR_ 0x401c5820u
#define X32_SYSCALL_BIT_ 0x40000000L
/* x86-64 syscall numbers (and the ia32 ones, which name no file syscall on
 * x86-64: membarrier, unassigned, add_key), for file_permission below */
#define NR_FALLOCATE_ 285
#define NR_PWRITEV2_ 328
#define NR_IO_SUBMIT_ 209
#define NR_IO_URING_ENTER_ 426
#define NR_X32_PWRITEV2_ 546
#define NR32_FALLOCATE_ 324
#define NR32_PWRITEV2_ 379
#define NR32_IO_SUBMIT_ 248
/* the plain writes (file_permission's allow list); x32's writev/pwritev have
 * numbers of their own, its write/pwrite64 are x86-64's */
#define NR_WRITE_ 1
#define NR_WRITEV_ 20
#define NR_PWRITE64_ 18
#define NR_PWRITEV_ 296
#define NR_X32_WRITEV_ 516
#define NR_X32_PWRITEV_ 535
#define NR32_WRITE_ 4
#define NR32_WRITEV_ 146
#define NR32_PWRITE64_ 181
#define NR32_PWRITEV_ 334

/* An act on an open file of the current task: refused for the classes in
 * @classes when the actor is tainted. */
static __always_inline int pgate_file(__u32 op, __u32 how, struct file *file, __u32 classes)
{
	__u32 reasons, cls;
	struct pgate_hit h = {};
	struct dentry *d;

	if (!file)
		return 0;
	reasons = pgate_actor();
	if (!reasons)
		return 0;
	d = BPF_CORE_READ(file, f_path.dentry);
	cls = dentry_class(d, &h);
	if (!cls || cls >= 32 || !(classes & (1u << cls)))
		return 0;
	return pgate_decide_how(op, how, reasons, &h, d, BPF_CORE_READ(file, f_path.mnt), 0);
}

/* fcntl(F_SETFL) clearing O_APPEND on a log opened for appending (allowed at
 * open): the next pwrite would overwrite it at any offset. */
SEC("lsm/file_fcntl")
int BPF_PROG(pgate_file_fcntl, struct file *file, unsigned int cmd, unsigned long arg)
{
	if (cmd != F_SETFL_ || (arg & O_APPEND_))
		return 0;
	if (!(BPF_CORE_READ(file, f_flags) & O_APPEND_) ||
	    !(BPF_CORE_READ(file, f_mode) & FMODE_WRITE_))
		return 0;
	return pgate_file(BASTION_OP_OPEN_WRITE, BASTION_PGATE_HOW_FCNTL, file, C_LOG);
}

/* A shared writable mapping of an object (a log opened O_RDWR|O_APPEND: the
 * mapping writes anywhere); a private one writes nothing back. */
SEC("lsm/mmap_file")
int BPF_PROG(pgate_mmap_file, struct file *file, unsigned long reqprot, unsigned long prot,
	     unsigned long flags)
{
	unsigned long type = flags & MAP_TYPE_;

	if (!file || !(prot & PROT_WRITE_) || (type != MAP_SHARED_ && type != MAP_SHARED_VALIDATE_))
		return 0;
	return pgate_file(BASTION_OP_OPEN_WRITE, BASTION_PGATE_HOW_MMAP, file, C_FILES);
}

/* The same by mprotect: a shared read-only mapping made writable (VM_SHARED is
 * only kept for a file opened for writing). */
SEC("lsm/file_mprotect")
int BPF_PROG(pgate_file_mprotect, struct vm_area_struct *vma, unsigned long reqprot,
	     unsigned long prot)
{
	if (!(prot & PROT_WRITE_) || !(BPF_CORE_READ(vma, vm_flags) & VM_SHARED_))
		return 0;
	return pgate_file(BASTION_OP_OPEN_WRITE, BASTION_PGATE_HOW_MMAP, BPF_CORE_READ(vma, vm_file),
			  C_FILES);
}

/* chattr: FS_IOC_SETFLAGS / FS_IOC_FSSETXATTR (+i pins a persistence entry, -a
 * or +i on a log...).  On 6.1 vfs_fileattr_set has no hook of its own: the
 * ioctl's security_file_ioctl comes first.  A 32-bit ioctl (an i386 binary, or
 * int 0x80 from a 64-bit one) calls security_file_ioctl_compat instead where the
 * kernel has it (6.8, and the stable kernels it went back to: Debian's 6.1.192
 * has it): the same judgement at file_ioctl_compat (s25 review: a 32-bit
 * SIOCADDRT or FS_IOC32_SETFLAGS passed the hook). */
#define SIOCADDRT_ 0x890B
#define SIOCDELRT_ 0x890C
#define S_IFMT_ 00170000
#define S_IFSOCK_ 0140000
static __always_inline int pgate_firewall(__u32 how, struct sock *sk);   /* below */

/* s26: the legacy ioctls that change an interface, its addresses, the ARP table,
 * a bridge, a bond, a vlan or the NIC (`ifconfig eth0 down`, `ifconfig eth0
 * 0.0.0.0`, `arp -s GW MAC`, `brctl delif`, `vconfig rem`, `ethtool -s`): the host
 * cut off or its traffic diverted, as the rtnetlink messages.  Reads (SIOCGIF*)
 * are not listed, but for the two "get" numbers whose argument names a change. */
static __always_inline bool pgate_netdev_ioctl(unsigned int cmd)
{
	switch (cmd) {
	case 0x8911: /* SIOCSIFLINK */
	case 0x8914: /* SIOCSIFFLAGS */
	case 0x8916: /* SIOCSIFADDR */
	case 0x8918: /* SIOCSIFDSTADDR */
	case 0x891a: /* SIOCSIFBRDADDR */
	case 0x891c: /* SIOCSIFNETMASK */
	case 0x8922: /* SIOCSIFMTU */
	case 0x8923: /* SIOCSIFNAME */
	case 0x8924: /* SIOCSIFHWADDR */
	case 0x8926: /* SIOCSIFENCAP */
	case 0x8934: /* SIOCSIFPFLAGS */
	case 0x8936: /* SIOCDIFADDR */
	case 0x8937: /* SIOCSIFHWBROADCAST */
	case 0x8943: /* SIOCSIFTXQLEN */
	case 0x8949: /* SIOCSMIIREG: a PHY register written (powered down) */
	case 0x8953: /* SIOCDARP */
	case 0x8955: /* SIOCSARP */
	case 0x8971: /* SIOCSIFMAP */
	case 0x8983: /* SIOCSIFVLAN */
	case 0x8990: /* SIOCBONDENSLAVE */
	case 0x8991: /* SIOCBONDRELEASE */
	case 0x8992: /* SIOCBONDSETHWADDR */
	case 0x8995: /* SIOCBONDCHANGEACTIVE */
	case 0x89a0: /* SIOCBRADDBR */
	case 0x89a1: /* SIOCBRDELBR */
	case 0x89a2: /* SIOCBRADDIF */
	case 0x89a3: /* SIOCBRDELIF */
	/* s26 review: numbers that reach the same changes */
	case 0x8931: /* SIOCADDMULTI */
	case 0x8932: /* SIOCDELMULTI: the solicited-node filter gone, IPv6 ND broken */
	case 0x8940: /* SIOCGIFBR: old_deviceless takes BRCTL_DEL_BRIDGE through it */
	case 0x8941: /* SIOCSIFBR */
	case 0x8946: /* SIOCETHTOOL: link settings, a NIC reset, EEPROM and firmware writes */
	case 0x894a: /* SIOCWANDEV */
	case 0x8982: /* SIOCGIFVLAN: vlan_ioctl_hook acts on args.cmd (DEL_VLAN_CMD) */
		return true;
	}
	/* SIOCDEVPRIVATE..+15: the bonding driver's BOND_*_OLD, the bridge's BRCTL_*;
	 * the argument is user memory read after us: refused whole */
	return cmd >= 0x89f0 && cmd <= 0x89ff;
}

static __always_inline int pgate_ioctl(struct file *file, unsigned int cmd)
{
	if (cmd == SIOCADDRT_ || cmd == SIOCDELRT_ || pgate_netdev_ioctl(cmd)) {
		/* s25 (review 5 of s24): the legacy route ioctls (`route add -net ...
		 * reject`, `route del default`) on a socket: refused whole, whatever
		 * the rtentry says (it is user memory, read by the kernel after us) */
		struct socket *sock;

		if ((BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT_) != S_IFSOCK_)
			return 0;
		sock = BPF_CORE_READ(file, private_data);
		return pgate_firewall(cmd == SIOCADDRT_ || cmd == SIOCDELRT_ ?
				      BASTION_PGATE_HOW_ROUTE_IOCTL : BASTION_PGATE_HOW_NETDEV_IOCTL,
				      sock ? BPF_CORE_READ(sock, sk) : NULL);
	}
	if (cmd != FS_IOC_SETFLAGS_ && cmd != FS_IOC32_SETFLAGS_ && cmd != FS_IOC_FSSETXATTR_)
		return 0;
	return pgate_file(BASTION_OP_CHMOD, BASTION_PGATE_HOW_IOCTL, file, C_FILES);
}

SEC("lsm/file_ioctl")
int BPF_PROG(pgate_file_ioctl, struct file *file, unsigned int cmd, unsigned long arg)
{
	return pgate_ioctl(file, cmd);
}

SEC("lsm/file_ioctl_compat")
int BPF_PROG(pgate_file_ioctl_compat, struct file *file, unsigned int cmd, unsigned long arg)
{
	return pgate_ioctl(file, cmd);
}

/* Writes to a log that ignore its O_APPEND: fallocate (punch hole, collapse
 * range, zero range: vfs_fallocate's only hook is security_file_permission),
 * pwritev2(RWF_NOAPPEND), and io_uring's and aio's writes (their per-request
 * flags may carry RWF_NOAPPEND; their fallocate too).  file_permission runs on
 * every read and write: reads leave at the mask, a plain write at the syscall
 * number (no map lookup), before the actor is looked at.
 *
 * An allow list, not a deny list: a tainted writer to a log may write only from
 * write, writev, pwrite64, pwritev and pwritev2 without RWF_NOAPPEND (their ia32
 * and x32 numbers too); any other context is refused (sendfile, an io_uring
 * request run as task work while the task sleeps in another syscall, a kernel
 * thread's orig_ax of -1...).  A task with an io_uring context is refused even
 * from the listed syscalls: its ring's task work runs at the return to user
 * space of whatever syscall the task is in (a plain write() included). */
static __always_inline int plain_write_nr(struct pt_regs *regs, long nr)
{
	switch (nr) {
	case NR_WRITE_: case NR_WRITEV_: case NR_PWRITE64_: case NR_PWRITEV_:
	case NR32_WRITE_: case NR32_WRITEV_: case NR32_PWRITE64_: case NR32_PWRITEV_:
	case NR_X32_WRITEV_: case NR_X32_PWRITEV_:
		return 1;
	case NR_PWRITEV2_: case NR_X32_PWRITEV2_:
		return !(BPF_CORE_READ(regs, r9) & RWF_NOAPPEND_);
	case NR32_PWRITEV2_:   /* ia32: the sixth argument is in ebp */
		return !(BPF_CORE_READ(regs, bp) & RWF_NOAPPEND_);
	}
	return 0;
}

SEC("lsm/file_permission")
int BPF_PROG(pgate_file_permission, struct file *file, int mask)
{
	struct task_struct *t;
	struct pt_regs *regs;
	__u32 how = BASTION_PGATE_HOW_NOAPPEND;
	long nr;

	if (!(mask & MAY_WRITE_))
		return 0;
	t = bpf_get_current_task_btf();
	if (!(BPF_CORE_READ(t, flags) & PF_IO_WORKER_)) {
		regs = (struct pt_regs *)bpf_task_pt_regs(t);
		nr = regs ? BPF_CORE_READ(regs, orig_ax) & ~X32_SYSCALL_BIT_ : -1;
		if (regs && plain_write_nr(regs, nr) &&
		    !(bpf_core_field_exists(t->io_uring) && BPF_CORE_READ(t, io_uring)))
			return 0;
		if (nr == NR_FALLOCATE_ || nr == NR32_FALLOCATE_)
			how = BASTION_PGATE_HOW_FALLOCATE;
	}
	return pgate_file(BASTION_OP_OPEN_WRITE, how, file, C_LOG);
}

/* Mounting on an object or a directory above one (`mount --bind /tmp/x
 * /etc/cron.d`, a tmpfs over /etc/systemd), or unmounting one (/var/log on its
 * own filesystem): the object's name would show other inodes.  Only in the
 * host's mount namespace (pgate_cfg.host_mnt_ns, /proc/1/ns/mnt's inode; 0 =
 * unknown: every namespace is the host's): a mount in a namespace of the
 * caller's own (unshare -m, bwrap, flatpak, podman, ip netns exec, nspawn)
 * shows nothing to the host's services. */
static __always_inline int pgate_mount_at(struct dentry *d, struct vfsmount *mnt)
{
	__u32 reasons, zero = 0;
	struct pgate_hit h = {};
	struct bastion_pgate_cfg *cfg;
	struct task_struct *t;

	if (!d)
		return 0;
	reasons = pgate_actor();
	if (!reasons)
		return 0;
	cfg = bpf_map_lookup_elem(&pgate_cfg, &zero);
	if (cfg && cfg->host_mnt_ns) {
		t = bpf_get_current_task_btf();
		if (BPF_CORE_READ(t, nsproxy, mnt_ns, ns.inum) != cfg->host_mnt_ns)
			return 0;
	}
	if (!anc_class(d, &h) && !dentry_class(d, &h))
		return 0;
	return pgate_decide_how(BASTION_OP_RENAME, BASTION_PGATE_HOW_MOUNT, reasons, &h, d, mnt, 0);
}

#define MS_REMOUNT_ 32
#define MS_BIND_ 4096
#define MS_PROPAGATION_ ((1ul << 17) | (1ul << 18) | (1ul << 19) | (1ul << 20)) /* UNBINDABLE PRIVATE SLAVE SHARED */

SEC("lsm/sb_mount")
int BPF_PROG(pgate_sb_mount, const char *dev_name, const struct path *path, const char *type,
	     unsigned long flags, void *data)
{
	/* a propagation change alone (mount --make-rprivate /, unshare -m's first
	 * act) mounts nothing: path_mount takes it before a move or a new mount,
	 * after a remount or a bind */
	if ((flags & MS_PROPAGATION_) && !(flags & (MS_REMOUNT_ | MS_BIND_)))
		return 0;
	return pgate_mount_at(BPF_CORE_READ(path, dentry), BPF_CORE_READ(path, mnt));
}

SEC("lsm/move_mount")
int BPF_PROG(pgate_move_mount, const struct path *from_path, const struct path *to_path)
{
	int err = pgate_mount_at(BPF_CORE_READ(to_path, dentry), BPF_CORE_READ(to_path, mnt));

	return err ? err : pgate_mount_at(BPF_CORE_READ(from_path, dentry),
					  BPF_CORE_READ(from_path, mnt));
}

SEC("lsm/sb_umount")
int BPF_PROG(pgate_sb_umount, struct vfsmount *mnt, int flags)
{
	return pgate_mount_at(BPF_CORE_READ(mnt, mnt_root), mnt);
}


/* ---- s23: security-tool shutdown (firewall): a netfilter ruleset change ----
 * iptables-nft, nft, ufw and firewalld change nftables in a NETLINK_NETFILTER
 * batch (nfnetlink_rcv: a batch is the skb whose first message is
 * NFNL_MSG_BATCH_BEGIN; every nf_tables change is a batch callback, refused
 * outside one); listing the ruleset is plain GET requests, allowed.
 * iptables-legacy, arptables and ebtables replace a table with setsockopt
 * *_SO_SET_REPLACE / *_SO_SET_ADD_COUNTERS (EBT_SO_SET_ENTRIES/COUNTERS).
 * Refused for an untrusted tree as every other must-stop act (admin session:
 * allowed, audited; dry run: would-deny).  Not covered (docs/detection.md
 * s23-muststop): the other netfilter subsystems' non-batch changes (ipset,
 * conntrack flush, nfqueue/nflog config). */
#define NETLINK_ROUTE_ 0
#define NETLINK_XFRM_ 6
#define NETLINK_NETFILTER_ 12
#define RTM_BASE_ 16
#define RTM_NEWNSID_ 88
#define XFRM_MSG_BASE_ 0x10
#define IFLA_NET_NS_PID_ 19
#define IFLA_NET_NS_FD_ 28
#define IFLA_LINK_NETNSID_ 37
#define IFLA_NEW_NETNSID_ 45
#define IFLA_TARGET_NETNSID_ 46
#define PGATE_IFLA_MAX 32    /* attributes of one link message read for a namespace */
#define NFNL_MSG_BATCH_BEGIN_ 0x10
#define NFNL_SUBSYS_IPSET_ 6
#define RTM_NEWLINK_ 16
#define RTM_DELLINK_ 17
#define RTM_SETLINK_ 19
#define NLA_TYPE_MASK_ 0x3fff    /* ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) */
#define PGATE_NL_MSGS 16     /* messages of one send judged one by one */
#define SOL_IP_ 0
#define SOL_IPV6_ 41
#define IPT_SO_SET_REPLACE_ 64     /* IP6T_ the same numbers at SOL_IPV6 */
#define IPT_SO_SET_ADD_COUNTERS_ 65
#define ARPT_SO_SET_REPLACE_ 96
#define ARPT_SO_SET_ADD_COUNTERS_ 97
#define EBT_SO_SET_ENTRIES_ 128
#define EBT_SO_SET_COUNTERS_ 129

struct pgate_nlmsghdr {
	__u32 nlmsg_len;
	__u16 nlmsg_type;
	__u16 nlmsg_flags;
	__u32 nlmsg_seq;
	__u32 nlmsg_pid;
};

/* the host's network namespace (its inode number, /proc/1/ns/net as user space reads
 * it at load: init_net is no typed ksym on Debian's 6.1, whose BTF has no global vars);
 * 0: every namespace is the host's */
const volatile __u32 cfg_host_netns = 0;

/* s23 review 5: only the host's firewall is refused — a change inside a network
 * namespace of its own (`unshare -rn`, a container's) cannot open the host — and
 * not for a tree whose only reason is being a network service's: kube-proxy,
 * calico, a VPN daemon manage the firewall as their job (the user-space
 * firewall rule judges those with its managers' trust); a tree with any other
 * reason (a /tmp script, a downloaded binary, a decoded payload) is refused. */
static __always_inline int pgate_firewall_ns(__u32 how, struct sock *sk, bool any_ns)
{
	__u32 reasons;
	struct pgate_hit h = {};

	if (!sk || (!any_ns && cfg_host_netns &&
		    BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum) != cfg_host_netns))
		return 0;
	reasons = pgate_actor();
	if (!reasons || (reasons & ~BASTION_PROV_ADMIN_TTY) == BASTION_PROV_NETWORK_SERVICE)
		return 0;
	h.cls = BASTION_PGATE_FIREWALL;
	return pgate_decide_how(BASTION_OP_OPEN_WRITE, how, reasons, &h, NULL, NULL, 0);
}

static __always_inline int pgate_firewall(__u32 how, struct sock *sk)
{
	return pgate_firewall_ns(how, sk, false);
}

/* an ipset command that changes a set (create, destroy, flush, rename, swap, add,
 * del): fail2ban's bans and every allow/deny list an iptables or nftables rule names */
static __always_inline bool pgate_ipset_write(__u16 type)
{
	__u8 cmd = type & 0xff;

	return (type >> 8) == NFNL_SUBSYS_IPSET_ &&
	       ((cmd >= 2 && cmd <= 6) || cmd == 9 || cmd == 10);
}

/* s26 review: a link message that names another network namespace
 * (IFLA_NET_NS_PID, IFLA_NET_NS_FD, IFLA_LINK_NETNSID, IFLA_NEW_NETNSID,
 * IFLA_TARGET_NETNSID): sent from a namespace of the tree's own it may act on the
 * host's (`unshare -n`, an nsid for /proc/1/ns/net, then RTM_DELLINK of the host's
 * wg0 with IFLA_TARGET_NETNSID; a macvlan on the host's eth0 with
 * IFLA_LINK_NETNSID).  True also when the attributes cannot be read or there are
 * more than PGATE_IFLA_MAX (fail closed). */
static __always_inline bool pgate_link_names_ns(unsigned char *msg, __u32 msg_len)
{
	struct { __u16 len; __u16 type; } rta;
	__u32 off = sizeof(struct pgate_nlmsghdr) + 16;   /* after struct ifinfomsg */
	__u16 t;
	int i;

	for (i = 0; i < PGATE_IFLA_MAX; i++) {
		if (off + sizeof(rta) > msg_len)
			return false;
		if (bpf_probe_read_kernel(&rta, sizeof(rta), msg + off))
			return true;
		if (rta.len < sizeof(rta))
			return false;          /* the kernel refuses the message */
		t = rta.type & NLA_TYPE_MASK_;
		if (t == IFLA_NET_NS_PID_ || t == IFLA_NET_NS_FD_ || t == IFLA_LINK_NETNSID_ ||
		    t == IFLA_NEW_NETNSID_ || t == IFLA_TARGET_NETNSID_)
			return true;
		off += (rta.len + 3) & ~3U;
	}
	return off + sizeof(rta) <= msg_len;
}

/* rtnetlink's route, rule and nexthop families (HOW_ROUTE); the rest is NETDEV */
static __always_inline bool pgate_route_family(__u16 type)
{
	return (type >= 24 && type <= 27) || (type >= 32 && type <= 35) ||
	       (type >= 104 && type <= 107) || (type >= 116 && type <= 119);
}

/* Every message of the send is judged, as netlink_rcv_skb walks them (s24: the
 * first alone let a GET carry an ipset change behind it).  Netfilter: a batch (the
 * kernel takes a batch only when it comes first: nftables, iptables-nft, ufw,
 * firewalld) or an ipset change.  rtnetlink (s26 review: a list of the harmful
 * types always missed some -- RTM_SETNEIGHTBL, link properties, the MDB, DCB,
 * tunnels -- and unicast /8 routes through another gateway replaced the default
 * route 16 at a time): every message but a GET (each family's base + 2) and the
 * control types below RTM_BASE; routes, rules and nexthops are ROUTE, the rest
 * NETDEV.  xfrm (`ip xfrm policy add dir out action block`): every message but its
 * GETs.  A link message naming another namespace is judged from any namespace,
 * RTM_NEWNSID too (it gives a namespace of the tree's own an id for the host's).
 * More messages than judged, or one that cannot be read: a change (fail closed;
 * pgate_firewall still lets every trusted tree through). */
SEC("lsm/netlink_send")
int BPF_PROG(pgate_netlink_send, struct sock *sk, struct sk_buff *skb)
{
	struct pgate_nlmsghdr nlh = {};
	unsigned char *data;
	__u32 len, off = 0, how;
	__u16 proto, t;
	int i;

	if (!sk)
		return 0;
	proto = BPF_CORE_READ(sk, sk_protocol);
	if (proto == NETLINK_NETFILTER_)
		how = BASTION_PGATE_HOW_NFNL_WRITE;
	else if (proto == NETLINK_ROUTE_)
		how = BASTION_PGATE_HOW_ROUTE;
	else if (proto == NETLINK_XFRM_)
		how = BASTION_PGATE_HOW_NETDEV;
	else
		return 0;
	len = BPF_CORE_READ(skb, len);
	data = BPF_CORE_READ(skb, data);
	for (i = 0; i < PGATE_NL_MSGS; i++) {
		if (off + sizeof(nlh) > len)
			return 0;      /* every message judged: nothing refused */
		if (!data || bpf_probe_read_kernel(&nlh, sizeof(nlh), data + off))
			return pgate_firewall_ns(how, sk, proto == NETLINK_ROUTE_);
		t = nlh.nlmsg_type;
		if (proto == NETLINK_NETFILTER_) {
			if (i == 0 && t == NFNL_MSG_BATCH_BEGIN_)
				return pgate_firewall(BASTION_PGATE_HOW_NFT_BATCH, sk);
			if (pgate_ipset_write(t))
				return pgate_firewall(how, sk);
		} else if (proto == NETLINK_XFRM_) {
			/* GETs: GETSA, GETPOLICY, GETAE, GETSADINFO, GETSPDINFO, GETDEFAULT */
			if (t >= XFRM_MSG_BASE_ && t != 0x12 && t != 0x15 && t != 0x1f &&
			    t != 0x23 && t != 0x25 && t != 0x28)
				return pgate_firewall(how, sk);
		} else if (t >= RTM_BASE_ && (t & 3) != 2) {
			if (t == RTM_NEWNSID_ ||
			    ((t == RTM_NEWLINK_ || t == RTM_DELLINK_ || t == RTM_SETLINK_) &&
			     pgate_link_names_ns(data + off, nlh.nlmsg_len < len - off ?
						 nlh.nlmsg_len : len - off)))
				return pgate_firewall_ns(BASTION_PGATE_HOW_NETDEV, sk, true);
			return pgate_firewall(pgate_route_family(t) ? BASTION_PGATE_HOW_ROUTE :
					      BASTION_PGATE_HOW_NETDEV, sk);
		}
		if (nlh.nlmsg_len < sizeof(nlh) || nlh.nlmsg_len > len - off)
			return 0;      /* netlink_rcv_skb stops here too */
		off += (nlh.nlmsg_len + 3) & ~3U;
	}
	return off + sizeof(nlh) > len ? 0 : pgate_firewall_ns(how, sk, proto == NETLINK_ROUTE_);
}

SEC("lsm/socket_setsockopt")
int BPF_PROG(pgate_socket_setsockopt, struct socket *sock, int level, int optname)
{
	if (level == SOL_IP_) {
		if (optname != IPT_SO_SET_REPLACE_ && optname != IPT_SO_SET_ADD_COUNTERS_ &&
		    optname != ARPT_SO_SET_REPLACE_ && optname != ARPT_SO_SET_ADD_COUNTERS_ &&
		    optname != EBT_SO_SET_ENTRIES_ && optname != EBT_SO_SET_COUNTERS_)
			return 0;
	} else if (level != SOL_IPV6_ ||
		   (optname != IPT_SO_SET_REPLACE_ && optname != IPT_SO_SET_ADD_COUNTERS_)) {
		return 0;
	}
	return pgate_firewall(BASTION_PGATE_HOW_SOCKOPT, sock ? BPF_CORE_READ(sock, sk) : NULL);
}
