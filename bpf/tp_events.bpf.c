// SPDX-License-Identifier: GPL-2.0
/* Bastion's event sensor: tracepoints only, so it loads on every kernel
 * (this includes hosts without BPF LSM).  Each program maps one hook to a
 * helper; the record layouts are in include/bastion.h. */
#define BASTION_PRIO_RING 1   /* two rings: bpf/lib/common.h */
#include "events.h"
#include "dedup.h"
#include "xmem.h"

char LICENSE[] SEC("license") = "GPL";

#define ARG(ctx, i) (((struct trace_event_raw_sys_enter *)(ctx))->args[i])
#define RET(ctx) (((struct trace_event_raw_sys_exit *)(ctx))->ret)

#define O_ACCMODE_ 00000003
#define O_RDONLY_ 00000000
#define O_CREAT_ 00000100
#define O_TRUNC_ 00001000
#define O_PATH_ 010000000

#define PF_IO_WORKER_ 0x00000010

/* Mark a record as an io_uring request's (ABI 3.1) and name the process in it: a request
 * completed (or, with SQPOLL, submitted) by one of the ring's kernel threads runs in an
 * io-wq worker or the SQPOLL thread, threads of the submitting process (same tgid, files,
 * fs, cgroup) whose comm is "iou-wrk-<pid>" / "iou-sqp-<pid>": the leader's comm instead,
 * so the record reads like the process's own syscall. */
static __always_inline void iou_hdr(struct bastion_event_hdr *h, __u16 xflags)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();

	h->flags |= xflags;
	if (BPF_CORE_READ(t, flags) & PF_IO_WORKER_) {
		struct task_struct *leader = BPF_CORE_READ(t, group_leader);

		BPF_CORE_READ_STR_INTO(&h->comm, leader, comm);
	}
}

/* ------------------------------------------------------------------ */
/* process lifecycle                                                   */

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
/* files: opens with write intent (and, in learn mode, all opens) are    */
/* resolved at syscall exit from the new descriptor, so the path is      */
/* absolute and the inode is known.                                      */

struct open_args {
	__s32 flags;
	__u32 mode;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct open_args);
} pending_open SEC(".maps");

/* Read-only opens are reported only when asked (learn mode, scoped by
 * cfg_cgroup_id): they are most of all opens. */
const volatile __u32 cfg_open_reads = 0;

static __always_inline int open_enter(__s64 flags, __u64 mode)
{
	struct open_args a = { .flags = flags, .mode = mode };
	__u64 id;

	if (!cfg_open_reads && (flags & O_ACCMODE_) == O_RDONLY_ && !(flags & (O_CREAT_ | O_TRUNC_)))
		return 0;
	if (!wanted(BASTION_EV_FILE))
		return 0;
	id = bpf_get_current_pid_tgid();
	bpf_map_update_elem(&pending_open, &id, &a, BPF_ANY);
	return 0;
}

/* A sensitive read-open (not learn mode) of @f: the dedup, then the record. */
static __always_inline int sens_open_report(struct file *f, __u32 fflags, __u32 sclass, __u32 sid,
					    __u16 xflags)
{
	struct bastion_file_event *e;
	struct inode *inode = BPF_CORE_READ(f, f_inode);
	struct path fpath;
	__u32 dev, fmode;
	__u64 ino;

	ino = BPF_CORE_READ(inode, i_ino);
	dev = BPF_CORE_READ(inode, i_sb, s_dev);
	fmode = BPF_CORE_READ(f, f_mode);
	if (open_seen_recently(dev, ino, BPF_CORE_READ(inode, i_generation), inode, false, 0,
			       fmode))
		return 0;
	e = file_event(BASTION_FILE_OPEN);
	if (!e)
		return 0;
	e->open_flags = fflags;
	e->ino = ino;
	e->dev = dev;
	e->sens_class = sclass;
	e->sens_id = sid;
	e->hdr.flags |= BASTION_F_SENSITIVE;
	if (xflags)
		iou_hdr(&e->hdr, xflags);
	file_open_state(e, fmode, BPF_CORE_READ(inode, i_size), inode);
	fpath = BPF_CORE_READ(f, f_path);
	file_put_path(e, FS_PATH, &fpath);
	file_submit(e);
	return 0;
}

/* A read-only open nobody asked for (not learn mode): reported only when the
 * inode is in the sensitive set, decided here in the kernel (every read-open
 * of the host takes this path: bulk copies and the verdict cache,
 * sens_match_cached_win).  The probe-read programs' path (on_*_ret_p). */
static __always_inline int sens_open_exit(long ret, __u16 xflags)
{
	struct file *f;
	__u32 sclass = 0, sid = 0, fflags = 0;

	if (ret < 0 || !cfg_sensitive || !wanted(BASTION_EV_FILE))
		return 0;
	f = fd_file(ret);
	if (!f)
		return 0;
	if (!sens_match_cached_win(f, &fflags, &sclass, &sid) || (fflags & O_PATH_))
		return 0; /* outside the set, or an O_PATH descriptor (reads nothing) */
	return sens_open_report(f, fflags, sclass, sid, xflags);
}

#define O_WRONLY_ 00000001
#define O_RDWR_ 00000002
#define FMODE_READ_ 0x1
#define FMODE_WRITE_ 0x2

/* openat2's flags as the kernel used them (s22 review M9): its how.flags are in the
 * caller's memory, read at sys_enter before the kernel copies them, so a second thread
 * flipping O_RDONLY <-> O_WRONLY|O_CREAT can make the sensor's copy a lie.  The access
 * mode is taken from the opened file's f_mode, O_CREAT from FMODE_CREATED (this open
 * made the inode); the other bits as read (O_TRUNC: not kept in the file). */
static __always_inline __s32 open_flags_by_file(__s32 flags, __u32 fmode)
{
	flags &= ~(O_ACCMODE_ | O_CREAT_);
	if (fmode & FMODE_WRITE_)
		flags |= (fmode & FMODE_READ_) ? O_RDWR_ : O_WRONLY_;
	if (fmode & BASTION_FMODE_CREATED)
		flags |= O_CREAT_;
	return flags;
}

/* An open with write intent (or any open in learn mode) at its exit: @flags and
 * @mode as the caller passed them (@by_file: the flags' access mode and O_CREAT
 * from the opened file instead, open_flags_by_file). */
static __always_inline int open_exit_report(long ret, __s32 flags, __u32 mode, __u16 xflags,
					    bool by_file)
{
	struct bastion_file_event *e;
	struct inode *inode = NULL;
	struct file *f;
	struct path fpath;
	__u32 sclass = 0, sid = 0, dev = 0, fmode = 0;
	__u64 ino = 0;
	bool write;

	if (ret < 0)
		return 0;
	f = fd_file(ret);
	if (f) {
		/* a repeat of a reported open (same process, inode instance, access, write
		 * flags; never an open that created its file: at the syscall's exit
		 * FMODE_CREATED stays in f_mode) stops here, before the reserve and the
		 * path walk */
		inode = BPF_CORE_READ(f, f_inode);
		ino = BPF_CORE_READ(inode, i_ino);
		dev = BPF_CORE_READ(inode, i_sb, s_dev);
		fmode = BPF_CORE_READ(f, f_mode);
		if (by_file)
			flags = open_flags_by_file(flags, fmode);
		write = (flags & O_ACCMODE_) != O_RDONLY_ || (flags & (O_CREAT_ | O_TRUNC_));
		if (open_seen_recently(dev, ino, BPF_CORE_READ(inode, i_generation), inode, write,
				       flags, fmode))
			return 0;
	}
	e = file_event(BASTION_FILE_OPEN);
	if (!e)
		return 0;
	e->open_flags = flags;
	e->mode = mode;
	if (xflags)
		iou_hdr(&e->hdr, xflags);
	if (f) {
		e->ino = ino;
		e->dev = dev;
		/* at the syscall's exit: FMODE_CREATED stays in f_mode; i_size after O_TRUNC */
		file_open_state(e, fmode, BPF_CORE_READ(inode, i_size), inode);
		fpath = BPF_CORE_READ(f, f_path);
		file_put_path(e, FS_PATH, &fpath);
		if (sens_match_cached(f, &sclass, &sid)) {
			e->sens_class = sclass;
			e->sens_id = sid;
			e->hdr.flags |= BASTION_F_SENSITIVE;
		}
	}
	file_submit(e);
	return 0;
}

static __always_inline int open_exit(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct open_args *a = bpf_map_lookup_elem(&pending_open, &id);

	if (!a)
		return sens_open_exit(ret, 0);
	open_exit_report(ret, a->flags, a->mode, 0, false);
	bpf_map_delete_elem(&pending_open, &id);
	return 0;
}

/* openat2's exit (s22 review M9): the flags read at entry may be a lie (another thread
 * rewrote how.flags before the kernel copied them), so the opened file decides.  An
 * open the entry took for a read-only one (no pending entry) that the kernel opened
 * for writing or that created its file is reported, its flags the file's (f_flags,
 * access mode from f_mode, O_CREAT from FMODE_CREATED; the mode is not known then);
 * one the entry took for a write that opened read-only is reported read-only. */
static __always_inline int openat2_exit(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct open_args *a = bpf_map_lookup_elem(&pending_open, &id);
	struct file *f;

	if (a) {
		open_exit_report(ret, a->flags, a->mode, 0, true);
		bpf_map_delete_elem(&pending_open, &id);
		return 0;
	}
	if (ret < 0 || cfg_open_reads)
		return 0;   /* learn mode: every open had its entry */
	f = fd_file(ret);
	if (f && (BPF_CORE_READ(f, f_mode) & (FMODE_WRITE_ | BASTION_FMODE_CREATED)) &&
	    wanted(BASTION_EV_FILE))
		return open_exit_report(ret, BPF_CORE_READ(f, f_flags), 0, 0, true);
	return sens_open_exit(ret, 0);
}

/* The probe-read programs (kernels without bpf_rdonly_cast or bpf_task_pt_regs,
 * chosen by the loader: bastion.sensors.bpf.open_programs): the flags kept at
 * entry in pending_open, the file through bpf_probe_read_kernel. */
SEC("tracepoint/syscalls/sys_enter_openat")
int on_openat_p(void *ctx) { return open_enter(ARG(ctx, 2), ARG(ctx, 3)); }
SEC("tracepoint/syscalls/sys_exit_openat")
int on_openat_ret_p(void *ctx) { return open_exit(RET(ctx)); }
SEC("tracepoint/syscalls/sys_enter_open")
int on_open_p(void *ctx) { return open_enter(ARG(ctx, 1), ARG(ctx, 2)); }
SEC("tracepoint/syscalls/sys_exit_open")
int on_open_ret_p(void *ctx) { return open_exit(RET(ctx)); }
SEC("tracepoint/syscalls/sys_enter_creat")
int on_creat_p(void *ctx) { return open_enter(O_CREAT_ | O_TRUNC_ | 1, ARG(ctx, 1)); }
SEC("tracepoint/syscalls/sys_exit_creat")
int on_creat_ret_p(void *ctx) { return open_exit(RET(ctx)); }

