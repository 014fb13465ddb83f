/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Record builders shared by both event sensors: tp_events.bpf.c (syscall
 * tracepoints, compat tier) and lsm_events.bpf.c (LSM-hook functions and
 * tp_btf on kernel objects, lsm tier).  Same records, one place each. */
#ifndef BASTION_EVENTS_H
#define BASTION_EVENTS_H

#include "sock.h"
#include "sensitive.h"
#include "exectx.h"
#include "prov.h"

/* exec: after the new binary is bound (tp_btf/sched_process_exec), the same
 * program in both sensors.  By this point exec_binprm() has swapped
 * bprm->file for the interpreter and dropped the script's struct file (only
 * binfmt_misc's open-binary flag keeps it, as bprm->executable), so the
 * script is named by what the kernel opened first: bprm->filename (or the
 * descriptor behind /dev/fd/N). */
/* The mount the agent's root directory is (its mnt_id; set at load).  An exec'ing
 * process whose absolute paths may name other files than the agent's do (a script's
 * argv[1], which the agent resolves in its own view) is flagged BASTION_F_ROOTED (s31):
 *  - its root is not the root of that mount (a chroot, e.g. into a directory of its own
 *    with an open descriptor of a genuine interpreter fexecve'd there: `unshare -Ur`
 *    gives any user CAP_SYS_CHROOT).  Mount and dentry, not (device, inode): every btrfs
 *    subvolume's root is inode 256 on one superblock (s31 review 2);
 *  - its root can still be changed by another process: its fs_struct shared by
 *    clone(CLONE_FS) with a process that is no thread of its (threads are gone by
 *    now), whose chroot after this record and before the interpreter opens argv[1]
 *    would move it (the kernel's LSM_UNSAFE_SHARE case, s31 review);
 *  - it runs under a seccomp filter it could have installed itself (no_new_privs set,
 *    or in a user namespace: the only ways without CAP_SYS_ADMIN in the initial one):
 *    a user-notification supervisor answers the interpreter's openat with a descriptor
 *    of its choosing, and an errno-0 rule makes the open of the script "return" fd 0,
 *    the user's stdin (s31 reviews 2 and 3).  Root's own filters (systemd's
 *    SystemCallFilter= without NoNewPrivileges=) do not flag.
 * 0: not set, every exec flagged. */
const volatile __u32 cfg_root_mnt_id = 0;

static __always_inline bool seccomp_by_user(struct task_struct *p)
{
	if (!BPF_CORE_READ(p, seccomp.filter))
		return false;
	return (BPF_CORE_READ(p, atomic_flags) & 1) /* PFA_NO_NEW_PRIVS */ ||
	       BPF_CORE_READ(p, cred, user_ns, level) != 0;
}

static __always_inline bool rooted_elsewhere(struct task_struct *p)
{
	struct fs_struct *fs = BPF_CORE_READ(p, fs);
	struct vfsmount *vm = BPF_CORE_READ(fs, root.mnt);
	struct mount *m = container_of(vm, struct mount, mnt);

	return !cfg_root_mnt_id || !fs || BPF_CORE_READ(fs, users) > 1 ||
	       (__u32)BPF_CORE_READ(m, mnt_id) != cfg_root_mnt_id ||
	       BPF_CORE_READ(fs, root.dentry) != BPF_CORE_READ(vm, mnt_root) ||
	       seccomp_by_user(p);
}

