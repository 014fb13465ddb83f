// SPDX-License-Identifier: GPL-2.0
/* Control sockets refused to an untrusted tree (issue 15, lsm tier; s15-svc).
 *
 * A security tool is shut down for a tree by a clean daemon: `systemctl stop
 * auditd` asks PID 1 over its private socket and PID 1 sends the signal, so
 * the in-hook gate's task_kill check never sees the tree that asked;
 * `docker run -v /:/host` asks dockerd, a root daemon, to do anything at all.
 * This object refuses, in unix_stream_connect, a connect by a task whose tree
 * has untrusted provenance (the event sensor's `prov` map, shared at load like
 * lsm_provgate.bpf.o; an administrator's session with only local reasons is
 * allowed and reported) to a listening socket whose bound inode is in
 * `svcgate_socks`: systemd's /run/systemd/private, the docker, containerd and
 * podman API sockets (filled by enforce/svcgate_lsm.py).  The peer is found by
 * the inode its path is bound to, so another name for the socket (a bind mount,
 * a symlink, /var/run) is the same object; or (s18-launder) by the executable of
 * the server listening on it: a tmux or screen server, whose sockets come and go
 * at any path, would otherwise run or type a tainted tree's command in its clean
 * tree.
 *
 * Cost: every other task pays the scope check and one `prov` lookup per unix
 * stream connect; a tainted one pays one more lookup, and for a peer not in
 * `svcgate_socks` the listener's exe walk (six probe reads), a third lookup and, for
 * a tmux/screen server, the listener's tag (sk storage).  listen(): the scope check
 * and one `prov` lookup; a tainted process's unix listener gets its tag.  Dry run: the flag in
 * `svcgate_cfg` (decided, reported as would-deny, allowed). */
#include "path.h"
#include "prov_map.h"
#include "svcgate.h"

char LICENSE[] SEC("license") = "GPL";

#define EPERM_ 1

/* bound socket inode -> kind (enforce/svcgate_lsm.py SOCKET_KINDS) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__uint(map_flags, BPF_F_RDONLY_PROG);
	__type(key, struct bastion_inode_key);
	__type(value, __u32);
} svcgate_socks SEC(".maps");

/* svcgate_servers (s18-launder): the tmux/screen executables, found by the
 * listener (bpf/lib/svcgate.h, shared with svcgate_compat.bpf.c). */

/* A listening unix socket a tainted process made (s18-fixlaunder): its listener's
 * reasons at listen(), kept with the socket (freed with it).  A tainted tree's own
 * tmux/screen server is tainted too (forked by the tree): what it runs stays in a
 * tainted tree, so the tree's connect to it is no hand-off and is allowed.  `prov`
 * is task storage, reachable only from a trusted task_struct; the server found by
 * sk_peer_pid is not one on 6.1 (bpf_task_from_pid is 6.2+), hence the tag. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u32);
} svcgate_tainted_listeners SEC(".maps");

/* slot 0: dry run (1 = report, allow) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_RDONLY_PROG);
	__type(key, __u32);
	__type(value, __u32);
} svcgate_cfg SEC(".maps");

/* The current task's untrusted reasons (the admin bit included); 0 = none, out
 * of scope, or only the admin bit; PROV_ACTOR_UNSEEN: no entry found (settled
 * once the socket is gated).  As lsm_provgate.bpf.c's pgate_actor: a
 * process the full map could not take is refused as untracked. */
static __always_inline __u32 svc_actor(void)
{
	return in_scope() ? prov_gate_actor() : 0;
}

SEC("lsm/socket_listen")
int BPF_PROG(svcgate_listen, struct socket *sock, int backlog, int ret)
{
	struct sock *sk;
	__u32 reasons, *v;

	if (ret)
		return ret;
	/* prov_actor, not svc_actor: a listener the plain lookup did not find gets
	 * no tag (a tag lets a tainted tree connect; none only gates it) */
	reasons = in_scope() ? prov_actor() : 0;
	if (!reasons)
		return 0;
	sk = sock->sk;
	if (!sk || sk->__sk_common.skc_family != 1 /* AF_UNIX */)
		return 0;
	v = bpf_sk_storage_get(&svcgate_tainted_listeners, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (v)
		*v = reasons;
	return 0;
}

SEC("lsm/unix_stream_connect")
int BPF_PROG(svcgate_unix_connect, struct sock *sock, struct sock *other, struct sock *newsk,
	     int ret)
{
	__u32 reasons, local, action = BASTION_ACT_DENY, zero = 0, *kind, *dry, skind = 0, *tag;
	struct bastion_inode_key k = {}, sk = {};
	struct bastion_hips_event *e;
	struct unix_sock *u = (struct unix_sock *)other;
	struct dentry *d;
	struct path p = {};
	bool enforced;

	if (ret)
		return ret;
	reasons = svc_actor();
	if (!reasons || !other)
		return 0;
	d = BPF_CORE_READ(u, path.dentry);
	if (!d)
		return 0; /* an abstract or unnamed socket: not in the set */
	k.ino = BPF_CORE_READ(d, d_inode, i_ino);
	k.dev = BPF_CORE_READ(d, d_inode, i_sb, s_dev);
	kind = bpf_map_lookup_elem(&svcgate_socks, &k);
	if (!kind) {
		skind = svc_server_kind(BPF_CORE_READ(other, sk_peer_pid), &sk, NULL);
		if (!skind)
			return 0;
		tag = bpf_sk_storage_get(&svcgate_tainted_listeners, other, 0, 0);
		if (tag && *tag)
			return 0; /* the tree's own (tainted) server */
		kind = &skind;
	}
	/* a gated socket: an actor the plain lookup did not find is looked up with
	 * F_CREATE; a NULL then is busy or no memory: refused (prov_map.h) */
	reasons = prov_actor_settle(reasons);
	if (!reasons)
		return 0;
	local = reasons & ~BASTION_PROV_ADMIN_TTY;
	if ((reasons & BASTION_PROV_ADMIN_TTY) && !(local & ~BASTION_PROV_LOCAL_MASK))
		action = BASTION_ACT_AUDIT;
	dry = bpf_map_lookup_elem(&svcgate_cfg, &zero);
	enforced = action == BASTION_ACT_DENY && !(dry && *dry);
	e = reserve_hips(BASTION_OP_CONNECT, action, *kind, local, BASTION_MECH_LSM_PROV,
			 enforced ? -EPERM_ : 0, 0, enforced);
	if (e) {
		e->ino = k.ino;
		e->dev = k.dev;
		p.dentry = d;
		p.mnt = BPF_CORE_READ(u, path.mnt);
		if (path_to_str(&p, e->path))
			e->hdr.flags |= BASTION_F_TRUNC_PATH;
		SUBMIT(e);
	}
	return enforced ? -EPERM_ : 0;
}
