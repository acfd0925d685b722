// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Every D-state episode, exactly: the eBPF half of stallwatch's episode tracker
// (crates/collector/src/bpf/). Built ahead with Debian's clang into dstate.bpf.o, committed beside
// this file (`make bpf`; a test rebuilds it and compares the bytes), and loaded by the agent with
// the pure-Rust aya crate: the agent's build needs no C toolchain.
//
// - tp_btf/sched_switch: a thread leaving the CPU in TASK_UNINTERRUPTIBLE (not TASK_NOLOAD, which
//   is TASK_IDLE, shown as 'I' and not counted in the load average, and not when preempted: a
//   preempted thread stays runnable) starts an episode: when, its tid, tgid, comm, its kernel
//   stack and wait channel (the first frame outside the scheduler and lock text, as get_wchan()
//   does for /proc/<pid>/wchan; the bounds come from the agent through `cfg`). The episode waits
//   in `inflight`, keyed by tid, where the agent also reads "who is in D now".
// - tp_btf/sched_wakeup: the thread is woken; its episode ends. It is added to the aggregate keyed
//   by {tgid, wait channel, comm}: count, nanoseconds, max and a log2 histogram of microseconds.
//   An episode longer than `cfg[CFG_LONG_NS]` also goes to the `long` ring buffer with its stack.
//
// Bounded, and what happens when full (each counted in `stats`):
// - `inflight` full: the episode is not tracked (STAT_INFLIGHT_FULL).
// - an aggregate map full: the episode is added to the key the agent keeps in it for that,
//   {tgid 0, wchan 0, comm 0xff..} (STAT_AGG_OVERFLOW): counted and timed, without its labels.
// - `long` full: the long episode is counted and timed in its aggregate but its stack record is
//   dropped (STAT_LONG_LOST).
//
// Draining without losing episodes: two aggregate maps; `epoch` names the one written. The agent
// flips `epoch`, waits until every program that read the old value has finished (per-CPU
// entered/left counters of each epoch balance), then reads and empties the old map, which no
// program writes any more. Programs here run with preemption off (the scheduler holds the run
// queue lock around both tracepoints), so that wait is microseconds.

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define TASK_UNINTERRUPTIBLE 0x0002
#define TASK_NOLOAD 0x0400

#define MAX_FRAMES 24
#define NBUCKETS 32
#define SEEDED 1

// What the agent sets (`cfg`, an array of u64).
#define CFG_LONG_NS 0
#define CFG_SCHED_START 1
#define CFG_SCHED_END 2
#define CFG_LOCK_START 3
#define CFG_LOCK_END 4
#define CFG_N 5

// Counters (`stats`, per CPU).
#define STAT_INFLIGHT_FULL 0
#define STAT_AGG_OVERFLOW 1
#define STAT_LONG_LOST 2
#define STAT_LONG_SENT 3
#define STAT_ENTERED0 4
#define STAT_ENTERED1 5
#define STAT_LEFT0 6
#define STAT_LEFT1 7
#define STAT_STARTED 8
#define STAT_ENDED 9
#define STAT_N 10

// Only `pid` (the thread id) of the woken task is read; its offset is relocated against the
// running kernel's BTF at load time (CO-RE), so one object fits every kernel.
struct task_struct {
	int pid;
} __attribute__((preserve_access_index));

struct episode {
	__u64 start_ns; // CLOCK_MONOTONIC, bpf_ktime_get_ns()
	__u64 wchan;    // kernel address; a small number for an episode the agent seeded
	__u32 tid;
	__u32 tgid;
	__u32 flags; // SEEDED (bit 0): put here by the agent from the walk; bits 8-15: wchan's frame
	__u32 nframes;
	char comm[16];
	__u64 stack[MAX_FRAMES];
};

struct agg_key {
	__u32 tgid;
	__u32 pad;
	__u64 wchan;
	char comm[16];
};

struct agg_val {
	__u64 count;
	__u64 sum_ns;
	__u64 max_ns;
	__u64 hist[NBUCKETS]; // bucket k: [2^k, 2^(k+1)) microseconds; 0 also holds < 1 us
};

struct long_event {
	__u64 start_ns;
	__u64 dur_ns;
	__u64 wchan;
	__u32 tid;
	__u32 tgid;
	__u32 flags;
	__u32 nframes;
	char comm[16];
	__u64 stack[MAX_FRAMES];
};

// Sizes below are defaults; the agent sets them from [bpf] before loading.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct episode);
} inflight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct agg_key);
	__type(value, struct agg_val);
} aggs0 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct agg_key);
	__type(value, struct agg_val);
} aggs1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} long_episodes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} epoch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CFG_N);
	__type(key, __u32);
	__type(value, __u64);
} cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_N);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

// A per-CPU scratch episode: too large for the 512-byte BPF stack.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct episode);
} scratch SEC(".maps");

static __always_inline __u64 cfg_get(__u32 i)
{
	__u64 *v = bpf_map_lookup_elem(&cfg, &i);
	return v ? *v : 0;
}

// Per CPU, and programs do not nest on one CPU (both tracepoints run with interrupts off).
static __always_inline void stat_add(__u32 i)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &i);
	if (v)
		*v += 1;
}

static __always_inline int in_range(__u64 ip, __u64 lo, __u64 hi)
{
	return ip >= lo && ip < hi;
}

