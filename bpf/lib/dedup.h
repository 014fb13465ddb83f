/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Repeat records filtered in the kernel (issue 16.2), shared by both event
 * sensors: an open of the same inode with the same access, or a connect
 * (accept) to (from) the same address and port, by the same process image
 * (tgid + leader start time: a reused tgid is another process; + the thread's
 * self_exec_id: after an exec the same pid runs another program, whose acts
 * the rules judge afresh, s30) within the window is counted and not sent.  The first one always crosses the ring, so every rule
 * still sees that the process did it; what is lost is the count of repeats
 * within one window (no rule counts them: port scans count distinct
 * addresses and ports, which are distinct keys).  Windows are .rodata
 * (0 = off); the check runs after every cheaper filter and before the ring
 * reserve and the path walk it saves. */
#ifndef BASTION_DEDUP_H
#define BASTION_DEDUP_H

#include "common.h"
#include "events.h" /* BASTION_FMODE_CREATED */

const volatile __u64 cfg_open_dedup_ns = 0;
const volatile __u64 cfg_net_dedup_ns = 0;

#define DEDUP_OPEN_READ 1
#define DEDUP_OPEN_WRITE 2
#define DEDUP_NET 16 /* + the BASTION_NET_* op */

struct dedup_key {
	__u32 tgid;
	__u32 kind;
	__u64 start_ns;
	__u64 a;   /* open: inode number; net: address bytes 0-7 */
	__u64 b;   /* open: device;       net: address bytes 8-15 */
	__u32 c;   /* open: write flags;  net: family << 16 | port */
	__u32 d;   /* open: the inode's i_generation */
	__u64 e;   /* open: the struct inode's address */
	__u64 exec_id; /* the thread's self_exec_id: one more at every exec */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct dedup_key);
	__type(value, __u64);
} dedup_seen SEC(".maps");

/* Records not sent because one like them was within the window, per CPU
 * (user space sums them). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} open_deduped SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} net_deduped SEC(".maps");

/* true: a record with key @k (tgid, start and exec id filled here) was sent
 * less than @window ns ago; counted in @counter.  Else the key is stamped now
 * (the ptrace and signal stamps are taken back when the record could not be
 * sent: ptrace_once, kill_unstamp). */
static __always_inline bool dedup_hit_in(void *map, struct dedup_key *k, __u64 window,
					 void *counter)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 now, *last;
	__u32 zero = 0;

	k->tgid = bpf_get_current_pid_tgid() >> 32;
	k->start_ns = BPF_CORE_READ(task, group_leader, start_boottime);
	k->exec_id = BPF_CORE_READ(task, self_exec_id);
	now = bpf_ktime_get_boot_ns();
	last = bpf_map_lookup_elem(map, k);
	if (last && now - *last < window) {
		__u64 *n = bpf_map_lookup_elem(counter, &zero);

		if (n)
			__sync_fetch_and_add(n, 1);
		return true;
	}
	bpf_map_update_elem(map, k, &now, BPF_ANY);
	return false;
}

static __always_inline bool dedup_hit(struct dedup_key *k, __u64 window, void *counter)
{
	return dedup_hit_in(&dedup_seen, k, window, counter);
}

/* The open flags that tell one write-open from another for the rules (s18 review: the
 * key was (process, inode, access) only, so ``open(O_WRONLY|O_APPEND)`` then
 * ``open(O_WRONLY)`` of one file within the window sent the first, which secure
 * deletion and log clearing ignore, and hid the overwrite). */
#define DEDUP_OPEN_FLAGS (00000100 | 00000200 | 00001000 | 00002000) /* CREAT EXCL TRUNC APPEND */

/* An open like this one (same process, file, access, and for a write the flags above)
 * was reported within the window.
 *
 * The file is the inode instance, not its number (s19 review): ext4 hands an inode
 * number an unlink freed to the next file created at once (3 of 3 times on the dev
 * host), so ``: > .x; rm .x; echo KEY > authorized_keys2`` from one shell (same
 * flags, same device and number) sent the first open and hid the second, the new
 * file's.  So (1) an open that created its file (FMODE_CREATED in @fmode: the file is
 * new, whatever its number) is never a repeat, and is stamped for its repeats to
 * follow; (2) the key carries the inode's i_generation (ext4, xfs, tmpfs, btrfs draw
 * or count a new one for every new inode: a file made by another process, mknod,
 * link or rename and then opened) and the struct inode's address (one instance stays
 * at one address while it is cached, which a hot file is; the address alone would
 * not do, a freed inode's memory is reused, but with it a filesystem that leaves
 * i_generation 0 needs the slab object reused as well).  The cost of a key that
 * changes when the same file is evicted and read back is one more record. */