static __always_inline int emit_exec(struct task_struct *p, struct linux_binprm *bprm)
{
	struct bastion_exec_event *e;
	struct file *exe;
	struct mm_struct *mm;
	unsigned long arg_start, arg_end, len;
	struct path fpath;
	int fdn;

	bool exe_cut;

	if (!wanted(BASTION_EV_EXEC)) {
		prov_exec(p, bprm, NULL, false); /* provenance is kept for every process */
		return 0;
	}
	e = RESERVE(struct bastion_exec_event, BASTION_EV_EXEC);
	if (!e) {
		prov_exec(p, bprm, NULL, false);
		return 0;
	}
	exe = BPF_CORE_READ(bprm, file);
	e->exe_ino = BPF_CORE_READ(exe, f_inode, i_ino);
	e->exe_dev = BPF_CORE_READ(exe, f_inode, i_sb, s_dev);
	e->exe_nlink = BPF_CORE_READ(exe, f_inode, __i_nlink);
	if (e->exe_nlink == 0)
		e->hdr.flags |= BASTION_F_EXE_MEMFD;
	e->argc = BPF_CORE_READ(bprm, argc);
	fpath = BPF_CORE_READ(exe, f_path);
	exe_cut = path_to_str(&fpath, e->exe);
	if (exe_cut)
		e->hdr.flags |= BASTION_F_TRUNC_PATH;
	if (bpf_probe_read_kernel_str(e->filename, sizeof(e->filename),
				      BPF_CORE_READ(bprm, filename)) == sizeof(e->filename))
		e->hdr.flags |= BASTION_F_TRUNC_PATH;
	if (cwd_to_str(e->cwd))
		e->hdr.flags |= BASTION_F_TRUNC_PATH;

	/* ABI 1.4: exec context.  A script: binfmt_script/misc replaced bprm->interp
	 * (it was bprm->filename) with the interpreter; filename is the file the
	 * kernel opened first.  /dev/fd/N is a descriptor exec (AT_EMPTY_PATH,
	 * fexecve): resolve N, which is still open (a CLOEXEC one cannot run a
	 * script, and an ELF is bprm->file anyway). */
	e->script_ino = 0;
	e->script_dev = 0;
	e->script[0] = '\0';
	fdn = devfd_num(BPF_CORE_READ(bprm, filename));
	if (fdn >= 0)
		e->hdr.flags |= BASTION_F_EXEC_FD;
	if (BPF_CORE_READ(bprm, interp) != BPF_CORE_READ(bprm, filename)) {
		struct file *sf = fdn >= 0 ? fd_file(fdn) : NULL;

		e->hdr.flags |= BASTION_F_SCRIPT;
		if (sf) {
			e->script_ino = BPF_CORE_READ(sf, f_inode, i_ino);
			e->script_dev = BPF_CORE_READ(sf, f_inode, i_sb, s_dev);
			fpath = BPF_CORE_READ(sf, f_path);
			if (path_to_str(&fpath, e->script))
				e->hdr.flags |= BASTION_F_TRUNC_PATH;
		} else {
			__builtin_memcpy(e->script, e->filename, sizeof(e->script));
		}
	}
	fd_kind(0, &e->stdin_type, &e->stdin_ino);
	fd_kind(1, &e->stdout_type, &e->stdout_ino);
	e->mnt_ns = BPF_CORE_READ(p, nsproxy, mnt_ns, ns.inum);
	if (rooted_elsewhere(p))
		e->hdr.flags |= BASTION_F_ROOTED;

	mm = BPF_CORE_READ(p, mm);
	if (env_scan(mm, e->env, &e->env_len))
		e->hdr.flags |= BASTION_F_TRUNC_ENV;
	arg_start = BPF_CORE_READ(mm, arg_start);
	arg_end = BPF_CORE_READ(mm, arg_end);
	len = arg_end - arg_start;
	if (len > BASTION_ARGV_LEN) {
		len = BASTION_ARGV_LEN;
		e->hdr.flags |= BASTION_F_TRUNC_ARGV;
	}
	if (bpf_probe_read_user(e->argv, len, (const void *)arg_start))
		len = 0;
	e->argv_len = len;
	prov_exec(p, bprm, e->exe, exe_cut); /* the exe's path built once, for both */
	SUBMIT(e);
	return 0;
}

static __always_inline int emit_fork(struct task_struct *child)
{
	struct bastion_fork_event *e;
	__u32 pid = BPF_CORE_READ(child, pid), tgid = BPF_CORE_READ(child, tgid);

	if (pid != tgid || !wanted(BASTION_EV_FORK))
		return 0; /* a new thread, not a new process */
	e = RESERVE(struct bastion_fork_event, BASTION_EV_FORK);
	if (!e)
		return 0;
	e->child_pid = pid;
	e->child_tgid = tgid;
	e->child_start_ns = BPF_CORE_READ(child, start_boottime);
	SUBMIT(e);
	return 0;
}

