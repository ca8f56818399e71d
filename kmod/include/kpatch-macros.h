/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kpatch-compatible callback macros, so patches written for kpatch-build build
 * with klp.livepatch unchanged:
 *   KPATCH_PRE_PATCH_CALLBACK(fn)    int  fn(patch_object *obj)
 *   KPATCH_POST_PATCH_CALLBACK(fn)   void fn(patch_object *obj)
 *   KPATCH_PRE_UNPATCH_CALLBACK(fn)  void fn(patch_object *obj)
 *   KPATCH_POST_UNPATCH_CALLBACK(fn) void fn(patch_object *obj)
 * They map onto the same mechanism as <linux/livepatch_helpers.h>.
 */
#ifndef _KPATCH_MACROS_H_
#define _KPATCH_MACROS_H_

#include <linux/livepatch_helpers.h>

typedef struct klp_object patch_object;

#define KPATCH_PRE_PATCH_CALLBACK(fn)    KLP_PRE_PATCH_CALLBACK(fn)
#define KPATCH_POST_PATCH_CALLBACK(fn)   KLP_POST_PATCH_CALLBACK(fn)
#define KPATCH_PRE_UNPATCH_CALLBACK(fn)  KLP_PRE_UNPATCH_CALLBACK(fn)
#define KPATCH_POST_UNPATCH_CALLBACK(fn) KLP_POST_UNPATCH_CALLBACK(fn)

#endif /* _KPATCH_MACROS_H_ */
