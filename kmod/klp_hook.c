// SPDX-License-Identifier: GPL-2.0
/*
 * klp.livepatch patch-module hook.
 *
 * The builder compiles this file next to the generated patch objects. It
 * registers, through the kernel's livepatch API, the functions and callbacks
 * listed in the generated klp_patch_table.h, one klp_object per patched object
 * (vmlinux or a module, which is patched when it loads).
 */
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/livepatch.h>

#include "klp_patch_table.h"

static struct klp_patch klp_patch = {
	.mod = THIS_MODULE,
	.objs = klp_objects,
	.replace = KLP_REPLACE,
};

static int __init klp_hook_init(void)
{
	return klp_enable_patch(&klp_patch);
}

static void __exit klp_hook_exit(void)
{
}

module_init(klp_hook_init);
module_exit(klp_hook_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION(KLP_DESCRIPTION);
