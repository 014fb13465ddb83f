/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * bastion.h — THE kernel/user contract of Bastion.
 *
 * Every record the BPF programs put on the ring buffer, every map key and
 * value that user space reads or writes, and every enum they share is
 * defined here and nowhere else.  src/bastion/abi.py mirrors it with ctypes;
 * tests/unit/test_abi.py checks the mirror against the BTF of the compiled
 * objects (sizes and member offsets), so the two cannot drift apart.
 *
 * Rules for change (after falcosecurity/libs' event table):
 *  - adding an event type, or a field at the END of a struct: bump
 *    BASTION_ABI_VERSION's minor part (user space of the same major decodes
 *    the prefix it knows);
 *  - a padding field given a meaning whose 0 says "not recorded" (what every
 *    object before it wrote there): a minor, as exec's mnt_ns in 3.5;
 *  - changing or removing a field, or an enum value: bump the major part.
 *  User space refuses an object whose major differs from its own.
 *  A variable-size record (the file record since 2.0: strings after its fixed
 *  part, its size exact) cannot gain fixed fields in a minor: that is a major.
 *
 * Plain C types only (__u8.. __u64): this header is included both by BPF
 * programs (after vmlinux.h) and by nothing else in C; the Python mirror is
 * the only other reader.
 */
#ifndef BASTION_H
#define BASTION_H

#define BASTION_ABI_MAJOR 3
#define BASTION_ABI_MINOR 5
#define BASTION_ABI_VERSION ((BASTION_ABI_MAJOR << 16) | BASTION_ABI_MINOR)

#define BASTION_COMM_LEN 16
#define BASTION_PATH_LEN 256   /* resolved paths; longer ones are cut, flag set */
#define BASTION_ARGV_LEN 512   /* NUL-separated argv, bounded */
#define BASTION_NAME_LEN 64
#define BASTION_ENV_LEN 512    /* exec: the loader/interpreter variables found, NUL-separated (ABI 1.4) */
/* ABI 2.0: a file record carries its strings at their real length (at most this many
 * bytes each, no NUL; a longer one is cut to it and BASTION_F_TRUNC_PATH is set) */
#define BASTION_FILE_STR_MAX (BASTION_PATH_LEN - 1)
#define BASTION_FILE_STRS 4    /* path, dir, path2, dir2: the order of bastion_file_event.data */
/* a file record's *_len: the string's bytes in the low bits, and where it was cut */
#define BASTION_FILE_LEN_MASK 0x0fff
#define BASTION_FILE_CUT_END   0x8000  /* the end was cut: the string is the beginning (a name as passed) */
#define BASTION_FILE_CUT_START 0x4000  /* the beginning was cut: the string is the end (a path walked
					* up from the file: its last components) */

/* Ring buffer size (bytes, power of two, multiple of the page size). */
#define BASTION_RINGBUF_BYTES (16 * 1024 * 1024)
/* The sensors' priority ring (ABI 3.2, bpf/lib/common.h): its default size. */
#define BASTION_PRIO_RINGBUF_BYTES (4 * 1024 * 1024)

/* The per-CPU "drops" counter of every object with a ring: slot 0 counts every
 * failed reserve, slot BASTION_EV_<type> (1 .. BASTION_EV_MAX - 1) the records of
 * that type, slot BASTION_DROP_SLOT_TAMPER the tamper records (issue 14.1). */
#define BASTION_DROP_SLOTS 16
#define BASTION_DROP_SLOT_TAMPER 15

enum bastion_event_type {
	BASTION_EV_EXEC = 1,
	BASTION_EV_FORK = 2,
	BASTION_EV_EXIT = 3,
	BASTION_EV_FILE = 4,     /* op in bastion_file_op */
	BASTION_EV_NET = 5,      /* op in bastion_net_op */
	BASTION_EV_PTRACE = 6,
	BASTION_EV_KILL = 7,
	BASTION_EV_BPF = 8,
	BASTION_EV_MEMFD = 9,
	BASTION_EV_CRED = 10,    /* op in bastion_cred_op */
	BASTION_EV_LSM_DENY = 11,
	BASTION_EV_HIPS = 12,    /* a HIPS decision: deny, kill or audit */
	BASTION_EV_MMAP = 13,    /* executable memory: struct bastion_mmap_event (ABI 2.1, end of file) */
	BASTION_EV_MAX = 14,
};

/* The record types that go to a sensor's priority ring (ABI 3.2; bpf/lib/common.h):
 * what an attacker's payload must do (exec, connect/bind/listen/accept, ptrace,
 * signals, bpf(2), memfd, credential changes, executable memory, denials, HIPS
 * decisions, tamper records), not what a flood is made of (fork, exit, file
 * records: those go to the bulk ring, except a file record of the sensitive set
 * (BASTION_F_SENSITIVE) and a remount (MOUNT_SETATTR, FSPICK), which are
 * priority too). */
/* bits 1 exec, 5 net, 6 ptrace, 7 kill, 8 bpf, 9 memfd, 10 cred, 11 lsm_deny, 12 hips, 13 mmap */
#define BASTION_EV_PRIO_MASK 0x3fe2ULL
_Static_assert(BASTION_EV_PRIO_MASK ==
	       ((1ULL << BASTION_EV_EXEC) | (1ULL << BASTION_EV_NET) | (1ULL << BASTION_EV_PTRACE) |
		(1ULL << BASTION_EV_KILL) | (1ULL << BASTION_EV_BPF) | (1ULL << BASTION_EV_MEMFD) |
		(1ULL << BASTION_EV_CRED) | (1ULL << BASTION_EV_LSM_DENY) | (1ULL << BASTION_EV_HIPS) |
		(1ULL << BASTION_EV_MMAP)), "BASTION_EV_PRIO_MASK: the priority record types");

enum bastion_file_op {
	BASTION_FILE_OPEN = 1,   /* open with write, create or truncate intent */
	BASTION_FILE_UNLINK = 2,
	BASTION_FILE_RENAME = 3,
	BASTION_FILE_CHMOD = 4,
	BASTION_FILE_CHOWN = 5,
	BASTION_FILE_LINK = 6,   /* a hard link: path = the file, path2 = the new name */
	BASTION_FILE_TRUNCATE = 7, /* compat: truncate(2) (path as passed), ftruncate(2) of an
				    * untrusted tree's descriptor (path, dev, ino of its file)
				    * that shrinks it (length < i_size at entry) */
	BASTION_FILE_MOUNT_SETATTR = 8, /* mount_setattr(2) that succeeded, in the host's
					 * mount namespace: path (+ dir) the mount, mode =
					 * attr_set, open_flags = its flags (AT_RECURSIVE); the
					 * path and attr_set read from user memory at exit */
	BASTION_FILE_FSPICK = 9, /* fspick(2) that succeeded, in the host's mount namespace
				  * (a superblock picked to reconfigure): path (+ dir),
				  * open_flags = its flags */
	BASTION_FILE_REWRITE = 10, /* compat (ABI 2.9, s17-logacts): an untrusted tree's act
				    * that rewrites a file in place past O_APPEND (fanotify
				    * refuses none of them): path, dev, ino of the descriptor's
				    * file (mprotect: the mapping's file), mode = enum
				    * bastion_rewrite_act, open_flags = the act's argument
				    * (fcntl: the new flags; fallocate: its mode; pwritev2:
				    * the RWF_* flags; mmap, mprotect: prot).  A file in the
				    * sensitive set's HISTORY class (F_SENSITIVE, sens_class,
				    * sens_id): the kernel sent SIGKILL to the actor at entry */
	BASTION_FILE_UTIMES = 11, /* ABI 3.2 (s23): a chosen time set on a file (utimensat,
				   * futimens, utimes, futimesat, utime with explicit times;
				   * never "now"): mode = BASTION_UTIMES_* bits, ctime_ns = the
				   * modification time being set (s * 1e9 + ns) when
				   * BASTION_UTIMES_MTIME.  compat: at syscall entry, the times
				   * read from user memory; lsm: fentry on vfs_utimes, the
				   * kernel's copy.  Only records with an explicit mtime cross */
};

