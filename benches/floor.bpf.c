// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* ember benchmark: an empty sched_switch program. What any BPF off-CPU
 * profiler pays per context switch before it does anything (the
 * tracepoint's dispatch into BPF); benches/run loads it with libbpf. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("tp_btf/sched_switch")
int BPF_PROG(floor_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	return 0;
}
