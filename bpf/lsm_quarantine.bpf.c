// SPDX-License-Identifier: GPL-2.0
/* Quarantine, lsm tier: a process marked in `quarantined` (and every
 * descendant it forks afterwards) is refused exec, write-open and connect
 * with -EPERM in the LSM hooks.  Scoped by cfg_cgroup_id, cfg_self_tgid and
 * the dead-man cfg_deadline_ns. */
#include "quarantine.h"

char LICENSE[] SEC("license") = "GPL";

#define EPERM_ 1
#define FMODE_WRITE_ 0x2

static __always_inline int quar_deny(__u32 op)
{
	struct bastion_quarantine_val *v;

	if (!in_scope())
		return 0;
	v = quar_current();
	if (!v)
		return 0;
	quar_report(op, BASTION_ACT_DENY, BASTION_MECH_LSM, -EPERM_, v->incident, NULL);
	return -EPERM_;
}

SEC("lsm/bprm_check_security")
int BPF_PROG(quar_bprm_check, struct linux_binprm *bprm, int ret)
{
	if (ret)
		return ret;
	return quar_deny(BASTION_OP_EXEC);
}

SEC("lsm/file_open")
int BPF_PROG(quar_file_open, struct file *file, int ret)
{
	if (ret)
		return ret;
	if (!(BPF_CORE_READ(file, f_mode) & FMODE_WRITE_))
		return 0;
	return quar_deny(BASTION_OP_OPEN_WRITE);
}

SEC("lsm/socket_connect")
int BPF_PROG(quar_socket_connect, struct socket *sock, struct sockaddr *address, int addrlen, int ret)
{
	if (ret)
		return ret;
	return quar_deny(BASTION_OP_CONNECT);
}
