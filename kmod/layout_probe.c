// SPDX-License-Identifier: GPL-2.0
/*
 * Layout probe: the sizes of the special-section entries of the kernel this
 * file is compiled against. The builder reads klp_layout[] from the object
 * instead of hard-coding struct sizes that change between kernel versions.
 * It is also compiled as part of a composite module, to see which of objtool's
 * tables (of klp_layout_code's return, calls, unwind data) kbuild writes only
 * when it links a module (builder/layout.py).
 */
#include <linux/module.h>
#include <linux/timekeeping.h>
#include <linux/version.h>
#include <linux/bug.h>
#include <linux/jump_label.h>
#include <linux/static_call.h>
#include <linux/extable.h>
#include <asm/extable.h>
#include <asm/alternative.h>
#include <asm/orc_types.h>
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 8, 0)
#include <asm/paravirt_types.h>
#define KLP_PARAVIRT_SITE sizeof(struct paravirt_patch_site)
#else
#define KLP_PARAVIRT_SITE 0
#endif

/* Order matters: builder/stages/generate.py reads the entries by position. */
const unsigned int klp_layout[] = {
	sizeof(struct alt_instr),
	sizeof(struct jump_entry),
	sizeof(struct bug_entry),
	sizeof(struct exception_table_entry),
	sizeof(struct static_call_site),
	sizeof(struct orc_entry),
	KLP_PARAVIRT_SITE,
};

/* A return, a direct call and an indirect call, for objtool to annotate. */
noinline int klp_layout_code(int (*fn)(int), int x)
{
	return fn(x) + (int)ktime_get_ns();
}

MODULE_LICENSE("GPL");
