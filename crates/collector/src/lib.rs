//! stallwatch's collector: pure parsers and thin readers for the kernel files that tell whether a
//! Linux node is stalled on I/O, and the samplers that turn those readings into snapshots.
//!
//! Layering (see `STYLE.md`):
//! - `proc::*`: one module per kernel file; a pure `parse(&str)` and a thin `read(&Roots)`.
//! - [`roots::Roots`]: the only place that knows where `/proc`, `/sys`, the cgroup tree and the
//!   host's root filesystem are, so every test can point the whole crate at a fixture tree.
//! - `sample::*`: background threads that read sources with deadlines and publish immutable
//!   snapshots (no async runtime: a thread stuck in the kernel is the failure we measure).
//!
//! Why our own parsers rather than `procfs-core`: procfs-core rejects a whole file when one
//! field it considers required is missing (fixture trees and older kernels lack some), parses
//! every `/proc/stat` per-CPU line and every `meminfo` key into allocations we never use on a
//! 1-second hot path, and has no `/proc/vmstat` type. These files are simple; owning the parsers
//! keeps error semantics ours (garbage → error naming the line, unknown keys ignored) and a
//! pass of all fast sources well under a millisecond.

pub mod bpf;
pub mod cgroup;
pub mod error;
pub mod node;
pub mod proc;
pub mod roots;
pub mod sample;
pub mod sys;
pub mod sysconf;
pub mod text;

#[cfg(test)]
mod testing;

pub use error::{Error, ErrorKind, ParseError};
pub use roots::Roots;