/* bastion_file_event.mode of BASTION_FILE_UTIMES */
#define BASTION_UTIMES_ATIME (1u << 0) /* the access time is set to a chosen value */
#define BASTION_UTIMES_MTIME (1u << 1) /* the modification time is set to a chosen value */

/* bastion_ptrace_event.request values that are no ptrace(2) request (ABI 3.2, s23):
 * another process's memory read or written without ptrace (compat; the lsm tier
 * reports these accesses as PTRACE_ATTACH from ptrace_access_check) */
#define BASTION_PTRACE_VM_READV (-1)  /* process_vm_readv(2) of target_pid */
#define BASTION_PTRACE_VM_WRITEV (-2) /* process_vm_writev(2) of target_pid */

enum bastion_rewrite_act {
	BASTION_REWRITE_SETFL = 1,      /* fcntl(F_SETFL) clearing O_APPEND of a file opened with it */
	BASTION_REWRITE_FALLOCATE = 2,  /* fallocate of any mode but KEEP_SIZE / UNSHARE_RANGE */
	BASTION_REWRITE_NOAPPEND = 3,   /* pwritev2(RWF_NOAPPEND) */
	BASTION_REWRITE_MMAP = 4,       /* mmap(PROT_WRITE, MAP_SHARED) of a file opened for writing */
	BASTION_REWRITE_MPROTECT = 5,   /* mprotect adding PROT_WRITE to a shared writable-capable file mapping */
	BASTION_REWRITE_MPROTECT_UNKNOWN = 6, /* mprotect(PROT_WRITE) over areas not looked at (no file):
					       * bpf_find_vma failed or the range has more areas than walked */
};

enum bastion_net_op {
	BASTION_NET_CONNECT = 1,
	BASTION_NET_BIND = 2,
	BASTION_NET_LISTEN = 3,
	BASTION_NET_ACCEPT = 4,
};

enum bastion_cred_op {
	BASTION_CRED_SETUID = 1,
	BASTION_CRED_SETGID = 2,
	BASTION_CRED_SETREUID = 3,
	BASTION_CRED_SETREGID = 4,
	BASTION_CRED_SETRESUID = 5,
	BASTION_CRED_SETRESGID = 6,
	BASTION_CRED_CAPSET = 7,
};

enum bastion_kill_syscall {
	BASTION_KILL_KILL = 1,
	BASTION_KILL_TKILL = 2,
	BASTION_KILL_TGKILL = 3,
	BASTION_KILL_PIDFD = 4,
	/* ABI 2.7 (s16-sig: the record comes from signal:signal_generate) */
	BASTION_KILL_RT_SIGQUEUEINFO = 5,
	BASTION_KILL_RT_TGSIGQUEUEINFO = 6,
	BASTION_KILL_OTHER = 7,     /* SI_USER/SI_TKILL from another syscall: cgroup.kill, a pdeath signal */
};

/* Bits of bastion_kill_event.flags (ABI 2.7) */
#define BASTION_KILL_F_IA32 (1u << 0)  /* sent by an ia32 syscall (int $0x80, sysenter) */
#define BASTION_KILL_F_X32  (1u << 1)  /* sent by an x32 syscall */

/* Bits of bastion_event_hdr.flags */
#define BASTION_F_TRUNC_PATH  (1u << 0)  /* a path field was cut */
#define BASTION_F_TRUNC_ARGV  (1u << 1)  /* argv was cut */
#define BASTION_F_EXE_MEMFD   (1u << 2)  /* executable has no link (memfd, deleted) */
#define BASTION_F_RELATIVE    (1u << 3)  /* path is relative to dir */
#define BASTION_F_RELATIVE2   (1u << 4)  /* path2 is relative to dir2 */
/* ABI 1.4 (issue 15: visibility) */
#define BASTION_F_SENSITIVE   (1u << 5)  /* FILE: the opened inode is in the sensitive set (sens_class) */
#define BASTION_F_SCRIPT      (1u << 6)  /* EXEC: an interpreted file (#!, binfmt_misc): script is set */
#define BASTION_F_EXEC_FD     (1u << 7)  /* EXEC: executed through a descriptor (execveat AT_EMPTY_PATH, fexecve) */
#define BASTION_F_TRUNC_ENV   (1u << 8)  /* EXEC: the environment scan stopped before its end */
/* ABI 2.10 (issue 15, s18-created): the kernel's own answer to "did this open make the
 * file's content?", read from the struct file of the open (compat: at the syscall's exit;
 * lsm: in security_file_open, which do_open reaches after lookup_open/atomic_open set
 * FMODE_CREATED).  F_CREATED and F_EMPTY mean something only with F_FSTATE: a FILE OPEN
 * record without F_FSTATE (an object before 2.10, or no file to read) says nothing
 * either way. */
#define BASTION_F_CREATED     (1u << 9)  /* FILE OPEN: this open created the inode (FMODE_CREATED) */
#define BASTION_F_EMPTY       (1u << 10) /* FILE OPEN: the inode held no byte (i_size 0): compat at the
					  * syscall's exit (after O_TRUNC), lsm at the hook (before it) */
#define BASTION_F_FSTATE      (1u << 11) /* FILE OPEN: F_CREATED and F_EMPTY were read from the file */
/* ABI 3.0 (s21, the clock-step gap): the inode's ctime at the open, so that user space
 * tells a file not changed since the open by comparing ctimes with ctimes, never with
 * the wall clock (root steps it).  Read where F_FSTATE is (compat: the syscall's exit,
 * after an O_TRUNC; lsm: the hook, before it). */
#define BASTION_F_CTIME       (1u << 12) /* FILE OPEN: ctime_ns is the inode's ctime at the open */
/* ABI 3.1 (s22-uring, issue 15.3): a record of an io_uring request, seen by the compat
 * sensor at the io_uring tracepoints (bpf/tp_events.bpf.c), not at a syscall; the header
 * names the process (an io-wq worker's or the SQPOLL thread's comm is replaced by the
 * process leader's).  F_IOURING_NOFD: an io_uring open whose file the sensor could not
 * take (a fixed-file slot, or a completion skipped with IOSQE_CQE_SKIP_SUCCESS): reported
 * at submission, path (and dir, when relative) the kernel's copy of the name as passed;
 * no inode, no F_FSTATE, and it may have failed.  The same record, built at submission,
 * is sent at an open's completion when its descriptor is already closed or holds a file
 * of another name (closed, or reused, within the batch: s22 review H5). */
