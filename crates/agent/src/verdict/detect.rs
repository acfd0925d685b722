//! Which detector answers for each cause: every one at the entry thresholds, then (for those
//! that did not enter) at the hold thresholds. Apart from the detectors so that `ebs.rs` can
//! take the shared helpers of `causes.rs` without the two importing each other.

use super::causes::{self, Finding, Level, Th};
use super::ebs;
use super::tick::Tick;
use super::{Cause, VerdictConfig};
use crate::node::Node;

/// Evaluates every detector at the entry thresholds, then (for those that did not enter) at
/// the hold thresholds.
pub fn detect(tick: &Tick, node: &Node, c: &VerdictConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    for &cause in Cause::DETECTED {
        for (level, k) in [(Level::Enter, 1.0), (Level::Hold, c.hold_ratio)] {
            let th = Th { c, k };
            if let Some(mut f) = detect_one(cause, tick, node, &th) {
                f.level = level;
                out.push(f);
                break;
            }
        }
    }
    out
}

fn detect_one(cause: Cause, t: &Tick, node: &Node, th: &Th<'_>) -> Option<Finding> {
    match cause {
        Cause::DiskStalled => causes::disk_stalled(t, node, th),
        Cause::EbsCredits => ebs::ebs_credits(t, node, th),
        Cause::Memory => causes::memory(t, node, th),
        Cause::Writeback => causes::writeback(t, node, th),
        Cause::Lock => causes::lock(t, node, th),
        Cause::DiskSaturated => causes::disk_saturated(t, node, th),
        Cause::Cpu => causes::cpu(t, node, th),
        Cause::None => None,
    }
}
