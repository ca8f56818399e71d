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
 */
#ifndef _LINUX_LIVEPATCH_HELPERS_H
#define _LINUX_LIVEPATCH_HELPERS_H

#include <linux/compiler.h>
#include <linux/livepatch.h>

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

#endif /* _LINUX_LIVEPATCH_HELPERS_H */