/* openat2 in both sets: its flags are in the caller's memory, which another thread
 * can rewrite while the call is in the kernel (a FIFO open blocks as long as it likes):
 * read at entry, as the kernel reads them, never again at exit. */
SEC("tracepoint/syscalls/sys_enter_openat2")
int on_openat2(void *ctx)
{
	struct open_how how = {};

	bpf_probe_read_user(&how, sizeof(how), (void *)ARG(ctx, 2));
	return open_enter(how.flags, how.mode);
}
SEC("tracepoint/syscalls/sys_exit_openat2")
int on_openat2_ret(void *ctx) { return openat2_exit(RET(ctx)); }

/* The BTF programs (s16-open; kernels with bpf_rdonly_cast and bpf_task_pt_regs:
 * 6.2+): exit programs only (openat, open, creat: arguments in registers).  The caller's flags and mode are read at exit from
 * its saved user registers (the syscall's arguments: the kernel does not change
 * them; a tracer or seccomp that rewrote them did so before the kernel read them),
 * so no sys_enter program and no pending_open entry per open; the file is taken
 * from the fd table with one helper call (the slot) and plain loads (the verifier
 * turns them into fault-safe PROBE_MEM loads), and a read-open outside the set
 * costs a per-CPU verdict-cache slot (sens_match_btf, bpf/lib/sensitive.h). */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

static __always_inline struct file *fd_file_btf(struct task_struct *t, long fd)
{
	struct fdtable *fdt = t->files->fdt;
	struct file **fds;
	struct file *f = NULL;

	if (fd < 0 || !fdt || (unsigned long)fd >= fdt->max_fds)
		return NULL;
	fds = fdt->fd;
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return NULL;
	return bpf_rdonly_cast(f, bpf_core_type_id_kernel(struct file));
}

/* @flags, @mode: of the exiting call of @t (current), from its user registers. */
static __always_inline int open_exit_btf(struct task_struct *t, long ret, __u64 flags, __u64 mode)
{
	struct file *f;
	__u32 sclass = 0, sid = 0;

	if (cfg_open_reads || (flags & O_ACCMODE_) != O_RDONLY_ || (flags & (O_CREAT_ | O_TRUNC_))) {
		/* as open_enter: an open worth a record whatever the file */
		if (!wanted(BASTION_EV_FILE))
			return 0;
		return open_exit_report(ret, flags, mode, 0, false);
	}
	if (ret < 0 || !cfg_sensitive || (flags & O_PATH_))
		return 0; /* an O_PATH descriptor reads nothing */
	f = fd_file_btf(t, ret);
	if (!f || !sens_match_btf(f, &sclass, &sid) || !wanted(BASTION_EV_FILE))
		return 0;
	return sens_open_report(f, f->f_flags, sclass, sid, 0);
}

#define USER_REGS(t) ((struct pt_regs *)bpf_task_pt_regs(t))

SEC("tracepoint/syscalls/sys_exit_openat")
int on_openat_ret(void *ctx)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct pt_regs *r = USER_REGS(t);

	return open_exit_btf(t, RET(ctx), r->dx, r->r10);
}

SEC("tracepoint/syscalls/sys_exit_open")
int on_open_ret(void *ctx)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct pt_regs *r = USER_REGS(t);

	return open_exit_btf(t, RET(ctx), r->si, r->dx);
}

SEC("tracepoint/syscalls/sys_exit_creat")
int on_creat_ret(void *ctx)
{
	struct task_struct *t = bpf_get_current_task_btf();

	return open_exit_btf(t, RET(ctx), O_CREAT_ | O_TRUNC_ | 1, USER_REGS(t)->si);
}

/* A path argument of a *at() syscall into @slot (FS_PATH or FS_PATH2): the string as
 * passed and, when it is relative, the directory it is relative to (@dfd or the cwd)
 * into the slot after it. */
static __always_inline void file_put_at(struct bastion_file_event *e, enum file_slot slot,
					int dfd, const char *name, __u16 rel_flag, bool kern)
{
	char *out = file_next(e);
	long n = kern ? file_put_kstr(e, slot, name) : file_put_user(e, slot, name);
	enum file_slot dir = slot == FS_PATH ? FS_DIR : FS_DIR2;

	if (n > 1 && out[0] == '/')
		return;
	e->hdr.flags |= rel_flag;
	if (dfd == AT_FDCWD_) {
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();
		struct path pwd = BPF_CORE_READ(task, fs, pwd);

		file_put_path(e, dir, &pwd);
	} else {
		struct file *f = fd_file(dfd);

		if (f) {
			struct path p = BPF_CORE_READ(f, f_path);

			file_put_path(e, dir, &p);
		}
	}
}

static __always_inline void file_put_user_at(struct bastion_file_event *e, enum file_slot slot,
					     int dfd, const char *upath, __u16 rel_flag)
{
	file_put_at(e, slot, dfd, upath, rel_flag, false);
}

/* A file event about a path argument (unlink, chmod, chown, rename, link). */
static __always_inline struct bastion_file_event *file_path_event(__u32 op, int dfd,
								  const char *upath)
{
	struct bastion_file_event *e;

	if (!wanted(BASTION_EV_FILE))
		return NULL;
	e = file_event(op);
	if (!e)
		return NULL;
	file_put_user_at(e, FS_PATH, dfd, upath, BASTION_F_RELATIVE);
	return e;
}

/* A file event about a descriptor (fchmod, fchown). */
static __always_inline struct bastion_file_event *file_fd_event(__u32 op, int fd)
{
	struct bastion_file_event *e;
	struct file *f;
	struct path fpath;

	if (!wanted(BASTION_EV_FILE))
		return NULL;
	e = file_event(op);
	if (!e)
		return NULL;
	f = fd_file(fd);
	if (f) {
		e->ino = BPF_CORE_READ(f, f_inode, i_ino);
		e->dev = BPF_CORE_READ(f, f_inode, i_sb, s_dev);
		fpath = BPF_CORE_READ(f, f_path);
		file_put_path(e, FS_PATH, &fpath);
	}
	return e;
}

static __always_inline int unlink_ev(int dfd, const char *upath)
{
	struct bastion_file_event *e = file_path_event(BASTION_FILE_UNLINK, dfd, upath);

	if (e)
		file_submit(e);
	return 0;
}

/* truncate(2) and ftruncate(2) (s16-gate): fanotify refuses no truncate on this tier;
 * the log-clearing rule stops an untrusted tree after it.  A truncate by path is rare:
 * every one; ftruncate is common (databases): only an untrusted tree's (prov_actor). */
SEC("tracepoint/syscalls/sys_enter_truncate")
int on_truncate(void *ctx)
{
	struct bastion_file_event *e = file_path_event(BASTION_FILE_TRUNCATE, AT_FDCWD_,
							(const char *)ARG(ctx, 0));

	if (e)
		file_submit(e);
	return 0;
}
/* ftruncate that only grows or keeps the file (a logger preallocating its ring, length
 * >= i_size at entry) destroys nothing: not reported (s16-fixlog, review 5a; a
 * concurrent writer may grow the file between this read and the call). */
SEC("tracepoint/syscalls/sys_enter_ftruncate")
int on_ftruncate(void *ctx)
{
	struct bastion_file_event *e;
	struct file *f;
	__s64 length = (__s64)ARG(ctx, 1);

	if (!prov_actor())
		return 0;
	f = fd_file(ARG(ctx, 0));
	if (f && length >= BPF_CORE_READ(f, f_inode, i_size))
		return 0;
	e = file_fd_event(BASTION_FILE_TRUNCATE, ARG(ctx, 0));
	if (e)
		file_submit(e);
	return 0;
}

/* In-place rewrites past O_APPEND (s17-logacts): the fanotify gate allows an untrusted
 * tree's O_APPEND open of a log, then fcntl(F_SETFL) clears O_APPEND, fallocate punches
 * a hole, pwritev2(RWF_NOAPPEND) writes at an offset, or a shared writable mapping
 * rewrites it; fanotify has no event before any of them.  Reported for an untrusted
 * tree only (prov_actor), after the syscall's own arguments (most calls leave on one
 * compare), as BASTION_FILE_REWRITE records of the descriptor's regular file; the
 * log-clearing rule judges the path and stops the tree.  At sys_enter: the act may
 * complete before the kill (docs/threat-model.md, s17-logacts). */
#define F_SETFL_ 4
#define O_APPEND_ 00002000
/* every fallocate mode but plain allocation (s17-fixlogacts 3: an allow list, so
 * WRITE_ZEROES 0x80 and modes to come are reported) */
#define FALLOC_ALLOC_ONLY_ (0x01 | 0x40) /* KEEP_SIZE, UNSHARE_RANGE */
#define RWF_NOAPPEND_ 0x00000020
#define MAP_TYPE_ 0x0f
#define MAP_SHARED_ 0x01
#define MAP_SHARED_VALIDATE_ 0x03
#define VM_WRITE_ 0x2
#define VM_SHARED_ 0x8
#define VM_MAYWRITE_ 0x20
#define S_IFMT_ 00170000
#define S_IFREG_ 0100000

#define REWRITE_SIGKILL_ 9
#define SB_KERNMOUNT_ (1 << 22)

/* The in-kernel kill of a history's rewrite stops what the rule would stop, no
 * more (s17-fixlogacts 4): not a process the kernel failed to track (UNTRACKED:
 * a clean one once the provenance storage is out of memory) and not an
 * administrator's interactive session whose only reasons are local (the gates'
 * exemption, user space's untrusted()): those are reported, the rule decides. */
static __always_inline bool rewrite_kill_ok(__u32 reasons)
{
	__u32 local = reasons & ~BASTION_PROV_ADMIN_TTY;

	if (!local || (reasons & BASTION_PROV_UNTRACKED))
		return false;
	if ((reasons & BASTION_PROV_ADMIN_TTY) && !(local & ~BASTION_PROV_LOCAL_MASK))
		return false;
	return true;
}

/* The record of an untrusted tree's rewrite of @f (@reasons: prov_actor's).  A file
 * the kernel knows is a history (the sensitive set's HISTORY class: ~/.bash_history
 * and the like, by inode) is decided here: SIGKILL to the actor at sys_enter, before
 * the syscall runs (it may complete, but the task never returns to user space: a
 * write it would make next is not made; a buffered write in this very call stops at
 * its first page, fatal_signal_pending).  A file of a kernel-internal mount (memfd,
 * shared anonymous memory: shmem's own superblock) is no log: not reported.  Repeats
 * (process, file, act) within cfg_rewrite_dedup_ns are counted, not sent. */
