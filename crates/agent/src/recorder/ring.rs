//! The flight recorder's ring: the key signals at one point per host tick (1 s by default)
//! for the last 15 minutes, in memory.
//!
//! Memory: a point is 14 `f32` signals + its time (`f64`) + the stalled flag and cause (2
//! bytes) = 66 bytes, rounded to 72 by alignment; 900 points are 64,800 bytes, allocated once.
//! `f32` keeps 7 significant digits, plenty for a sparkline and the incident peaks.

use std::collections::VecDeque;

use serde::Serialize;

use crate::verdict::tick::Tick;
use crate::verdict::{Cause, Verdict};

/// The recorded signals, in this order (the timeline's `series` keys).
pub const SERIES: [&str; 14] = [
    "psi_io_some",
    "psi_io_full",
    "psi_cpu_some",
    "psi_memory_some",
    "procs_blocked",
    "d_threads",
    "dirty_bytes",
    "writeback_bytes",
    "written_bytes_per_second",
    "disk_utilisation_max",
    "disk_await_seconds_max",
    "disk_queue_max",
    "burst_balance_min",
    "probe_latency_seconds_max",
];

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub t_unix: f64,
    pub stalled: bool,
    pub cause: Cause,
    /// Like [`SERIES`]; NaN where unknown.
    pub values: [f32; 14],
}

impl Point {
    pub fn of(tick: &Tick, verdict: &Verdict) -> Point {
        // Idle devices are left out of the tick: no active device is 0, not unknown.
        let max = |f: fn(&crate::verdict::tick::DiskTick) -> Option<f64>| {
            Some(tick.disks.iter().filter_map(f).fold(0.0, f64::max))
        };
        let v: [Option<f64>; 14] = [
            tick.psi[1][0],
            tick.psi[1][1],
            tick.psi[0][0],
            tick.psi[2][0],
            tick.procs_blocked.map(|v| v as f64),
            Some(tick.d_threads as f64),
            tick.dirty_bytes,
            tick.writeback_bytes,
            tick.written_bytes_per_second,
            max(|d| Some(d.utilisation)),
            max(|d| d.await_seconds),
            max(|d| Some(d.queue)),
            tick.burst_balance_min,
            tick.probe_latency_seconds_max,
        ];
        Point {
            t_unix: tick.t_unix,
            stalled: verdict.stalled,
            cause: verdict.cause,
            values: v.map(|x| x.map_or(f32::NAN, |x| x as f32)),
        }
    }

    /// The signals by name, for the verdict's `signals`.
    pub fn named(&self) -> serde_json::Map<String, serde_json::Value> {
        SERIES
            .iter()
            .zip(self.values)
            .map(|(k, v)| (k.to_string(), json_f32(v)))
            .collect()
    }
}

fn json_f32(v: f32) -> serde_json::Value {
    if v.is_finite() {
        // Through the shortest decimal of the f32, not its f64 widening (0.3 not
        // 0.30000001192092896).
        let d: f64 = format!("{v}").parse().unwrap_or(f64::from(v));
        serde_json::Value::from(d)
    } else {
        serde_json::Value::Null
    }
}

/// The last `capacity` points.
#[derive(Debug)]
pub struct Ring {
    points: VecDeque<Point>,
    capacity: usize,
}

/// The timeline as the API serves it: columns, oldest first.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Timeline {
    pub step_seconds: f64,
    pub t_unix: Vec<f64>,
    pub stalled: Vec<u8>,
    pub cause: Vec<Cause>,
    pub series: serde_json::Map<String, serde_json::Value>,
}

impl Ring {
    pub fn new(capacity: usize) -> Ring {
        Ring {
            points: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    pub fn push(&mut self, p: Point) {
        if self.points.len() == self.capacity {
            self.points.pop_front();
        }
        self.points.push_back(p);
    }

    pub fn last(&self) -> Option<&Point> {
        self.points.back()
    }

    /// The points with `from ≤ t ≤ to`.
    pub fn between(&self, from: f64, to: f64) -> impl Iterator<Item = &Point> {
        self.points
            .iter()
            .filter(move |p| p.t_unix >= from && p.t_unix <= to)
    }

    /// The columns of the points with `from ≤ t ≤ to`.
    pub fn timeline(&self, from: f64, to: f64, step_seconds: f64) -> Timeline {
        columns(self.between(from, to), step_seconds)
    }
}

/// The columns of `points`.
pub fn columns<'a>(points: impl Iterator<Item = &'a Point>, step_seconds: f64) -> Timeline {
    let mut t = Timeline {
        step_seconds,
        t_unix: Vec::new(),
        stalled: Vec::new(),
        cause: Vec::new(),
        series: serde_json::Map::new(),
    };
    let mut cols: Vec<Vec<serde_json::Value>> = vec![Vec::new(); SERIES.len()];
    for p in points {
        t.t_unix.push(p.t_unix);
        t.stalled.push(u8::from(p.stalled));
        t.cause.push(p.cause);
        for (c, v) in cols.iter_mut().zip(p.values) {
            c.push(json_f32(v));
        }
    }
    for (k, c) in SERIES.iter().zip(cols) {
        t.series.insert(k.to_string(), serde_json::Value::Array(c));
    }
    t
}

/// The maximum of each series over `points` (NaN-free; absent when never known).
pub fn peaks<'a>(
    points: impl Iterator<Item = &'a Point>,
) -> serde_json::Map<String, serde_json::Value> {
    // `burst_balance_min` (index 12) peaks at its lowest, the others at their highest.
    let mut max = [f32::NAN; 14];
    for p in points {
        for (i, (m, v)) in max.iter_mut().zip(p.values).enumerate() {
            let better = if i == 12 { v < *m } else { v > *m };
            if v.is_finite() && (m.is_nan() || better) {
                *m = v;
            }
        }
    }
    SERIES
        .iter()
        .zip(max)
        .filter(|(_, v)| v.is_finite())
        .map(|(k, v)| (k.to_string(), json_f32(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: f64, v: f32) -> Point {
        let mut values = [f32::NAN; 14];
        values[0] = v;
        Point {
            t_unix: t,
            stalled: v > 0.5,
            cause: if v > 0.5 {
                Cause::DiskSaturated
            } else {
                Cause::None
            },
            values,
        }
    }

    #[test]
    fn the_ring_keeps_the_last_points_and_serves_columns() {
        let mut r = Ring::new(3);
        for i in 0..5 {
            r.push(point(f64::from(i), i as f32 * 0.25));
        }
        let t = r.timeline(0.0, 10.0, 1.0);
        assert_eq!(t.t_unix, [2.0, 3.0, 4.0]);
        assert_eq!(t.stalled, [0, 1, 1]);
        assert_eq!(t.series["psi_io_some"], serde_json::json!([0.5, 0.75, 1.0]));
        assert_eq!(t.series["d_threads"], serde_json::json!([null, null, null]));
        assert_eq!(r.timeline(3.0, 3.5, 1.0).t_unix, [3.0]);
        let p = peaks(r.between(0.0, 10.0));
        assert_eq!(p["psi_io_some"], serde_json::json!(1.0));
        assert!(!p.contains_key("d_threads"));
        assert_eq!(
            std::mem::size_of::<Point>(),
            72,
            "the memory the docs quote"
        );
    }
}