#define SIGNAL_GROUP_EXIT_ 0x00000004

static __always_inline int emit_exit(struct task_struct *p)
{
	struct bastion_exit_event *e;
	struct signal_struct *sig = BPF_CORE_READ(p, signal);

	/* Only when the last thread of the process goes. */
	if (BPF_CORE_READ(sig, live.counter) != 0 || !wanted(BASTION_EV_EXIT))
		return 0;
	e = RESERVE(struct bastion_exit_event, BASTION_EV_EXIT);
	if (!e)
		return 0;
	if (BPF_CORE_READ(sig, flags) & SIGNAL_GROUP_EXIT_)
		e->exit_code = BPF_CORE_READ(sig, group_exit_code);
	else
		e->exit_code = BPF_CORE_READ(p, exit_code);
	SUBMIT(e);
	return 0;
}

/* ---- file records: variable-size (ABI 2.0) ---------------------------------------
 * A file record is built in a per-CPU scratch buffer: the fixed part, then its strings
 * appended in the order path, dir, path2, dir2 (file_put_*; a string left out has length
 * 0), then file_submit() copies exactly the bytes used onto the ring with
 * bpf_ringbuf_output (the same helper on 6.1 and 6.18; the size is known only after the
 * strings, so a dynptr reserve would still reserve the worst case).  Every offset and
 * the size are masked to the scratch buffer, so the verifier bounds them. */
#define FILE_SCRATCH_BYTES 2048   /* >= the fixed part + BASTION_FILE_STRS * BASTION_PATH_LEN */
#define FILE_OFF_MASK 1023        /* a string's offset in data: <= 3 * BASTION_FILE_STR_MAX */
#define FILE_STR_BITS BASTION_FILE_STR_MAX   /* 255: a length's bytes, as a mask */

_Static_assert(((BASTION_FILE_STR_MAX + 1) & BASTION_FILE_STR_MAX) == 0, "str max is 2^n - 1");
_Static_assert(BASTION_FILE_STRS * BASTION_FILE_STR_MAX <= FILE_OFF_MASK, "offsets fit the mask");
_Static_assert(sizeof(struct bastion_file_event) + FILE_OFF_MASK + BASTION_PATH_LEN
	       <= FILE_SCRATCH_BYTES, "a string written at any offset stays in the scratch");

struct file_scratch {
	char buf[FILE_SCRATCH_BYTES];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct file_scratch);
} file_scratch SEC(".maps");

/* A file record with every field neutral and no strings; NULL if the scratch is missing. */
static __always_inline struct bastion_file_event *file_event(__u32 op)
{
	__u32 zero = 0;
	struct file_scratch *s = bpf_map_lookup_elem(&file_scratch, &zero);
	struct bastion_file_event *e;

	if (!s)
		return NULL;
	e = (struct bastion_file_event *)s->buf;
	fill_hdr(&e->hdr, BASTION_EV_FILE, sizeof(*e));
	e->op = op;
	e->open_flags = 0;
	e->mode = 0;
	e->owner_uid = (__u32)-1;
	e->owner_gid = (__u32)-1;
	e->dev = 0;
	e->ino = 0;
	e->sens_class = 0;
	e->sens_id = 0;
	e->path_len = e->dir_len = e->path2_len = e->dir2_len = 0;
	e->ctime_ns = 0;
	return e;
}

/* FMODE_CREATED: include/linux/fs.h, 0x100000 from 4.19 through 6.18 (1 << 20 since the
 * fmode bits were renumbered; the same value) */
#define BASTION_FMODE_CREATED 0x100000

/* The inode's ctime before 6.6 (struct timespec64 i_ctime) and in 6.6-6.10 (__i_ctime);
 * from 6.11 i_ctime_sec + i_ctime_nsec (vmlinux.h here) */
struct inode___ctime_ts {
	struct timespec64 i_ctime;
} __attribute__((preserve_access_index));

