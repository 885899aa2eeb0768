// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* ember's sampler: a perf_event program run on every CPU at a fixed
 * frequency. It captures kernel and user stacks, stores each distinct stack
 * once in a hash map keyed by a 64-bit hash of its frames, and counts samples
 * per (process, thread, names, stacks) in the kernel. Two generations of
 * maps let userspace drain one while the other fills. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "ember.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by userspace before load. */
const volatile bool filter_enabled = false;
const volatile bool include_idle = false;
const volatile bool kernel_stacks = true;

/* Flipped by userspace to start a new generation. */
__u32 generation = 0;

#define COUNT_MAP(name)                                                        \
	struct {                                                               \
		__uint(type, BPF_MAP_TYPE_HASH);                               \
		__uint(max_entries, 16384);                                    \
		__type(key, struct sample_key);                                \
		__type(value, __u64);                                          \
	} name SEC(".maps")

#define STACK_MAP(name)                                                        \
	struct {                                                               \
		__uint(type, BPF_MAP_TYPE_HASH);                               \
		__uint(max_entries, 8192);                                     \
		__type(key, __u64);                                            \
		__type(value, struct stack_trace);                             \
	} name SEC(".maps")

COUNT_MAP(counts0);
COUNT_MAP(counts1);
STACK_MAP(stacks0);
STACK_MAP(stacks1);

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stack_trace);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* tgid -> FILTER_* flags; consulted only when filter_enabled. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, __u8);
} filter SEC(".maps");

/* Processes userspace has been told about. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, __u32);
	__type(value, __u8);
} known SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps");

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	if (v)
		*v += 1;
}

/* A cheap 64-bit mix; collisions between distinct stacks are ~n^2/2^65. */
static __always_inline __u64 hash_stack(const struct stack_trace *st, __u64 seed)
{
	__u64 h = seed ^ ((__u64)st->len * 0x9e3779b97f4a7c15ULL);
	for (int i = 0; i < EMBER_MAX_DEPTH; i++) {
		if (i >= st->len)
			break;
		h ^= st->ips[i];
		h *= 0xff51afd7ed558ccdULL;
		h ^= h >> 32;
	}
	/* 0 means "no stack" in sample_key. */
	return h ? h : 1;
}

/* Captures one stack into the scratch buffer and stores it; returns its hash,
 * 0 when there is none, or sets *lost on failure. */
static __always_inline __u64 capture(struct bpf_perf_event_data *ctx, void *stacks,
				     __u64 flags, __u64 seed, bool *lost, bool *map_full)
{
	__u32 zero = 0;
	struct stack_trace *st = bpf_map_lookup_elem(&scratch, &zero);
	if (!st) {
		*lost = true;
		return 0;
	}
	long n = bpf_get_stack(ctx, st->ips, sizeof(st->ips), flags);
	if (n <= 0) {
		/* -EFAULT or 0 frames: the context has no such stack (a kernel
		 * stack of a sample taken in user mode). The caller decides
		 * whether that is a loss. */
		if (n < 0 && n != -14)
			*lost = true;
		return 0;
	}
	st->len = n / sizeof(__u64);
	__u64 h = hash_stack(st, seed);
	/* Most samples repeat a stored stack: a lockless lookup avoids the
	 * bucket lock and the 1 KiB copy of an update. */
	if (bpf_map_lookup_elem(stacks, &h))
		return h;
	long err = bpf_map_update_elem(stacks, &h, st, BPF_NOEXIST);
	if (err && err != -17 /* EEXIST: already stored */) {
		*lost = true;
		*map_full = true;
		return 0;
	}
	return h;
}

static __always_inline void notify(__u32 tgid, __u32 kind)
{
	struct ember_proc_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (e) {
		e->tgid = tgid;
		e->kind = kind;
		bpf_ringbuf_submit(e, 0);
	} else {
		stat_inc(STAT_EVENTS_LOST);
	}
}

