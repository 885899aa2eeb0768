/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Types shared between the BPF sampler and userspace (src/sample/). Keep them
 * small, naturally aligned and free of implicit padding: a hash key with
 * uninitialised padding silently splits counts. */
#ifndef EMBER_H
#define EMBER_H

#define EMBER_COMM_LEN 16
/* The kernel's default kernel.perf_event_max_stack. */
#define EMBER_MAX_DEPTH 127

/* sample_key.flags */
#define SAMPLE_USER_LOST 1u   /* user stack could not be read or stored */
#define SAMPLE_KERNEL_LOST 2u /* kernel stack could not be stored */
#define SAMPLE_MAP_FULL 4u    /* ...because the stack map was full */

/* filter map values */
#define FILTER_PROFILE 1u /* samples of this tgid are recorded */
#define FILTER_FOLLOW 2u  /* processes forked by this tgid are added */

/* One aggregation bucket: what the profile needs per sample. */
struct sample_key {
	__u32 tgid;
	__u32 tid;
	__u64 user_stack;   /* hash key into the stack map; 0 = none */
	__u64 kernel_stack; /* hash key into the stack map; 0 = none */
	__u32 flags;        /* SAMPLE_* */
	__u32 _pad;
	char comm[EMBER_COMM_LEN];        /* process (group leader) name */
	char thread_comm[EMBER_COMM_LEN]; /* thread name */
};

/* One captured stack: innermost frame first. */
struct stack_trace {
	__u32 len;
	__u32 _pad;
	__u64 ips[EMBER_MAX_DEPTH];
};

/* Indexes of the per-CPU stats array. */
enum ember_stat {
	STAT_SAMPLES = 0,         /* samples of profiled tasks, recorded or not */
	STAT_IDLE,                /* samples on an idle CPU (not recorded) */
	STAT_LOST_USER_STACK,     /* user stack unreadable (recorded as [lost]) */
	STAT_LOST_STACK_MAP_FULL, /* a stack did not fit (recorded as [lost]) */
	STAT_LOST_COUNT_MAP_FULL, /* whole sample lost: count map full */
	STAT_EVENTS_LOST,         /* new-process notifications dropped */
	STAT_MAX,
};

/* Ring-buffer message: a process was sampled for the first time, or
 * exec'd, so userspace should capture its memory map while it lives. */
struct ember_proc_event {
	__u32 tgid;
	__u32 kind; /* PROC_EVENT_* */
};

#define PROC_EVENT_NEW 0  /* first sample of a process */
#define PROC_EVENT_EXEC 1 /* the process replaced its image */

#endif