struct inode___ctime_priv {
	struct timespec64 __i_ctime;
} __attribute__((preserve_access_index));

/* The inode's ctime in ns (ABI 3.0), whichever layout this kernel has (CO-RE). */
static __always_inline __u64 inode_ctime_ns(struct inode *inode)
{
	__s64 sec;
	__u64 nsec;

	if (bpf_core_field_exists(inode->i_ctime_sec)) {
		sec = BPF_CORE_READ(inode, i_ctime_sec);
		/* multigrain timestamps (6.13+) keep I_CTIME_QUERIED in bit 31 of the ns
		 * (inode_get_ctime_nsec masks it; seen here: stat's ctime + 2^31 ns) */
		nsec = BPF_CORE_READ(inode, i_ctime_nsec) & 0x7fffffffu;
	} else if (bpf_core_field_exists(((struct inode___ctime_priv *)inode)->__i_ctime)) {
		struct inode___ctime_priv *i = (void *)inode;

		sec = BPF_CORE_READ(i, __i_ctime.tv_sec);
		nsec = BPF_CORE_READ(i, __i_ctime.tv_nsec);
	} else {
		struct inode___ctime_ts *i = (void *)inode;

		sec = BPF_CORE_READ(i, i_ctime.tv_sec);
		nsec = BPF_CORE_READ(i, i_ctime.tv_nsec);
	}
	return (__u64)sec * 1000000000ULL + nsec;
}

/* The kernel's answer for an open record (ABI 2.10): did this open create the inode
 * (FMODE_CREATED in the file's f_mode), and did the inode hold no byte (i_size 0) when
 * read here; and (ABI 3.0) the inode's ctime then.  @fmode: the file's f_mode, @isize:
 * its inode's i_size, both read by the caller (a CO-RE probe read, or a BTF load in the
 * hook sensor). */
static __always_inline void file_open_state(struct bastion_file_event *e, __u32 fmode, __s64 isize,
					    struct inode *inode)
{
	__u16 f = BASTION_F_FSTATE | BASTION_F_CTIME;

	if (fmode & BASTION_FMODE_CREATED)
		f |= BASTION_F_CREATED;
	if (isize == 0)
		f |= BASTION_F_EMPTY;
	e->ctime_ns = inode_ctime_ns(inode);
	e->hdr.flags |= f;
}

/* Bytes of the strings appended so far. */
static __always_inline __u32 file_used(struct bastion_file_event *e)
{
	return (e->path_len & FILE_STR_BITS) + (e->dir_len & FILE_STR_BITS) +
	       (e->path2_len & FILE_STR_BITS) + (e->dir2_len & FILE_STR_BITS);
}

/* Where the next string goes: right after the ones appended (room for BASTION_PATH_LEN). */
static __always_inline char *file_next(struct bastion_file_event *e)
{
	return (char *)e + sizeof(*e) + (file_used(e) & FILE_OFF_MASK);
}

enum file_slot { FS_PATH, FS_DIR, FS_PATH2, FS_DIR2 };

/* Record the string a *_str helper just wrote at file_next(): @n is what it returned
 * (bytes written, NUL included; < 2: empty or failed), @cut a BASTION_FILE_CUT_* bit. */
static __always_inline void file_set(struct bastion_file_event *e, enum file_slot slot, long n,
				     __u16 cut)
{
	__u16 len = n > 1 ? ((__u16)(n - 1) & FILE_STR_BITS) : 0;

	if (cut) {
		len |= cut;
		e->hdr.flags |= BASTION_F_TRUNC_PATH;
	}
	if (slot == FS_PATH)
		e->path_len = len;
	else if (slot == FS_DIR)
		e->dir_len = len;
	else if (slot == FS_PATH2)
		e->path2_len = len;
	else
		e->dir2_len = len;
}

/* Append the absolute path of @p (walked up from its dentry: a cut keeps the end). */
static __always_inline void file_put_path(struct bastion_file_event *e, enum file_slot slot,
					  const struct path *p)
{
	long n;
	bool cut = path_to_str_n(p, file_next(e), &n);

	file_set(e, slot, n, cut ? BASTION_FILE_CUT_START : 0);
}