/* A global function (verified once, on its own, with every argument unknown), not
 * inlined: inlined into mprotect's bpf_loop → bpf_find_vma callback, the sensitive-set
 * match and the path walk were verified again for every caller state, and kernel
 * 6.18.44's verifier gave up on on_mprotect at 1,000,000 instructions (the whole
 * sensor failed to load; s18).  The file travels as a scalar: every read of it below is
 * a CO-RE probe read, as it was. */
__noinline int rewrite_emit_file(__u32 act, __u32 arg, __u64 file_addr, __u32 reasons)
{
	struct file *f = (struct file *)file_addr;
	struct bastion_file_event *e;
	struct inode *inode;
	struct path fpath;
	__u32 sclass = 0, sid = 0, dev;
	__u64 ino;
	bool hist;

	if (!f)
		return 0;
	inode = BPF_CORE_READ(f, f_inode);
	if ((BPF_CORE_READ(inode, i_mode) & S_IFMT_) != S_IFREG_ ||
	    (BPF_CORE_READ(inode, i_sb, s_flags) & SB_KERNMOUNT_))
		return 0;
	hist = sens_match_cached(f, &sclass, &sid) && sclass == BASTION_SENS_HISTORY;
	if (hist && rewrite_kill_ok(reasons))
		bpf_send_signal(REWRITE_SIGKILL_);
	if (!wanted(BASTION_EV_FILE))
		return 0;
	ino = BPF_CORE_READ(inode, i_ino);
	dev = BPF_CORE_READ(inode, i_sb, s_dev);
	if (rewrite_seen_recently(act, dev, ino))
		return 0;
	e = file_event(BASTION_FILE_REWRITE);
	if (!e)
		return 0;
	e->mode = act;
	e->open_flags = arg;
	if (hist) {
		e->hdr.flags |= BASTION_F_SENSITIVE;
		e->sens_class = sclass;
		e->sens_id = sid;
	}
	e->ino = ino;
	e->dev = dev;
	fpath = BPF_CORE_READ(f, f_path);
	file_put_path(e, FS_PATH, &fpath);
	file_submit(e);
	return 0;
}

static __always_inline int rewrite_emit(__u32 act, __u32 arg, struct file *f, __u32 reasons)
{
	return rewrite_emit_file(act, arg, (__u64)f, reasons);
}

/* An untrusted tree's mprotect(PROT_WRITE) over areas the sensor could not look at
 * (bpf_find_vma failed, or the range spans more areas than it walks): no file, the
 * rule stops the tree (fail loud, s17-fixlogacts 2). */
static __always_inline int rewrite_unknown(__u32 arg)
{
	struct bastion_file_event *e;

	if (!wanted(BASTION_EV_FILE) || rewrite_seen_recently(BASTION_REWRITE_MPROTECT_UNKNOWN, 0, 0))
		return 0;
	e = file_event(BASTION_FILE_REWRITE);
	if (!e)
		return 0;
	e->mode = BASTION_REWRITE_MPROTECT_UNKNOWN;
	e->open_flags = arg;
	file_submit(e);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_fcntl")
int on_fcntl(void *ctx)
{
	__u32 arg = ARG(ctx, 2);
	struct file *f;
	__u32 r;

	if (ARG(ctx, 1) != F_SETFL_ || (arg & O_APPEND_))
		return 0;
	r = prov_actor();
	if (!r)
		return 0;
	f = fd_file(ARG(ctx, 0));
	if (!f || !(BPF_CORE_READ(f, f_flags) & O_APPEND_))
		return 0;   /* O_APPEND was not set: nothing cleared */
	return rewrite_emit(BASTION_REWRITE_SETFL, arg, f, r);
}

SEC("tracepoint/syscalls/sys_enter_fallocate")
int on_fallocate(void *ctx)
{
	__u32 mode = ARG(ctx, 1), r;

	if (!(mode & ~FALLOC_ALLOC_ONLY_))
		return 0;   /* plain allocation (mode 0, KEEP_SIZE): destroys nothing */
	r = prov_actor();
	if (!r)
		return 0;
	return rewrite_emit(BASTION_REWRITE_FALLOCATE, mode, fd_file(ARG(ctx, 0)), r);
}

SEC("tracepoint/syscalls/sys_enter_pwritev2")
int on_pwritev2(void *ctx)
{
	__u32 flags = ARG(ctx, 5), r;

	if (!(flags & RWF_NOAPPEND_))
		return 0;
	r = prov_actor();
	if (!r)
		return 0;
	return rewrite_emit(BASTION_REWRITE_NOAPPEND, flags, fd_file(ARG(ctx, 0)), r);
}

/* mmap(PROT_WRITE, MAP_SHARED) of a descriptor opened for writing (on_mmap below). */
static __always_inline void rewrite_mmap(__u32 prot, __u32 flags, int fd)
{
	__u32 type = flags & MAP_TYPE_;
	struct file *f;
	__u32 r;

	if (!(prot & XM_PROT_WRITE_) || (type != MAP_SHARED_ && type != MAP_SHARED_VALIDATE_) ||
	    (flags & XM_MAP_ANONYMOUS_) || fd < 0)
		return;
	r = prov_actor();
	if (!r)
		return;
	f = fd_file(fd);
	if (f && (BPF_CORE_READ(f, f_mode) & FMODE_WRITE_))
		rewrite_emit(BASTION_REWRITE_MMAP, prot, f, r);
}

/* mount_setattr(MOUNT_ATTR_RDONLY) on a log mount and fspick + fsconfig(RECONFIGURE)
 * stop new log writes with no LSM hook on 6.1 (s16-gate).  Reported at exit, when the
 * call succeeded (s16-fixlog: a failed call, an unprivileged user's EPERM, changes
 * nothing and was a high finding at will), and only in the host's mount namespace
 * (cfg_host_mnt_ns; a mount namespace of the caller's own shows nothing to the host).
 * The arguments are kept at entry; the path and attr_set are read from the caller's
 * memory at exit (another thread may have rewritten them after the kernel copied them:
 * the record says what the memory held then, not necessarily what the kernel used). */
const volatile __u32 cfg_host_mnt_ns = 0;

static __always_inline bool in_host_mnt_ns(void)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();

	return !cfg_host_mnt_ns || BPF_CORE_READ(t, nsproxy, mnt_ns, ns.inum) == cfg_host_mnt_ns;
}

struct mount_args {
	__u32 op;
	__s32 dfd;
	__u64 upath;
	__u64 uattr;   /* mount_setattr: struct mount_attr * */
	__u64 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, struct mount_args);
} pending_mount SEC(".maps");

static __always_inline int mount_enter(__u32 op, __s32 dfd, __u64 upath, __u64 uattr,
				       __u64 flags)
{
	struct mount_args a = { .op = op, .dfd = dfd, .upath = upath, .uattr = uattr,
				.flags = flags };
	__u64 id;

	if (!wanted(BASTION_EV_FILE) || !in_host_mnt_ns())
		return 0;
	id = bpf_get_current_pid_tgid();
	bpf_map_update_elem(&pending_mount, &id, &a, BPF_ANY);
	return 0;
}