static __always_inline bool open_seen_recently(__u32 dev, __u64 ino, __u32 gen, const void *inode,
					       bool write, __u32 flags, __u32 fmode)
{
	struct dedup_key k = {};

	if (!cfg_open_dedup_ns)
		return false;
	k.kind = write ? DEDUP_OPEN_WRITE : DEDUP_OPEN_READ;
	k.a = ino;
	k.b = dev;
	k.c = write ? flags & DEDUP_OPEN_FLAGS : 0;
	k.d = gen;
	k.e = (__u64)(unsigned long)inode;
	/* a created file: a window of 0 only stamps the key */
	return dedup_hit(&k, (fmode & BASTION_FMODE_CREATED) ? 0 : cfg_open_dedup_ns,
			 &open_deduped);
}

/* A network record like this one (same process, op, family, address, port)
 * was reported within the window. */
static __always_inline bool net_seen_recently(__u32 op, __u16 family, const __u8 addr[16],
					      __u16 port)
{
	struct dedup_key k = {};

	if (!cfg_net_dedup_ns)
		return false;
	k.kind = DEDUP_NET + op;
	__builtin_memcpy(&k.a, addr, 8);
	__builtin_memcpy(&k.b, addr + 8, 8);
	k.c = (__u32)family << 16 | port;
	return dedup_hit(&k, cfg_net_dedup_ns, &net_deduped);
}

/* An accepted connection like this one (same process, peer address, local
 * port: the peer's port changes with every connection) was reported within
 * the window. */
static __always_inline bool accept_seen_recently(struct sock *sk)
{
	__u16 fam, lport;
	__u8 peer[16] = {};

	if (!cfg_net_dedup_ns)
		return false;
	fam = BPF_CORE_READ(sk, __sk_common.skc_family);
	lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	if (fam == 2 /* AF_INET */) {
		__u32 d = BPF_CORE_READ(sk, __sk_common.skc_daddr);

		__builtin_memcpy(peer, &d, 4);
	} else if (fam == 10 /* AF_INET6 */) {
		BPF_CORE_READ_INTO(&peer, sk, __sk_common.skc_v6_daddr);
	}
	return net_seen_recently(BASTION_NET_ACCEPT, fam, peer, lport);
}

/* Executable-memory records (ABI 2.1): one per (process, op, reasons, file)
 * within cfg_mmap_dedup_ns.  JIT runtimes flip pages W->X all the time; the
 * first flip of a process crosses the ring, its repeats are counted in
 * mmap_deduped.  The mapped file is part of the key (anonymous memory: 0). */
const volatile __u64 cfg_mmap_dedup_ns = 0;

#define DEDUP_MMAP 32 /* + the BASTION_MMAP_* op */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} mmap_deduped SEC(".maps");

static __always_inline bool mmap_seen_recently(__u32 op, __u32 why, __u32 dev, __u64 ino)
{
	struct dedup_key k = {};

	if (!cfg_mmap_dedup_ns)
		return false;
	k.kind = DEDUP_MMAP + op;
	k.a = ino;
	k.b = dev;
	k.c = why;
	return dedup_hit(&k, cfg_mmap_dedup_ns, &mmap_deduped);
}

/* Log-rewrite records (ABI 2.9, s17-fixlogacts): one per (process, file, act)
 * within cfg_rewrite_dedup_ns.  An untrusted process punching holes in its own
 * file in a loop (or mapping it shared over and over) would otherwise flood the
 * ring; the first one crosses it (the rule judges the path), its repeats are
 * counted in rewrite_deduped.  A history's in-kernel kill is decided before this
 * (every call, not one per window). */
const volatile __u64 cfg_rewrite_dedup_ns = 0;

#define DEDUP_REWRITE 48 /* + the BASTION_REWRITE_* act */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} rewrite_deduped SEC(".maps");

static __always_inline bool rewrite_seen_recently(__u32 act, __u32 dev, __u64 ino)
{
	struct dedup_key k = {};

	if (!cfg_rewrite_dedup_ns)
		return false;
	k.kind = DEDUP_REWRITE + act;
	k.a = ino;
	k.b = dev;
	return dedup_hit(&k, cfg_rewrite_dedup_ns, &rewrite_deduped);
}

/* ptrace records (s30): one per (process image, request, target) within
 * cfg_ptrace_dedup_ns.  Any user may read its own child's memory with
 * process_vm_readv(2) in a loop (1.2 M calls/s here; also PTRACE_PEEKDATA, a
 * debugger's PTRACE_SYSCALL per stop, and on the lsm sensor every attach-mode
 * check): each was a record, 1.8 M dropped in 3 s, and the file and kill
 * records of those seconds with them (the agent blinded).  The first crosses
 * (the rules judge the act: a read or a write of that target's memory, an
 * attach), the repeats are counted in ptrace_deduped; another request or
 * another target is another key; the address a request reads is not in it. */
