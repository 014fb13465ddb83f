/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The control-socket gate's listener walk, one copy for both tiers (issue 15):
 * lsm_svcgate.bpf.c (refuses in unix_stream_connect) and svcgate_compat.bpf.c
 * (kills at sys_exit_connect).  A tmux or screen server binds its socket at any
 * time, at any path (`tmux -S`), so it is found by the listener itself: a unix
 * socket's sk_peer_pid is the thread group that called listen() (set there, and
 * copied to the client's socket by the connect), whose leader's executable is
 * compared with the installed tmux/screen files in `svcgate_servers` (one map
 * definition; both objects are filled by enforce/svcgate_lsm.py fill_servers). */
#ifndef BASTION_SVCGATE_H
#define BASTION_SVCGATE_H

#include "common.h"

/* A server's executable inode -> kind (enforce/svcgate_lsm.py SocketKind). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__uint(map_flags, BPF_F_RDONLY_PROG);
	__type(key, struct bastion_inode_key);
	__type(value, __u32);
} svcgate_servers SEC(".maps");

/* The thread-group leader of @pid (a thread group's struct pid, as sk_peer_pid):
 * tasks[PIDTYPE_TGID].first is the leader's pid_links[PIDTYPE_TGID] node.  NULL
 * when the group is gone (the server exited: its socket may outlive it). */
static __always_inline struct task_struct *svc_pid_leader(struct pid *pid)
{
	struct hlist_node *node;

	if (!pid)
		return NULL;
	node = BPF_CORE_READ(pid, tasks[PIDTYPE_TGID].first);
	if (!node)
		return NULL;
	return (struct task_struct *)((char *)node -
				      bpf_core_field_offset(struct task_struct, pid_links) -
				      sizeof(struct hlist_node) * PIDTYPE_TGID);
}

/* The kind of the server whose thread group @pid listened (0: its executable is
 * not in `svcgate_servers`); @k gets the executable's key, @leader (if not NULL)
 * the listener's thread-group leader. */
static __always_inline __u32 svc_server_kind(struct pid *pid, struct bastion_inode_key *k,
					      struct task_struct **leader)
{
	struct task_struct *t = svc_pid_leader(pid);
	struct inode *ino;
	__u32 *kind;

	if (!t)
		return 0;
	ino = BPF_CORE_READ(t, mm, exe_file, f_inode);
	if (!ino)
		return 0;
	k->ino = BPF_CORE_READ(ino, i_ino);
	k->dev = BPF_CORE_READ(ino, i_sb, s_dev);
	kind = bpf_map_lookup_elem(&svcgate_servers, k);
	if (!kind)
		return 0;
	if (leader)
		*leader = t;
	return *kind;
}

#endif /* BASTION_SVCGATE_H */