static __always_inline int mount_exit(__u32 op, long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct mount_args *p = bpf_map_lookup_elem(&pending_mount, &id);
	struct mount_args a;
	struct bastion_file_event *e;
	__u64 attr_set = 0;

	if (!p)
		return 0;
	a = *p;
	bpf_map_delete_elem(&pending_mount, &id);
	if (ret < 0 || a.op != op)
		return 0;
	e = file_path_event(op, a.dfd, (const char *)a.upath);
	if (!e)
		return 0;
	if (op == BASTION_FILE_MOUNT_SETATTR) {
		bpf_probe_read_user(&attr_set, sizeof(attr_set), (void *)a.uattr);
		e->mode = (__u32)attr_set;
	}
	e->open_flags = a.flags;
	file_submit(e);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_mount_setattr")
int on_mount_setattr(void *ctx)
{
	return mount_enter(BASTION_FILE_MOUNT_SETATTR, ARG(ctx, 0), ARG(ctx, 1), ARG(ctx, 3),
			   ARG(ctx, 2));
}
SEC("tracepoint/syscalls/sys_exit_mount_setattr")
int on_mount_setattr_ret(void *ctx) { return mount_exit(BASTION_FILE_MOUNT_SETATTR, RET(ctx)); }
SEC("tracepoint/syscalls/sys_enter_fspick")
int on_fspick(void *ctx)
{
	return mount_enter(BASTION_FILE_FSPICK, ARG(ctx, 0), ARG(ctx, 1), 0, ARG(ctx, 2));
}
SEC("tracepoint/syscalls/sys_exit_fspick")
int on_fspick_ret(void *ctx) { return mount_exit(BASTION_FILE_FSPICK, RET(ctx)); }

SEC("tracepoint/syscalls/sys_enter_unlinkat")
int on_unlinkat(void *ctx) { return unlink_ev(ARG(ctx, 0), (const char *)ARG(ctx, 1)); }
SEC("tracepoint/syscalls/sys_enter_unlink")
int on_unlink(void *ctx) { return unlink_ev(AT_FDCWD_, (const char *)ARG(ctx, 0)); }

/* rename and link: the existing name, and the new one in path2. */
static __always_inline int two_path_ev(__u32 op, int odfd, const char *old, int ndfd,
				       const char *new)
{
	struct bastion_file_event *e = file_path_event(op, odfd, old);

	if (!e)
		return 0;
	file_put_user_at(e, FS_PATH2, ndfd, new, BASTION_F_RELATIVE2);
	file_submit(e);
	return 0;
}

static __always_inline int rename_ev(int odfd, const char *old, int ndfd, const char *new)
{
	return two_path_ev(BASTION_FILE_RENAME, odfd, old, ndfd, new);
}

SEC("tracepoint/syscalls/sys_enter_renameat2")
int on_renameat2(void *ctx)
{
	return rename_ev(ARG(ctx, 0), (const char *)ARG(ctx, 1), ARG(ctx, 2),
			 (const char *)ARG(ctx, 3));
}
SEC("tracepoint/syscalls/sys_enter_renameat")
int on_renameat(void *ctx)
{
	return rename_ev(ARG(ctx, 0), (const char *)ARG(ctx, 1), ARG(ctx, 2),
			 (const char *)ARG(ctx, 3));
}
SEC("tracepoint/syscalls/sys_enter_rename")
int on_rename(void *ctx)
{
	return rename_ev(AT_FDCWD_, (const char *)ARG(ctx, 0), AT_FDCWD_,
			 (const char *)ARG(ctx, 1));
}

/* A rename may move a directory into or out of a sensitive subtree: the
 * read-open verdicts cached before it are void once it is done (the epoch
 * moves at exit, so a verdict computed during the rename is void too). */
SEC("tracepoint/syscalls/sys_exit_renameat2")
int on_renameat2_ret(void *ctx) { sens_epoch_bump(); return 0; }
SEC("tracepoint/syscalls/sys_exit_renameat")
int on_renameat_ret(void *ctx) { sens_epoch_bump(); return 0; }
SEC("tracepoint/syscalls/sys_exit_rename")
int on_rename_ret(void *ctx) { sens_epoch_bump(); return 0; }

/* A hard link (AT_SYMLINK_FOLLOW of linkat is not resolved: path is the name given). */
SEC("tracepoint/syscalls/sys_enter_linkat")
int on_linkat(void *ctx)
{
	return two_path_ev(BASTION_FILE_LINK, ARG(ctx, 0), (const char *)ARG(ctx, 1), ARG(ctx, 2),
			   (const char *)ARG(ctx, 3));
}
SEC("tracepoint/syscalls/sys_enter_link")
int on_link(void *ctx)
{
	return two_path_ev(BASTION_FILE_LINK, AT_FDCWD_, (const char *)ARG(ctx, 0), AT_FDCWD_,
			   (const char *)ARG(ctx, 1));
}

static __always_inline int chmod_ev(struct bastion_file_event *e, __u32 mode)
{
	if (!e)
		return 0;
	e->mode = mode;
	file_submit(e);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_fchmodat")
int on_fchmodat(void *ctx)
{
	return chmod_ev(file_path_event(BASTION_FILE_CHMOD, ARG(ctx, 0), (const char *)ARG(ctx, 1)),
			ARG(ctx, 2));
}
SEC("tracepoint/syscalls/sys_enter_fchmodat2")
int on_fchmodat2(void *ctx)
{
	return chmod_ev(file_path_event(BASTION_FILE_CHMOD, ARG(ctx, 0), (const char *)ARG(ctx, 1)),
			ARG(ctx, 2));
}
SEC("tracepoint/syscalls/sys_enter_chmod")
int on_chmod(void *ctx)
{
	return chmod_ev(file_path_event(BASTION_FILE_CHMOD, AT_FDCWD_, (const char *)ARG(ctx, 0)),
			ARG(ctx, 1));
}
SEC("tracepoint/syscalls/sys_enter_fchmod")
int on_fchmod(void *ctx)
{
	return chmod_ev(file_fd_event(BASTION_FILE_CHMOD, ARG(ctx, 0)), ARG(ctx, 1));
}

static __always_inline int chown_ev(struct bastion_file_event *e, __u32 uid, __u32 gid)
{
	if (!e)
		return 0;
	e->owner_uid = uid;
	e->owner_gid = gid;
	file_submit(e);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_fchownat")
int on_fchownat(void *ctx)
{
	return chown_ev(file_path_event(BASTION_FILE_CHOWN, ARG(ctx, 0), (const char *)ARG(ctx, 1)),
			ARG(ctx, 2), ARG(ctx, 3));
}
SEC("tracepoint/syscalls/sys_enter_chown")
int on_chown(void *ctx)
{
	return chown_ev(file_path_event(BASTION_FILE_CHOWN, AT_FDCWD_, (const char *)ARG(ctx, 0)),
			ARG(ctx, 1), ARG(ctx, 2));
}
SEC("tracepoint/syscalls/sys_enter_lchown")
int on_lchown(void *ctx)
{
	return chown_ev(file_path_event(BASTION_FILE_CHOWN, AT_FDCWD_, (const char *)ARG(ctx, 0)),
			ARG(ctx, 1), ARG(ctx, 2));
}
SEC("tracepoint/syscalls/sys_enter_fchown")
int on_fchown(void *ctx)
{
	return chown_ev(file_fd_event(BASTION_FILE_CHOWN, ARG(ctx, 0)), ARG(ctx, 1), ARG(ctx, 2));
}

/* A chosen time set on a file (s23): timestomping (a dropped binary given its
 * neighbours' age) by any program, not only touch(1).  Only an explicit
 * modification time crosses: "now" (NULL times, UTIME_NOW) and an omitted mtime
 * are every touch and every editor.  The times are read from user memory at
 * entry (a second thread can change them before the kernel copies them: the
 * compat tier's TOCTOU, docs/threat-model.md); the lsm tier reads the kernel's copy. */
#define UTIME_NOW_ ((1L << 30) - 1L)
#define UTIME_OMIT_ ((1L << 30) - 2L)

struct utimes_ts {
	__s64 sec;
	__s64 nsec;
};

/* @ts[0] atime, @ts[1] mtime as timespecs (nsec may be UTIME_*); 0 = nothing to report */
static __always_inline __u32 utimes_bits(const struct utimes_ts ts[2])
{
	__u32 bits = 0;

	if (ts[0].nsec != UTIME_NOW_ && ts[0].nsec != UTIME_OMIT_)
		bits |= BASTION_UTIMES_ATIME;
	if (ts[1].nsec != UTIME_NOW_ && ts[1].nsec != UTIME_OMIT_)
		bits |= BASTION_UTIMES_MTIME;
	return bits & BASTION_UTIMES_MTIME ? bits : 0;
}

static __always_inline int utimes_ev(int dfd, const char *upath, const struct utimes_ts ts[2])
{
	struct bastion_file_event *e;
	__u32 bits = utimes_bits(ts);

	if (!bits || !wanted(BASTION_EV_FILE))
		return 0;
	/* futimens(fd, times) is utimensat(fd, NULL, times, 0): the descriptor's file */
	e = upath ? file_path_event(BASTION_FILE_UTIMES, dfd, upath)
		  : file_fd_event(BASTION_FILE_UTIMES, dfd);
	if (!e)
		return 0;
	e->mode = bits;
	e->ctime_ns = (__u64)ts[1].sec * 1000000000ULL + (__u64)ts[1].nsec;
	file_submit(e);
	return 0;
}

/* utimensat(dfd, path, const struct __kernel_timespec times[2], flags) */
SEC("tracepoint/syscalls/sys_enter_utimensat")
int on_utimensat(void *ctx)
{
	struct utimes_ts ts[2] = {};
	const void *ut = (const void *)ARG(ctx, 2);

	if (!ut || bpf_probe_read_user(ts, sizeof(ts), ut))
		return 0; /* NULL: now; unreadable: the kernel fails it with EFAULT */
	return utimes_ev(ARG(ctx, 0), (const char *)ARG(ctx, 1), ts);
}

/* utimes/futimesat: struct __kernel_old_timeval times[2] (usec); utime: struct
 * utimbuf {actime, modtime} (seconds).  NULL: now. */
static __always_inline int utimes_timeval_ev(int dfd, const char *upath, const void *utv)
{
	struct utimes_ts ts[2] = {};

	if (!utv || bpf_probe_read_user(ts, sizeof(ts), utv))
		return 0;
	if (ts[0].nsec < 0 || ts[0].nsec >= 1000000 || ts[1].nsec < 0 || ts[1].nsec >= 1000000)
		return 0; /* EINVAL */
	ts[0].nsec *= 1000;
	ts[1].nsec *= 1000;
	return utimes_ev(dfd, upath, ts);
}

SEC("tracepoint/syscalls/sys_enter_utimes")
int on_utimes(void *ctx)
{
	return utimes_timeval_ev(AT_FDCWD_, (const char *)ARG(ctx, 0), (const void *)ARG(ctx, 1));
}
SEC("tracepoint/syscalls/sys_enter_futimesat")
int on_futimesat(void *ctx)
{
	const char *upath = (const char *)ARG(ctx, 1);

	/* futimesat(fd, NULL, tv) is futimes(fd, tv) */
	return utimes_timeval_ev(ARG(ctx, 0), upath, (const void *)ARG(ctx, 2));
}
SEC("tracepoint/syscalls/sys_enter_utime")
int on_utime(void *ctx)
{
	__s64 buf[2] = {};
	struct utimes_ts ts[2] = {};
	const void *ub = (const void *)ARG(ctx, 1);

	if (!ub || bpf_probe_read_user(buf, sizeof(buf), ub))
		return 0;
	ts[0].sec = buf[0];
	ts[1].sec = buf[1];
	return utimes_ev(AT_FDCWD_, (const char *)ARG(ctx, 0), ts);
}

/* ------------------------------------------------------------------ */
/* network                                                             */

SEC("tracepoint/syscalls/sys_enter_connect")
int on_connect(void *ctx)
{
	struct bastion_net_event *e;
	struct sock *sk;
	__u8 daddr[16] = {};
	__u16 family = 0, dport = 0;

	if (!wanted(BASTION_EV_NET))
		return 0;
	user_sockaddr((const void *)ARG(ctx, 1), &family, daddr, &dport);
	if (net_seen_recently(BASTION_NET_CONNECT, family, daddr, dport))
		return 0;
	e = net_event(BASTION_NET_CONNECT);
	if (!e)
		return 0;
	e->family = family;
	e->dport = dport;
	__builtin_memcpy(e->daddr, daddr, 16);
	sk = fd_sock(ARG(ctx, 0));
	if (sk) {
		e->protocol = BPF_CORE_READ(sk, sk_protocol);
		e->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	}
	SUBMIT(e);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_bind")
int on_bind(void *ctx)
{
	struct bastion_net_event *e;
	struct sock *sk;

	if (!wanted(BASTION_EV_NET))
		return 0;
	e = net_event(BASTION_NET_BIND);
	if (!e)
		return 0;
	user_sockaddr((const void *)ARG(ctx, 1), &e->family, e->saddr, &e->sport);
	sk = fd_sock(ARG(ctx, 0));
	if (sk)
		e->protocol = BPF_CORE_READ(sk, sk_protocol);
	SUBMIT(e);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_listen")
int on_listen(void *ctx)
{
	struct bastion_net_event *e;
	struct sock *sk;

	if (!wanted(BASTION_EV_NET))
		return 0;
	sk = fd_sock(ARG(ctx, 0));
	e = net_event(BASTION_NET_LISTEN);
	if (!e)
		return 0;
	if (sk)
		sock_addrs(sk, e);
	e->backlog = ARG(ctx, 1);
	SUBMIT(e);
	return 0;
}

static __always_inline int accept_exit(long ret)
{
	struct bastion_net_event *e;
	struct sock *sk;

	if (ret < 0 || !wanted(BASTION_EV_NET))
		return 0;
	sk = fd_sock(ret);
	if (!sk || accept_seen_recently(sk))
		return 0;
	e = net_event(BASTION_NET_ACCEPT);
	if (!e)
		return 0;
	sock_addrs(sk, e);
	e->ret = ret;
	SUBMIT(e);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept")
int on_accept_ret(void *ctx) { return accept_exit(RET(ctx)); }
SEC("tracepoint/syscalls/sys_exit_accept4")
int on_accept4_ret(void *ctx) { return accept_exit(RET(ctx)); }

/* ------------------------------------------------------------------ */
/* process interaction and privilege                                   */

/* ptrace(2) and another process's memory read or written without it (s23: a
 * ptrace record with a request no ptrace(2) has; target_pid as passed, in the
 * caller's pid namespace).  Reported at the syscall's exit, when it succeeded
 * (s30 review): a failed call did nothing, and entry records let any user make
 * a new dedup key per call (a loop over pids that do not exist, or request
 * numbers that are none), a flood no key could hold and one that emptied the
 * dedup map the opens share.  Distinct keys now need distinct live targets the
 * caller may trace: its own processes. */
struct ptrace_args {
	__s64 request;
	__u64 addr;
	__s32 target;
	__u32 armed;   /* the syscall whose exit reports it (PT_SYS_*), 0: none pending */
};

#define PT_SYS_PTRACE 1
#define PT_SYS_VM_READV 2
#define PT_SYS_VM_WRITEV 3

/* Task-local (no capacity to fill: a thread blocked in the call, e.g. on a
 * userfaultfd page, holds its own slot, and no number of other blocked threads
 * can push it out before its exit, as they could out of an LRU map). */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ptrace_args);
} pending_ptrace SEC(".maps");

static __always_inline int ptrace_enter(__u32 sys, __s64 request, __s32 target, __u64 addr)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct ptrace_args *p;

	if (!wanted(BASTION_EV_PTRACE))
		return 0;
	p = bpf_task_storage_get(&pending_ptrace, t, NULL, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!p)   /* no slot (no memory; 6.1: the storage busy on this CPU): the call as made */
		return ptrace_once(request, target, addr, 0);
	p->request = request;
	p->addr = addr;
	p->target = target;
	p->armed = sys;
	return 0;
}

/* (another syscall's arguments, left by a call in flight when the programs
 * attached, are not this one's) */
static __always_inline int ptrace_exit(__u32 sys, long ret)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct ptrace_args *p = bpf_task_storage_get(&pending_ptrace, t, NULL, 0);

	if (!p || p->armed != sys)
		return 0;
	p->armed = 0;
	if (ret < 0)
		return 0;
	return ptrace_once(p->request, p->target, p->addr, 0);
}

SEC("tracepoint/syscalls/sys_enter_ptrace")
int on_ptrace(void *ctx)
{
	return ptrace_enter(PT_SYS_PTRACE, ARG(ctx, 0), ARG(ctx, 1), ARG(ctx, 2));
}
SEC("tracepoint/syscalls/sys_exit_ptrace")
int on_ptrace_ret(void *ctx) { return ptrace_exit(PT_SYS_PTRACE, RET(ctx)); }
SEC("tracepoint/syscalls/sys_enter_process_vm_readv")
int on_process_vm_readv(void *ctx)
{
	return ptrace_enter(PT_SYS_VM_READV, BASTION_PTRACE_VM_READV, ARG(ctx, 0), 0);
}
SEC("tracepoint/syscalls/sys_exit_process_vm_readv")
int on_process_vm_readv_ret(void *ctx) { return ptrace_exit(PT_SYS_VM_READV, RET(ctx)); }
SEC("tracepoint/syscalls/sys_enter_process_vm_writev")
int on_process_vm_writev(void *ctx)
{
	return ptrace_enter(PT_SYS_VM_WRITEV, BASTION_PTRACE_VM_WRITEV, ARG(ctx, 0), 0);
}
SEC("tracepoint/syscalls/sys_exit_process_vm_writev")
int on_process_vm_writev_ret(void *ctx) { return ptrace_exit(PT_SYS_VM_WRITEV, RET(ctx)); }

/* Every signal the current task sends to another process (s16-sig): the
 * signal:signal_generate tracepoint fires wherever a signal is generated
 * (kill, tkill, tgkill, rt_sigqueueinfo, rt_tgsigqueueinfo,
 * pidfd_send_signal, their ia32 and x32 forms, kill(-pgrp) and kill(-1) once
 * per process reached, cgroup.kill), after the permission check, with the
 * target task: its pid is the kernel's, no pid-namespace translation is
 * needed.  It also fires for the kernel's own signals (SIGCHLD, faults,
 * timers, tty job control, the OOM killer), often from interrupt context
 * where current is whatever ran: those are not the current task's act.
 * Kept, cheapest test first, before anything crosses the ring:
 *  - a harmful signal (kill_signal_harmful: not 0, SIGCHLD, SIGCONT, SIGURG,
 *    SIGWINCH) to another process (a process signalling itself is the
 *    common benign case), from a user task in scope;
 *  - sent by the task itself: si_code SI_USER (kill, pidfd without info,
 *    cgroup.kill) or SI_TKILL (tkill, tgkill), which the kernel's own
 *    signals never carry (they are SI_KERNEL or > 0), or any other negative
 *    si_code only while the task is in a syscall that queues a caller's
 *    siginfo (rt_sigqueueinfo, rt_tgsigqueueinfo, pidfd_send_signal): a
 *    posix timer's SI_TIMER fired in interrupt context is not its act.
 * Not kept: a refused attempt (EPERM: no signal is generated), SIGIO with
 * F_SETSIG (si_code > 0, generated for the file's owner, possibly from an
 * interrupt) and a tty's TIOCSIG (SI_KERNEL): see the threat model. */
#define SI_USER_ 0
#define SI_TKILL_ (-6)
#define TS_COMPAT_ 0x0002
#define X32_BIT_ 0x40000000L
#define PF_KTHREAD_ 0x00200000

static __always_inline bool kill_signal_harmful(int sig)
{
	return !(sig <= 0 || sig == 17 || sig == 18 || sig == 23 || sig == 28);
}

/* The syscall the current task is in, as enum bastion_kill_syscall (0: none
 * of the signal syscalls); *nr the raw number, *flags its ABI. */
static __always_inline __u32 kill_syscall(long *nr, __u32 *flags)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(t);
	long n = BPF_CORE_READ(regs, orig_ax);

	*nr = n;
	if (BPF_CORE_READ(t, thread_info.status) & TS_COMPAT_) {
		*flags |= BASTION_KILL_F_IA32;
		switch (n) {
		case 37: return BASTION_KILL_KILL;
		case 238: return BASTION_KILL_TKILL;
		case 270: return BASTION_KILL_TGKILL;
		case 178: return BASTION_KILL_RT_SIGQUEUEINFO;
		case 335: return BASTION_KILL_RT_TGSIGQUEUEINFO;
		case 424: return BASTION_KILL_PIDFD;
		}
		return 0;
	}
	if (n & X32_BIT_) {
		*flags |= BASTION_KILL_F_X32;
		n &= ~X32_BIT_;
		if (n == 524)
			return BASTION_KILL_RT_SIGQUEUEINFO;
		if (n == 536)
			return BASTION_KILL_RT_TGSIGQUEUEINFO;
	}
	switch (n) {
	case 62: return BASTION_KILL_KILL;
	case 200: return BASTION_KILL_TKILL;
	case 234: return BASTION_KILL_TGKILL;
	case 129: return BASTION_KILL_RT_SIGQUEUEINFO;
	case 297: return BASTION_KILL_RT_TGSIGQUEUEINFO;
	case 424: return BASTION_KILL_PIDFD;
	}
	return 0;
}

SEC("tp_btf/signal_generate")
int BPF_PROG(on_kill, int sig, struct kernel_siginfo *info, struct task_struct *task,
	     int group, int result)
{
	struct bastion_kill_event *e;
	struct task_struct *cur;
	struct dedup_key k = {};
	__u32 tgid = BPF_CORE_READ(task, tgid), syscall, flags = 0;
	long nr;
	int code;

	if (!kill_signal_harmful(sig) || tgid == (__u32)(bpf_get_current_pid_tgid() >> 32))
		return 0;
	if (!wanted(BASTION_EV_KILL))
		return 0;
	cur = (struct task_struct *)bpf_get_current_task();
	if (BPF_CORE_READ(cur, flags) & PF_KTHREAD_)
		return 0;
	/* SEND_SIG_NOINFO (0) and SEND_SIG_PRIV (1) are not pointers */
	if ((unsigned long)info == 0)
		code = SI_USER_;
	else if ((unsigned long)info == 1)
		return 0; /* SI_KERNEL */
	else
		code = BPF_CORE_READ(info, si_code);
	if (code > 0)
		return 0;
	syscall = kill_syscall(&nr, &flags);
	if (code != SI_USER_ && code != SI_TKILL_ && syscall != BASTION_KILL_RT_SIGQUEUEINFO &&
	    syscall != BASTION_KILL_RT_TGSIGQUEUEINFO && syscall != BASTION_KILL_PIDFD)
		return 0;
	if (kill_seen_recently(sig, task, &k))
		return 0;
	e = RESERVE(struct bastion_kill_event, BASTION_EV_KILL);
	if (!e) {
		kill_unstamp(&k, sig);   /* not sent: its repeats are not hidden behind it */
		return 0;
	}
	e->target_pid = group ? tgid : BPF_CORE_READ(task, pid);
	e->target_tgid = tgid;
	e->sig = sig;
	e->syscall = syscall ? syscall : BASTION_KILL_OTHER;
	e->code = code;
	e->nr = (__s32)nr;
	e->flags = flags;
	e->result = result;
	SUBMIT(e);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_bpf")
int on_bpf(void *ctx)
{
	struct bastion_bpf_event *e;
	int cmd = ARG(ctx, 0);
	union bpf_attr *uattr = (union bpf_attr *)ARG(ctx, 1);

	if (!bpf_cmd_wanted(cmd))
		return 0;
	e = RESERVE(struct bastion_bpf_event, BASTION_EV_BPF);
	if (!e)
		return 0;
	FILL_BPF_EVENT(e, cmd, uattr, bpf_probe_read_user);
	SUBMIT(e);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_memfd_create")
int on_memfd_create(void *ctx)
{
	struct bastion_memfd_event *e;

	if (!wanted(BASTION_EV_MEMFD))
		return 0;
	e = RESERVE(struct bastion_memfd_event, BASTION_EV_MEMFD);
	if (!e)
		return 0;
	e->flags = ARG(ctx, 1);
	e->_pad = 0;
	if (bpf_probe_read_user_str(e->name, sizeof(e->name), (const char *)ARG(ctx, 0)) < 0)
		e->name[0] = '\0';
	SUBMIT(e);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_setuid")
int on_setuid(void *ctx) { return cred_ev(BASTION_CRED_SETUID, ARG(ctx, 0), -1, -1); }
SEC("tracepoint/syscalls/sys_enter_setgid")
int on_setgid(void *ctx) { return cred_ev(BASTION_CRED_SETGID, ARG(ctx, 0), -1, -1); }
SEC("tracepoint/syscalls/sys_enter_setreuid")
int on_setreuid(void *ctx) { return cred_ev(BASTION_CRED_SETREUID, ARG(ctx, 0), ARG(ctx, 1), -1); }
SEC("tracepoint/syscalls/sys_enter_setregid")
int on_setregid(void *ctx) { return cred_ev(BASTION_CRED_SETREGID, ARG(ctx, 0), ARG(ctx, 1), -1); }
SEC("tracepoint/syscalls/sys_enter_setresuid")
int on_setresuid(void *ctx)
{
	return cred_ev(BASTION_CRED_SETRESUID, ARG(ctx, 0), ARG(ctx, 1), ARG(ctx, 2));
}
SEC("tracepoint/syscalls/sys_enter_setresgid")
int on_setresgid(void *ctx)
{
	return cred_ev(BASTION_CRED_SETRESGID, ARG(ctx, 0), ARG(ctx, 1), ARG(ctx, 2));
}

SEC("tracepoint/syscalls/sys_enter_capset")
int on_capset(void *ctx)
{
	struct bastion_cred_event *e;
	struct __user_cap_data_struct d[2] = {};

	if (!wanted(BASTION_EV_CRED))
		return 0;
	e = RESERVE(struct bastion_cred_event, BASTION_EV_CRED);
	if (!e)
		return 0;
	e->op = BASTION_CRED_CAPSET;
	bpf_probe_read_user(&e->a0, 4, (void *)ARG(ctx, 0)); /* header.version */
	bpf_probe_read_user(&e->a1, 4, (void *)(ARG(ctx, 0) + 4)); /* header.pid */
	e->a2 = 0;
	bpf_probe_read_user(d, sizeof(d), (void *)ARG(ctx, 1));
	e->cap_effective = ((__u64)d[1].effective << 32) | d[0].effective;
	e->cap_permitted = ((__u64)d[1].permitted << 32) | d[0].permitted;
	SUBMIT(e);
	return 0;
}

/* ------------------------------------------------------------------ */
/* executable memory (ABI 2.1): bpf/lib/xmem.h.  Arguments at syscall    */
/* entry (another thread may remap the range before the kernel acts:     */
/* the hook sensor reads the kernel's vma instead).                      */

#define XM_PROT_EXEC_ BASTION_PROT_EXEC

SEC("tracepoint/syscalls/sys_enter_mmap")
int on_mmap(void *ctx)
{
	__u32 prot = ARG(ctx, 2), flags = ARG(ctx, 3), why = 0;
	struct file *f = NULL;

	rewrite_mmap(prot, flags, ARG(ctx, 4));   /* s17-logacts: a compare or two and out */
	if (!(prot & XM_PROT_EXEC_))
		return 0;   /* most mmaps: one load and out */
	if (prot & XM_PROT_WRITE_)
		why |= BASTION_XM_WRITE;
	if (flags & XM_MAP_ANONYMOUS_) {
		why |= BASTION_XM_ANON;
	} else {
		f = fd_file(ARG(ctx, 4));
		if (f)
			why |= xmem_file_why(f);
	}
	return emit_xmem(BASTION_MMAP_MMAP, why, prot, flags, ARG(ctx, 0), ARG(ctx, 1), f);
}

/* The areas of an mprotect range (s17-fixlogacts 2): each lookup's callback reports
 * a shared writable-capable file area itself (the area's file is used inside the
 * lookup, under the mmap lock, never after it) and leaves the area's end for the
 * next lookup; the first area's flags and file are the executable-memory record's. */
#define MPROT_WALK_MAX 8
#define ENOENT_ 2

struct rwvma {
	__u64 next;        /* the last area's vm_end: where the next lookup starts */
	__u64 vm_flags;    /* the first area's */
	struct file *file; /* the first area's (the executable-memory record) */
	__u32 prot;
	__u32 reasons;     /* prov_actor's; 0: no rewrite report */
	__u32 seen;        /* 1: the first area is in vm_flags, file */
	__u32 slot;        /* the walk's step: where this lookup's hit goes */
	__u32 _pad;
};

/* Per step of the walk, a shared writable-capable area's file (0: none), reported after
 * the walk.  Per CPU, not on the stack: 6.1 and 6.18 count the walk's callbacks and the
 * record's function into one 512-byte stack. */
struct mprot_hits {
	__u64 f[MPROT_WALK_MAX];
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mprot_hits);
} mprot_hits SEC(".maps");

static long rwvma_found(struct task_struct *task, struct vm_area_struct *vma, void *data)
{
	struct rwvma *w = data;
	__u64 fl = BPF_CORE_READ(vma, vm_flags);

	if (!w->seen) {   /* a flag, not a count: the bpf_loop's states converge */
		w->seen = 1;
		w->vm_flags = fl;
		w->file = BPF_CORE_READ(vma, vm_file);
	}
	w->next = BPF_CORE_READ(vma, vm_end);
	/* PROT_WRITE added to a shared file mapping that may be written (VM_MAYWRITE: the
	 * file was opened for writing) and is not yet: the area's file is kept (one slot
	 * per step) and reported after the walk, outside the lookups' callbacks (s18: the
	 * record built in here made the program too large for 6.18.44's verifier and its
	 * call chain too deep for 6.1's 512-byte combined stack).  The file is read after
	 * the lookup's mmap lock is dropped, through probe reads under the tracepoint's
	 * RCU section (struct file is RCU-freed): a sibling thread's munmap in between can
	 * only make the record name a file being closed, and could as well have come
	 * before the mprotect, which then has nothing to make writable. */
	if (w->reasons &&
	    (fl & (VM_SHARED_ | VM_MAYWRITE_ | VM_WRITE_)) == (VM_SHARED_ | VM_MAYWRITE_))
	{
		__u32 zero = 0;
		struct mprot_hits *h = bpf_map_lookup_elem(&mprot_hits, &zero);

		if (h)
			h->f[w->slot & (MPROT_WALK_MAX - 1)] = (__u64)BPF_CORE_READ(vma, vm_file);
	}
	return 0;
}

/* One lookup of the walk (a bpf_loop step: verified once, whatever the count). */
struct rwwalk {
	struct rwvma w;
	__u64 end;
	__u32 out;    /* 0: the walk's bound hit, 1: the range seen (or a gap), 2: a lookup failed */
	__u32 _pad;
};

static long mprot_step(__u64 i, void *data)
{
	struct rwwalk *k = data;
	long e;

	k->w.slot = i;
	e = bpf_find_vma(bpf_get_current_task_btf(), k->w.next, rwvma_found, &k->w, 0);

	if (e == -ENOENT_) {
		k->out = 1;   /* a gap: the mprotect stops there (ENOMEM) */
		return 1;
	}
	if (e) {
		k->out = 2;   /* -EBUSY (a racing mmap): not seen */
		return 1;
	}
	if (k->w.next >= k->end) {
		k->out = 1;
		return 1;
	}
	return 0;
}

/* mprotect and pkey_mprotect (the same first three arguments): two programs on each
 * tracepoint, each with its own 512-byte stack (s18): the rewrite walk below and the
 * executable-memory record.  In one program, the walk's callbacks and the record's
 * path walk went over 6.1's combined stack (and 6.18.44's verifier gave up on its
 * states).  A PROT_WRITE|PROT_EXEC mprotect by an untrusted tree looks the first area
 * up twice. */
static __always_inline int mprotect_rewrite(void *ctx)
{
	__u32 prot = ARG(ctx, 2), zero = 0;
	__u64 start = ARG(ctx, 0);
	struct rwwalk k = {};
	struct mprot_hits *h;

	/* s17-logacts: every area of the range, for an untrusted tree's PROT_WRITE */
	if (!(prot & XM_PROT_WRITE_) || !(k.w.reasons = prov_actor()))
		return 0;
	h = bpf_map_lookup_elem(&mprot_hits, &zero);
	if (!h)
		return 0;
	__builtin_memset(h, 0, sizeof(*h));
	k.w.prot = prot;
	k.w.next = start;
	k.end = start + ((ARG(ctx, 1) + 4095) & ~4095ull);
	bpf_loop(MPROT_WALK_MAX, mprot_step, &k, 0);
	for (int j = 0; j < MPROT_WALK_MAX; j++)
		if (h->f[j])
			rewrite_emit_file(BASTION_REWRITE_MPROTECT, prot, h->f[j], k.w.reasons);
	if (k.out != 1)
		rewrite_unknown(prot);   /* more areas than walked, or a lookup failed */
	return 0;
}

static __always_inline int mprotect_xmem(void *ctx)
{
	__u32 prot = ARG(ctx, 2);
	__u64 start = ARG(ctx, 0);
	struct rwvma w = {};

	if (!(prot & XM_PROT_EXEC_))
		return 0;
	if (!wanted(BASTION_EV_MMAP))
		return 0;
	/* the region's flags before the change (the first area of the range) */
	w.next = start;
	if (bpf_find_vma(bpf_get_current_task_btf(), start, rwvma_found, &w, 0))
		return 0;   /* no mapping there: the mprotect fails with ENOMEM */
	return emit_xmem(BASTION_MMAP_MPROTECT, xmem_mprotect_why(prot, w.vm_flags, w.file),
			 prot, (__u32)w.vm_flags, start, ARG(ctx, 1), w.file);
}

SEC("tracepoint/syscalls/sys_enter_mprotect")
int on_mprotect(void *ctx)
{
	return mprotect_xmem(ctx);
}

SEC("tracepoint/syscalls/sys_enter_mprotect")
int on_mprotect_rewrite(void *ctx)
{
	return mprotect_rewrite(ctx);
}

/* pkey_mprotect(pkey -1) is mprotect (s17-fixlogacts 2a) */
SEC("tracepoint/syscalls/sys_enter_pkey_mprotect")
int on_pkey_mprotect(void *ctx)
{
	return mprotect_xmem(ctx);
}

SEC("tracepoint/syscalls/sys_enter_pkey_mprotect")
int on_pkey_mprotect_rewrite(void *ctx)
{
	return mprotect_rewrite(ctx);
}

/* ------------------------------------------------------------------ */
/* io_uring (s22-uring, issue 15.3): requests never pass a syscall      */
/* tracepoint, so the ops the rules need are read at the ring's own     */
/* tracepoints (tp_btf: raw tracepoints, no trampoline), which fire     */
/* only for io_uring work.                                              */
/*  - submission (io_uring_submit_req on 6.4+, io_uring_submit_sqe on   */
/*    6.1; both after the op's prep, struct io_kiocb *req first): the   */
/*    names of RENAMEAT, UNLINKAT, LINKAT as the kernel copied them     */
/*    (struct filename: no user-memory TOCTOU), relative ones with the  */
/*    dfd's directory; CONNECT's address (6.10+: the kernel's copy in   */
/*    the request's async data (iou_connect); 6.1: the caller's memory, */
/*    as sys_enter_connect reads it); an OPENAT whose file will not be  */
/*    seen (a fixed-file slot, or IOSQE_CQE_SKIP_SUCCESS): the name.    */
/*  - completion (io_uring_complete; ctx and req are its first two      */
/*    arguments on 6.1 and 6.18, req typed void *): an OPENAT's new     */
/*    descriptor (req->cqe.res) goes through the syscall exit's code:   */
/*    the same filters (write intent, sensitive set, dedup) and record. */
/* Only the process that owns the request is reported for it.           */

#define IORING_OP_CONNECT_ 16
#define IORING_OP_OPENAT_ 18
#define IORING_OP_OPENAT2_ 28
#define IORING_OP_RENAMEAT_ 35
#define IORING_OP_UNLINKAT_ 36
#define IORING_OP_LINKAT_ 39
#define REQ_F_CQE_SKIP_BIT_ 6

/* 6.1: the submitting task in the request; 6.5+: in its io_uring_task */
struct io_kiocb___task {
	struct task_struct *task;
} __attribute__((preserve_access_index));

/* before 6.10: connect's address copy (allocated at issue, not at prep) */
struct io_async_connect___old {
	struct __kernel_sockaddr_storage address;
} __attribute__((preserve_access_index));

static __always_inline struct task_struct *iou_req_task(struct io_kiocb *req)
{
	if (bpf_core_field_exists(((struct io_kiocb___task *)req)->task))
		return BPF_CORE_READ((struct io_kiocb___task *)req, task);
	return BPF_CORE_READ(req, tctx, task);
}

/* Is @req the current process's?  (A completion runs in a thread of the submitter:
 * the task itself, an io-wq worker or the SQPOLL thread; anything else is not its act.) */
static __always_inline bool iou_own(struct io_kiocb *req)
{
	struct task_struct *t = iou_req_task(req);

	return t && BPF_CORE_READ(t, tgid) == (__u32)(bpf_get_current_pid_tgid() >> 32);
}

static __always_inline bool iou_cqe_skipped(struct io_kiocb *req)
{
	/* REQ_F_CQE_SKIP_BIT: 6 from 5.17 through 6.18 (an anonymous enum: no CO-RE value);
	 * req->flags is 32 bits on 6.1, 64 on 6.18: the low word either way */
	return (BPF_CORE_READ(req, flags) >> REQ_F_CQE_SKIP_BIT_) & 1;
}

/* An open whose file the completion will not show: the kernel's copy of the name. */
static __always_inline int iou_open_nofd(struct io_kiocb *req)
{
	struct io_open *o = (struct io_open *)req;
	struct bastion_file_event *e;
	struct open_how how = {};

	if (!wanted(BASTION_EV_FILE))
		return 0;
	e = file_event(BASTION_FILE_OPEN);
	if (!e)
		return 0;
	BPF_CORE_READ_INTO(&how, o, how);
	e->open_flags = how.flags;
	e->mode = how.mode;
	iou_hdr(&e->hdr, BASTION_F_IOURING | BASTION_F_IOURING_NOFD);
	file_put_at(e, FS_PATH, BPF_CORE_READ(o, dfd), BPF_CORE_READ(o, filename, name),
		    BASTION_F_RELATIVE, true);
	file_submit(e);
	return 0;
}

/* An OPENAT/OPENAT2 between its submission and its completion (s22 review H5).  The
 * completions of one io_uring_enter batch are posted after the whole batch ran, so a
 * batch "OPENAT secret (fd N), READ N, CLOSE N" leaves fd N empty at the OPENAT's
 * completion, and a fourth "OPENAT benign" puts another file in it.  The kernel keeps
 * neither the opened file in the request nor the name after issue (io_openat2 puts the
 * filename), so the record by name (as iou_open_nofd makes it) is built at submission
 * and kept here by request; at the completion it goes out, flagged
 * BASTION_F_IOURING_NOFD, when the descriptor is empty or holds a file whose name is
 * not the last component of the submitted name.  Bounded (LRU): an evicted entry means
 * the completion reads the descriptor alone, as before. */
struct iou_pend {
	char rec[FILE_SCRATCH_BYTES];   /* the record by name, first: file_submit's bound */
	char name[BASTION_PATH_LEN];    /* the submitted name (its start) */
	char dname[BASTION_PATH_LEN];   /* completion: the descriptor's file's name */
	__u32 base;                     /* offset of the last component in name */
	__u32 cut;                      /* the name did not fit: never a match */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);             /* the request's address */
	__type(value, struct iou_pend);
} iou_pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct iou_pend);
} iou_pend_scratch SEC(".maps");

