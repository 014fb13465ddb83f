/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Socket addresses from user sockaddrs and from kernel sockets. */
#ifndef BASTION_SOCK_H
#define BASTION_SOCK_H

#include "path.h"

#define AF_UNIX_ 1
#define AF_INET_ 2
#define AF_INET6_ 10
#define S_IFMT_ 00170000
#define S_IFSOCK_ 0140000

static __always_inline __u16 be16(__u16 v)
{
	return __builtin_bswap16(v);
}

/* Parse a user sockaddr: family, address and port (host order). */
static __always_inline void user_sockaddr(const void *uaddr, __u16 *family, __u8 addr[16],
					  __u16 *port)
{
	struct sockaddr_in sin = {};
	__u16 fam = 0, p = 0;

	/* one read for the family and an IPv4 address (a sockaddr_in is 16 bytes;
	 * a shorter user buffer fails it: then the family alone) */
	if (bpf_probe_read_user(&sin, sizeof(sin), uaddr))
		bpf_probe_read_user(&sin.sin_family, sizeof(sin.sin_family), uaddr);
	fam = sin.sin_family;
	*family = fam;
	if (fam == AF_INET_) {
		__builtin_memcpy(addr, &sin.sin_addr.s_addr, 4);
		p = sin.sin_port;
	} else if (fam == AF_INET6_) {
		struct sockaddr_in6 sin6 = {};

		bpf_probe_read_user(&sin6, sizeof(sin6), uaddr);
		__builtin_memcpy(addr, &sin6.sin6_addr, 16);
		p = sin6.sin6_port;
	}
	*port = be16(p);
}

/* The struct sock behind descriptor @fd, or NULL when it is not a socket. */
static __always_inline struct sock *fd_sock(int fd)
{
	struct file *f = fd_file(fd);
	struct socket *sock;
	umode_t mode;

	if (!f)
		return NULL;
	mode = BPF_CORE_READ(f, f_inode, i_mode);
	if ((mode & S_IFMT_) != S_IFSOCK_)
		return NULL;
	sock = BPF_CORE_READ(f, private_data);
	return BPF_CORE_READ(sock, sk);
}

/* Local and peer addresses of a kernel socket (ports in host order). */
static __always_inline void sock_addrs(struct sock *sk, struct bastion_net_event *e)
{
	__u16 fam = BPF_CORE_READ(sk, __sk_common.skc_family);

	e->family = fam;
	e->protocol = BPF_CORE_READ(sk, sk_protocol);
	e->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	e->dport = be16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (fam == AF_INET_) {
		__u32 s = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__u32 d = BPF_CORE_READ(sk, __sk_common.skc_daddr);

		__builtin_memcpy(e->saddr, &s, 4);
		__builtin_memcpy(e->daddr, &d, 4);
	} else if (fam == AF_INET6_) {
		BPF_CORE_READ_INTO(&e->saddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&e->daddr, sk, __sk_common.skc_v6_daddr);
	}
}

#endif /* BASTION_SOCK_H */
