/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Helpers for code inside a live patch, for kernels older than Linux 6.19
 * (which ships its own <linux/livepatch_helpers.h> with the same names).
 *
 * KLP_PRE_PATCH_CALLBACK(fn) and friends record a pointer to a callback in a
 * section that is discarded at link time; the klp.livepatch builder reads it
 * from the patched object and wires the callback into the klp_object of the
 * object (vmlinux or module) whose source declared it.
 *
 *   int  pre_patch(struct klp_object *obj);     non-zero refuses the patch
 *   void post_patch(struct klp_object *obj);
 *   void pre_unpatch(struct klp_object *obj);
 *   void post_unpatch(struct klp_object *obj);
 *
 * KLP_SYSCALL_DEFINE1(name, ...) .. KLP_SYSCALL_DEFINE6(name, ...) replace
 * SYSCALL_DEFINE1..6 in a patched file when the patch changes a system call;
 * see the comment above their definition.
 */
#ifndef _LINUX_LIVEPATCH_HELPERS_H
#define _LINUX_LIVEPATCH_HELPERS_H

#include <linux/compiler.h>
#include <linux/livepatch.h>
#include <linux/syscalls.h>

typedef int (*klp_pre_patch_t)(struct klp_object *obj);
typedef void (*klp_post_patch_t)(struct klp_object *obj);
typedef void (*klp_pre_unpatch_t)(struct klp_object *obj);
typedef void (*klp_post_unpatch_t)(struct klp_object *obj);

#define KLP_CALLBACK_PTRS ".discard.klp_callback_ptrs"

#define __KLP_CALLBACK(kind, type, func)					\
	type __used __section(KLP_CALLBACK_PTRS)			\
		__PASTE(__klp_##kind##_callback_, __COUNTER__) = func

#define KLP_PRE_PATCH_CALLBACK(func)    __KLP_CALLBACK(pre_patch, klp_pre_patch_t, func)
#define KLP_POST_PATCH_CALLBACK(func)   __KLP_CALLBACK(post_patch, klp_post_patch_t, func)
#define KLP_PRE_UNPATCH_CALLBACK(func)  __KLP_CALLBACK(pre_unpatch, klp_pre_unpatch_t, func)
#define KLP_POST_UNPATCH_CALLBACK(func) __KLP_CALLBACK(post_unpatch, klp_post_unpatch_t, func)

/*
 * Changing a system call.
 *
 * SYSCALL_DEFINEn(name, type, arg, ...) expands, on x86-64, to
 *   __x64_sys_name(regs)   the entry the syscall table calls (traceable)
 *   __ia32_sys_name(regs)  the same for 32-bit tasks (CONFIG_IA32_EMULATION)
 *   __se_sys_name(...)     static, sign-extends the arguments
 *   __do_sys_name(...)     static inline, the body
 * plus the syscall's tracing metadata (__syscall_meta_*, ftrace events) and
 * error-injection entries. The body's function is `inline`, which makes it
 * notrace: when the compiler keeps it out of line (prctl, getpriority, ...)
 * livepatch cannot redirect it, and a patch that edits the body is refused.
 *
 * KLP_SYSCALL_DEFINEn takes the same arguments and defines the same entry
 * points, but names the body __klp_do_sys_name. To the builder the body is
 * then a new function, and the entry points that call it are the changed
 * functions livepatch redirects. No metadata or error-injection entries are
 * emitted: the running kernel keeps the original's, which a live patch cannot
 * replace. Only x86-64 is provided (the architecture the builder supports).
 *
 * Example: in kernel/sys.c change
 *	SYSCALL_DEFINE5(prctl, int, option, unsigned long, arg2, ...)
 * into
 *	KLP_SYSCALL_DEFINE5(prctl, int, option, unsigned long, arg2, ...)
 * and edit the body as needed.
 */
#define KLP_SYSCALL_DEFINE1(name, ...) KLP_SYSCALL_DEFINEx(1, _##name, __VA_ARGS__)
#define KLP_SYSCALL_DEFINE2(name, ...) KLP_SYSCALL_DEFINEx(2, _##name, __VA_ARGS__)
#define KLP_SYSCALL_DEFINE3(name, ...) KLP_SYSCALL_DEFINEx(3, _##name, __VA_ARGS__)
#define KLP_SYSCALL_DEFINE4(name, ...) KLP_SYSCALL_DEFINEx(4, _##name, __VA_ARGS__)
#define KLP_SYSCALL_DEFINE5(name, ...) KLP_SYSCALL_DEFINEx(5, _##name, __VA_ARGS__)
#define KLP_SYSCALL_DEFINE6(name, ...) KLP_SYSCALL_DEFINEx(6, _##name, __VA_ARGS__)

/* sname is the syscall's name with a leading underscore, as for SYSCALL_DEFINEx */
#define KLP_SYSCALL_DEFINEx(x, sname, ...) __KLP_SYSCALL_DEFINEx(x, sname, __VA_ARGS__)

#ifdef CONFIG_X86_64

/* One pt_regs entry point: decode the registers, call __se_sys_name. */
#define __KLP_SYSCALL_ENTRY(abi, sname, ...)					\
	long __##abi##_sys##sname(const struct pt_regs *regs);			\
	long __##abi##_sys##sname(const struct pt_regs *regs)			\
	{									\
		return __se_sys##sname(__VA_ARGS__);				\
	}

#define __KLP_SYSCALL_X64_ENTRY(x, sname, ...)					\
	__KLP_SYSCALL_ENTRY(x64, sname, SC_X86_64_REGS_TO_ARGS(x, __VA_ARGS__))

#ifdef CONFIG_IA32_EMULATION
#define __KLP_SYSCALL_IA32_ENTRY(x, sname, ...)					\
	__KLP_SYSCALL_ENTRY(ia32, sname, SC_IA32_REGS_TO_ARGS(x, __VA_ARGS__))
#else
#define __KLP_SYSCALL_IA32_ENTRY(x, sname, ...)
#endif

#define __KLP_SYSCALL_DEFINEx(x, sname, ...)					\
	static long __se_sys##sname(__MAP(x, __SC_LONG, __VA_ARGS__));		\
	static inline long __klp_do_sys##sname(__MAP(x, __SC_DECL, __VA_ARGS__)); \
	__KLP_SYSCALL_X64_ENTRY(x, sname, __VA_ARGS__)				\
	__KLP_SYSCALL_IA32_ENTRY(x, sname, __VA_ARGS__)				\
	static long __se_sys##sname(__MAP(x, __SC_LONG, __VA_ARGS__))		\
	{									\
		long __ret = __klp_do_sys##sname(__MAP(x, __SC_CAST, __VA_ARGS__)); \
										\
		__MAP(x, __SC_TEST, __VA_ARGS__);				\
		__PROTECT(x, __ret, __MAP(x, __SC_ARGS, __VA_ARGS__));		\
		return __ret;							\
	}									\
	static inline long __klp_do_sys##sname(__MAP(x, __SC_DECL, __VA_ARGS__))

#else /* !CONFIG_X86_64 */

#define __KLP_SYSCALL_DEFINEx(x, sname, ...)					\
	_Static_assert(0, "KLP_SYSCALL_DEFINE" #x ": this compat header "	\
		       "supports x86-64 only");					\
	static inline long __klp_do_sys##sname(__MAP(x, __SC_DECL, __VA_ARGS__))

#endif /* CONFIG_X86_64 */

#endif /* _LINUX_LIVEPATCH_HELPERS_H */