#define BASTION_F_IOURING     (1u << 13) /* FILE, NET: from an io_uring request */
#define BASTION_F_IOURING_NOFD (1u << 14) /* FILE OPEN (with F_IOURING): no file; the name as passed */
#define BASTION_F_ROOTED      (1u << 15) /* EXEC (ABI 3.5): the process's root directory is not the
					    agent's (cfg_root_mnt_id: a chroot), can be changed by
					    another process (a shared fs_struct), or a seccomp
					    supervisor answers its calls: its absolute paths may name
					    other files than the agent's do (lib/events.h).  The last
					    free bit of hdr.flags: the next flag is a major change */

/* Common header of every ring-buffer record. */
struct bastion_event_hdr {
	__u16 type;          /* enum bastion_event_type */
	__u16 flags;         /* BASTION_F_* */
	__u32 size;          /* size of the whole record, header included */
	__u64 ts_ns;         /* CLOCK_BOOTTIME, ns */
	__u32 pid;           /* thread id */
	__u32 tgid;          /* process id */
	__u32 ppid;          /* tgid of real_parent */
	__u32 uid;
	__u32 euid;
	__u32 gid;
	__u64 cgroup_id;     /* cgroup v2 id */
	__u64 start_ns;      /* process (group leader) start, boottime ns: pid+start is a unique identity */
	char comm[BASTION_COMM_LEN];
};

struct bastion_exec_event {
	struct bastion_event_hdr hdr;
	__u64 exe_ino;
	__u32 exe_dev;       /* kernel dev_t (major << 20 | minor) */
	__u32 argc;
	__u32 argv_len;      /* bytes used in argv */
	__u32 exe_nlink;
	char exe[BASTION_PATH_LEN];      /* resolved path of the executed file */
	char filename[BASTION_PATH_LEN]; /* path as passed to execve (script for #!) */
	char cwd[BASTION_PATH_LEN];
	char argv[BASTION_ARGV_LEN];
	/* ABI 1.4: exec context read in the kernel at exec */
	__u64 script_ino;    /* F_SCRIPT and run through a descriptor: that file's inode, else 0 */
	__u32 script_dev;
	__u32 env_len;       /* bytes used in env */
	__u64 stdin_ino;     /* inode of fd 0 / fd 1 (pipe:[ino], socket:[ino]); 0 = closed */
	__u64 stdout_ino;
	__u16 stdin_type;    /* S_IFMT >> 12 of fd 0: 1 fifo, 2 chr, 4 dir, 8 reg, 12 sock; 0 closed */
	__u16 stdout_type;
	__u32 mnt_ns;        /* ABI 3.5: inode of the mount namespace the process execs in (the
			        one its argv's paths name files in); 0 before 3.5 */
	char script[BASTION_PATH_LEN];   /* F_SCRIPT: the script the kernel ran (filename, or the
					    descriptor's file for /dev/fd/N); may be relative to cwd */
	char env[BASTION_ENV_LEN];       /* NUL-separated NAME=value of the watched variables
					    (loader and interpreter injection), each cut at 255 bytes */
};

struct bastion_fork_event {
	struct bastion_event_hdr hdr;  /* the parent */
	__u32 child_pid;
	__u32 child_tgid;
	__u64 child_start_ns;
};

struct bastion_exit_event {
	struct bastion_event_hdr hdr;
	__s32 exit_code;     /* wait(2) status: (code << 8) | signal */
	__u32 _pad;
};

/* A file record is variable-size (ABI 2.0; 1,128 bytes each before): the fixed part,
 * then its four strings back to back in data[], in the order path, dir, path2, dir2,
 * each exactly *_len bytes (no NUL; 0 = absent; at most BASTION_FILE_STR_MAX).
 * hdr.size = sizeof(struct bastion_file_event) + the four lengths: the ring record's
 * own length.  User space refuses a record whose lengths disagree with its size. */
struct bastion_file_event {
	struct bastion_event_hdr hdr;
	__u32 op;            /* enum bastion_file_op */
	__s32 open_flags;    /* O_* for OPEN */
	__u32 mode;          /* OPEN create mode, CHMOD mode */
	__u32 owner_uid;     /* CHOWN; (u32)-1 = unchanged */
	__u32 owner_gid;
	__u32 dev;           /* OPEN: inode's device */
	__u64 ino;           /* OPEN: inode number */
	__u32 sens_class;    /* OPEN of an inode in the sensitive set (F_SENSITIVE): enum
				bastion_sens_class, 0 = not sensitive */
	__u32 sens_id;       /* the entry of the set that matched (the file or an ancestor dir) */
	__u16 path_len;      /* target (RENAME: old); each *_len: bytes | BASTION_FILE_CUT_* */
	__u16 dir_len;       /* base of a relative path */
	__u16 path2_len;     /* RENAME, LINK: new */
	__u16 dir2_len;
	__u64 ctime_ns;      /* ABI 3.0, OPEN with F_CTIME: the inode's ctime (s * 1e9 + ns) */
	char data[0];        /* path, dir, path2, dir2 (a zero-length array, not a flexible one:
				the struct sits inside struct bastion_abi_types) */
};

struct bastion_net_event {
	struct bastion_event_hdr hdr;
	__u32 op;            /* enum bastion_net_op */
	__s32 ret;           /* ACCEPT: new fd; others 0 */
	__u16 family;        /* AF_INET, AF_INET6, AF_UNIX, ... */
	__u16 protocol;      /* IPPROTO_* where known, else 0 */
	__u16 sport;         /* host byte order */
	__u16 dport;         /* host byte order */
	__u8 saddr[16];      /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__u32 backlog;       /* LISTEN */
	__u32 _pad;
};

struct bastion_ptrace_event {
	struct bastion_event_hdr hdr;
	__s64 request;
	__s32 target_pid;
	__u32 _pad;
	__u64 addr;
};

struct bastion_kill_event {
	struct bastion_event_hdr hdr;
	__s32 target_pid;    /* process-directed: the target's tgid; thread-directed (tkill,
	                      * tgkill, rt_tgsigqueueinfo): its tid (initial pid ns) */
	__s32 target_tgid;   /* the target's tgid (ABI 2.7: always; before, tgkill's only) */
	__s32 sig;
	__u32 syscall;       /* enum bastion_kill_syscall */
	/* ABI 2.7: one record per process reached, from signal:signal_generate */
	__s32 code;          /* si_code: SI_USER 0, SI_QUEUE -1, SI_TKILL -6, a caller's < 0 */
	__s32 nr;            /* the sender's syscall number (orig_ax; -1 none) */
	__u32 flags;         /* BASTION_KILL_F_* */
	__u32 result;        /* the kernel's TRACE_SIGNAL_*: 0 delivered, 1 ignored, 2 pending, ... */
};

struct bastion_bpf_event {
	struct bastion_event_hdr hdr;
	__s32 cmd;           /* BPF_* command */
	__u32 prog_type;     /* PROG_LOAD */
	__u32 map_type;      /* MAP_CREATE */
	__u32 attach_type;   /* PROG_LOAD expected_attach_type, LINK_CREATE attach_type */
	char name[16];       /* prog_name / map_name from the attr */
};

struct bastion_memfd_event {
	struct bastion_event_hdr hdr;
	__u32 flags;
	__u32 _pad;
	char name[BASTION_NAME_LEN];
};

