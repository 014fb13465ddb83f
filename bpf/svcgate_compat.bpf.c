// SPDX-License-Identifier: GPL-2.0
/* A command handed to a clean tmux or screen server, stopped in the kernel on
 * the compat tier (issue 15; s19-compatconnect).
 *
 * The lsm tier refuses the connect in unix_stream_connect (lsm_svcgate.bpf.c).
 * Here no hook can refuse it, and the exec-time rule (behavior.launder_via_daemon)
 * kills the tree from user space ~30 ms after tmux's exec, while the tmux
 * client's whole run (fork, exec, connect, send) takes under 2 ms: the command
 * was typed every time.  So the client is killed on the connect's return: at
 * sys_exit_connect, a process whose tree has untrusted provenance (the event
 * sensor's `prov` map, shared at load) whose unix stream socket is now connected
 * to a listener whose thread group runs an installed tmux/screen executable
 * (bpf/lib/svcgate.h, the lsm gate's walk) gets bpf_send_signal(SIGKILL): it
 * dies before it returns to user space, so it sends nothing.  A unix stream
 * connect is synchronous (no -EINPROGRESS: a nonblocking connect to a full
 * backlog is -EAGAIN, not connected), so only ret == 0 is a connection.
 *
 * The tree's own server (forked by the tainted tree: tainted itself) is no
 * hand-off: a tainted process's listen() records its thread group (tgid and
 * start time: a reused pid is not it) in `svcgate_tainted_listeners`, as the lsm
 * gate tags the socket (sk storage is out of reach from a syscall tracepoint).
 * An administrator's session with only local reasons: reported (audit), not
 * killed.  Dry run (`svcgate_cfg`): reported as a kill not sent.
 *
 * The socket is taken twice: at sys_enter_connect (the descriptor's socket,
 * kept per thread with the caller's reasons) and again from the descriptor at
 * exit; both are checked, so another thread swapping the descriptor during the
 * call has to swap it twice within the call to hide the connected socket.
 *
 * Cost: every process in scope pays one `prov` lookup per connect(2) and one
 * hash lookup at its exit; a tainted one the descriptor walk and, connected to
 * a unix listener, the listener's exe walk (six probe reads) and a lookup. */
#include "path.h"
#include "prov_map.h"
#include "sock.h"
#include "svcgate.h"

char LICENSE[] SEC("license") = "GPL";

#define SIGKILL_ 9
#define SOCK_STREAM_ 1
#define SOCK_SEQPACKET_ 5

struct svc_pending {
	__u64 sk;        /* the descriptor's socket at sys_enter_connect */
	__s32 fd;
	__u32 reasons;   /* prov_actor's */
};

/* A tainted thread's connect in flight (thread id -> its socket and reasons). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct svc_pending);
} svcgate_pending SEC(".maps");

/* Thread groups that listened while tainted: tgid -> the leader's start_boottime
 * (a tainted tree's own tmux/screen server).  LRU: an evicted entry makes the
 * tree's own server look clean (its connect is then killed: only a tainted tree
 * loses), never a clean server look tainted. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u64);
} svcgate_tainted_listeners SEC(".maps");

/* slot 0: dry run (1 = report, no signal) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_RDONLY_PROG);
	__type(key, __u32);
	__type(value, __u32);
} svcgate_cfg SEC(".maps");

static __always_inline __u32 svc_actor(void)
{
	return in_scope() ? prov_actor() : 0;
}

static __always_inline bool unix_stream(struct sock *sk)
{
	__u16 type;

	if (!sk || BPF_CORE_READ(sk, __sk_common.skc_family) != AF_UNIX_)
		return false;
	type = BPF_CORE_READ(sk, sk_type);
	return type == SOCK_STREAM_ || type == SOCK_SEQPACKET_;
}

/* The kind of the clean tmux/screen server @sk (a unix stream socket) is
 * connected to, 0 for anything else (not connected, another listener, the
 * tree's own server); @k: the server's executable, @tgid its thread group. */