SEC("tp_btf/sched_switch")
int on_switch(__u64 *ctx)
{
	// sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
	//              unsigned int prev_state), kernel >= 5.18.
	__u64 preempt = ctx[0] & 0xff;
	__u32 state = (__u32)ctx[3];
	if (preempt || !(state & TASK_UNINTERRUPTIBLE) || (state & TASK_NOLOAD))
		return 0;
	// `current` is still prev here.
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	__u32 zero = 0;
	struct episode *e = bpf_map_lookup_elem(&scratch, &zero);
	if (!e || tid == 0)
		return 0;
	e->start_ns = bpf_ktime_get_ns();
	e->tid = tid;
	e->tgid = id >> 32;
	e->flags = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	long n = bpf_get_stack(ctx, e->stack, sizeof(e->stack), 0);
	e->nframes = n > 0 ? n / sizeof(__u64) : 0;
	__u64 s0 = cfg_get(CFG_SCHED_START), s1 = cfg_get(CFG_SCHED_END);
	__u64 l0 = cfg_get(CFG_LOCK_START), l1 = cfg_get(CFG_LOCK_END);
	e->wchan = 0;
	// The first frames are this program and the tracepoint's; then the scheduler (__schedule,
	// schedule, io_schedule, ...); the wait channel is the first frame after those outside the
	// scheduler and lock text. Its index goes in flags bits 8-15: stacks are shown from there,
	// as /proc/<pid>/stack shows them. Unknown bounds (the agent cannot read kernel addresses):
	// no wait channel, the whole stack.
	if (s1 > s0) {
		int sched = 0;
#pragma unroll
		for (int i = 0; i < MAX_FRAMES; i++) {
			if (i >= e->nframes)
				break;
			__u64 ip = e->stack[i];
			int in_sched = in_range(ip, s0, s1) || in_range(ip, l0, l1);
			if (!sched) {
				sched = in_range(ip, s0, s1);
				continue;
			}
			if (!in_sched) {
				e->wchan = ip;
				e->flags = (__u32)i << 8;
				break;
			}
		}
	}
	stat_add(STAT_STARTED);
	if (bpf_map_update_elem(&inflight, &tid, e, BPF_ANY) != 0)
		stat_add(STAT_INFLIGHT_FULL);
	return 0;
}

static __always_inline __u32 bucket_of(__u64 ns)
{
	__u64 v = ns / 1000;
	__u32 r = 0;
	if (v >> 32) { v >>= 32; r += 32; }
	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8) { v >>= 8; r += 8; }
	if (v >> 4) { v >>= 4; r += 4; }
	if (v >> 2) { v >>= 2; r += 2; }
	if (v >> 1) { r += 1; }
	return r < NBUCKETS ? r : NBUCKETS - 1;
}

static __always_inline void add_to(void *aggs, struct agg_key *k, __u64 d)
{
	struct agg_val *v = bpf_map_lookup_elem(aggs, k);
	if (!v) {
		struct agg_val fresh = {};
		bpf_map_update_elem(aggs, k, &fresh, BPF_NOEXIST);
		v = bpf_map_lookup_elem(aggs, k);
	}
	if (!v) {
		// Full: the agent keeps this key in every aggregate map.
		struct agg_key o = {};
		__builtin_memset(o.comm, 0xff, sizeof(o.comm));
		v = bpf_map_lookup_elem(aggs, &o);
		stat_add(STAT_AGG_OVERFLOW);
		if (!v)
			return;
	}
	__sync_fetch_and_add(&v->count, 1);
	__sync_fetch_and_add(&v->sum_ns, d);
	__sync_fetch_and_add(&v->hist[bucket_of(d) & (NBUCKETS - 1)], 1);
#pragma unroll
	for (int i = 0; i < 3; i++) {
		__u64 old = v->max_ns;
		if (d <= old || __sync_val_compare_and_swap(&v->max_ns, old, d) == old)
			break;
	}
}

SEC("tp_btf/sched_wakeup")
int on_wakeup(__u64 *ctx)
{
	struct task_struct *p = (struct task_struct *)ctx[0];
	__u32 tid = p->pid;
	struct episode *e = bpf_map_lookup_elem(&inflight, &tid);
	if (!e)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 d = now > e->start_ns ? now - e->start_ns : 0;
	struct agg_key k = {};
	k.tgid = e->tgid;
	k.wchan = e->wchan;
	__builtin_memcpy(k.comm, e->comm, sizeof(k.comm));

	__u32 zero = 0;
	__u32 *ep = bpf_map_lookup_elem(&epoch, &zero);
	__u32 which = ep ? (*ep & 1) : 0;
	stat_add(STAT_ENTERED0 + which);
	if (which)
		add_to(&aggs1, &k, d);
	else
		add_to(&aggs0, &k, d);
	stat_add(STAT_LEFT0 + which);
	stat_add(STAT_ENDED);

	__u64 long_ns = cfg_get(CFG_LONG_NS);
	if (long_ns && d >= long_ns) {
		struct long_event *ev = bpf_ringbuf_reserve(&long_episodes, sizeof(*ev), 0);
		if (ev) {
			ev->start_ns = e->start_ns;
			ev->dur_ns = d;
			ev->wchan = e->wchan;
			ev->tid = e->tid;
			ev->tgid = e->tgid;
			ev->flags = e->flags;
			ev->nframes = e->nframes;
			__builtin_memcpy(ev->comm, e->comm, sizeof(ev->comm));
			__builtin_memcpy(ev->stack, e->stack, sizeof(ev->stack));
			// No wakeup: the agent drains the ring on its own cadence.
			bpf_ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
			stat_add(STAT_LONG_SENT);
		} else {
			stat_add(STAT_LONG_LOST);
		}
	}
	bpf_map_delete_elem(&inflight, &tid);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