struct bastion_cred_event {
	struct bastion_event_hdr hdr;
	__u32 op;            /* enum bastion_cred_op */
	__u32 a0;            /* setuid: uid; setre*: r; setres*: r */
	__u32 a1;            /* setre*: e; setres*: e */
	__u32 a2;            /* setres*: s */
	__u64 cap_effective; /* CAPSET: requested sets (first 32-bit words) */
	__u64 cap_permitted;
};

/* Classes of the sensitive read set (sens_inodes values; ABI 1.4). */
enum bastion_sens_class {
	BASTION_SENS_CREDENTIALS = 1,  /* shadow, gshadow, opasswd, keytabs, sssd cache */
	BASTION_SENS_AUTH_CONFIG = 2,  /* sudoers, sudoers.d */
	BASTION_SENS_HOST_KEY = 3,     /* ssh host private keys */
	BASTION_SENS_USER_KEYS = 4,    /* ~/.ssh, ~/.gnupg */
	BASTION_SENS_CLOUD = 5,        /* ~/.aws, ~/.config/gcloud, ~/.kube, ~/.docker/config.json, ~/.azure */
	BASTION_SENS_BROWSER = 6,      /* browser credential and cookie stores */
	BASTION_SENS_HISTORY = 7,      /* shell and tool histories, .netrc, .pgpass, .git-credentials */
	BASTION_SENS_PROC_MEM = 8,     /* /proc/<pid>/mem or environ of another process (by name, not map) */
	BASTION_SENS_CUSTOM = 9,       /* named by the policy */
};

/* Value of sens_inodes (key struct bastion_inode_key): an inode, or a
 * directory whose subtree (up to BASTION_SENS_DEPTH levels below) is sensitive. */
struct bastion_sens_val {
	__u32 sens_class;    /* enum bastion_sens_class */
	__u32 sens_id;       /* 1-based index of the entry in user space's table */
};
#define BASTION_SENS_DEPTH 4
#define BASTION_SENS_MAX 4096

/* LSM-tier hooks that can deny. */
enum bastion_lsm_hook {
	BASTION_HOOK_FILE_OPEN = 1,
	BASTION_HOOK_BPRM_CHECK = 2,
	BASTION_HOOK_BPF_PROG_LOAD = 3,  /* lsm_bpfguard: a BPF program load refused (ABI 1.3) */
};

struct bastion_lsm_deny_event {
	struct bastion_event_hdr hdr;
	__u32 hook;          /* enum bastion_lsm_hook */
	__s32 ret;           /* what the hook returned (-EPERM) */
	__u64 ino;
	__u32 dev;
	__u32 rule_id;
	char path[BASTION_PATH_LEN];
};

/* ---- maps shared with user space ---- */

/* Key of inode-keyed maps (LSM deny sets). */
struct bastion_inode_key {
	__u64 ino;
	__u32 dev;
	__u32 _pad;
};

/* Value of inode-keyed deny maps. */
struct bastion_inode_rule {
	__u32 rule_id;
	__u32 action;        /* 1 = deny */
};

/* ---- provenance (issue 15; ABI 2.2; task-local storage since ABI 2.5;
 * bpf/lib/prov.h, bpf/lib/prov_map.h) ----
 * Map `prov`: task-local storage (BPF_MAP_TYPE_TASK_STORAGE) of the
 * thread-group leader -> bastion_prov_val, the untrusted-provenance reasons
 * of a live process; user space keys it with a pidfd of the process.  No
 * capacity; freed with the task (no pid is ever met twice).  Set in the kernel
 * at exec (a binary or a script under a directory of `prov_dirs`, a memfd or
 * unlinked executable), copied to the child at every fork (and into a new
 * thread's own storage: what it takes along if it execs); user space ORs in
 * the reasons only it knows
 * (network-binary/-script, network-service, decoded-payload, the admin
 * session bit).  start_ns is the group leader's start_boottime: user space
 * writes only over an entry of the same start.  No entry = no untrusted
 * provenance.
 * Map `prov_dirs`: LPM trie of path prefixes (bastion_prov_prefix): the
 * temp dirs the policy names, each as "/tmp/" and "/tmp\0" (the dir itself).
 * Map `prov_dir_inodes`: bastion_inode_key of the same dirs -> __u32: an
 * executable's (or a descriptor script's) dentry chain is walked up to them,
 * so a path too long to name still counts.
 * Map `prov_interp`: bastion_inode_key of a shell or interpreter ->
 * bastion_prov_interp: its first non-option argument is the script it runs. */
#define BASTION_PROV_TMP_BINARY      (1u << 0)
#define BASTION_PROV_TMP_SCRIPT      (1u << 1)
#define BASTION_PROV_FILELESS        (1u << 2)
#define BASTION_PROV_NETWORK_BINARY  (1u << 3)
#define BASTION_PROV_NETWORK_SCRIPT  (1u << 4)
#define BASTION_PROV_NETWORK_SERVICE (1u << 5)
#define BASTION_PROV_DECODED_PAYLOAD (1u << 6)
#define BASTION_PROV_LOCAL_MASK      (BASTION_PROV_TMP_BINARY | BASTION_PROV_TMP_SCRIPT)
/* an administrator's interactive session (set by user space on the login
 * shell, inherited): the LOCAL_MASK reasons are alerted, not refused */
#define BASTION_PROV_ADMIN_TTY       (1u << 31)
/* never in the map: user space's name for a process whose entry the kernel could
 * not create (no memory; map `prov_lost`, bpf/lib/prov_map.h); the gate refuses it
 * like any untrusted reason */
#define BASTION_PROV_UNTRACKED       (1u << 30)
#define BASTION_PROV_PREFIX_LEN 64   /* bytes of a prov_dirs prefix */
#define BASTION_PROV_LOST_MAX 4096   /* processes whose `prov` entry could not be made */

struct bastion_prov_val {
	__u64 start_ns;      /* group leader's start_boottime (ns) */
	__u32 reasons;       /* BASTION_PROV_* */
	__u32 origin_tgid;   /* the process that gained the first reason */
};

struct bastion_prov_prefix {
	__u32 prefixlen;     /* bits (LPM trie key) */
	char path[BASTION_PROV_PREFIX_LEN];
};

struct bastion_prov_interp {
	__u64 code_letters;  /* bit (c - 'a') / (26 + c - 'A'): an option letter meaning "code follows, no script" */
};

/* ---- the provenance gate in the hook (issue 15, lsm tier; ABI 2.3;
 * bpf/lsm_provgate.bpf.c) ----
 * The must-stop objects of src/bastion/enforce/muststop.py, by class:
 * Map `pgate_objs`: bastion_inode_key of a file (flags 0) or of a directory
 *   whose children are must-stop (BASTION_PGATE_F_DIR; every subdirectory is
 *   an entry of its own) -> bastion_pgate_obj.
 * Map `pgate_names`: (directory inode, name) -> bastion_pgate_obj: a
 *   must-stop name that may not exist yet (/etc/ld.so.preload, a profile in a
 *   home directory): creating, linking or renaming to it is refused too.
 * Map `pgate_tools`: tgid -> bastion_pgate_tool: a security tool (auditd,
 *   syslog, journald, the agent, its guardian) a tainted tree may not signal.
 * Map `pgate_anc`: bastion_inode_key of a directory above an object (every
 *   ancestor up to /, and the directory of a must-stop name) ->
 *   bastion_pgate_obj (the strictest class below it): a tainted tree may not
 *   rename it (`mv /etc/systemd /etc/s.old`, then recreate) nor mount on it.
 * Map `pgate_cfg` (array, 1): bastion_pgate_cfg: the classes in dry run
 *   (decided and reported as would-deny, allowed), and the host's mount
 *   namespace (mounts and unmounts are judged there only).
 * Refusals and dry-run/admin decisions are bastion_hips_event records,
 * mechanism BASTION_MECH_LSM_PROV, rule_id = the class, subject = the
 * actor's provenance reasons. */