/* Append a kernel string that is never longer than a name (a dentry's d_name). */
static __always_inline void file_put_name(struct bastion_file_event *e, enum file_slot slot,
					  const unsigned char *name)
{
	file_set(e, slot, bpf_probe_read_kernel_str(file_next(e), BASTION_PATH_LEN, name), 0);
}

/* Append a path argument as the caller passed it (a user string: a cut keeps the
 * beginning; a string of exactly BASTION_FILE_STR_MAX bytes counts as cut). */
static __always_inline long file_put_user(struct bastion_file_event *e, enum file_slot slot,
					  const char *upath)
{
	long n = bpf_probe_read_user_str(file_next(e), BASTION_PATH_LEN, upath);

	file_set(e, slot, n, n == BASTION_PATH_LEN ? BASTION_FILE_CUT_END : 0);
	return n;
}

/* Append a name the kernel copied from the caller (io_uring's struct filename): as
 * file_put_user, from kernel memory (no user-memory TOCTOU). */
static __always_inline long file_put_kstr(struct bastion_file_event *e, enum file_slot slot,
					  const char *kname)
{
	long n = bpf_probe_read_kernel_str(file_next(e), BASTION_PATH_LEN, kname);

	file_set(e, slot, n, n == BASTION_PATH_LEN ? BASTION_FILE_CUT_END : 0);
	return n;
}

/* Put the record on its ring: exactly the bytes used (a drop counted against that
 * ring when it is full).  With a priority ring (common.h), a file of the sensitive
 * set and a remount go there; every other file record is bulk. */
static __always_inline void file_submit(struct bastion_file_event *e)
{
	__u32 size = sizeof(*e) + file_used(e);

	e->hdr.size = size;
#ifdef BASTION_PRIO_RING
	if (((e->hdr.flags & BASTION_F_SENSITIVE) || e->op == BASTION_FILE_MOUNT_SETATTR ||
	     e->op == BASTION_FILE_FSPICK) && prio_spend(BASTION_EV_FILE)) {
		if (bpf_ringbuf_output(&events_prio, e, size & (FILE_SCRATCH_BYTES - 1),
				       BPF_RB_NO_WAKEUP))
			count_drop_in(&prio_drops, BASTION_EV_FILE);
		return;
	}
#endif
	if (bpf_ringbuf_output(&events, e, size & (FILE_SCRATCH_BYTES - 1), BPF_RB_NO_WAKEUP))
		count_drop(BASTION_EV_FILE);
}

/* A ptrace record (both sensors: ptrace(2) and process_vm_readv/writev on compat, the
 * attach-mode access check and traceme on lsm). */
/* 1: the record was sent; 0: not wanted, or no room on the ring. */
static __always_inline int ptrace_record(__s64 request, __s32 target, __u64 addr)
{
	struct bastion_ptrace_event *e;

	if (!wanted(BASTION_EV_PTRACE))
		return 0;
	e = RESERVE(struct bastion_ptrace_event, BASTION_EV_PTRACE);
	if (!e)
		return 0;
	e->request = request;
	e->target_pid = target;
	e->_pad = 0;
	e->addr = addr;
	SUBMIT(e);
	return 1;
}

/* A network record with every field neutral. */
static __always_inline struct bastion_net_event *net_event(__u32 op)
{
	struct bastion_net_event *e = RESERVE(struct bastion_net_event, BASTION_EV_NET);

	if (!e)
		return NULL;
	e->op = op;
	e->ret = 0;
	e->family = 0;
	e->protocol = 0;
	e->sport = 0;
	e->dport = 0;
	e->backlog = 0;
	e->_pad = 0;
	__builtin_memset(e->saddr, 0, sizeof(e->saddr));
	__builtin_memset(e->daddr, 0, sizeof(e->daddr));
	return e;
}

/* A kill record of the lsm sensor (fentry/security_task_kill); the compat
 * sensor's is on_kill (tp_events.bpf.c: signal:signal_generate).  1: sent. */