static __always_inline __u32 connected_server(struct sock *sk, struct bastion_inode_key *k,
					      __u32 *tgid)
{
	struct task_struct *leader = NULL;
	__u64 *start;
	__u32 kind;

	if (!unix_stream(sk) || !BPF_CORE_READ((struct unix_sock *)sk, peer))
		return 0;
	kind = svc_server_kind(BPF_CORE_READ(sk, sk_peer_pid), k, &leader);
	if (!kind || !leader)
		return 0;
	*tgid = BPF_CORE_READ(leader, tgid);
	start = bpf_map_lookup_elem(&svcgate_tainted_listeners, tgid);
	if (start && *start == BPF_CORE_READ(leader, start_boottime))
		return 0; /* the tree's own (tainted) server */
	return kind;
}

SEC("tracepoint/syscalls/sys_enter_listen")
int svcgate_enter_listen(struct trace_event_raw_sys_enter *ctx)
{
	struct task_struct *t;
	__u32 tgid;
	__u64 start;

	if (!svc_actor())
		return 0;
	if (!unix_stream(fd_sock(ctx->args[0])))
		return 0;
	t = (struct task_struct *)bpf_get_current_task();
	tgid = bpf_get_current_pid_tgid() >> 32;
	start = BPF_CORE_READ(t, group_leader, start_boottime);
	bpf_map_update_elem(&svcgate_tainted_listeners, &tgid, &start, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_connect")
int svcgate_enter_connect(struct trace_event_raw_sys_enter *ctx)
{
	struct svc_pending p = {};
	struct sock *sk;
	__u32 tid;

	p.reasons = svc_actor();
	if (!p.reasons)
		return 0;
	p.fd = ctx->args[0];
	sk = fd_sock(p.fd);
	if (!unix_stream(sk))
		return 0;
	p.sk = (__u64)sk;
	tid = (__u32)bpf_get_current_pid_tgid();
	bpf_map_update_elem(&svcgate_pending, &tid, &p, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int svcgate_exit_connect(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid(), zero = 0, kind, local, tgid = 0, *dry;
	__u32 action = BASTION_ACT_KILL;
	struct bastion_inode_key k = {};
	struct bastion_hips_event *e;
	struct svc_pending *pp, p;
	struct sock *sk, *now;
	struct unix_sock *peer;
	struct path path = {};
	struct dentry *d;
	bool enforced;
	long err = 0;

	pp = bpf_map_lookup_elem(&svcgate_pending, &tid);
	if (!pp)
		return 0;
	p = *pp;
	bpf_map_delete_elem(&svcgate_pending, &tid);
	if (ctx->ret != 0)
		return 0;
	sk = (struct sock *)p.sk;
	kind = connected_server(sk, &k, &tgid);
	if (!kind) {
		now = fd_sock(p.fd); /* the descriptor swapped during the call */
		if (now == sk)
			return 0;
		kind = connected_server(now, &k, &tgid);
		if (!kind)
			return 0;
		sk = now;
	}
	local = p.reasons & ~BASTION_PROV_ADMIN_TTY;
	if ((p.reasons & BASTION_PROV_ADMIN_TTY) && !(local & ~BASTION_PROV_LOCAL_MASK))
		action = BASTION_ACT_AUDIT;
	dry = bpf_map_lookup_elem(&svcgate_cfg, &zero);
	enforced = action == BASTION_ACT_KILL && !(dry && *dry);
	if (enforced) {
		err = bpf_send_signal(SIGKILL_);
		enforced = !err; /* a failed send is reported with its error, not as a kill */
	}
	e = reserve_hips(BASTION_OP_CONNECT, action, kind, local, BASTION_MECH_CONNECT_KILL, err, 0,
			 enforced);
	if (!e)
		return 0;
	e->target_pid = tgid;
	peer = (struct unix_sock *)BPF_CORE_READ((struct unix_sock *)sk, peer);
	d = BPF_CORE_READ(peer, path.dentry);
	if (d) { /* the server's end carries the listener's bound path */
		e->ino = BPF_CORE_READ(d, d_inode, i_ino);
		e->dev = BPF_CORE_READ(d, d_inode, i_sb, s_dev);
		path.dentry = d;
		path.mnt = BPF_CORE_READ(peer, path.mnt);
		if (path_to_str(&path, e->path))
			e->hdr.flags |= BASTION_F_TRUNC_PATH;
	}
	SUBMIT(e);
	return 0;
}