enum bastion_pgate_class {
	BASTION_PGATE_PERSISTENCE = 1, /* write, create, link, rename, unlink, truncate, chmod */
	BASTION_PGATE_CREDENTIAL = 2,  /* any open, and every name change */
	BASTION_PGATE_LOG = 3,         /* write open with O_TRUNC, truncate, unlink, rename, chmod */
	BASTION_PGATE_SECURITY_TOOL = 4, /* a harmful signal to the process */
	BASTION_PGATE_SECURITY_CONFIG = 5, /* s23: firewall and logging configs: as persistence */
	BASTION_PGATE_FIREWALL = 6,      /* s23: a netfilter change (nftables batch, *_SO_SET_*); s24: ipset, null routes */
};

/* How a must-stop act was tried when the op alone does not say it (s15:
 * bastion_hips_event.detail of an lsm-prov record). */
enum bastion_pgate_how {
	BASTION_PGATE_HOW_FCNTL = 1,      /* fcntl(F_SETFL) clearing O_APPEND on a log */
	BASTION_PGATE_HOW_MMAP = 2,       /* a shared writable mapping (mmap, mprotect) */
	BASTION_PGATE_HOW_IOCTL = 3,      /* FS_IOC_SETFLAGS / FS_IOC_FSSETXATTR (chattr) */
	BASTION_PGATE_HOW_FALLOCATE = 4,  /* fallocate (punch hole, collapse range) */
	BASTION_PGATE_HOW_NOAPPEND = 5,   /* pwritev2(RWF_NOAPPEND), an io_uring write */
	BASTION_PGATE_HOW_ANCESTOR = 6,   /* renaming a directory above an object */
	BASTION_PGATE_HOW_MOUNT = 7,      /* a mount on, a move of or an unmount of an object or an ancestor */
	BASTION_PGATE_HOW_NFT_BATCH = 8,  /* s23: a NETLINK_NETFILTER batch (nftables ruleset change) */
	BASTION_PGATE_HOW_SOCKOPT = 9,    /* s23: setsockopt IPT/IP6T/ARPT_SO_SET_*, EBT_SO_SET_* (legacy tables) */
	BASTION_PGATE_HOW_NFNL_WRITE = 10, /* s24: an ipset change (netfilter netlink, no batch) */
	BASTION_PGATE_HOW_ROUTE = 11,     /* s24: a blackhole/unreachable/prohibit route or rule; s25: a local route, the default route added, replaced or deleted, a nexthop object */
	BASTION_PGATE_HOW_ROUTE_IOCTL = 12, /* s25: SIOCADDRT / SIOCDELRT (the legacy route ioctls) */
	BASTION_PGATE_HOW_NETDEV = 13,    /* s26: any other rtnetlink change (a link, an address, a neighbour, traffic control, a namespace id...), an xfrm (IPsec) change */
	BASTION_PGATE_HOW_NETDEV_IOCTL = 14, /* s26: a legacy interface, address, ARP, bridge or bonding ioctl (SIOCSIFFLAGS...) */
};

#define BASTION_PGATE_F_DIR (1u << 0)   /* a directory: its children are objects */
#define BASTION_PGATE_NAME_LEN 32

struct bastion_pgate_obj {
	__u32 cls;           /* enum bastion_pgate_class */
	__u32 flags;         /* BASTION_PGATE_F_* */
};

struct bastion_pgate_name {
	__u64 ino;           /* the directory */
	__u32 dev;
	__u32 _pad;
	char name[BASTION_PGATE_NAME_LEN];
};

struct bastion_pgate_tool {
	__u64 start_ticks;   /* group leader's start_boottime in USER_HZ ticks (/proc/PID/stat): a reused pid is no tool */
	__u32 cls;           /* BASTION_PGATE_SECURITY_TOOL */
	__u32 _pad;
};

struct bastion_pgate_cfg {
	__u32 dry_run;       /* bit (1 << class): decided, reported, allowed */
	__u32 host_mnt_ns;   /* the host's mount namespace (/proc/1/ns/mnt's inode): mounts
	                      * are refused there only; 0 = unknown (everywhere) */
};


/* ==================================================================== */
/* HIPS: per-program policy compiled into maps (src/bastion/policy/).   */
/*                                                                      */
/* Decision for (task, op, object), identical in the kernel and in the  */
/* Python reference matcher (policy/match.py):                          */
/*   gen     = hips_state[0].active_gen                                 */
/*   subjects = every hit of hips_subjects[(gen, kind, a, b)] for kind  */
/*             EXE (exe inode), PARENT_EXE (parent's exe inode), UID,   */
/*             CGROUP (four lookups, in that order)                     */
/*   rule(s) = first hips_rules[(gen, s, op, o)] for o in (object       */
/*             inode, its ancestor directories (up to 16), ANY (0, 0))  */
/*   decision = the strictest rule(s) over the subjects (action value:  */
/*             kill > deny > audit > allow; a tie: the earlier subject);*/
/*             none: rule(0) (everyone); none: hips_gens[gen].default   */
/* Network ops use hips_net (LPM trie on gen|subject|op|port|addr),     */
/* port first exact then 0 (any), the same subject procedure.           */
/* A policy swap writes generation N+1 completely, flips active_gen in  */
/* one map update, then deletes generation N: at every instant exactly  */
/* one complete policy holds.                                           */
/* The agent is exempt by identity: hips_exempt, key __u32 tgid ->      */
/* bastion_tamper_ident (start ticks + exe inode; role unused), written */
/* by the agent that loads or adopts the pins (it removes the dead one):*/
/* a process reusing a dead agent's pid is not exempt.                  */
/* ==================================================================== */

enum bastion_hips_op {
	BASTION_OP_EXEC = 1,
	BASTION_OP_OPEN_READ = 2,
	BASTION_OP_OPEN_WRITE = 3,
	BASTION_OP_CREATE = 4,
	BASTION_OP_UNLINK = 5,
	BASTION_OP_RENAME = 6,
	BASTION_OP_CHMOD = 7,
	BASTION_OP_CONNECT = 8,
	BASTION_OP_BIND = 9,
	BASTION_OP_PTRACE = 10,
	BASTION_OP_SIGNAL = 11,
	BASTION_OP_MAX = 12,
};

enum bastion_hips_action {
	BASTION_ACT_ALLOW = 1,
	BASTION_ACT_AUDIT = 2,   /* allow and report */
	BASTION_ACT_DENY = 3,    /* refuse (EPERM) */
	BASTION_ACT_KILL = 4,    /* refuse and SIGKILL the caller */
};

enum bastion_hips_mode {
	BASTION_MODE_AUDIT = 1,   /* deny/kill decisions are reported, not enforced */
	BASTION_MODE_ENFORCE = 2,
};

