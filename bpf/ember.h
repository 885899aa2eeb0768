/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Types shared between the BPF sampler and userspace (src/sample/). Keep them
 * small, naturally aligned and free of implicit padding: a hash key with
 * uninitialised padding silently splits counts. */
#ifndef EMBER_H
#define EMBER_H

/* What userspace reads or writes is a type or an enum here, not a #define:
 * the types reach BTF (through a map definition, or the ember_abi anchor in
 * profiler.bpf.c), libbpf-cargo generates Rust types from that BTF, and
 * src/sample/abi.rs checks its view against them when it is compiled, so a
 * layout change here fails the build instead of corrupting data. (The
 * packed unwind row, UNW_* below, is still mirrored by hand in
 * src/unwind/table.rs.) */

enum ember_limit {
	EMBER_COMM_LEN = 16,
	/* Frames per stored stack chunk: the kernel's default
	 * kernel.perf_event_max_stack, also the most bpf_get_stack gives. */
	EMBER_MAX_DEPTH = 127,
	/* Frames of a user stack walked with unwind tables (deeper stacks are
	 * stored as a chain of chunks, see stack_trace.next). */
	EMBER_MAX_USER_DEPTH = 512,
	/* Chunks of the deepest user stack: ceil(512 / 127). */
	EMBER_MAX_CHUNKS = 5,
	/* Executable mappings registered per process (see unwind_mapping). */
	EMBER_MAX_MAPPINGS = 256,
	/* Entries of the unwind_mappings array, shared by all processes. */
	EMBER_MAPPING_SLOTS = 65536,
	/* Entries of the unwind_tables array; id 0 means "no table". */
	EMBER_MAX_TABLES = 4096,
	/* Python frames walked per sample; each takes two words of a
	 * user_stack (code object, instruction | PY_FRAME_* << 32). */
	EMBER_MAX_PY_DEPTH = 256,
	/* CPython structure layouts userspace may describe (py_layouts). */
	EMBER_PY_LAYOUTS = 16,
	/* Bytes of a Python frame read at once (py_buf). */
	EMBER_PY_FRAME_READ = 128,
	/* Places a thread left the CPU from that its off-CPU state keeps with
	 * their keys (offcpu_state.memo; a power of two). */
	EMBER_OFFCPU_MEMO = 2,
};

/* sample_key.flags */
enum sample_flag {
	SAMPLE_USER_LOST = 1,   /* user stack could not be read or stored */
	SAMPLE_KERNEL_LOST = 2, /* kernel stack could not be stored */
	SAMPLE_MAP_FULL = 4,    /* ...because the stack map was full */
	SAMPLE_TRUNCATED = 8,   /* the user stack walk stopped before the end */
	SAMPLE_PY_TRUNCATED = 16, /* the Python frame walk stopped before the end */
};

/* filter map values */
enum filter_flag {
	FILTER_PROFILE = 1, /* samples of this tgid are recorded */
	FILTER_FOLLOW = 2,  /* processes forked by this tgid are added */
};

/* One aggregation bucket: what the profile needs per sample. */
struct sample_key {
	__u32 tgid;
	__u32 tid;
	__u64 user_stack;   /* hash key into the stack map; 0 = none */
	__u64 kernel_stack; /* hash key into the stack map; 0 = none */
	__u64 py_stack;     /* Python frames (see py_layout), hash key; 0 = none */
	__u32 flags;        /* SAMPLE_* */
	__u32 _pad;
	char comm[EMBER_COMM_LEN];        /* process (group leader) name */
	char thread_comm[EMBER_COMM_LEN]; /* thread name */
};

/* One captured stack, or one chunk of a deep one: innermost frame first.
 * `next` is the hash key of the chunk with the frames above these (0 for
 * the outermost); it is part of this chunk's hash, so the first chunk's
 * key names the whole stack. */
struct stack_trace {
	__u32 len;
	__u32 _pad;
	__u64 next;
	__u64 ips[EMBER_MAX_DEPTH];
};

/* A user stack being walked: the layout of stack_trace up to its frames,
 * with room for whole chunks past EMBER_MAX_USER_DEPTH (so each is copied
 * at a constant size); its first EMBER_MAX_DEPTH frames are stored in
 * place as the first chunk. */
