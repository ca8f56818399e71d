// SPDX-License-Identifier: GPL-2.0
/*
 * klp.livepatch patch-module hook.
 *
 * The builder compiles this file next to the generated patch objects. It
 * registers, through the kernel's livepatch API, the functions and callbacks
 * listed in the generated klp_patch_table.h: one klp_object per patched object
 * (vmlinux, or a module, which is patched when it loads).
 *
 * Two optional consistency helpers run around klp_enable_patch(), both bounded
 * in time and both undone before this init function returns, so nothing
 * depends on the process that loaded the module staying alive:
 *
 *  - park_kthreads=PATTERN[,PATTERN]: park the matching per-CPU smpboot
 *    threads (the only kernel threads that honour parking) for the transition.
 *  - freeze (built with KLP_CONSISTENCY_FREEZE): freeze user space with the
 *    process freezer, so no user task sleeps inside a patched function, enable
 *    the patch, wait at most freeze_timeout_ms for the transition, then thaw.
 *    freeze_window_us reports how long user space was frozen.
 */
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/livepatch.h>
#include <linux/kthread.h>
#include <linux/sched/signal.h>
#include <linux/glob.h>
#include <linux/string.h>
#include <linux/delay.h>
#include <linux/ktime.h>
#include <linux/suspend.h>
#include <linux/freezer.h>

#include "klp_patch_table.h"

static struct klp_patch klp_patch = {
	.mod = THIS_MODULE,
	.objs = klp_objects,
	.replace = KLP_REPLACE,
};

static char *park_kthreads;
module_param(park_kthreads, charp, 0400);
MODULE_PARM_DESC(park_kthreads, "comma-separated patterns of smpboot kthreads to park during the transition");

static unsigned int freeze_timeout_ms = 2000;
module_param(freeze_timeout_ms, uint, 0400);
MODULE_PARM_DESC(freeze_timeout_ms, "upper bound of the frozen window (freeze builds only)");

static unsigned long freeze_window_us;
module_param(freeze_window_us, ulong, 0444);
MODULE_PARM_DESC(freeze_window_us, "measured: how long user space stayed frozen");

static unsigned int parked_threads;
module_param(parked_threads, uint, 0444);
MODULE_PARM_DESC(parked_threads, "measured: kernel threads parked for the transition");

static unsigned long transition_us;
module_param(transition_us, ulong, 0444);
MODULE_PARM_DESC(transition_us, "measured: time from enabling the patch to the end of the wait");

/*
 * livepatch internals (kernel/livepatch/): the transition in progress, and the
 * retry that its own delayed work runs once a second, under klp_mutex.
 */
extern struct klp_patch *klp_transition_patch;
extern struct mutex klp_mutex;
extern void klp_try_complete_transition(void);

static unsigned int parked_count;

#define KLP_MAX_PARKED 256
static struct task_struct *parked[KLP_MAX_PARKED];

/* Per-CPU smpboot threads park in smpboot_thread_fn(); nothing else is accepted. */
static const char *const parkable_prefixes[] = { "ksoftirqd/", "cpuhp/", "rcuc/", NULL };

static bool klp_parkable(const struct task_struct *t)
{
	const char *const *prefix;

	if (!(t->flags & PF_KTHREAD) || !(t->flags & PF_NO_SETAFFINITY))
		return false;
	for (prefix = parkable_prefixes; *prefix; prefix++)
		if (!strncmp(t->comm, *prefix, strlen(*prefix)))
			return true;
	return false;
}

static bool klp_matches(const struct task_struct *t, const char *patterns)
{
	char buf[TASK_COMM_LEN * 4];
	char *cursor = buf, *pattern;

	strscpy(buf, patterns, sizeof(buf));
	while ((pattern = strsep(&cursor, ",")) != NULL)
		if (*pattern && glob_match(pattern, t->comm))
			return true;
	return false;
}

static void klp_unpark_all(void)
{
	while (parked_count) {
		struct task_struct *t = parked[--parked_count];

		kthread_unpark(t);
		put_task_struct(t);
	}
}

static int klp_park_all(void)
{
	struct task_struct *g, *t;
	unsigned int found = 0, i;
	int ret = 0;

	if (!park_kthreads || !*park_kthreads)
		return 0;
	rcu_read_lock();
	for_each_process_thread(g, t) {
		if (!(t->flags & PF_KTHREAD) || !klp_matches(t, park_kthreads))
			continue;
		if (!klp_parkable(t)) {
			pr_err("%s: kernel thread %s (pid %d) does not honour parking; only per-CPU smpboot threads can be parked\n",
			       THIS_MODULE->name, t->comm, task_pid_nr(t));
			ret = -EINVAL;
			goto unlock;
		}
		if (found == KLP_MAX_PARKED) {
			ret = -E2BIG;
			goto unlock;
		}
		get_task_struct(t);
		parked[found++] = t;
	}
unlock:
	rcu_read_unlock();
	if (ret) {
		for (i = 0; i < found; i++)
			put_task_struct(parked[i]);
		return ret;
	}
	for (i = 0; i < found; i++) {
		ret = kthread_park(parked[i]);
		if (ret) {
			put_task_struct(parked[i]);
			for (; ++i < found;)
				put_task_struct(parked[i]);
			break;
		}
		parked[parked_count++] = parked[i];
	}
	parked_threads = parked_count;
	if (ret)
		klp_unpark_all();
	return ret;
}

/*
 * Bounded wait for the transition, retrying it every few milliseconds instead of
 * livepatch's once a second: while user space is frozen or threads are parked,
 * every task can usually switch at once, and the window must stay short.
 * A transition still pending after timeout_ms is left to livepatch.
 */
static void klp_wait_transition(unsigned int timeout_ms)
{
	ktime_t start = ktime_get();

	while (READ_ONCE(klp_transition_patch) == &klp_patch &&
	       ktime_ms_delta(ktime_get(), start) < timeout_ms) {
		mutex_lock(&klp_mutex);
		if (klp_transition_patch == &klp_patch)
			klp_try_complete_transition();
		mutex_unlock(&klp_mutex);
		usleep_range(2000, 4000);
	}
	transition_us = ktime_us_delta(ktime_get(), start);
}

#ifdef KLP_CONSISTENCY_FREEZE
extern int freeze_processes(void);
extern void thaw_processes(void);

static int klp_enable_frozen(void)
{
	unsigned int sleep_flags;
	ktime_t start;
	int ret;

	sleep_flags = lock_system_sleep();
	start = ktime_get();
	ret = freeze_processes();
	if (ret) {
		/* freeze_processes() thaws what it froze when it fails */
		unlock_system_sleep(sleep_flags);
		pr_err("%s: could not freeze user space (%d)\n", THIS_MODULE->name, ret);
		return ret;
	}
	ret = klp_enable_patch(&klp_patch);
	if (!ret)
		klp_wait_transition(freeze_timeout_ms);
	thaw_processes();
	freeze_window_us = ktime_us_delta(ktime_get(), start);
	unlock_system_sleep(sleep_flags);
	return ret;
}
#endif

static int __init klp_hook_init(void)
{
	int ret;

	ret = klp_park_all();
	if (ret)
		return ret;
#ifdef KLP_CONSISTENCY_FREEZE
	ret = klp_enable_frozen();
#else
	ret = klp_enable_patch(&klp_patch);
#endif
	if (!ret && parked_count)
		klp_wait_transition(freeze_timeout_ms);
	klp_unpark_all();
	return ret;
}

static void __exit klp_hook_exit(void)
{
}

module_init(klp_hook_init);
module_exit(klp_hook_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION(KLP_DESCRIPTION);