SEC("perf_event")
int on_sample(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;

	if (tid == 0) {
		stat_inc(STAT_IDLE);
		if (!include_idle)
			return 0;
	}
	if (filter_enabled) {
		__u8 *f = bpf_map_lookup_elem(&filter, &tgid);
		if (!f || !(*f & FILTER_PROFILE))
			return 0;
	}
	stat_inc(STAT_SAMPLES);

	__u32 gen = generation & 1;
	void *counts = gen ? (void *)&counts1 : (void *)&counts0;
	void *stacks = gen ? (void *)&stacks1 : (void *)&stacks0;

	struct sample_key key;
	__builtin_memset(&key, 0, sizeof(key));
	key.tgid = tgid;
	key.tid = tid;
	bpf_get_current_comm(key.thread_comm, sizeof(key.thread_comm));
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	BPF_CORE_READ_STR_INTO(&key.comm, task, group_leader, comm);

	bool map_full = false;
	if (kernel_stacks) {
		bool lost = false;
		key.kernel_stack = capture(ctx, stacks, 0, 0x6b65726e656cULL, &lost, &map_full);
		if (lost)
			key.flags |= SAMPLE_KERNEL_LOST;
	}
	/* Kernel threads, and tasks past exit_mm(), have no user stack; that
	 * is not a loss. */
	bool user_task = BPF_CORE_READ(task, mm) != NULL;
	if (user_task) {
		bool lost = false;
		key.user_stack = capture(ctx, stacks, BPF_F_USER_STACK, 0x75736572ULL, &lost, &map_full);
		if (lost || !key.user_stack) {
			key.flags |= SAMPLE_USER_LOST;
			if (!map_full)
				stat_inc(STAT_LOST_USER_STACK);
		}
	}
	if (map_full) {
		key.flags |= SAMPLE_MAP_FULL;
		stat_inc(STAT_LOST_STACK_MAP_FULL);
	}

	__u64 *count = bpf_map_lookup_elem(counts, &key);
	if (count) {
		__sync_fetch_and_add(count, 1);
	} else {
		__u64 one = 1;
		long err = bpf_map_update_elem(counts, &key, &one, BPF_NOEXIST);
		if (err == -17) {
			count = bpf_map_lookup_elem(counts, &key);
			if (count)
				__sync_fetch_and_add(count, 1);
		} else if (err) {
			stat_inc(STAT_LOST_COUNT_MAP_FULL);
		}
	}

	/* Tell userspace about a process the first time it is seen, so it can
	 * read its memory map while the process still exists. */
	if (tgid && !bpf_map_lookup_elem(&known, &tgid)) {
		__u8 one = 1;
		bpf_map_update_elem(&known, &tgid, &one, BPF_ANY);
		notify(tgid, PROC_EVENT_NEW);
	}
	return 0;
}

/* With `-- cmd`, children of profiled processes are profiled too. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_fork, struct task_struct *parent, struct task_struct *child)
{
	if (!filter_enabled)
		return 0;
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	if (ptgid == ctgid)
		return 0; /* a new thread, already covered by its tgid */
	__u8 *f = bpf_map_lookup_elem(&filter, &ptgid);
	if (!f || !(*f & FILTER_FOLLOW))
		return 0;
	__u8 v = FILTER_PROFILE | FILTER_FOLLOW;
	bpf_map_update_elem(&filter, &ctgid, &v, BPF_ANY);
	return 0;
}

/* After exec a process maps a new image: have userspace capture it again,
 * for processes it already knows. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 tgid = BPF_CORE_READ(p, tgid);
	if (bpf_map_delete_elem(&known, &tgid) == 0)
		notify(tgid, PROC_EVENT_EXEC);
	return 0;
}

/* A process is gone: its pid may be reused by an unrelated process, which
 * must be announced again. */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *p)
{
	if (BPF_CORE_READ(p, pid) != BPF_CORE_READ(p, tgid))
		return 0; /* a thread, not the process */
	__u32 tgid = BPF_CORE_READ(p, tgid);
	bpf_map_delete_elem(&known, &tgid);
	return 0;
}
