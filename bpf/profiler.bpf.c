// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* ember's sampler: a perf_event program run on every CPU at a fixed
 * frequency. It captures kernel and user stacks, stores each distinct stack
 * once in a hash map keyed by a 64-bit hash of its frames, and counts samples
 * per (process, thread, names, stacks) in the kernel. Two generations of
 * maps let userspace drain one while the other fills.
 *
 * The same source is compiled twice (build.rs): as is, for Linux 5.17 and
 * newer, and with EMBER_COMPAT for 5.10-5.16. The compat build uses nothing
 * newer than 5.10 (tests/bpf_features.rs checks every helper, map and
 * program type against the kernel that introduced it): bounded loops over
 * global functions that keep their state in a per-CPU map instead of
 * bpf_loop callbacks (5.17) and global functions taking pointers (5.12),
 * and the user registers found at the top of the task's kernel stack
 * instead of bpf_task_pt_regs (5.15) and bpf_get_current_task_btf (5.11). */
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
/* Walk user stacks with unwind tables (else frame pointers only, via
 * bpf_get_stack). */
const volatile bool table_unwind = false;
/* Frames of a user stack walked with tables, at most EMBER_MAX_USER_DEPTH. */
const volatile __u32 max_user_depth = EMBER_MAX_USER_DEPTH;

/* Walk the frames of CPython processes userspace registered (py_procs). */
const volatile bool python = false;
/* Python frames walked per sample, at most EMBER_MAX_PY_DEPTH. */
const volatile __u32 max_py_depth = EMBER_MAX_PY_DEPTH;
/* Off-CPU time: record waits of profiled threads (on_switch). */
const volatile bool off_cpu = false;
/* Waits shorter than this are not recorded. */
const volatile __u64 off_cpu_threshold_ns = 0;
/* Record 1 wait in N (scaled by N); 1: all. */
const volatile __u32 off_cpu_sample = 1;
/* ember's own process, left out of off-CPU time. */
const volatile __u32 self_tgid = 0;
/* Threads' off-CPU states are in task storage (offcpu_task), not looked up
 * by tid: set by userspace where task storage allocates without kmalloc
 * under the runqueue lock (6.6+; never in the compat build). */
const volatile bool off_cpu_task_storage = false;
/* Where __traceiter_sched_switch is ([lo, hi); 0: unknown): the frame an
 * off-CPU kernel stack has on top when another program is attached to
 * sched_switch as well (the tracepoint then calls its probes through it). */
const volatile __u64 traceiter_lo = 0;
const volatile __u64 traceiter_hi = 0;

/* Flipped by userspace to start a new generation. */
__u32 generation = 0;
/* The recording's span for off-CPU time, set by userspace (the clock of
 * bpf_ktime_get_ns, CLOCK_MONOTONIC): [0] when it began, [1] when it ended
 * (0 while it runs). Waits are clipped to it, and none begins after it. */
__u64 offcpu_window[2] = {};
/* Set by userspace while waits it seeded (offcpu_thread) may be waiting
 * for their threads' first switch with task storage: until the
 * offcpu_adopt_seeds iterator has moved them into it, a thread with no
 * state is looked up there too. */
__u32 seeds_pending = 0;
/* Always 0, but the verifier cannot know it: the walker's frame counter
 * starts from it so the verifier treats the count as a range and checks the
 * walk step once, instead of once per frame. */
volatile __u32 walk_origin = 0;

/* Never read or written. It puts in BTF the types userspace shares with
 * this program outside any map definition (the ring-buffer message, the
 * stats indexes, flag values and limits), so the generated skeleton has
 * them and src/sample/abi.rs can check its view of them at compile time. */
struct ember_abi {
	struct ember_proc_event proc_event;
	enum ember_stat stat;
	enum sample_flag sample_flag;
	enum filter_flag filter_flag;
	enum ember_event_kind event_kind;
	enum ember_limit limit;
	enum py_kind py_kind;
	enum py_frame_flag py_frame_flag;
	struct offcpu_open offcpu_open;
} ember_abi;

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
/* Off-CPU nanoseconds per (process, thread, names, stacks). */
COUNT_MAP(offcpu0);
COUNT_MAP(offcpu1);

/* Places threads left the CPU from -> their stacks (see on_switch). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct offcpu_site);
	__type(value, struct offcpu_site_stacks);
} offcpu_sites SEC(".maps");

/* Bumped by userspace whenever it registers or forgets a Python process
 * (py_procs), so each thread's off-CPU state keeps whether its process is
 * one (offcpu_state.py) instead of looking it up at every switch. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} py_epoch SEC(".maps");

/* An off-CPU stack walk: the sites entry it makes (its key, too large for
 * the BPF stack with the walk's own) and what the last walk from the same
 * place found. */
struct offcpu_walk {
	struct offcpu_site_stacks v;
	/* The last walk from the same place: its stacks and since. */
	__u64 seen_user, seen_kernel, seen_since, seen_since_user;
	__u32 seen;        /* there was one */
	__u32 cacheable;   /* the stacks may be reused (no Python frames) */
	__u32 kernel_only; /* v.key holds the user stack already: take the kernel's */
	__u32 _pad;
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct offcpu_walk);
} offcpu_walk SEC(".maps");

/* A new thread's off-CPU state (all zero; never written: too large for
 * the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct offcpu_state);
} offcpu_blank SEC(".maps");

/* tid -> where and since when it waits (see on_switch). With
 * off_cpu_task_storage only the waits userspace seeded (threads already
 * waiting when the recording started) are here, each until the thread's
 * first switch (userspace then makes it a plain hash, allocated as used). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, __u32);
	__type(value, struct offcpu_state);
} offcpu_thread SEC(".maps");

#ifndef EMBER_COMPAT
/* Each thread's off-CPU state, kept with the thread (5.11): no look-up by
 * tid at each switch, freed with the thread (see off_cpu_task_storage). */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct offcpu_state);
} offcpu_task SEC(".maps");
#endif
STACK_MAP(stacks0);
STACK_MAP(stacks1);

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stack_trace);
} scratch SEC(".maps");

/* The user stack being walked (4 KiB per CPU). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct user_stack);
} user_scratch SEC(".maps");

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

/* One binary's page index and unwind rows (packed u64, see ember.h). Each
 * table is its own array sized to fit, so memory is exactly what is loaded
 * and is freed with the last reference. */
struct unwind_rows {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	/* Mmapable: userspace fills a table with one memcpy instead of one
	 * element update per row. */
	__uint(map_flags, BPF_F_INNER_MAP | BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, EMBER_MAX_TABLES);
	__type(key, __u32);
	__array(values, struct unwind_rows);
} unwind_tables SEC(".maps");

/* tgid -> where its executable mappings are in unwind_mappings. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct proc_unwind);
} proc_unwind SEC(".maps");

/* The mappings of every registered process, in runs userspace allocates. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EMBER_MAPPING_SLOTS);
	__type(key, __u32);
	__type(value, struct unwind_mapping);
} unwind_mappings SEC(".maps");

/* CPython layouts, one per supported version (written once at start). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EMBER_PY_LAYOUTS);
	__type(key, __u32);
	__type(value, struct py_layout);
} py_layouts SEC(".maps");

/* tgid -> its CPython runtime; written by userspace when it finds one. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct py_proc);
} py_procs SEC(".maps");

/* tid -> its PyThreadState, so the thread list is searched once per thread. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct py_thread);
} py_threads SEC(".maps");

/* One Python frame's bytes, read at once (per CPU; +8 so that a u64 read at
 * any offset below EMBER_PY_FRAME_READ stays inside). */
