//! A CPU budget for periodic work (the thread walk, the container pass): a run that cost `c`
//! seconds of CPU waits at least `c / max_cpu` before the next one, so that on average the work
//! stays under `max_cpu` of one core however big the host grows (10k threads, hundreds of
//! containers) — it just happens less often, and the interval in force is exported so that a
//! dashboard can tell.

use std::time::Duration;

/// The interval to use after a run that cost `last_cpu`: `wanted`, stretched to
/// `last_cpu / max_cpu` when that is longer. A budget of 0 (or nonsense: negative, NaN)
/// disables the stretching.
pub fn stretch(wanted: Duration, last_cpu: Duration, max_cpu: f64) -> Duration {
    if !(max_cpu > 0.0 && max_cpu.is_finite()) {
        return wanted;
    }
    // Duration::div_f64 panics on overflow; a pass costing more than ~584 years of CPU at a
    // tiny budget is not a case to panic over.
    let need = last_cpu.as_secs_f64() / max_cpu;
    if !need.is_finite() || need >= Duration::MAX.as_secs_f64() {
        return Duration::MAX;
    }
    wanted.max(Duration::from_secs_f64(need))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn cheap_runs_keep_the_wanted_interval() {
        // 10 ms of CPU every 10 s is 0.1 %: under a 1 % budget.
        assert_eq!(stretch(S(10), MS(10), 0.01), S(10));
        // exactly at the budget: unchanged
        assert_eq!(stretch(S(10), MS(100), 0.01), S(10));
        assert_eq!(stretch(S(10), Duration::ZERO, 0.01), S(10));
    }

    #[test]
    fn expensive_runs_stretch_to_the_budget() {
        // A pass over hundreds of containers costing 250 ms at 1 %: every 25 s, not 10 s.
        assert_eq!(stretch(S(10), MS(250), 0.01), S(25));
        // The thread walk: 200 ms of CPU at 5 % → every 4 s instead of every second.
        assert_eq!(stretch(S(1), MS(200), 0.05), S(4));
        // The budget then holds: cpu / interval ≤ max_cpu.
        for (cpu_ms, budget) in [(1u64, 0.001), (37, 0.01), (999, 0.05), (12_345, 0.5)] {
            let i = stretch(S(1), MS(cpu_ms), budget);
            let share = MS(cpu_ms).as_secs_f64() / i.as_secs_f64();
            assert!(share <= budget + 1e-12, "{cpu_ms} ms at {budget}: {share}");
        }
    }

    #[test]
    fn a_zero_or_nonsense_budget_disables_stretching() {
        assert_eq!(stretch(S(10), S(5), 0.0), S(10));
        assert_eq!(stretch(S(10), S(5), -1.0), S(10));
        assert_eq!(stretch(S(10), S(5), f64::NAN), S(10));
        assert_eq!(stretch(S(10), S(5), f64::INFINITY), S(10));
    }

    #[test]
    fn absurd_costs_do_not_panic() {
        assert_eq!(stretch(S(1), Duration::MAX, 1e-9), Duration::MAX);
        assert_eq!(
            stretch(S(1), S(u64::MAX / 2), f64::MIN_POSITIVE),
            Duration::MAX
        );
    }
}