static __always_inline int iou_open_pend(struct io_kiocb *req)
{
	struct io_open *o = (struct io_open *)req;
	struct bastion_file_event *e;
	struct open_how how = {};
	struct iou_pend *v;
	__u64 key = (__u64)req;
	__u32 zero = 0, base = 0;
	long n;

	if (!wanted(BASTION_EV_FILE))
		return 0;
	v = bpf_map_lookup_elem(&iou_pend_scratch, &zero);
	if (!v)
		return 0;
	n = bpf_probe_read_kernel_str(v->name, sizeof(v->name), BPF_CORE_READ(o, filename, name));
	if (n < 2)
		return 0;
	for (int i = 0; i < BASTION_PATH_LEN; i++) {
		if (i >= n - 1)
			break;
		if (v->name[i] == '/')
			base = i + 1;
	}
	v->base = base;
	v->cut = n >= BASTION_PATH_LEN;
	e = file_event(BASTION_FILE_OPEN);
	if (!e)
		return 0;
	BPF_CORE_READ_INTO(&how, o, how);
	e->open_flags = how.flags;
	e->mode = how.mode;
	iou_hdr(&e->hdr, BASTION_F_IOURING | BASTION_F_IOURING_NOFD);
	file_put_at(e, FS_PATH, BPF_CORE_READ(o, dfd), BPF_CORE_READ(o, filename, name),
		    BASTION_F_RELATIVE, true);
	bpf_probe_read_kernel(v->rec, sizeof(v->rec), e);
	bpf_map_update_elem(&iou_pending, &key, v, BPF_ANY);
	return 0;
}

