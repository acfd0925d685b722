//! Metric tables: a family is a [`Row`] — name, help, unit, type and an accessor over a typed
//! struct (`Meminfo`, `DiskStat`, `ContainerRow`, …) — and an encoder is a walk over a table
//! (`const MEMINFO: &[Row<Meminfo>]`) with [`rows`] for one unlabelled item or [`labelled`]
//! for many. What a family reads is in one line of its table, not in a 300-line function.
//!
//! Names carry neither the `stallwatch_` prefix (the registry adds it) nor the unit or
//! `_total` (prometheus-client appends them from `unit` and the type).

use std::borrow::Cow;
use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry;

/// Label sets as `(name, value)` pairs.
pub type Labels<'a> = Vec<(&'static str, Cow<'a, str>)>;

/// The base units families carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Seconds,
    /// 0..1 (prometheus-client's `Unit::Ratios` would spell `_ratios`).
    Ratio,
}

pub const BYTES: Option<Unit> = Some(Unit::Bytes);
pub const SECONDS: Option<Unit> = Some(Unit::Seconds);
pub const RATIO: Option<Unit> = Some(Unit::Ratio);
/// A count, or a unit spelled in the name (`_percent`, `_timestamp_seconds` of a gauge).
pub const NONE: Option<Unit> = None;

impl Unit {
    fn prom(self) -> registry::Unit {
        match self {
            Unit::Bytes => registry::Unit::Bytes,
            Unit::Seconds => registry::Unit::Seconds,
            Unit::Ratio => registry::Unit::Other("ratio".into()),
        }
    }
}

/// One family read from a `T`.
pub struct Row<T> {
    pub name: &'static str,
    pub help: &'static str,
    pub unit: Option<Unit>,
    pub ty: MetricType,
    /// The value in `unit`; `None` writes no sample (a field this kernel or source lacks).
    pub get: fn(&T) -> Option<f64>,
}

pub const fn gauge<T>(
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    get: fn(&T) -> Option<f64>,
) -> Row<T> {
    Row {
        name,
        help,
        unit,
        ty: MetricType::Gauge,
        get,
    }
}

/// A gauge row turned counter (prometheus-client appends `_total`).
pub const fn counter<T>(
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    get: fn(&T) -> Option<f64>,
) -> Row<T> {
    Row {
        ty: MetricType::Counter,
        ..gauge(name, help, unit, get)
    }
}

/// `u64` field → sample value.
pub fn num(v: Option<u64>) -> Option<f64> {
    v.map(|v| v as f64)
}

/// `bool` → 1 or 0.
pub fn flag(b: bool) -> Option<f64> {
    Some(if b { 1.0 } else { 0.0 })
}

/// Every row of `table` over one item, without labels; a row whose value is `None` is left out.
pub fn rows<T>(e: &mut DescriptorEncoder<'_>, table: &[Row<T>], item: &T) -> fmt::Result {
    for r in table {
        if let Some(v) = (r.get)(item) {
            single(e, r.name, r.help, r.unit, r.ty, v)?;
        }
    }
    Ok(())
}

/// One family with one unlabelled sample.
pub fn single(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    ty: MetricType,
    v: f64,
) -> fmt::Result {
    let unit = unit.map(Unit::prom);
    let mut m = e.encode_descriptor(name, help, unit.as_ref(), ty)?;
    sample(&mut m, ty, v)
}

/// Every row of `table` as one family over labelled items (a row per item that has a value);
/// a family without any value is not written at all.
pub fn labelled<T>(
    e: &mut DescriptorEncoder<'_>,
    table: &[Row<T>],
    items: &[(Labels<'_>, &T)],
) -> fmt::Result {
    for r in table {
        family(
            e,
            r.name,
            r.help,
            r.unit,
            r.ty,
            items
                .iter()
                .filter_map(|(l, t)| (r.get)(t).map(|v| (l.as_slice(), v))),
        )?;
    }
    Ok(())
}

/// One family with a sample per label set, for breakdowns that are not a field per row (CPU
/// modes, error kinds, per-runtime counts); nothing is written when there are no samples, so
/// an absent source leaves no empty family behind.
pub fn family<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    ty: MetricType,
    samples: impl IntoIterator<Item = (L, f64)>,
) -> fmt::Result {
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let unit = unit.map(Unit::prom);
    let mut m = e.encode_descriptor(name, help, unit.as_ref(), ty)?;
    for (labels, v) in samples {
        sample(&mut m.encode_family(&labels)?, ty, v)?;
    }
    Ok(())
}

fn sample(
    m: &mut prometheus_client::encoding::MetricEncoder<'_>,
    ty: MetricType,
    v: f64,
) -> fmt::Result {
    match ty {
        MetricType::Counter => m.encode_counter::<NoLabelSet, _, f64>(&v, None),
        _ => m.encode_gauge(&v),
    }
}

/// One histogram family, a histogram per label set: `(labels, sum, count, buckets)` with
/// per-bucket (not cumulative) counts as prometheus-client wants them, `+Inf` last.
pub fn histograms<'a>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    items: impl IntoIterator<Item = (Labels<'a>, f64, u64, Cow<'a, [(f64, u64)]>)>,
) -> fmt::Result {
    let mut items = items.into_iter().peekable();
    if items.peek().is_none() {
        return Ok(());
    }
    let unit = unit.map(Unit::prom);
    let mut m = e.encode_descriptor(name, help, unit.as_ref(), MetricType::Histogram)?;
    for (labels, sum, count, buckets) in items {
        m.encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}