enum bastion_subject_kind {
	BASTION_SUBJ_EXE = 1,        /* a = ino, b = dev of the task's executable */
	BASTION_SUBJ_PARENT_EXE = 2, /* a = ino, b = dev of the parent's executable */
	BASTION_SUBJ_UID = 3,        /* a = uid */
	BASTION_SUBJ_CGROUP = 4,     /* a = cgroup v2 id */
};

/* Where a decision was enforced (bastion_hips_event.mechanism). */
enum bastion_mechanism {
	BASTION_MECH_LSM = 1,        /* an LSM hook returned -EPERM */
	BASTION_MECH_EXEC_KILL = 2,  /* SIGKILL at sched_process_exec (compat) */
	BASTION_MECH_CGROUP_SOCK = 3,/* cgroup connect/bind program (compat) */
	BASTION_MECH_FANOTIFY = 4,   /* fanotify permission answer (compat, user space) */
	BASTION_MECH_LSM_PROV = 5,   /* the provenance gate's LSM hook (lsm_provgate.bpf.c) */
	BASTION_MECH_CONNECT_KILL = 6,/* SIGKILL at sys_exit_connect (svcgate_compat.bpf.c) */
	BASTION_MECH_PIPE_KILL = 7,  /* SIGKILL at sched_process_exec (pipegate.bpf.c; ABI 3.2) */
};

/* ---- the decoded-payload pipe gate (issue 15; ABI 3.2; bpf/pipegate.bpf.c) ----
 * Map `pipegate_progs`: bastion_inode_key of an installed decoder or shell ->
 *   enum bastion_pipegate_kind (src/bastion/enforce/pipegate.py).
 * Map `pipegate_letters`: bastion_inode_key of an interpreter -> __u64, its option
 *   letters meaning "code follows" (bastion_prov_interp.code_letters' bits).
 * Its records are bastion_hips_event: op EXEC, action KILL, mechanism
 * BASTION_MECH_PIPE_KILL, rule_id = enum bastion_pipegate_rule (which end was
 * killed), subject = the killed program's kind (0: a relay), ino/dev = the
 * pipe (or fifo) the killed process would have read or written, target_pid =
 * the other end's tgid (the decoder or the shell; 0 unknown), detail = the
 * relays between the decoder and the shell, path = the killed executable. */
enum bastion_pipegate_kind {
	BASTION_PGK_SHELL = 1,     /* sh, dash, bash, zsh, ksh, mksh, fish...: reads commands from stdin */
	BASTION_PGK_BASE64 = 2,    /* base64, base32, basenc: -d, --decode (bundled: -di) */
	BASTION_PGK_XXD = 3,       /* xxd: -r (-r..., --r...) */
	BASTION_PGK_OPENSSL = 4,   /* openssl: an argument "-d" (base64 -d, enc -d, -a -d) */
	BASTION_PGK_UUDECODE = 5,  /* uudecode: always */
	BASTION_PGK_INTERP = 6,    /* python3, perl, ruby, node, php: reads its program from stdin
	                            * with no script operand and none of its code letters
	                            * (map `pipegate_letters`) */
};

enum bastion_pipegate_rule {
	BASTION_PGR_DECODER = 1,   /* a decoder into a pipe a stdin shell already reads */
	BASTION_PGR_SHELL = 2,     /* a stdin shell on a pipe a decoder writes */
	BASTION_PGR_RELAY = 3,     /* a process from a decoder's pipe into a stdin shell's pipe */
};

#define BASTION_HIPS_F_DIR_OBJECTS (1u << 0) /* walk ancestor directories */
/* hips_stats is indexed op * 8 + action; op 0 is no op: its row counts the lsm
 * tier's open-verdict cache (a miss: the full search, a store).  A hit, an
 * allow served from the cache, is counted in its op's row at action slot
 * BASTION_HIPS_STAT_VC_HIT_ACT (one counter per hit: user space adds it to the
 * op's allows). */
#define BASTION_HIPS_STAT_VC_HIT_ACT 7
#define BASTION_HIPS_STAT_VC_MISS 2
#define BASTION_HIPS_STAT_VC_STORE 3

struct bastion_hips_state {
	__u32 active_gen;    /* 0 = no policy: everything allowed */
	__u32 _pad;
	/* ABI 2.11 (s18-hipsopen): the policy epoch, written in the same update as
	 * active_gen by every apply() and clear(), one more each time, never reset
	 * (the generation number is: clear() makes it 0, the next apply() 1 again).
	 * lsm_hips's open-verdict cache keys on (epoch, active_gen). */
	__u64 epoch;
};

struct bastion_hips_gen {
	__u32 mode;          /* enum bastion_hips_mode */
	__u32 default_action;/* enum bastion_hips_action */
	__u32 flags;         /* BASTION_HIPS_F_* */
	__u32 _pad;
};

struct bastion_subject_key {
	__u32 gen;
	__u32 kind;          /* enum bastion_subject_kind */
	__u64 a;
	__u64 b;
};

struct bastion_rule_key {
	__u32 gen;
	__u32 subject;       /* 0 = everyone */
	__u32 op;            /* enum bastion_hips_op */
	__u32 dev;           /* object inode's device, 0 with ino 0 = any object */
	__u64 ino;
};

struct bastion_rule_val {
	__u32 action;        /* enum bastion_hips_action */
	__u32 rule_id;       /* index into the plan's rule table (1-based) */
};

/* LPM trie key: prefixlen counts bits from gen onwards (128 + address bits). */
struct bastion_net_key {
	__u32 prefixlen;
	__u32 gen;
	__u32 subject;
	__u32 op;
	__u32 port;          /* host order; 0 = any port */
	__u8 addr[16];       /* IPv6, or IPv4-mapped (::ffff:a.b.c.d) */
};

/* Per-process subject facts for hooks that cannot read the task (cgroup
 * socket programs): kept by exec/fork/exit tracepoints, keyed by tgid. */
struct bastion_task_subject {
	__u64 exe_ino;
	__u64 parent_exe_ino;
	__u32 exe_dev;
	__u32 parent_exe_dev;
	__u64 start_ns;
};

struct bastion_hips_event {
	struct bastion_event_hdr hdr;
	__u32 op;            /* enum bastion_hips_op */
	__u32 action;        /* enum bastion_hips_action decided */
	__u32 rule_id;       /* 0 = the default action */
	__u32 subject;
	__u32 mechanism;     /* enum bastion_mechanism */
	__s32 ret;           /* what the caller got: -EPERM, or 0 when only audited */
	__u32 gen;
	__u32 enforced;      /* 1 = refused/killed, 0 = audit only */
	__u64 ino;
	__u32 dev;
	__u16 family;
	__u16 port;
	__u8 addr[16];
	__s32 target_pid;    /* ptrace/signal */
	__u32 detail;        /* lsm-prov: enum bastion_pgate_how (0 = the op itself);
			      * connect-kill: the tree's origin tgid (0 = unknown) */
	char path[BASTION_PATH_LEN];
};