struct user_stack {
	__u32 len;
	__u32 _pad;
	__u64 next;
	__u64 ips[EMBER_MAX_CHUNKS * EMBER_MAX_DEPTH];
};

/* Indexes of the per-CPU stats array. Userspace names, documents and
 * exports each one in a single table (src/sample/stats.rs), which the
 * build checks against this enum. */
enum ember_stat {
	STAT_SAMPLES = 0,         /* samples of profiled tasks, recorded or not */
	STAT_IDLE,                /* samples on an idle CPU (not recorded) */
	STAT_LOST_USER_STACK,     /* user stack unreadable (recorded as [lost]) */
	STAT_LOST_STACK_MAP_FULL, /* a stack did not fit (recorded as [lost]) */
	STAT_LOST_COUNT_MAP_FULL, /* whole sample lost: count map full */
	STAT_EVENTS_LOST,         /* new-process notifications dropped */
	STAT_UNWIND_STACKS,       /* user stacks walked (table unwinder or FP) */
	STAT_UNWIND_COMPLETE,     /* ...that reached the outermost frame */
	STAT_TRUNC_DEPTH,         /* ...cut at EMBER_MAX_DEPTH frames */
	STAT_TRUNC_NO_TABLE,      /* ...no unwind table, frame pointers failed */
	STAT_TRUNC_READ,          /* ...stack memory unreadable */
	STAT_TRUNC_UNSUPPORTED,   /* ...a CFI rule ember cannot follow */
	STAT_PY_STACKS,           /* samples of a Python thread with its frames walked */
	STAT_PY_NO_THREAD,        /* samples in a Python process outside any Python thread */
	STAT_PY_READ,             /* ...Python frames unreadable (walk cut short) */
	STAT_PY_DEPTH,            /* ...Python frames cut at max_py_depth */
	STAT_PY_LOST,             /* ...Python frames walked but not stored */
	STAT_OFFCPU_WAITS,        /* off-CPU waits recorded */
	STAT_OFFCPU_SHORT,        /* ...not recorded: shorter than the threshold */
	STAT_OFFCPU_SAMPLED_OUT,  /* ...not recorded: sampled out 1-in-N (the rest weigh N) */
	STAT_OFFCPU_DROPPED,      /* ...lost: a map was full */
	STAT_OFFCPU_WALKS,        /* stack walks at switch-out (the rest reused stacks) */
	STAT_MAX,
};

/* Unwind tables. A row covers code from its pc up to the next row's pc and
 * packs into one u64 (an array element is 8-byte aligned anyway):
 *   bits  0..31  pc, relative to the table's base
 *   bits 32..35  CFA rule (UNW_CFA_*)
 *   bits 36..39  RBP rule (UNW_RBP_*)
 *   bits 40..55  CFA offset / 8 (signed)
 *   bits 56..63  RBP offset / 8 (signed); for UNW_CFA_PLT the threshold
 * On x86-64 the return address is always at CFA - 8.
 *
 * A table's array starts with a page index, one u64 per 4 KiB of code:
 * the first and last row (low and high 32 bits) covering that page, so a
 * lookup binary-searches a handful of rows instead of the whole table. The
 * rows follow the index; row 0 is at pc 0. */
#define UNW_PAGE_SHIFT 12
#define UNW_CFA_GAP 0         /* no CFI covers this code: frame pointers */
#define UNW_CFA_RSP 1         /* CFA = rsp + off */
#define UNW_CFA_RBP 2         /* CFA = rbp + off */
#define UNW_CFA_PLT 3         /* CFA = rsp + off + ((pc & 15) >= thr ? 8 : 0) */
#define UNW_CFA_DEREF_RSP 4   /* CFA = *(rsp + off) */
#define UNW_CFA_DEREF_RBP 5   /* CFA = *(rbp + off) (stack realignment) */
#define UNW_CFA_SIGNAL 6      /* signal trampoline: registers in ucontext */
#define UNW_CFA_END 7         /* return address undefined: outermost frame */
#define UNW_CFA_UNSUPPORTED 8 /* a rule ember cannot follow */

