//! The verdict's thresholds (`[verdict]` in the config file), with the reasoning behind each
//! default. `config/stallwatch.example.toml` repeats them beside the keys.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct VerdictConfig {
    /// Share of the last tick in which at least one task waited on I/O (PSI io `some`,
    /// from the `total` counter, not avg10: avg10 is a 10 s average and would take ~5 s to
    /// cross 25 % after a sudden stall). 20 %: a node that spends a fifth of its time with a
    /// task waiting on storage is slowed for that task; normal builds and tests on an SSD stay
    /// under 5 %.
    pub io_some: f64,
    /// PSI io `full` share: every runnable task waited on I/O at once. 5 % is rare without a
    /// stall.
    pub io_full: f64,
    /// PSI cpu `some` share. With `run_queue_per_cpu` it separates "busy" (a build keeping
    /// every core at work) from "stalled on CPU" (restore storms: 45 starts on 2 cores).
    pub cpu_some: f64,
    /// Runnable tasks per CPU (`procs_running / CPUs`) at or above which the CPU is saturated.
    /// A `make -j` on every core gives ~1–2; a storm of starts gives tens.
    pub run_queue_per_cpu: f64,
    /// PSI memory `some` share: tasks stalled in reclaim or refaulting their working set.
    pub memory_some: f64,
    /// PSI memory `full` share.
    pub memory_full: f64,
    /// A device with I/O in flight and no completion for this long is stalled. EBS and NVMe
    /// complete I/O in milliseconds; 2 s with nothing completing is a hang, and at 1 s
    /// sampling it flips within 3 s.
    pub stall_after: Duration,
    /// Device utilisation (share of time with I/O in flight) at which a device may be at its
    /// limit — with `await` or `queue` also high (utilisation alone means little on NVMe).
    pub utilisation: f64,
    /// Average time per completed I/O at which a busy device is saturated. 50 ms is ten
    /// times an EBS gp3 volume's usual latency.
    pub await_threshold: Duration,
    /// Average queue depth (`aqu-sz`) at which a busy device is saturated.
    pub queue: f64,
    /// A container doing at least this share of its blkio/io.max limit is at its limit; one
    /// using this share of its memory limit is named by the `memory` cause.
    pub limit_share: f64,
    /// Bytes under writeback (or written in one tick) that make a flush storm, with tasks
    /// waiting on I/O. 32 MiB is more than one second of a gp2 baseline and far above the
    /// few MiB a quiet node flushes.
    pub writeback_bytes: u64,
    /// Threads in D on a lock for at least `lock_after` make the `lock` cause.
    pub lock_threads: u64,
    pub lock_after: Duration,
    /// An EBS burst balance (volume estimate or instance EBS balance) at or below this share
    /// is empty.
    pub credits_empty: f64,
    /// A condition must hold on this many consecutive ticks to enter (1 would flap on one
    /// noisy second; 2 still flips within 3 s at 1 s sampling). Not for `disk_stalled` and
    /// `lock`, whose conditions already last `stall_after` / `lock_after`.
    pub enter_ticks: u32,
    /// A cause is left only when not even its hold level (`hold_ratio` × every entry
    /// threshold) has been seen for this long: a stall that pauses for a few seconds stays one
    /// stall, one incident.
    pub clear_after: Duration,
    pub hold_ratio: f64,
}

impl Default for VerdictConfig {
    fn default() -> Self {
        VerdictConfig {
            io_some: 0.20,
            io_full: 0.05,
            cpu_some: 0.50,
            run_queue_per_cpu: 4.0,
            memory_some: 0.10,
            memory_full: 0.05,
            stall_after: Duration::from_secs(2),
            utilisation: 0.90,
            await_threshold: Duration::from_millis(50),
            queue: 8.0,
            limit_share: 0.90,
            writeback_bytes: 32 << 20,
            lock_threads: 1,
            lock_after: Duration::from_secs(1),
            credits_empty: 0.01,
            enter_ticks: 2,
            clear_after: Duration::from_secs(15),
            hold_ratio: 0.5,
        }
    }
}