/* Is @f (the descriptor's file at the completion) named as the request's name ends? */
static __always_inline bool iou_pend_match(struct iou_pend *v, struct file *f)
{
	__u32 base = v->base;

	if (v->cut || bpf_probe_read_kernel_str(v->dname, sizeof(v->dname),
						BPF_CORE_READ(f, f_path.dentry, d_name.name)) < 2)
		return false;
	for (int i = 0; i < BASTION_PATH_LEN; i++) {
		char c = v->name[(base + i) & (BASTION_PATH_LEN - 1)];

		if (base + i >= BASTION_PATH_LEN)
			return false;
		if (c != v->dname[i])
			return false;
		if (!c)
			return true;
	}
	return false;
}

/* RENAMEAT/LINKAT/UNLINKAT between submission and completion (s22 review H6).  Their
 * names are resolved here against the dfd's directory as it is at submission; the
 * kernel resolves them against the dfd at execution, which a linked (or io-wq) request
 * reaches later: "CLOSE N -> OPENAT /victim/dir (gets N) -> RENAMEAT(N, a, N, a.locked)"
 * made the record name the decoy directory N held at submission.  A request with a
 * relative name and a real dfd keeps here, by request, the names (the kernel's copies:
 * the op frees them when it runs) and the directory (mount, dentry) each dfd held; at a
 * successful completion a dfd that holds another directory (or nothing) by then gets
 * the record again, its names resolved against the dfd as it is then.  Bounded (LRU):
 * an evicted request keeps the submission's record alone. */