#ifdef __bpf__
_Static_assert(sizeof(struct bastion_event_hdr) == 72, "hdr");
_Static_assert(sizeof(struct bastion_exec_event) == 72 + 24 + 3 * 256 + 512 + 40 + 256 + 512, "exec");
_Static_assert(sizeof(struct bastion_fork_event) == 72 + 16, "fork");
_Static_assert(sizeof(struct bastion_exit_event) == 72 + 8, "exit");
_Static_assert(sizeof(struct bastion_file_event) == 72 + 56, "file");
_Static_assert(sizeof(struct bastion_sens_val) == 8, "sens_val");
_Static_assert(sizeof(struct bastion_net_event) == 72 + 56, "net");
_Static_assert(sizeof(struct bastion_ptrace_event) == 72 + 24, "ptrace");
_Static_assert(sizeof(struct bastion_kill_event) == 72 + 32, "kill");
_Static_assert(sizeof(struct bastion_bpf_event) == 72 + 32, "bpf");
_Static_assert(sizeof(struct bastion_memfd_event) == 72 + 72, "memfd");
_Static_assert(sizeof(struct bastion_cred_event) == 72 + 32, "cred");
_Static_assert(sizeof(struct bastion_lsm_deny_event) == 72 + 24 + 256, "lsm_deny");
_Static_assert(sizeof(struct bastion_inode_key) == 16, "inode_key");
_Static_assert(sizeof(struct bastion_inode_rule) == 8, "inode_rule");
_Static_assert(sizeof(struct bastion_hips_state) == 16, "hips_state");
_Static_assert(sizeof(struct bastion_hips_gen) == 16, "hips_gen");
_Static_assert(sizeof(struct bastion_subject_key) == 24, "subject_key");
_Static_assert(sizeof(struct bastion_rule_key) == 24, "rule_key");
_Static_assert(sizeof(struct bastion_rule_val) == 8, "rule_val");
_Static_assert(sizeof(struct bastion_net_key) == 36, "net_key");
_Static_assert(sizeof(struct bastion_task_subject) == 32, "task_subject");
_Static_assert(sizeof(struct bastion_hips_event) == 72 + 72 + 256, "hips_event");
_Static_assert(sizeof(struct bastion_prov_val) == 16, "prov_val");
_Static_assert(sizeof(struct bastion_prov_prefix) == 4 + 64, "prov_prefix");
_Static_assert(sizeof(struct bastion_prov_interp) == 8, "prov_interp");
_Static_assert(sizeof(struct bastion_pgate_obj) == 8, "pgate_obj");
_Static_assert(sizeof(struct bastion_pgate_name) == 16 + 32, "pgate_name");
_Static_assert(sizeof(struct bastion_pgate_tool) == 16, "pgate_tool");
_Static_assert(sizeof(struct bastion_pgate_cfg) == 8, "pgate_cfg");
#endif

/* ==================================================================== */
/* Behaviour responses: quarantine (bpf/quarantine.bpf.c compat,        */
/* bpf/lsm_quarantine.bpf.c lsm).  Map `quarantined`: key __u32 tgid,   */
/* value below.  Fork copies the mark to the child; exit removes it.    */
/* Enforcement is reported as a bastion_hips_event with rule_id = the   */
/* incident, mechanism EXEC_KILL (compat) or LSM, op EXEC/OPEN_WRITE/   */
/* CONNECT.  (Added in ABI 1.2.)                                        */
/* ==================================================================== */

struct bastion_quarantine_val {
	__u64 start_ns;      /* the process's start (boottime ns; /proc tick resolution ok); 0 = any */
	__u32 incident;      /* the incident that quarantined it */
	__u32 flags;         /* reserved, 0 */
};

#ifdef __bpf__
_Static_assert(sizeof(struct bastion_quarantine_val) == 16, "quarantine_val");
#endif

/* ==================================================================== */
/* Tamper protection (bpf/lsm_tamper.bpf.c lsm, bpf/tamper_compat.bpf.c */
/* compat; user space: src/bastion/guard/).  Self-contained section:    */
/* its own record type (outside enum bastion_event_type, on its own     */
/* ring), maps and anchor.  (Added in ABI 1.2, tamper part.)            */
/*                                                                      */
/* Maps:                                                                */
/*  tamper_idents  key __u32 tgid -> bastion_tamper_ident: the agent    */
/*                 and its guardian.  A task matches only when tgid,    */
/*                 start (USER_HZ ticks, as /proc/PID/stat field 22)    */
/*                 and exe inode all match: a reused pid is not exempt  */
/*                 nor protected.                                       */
/*  tamper_objs    key bastion_inode_key -> bastion_tamper_obj          */
/*  tamper_sbs     key __u32 s_dev -> __u32: no umount of these fs      */
/*  tamper_tids    key __u32 thread id -> __u32 tgid: the non-leader    */
/*                 threads of the tgids in tamper_idents (compat: a     */
/*                 thread id names its process in ptrace, prlimit,      */
/*                 /proc/TID/mem).  Kept by the kernel (task_newtask,   */
/*                 sched_process_exit), seeded by user space.           */
/*  tamper_map_ids / tamper_link_ids  key __u32 id -> __u32: our BPF    */
/*                 maps (no update/delete/freeze) and links (no detach/ */
/*                 update) by kernel id.                                */
/*  Maps created by ours, from their creation (written by the programs, */
/*  LRU 4096, value the creator's tgid; read beside tamper_map_ids):    */
/*  tamper_born_maps  (lsm) key __u64 struct bpf_map address, set at    */
/*                 bpf_map_alloc_security/bpf_map_create, out at free   */
/*  tamper_born_ids   (compat) key __u32 map id, set at sys_exit_bpf of */
/*                 the creator's BPF_MAP_CREATE                         */
/* ==================================================================== */

enum bastion_tamper_record {
	BASTION_EV_TAMPER = 64,   /* hdr.type of bastion_tamper_event */
};

enum bastion_tamper_op {
	BASTION_TAMPER_SIGNAL = 1,      /* arg = signal */
	BASTION_TAMPER_PTRACE = 2,      /* arg = ptrace mode (lsm) / request (compat) */
	BASTION_TAMPER_OPEN_WRITE = 3,
	BASTION_TAMPER_TRUNCATE = 4,
	BASTION_TAMPER_CREATE = 5,
	BASTION_TAMPER_UNLINK = 6,
	BASTION_TAMPER_RENAME = 7,
	BASTION_TAMPER_LINK = 8,
	BASTION_TAMPER_SETATTR = 9,
	BASTION_TAMPER_SETXATTR = 10,
	BASTION_TAMPER_MOUNT = 11,
	BASTION_TAMPER_UMOUNT = 12,
	BASTION_TAMPER_BPF_MAP = 13,    /* arg = bpf cmd, obj_id = map id */
	BASTION_TAMPER_BPF_LINK = 14,   /* arg = bpf cmd, obj_id = link id */
	BASTION_TAMPER_PROC_MEM = 15,   /* compat: open of /proc/PID/mem */
	BASTION_TAMPER_VM_WRITE = 16,   /* compat: process_vm_writev */
	BASTION_TAMPER_PRLIMIT = 17,    /* arg = resource (lsm: task_setrlimit; compat: prlimit64) */
	BASTION_TAMPER_SIGIO = 18,      /* arg = signal (lsm: file_send_sigiotask) / fcntl cmd (compat) */
	BASTION_TAMPER_PIDFD_GETFD = 19, /* compat: pidfd_getfd of ours (lsm: ptrace_access_check) */
	BASTION_TAMPER_CGROUP_MOVE = 20, /* both tiers: ours moved to another cgroup (mover killed) */
	BASTION_TAMPER_BPF_MAP_FD = 21, /* lsm: a write-mode fd of a protected map (bpf_map hook:
					 * GET_FD_BY_ID, OBJ_GET of a pin); arg = fmode, obj_id = map id */
	BASTION_TAMPER_EXE_IDENTITY = 22, /* ABI 3.3: prctl(PR_SET_MM, PR_SET_MM_EXE_FILE or
					   * PR_SET_MM_MAP), a process changing the executable
					   * every exe-keyed check reads (mm->exe_file);
					   * arg = the PR_SET_MM sub-option, plus
					   * BASTION_EXE_ID_CHANGED (compat) when the caller
					   * was killed after its identity changed (none:
					   * refused, or killed before the change) */
};

