//! prometheus-client `Collector`s that *encode* the latest snapshots at scrape time. Nothing
//! here reads a file or takes a lock that a sampler holds: a scrape costs one `ArcSwap` load
//! per snapshot plus formatting, so it answers in milliseconds even while a disk is hung.
//! A row that is not in the snapshot (a disk that vanished) is simply not encoded.

pub mod cloud;
pub mod containers;
pub mod exposition;
pub mod host;
pub mod node_info;
pub mod probe;
pub mod selfmon;
pub mod threads;

use std::borrow::Cow;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

/// Label sets as `(name, value)` pairs.
pub type Labels<'a> = Vec<(&'static str, Cow<'a, str>)>;

/// The "ratio" unit (prometheus-client's `Unit::Ratios` would spell `_ratios`).
pub fn ratio() -> Unit {
    Unit::Other("ratio".into())
}

/// One metric family without labels.
pub fn single(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    ty: MetricType,
    v: f64,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, unit, ty)?;
    match ty {
        MetricType::Counter => m.encode_counter::<NoLabelSet, _, f64>(&v, None),
        _ => m.encode_gauge(&v),
    }
}

/// One metric family with a row per label set; nothing is written when there are no rows, so
/// an absent source leaves no empty family behind.
pub fn family<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    ty: MetricType,
    rows: impl IntoIterator<Item = (L, f64)>,
) -> std::fmt::Result {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut m = e.encode_descriptor(name, help, unit, ty)?;
    for (labels, v) in rows {
        let fam = m.encode_family(&labels)?;
        let mut fam = fam;
        match ty {
            MetricType::Counter => fam.encode_counter::<NoLabelSet, _, f64>(&v, None)?,
            _ => fam.encode_gauge(&v)?,
        }
    }
    Ok(())
}

/// Like [`single`] but writes nothing for `None`.
pub fn opt(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    ty: MetricType,
    v: Option<f64>,
) -> std::fmt::Result {
    match v {
        Some(v) => single(e, name, help, unit, ty, v),
        None => Ok(()),
    }
}