const volatile __u64 cfg_ptrace_dedup_ns = 0;

#define DEDUP_PTRACE 64

/* Its own stamps (review 2): a ptrace flood over many targets does not push the
 * open dedup's stamps out of dedup_seen. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct dedup_key);
	__type(value, __u64);
} ptrace_seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} ptrace_deduped SEC(".maps");

/* ptrace_record() of a request not seen from this process image within the
 * window.  @target_start: the target process's start time where the caller has
 * the task (lsm: a pid reused by a new process is a new key), else 0.  A record
 * the ring had no room for takes its stamp back (s30 review): its repeats, an
 * injection's next POKEDATA, must not be hidden behind a record never sent. */
static __always_inline int ptrace_once(__s64 request, __s32 target, __u64 addr,
				       __u64 target_start)
{
	struct dedup_key k = {};

	if (!wanted(BASTION_EV_PTRACE))
		return 0;
	if (cfg_ptrace_dedup_ns) {
		k.kind = DEDUP_PTRACE;
		k.a = (__u64)request;
		k.b = target_start;
		k.c = (__u32)target;
		if (dedup_hit_in(&ptrace_seen, &k, cfg_ptrace_dedup_ns, &ptrace_deduped))
			return 0;
	}
	if (!ptrace_record(request, target, addr) && cfg_ptrace_dedup_ns)
		bpf_map_delete_elem(&ptrace_seen, &k);
	return 0;
}

/* Signal records (s30): one per (process image, signal, target process) within
 * cfg_kill_dedup_ns.  Any user may send its own child a harmful-listed signal
 * (SIGUSR1, SIGTERM...) in a loop (1.3 M kill(2) calls/s here; a pending
 * standard signal is not queued again, but each call is checked and traced):
 * each was a record.  The first of each signal crosses (the rules judge a
 * signal to a target: a security tool stopped); the repeats are counted in
 * kill_deduped.  The key is the sender's image and the target process: its
 * tgid, its leader's start time (a pid reused by a restarted security tool is a
 * new key) and the leader's self_exec_id (a wrapper that exec'd the tool is a
 * new key: review 2); the value the signals sent within the window, a bit each
 * (a signal not sent yet crosses).  One key per target process, not per thread
 * and signal (review 2: a child with 265 threads that ignores 62 signals was
 * 16 k keys, every call a miss); its own map, so a signal flood does not push
 * the open dedup's stamps out. */
const volatile __u64 cfg_kill_dedup_ns = 0;

#define DEDUP_KILL 80

struct kill_seen_val {
	__u64 since;
	__u64 sigs;   /* bit sig - 1 */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct dedup_key);
	__type(value, struct kill_seen_val);
} kill_seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} kill_deduped SEC(".maps");

/* @k: the key, for kill_unstamp() when the record finds no room (all zero when
 * the window is off: nothing was stamped). */
static __always_inline bool kill_seen_recently(int sig, struct task_struct *target,
					       struct dedup_key *k)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct kill_seen_val *v, fresh = {};
	__u64 bit, now;
	__u32 zero = 0;

	if (!cfg_kill_dedup_ns || sig < 1 || sig > 64)
		return false;
	bit = 1ULL << (sig - 1);
	k->tgid = bpf_get_current_pid_tgid() >> 32;
	k->start_ns = BPF_CORE_READ(task, group_leader, start_boottime);
	k->exec_id = BPF_CORE_READ(task, self_exec_id);
	k->kind = DEDUP_KILL;
	k->a = BPF_CORE_READ(target, tgid);
	k->b = BPF_CORE_READ(target, group_leader, start_boottime);
	k->e = BPF_CORE_READ(target, group_leader, self_exec_id);
	now = bpf_ktime_get_boot_ns();
	v = bpf_map_lookup_elem(&kill_seen, k);
	if (v && now - v->since < cfg_kill_dedup_ns) {
		if (v->sigs & bit) {
			__u64 *n = bpf_map_lookup_elem(&kill_deduped, &zero);

			if (n)
				__sync_fetch_and_add(n, 1);
			return true;
		}
		__sync_fetch_and_or(&v->sigs, bit);
		return false;
	}
	fresh.since = now;
	fresh.sigs = bit;
	bpf_map_update_elem(&kill_seen, k, &fresh, BPF_ANY);
	return false;
}

/* The record of @sig for key @k was not sent: its repeats are not hidden. */
static __always_inline void kill_unstamp(struct dedup_key *k, int sig)
{
	struct kill_seen_val *v;

	if (!cfg_kill_dedup_ns || sig < 1 || sig > 64)
		return;
	v = bpf_map_lookup_elem(&kill_seen, k);
	if (v)
		__sync_fetch_and_and(&v->sigs, ~(1ULL << (sig - 1)));
}

#endif /* BASTION_DEDUP_H */