struct iou_dfd_pend {
	char name[2][BASTION_PATH_LEN];
	__u64 mnt[2];
	__u64 dentry[2];
	__s32 dfd[2];
	__u32 op;
	__u32 rel;            /* bit i: name i is relative to dfd i (not the cwd) */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);               /* the request's address */
	__type(value, struct iou_dfd_pend);
} iou_dfd_pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct iou_dfd_pend);
} iou_dfd_scratch SEC(".maps");

/* name @i of @v relative to a real dfd: keep the directory that dfd holds now */
static __always_inline bool iou_dfd_keep(struct iou_dfd_pend *v, int i, int dfd,
					 struct filename *fn)
{
	struct file *f;
	long n;

	i &= 1;
	n = bpf_probe_read_kernel_str(v->name[i], BASTION_PATH_LEN, BPF_CORE_READ(fn, name));
	v->dfd[i] = dfd;
	if (n < 2 || v->name[i][0] == '/' || dfd == AT_FDCWD_)
		return false;
	f = fd_file(dfd);
	v->mnt[i] = f ? (__u64)BPF_CORE_READ(f, f_path.mnt) : 0;
	v->dentry[i] = f ? (__u64)BPF_CORE_READ(f, f_path.dentry) : 0;
	v->rel |= 1u << i;
	return true;
}

/* Does dfd @i of @v hold another directory than at submission? */
static __always_inline bool iou_dfd_moved(struct iou_dfd_pend *v, int i)
{
	struct file *f;

	i &= 1;
	if (!(v->rel & (1u << i)))
		return false;
	f = fd_file(v->dfd[i]);
	return !f || (__u64)BPF_CORE_READ(f, f_path.mnt) != v->mnt[i] ||
	       (__u64)BPF_CORE_READ(f, f_path.dentry) != v->dentry[i];
}

/* RENAMEAT, LINKAT (two names), UNLINKAT (one) */
static __always_inline int iou_path_ev(struct io_kiocb *req, __u32 op, int odfd,
				       struct filename *old, int ndfd, struct filename *new)
{
	struct bastion_file_event *e;
	struct iou_dfd_pend *v;
	__u64 key = (__u64)req;
	__u32 zero = 0;
	bool keep;

