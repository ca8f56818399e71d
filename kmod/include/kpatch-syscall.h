/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kpatch-compatible syscall macros, so patches written for kpatch-build that
 * change a system call build with klp.livepatch unchanged:
 *
 *   #include "kpatch-syscall.h"
 *
 *   KPATCH_SYSCALL_DEFINE2(getpriority, int, which, int, who)
 *   {
 *	...
 *   }
 *
 * KPATCH_SYSCALL_DEFINE1..6 and KPATCH_SYSCALL_DEFINEx are the same macros as
 * KLP_SYSCALL_DEFINE1..6 and KLP_SYSCALL_DEFINEx of <linux/livepatch_helpers.h>
 * (one implementation, two spellings); that header explains what they do.
 * kpatch's header also brings in its callback macros, and so does this one.
 */
#ifndef _KPATCH_SYSCALL_H_
#define _KPATCH_SYSCALL_H_

#include <kpatch-macros.h>
#include <linux/livepatch_helpers.h>

#define KPATCH_SYSCALL_DEFINE1(name, ...) KLP_SYSCALL_DEFINE1(name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE2(name, ...) KLP_SYSCALL_DEFINE2(name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE3(name, ...) KLP_SYSCALL_DEFINE3(name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE4(name, ...) KLP_SYSCALL_DEFINE4(name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE5(name, ...) KLP_SYSCALL_DEFINE5(name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE6(name, ...) KLP_SYSCALL_DEFINE6(name, __VA_ARGS__)

#define KPATCH_SYSCALL_DEFINEx(x, sname, ...) KLP_SYSCALL_DEFINEx(x, sname, __VA_ARGS__)

#endif /* _KPATCH_SYSCALL_H_ */