#define UNW_RBP_SAME 0  /* rbp unchanged */
#define UNW_RBP_CFA 1   /* rbp = *(CFA + off) */
#define UNW_RBP_AT_RBP 2 /* rbp = *(rbp + off) */
#define UNW_RBP_LOST 3  /* rbp not recoverable */

/* Executable mappings of one process, for the unwinder: a run of `count`
 * entries, sorted by start, at `first` in the shared unwind_mappings array
 * (an array rather than a per-process value, so the binary search indexes a
 * map through a helper and the verifier need not track every index). */
struct unwind_mapping {
	__u64 start;
	__u64 end;
	__u64 bias;  /* table pc = address - bias */
	__u32 table; /* id in unwind_tables; 0 = none (frame pointers) */
	__u32 pages; /* page index entries before the rows */
};

struct proc_unwind {
	__u32 first;
	__u32 count;
	__u32 stale; /* set by BPF when an address fell outside every mapping */
	__u32 _pad;
};

/* ---- CPython ------------------------------------------------------------
 * Where one CPython version keeps what the walk reads, in bytes. Userspace
 * fills one entry of py_layouts per supported version and points each Python
 * process (py_procs) at its entry. 0xffff: the field does not exist. */
struct py_layout {
	__u16 interp_next;      /* PyInterpreterState.next */
	__u16 interp_threads;   /* PyInterpreterState: first PyThreadState */
	__u16 tstate_next;      /* PyThreadState.next */
	__u16 tstate_thread_id; /* PyThreadState.thread_id (pthread_self) */
	__u16 tstate_frame;     /* PyThreadState: current frame (or _PyCFrame *) */
	__u16 cframe_frame;     /* _PyCFrame.current_frame; 0xffff: no cframe */
	__u16 frame_previous;   /* the caller's frame */
	__u16 frame_code;       /* the code object */
	__u16 frame_instr;      /* f_lasti (int) or the instruction pointer */
	__u16 frame_owner;      /* owner byte (FRAME_OWNED_BY_CSTACK = 3 marks an
				 * entry shim); 0xffff: none */
	__u16 frame_is_entry;   /* is_entry byte (3.11); 0xffff: none */
	__u16 frame_read;       /* bytes of a frame to read (<= EMBER_PY_FRAME_READ) */
	__u8 kind;              /* enum py_kind */
	__u8 _pad[7];
};

enum py_kind {
	/* 3.8-3.10: PyFrameObject, one native eval call per frame, f_lasti */
	PY_KIND_FRAME_OBJECT = 0,
	/* 3.11+: _PyInterpreterFrame, an instruction pointer, entry frames */
	PY_KIND_INTERP_FRAME = 1,
};

/* Flags in the high half of a Python frame's second word. */
enum py_frame_flag {
	/* The outermost Python frame of one native call of the eval loop. */
	PY_FRAME_ENTRY = 1,
};

/* A CPython process: where its interpreters are, and its layout. */
struct py_proc {
	__u64 interp_head; /* address of _PyRuntime.interpreters.head */
	__u32 layout;      /* index into py_layouts */
	__u32 _pad;
};

/* A thread's PyThreadState, as last found. */
struct py_thread {
	__u64 tstate;  /* 0: the thread had none */
	__u64 checked; /* when that was found (bpf_ktime_get_ns) */
};

/* A place a thread left the CPU from lately (its system call, user
 * registers and how, see offcpu_site) and the key (names and stacks) of a
 * wait from there. */
struct offcpu_memo {
	__u64 ip, sp, bp;
	__u32 nr, how;
	/* Generation + 1 the key's stacks are stored in, when they may be
	 * reused for the next wait from here (the sites cache had them as
	 * stable); 0: this wait's key only. */
	__u32 gen;
	__u32 _pad;
	__u64 until; /* ...until then (offcpu_site_stacks.until) */
	struct sample_key key;
};

/* A thread's off-CPU state: since when it waits (0: it runs) and the key
 * it waits with, memo[cur].key. Userspace writes these for threads already
 * waiting when a recording starts, and reads those still waiting when it
 * ends. */
