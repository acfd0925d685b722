//! Pressure stall information (`collector/src/proc/pressure.rs`, and the same records per
//! cgroup v2 container): one table per scope over a PSI [`Record`], labelled by `resource` and
//! `kind` (`some`, `full`).

use std::borrow::Cow;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use stallwatch_collector::proc::pressure::{Pressure, Record, Resource};
use stallwatch_collector::sample::HostSnapshot;

use super::table::{counter, family, gauge, labelled, Labels, Row, RATIO, SECONDS};

/// `/proc/pressure/{cpu,io,memory}`.
pub const HOST_PSI: &[Row<Record>] = &[
    counter(
        "pressure_stall",
        "Total time tasks were stalled on the resource (PSI total).",
        SECONDS,
        |r| Some(r.total_us as f64 / 1e6),
    ),
    gauge(
        "pressure_avg10",
        "Share of the last 10 s tasks were stalled (PSI avg10).",
        RATIO,
        |r| Some(r.avg10),
    ),
    gauge(
        "pressure_avg60",
        "Share of the last 60 s tasks were stalled (PSI avg60).",
        RATIO,
        |r| Some(r.avg60),
    ),
    gauge(
        "pressure_avg300",
        "Share of the last 300 s tasks were stalled (PSI avg300).",
        RATIO,
        |r| Some(r.avg300),
    ),
];

/// `<cgroup>/{cpu,io,memory}.pressure` of a container (cgroup v2).
pub const CONTAINER_PSI: &[Row<Record>] = &[
    counter(
        "container_pressure_stall",
        "Time the container's tasks were stalled on the resource (cgroup v2 PSI total).",
        SECONDS,
        |r| Some(r.total_us as f64 / 1e6),
    ),
    gauge(
        "container_pressure_avg10",
        "Share of the last 10 s the container's tasks were stalled (cgroup v2 PSI avg10).",
        RATIO,
        |r| Some(r.avg10),
    ),
];

const KINDS: [&str; 2] = ["some", "full"];

/// Every record present, labelled `base` + `resource` + `kind`, in resource then kind order.
/// `pressure` is indexed like [`Resource::ALL`] (the host's four) or a prefix of it (a cgroup's
/// [`Resource::CGROUP`]).
pub fn records<'a>(
    pressure: &'a [Option<Pressure>],
    base: &Labels<'a>,
) -> Vec<(Labels<'a>, &'a Record)> {
    let mut out = Vec::new();
    for (r, p) in Resource::ALL.into_iter().zip(pressure) {
        let Some(p) = p else { continue };
        for (kind, rec) in KINDS.into_iter().zip([&p.some, &p.full]) {
            if let Some(rec) = rec {
                out.push((with_kind(base, r, kind), rec));
            }
        }
    }
    out
}

fn with_kind<'a>(base: &Labels<'a>, r: Resource, kind: &'static str) -> Labels<'a> {
    let mut l = base.clone();
    l.push(("resource", Cow::Borrowed(r.as_str())));
    l.push(("kind", Cow::Borrowed(kind)));
    l
}

/// The host's PSI table, then the sampler's window peak of avg10.
pub fn encode_host(e: &mut DescriptorEncoder<'_>, s: &HostSnapshot) -> std::fmt::Result {
    labelled(e, HOST_PSI, &records(&s.pressure, &Vec::new()))?;
    let mut peaks = Vec::new();
    for r in Resource::ALL {
        for (k, kind) in KINDS.into_iter().enumerate() {
            if let Some(v) = s.peaks.psi_avg10[r as usize][k] {
                peaks.push((with_kind(&Vec::new(), r, kind), v));
            }
        }
    }
    family(
        e,
        "pressure_avg10_peak",
        "Maximum PSI avg10 seen over the peak window.",
        RATIO,
        MetricType::Gauge,
        peaks,
    )
}
