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
 * Every tainted connect(2) is kept per thread at sys_enter_connect (the
 * descriptor, its unix stream socket then or NULL, the caller's reasons and its
 * tree's origin) and judged at exit whatever the descriptor was at entry: the
 * entry socket and the descriptor's socket re-resolved at exit are both checked.
 * (s19-gatefix: a descriptor on /dev/null or a datagram socket at entry left no
 * entry, so one dup2() of the stream socket onto it by another thread before
 * the kernel's fdget connected unchecked.)  A second swap (the stream socket
 * put back to /dev/null before the exit) hides the connected socket from both
 * looks, so a successful connect is also checked against the entry's socket:
 * the connect was not its when that could not have returned 0 (not a socket; a
 * unix stream socket already connected, or not connected now; a unix or inet
 * socket not connected now, unless the address was AF_UNSPEC, a disconnect):
 * killed as a swapped descriptor (rule id SVC_SWAPPED, the server unknown).
 * Left: an already-connected datagram socket (unix, UDP) at entry and put back
 * before the exit: its reconnect returns 0 and leaves it connected.
 * The record's `detail` is the tree's
 * origin tgid: user space stops the whole tree (a forked sender shares the
 * connected socket).
 *
 * Cost: every process in scope pays one `prov` lookup per connect(2) and one
 * hash lookup at its exit; a tainted one an entry, the descriptor walks and, connected to
 * a unix listener, the listener's exe walk (six probe reads) and a lookup. */
#include "path.h"
#include "prov_map.h"
#include "sock.h"
#include "svcgate.h"

char LICENSE[] SEC("license") = "GPL";

#define SIGKILL_ 9
#define SOCK_STREAM_ 1
#define SOCK_SEQPACKET_ 5
#define AF_UNSPEC_ 0
#define AF_NETLINK_ 16
#define TCP_ESTABLISHED_ 1   /* also UDP/raw connected, NETLINK_CONNECTED */
#define TCP_SYN_SENT_ 2      /* TCP_FASTOPEN_CONNECT returns 0 here */
#define TCP_CLOSE_ 7         /* a fresh inet socket, or one never connected */
#define TCP_LISTEN_ 10
#define SVC_SWAPPED 7        /* SocketKind.SWAPPED: the descriptor swapped during the call */

#define PEND_SOCK 1          /* the descriptor was a socket at entry */
#define PEND_CONNECTED 2     /* ... connected then */
#define PEND_UNSPEC 4        /* the address's family was AF_UNSPEC (a disconnect) */

struct svc_pending {
	__u64 sk;        /* the descriptor's socket at sys_enter_connect, or 0 */
	__s32 fd;
	__u32 reasons;   /* prov_actor's */
	__u32 origin;    /* the tree's origin tgid (the prov entry's), 0 = unknown */
	__u32 flags;     /* PEND_* */
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

/* Has @sk (unix, inet or netlink) been connected (an inet one: any state a connect
 * leads to, connecting included)?  -1: another family. */
static __always_inline int sk_connected(struct sock *sk)
{
	__u16 fam = BPF_CORE_READ(sk, __sk_common.skc_family);
	__u8 st;

	if (fam == AF_UNIX_)
		return BPF_CORE_READ((struct unix_sock *)sk, peer) != NULL;
	if (fam != AF_INET_ && fam != AF_INET6_ && fam != AF_NETLINK_)
		return -1;
	st = BPF_CORE_READ(sk, __sk_common.skc_state);
	if (fam == AF_NETLINK_)
		return st == TCP_ESTABLISHED_;
	/* any state a connect leads to: a peer's FIN or our shutdown() between the
	 * handshake and the exit (CLOSE_WAIT, FIN_WAIT*) is no swap */
	return st != TCP_CLOSE_ && st != TCP_LISTEN_;
}

/* A connect that returned 0 but cannot have been made on @sk, the descriptor's
 * socket at entry (@flags: PEND_*): another descriptor was swapped in for the
 * kernel's fdget and @sk put back before the exit. */
static __always_inline bool swapped_in(struct sock *sk, __u32 flags)
{
	int now;

	if (!(flags & PEND_SOCK) || !sk)
		return true;   /* /dev/null, a file: a connect on it fails */
	if (unix_stream(sk) && (flags & PEND_CONNECTED))
		return true;   /* -EISCONN, a unix stream connect is synchronous */
	now = sk_connected(sk);
	return now == 0 && !(flags & PEND_UNSPEC);
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
	struct bastion_prov_val *v;
	struct svc_pending p = {};
	struct sock *sk;
	__u16 fam = 0;
	__u32 tid;

	p.reasons = svc_actor();
	if (!p.reasons)
		return 0;
	p.fd = ctx->args[0];
	v = prov_current();
	p.origin = v ? v->origin_tgid : 0;
	/* not a unix stream socket now: still kept, the exit re-resolves the descriptor
	 * (another thread may dup2() one onto it before the kernel's fdget) */
	sk = fd_sock(p.fd);
	p.sk = (__u64)sk;
	if (sk) {
		p.flags |= PEND_SOCK;
		if (sk_connected(sk) > 0)
			p.flags |= PEND_CONNECTED;
	}
	if (!bpf_probe_read_user(&fam, sizeof(fam), (void *)ctx->args[1]) && fam == AF_UNSPEC_)
		p.flags |= PEND_UNSPEC;
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
		now = fd_sock(p.fd); /* always re-resolved: swapped during the call */
		if (now != sk)
			kind = connected_server(now, &k, &tgid);
		if (kind)
			sk = now;
		else if (swapped_in(sk, p.flags))
			kind = SVC_SWAPPED;
		else
			return 0;
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
	e->detail = p.origin;
	if (kind == SVC_SWAPPED) {
		SUBMIT(e);
		return 0;
	}
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