struct offcpu_state {
	__u64 since;  /* bpf_ktime_get_ns() when it left the CPU; 0 when running */
	__u32 weight; /* what one nanosecond of this wait counts for (1-in-N) */
	__u32 cur;    /* the memo entry with this wait's key (& EMBER_OFFCPU_MEMO - 1) */
	/* Whether the thread's process is a registered Python process, as
	 * found at py_epoch E: (E + 1) << 1 | 1 if it is, (E + 1) << 1 if not;
	 * 0: not looked up (userspace writes 0). */
	__u32 py;
	__u32 _pad;
	/* bpf_ktime_get_ns() until which the thread is known to have no
	 * Python thread state (py_threads), so its stacks may be reused. */
	__u64 py_quiet;
	/* The places it left from lately, with their keys: a wait from one
	 * of them reuses its key without a look-up in offcpu_sites. */
	struct offcpu_memo memo[EMBER_OFFCPU_MEMO];
};

/* A program's cost as it measures itself with the clock (cpu_state): its
 * runs, how many of them were timed, and the nanoseconds those took (the
 * cost of the clock reads taken out). */
struct prog_cost {
	__u64 runs;
	__u64 timed;
	__u64 ns;
};

/* Per CPU: the off-CPU program's clock and the programs' costs. The
 * kernel's own BPF run-time statistics would give the costs too, but they
 * are global: every BPF program on the host would pay two clock reads per
 * run while ember runs. */
struct cpu_state {
	__u64 rq_at;  /* the runqueue's clock when `offset` was taken */
	__u64 offset; /* bpf_ktime_get_ns() minus the runqueue's clock then */
	__u64 t0, t1; /* the clock reads that open a timed run of on_switch; t0 0: not timed */
	struct prog_cost sample; /* on_sample: every run timed */
	struct prog_cost sw;     /* on_switch: about 1 run in 64 timed */
};

/* A wait still going on when a recording ends (the offcpu_open_waits
 * iterator's records, with task storage): since when, its weight and its
 * key. */
struct offcpu_open {
	__u64 since;
	__u32 weight;
	__u32 _pad;
	struct sample_key key;
};

/* offcpu_site.how: how the thread left the CPU (a cheap tell of which
 * kernel path it left from, so one place's stacks are not walked again at
 * every switch when it leaves from two paths in turn). */
enum offcpu_how {
	OFFCPU_PREEMPTED = 1, /* preempted inside the kernel */
	OFFCPU_BLOCKED = 2,   /* not runnable: it waits for something */
};

/* A place threads leave the CPU from: thread, system call, user registers
 * and how. Its stacks are walked again until two walks agree, then reused
 * while they are in the current generation's stack map, and walked again
 * to check them after as long again as walks have agreed (a walk made
 * before a binary's unwind table was loaded agrees with the next one made
 * before it, not with one made after). */
struct offcpu_site {
	__u32 tid;
	__u32 nr;
	__u64 ip, sp, bp;
	__u32 how; /* OFFCPU_* */
	__u32 _pad;
};

struct offcpu_site_stacks {
	struct sample_key key;
	__u32 gen;    /* generation + 1 the stacks were stored in */
	__u32 stable; /* OFFCPU_STABLE_*: what the last two walks from here agreed on */
	__u64 since;  /* when the first of the walks that agree on both stacks was made */
	__u64 until;  /* the key reused until then (the switch clock, CLOCK_MONOTONIC) */
	__u64 since_user; /* the same for the user stack alone */
	__u64 until_user;
};

/* offcpu_site_stacks.stable */
enum offcpu_stable {
	OFFCPU_STABLE_ALL = 1,  /* both stacks: the key is reused whole */
	OFFCPU_STABLE_USER = 2, /* the user stack (the kernel path varies, as an
				 * fsync's does): only the kernel stack is taken */
};

/* Ring-buffer message: a process was sampled for the first time, or
 * exec'd, so userspace should capture its memory map while it lives. */
struct ember_proc_event {
	__u32 tgid;
	__u32 kind; /* enum ember_event_kind */
};

enum ember_event_kind {
	EMBER_EVENT_NEW = 0,  /* first sample of a process */
	EMBER_EVENT_EXEC = 1, /* the process replaced its image */
	EMBER_EVENT_MAPS = 2, /* code ran outside the mappings ember knows (dlopen) */
};

#endif