#define BASTION_EXE_ID_CHANGED 0x100

enum bastion_tamper_verdict {
	BASTION_TV_DENIED = 1,   /* the hook returned -EPERM (lsm) */
	BASTION_TV_KILLED = 2,   /* compat: the operation ran, the sender was SIGKILLed */
};

enum bastion_tamper_role {
	BASTION_ROLE_AGENT = 1,
	BASTION_ROLE_GUARDIAN = 2,
};

#define BASTION_TOBJ_SELF     (1u << 0)  /* this inode */
#define BASTION_TOBJ_SUBTREE  (1u << 1)  /* this directory and everything under it */
#define BASTION_TOBJ_ANCESTOR (1u << 2)  /* holds a protected path: no rename/rmdir/mount over it */

struct bastion_tamper_ident {
	__u64 start_ticks;   /* group leader's start_boottime / (NSEC_PER_SEC / USER_HZ) */
	__u64 exe_ino;
	__u32 exe_dev;       /* kernel dev_t */
	__u32 role;          /* enum bastion_tamper_role */
};

struct bastion_tamper_obj {
	__u32 flags;         /* BASTION_TOBJ_* */
	__u32 id;            /* index in user space's protected set (1-based) */
};

struct bastion_tamper_event {
	struct bastion_event_hdr hdr;   /* the attacker */
	__u32 op;            /* enum bastion_tamper_op */
	__u32 verdict;       /* enum bastion_tamper_verdict */
	__s32 ret;           /* what the caller got (-EPERM), 0 when it ran */
	__s32 target_pid;    /* signal/ptrace target tgid */
	__s64 arg;
	__u64 ino;
	__u32 dev;
	__u32 obj_id;
	char exe[BASTION_PATH_LEN];     /* the attacker's executable */
	char path[BASTION_PATH_LEN];    /* the object (relative to its fs root for dentry-only hooks) */
};

#ifdef __bpf__
_Static_assert(sizeof(struct bastion_tamper_ident) == 24, "tamper_ident");
_Static_assert(sizeof(struct bastion_tamper_obj) == 8, "tamper_obj");
_Static_assert(sizeof(struct bastion_tamper_event) == 72 + 40 + 2 * 256, "tamper_event");

/* BTF anchor of this section (tests/unit/test_abi.py reads it from the tamper objects). */
struct bastion_tamper_types {
	struct bastion_tamper_ident ident;
	struct bastion_tamper_obj obj;
	struct bastion_tamper_event event;
	enum bastion_tamper_record record;
	enum bastion_tamper_op op;
	enum bastion_tamper_verdict verdict;
	enum bastion_tamper_role role;
};
const volatile struct bastion_tamper_types bastion_tamper_types_anchor __attribute__((unused));
#endif

/* ==================================================================== */
/* Executable memory (ABI 2.1): an mmap or mprotect that makes memory    */
/* executable where code does not normally come from: anonymous memory, */
/* memory writable and executable at once, a region that was writable   */
/* (W->X flip), a file in a shared temp directory (sticky and world-     */
/* writable: /tmp, /var/tmp, /dev/shm) or a file without a link (memfd,  */
/* deleted).  Exec mappings of ordinary installed files (ld.so loading   */
/* libraries) never cross the ring.  Hook sensor: security_mmap_file,    */
/* security_file_mprotect; tracepoint sensor: sys_enter_mmap/mprotect.   */
/* One record per (process, op, reasons, file) within the dedup window.  */
/* Record type BASTION_EV_MMAP.                                          */
/* ==================================================================== */

enum bastion_mmap_op {
	BASTION_MMAP_MMAP = 1,
	BASTION_MMAP_MPROTECT = 2,
};

/* Bits of bastion_mmap_event.why: what made the mapping worth a record. */
#define BASTION_XM_ANON     (1u << 0)  /* anonymous memory (no file) */
#define BASTION_XM_WRITE    (1u << 1)  /* writable and executable at once (PROT_WRITE|PROT_EXEC) */
#define BASTION_XM_W2X      (1u << 2)  /* mprotect: the region was writable until now (W->X flip) */
#define BASTION_XM_TMPFILE  (1u << 3)  /* a file in a sticky world-writable directory */
#define BASTION_XM_NOLINK   (1u << 4)  /* a file without a link: a memfd or a deleted file */

#define BASTION_PROT_EXEC 0x4

struct bastion_mmap_event {
	struct bastion_event_hdr hdr;
	__u32 op;            /* enum bastion_mmap_op */
	__u32 why;           /* BASTION_XM_* */
	__u32 prot;          /* PROT_* asked for */
	__u32 flags;         /* MMAP: MAP_* flags; MPROTECT: the region's vm_flags (low 32 bits) */
	__u64 addr;          /* MPROTECT: the region's start (hooks) or the argument; MMAP: the hint or 0 */
	__u64 len;           /* MPROTECT: the region's length (hooks) or the argument; MMAP: length (tracepoints) or 0 */
	__u64 ino;           /* the mapped file's inode, 0 for anonymous memory */
	__u32 dev;
	__u32 _pad;
	char path[BASTION_PATH_LEN];  /* the mapped file (memfd:NAME for a memfd) */
};

#ifdef __bpf__
_Static_assert(sizeof(struct bastion_mmap_event) == 72 + 48 + 256, "mmap_event");
#endif

/* ==================================================================== */
/* Open context (ABI 3.4, the compat fanotify listener, s29): threads   */
/* whose saved registers may not describe the file open a fanotify      */
/* permission event stands for.  /proc/TID/syscall shows the system     */
/* call a thread is in; io_uring runs queued opens as task work in the  */
/* submitting thread on its way back from a blocked openat (registers   */
/* still that openat's), an io_uring or vhost worker starts with a copy */
/* of its creator's registers, and a core dump opens its file from the  */
/* signal path.  openctx.bpf.o sets the bit of each such thread (by tid;*/
/* all bits are set at load, a new thread's is cleared as it is made)   */
/* in an mmapable bitmap the listener reads without a system call; a    */
/* thread whose bit is clear is in its own open.  A stacked filesystem  */
/* opening its lower file with flags of its own inside the caller's     */
/* open (eCryptfs) is counted per registered backing device.            */
/* ==================================================================== */

/* Words of the tid bitmap: PID_MAX_LIMIT (4M) / 64. */
#define BASTION_OPENCTX_WORDS 65536

/* The one entry of the counts map (mmapable; user space reads it in place). */
struct bastion_openctx_counts {
	__u64 nested_bdis;   /* eCryptfs backing devices registered since load (a sysfs */
			     /* scan of /sys/class/bdi tells which still exist) */
	__u64 marked;        /* bits set since load, by every program */
};

#endif /* BASTION_H */