	if (!wanted(BASTION_EV_FILE))
		return 0;
	e = file_event(op);
	if (!e)
		return 0;
	iou_hdr(&e->hdr, BASTION_F_IOURING);
	file_put_at(e, FS_PATH, odfd, BPF_CORE_READ(old, name), BASTION_F_RELATIVE, true);
	if (new)
		file_put_at(e, FS_PATH2, ndfd, BPF_CORE_READ(new, name), BASTION_F_RELATIVE2, true);
	file_submit(e);
	v = bpf_map_lookup_elem(&iou_dfd_scratch, &zero);
	if (!v)
		return 0;
	v->op = op;
	v->rel = 0;
	v->name[1][0] = 0;
	keep = iou_dfd_keep(v, 0, odfd, old);
	if (new && iou_dfd_keep(v, 1, ndfd, new))
		keep = true;
	if (keep)
		bpf_map_update_elem(&iou_dfd_pending, &key, v, BPF_ANY);
	return 0;
}

/* At the completion of a RENAMEAT/LINKAT/UNLINKAT: the record again when a dfd moved. */
static __always_inline int iou_path_done(struct io_kiocb *req)
{
	struct bastion_file_event *e;
	struct iou_dfd_pend *v;
	__u64 key = (__u64)req;

	v = bpf_map_lookup_elem(&iou_dfd_pending, &key);
	if (!v)
		return 0;
	if (BPF_CORE_READ(req, cqe.res) >= 0 && iou_own(req) &&
	    (iou_dfd_moved(v, 0) || iou_dfd_moved(v, 1)) && wanted(BASTION_EV_FILE)) {
		e = file_event(v->op);
		if (e) {
			iou_hdr(&e->hdr, BASTION_F_IOURING);
			file_put_at(e, FS_PATH, v->dfd[0], v->name[0], BASTION_F_RELATIVE, true);
			if (v->op != BASTION_FILE_UNLINK)
				file_put_at(e, FS_PATH2, v->dfd[1], v->name[1],
					    BASTION_F_RELATIVE2, true);
			file_submit(e);
		}
	}
	bpf_map_delete_elem(&iou_dfd_pending, &key);
	return 0;
}

/* A sockaddr read from kernel memory: family, address, port (host order). */
static __always_inline void kern_sockaddr(const void *kaddr, __u16 *family, __u8 addr[16],
					  __u16 *port)
{
	struct sockaddr_in6 sa = {};

	bpf_probe_read_kernel(&sa, sizeof(sa), kaddr);   /* covers a sockaddr_in */
	*family = sa.sin6_family;
	if (sa.sin6_family == AF_INET_) {
		struct sockaddr_in *in = (struct sockaddr_in *)&sa;

		__builtin_memcpy(addr, &in->sin_addr.s_addr, 4);
		*port = be16(in->sin_port);
	} else if (sa.sin6_family == AF_INET6_) {
		__builtin_memcpy(addr, &sa.sin6_addr, 16);
		*port = be16(sa.sin6_port);
	}
}

static __always_inline bool sa_same(__u16 f1, const __u8 a1[16], __u16 p1, __u16 f2,
				    const __u8 a2[16], __u16 p2)
{
	if (f1 != f2 || p1 != p2)
		return false;
	for (int i = 0; i < 16; i++)
		if (a1[i] != a2[i])
			return false;
	return true;
}

static __always_inline bool sa_inet(__u16 f)
{
	return f == AF_INET_ || f == AF_INET6_;
}

/* CONNECT at submission.  Where the kernel keeps its copy of the address changed within
 * stable series and no BTF type tells (6.1: none until issue, io_async_connect; 6.10+: the
 * request's io_async_msghdr .addr; a 2026 stable fix: a bare sockaddr_storage as the
 * async data, seen on 6.18.44): both kernel candidates are read and the one that equals
 * the caller's memory wins; when none does (the caller rewrote its buffer after the
 * kernel's copy: the TOCTOU), an internet address among the kernel candidates wins over
 * the caller's memory. */
static __always_inline int iou_connect(struct io_kiocb *req)
{
	struct io_connect *c = (struct io_connect *)req;
	struct bastion_net_event *e;
	void *async = BPF_CORE_READ(req, async_data);
	__u8 daddr[16] = {}, ka[16] = {};
	__u16 family = 0, dport = 0, kf = 0, kp = 0;
	struct sock *sk;

	if (!wanted(BASTION_EV_NET))
		return 0;
	user_sockaddr(BPF_CORE_READ(c, addr), &family, daddr, &dport);
	if (async && !bpf_core_type_exists(struct io_async_connect___old)) {
		struct io_async_msghdr *io = async;
		__u8 ma[16] = {};
		__u16 mf = 0, mp = 0;

		kern_sockaddr(async, &kf, ka, &kp);          /* the bare sockaddr_storage */
		kern_sockaddr(&io->addr, &mf, ma, &mp);      /* io_async_msghdr's copy */
		if (!sa_same(kf, ka, kp, family, daddr, dport) &&
		    !sa_same(mf, ma, mp, family, daddr, dport)) {
			if (sa_inet(kf)) {
				family = kf;
				dport = kp;
				__builtin_memcpy(daddr, ka, 16);
			} else if (sa_inet(mf)) {
				family = mf;
				dport = mp;
				__builtin_memcpy(daddr, ma, 16);
			}
		}
	}
	if (net_seen_recently(BASTION_NET_CONNECT, family, daddr, dport))
		return 0;
	e = net_event(BASTION_NET_CONNECT);
	if (!e)
		return 0;
	iou_hdr(&e->hdr, BASTION_F_IOURING);
	e->family = family;
	e->dport = dport;
	__builtin_memcpy(e->daddr, daddr, 16);
	/* the file is assigned at issue, after this point: the descriptor (a fixed file's
	 * slot is not one: no socket details then) */
	if (!(BPF_CORE_READ(req, flags) & 1)) {   /* REQ_F_FIXED_FILE_BIT 0 */
		sk = fd_sock(BPF_CORE_READ(req, cqe.fd));
		if (sk) {
			e->protocol = BPF_CORE_READ(sk, sk_protocol);
			e->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
		}
	}
	SUBMIT(e);
	return 0;
}

static __always_inline int iou_submit(struct io_kiocb *req)
{
	__u8 op = BPF_CORE_READ(req, opcode);

	switch (op) {
	case IORING_OP_OPENAT_:
	case IORING_OP_OPENAT2_: {
		struct io_open *o = (struct io_open *)req;

		if (BPF_CORE_READ(o, file_slot) || iou_cqe_skipped(req))
			return iou_open_nofd(req);
		return iou_open_pend(req);   /* reported at its completion */
	}
	case IORING_OP_RENAMEAT_: {
		struct io_rename *r = (struct io_rename *)req;

		sens_epoch_bump();   /* as sys_exit_rename*: again at the completion */
		return iou_path_ev(req, BASTION_FILE_RENAME, BPF_CORE_READ(r, old_dfd),
				   BPF_CORE_READ(r, oldpath), BPF_CORE_READ(r, new_dfd),
				   BPF_CORE_READ(r, newpath));
	}
	case IORING_OP_LINKAT_: {
		struct io_link *l = (struct io_link *)req;

		return iou_path_ev(req, BASTION_FILE_LINK, BPF_CORE_READ(l, old_dfd),
				   BPF_CORE_READ(l, oldpath), BPF_CORE_READ(l, new_dfd),
				   BPF_CORE_READ(l, newpath));
	}
	case IORING_OP_UNLINKAT_: {
		struct io_unlink *u = (struct io_unlink *)req;

		return iou_path_ev(req, BASTION_FILE_UNLINK, BPF_CORE_READ(u, dfd),
				   BPF_CORE_READ(u, filename), 0, NULL);
	}
	}
	return 0;
}

/* CONNECT in a program of its own on the same tracepoint: its three sockaddr copies and
 * the file programs' path walk in one program went over the 512-byte combined stack. */
static __always_inline int iou_submit_net(struct io_kiocb *req)
{
	if (BPF_CORE_READ(req, opcode) == IORING_OP_CONNECT_)
		return iou_connect(req);
	return 0;
}

/* 6.4+ */
SEC("tp_btf/io_uring_submit_req")
int BPF_PROG(on_iou_submit_req, struct io_kiocb *req)
{
	return iou_submit(req);
}

SEC("tp_btf/io_uring_submit_req")
int BPF_PROG(on_iou_connect_req, struct io_kiocb *req)
{
	return iou_submit_net(req);
}

/* 6.1 - 6.3 (the same point, named for the sqe; its second argument is not needed) */
SEC("tp_btf/io_uring_submit_sqe")
int BPF_PROG(on_iou_submit_sqe, struct io_kiocb *req)
{
	return iou_submit(req);
}

SEC("tp_btf/io_uring_submit_sqe")
int BPF_PROG(on_iou_connect_sqe, struct io_kiocb *req)
{
	return iou_submit_net(req);
}

SEC("tp_btf/io_uring_complete")
int BPF_PROG(on_iou_complete, void *ring, void *r)
{
	struct io_kiocb *req = r;
	__u8 op = BPF_CORE_READ(req, opcode);
	struct io_open *o = r;
	struct open_how how = {};
	struct iou_pend *v;
	__u64 key = (__u64)r;
	struct file *f;
	long res;

	if (op == IORING_OP_RENAMEAT_)
		sens_epoch_bump();
	if (op == IORING_OP_RENAMEAT_ || op == IORING_OP_LINKAT_ || op == IORING_OP_UNLINKAT_)
		return iou_path_done(req);
	if (op != IORING_OP_OPENAT_ && op != IORING_OP_OPENAT2_)
		return 0;
	res = BPF_CORE_READ(req, cqe.res);
	v = bpf_map_lookup_elem(&iou_pending, &key);
	if (res < 0 || BPF_CORE_READ(o, file_slot) || !iou_own(req)) {
		if (v)
			bpf_map_delete_elem(&iou_pending, &key);
		return 0;   /* failed, a fixed slot (reported at submission), another's */
	}
	if (v) {
		/* the descriptor empty, or another file in it: closed (and reused) before
		 * this completion was posted; the open by its name */
		f = fd_file(res);
		if (!f || !iou_pend_match(v, f))
			file_submit((struct bastion_file_event *)v->rec);
		bpf_map_delete_elem(&iou_pending, &key);
	}
	BPF_CORE_READ_INTO(&how, o, how);
	if (cfg_open_reads || (how.flags & O_ACCMODE_) != O_RDONLY_ ||
	    (how.flags & (O_CREAT_ | O_TRUNC_))) {
		if (!wanted(BASTION_EV_FILE))
			return 0;
		return open_exit_report(res, how.flags, how.mode, BASTION_F_IOURING, false);
	}
	if (how.flags & O_PATH_)
		return 0;
	return sens_open_exit(res, BASTION_F_IOURING);
}