struct py_buf {
	__u8 b[EMBER_PY_FRAME_READ + 8];
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct py_buf);
} py_buf SEC(".maps");

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

/* The off-CPU clock and the programs' self-measured costs, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cpu_state);
} cpu_state SEC(".maps");

/* Adds a timed run to `c`: t0 and t1 are two clock reads back to back
 * (what a read costs), t2 the read after the program's work. */
static __always_inline void cost_add(struct prog_cost *c, __u64 t0, __u64 t1, __u64 t2)
{
	__u64 read = t1 - t0, span = t2 - t1;
	c->timed++;
	c->ns += span > read ? span - read : 0;
}

/* A cheap 64-bit mix; collisions between distinct stacks are ~n^2/2^65. */
static __always_inline __u64 hash_stack(const struct stack_trace *st, __u64 seed)
{
	__u64 h = seed ^ ((__u64)st->len * 0x9e3779b97f4a7c15ULL);
	h ^= st->next;
	h *= 0xff51afd7ed558ccdULL;
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

/* Which per-CPU buffer hash_buf hashes. */
#define BUF_SCRATCH 0
#define BUF_USER 1

/* The hash of the stack in one of the per-CPU buffers (the user walk's
 * buffer starts with the same header and frames as a stack_trace). A
 * global function taking no pointers: the verifier checks its loop once
 * instead of at each of the dozen places a stack is stored, which older
 * verifiers (6.1) cannot prune, and it needs nothing newer than 5.6. */
__noinline __u64 hash_buf(__u32 which, __u64 seed)
{
	__u32 zero = 0;
	if (which == BUF_USER) {
		struct user_stack *us = bpf_map_lookup_elem(&user_scratch, &zero);
		return us ? hash_stack((const struct stack_trace *)us, seed) : 1;
	}
	struct stack_trace *st = bpf_map_lookup_elem(&scratch, &zero);
	return st ? hash_stack(st, seed) : 1;
}

/* Stores the stack held in buffer `which` (st points at it) once; returns
 * its hash. */
static __always_inline __u64 store(struct stack_trace *st, __u32 which, void *stacks, __u64 seed,
				   bool *lost, bool *map_full)
{
	__u64 h = hash_buf(which, seed);
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
	/* A kernel stack taken with frames to skip (off-CPU) skips one more
	 * when it shows the tracepoint's iterator on top. */
	if (n > 0 && traceiter_lo && (flags & BPF_F_SKIP_FIELD_MASK) && !(flags & BPF_F_USER_STACK) &&
	    st->ips[0] >= traceiter_lo && st->ips[0] < traceiter_hi)
		n = bpf_get_stack(ctx, st->ips, sizeof(st->ips), flags + 1);
	if (n <= 0) {
		/* -EFAULT or 0 frames: the context has no such stack (a kernel
		 * stack of a sample taken in user mode). The caller decides
		 * whether that is a loss. */
		if (n < 0 && n != -14)
			*lost = true;
		return 0;
	}
	st->len = n / sizeof(__u64);
	st->next = 0;
	return store(st, BUF_SCRATCH, stacks, seed, lost, map_full);
}

/* Stores a walked user stack: in place when it fits one chunk (the common
 * case costs nothing more); else its chunks from the outermost in, each
 * keyed by a hash that covers the chunks above it. Returns the first
 * chunk's hash, 0 when a chunk could not be stored. */
static __always_inline __u64 store_user(struct user_stack *us, void *stacks, __u64 seed,
					bool *lost, bool *map_full)
{
	__u32 n = us->len;
	__u64 next = 0;
	if (n > EMBER_MAX_DEPTH) {
		__u32 zero = 0;
		struct stack_trace *ch = bpf_map_lookup_elem(&scratch, &zero);
		if (!ch) {
			*lost = true;
			return 0;
		}
		for (int c = EMBER_MAX_CHUNKS - 1; c >= 1; c--) {
			__u32 start = c * EMBER_MAX_DEPTH;
			if (start >= n || start >= EMBER_MAX_USER_DEPTH)
				continue;
			__u32 len = n - start;
			if (len > EMBER_MAX_DEPTH)
				len = EMBER_MAX_DEPTH;
			if (bpf_probe_read_kernel(ch->ips, sizeof(ch->ips), &us->ips[start])) {
				*lost = true;
				return 0;
			}
			ch->len = len;
			ch->next = next;
			next = store(ch, BUF_SCRATCH, stacks, seed, lost, map_full);
			if (!next)
				return 0;
		}
		us->len = EMBER_MAX_DEPTH;
	}
	us->next = next;
	__u64 h = store((struct stack_trace *)us, BUF_USER, stacks, seed, lost, map_full);
	us->len = n;
	return h;
}

static __always_inline void notify(__u32 tgid, enum ember_event_kind kind)
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

/* ---- The interrupted user registers ------------------------------------ */

#ifdef EMBER_COMPAT
/* Which of the four possible places of the saved user registers (see
 * user_regs) was right last time; races between CPUs are harmless. */
__u32 regs_guess = 0;
#endif

/* The user registers saved on kernel entry of the current task: those of
 * the interrupted user code, also when the sample hit the kernel. NULL when
 * they cannot be found (compat build only). */
static __always_inline struct pt_regs *user_regs(struct task_struct *task)
{
#ifndef EMBER_COMPAT
	return (struct pt_regs *)bpf_task_pt_regs((struct task_struct *)bpf_get_current_task_btf());
#else
	/* x86-64 saves them at the top of the task's kernel stack: THREAD_SIZE
	 * (16 KiB, 32 KiB with KASAN) above task->stack, less
	 * TOP_OF_KERNEL_STACK_PADDING (16 bytes with FRED, 6.9+; else 0).
	 * The right place is the one whose saved code and stack segments are
	 * user mode (privilege level 3). */
	__u64 base = (__u64)BPF_CORE_READ(task, stack);
	if (!base)
		return NULL;
	__u32 g = regs_guess & 3;
	for (__u32 k = 0; k < 4; k++) {
		__u32 c = (g + k) & 3;
		__u64 top = base + ((c & 1) ? 32768 : 16384) - ((c & 2) ? 16 : 0);
		struct pt_regs *r = (struct pt_regs *)(top - bpf_core_type_size(struct pt_regs));
		__u16 cs = BPF_CORE_READ(r, cs), ss = BPF_CORE_READ(r, ss);
		if ((cs & 3) == 3 && (ss & 3) == 3) {
			if (c != g)
				regs_guess = c;
			return r;
		}
	}
	return NULL;
#endif
}

/* ---- Table-driven user stack walking ---------------------------------- */

#define WALK_RUNNING 0
#define WALK_COMPLETE 1
#define WALK_DEPTH 2
#define WALK_NO_TABLE 3
#define WALK_READ 4
#define WALK_UNSUPPORTED 5

struct walk {
	__u64 pc, sp, bp;
	__u32 tgid;
	__u32 first, count; /* the process's mappings in unwind_mappings */
	__u32 n;      /* frames written to the scratch buffer */
	__u32 result; /* WALK_* */
	__u32 exact;  /* pc is where execution is, not a return address */
};

/* The row covering table pc `x`, or 0 (a GAP row) when none does. */
static __always_inline __u64 find_row(void *tbl, __u32 pages, __u64 x)
{
	__u32 page = x >> UNW_PAGE_SHIFT;
	if (page >= pages)
		return 0;
	__u64 *span = bpf_map_lookup_elem(tbl, &page);
	if (!span)
		return 0;
	/* The answer is the last row in [lo, hi] with pc <= x; row lo covers
	 * the page's start, so it qualifies. */
	__u32 lo = (__u32)*span, hi = *span >> 32;
	for (int k = 0; k < 22; k++) {
		if (lo >= hi)
			break;
		__u32 mid = lo + (hi - lo + 1) / 2;
		__u32 key = pages + mid;
		__u64 *row = bpf_map_lookup_elem(tbl, &key);
		if (!row)
			return 0;
		if ((__u32)*row <= x)
			lo = mid;
		else
			hi = mid - 1;
	}
	__u32 key = pages + lo;
	__u64 *row = bpf_map_lookup_elem(tbl, &key);
	return row ? *row : 0;
}

/* The unwind row for `pc` in a process whose mappings are the `count`
 * entries at `first`; 0 when no table covers it. A global function: the
 * verifier checks it once, on its own, rather than in every state of the
 * walk that calls it. */
__noinline __u64 lookup_row(__u32 tgid, __u32 first, __u32 count, __u64 pc)
{
	/* No clamp of `hi` to a constant here: with constant bounds the
	 * verifier walks every branch of the search separately (2^9 paths).
	 * Nine halvings cover EMBER_MAX_MAPPINGS; the lookups bound the index. */
	__u32 lo = 0, hi = count;
	for (int k = 0; k < 9; k++) {
		if (lo >= hi)
			break;
		__u32 mid = lo + (hi - lo) / 2;
		__u32 idx = first + mid;
		struct unwind_mapping *e = bpf_map_lookup_elem(&unwind_mappings, &idx);
		if (!e)
			return 0;
		if (e->start <= pc)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		goto unknown;
	__u32 idx = first + lo - 1;
	struct unwind_mapping *m = bpf_map_lookup_elem(&unwind_mappings, &idx);
	if (!m)
		return 0;
	if (pc >= m->end)
		goto unknown;
	if (!m->table)
		return 0;
	void *tbl = bpf_map_lookup_elem(&unwind_tables, &m->table);
	if (!tbl)
		return 0;
	__u64 x = pc - m->bias;
	if (x > 0xffffffffULL)
		return 0;
	return find_row(tbl, m->pages, x);
unknown:;
	/* Code outside every known mapping: a library loaded since ember read
	 * the maps. Ask once; userspace clears `stale` when it re-reads. */
	struct proc_unwind *p = bpf_map_lookup_elem(&proc_unwind, &tgid);
	if (p && !p->stale) {
		p->stale = 1;
		notify(tgid, EMBER_EVENT_MAPS);
	}
	return 0;
}

static __always_inline int read_u64(__u64 *dst, __u64 addr)
{
	return bpf_probe_read_user(dst, sizeof(*dst), (const void *)addr);
}

/* One frame: record w->pc, then step to the caller. Returns 1 to stop. */
static __always_inline int walk_frame_in(struct walk *w)
{
	__u32 zero = 0;
	struct user_stack *st = bpf_map_lookup_elem(&user_scratch, &zero);
	if (!st) {
		w->result = WALK_READ;
		return 1;
	}
	__u32 n = w->n;
	if (n >= max_user_depth || n >= EMBER_MAX_USER_DEPTH) {
		w->result = WALK_DEPTH;
		return 1;
	}
	st->ips[n] = w->pc;
	w->n = n + 1;

	/* A return address points after the call, which may be the last
	 * instruction of the function: look up the call itself. */
	__u64 row = w->count ? lookup_row(w->tgid, w->first, w->count, w->exact ? w->pc : w->pc - 1) : 0;
	__u32 cfa_type = (row >> 32) & 0xf;
	__u32 rbp_type = (row >> 36) & 0xf;
	__s64 cfa_off = (__s64)(__s16)(row >> 40) * 8;
	__s64 rbp_off = (__s64)(__s8)(row >> 56) * 8;
	__u64 cfa = 0, ra = 0, v = 0;

	switch (cfa_type) {
	case UNW_CFA_GAP: {
		/* No CFI: frame pointers. rbp == 0 is the ABI's outermost frame. */
		__u64 frame[2];
		if (w->bp == 0) {
			w->result = WALK_COMPLETE;
			return 1;
		}
		if (bpf_probe_read_user(frame, sizeof(frame), (const void *)w->bp) ||
		    (frame[0] && frame[0] <= w->bp)) {
			w->result = WALK_NO_TABLE;
			return 1;
		}
		w->sp = w->bp + 16;
		w->bp = frame[0];
		w->pc = frame[1];
		w->exact = 0;
		if (!w->pc) {
			w->result = WALK_COMPLETE;
			return 1;
		}
		return 0;
	}
	case UNW_CFA_RSP:
		cfa = w->sp + cfa_off;
		break;
	case UNW_CFA_RBP:
		cfa = w->bp + cfa_off;
		break;
	case UNW_CFA_PLT:
		cfa = w->sp + cfa_off + ((w->pc & 15) >= (__u64)(row >> 56) ? 8 : 0);
		break;
	case UNW_CFA_DEREF_RSP:
	case UNW_CFA_DEREF_RBP:
		if (read_u64(&cfa, (cfa_type == UNW_CFA_DEREF_RSP ? w->sp : w->bp) + cfa_off)) {
			w->result = WALK_READ;
			return 1;
		}
		break;
	case UNW_CFA_SIGNAL: {
		/* rsp points at the ucontext; its mcontext holds the interrupted
		 * registers (struct sigcontext: ..., rbp [10], ..., rsp [15], rip [16]). */
		__u64 regs[7];
		if (bpf_probe_read_user(regs, sizeof(regs), (const void *)(w->sp + 40 + 10 * 8))) {
			w->result = WALK_READ;
			return 1;
		}
		w->bp = regs[0];
		w->sp = regs[5];
		w->pc = regs[6];
		w->exact = 1;
		return 0;
	}
	case UNW_CFA_END:
		w->result = WALK_COMPLETE;
		return 1;
	default:
		w->result = WALK_UNSUPPORTED;
		return 1;
	}

	if (read_u64(&ra, cfa - 8)) {
		w->result = WALK_READ;
		return 1;
	}
	switch (rbp_type) {
	case UNW_RBP_CFA:
	case UNW_RBP_AT_RBP:
		if (read_u64(&v, (rbp_type == UNW_RBP_CFA ? cfa : w->bp) + rbp_off)) {
			w->result = WALK_READ;
			return 1;
		}
		w->bp = v;
		break;
	case UNW_RBP_LOST:
		w->bp = 0;
		break;
	default:
		break;
	}
	w->sp = cfa;
	w->pc = ra;
	w->exact = 0;
	if (!ra) {
		w->result = WALK_COMPLETE;
		return 1;
	}
	return 0;
}

#ifndef EMBER_COMPAT
/* Global, so the verifier checks it once instead of once per loop state. */
__noinline int walk_frame(struct walk *w)
{
	if (!w)
		return 1;
	return walk_frame_in(w);
}

static long walk_step(__u32 i, struct walk *w)
{
	return walk_frame(w) ? 1 : 0;
}
#else
/* The walk's state, per CPU: a global function cannot take a pointer to
 * the caller's stack before 5.12. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct walk);
} walk_state SEC(".maps");

/* One frame of this CPU's walk; global, checked once by the verifier. */
__noinline int walk_frame_percpu(void)
{
	__u32 zero = 0;
	struct walk *w = bpf_map_lookup_elem(&walk_state, &zero);
	if (!w)
		return 1;
	return walk_frame_in(w);
}

/* The whole walk; a global function too, so the loop is verified once per
 * program rather than once for every state of its callers. */
__noinline int walk_percpu(void)
{
	for (__u32 i = 0; i < EMBER_MAX_USER_DEPTH + 1; i++)
		if (walk_frame_percpu())
			break;
	return 0;
}
#endif

/* Walks the current task's user stack into the scratch buffer; returns
 * WALK_COMPLETE or the reason it stopped early. */
static __always_inline __u32 walk_user(struct task_struct *task, __u32 tgid, struct user_stack **out)
{
	__u32 zero = 0;
	struct user_stack *st = bpf_map_lookup_elem(&user_scratch, &zero);
	if (!st)
		return WALK_READ;
	*out = st;
	struct pt_regs *regs = user_regs(task);
	if (!regs) {
		st->len = 0;
		return WALK_READ;
	}
#ifndef EMBER_COMPAT
	struct walk w_ = {}, *w = &w_;
#else
	struct walk *w = bpf_map_lookup_elem(&walk_state, &zero);
	if (!w)
		return WALK_READ;
	__builtin_memset(w, 0, sizeof(*w));
#endif
	w->pc = BPF_CORE_READ(regs, ip);
	w->sp = BPF_CORE_READ(regs, sp);
	w->bp = BPF_CORE_READ(regs, bp);
	w->tgid = tgid;
	w->exact = 1;
	struct proc_unwind *p = bpf_map_lookup_elem(&proc_unwind, &tgid);
	if (p) {
		w->first = p->first;
		w->count = p->count;
	}
#ifndef EMBER_COMPAT
	w->n = walk_origin;
	bpf_loop(EMBER_MAX_USER_DEPTH + 1, walk_step, w, 0);
#else
	walk_percpu();
#endif
	st->len = w->n;
	return w->result == WALK_RUNNING ? WALK_DEPTH : w->result;
}

/* ---- CPython frames ----------------------------------------------------- */

#define PY_RUNNING 0
#define PY_COMPLETE 1
#define PY_DEPTH 2
#define PY_READ 3
#define PY_NOT_FOUND 4

/* Thread states searched per lookup, over all interpreters. */
#define PY_MAX_THREADS 1024
/* A thread without a thread state is looked at again after this long. */
#define PY_RECHECK_NS 500000000ULL

struct py_walk {
	__u64 cur;    /* thread search: the thread state; walk: the frame */
	__u64 interp; /* thread search: the interpreter */
	__u64 want;   /* thread search: the thread's pthread_self (fs base) */
	struct py_layout l;
	__u32 n;      /* frames written */
	__u32 result; /* PY_* */
};

static __always_inline __u64 py_field(__u64 base, __u16 off)
{
	__u64 v = 0;
	if (!base || off == 0xffff || bpf_probe_read_user(&v, sizeof(v), (const void *)(base + off)))
		return 0;
	return v;
}

/* One step of the thread-state search: the next thread state of the
 * current interpreter, or the next interpreter. */
static __always_inline long py_thread_step(__u32 i, struct py_walk *w)
{
	if (!w->cur) {
		w->interp = py_field(w->interp, w->l.interp_next);
		if (!w->interp) {
			w->result = PY_NOT_FOUND;
			return 1;
		}
		w->cur = py_field(w->interp, w->l.interp_threads);
		return 0;
	}
	if (py_field(w->cur, w->l.tstate_thread_id) == w->want) {
		w->result = PY_COMPLETE;
		return 1;
	}
	w->cur = py_field(w->cur, w->l.tstate_next);
	return 0;
}

#ifdef EMBER_COMPAT
/* The Python walk's state, per CPU (see walk_state). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct py_walk);
} py_state SEC(".maps");

__noinline int py_thread_percpu(void)
{
	__u32 zero = 0;
	struct py_walk *w = bpf_map_lookup_elem(&py_state, &zero);
	return w ? py_thread_step(0, w) : 1;
}

/* The thread-state search (see walk_percpu). */
__noinline int py_threads_percpu(void)
{
	for (__u32 i = 0; i < PY_MAX_THREADS; i++)
		if (py_thread_percpu())
			break;
	return 0;
}
#endif

static __always_inline __u64 py_u64(struct py_buf *buf, __u16 off)
{
	__u32 o = off & (EMBER_PY_FRAME_READ - 1);
	return *(__u64 *)&buf->b[o];
}

/* One Python frame: record (code, instruction | flags) and step to the
 * caller. Entry shims (owner FRAME_OWNED_BY_CSTACK) are not frames: they
 * mark the frame below them as the outermost of its native eval call. */
static __always_inline long py_frame_step(__u32 i, struct py_walk *w)
{
	__u32 zero = 0;
	if (!w->cur) {
		w->result = PY_COMPLETE;
		return 1;
	}
	struct py_buf *buf = bpf_map_lookup_elem(&py_buf, &zero);
	struct user_stack *st = bpf_map_lookup_elem(&user_scratch, &zero);
	if (!buf || !st) {
		w->result = PY_READ;
		return 1;
	}
	__u32 size = w->l.frame_read;
	if (size > EMBER_PY_FRAME_READ)
		size = EMBER_PY_FRAME_READ;
	if (size < 8 || bpf_probe_read_user(buf->b, size, (const void *)w->cur)) {
		w->result = PY_READ;
		return 1;
	}
	__u64 code = py_u64(buf, w->l.frame_code);
	__u64 prev = py_u64(buf, w->l.frame_previous);
	__u32 n = w->n;
	__u64 flags = 0, instr;
	if (w->l.kind == PY_KIND_INTERP_FRAME) {
		if (w->l.frame_owner != 0xffff &&
		    buf->b[w->l.frame_owner & (EMBER_PY_FRAME_READ - 1)] == 3) {
			if (n > 0 && n <= EMBER_MAX_PY_DEPTH) {
				/* The mask bounds the index for the verifier
				 * (2 * EMBER_MAX_PY_DEPTH words fit the buffer). */
				__u32 k = (2 * (n - 1) + 1) & (2 * EMBER_MAX_PY_DEPTH - 1);
				st->ips[k] |= (__u64)PY_FRAME_ENTRY << 32;
			}
			w->cur = prev;
			return 0;
		}
		instr = (__u32)(py_u64(buf, w->l.frame_instr) - code);
		if (w->l.frame_is_entry != 0xffff &&
		    buf->b[w->l.frame_is_entry & (EMBER_PY_FRAME_READ - 1)])
			flags = PY_FRAME_ENTRY;
	} else {
		instr = (__u32)py_u64(buf, w->l.frame_instr);
		flags = PY_FRAME_ENTRY;
	}
	if (n >= max_py_depth || n >= EMBER_MAX_PY_DEPTH) {
		w->result = PY_DEPTH;
		return 1;
	}
	__u32 k = (2 * n) & (2 * EMBER_MAX_PY_DEPTH - 2);
	st->ips[k] = code;
	st->ips[k + 1] = instr | (flags << 32);
	w->n = n + 1;
	w->cur = prev;
	return 0;
}

#ifndef EMBER_COMPAT
static long py_thread_cb(__u32 i, struct py_walk *w)
{
	return py_thread_step(i, w);
}

static long py_frame_cb(__u32 i, struct py_walk *w)
{
	return py_frame_step(i, w);
}
#else
__noinline int py_frame_percpu(void)
{
	__u32 zero = 0;
	struct py_walk *w = bpf_map_lookup_elem(&py_state, &zero);
	return w ? py_frame_step(0, w) : 1;
}

/* The frame walk (see walk_percpu). */
__noinline int py_frames_percpu(void)
{
	for (__u32 i = 0; i < EMBER_MAX_PY_DEPTH + 64; i++)
		if (py_frame_percpu())
			break;
	return 0;
}
#endif

/* Walks the Python frames of the current thread into the user scratch
 * buffer (the user stack is stored already) and stores them; returns their
 * hash, 0 when the thread has none. */
static __always_inline __u64 walk_python(struct task_struct *task, __u32 tid, struct py_proc *pp,
					 void *stacks, __u32 *flags, bool *map_full)
{
	__u32 zero = 0;
	__u32 li = pp->layout;
	struct py_layout *l = bpf_map_lookup_elem(&py_layouts, &li);
	struct user_stack *st = bpf_map_lookup_elem(&user_scratch, &zero);
	if (!l || !st)
		return 0;
#ifndef EMBER_COMPAT
	struct py_walk w_ = {}, *w = &w_;
#else
	struct py_walk *w = bpf_map_lookup_elem(&py_state, &zero);
	if (!w)
		return 0;
	__builtin_memset(w, 0, sizeof(*w));
#endif
	w->l = *l;
	w->want = BPF_CORE_READ(task, thread.fsbase);
	__u64 now = bpf_ktime_get_ns();

	/* The thread's state: as found before, if it still names this thread. */
	__u64 tstate = 0;
	struct py_thread *pt = bpf_map_lookup_elem(&py_threads, &tid);
	if (pt && pt->tstate && py_field(pt->tstate, w->l.tstate_thread_id) == w->want) {
		tstate = pt->tstate;
	} else if (pt && !pt->tstate && now - pt->checked < PY_RECHECK_NS) {
		stat_inc(STAT_PY_NO_THREAD);
		return 0;
	} else {
		w->interp = py_field(pp->interp_head, 0);
		w->cur = py_field(w->interp, w->l.interp_threads);
		if (w->interp) {
#ifndef EMBER_COMPAT
			bpf_loop(PY_MAX_THREADS, py_thread_cb, w, 0);
#else
			py_threads_percpu();
#endif
		}
		if (w->result == PY_COMPLETE)
			tstate = w->cur;
		struct py_thread v = {.tstate = tstate, .checked = now};
		bpf_map_update_elem(&py_threads, &tid, &v, BPF_ANY);
	}
	if (!tstate) {
		stat_inc(STAT_PY_NO_THREAD);
		return 0;
	}

	__u64 frame = py_field(tstate, w->l.tstate_frame);
	if (w->l.cframe_frame != 0xffff)
		frame = py_field(frame, w->l.cframe_frame);
	if (!frame)
		return 0; /* a Python thread running no Python code now */
	w->cur = frame;
	w->result = PY_RUNNING;
#ifndef EMBER_COMPAT
	w->n = walk_origin;
	bpf_loop(EMBER_MAX_PY_DEPTH + 64, py_frame_cb, w, 0);
#else
	w->n = 0;
	py_frames_percpu();
#endif
	stat_inc(STAT_PY_STACKS);
	if (w->result == PY_READ)
		stat_inc(STAT_PY_READ);
	if (w->result == PY_DEPTH || w->result == PY_RUNNING)
		stat_inc(STAT_PY_DEPTH);
	if (w->result != PY_COMPLETE)
		*flags |= SAMPLE_PY_TRUNCATED;
	if (!w->n)
		return 0;
	st->len = 2 * w->n;
	bool lost = false;
	__u64 h = store_user(st, stacks, 0x707974686f6eULL, &lost, map_full);
	if (!h)
		stat_inc(STAT_PY_LOST);
	return h;
}

/* Fills `key` with the current task's names and stacks (kernel, user,
 * Python), as the sampler and the off-CPU recorder both need them. `ctx` is
 * the program's context, for bpf_get_stack. */
static __always_inline void capture_key(void *ctx, struct sample_key *key, void *stacks, __u32 tgid,
					__u32 tid, __u64 kernel_skip)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->tgid = tgid;
	key->tid = tid;
	bpf_get_current_comm(key->thread_comm, sizeof(key->thread_comm));
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	BPF_CORE_READ_STR_INTO(&key->comm, task, group_leader, comm);

	bool map_full = false;
	if (kernel_stacks) {
		bool lost = false;
		key->kernel_stack = capture(ctx, stacks, kernel_skip & BPF_F_SKIP_FIELD_MASK,
					    0x6b65726e656cULL, &lost, &map_full);
		if (lost)
			key->flags |= SAMPLE_KERNEL_LOST;
	}
	/* Kernel threads, and tasks past exit_mm(), have no user stack; that
	 * is not a loss. */
	bool user_task = BPF_CORE_READ(task, mm) != NULL;
	if (user_task && table_unwind) {
		struct user_stack *st = NULL;
		__u32 r = walk_user(task, tgid, &st);
		stat_inc(STAT_UNWIND_STACKS);
		if (r == WALK_COMPLETE)
			stat_inc(STAT_UNWIND_COMPLETE);
		else {
			key->flags |= SAMPLE_TRUNCATED;
			stat_inc(r == WALK_DEPTH	      ? STAT_TRUNC_DEPTH
				 : r == WALK_NO_TABLE	      ? STAT_TRUNC_NO_TABLE
				 : r == WALK_UNSUPPORTED ? STAT_TRUNC_UNSUPPORTED
							      : STAT_TRUNC_READ);
		}
		bool lost = false;
		if (st && st->len)
			key->user_stack = store_user(st, stacks, 0x75736572ULL, &lost, &map_full);
		if (lost || !key->user_stack)
			key->flags |= SAMPLE_USER_LOST;
	} else if (user_task) {
		bool lost = false;
		key->user_stack = capture(ctx, stacks, BPF_F_USER_STACK, 0x75736572ULL, &lost, &map_full);
		stat_inc(STAT_UNWIND_STACKS);
		if (key->user_stack) {
			/* Frame pointers cannot tell a complete stack from one cut
			 * short, except at the depth limit. */
			__u32 zero = 0;
			struct stack_trace *st = bpf_map_lookup_elem(&scratch, &zero);
			if (st && st->len >= EMBER_MAX_DEPTH) {
				key->flags |= SAMPLE_TRUNCATED;
				stat_inc(STAT_TRUNC_DEPTH);
			} else {
				stat_inc(STAT_UNWIND_COMPLETE);
			}
		}
		if (lost || !key->user_stack)
			key->flags |= SAMPLE_USER_LOST;
	}
	/* After the user stack is stored: the Python walk reuses its buffer. */
	if (python && user_task) {
		struct py_proc *pp = bpf_map_lookup_elem(&py_procs, &tgid);
		if (pp)
			key->py_stack = walk_python(task, tid, pp, stacks, &key->flags, &map_full);
	}
	if (map_full)
		key->flags |= SAMPLE_MAP_FULL;
}

/* Adds `v` to the count of `key`; false when the map is full. */
static __always_inline bool add_count(void *counts, struct sample_key *key, __u64 v)
{
	__u64 *count = bpf_map_lookup_elem(counts, key);
	if (count) {
		__sync_fetch_and_add(count, v);
		return true;
	}
	long err = bpf_map_update_elem(counts, key, &v, BPF_NOEXIST);
	if (err == -17) {
		count = bpf_map_lookup_elem(counts, key);
		if (count)
			__sync_fetch_and_add(count, v);
		return true;
	}
	return err == 0;
}

/* Tell userspace about a process the first time it is seen, so it can read
 * its memory map while the process still exists. */
static __always_inline void announce(__u32 tgid)
{
	if (tgid && !bpf_map_lookup_elem(&known, &tgid)) {
		__u8 one = 1;
		bpf_map_update_elem(&known, &tgid, &one, BPF_ANY);
		notify(tgid, EMBER_EVENT_NEW);
	}
}

static __always_inline bool profiled(__u32 tgid)
{
	if (!filter_enabled)
		return true;
	__u8 *f = bpf_map_lookup_elem(&filter, &tgid);
	return f && (*f & FILTER_PROFILE);
}

static __always_inline void sample(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;

	if (tid == 0) {
		stat_inc(STAT_IDLE);
		if (!include_idle)
			return;
	}
	if (!profiled(tgid))
		return;
	stat_inc(STAT_SAMPLES);

	__u32 gen = generation & 1;
	void *counts = gen ? (void *)&counts1 : (void *)&counts0;
	void *stacks = gen ? (void *)&stacks1 : (void *)&stacks0;

	struct sample_key key;
	capture_key(ctx, &key, stacks, tgid, tid, 0);
	if (!add_count(counts, &key, 1)) {
		stat_inc(STAT_LOST_COUNT_MAP_FULL);
	} else if (key.flags & SAMPLE_MAP_FULL) {
		/* Counted only for samples kept: one whose stacks were lost
		 * and then dropped whole counts as dropped only. */
		stat_inc(STAT_LOST_STACK_MAP_FULL);
	} else if (key.flags & SAMPLE_USER_LOST) {
		stat_inc(STAT_LOST_USER_STACK);
	}
	announce(tgid);
}

SEC("perf_event")
int on_sample(struct bpf_perf_event_data *ctx)
{
	/* Every sample times itself: they are few (frequency x CPUs). */
	__u64 t0 = bpf_ktime_get_ns(), t1 = bpf_ktime_get_ns();
	sample(ctx);
	__u64 t2 = bpf_ktime_get_ns();
	__u32 zero = 0;
	struct cpu_state *cs = bpf_map_lookup_elem(&cpu_state, &zero);
	if (cs) {
		cs->sample.runs++;
		cost_add(&cs->sample, t0, t1, t2);
	}
	return 0;
}

/* ---- Off-CPU time ---------------------------------------------------------
 * sched_switch runs in the context of the thread leaving the CPU: there its
 * stacks (the same unwinder and stack store as the sampler's) and the time
 * are noted per thread. When the thread is switched back in, the time it
 * waited is added to the off-CPU count of those stacks. A thread that
 * leaves the CPU again from the same place (same user registers and system
 * call, as a thread in a loop of reads or futex waits does) reuses the
 * stacks found last time, so a context-switch storm costs a few map
 * operations per switch, not a stack walk. */

#define PF_KTHREAD 0x00200000
/* The shortest time stacks that two walks agreed on are reused before a
 * walk checks them again. */
#define OFFCPU_RECHECK_NS 1000000ULL

/* task_struct.__state was task_struct.state before 5.14. */
struct task_struct___pre514 {
	long state;
} __attribute__((preserve_access_index));

/* Whether `t` is not runnable (TASK_RUNNING is 0). */
static __always_inline bool task_blocked(struct task_struct *t)
{
	if (bpf_core_field_exists(t->__state))
		return t->__state != 0;
	return ((struct task_struct___pre514 *)t)->state != 0;
}

/* Where `prev` leaves the CPU from: its system call and user registers
 * (those saved on kernel entry), and how it leaves. prev is a BTF pointer
 * (a tp_btf argument), so its fields are plain loads, not helper calls. */
static __always_inline void switch_site(struct task_struct *prev, bool preempt,
					struct offcpu_site *site)
{
#ifndef EMBER_COMPAT
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(prev);
	site->nr = (__u32)regs->orig_ax;
	site->ip = regs->ip;
	site->sp = regs->sp;
	site->bp = regs->bp;
#else
	/* No bpf_task_pt_regs (5.15): found at the top of the kernel stack
	 * (see user_regs; prev is the current task). */
	struct pt_regs *regs = user_regs(prev);
	site->nr = (__u32)BPF_CORE_READ(regs, orig_ax);
	site->ip = BPF_CORE_READ(regs, ip);
	site->sp = BPF_CORE_READ(regs, sp);
	site->bp = BPF_CORE_READ(regs, bp);
#endif
	site->how = preempt ? OFFCPU_PREEMPTED : task_blocked(prev) ? OFFCPU_BLOCKED : 0;
}

/* Whether a walk from thread `tid` (state `st`, process `tgid`) would walk
 * Python frames, which change under the same native registers. Whether the
 * process is a registered Python one is looked up in py_procs once per
 * py_epoch, not at every switch. A thread of one found without a Python
 * thread state lately has none (walk_python itself looks again only after
 * PY_RECHECK_NS): its stacks are reused like any other's. */
static __always_inline bool python_thread(struct offcpu_state *st, __u32 tgid, __u32 tid,
					  __u64 now)
{
	if (!python)
		return false;
	__u32 zero = 0;
	__u32 *e = bpf_map_lookup_elem(&py_epoch, &zero);
	__u32 tag = ((e ? *e : 0) + 1) << 1;
	if ((st->py & ~1U) != tag)
		st->py = tag | (bpf_map_lookup_elem(&py_procs, &tgid) ? 1 : 0);
	if (!(st->py & 1) || now < st->py_quiet)
		return false;
	struct py_thread *pt = bpf_map_lookup_elem(&py_threads, &tid);
	if (pt && !pt->tstate && now - pt->checked < PY_RECHECK_NS) {
		st->py_quiet = pt->checked + PY_RECHECK_NS;
		return false;
	}
	return true;
}

/* The off-CPU state of thread `t` (id `tid`); NULL if it has none. */
static __always_inline struct offcpu_state *offcpu_state_of(struct task_struct *t, __u32 tid)
{
#ifndef EMBER_COMPAT
	if (off_cpu_task_storage)
		return bpf_task_storage_get(&offcpu_task, t, 0, 0);
#endif
	return bpf_map_lookup_elem(&offcpu_thread, &tid);
}

/* The off-CPU state of thread `t` (id `tid`), made if it has none; NULL
 * when that failed. */
static __always_inline struct offcpu_state *offcpu_state_new(struct task_struct *t, __u32 tid)
{
	struct offcpu_state *st = offcpu_state_of(t, tid);
	if (st)
		return st;
#ifndef EMBER_COMPAT
	if (off_cpu_task_storage) {
		/* A wait seeded for it ended unseen (it ran when seeded). */
		bpf_map_delete_elem(&offcpu_thread, &tid);
		return bpf_task_storage_get(&offcpu_task, t, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	}
#endif
	__u32 zero = 0;
	struct offcpu_state *blank = bpf_map_lookup_elem(&offcpu_blank, &zero);
	if (blank)
		bpf_map_update_elem(&offcpu_thread, &tid, blank, BPF_NOEXIST);
	return bpf_map_lookup_elem(&offcpu_thread, &tid);
}

/* How long the runqueue's clock is taken as is before it is set against
 * bpf_ktime_get_ns() again on a CPU. */
#define CLOCK_RESYNC_NS 8000000ULL

/* The time of this switch in bpf_ktime_get_ns()'s clock (CLOCK_MONOTONIC).
 * Reading that clock costs as much as a third of the rest of the program
 * (a fifth of a microsecond per switch on a VM), so the switch's time is
 * the runqueue's clock instead, which __schedule has just updated: a few
 * loads. It is sched_clock's, set against CLOCK_MONOTONIC per CPU every
 * CLOCK_RESYNC_NS (so it agrees across CPUs even where sched_clock is not
 * synchronised, and drifts by at most the clocks' rate difference over
 * 8 ms). Without the field (no CONFIG_FAIR_GROUP_SCHED) the clock is read. */
static __always_inline __u64 switch_clock(struct task_struct *prev, struct cpu_state *cs)
{
	if (!bpf_core_field_exists(prev->se.cfs_rq))
		return bpf_ktime_get_ns();
	struct cfs_rq *cfs = prev->se.cfs_rq;
	__u64 c = cfs ? cfs->rq->clock : 0;
	if (!c)
		return bpf_ktime_get_ns();
	if (!cs->rq_at || c - cs->rq_at > CLOCK_RESYNC_NS) {
		cs->offset = bpf_ktime_get_ns() - c;
		cs->rq_at = c;
	}
	return c + cs->offset;
}

/* The wait noted in `st` ends now: its time is added to its key's count. */
static __always_inline void end_wait(struct offcpu_state *st, __u64 now, __u32 gen)
{
	if (!st->since)
		return;
	__u64 from = st->since > offcpu_window[0] ? st->since : offcpu_window[0];
	__u64 to = offcpu_window[1] && offcpu_window[1] < now ? offcpu_window[1] : now;
	__u64 d = to > from ? to - from : 0;
	st->since = 0;
	if (d < off_cpu_threshold_ns) {
		stat_inc(STAT_OFFCPU_SHORT);
		return;
	}
	d *= st->weight ? st->weight : 1;
	void *counts = gen ? (void *)&offcpu1 : (void *)&offcpu0;
	struct offcpu_memo *m = &st->memo[st->cur & (EMBER_OFFCPU_MEMO - 1)];
	if (add_count(counts, &m->key, d))
		stat_inc(STAT_OFFCPU_WAITS);
	else
		stat_inc(STAT_OFFCPU_DROPPED);
}

/* `next` comes back on the CPU: the wait it noted ends now. */
static __always_inline void off_cpu_in(struct task_struct *next, __u64 now, __u32 gen)
{
	__u32 tid = next->pid;
	/* The idle task and kernel threads are never noted as waiting. */
	if (!tid || (next->flags & PF_KTHREAD))
		return;
	struct offcpu_state *st = offcpu_state_of(next, tid);
	if (st) {
		end_wait(st, now, gen);
		return;
	}
	if (!off_cpu_task_storage || !seeds_pending)
		return;
	/* A thread with no state yet may have a wait userspace seeded. */
	st = bpf_map_lookup_elem(&offcpu_thread, &tid);
	if (st) {
		end_wait(st, now, gen);
		bpf_map_delete_elem(&offcpu_thread, &tid);
	}
}

/* One context switch, at `now`: `next` ends its wait, `prev` starts one. */
static __always_inline void switch_to(void *ctx, bool preempt, struct task_struct *prev,
				      struct task_struct *next, __u64 now)
{
	__u32 gen = generation & 1;
	off_cpu_in(next, now, gen);
	if (offcpu_window[1])
		return; /* the recording ended: no new wait */

	/* prev is the current task: note where it waits. */
	__u32 tid = prev->pid, tgid = prev->tgid;
	if (tid == 0 || tgid == self_tgid)
		return;
	if (!prev->mm || (prev->flags & PF_KTHREAD))
		return;
	if (!profiled(tgid))
		return;
	__u32 weight = 1;
	if (off_cpu_sample > 1) {
		if (bpf_get_prandom_u32() % off_cpu_sample) {
			stat_inc(STAT_OFFCPU_SAMPLED_OUT);
			return;
		}
		weight = off_cpu_sample;
	}
	struct offcpu_state *st = offcpu_state_new(prev, tid);
	if (!st) {
		stat_inc(STAT_OFFCPU_DROPPED);
		return;
	}
	struct offcpu_site site = {.tid = tid};
	switch_site(prev, preempt, &site);
	/* Python frames change under the same native registers: walked always. */
	bool cacheable = !python_thread(st, tgid, tid, now);
	__u32 want = gen + 1;
	/* A place it left from lately: its key is in the memo already. */
	if (cacheable) {
		for (__u32 i = 0; i < EMBER_OFFCPU_MEMO; i++) {
			struct offcpu_memo *m = &st->memo[i];
			if (m->gen == want && now < m->until && m->ip == site.ip && m->sp == site.sp &&
			    m->bp == site.bp && m->nr == site.nr && m->how == site.how) {
				st->cur = i;
				st->weight = weight;
				st->since = now;
				return;
			}
		}
	}
	/* Else the entry after the one used last takes this wait's key. */
	__u32 cur = (st->cur + 1) & (EMBER_OFFCPU_MEMO - 1);
	struct offcpu_memo *m = &st->memo[cur];
	m->ip = site.ip;
	m->sp = site.sp;
	m->bp = site.bp;
	m->nr = site.nr;
	m->how = site.how;
	struct offcpu_site_stacks *ss = cacheable ? bpf_map_lookup_elem(&offcpu_sites, &site) : NULL;
	if (ss && ss->gen == want && (ss->stable & OFFCPU_STABLE_ALL) && now < ss->until) {
		m->key = ss->key;
		m->gen = want;
		m->until = ss->until;
	} else {
		__u32 zero = 0;
		struct offcpu_walk *w = bpf_map_lookup_elem(&offcpu_walk, &zero);
		if (!w) {
			stat_inc(STAT_OFFCPU_DROPPED);
			return;
		}
		/* What decides whether this walk's stacks may be reused, kept in
		 * map memory rather than registers: the verifier then sees one
		 * state at the walk instead of one per way here (a third of the
		 * program's verification each). */
		w->cacheable = cacheable;
		w->seen = ss != NULL;
		w->seen_user = ss ? ss->key.user_stack : 0;
		w->seen_kernel = ss ? ss->key.kernel_stack : 0;
		w->seen_since = ss ? ss->since : 0;
		w->seen_since_user = ss ? ss->since_user : 0;
		/* The user stack alone agreed lately (this generation): it is
		 * reused and only the kernel stack is taken. */
		w->kernel_only = ss && ss->gen == want && (ss->stable & OFFCPU_STABLE_USER) &&
				 now < ss->until_user;
		if (w->kernel_only)
			w->v.key = ss->key;
		void *stacks = gen ? (void *)&stacks1 : (void *)&stacks0;
		if (w->kernel_only) {
			bool lost = false, map_full = false;
			/* Skipped: this program and bpf_trace_run, called by __schedule. */
			w->v.key.kernel_stack =
				kernel_stacks ? capture(ctx, stacks, 2, 0x6b65726e656cULL, &lost, &map_full) : 0;
			w->v.key.flags &= ~(SAMPLE_KERNEL_LOST | SAMPLE_MAP_FULL);
			if (lost)
				w->v.key.flags |= SAMPLE_KERNEL_LOST;
			if (map_full)
				w->v.key.flags |= SAMPLE_MAP_FULL;
		} else {
			capture_key(ctx, &w->v.key, stacks, tgid, tid, 2);
		}
		stat_inc(STAT_OFFCPU_WALKS);
		announce(tgid);
		/* Reused once two walks from here agree (in any generation: a
		 * stack's hash is its frames'), for as long again as walks from
		 * here have agreed, at least OFFCPU_RECHECK_NS: the whole key
		 * when both stacks agree, the user stack when it alone does. */
		bool whole = !(w->v.key.flags & (SAMPLE_USER_LOST | SAMPLE_KERNEL_LOST | SAMPLE_MAP_FULL));
		bool user = w->cacheable && w->seen && w->seen_user == w->v.key.user_stack &&
			    !(w->v.key.flags & (SAMPLE_USER_LOST | SAMPLE_MAP_FULL));
		bool agree = user && whole && w->seen_kernel == w->v.key.kernel_stack;
		w->v.gen = want;
		w->v.stable = (agree ? OFFCPU_STABLE_ALL : 0) | (user ? OFFCPU_STABLE_USER : 0);
		w->v.since = agree ? w->seen_since : now;
		__u64 age = now - w->v.since;
		w->v.until = agree ? now + (age > OFFCPU_RECHECK_NS ? age : OFFCPU_RECHECK_NS) : 0;
		w->v.since_user = user ? w->seen_since_user : now;
		age = now - w->v.since_user;
		w->v.until_user = user ? now + (age > OFFCPU_RECHECK_NS ? age : OFFCPU_RECHECK_NS) : 0;
		m->key = w->v.key;
		m->gen = agree ? want : 0;
		m->until = w->v.until;
		if (w->cacheable)
			bpf_map_update_elem(&offcpu_sites, &site, &w->v, BPF_ANY);
	}
	st->cur = cur;
	st->weight = weight;
	st->since = now;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(on_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u32 zero = 0;
	struct cpu_state *cs = bpf_map_lookup_elem(&cpu_state, &zero);
	if (!cs)
		return 0;
	__u64 now = switch_clock(prev, cs);
	cs->sw.runs++;
	/* About one run in 64 (by the clock's bits) times itself. The clock
	 * reads are kept in cs, not registers: the verifier then sees the work
	 * once, not once timed and once not. */
	cs->t0 = 0;
	if (((now * 0x9E3779B97F4A7C15ULL) >> 58) == 0) {
		cs->t0 = bpf_ktime_get_ns();
		cs->t1 = bpf_ktime_get_ns();
	}
	switch_to(ctx, preempt, prev, next, now);
	if (cs->t0)
		cost_add(&cs->sw, cs->t0, cs->t1, bpf_ktime_get_ns());
	return 0;
}

#ifndef EMBER_COMPAT
/* The waits still going on, for userspace when a recording ends with
 * threads' states in task storage (which has no keys to list): one
 * offcpu_open per waiting thread, run through an iterator link. */
SEC("iter/task")
int offcpu_open_waits(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task;
	if (!task)
		return 0;
	__u32 tid = task->pid;
	struct offcpu_state *st = offcpu_state_of(task, tid);
	if (!st)
		st = bpf_map_lookup_elem(&offcpu_thread, &tid); /* seeded, not switched since */
	if (!st || !st->since)
		return 0;
	struct offcpu_open o = {.since = st->since, .weight = st->weight ? st->weight : 1};
	o.key = st->memo[st->cur & (EMBER_OFFCPU_MEMO - 1)].key;
	bpf_seq_write(ctx->meta->seq, &o, sizeof(o));
	return 0;
}

/* Moves the waits userspace seeded into the threads' task storage, so
 * that a switch of a thread with no state need not look in offcpu_thread
 * (seeds_pending is cleared after this runs). A thread that switched
 * since has a state of its own, and its seed has ended. */
SEC("iter/task")
int offcpu_adopt_seeds(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task;
	if (!task)
		return 0;
	__u32 tid = task->pid;
	struct offcpu_state *seed = bpf_map_lookup_elem(&offcpu_thread, &tid);
	if (!seed)
		return 0;
	if (!bpf_task_storage_get(&offcpu_task, task, 0, 0))
		bpf_task_storage_get(&offcpu_task, task, seed, BPF_LOCAL_STORAGE_GET_F_CREATE);
	bpf_map_delete_elem(&offcpu_thread, &tid);
	return 0;
}
#endif

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
	/* The old image's mappings are gone: frame pointers until userspace
	 * loads the new ones. */
	bpf_map_delete_elem(&proc_unwind, &tgid);
	bpf_map_delete_elem(&py_procs, &tgid);
	if (bpf_map_delete_elem(&known, &tgid) == 0)
		notify(tgid, EMBER_EVENT_EXEC);
	return 0;
}

/* A process is gone: its pid may be reused by an unrelated process, which
 * must be announced again. */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *p)
{
	__u32 pid = BPF_CORE_READ(p, pid);
	/* A new thread may get this id: its thread state is its own. */
	if (python)
		bpf_map_delete_elem(&py_threads, &pid);
	if (off_cpu)
		bpf_map_delete_elem(&offcpu_thread, &pid);
	if (pid != BPF_CORE_READ(p, tgid))
		return 0; /* a thread, not the process */
	__u32 tgid = BPF_CORE_READ(p, tgid);
	bpf_map_delete_elem(&known, &tgid);
	bpf_map_delete_elem(&proc_unwind, &tgid);
	bpf_map_delete_elem(&py_procs, &tgid);
	return 0;
}