static __always_inline int kill_ev(__u32 syscall, __s32 target, __s32 tgid, __s32 sig)
{
	struct bastion_kill_event *e;

	if (sig == 0 || !wanted(BASTION_EV_KILL))
		return 0; /* signal 0 only probes for existence */
	e = RESERVE(struct bastion_kill_event, BASTION_EV_KILL);
	if (!e)
		return 0;
	e->target_pid = target;
	e->target_tgid = tgid;
	e->sig = sig;
	e->syscall = syscall;
	e->code = 0;
	e->nr = -1;
	e->flags = 0;
	e->result = 0;
	SUBMIT(e);
	return 1;
}

/* bpf() commands worth seeing: creation, loading, attaching, pinning and
 * writes; lookups and id walks are left out. */
#define BPF_CMD_MASK ((1ULL << BPF_MAP_CREATE) | (1ULL << BPF_MAP_UPDATE_ELEM) |            \
		      (1ULL << BPF_MAP_DELETE_ELEM) | (1ULL << BPF_PROG_LOAD) |              \
		      (1ULL << BPF_OBJ_PIN) | (1ULL << BPF_PROG_ATTACH) |                    \
		      (1ULL << BPF_PROG_DETACH) | (1ULL << BPF_RAW_TRACEPOINT_OPEN) |        \
		      (1ULL << BPF_BTF_LOAD) | (1ULL << BPF_MAP_FREEZE) |                    \
		      (1ULL << BPF_LINK_CREATE) | (1ULL << BPF_LINK_UPDATE) |                \
		      (1ULL << BPF_LINK_DETACH))

static __always_inline bool bpf_cmd_wanted(int cmd)
{
	return cmd >= 0 && cmd < 64 && (BPF_CMD_MASK & (1ULL << cmd)) && wanted(BASTION_EV_BPF);
}

/* A bpf() record from a union bpf_attr read by @rd (bpf_probe_read_user for
 * the syscall's argument, bpf_probe_read_kernel for the kernel's own copy). */
#define FILL_BPF_EVENT(e, cmd, attr, rd)                                                  \
	do {                                                                              \
		(e)->cmd = (cmd);                                                         \
		(e)->prog_type = 0;                                                       \
		(e)->map_type = 0;                                                        \
		(e)->attach_type = 0;                                                     \
		__builtin_memset((e)->name, 0, sizeof((e)->name));                        \
		/* union bpf_attr is uapi: its offsets are stable, no CO-RE needed */     \
		if ((cmd) == BPF_PROG_LOAD) {                                             \
			rd(&(e)->prog_type, 4, &(attr)->prog_type);                       \
			rd(&(e)->attach_type, 4, &(attr)->expected_attach_type);          \
			rd((e)->name, sizeof((e)->name), &(attr)->prog_name);             \
		} else if ((cmd) == BPF_MAP_CREATE) {                                     \
			rd(&(e)->map_type, 4, &(attr)->map_type);                         \
			rd((e)->name, sizeof((e)->name), &(attr)->map_name);              \
		} else if ((cmd) == BPF_LINK_CREATE) {                                    \
			rd(&(e)->attach_type, 4, &(attr)->link_create.attach_type);       \
		} else if ((cmd) == BPF_PROG_ATTACH || (cmd) == BPF_PROG_DETACH) {        \
			rd(&(e)->attach_type, 4, &(attr)->attach_type);                   \
		}                                                                         \
		(e)->name[15] = '\0';                                                     \
	} while (0)

static __always_inline int cred_ev(__u32 op, __u32 a0, __u32 a1, __u32 a2)
{
	struct bastion_cred_event *e;

	if (!wanted(BASTION_EV_CRED))
		return 0;
	e = RESERVE(struct bastion_cred_event, BASTION_EV_CRED);
	if (!e)
		return 0;
	e->op = op;
	e->a0 = a0;
	e->a1 = a1;
	e->a2 = a2;
	e->cap_effective = 0;
	e->cap_permitted = 0;
	SUBMIT(e);
	return 0;
}

#endif /* BASTION_EVENTS_H */
