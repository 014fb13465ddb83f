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
 *  - changing or removing a field, or an enum value: bump the major part.
 *  User space refuses an object whose major differs from its own.
 *
 * Plain C types only (__u8.. __u64): this header is included both by BPF
 * programs (after vmlinux.h) and by nothing else in C; the Python mirror is
 * the only other reader.
 */
#ifndef BASTION_H
#define BASTION_H

#define BASTION_ABI_MAJOR 1
#define BASTION_ABI_MINOR 0
#define BASTION_ABI_VERSION ((BASTION_ABI_MAJOR << 16) | BASTION_ABI_MINOR)

#define BASTION_COMM_LEN 16
#define BASTION_PATH_LEN 256   /* resolved paths; longer ones are cut, flag set */
#define BASTION_ARGV_LEN 512   /* NUL-separated argv, bounded */
#define BASTION_NAME_LEN 64

/* Ring buffer size (bytes, power of two, multiple of the page size). */
#define BASTION_RINGBUF_BYTES (16 * 1024 * 1024)

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
	BASTION_EV_MAX = 12,
};

enum bastion_file_op {
	BASTION_FILE_OPEN = 1,   /* open with write, create or truncate intent */
	BASTION_FILE_UNLINK = 2,
	BASTION_FILE_RENAME = 3,
	BASTION_FILE_CHMOD = 4,
	BASTION_FILE_CHOWN = 5,
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
};

/* Bits of bastion_event_hdr.flags */
#define BASTION_F_TRUNC_PATH  (1u << 0)  /* a path field was cut */
#define BASTION_F_TRUNC_ARGV  (1u << 1)  /* argv was cut */
#define BASTION_F_EXE_MEMFD   (1u << 2)  /* executable has no link (memfd, deleted) */
#define BASTION_F_RELATIVE    (1u << 3)  /* path is relative to dir */
#define BASTION_F_RELATIVE2   (1u << 4)  /* path2 is relative to dir2 */

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

struct bastion_file_event {
	struct bastion_event_hdr hdr;
	__u32 op;            /* enum bastion_file_op */
	__s32 open_flags;    /* O_* for OPEN */
	__u32 mode;          /* OPEN create mode, CHMOD mode */
	__u32 owner_uid;     /* CHOWN; (u32)-1 = unchanged */
	__u32 owner_gid;
	__u32 dev;           /* OPEN: inode's device */
	__u64 ino;           /* OPEN: inode number */
	char path[BASTION_PATH_LEN];   /* target (RENAME: old) */
	char dir[BASTION_PATH_LEN];    /* base of a relative path */
	char path2[BASTION_PATH_LEN];  /* RENAME: new */
	char dir2[BASTION_PATH_LEN];
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
	__s32 target_pid;    /* kill/pidfd: tgid target; tkill/tgkill: tid */
	__s32 target_tgid;   /* tgkill: tgid; otherwise 0 */
	__s32 sig;
	__u32 syscall;       /* enum bastion_kill_syscall */
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

/* LSM-tier hooks that can deny. */
enum bastion_lsm_hook {
	BASTION_HOOK_FILE_OPEN = 1,
	BASTION_HOOK_BPRM_CHECK = 2,
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

#ifdef __bpf__
_Static_assert(sizeof(struct bastion_event_hdr) == 72, "hdr");
_Static_assert(sizeof(struct bastion_exec_event) == 72 + 24 + 3 * 256 + 512, "exec");
_Static_assert(sizeof(struct bastion_fork_event) == 72 + 16, "fork");
_Static_assert(sizeof(struct bastion_exit_event) == 72 + 8, "exit");
_Static_assert(sizeof(struct bastion_file_event) == 72 + 32 + 4 * 256, "file");
_Static_assert(sizeof(struct bastion_net_event) == 72 + 56, "net");
_Static_assert(sizeof(struct bastion_ptrace_event) == 72 + 24, "ptrace");
_Static_assert(sizeof(struct bastion_kill_event) == 72 + 16, "kill");
_Static_assert(sizeof(struct bastion_bpf_event) == 72 + 32, "bpf");
_Static_assert(sizeof(struct bastion_memfd_event) == 72 + 72, "memfd");
_Static_assert(sizeof(struct bastion_cred_event) == 72 + 32, "cred");
_Static_assert(sizeof(struct bastion_lsm_deny_event) == 72 + 24 + 256, "lsm_deny");
_Static_assert(sizeof(struct bastion_inode_key) == 16, "inode_key");
_Static_assert(sizeof(struct bastion_inode_rule) == 8, "inode_rule");
#endif

#endif /* BASTION_H */
